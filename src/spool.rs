//! The spool: held records in `spool.db`, kept until Kafka has acknowledged them.
//!
//! One thread owns the connection and runs every operation in the order it was asked for, so
//! a drain that reads after an insert always sees it, and ids (arrival order) are committed in
//! order. Only the publisher actor uses it.
//!
//! Every operation that removes or moves rows answers with what it removed or moved (a
//! [`Tally`] read in the same transaction), so the publisher's counts follow the rows exactly.
//! A write that fails because the disk is full is [`Error::StorageFull`], and the spool's
//! [`Health`] says so until a later write succeeds.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use chrono::{SecondsFormat, Utc};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::events::Durability;
use crate::record::{json_headers, Record, RecordOut};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/spool_0001_held.sql")),
    (2, include_str!("../migrations/spool_0002_meta.sql")),
    (
        3,
        include_str!("../migrations/spool_0003_kafka_records.sql"),
    ),
];
const DB_FILE: &str = "spool.db";
const DISCARDED_SEQ: &str = "discarded_seq";
const PROBE: &str = "probe";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeldState {
    /// Waiting for its topic to become active (or for the broker to come back).
    Held,
    /// Its topic was rejected, withdrawn or deleted: kept for export or discard.
    Dead,
}

impl HeldState {
    fn as_str(self) -> &'static str {
        match self {
            HeldState::Held => "held",
            HeldState::Dead => "dead",
        }
    }
}

/// The stored headers of a held record do not read back (the file was damaged or edited).
/// Such a record is never sent to Kafka without its headers.
#[derive(Debug, thiserror::Error)]
#[error("held record {id}: its stored headers cannot be decoded: {why}")]
pub struct UndecodableHeaders {
    pub id: i64,
    pub why: String,
}

/// A record's headers, as a record carries them.
type Headers = Vec<(String, Option<Vec<u8>>)>;

/// A record in the spool.
#[derive(Debug)]
pub struct HeldRecord {
    pub id: i64,
    pub topic: String,
    pub producer: String,
    pub accepted_at: String,
    pub state: HeldState,
    /// What the row counts for in the spool's bytes (key, value and headers).
    pub size: u64,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers, or why they cannot be read back.
    pub headers: std::result::Result<Headers, UndecodableHeaders>,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
}

impl HeldRecord {
    /// The record as Kafka gets it; an error when its headers cannot be read back.
    pub fn record(&self) -> std::result::Result<Record, &UndecodableHeaders> {
        let headers = self.headers.as_ref()?;
        Ok(self.with_headers(headers.clone()))
    }

    fn with_headers(&self, headers: Headers) -> Record {
        Record {
            key: self.key.clone(),
            value: self.value.clone(),
            headers,
            partition: self.partition,
            timestamp: self.timestamp,
        }
    }
}

/// How a held record is listed and exported.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldRecordOut {
    pub id: i64,
    pub topic: String,
    pub state: HeldState,
    pub producer: String,
    pub accepted_at: String,
    #[serde(flatten)]
    pub record: RecordOut,
    /// Set when the stored headers cannot be decoded; `headers` is then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers_error: Option<String>,
}

impl From<&HeldRecord> for HeldRecordOut {
    fn from(held: &HeldRecord) -> Self {
        let (headers, headers_error) = match &held.headers {
            Ok(headers) => (headers.clone(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        HeldRecordOut {
            id: held.id,
            topic: held.topic.clone(),
            state: held.state,
            producer: held.producer.clone(),
            accepted_at: held.accepted_at.clone(),
            record: RecordOut::from(&held.with_headers(headers)),
            headers_error,
        }
    }
}

/// Per-topic contents, for the publisher's accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicContents {
    pub held: u64,
    pub held_bytes: u64,
    pub dead: u64,
    pub dead_bytes: u64,
    pub published: u64,
}

/// Rows an operation removed or moved, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub records: u64,
    pub bytes: u64,
}

/// The dead records of a topic, as a discard is about to take them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadRecords {
    pub records: u64,
    pub bytes: u64,
    /// The highest id among them: a discard takes the dead records up to it.
    pub last_id: Option<i64>,
}

/// Whether the spool can write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The last write failed because the disk is full. Cleared by the next write that succeeds.
    pub storage_full: bool,
    /// The error of the last failed write, while `storage_full`.
    pub error: Option<String>,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    health: Arc<Mutex<Health>>,
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

fn spool_error(e: rusqlite::Error) -> Error {
    if is_disk_full(&e) {
        return Error::StorageFull(format!("the spool cannot write: {e}"));
    }
    if let rusqlite::Error::ToSqlConversionFailure(cause) = &e {
        return Error::InvalidRecord(format!("cannot be stored: {cause}"));
    }
    Error::Spool(e.to_string())
}

fn thread_gone() -> Error {
    Error::Spool("spool thread stopped".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A record's headers as the `header_list` column keeps them, or NULL when there are none.
struct HeaderList<'a>(&'a [(String, Option<Vec<u8>>)]);

impl ToSql for HeaderList<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        if self.0.is_empty() {
            return Ok(ToSqlOutput::Owned(Value::Null));
        }
        encode_headers(self.0)
            .map(|blob| ToSqlOutput::Owned(Value::Blob(blob)))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
    }
}

/// Headers in order as bytes: per header, the name's length (u32, big-endian) and its UTF-8
/// bytes, then 0 for a null value, or 1, the value's length (u32) and its bytes: Kafka's own
/// header layout, with fixed-width lengths and a tag for null instead of varints and -1.
pub(crate) fn encode_headers(
    headers: &[(String, Option<Vec<u8>>)],
) -> std::result::Result<Vec<u8>, String> {
    let len = |n: usize| u32::try_from(n).map_err(|_| format!("a header of {n} bytes is too long"));
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(&len(name.len())?.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&len(value.len())?.to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    Ok(out)
}

/// Reads back what `encode_headers` wrote; an error says where it stops making sense.
pub(crate) fn decode_header_list(mut bytes: &[u8]) -> std::result::Result<Headers, String> {
    fn take<'a>(
        bytes: &mut &'a [u8],
        n: usize,
        what: &str,
    ) -> std::result::Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!("cut short in {what}"));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn length(bytes: &mut &[u8], what: &str) -> std::result::Result<usize, String> {
        let raw = take(bytes, 4, what)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let n = length(&mut bytes, "a header name's length")?;
        let name = take(&mut bytes, n, "a header name")?;
        let name = std::str::from_utf8(name)
            .map_err(|_| "a header name is not UTF-8".to_string())?
            .to_string();
        let value = match take(&mut bytes, 1, "a header value's tag")?[0] {
            0 => None,
            1 => {
                let n = length(&mut bytes, "a header value's length")?;
                Some(take(&mut bytes, n, "a header value")?.to_vec())
            }
            tag => return Err(format!("a header value has the unknown tag {tag}")),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// The headers of a row: the `header_list` of a newer row, else the JSON object of strings in
/// `headers` that older rows have, else none.
fn decode_headers(
    id: i64,
    list: Option<Vec<u8>>,
    json: Option<String>,
) -> std::result::Result<Headers, UndecodableHeaders> {
    let undecodable = |why: String| UndecodableHeaders { id, why };
    match (list, json) {
        (Some(list), _) => decode_header_list(&list).map_err(undecodable),
        (None, Some(text)) => serde_json::from_str::<BTreeMap<String, String>>(&text)
            .map(json_headers)
            .map_err(|e| undecodable(e.to_string())),
        (None, None) => Ok(Vec::new()),
    }
}

/// Bytes as stored: a key is a BLOB in newer rows and TEXT in older ones.
fn stored_bytes(column: ValueRef<'_>) -> Option<Vec<u8>> {
    match column {
        ValueRef::Null => None,
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(bytes.to_vec()),
        // Never written; kept as its text rather than lost.
        ValueRef::Integer(n) => Some(n.to_string().into_bytes()),
        ValueRef::Real(x) => Some(x.to_string().into_bytes()),
    }
}

impl Spool {
    /// Opens `spool.db` in `data_dir` and returns it with what it holds.
    pub fn open(
        data_dir: &Path,
        durability: Durability,
    ) -> Result<(Spool, HashMap<String, TopicContents>)> {
        let path: PathBuf = data_dir.join(DB_FILE);
        let mut conn = crate::sqlite::open(&path, durability).map_err(spool_error)?;
        crate::sqlite::migrate(&mut conn, MIGRATIONS).map_err(spool_error)?;
        let contents = contents(&conn).map_err(spool_error)?;
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("spool".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::Spool(format!("cannot start the spool thread: {e}")))?;
        let spool = Spool {
            tx,
            health: Arc::default(),
        };
        Ok((spool, contents))
    }

    /// Queues `f` now, behind everything already asked for; the future waits for its answer.
    /// A write's outcome sets the spool's health (on the spool thread, before the answer).
    fn queue<R, F>(
        &self,
        write: bool,
        f: F,
    ) -> impl std::future::Future<Output = Result<R>> + use<R, F>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let health = self.health.clone();
        let job: Job = Box::new(move |conn| {
            let result = f(conn).map_err(spool_error);
            if write {
                let mut health = lock(&health);
                match &result {
                    Ok(_) => *health = Health::default(),
                    Err(e @ Error::StorageFull(_)) => {
                        if !health.storage_full {
                            tracing::error!(error = %e, "The spool cannot write: the disk is full.");
                        }
                        health.storage_full = true;
                        health.error = Some(e.to_string());
                    }
                    Err(_) => {}
                }
            }
            let _ = reply.send(result);
        });
        let queued = self.tx.send(job);
        async move {
            queued.map_err(|_| thread_gone())?;
            rx.await.map_err(|_| thread_gone())?
        }
    }

    /// Whether the spool can write, as its last write found.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Stores records for `topic` in one transaction; durable when the future resolves. The
    /// insert is queued now, in the caller's order.
    pub fn hold(
        &self,
        topic: String,
        producer: String,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<()>> + use<> {
        self.queue(true, move |conn| insert(conn, &topic, &producer, &records))
    }

    /// The next held records of `topic` after `after_id`, oldest first.
    pub async fn next_held(
        &self,
        topic: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<HeldRecord>> {
        let topic = topic.to_string();
        self.queue(false, move |conn| {
            select(conn, &topic, HeldState::Held, None, after_id, limit)
        })
        .await
    }

    /// Removes held records of `topic` up to `up_to_id`, once Kafka has them; counts them as
    /// published in the same transaction.
    pub async fn release(&self, topic: &str, up_to_id: i64) -> Result<Tally> {
        let topic = topic.to_string();
        self.queue(true, move |conn| {
            let tx = conn.transaction()?;
            let where_ = "topic = ?1 AND state = 'held' AND id <= ?2";
            let removed = tally(&tx, where_, params![topic, up_to_id])?;
            tx.execute(
                &format!("DELETE FROM held WHERE {where_}"),
                params![topic, up_to_id],
            )?;
            add_published(&tx, &topic, removed.records)?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// Counts records that went straight to Kafka (saved now and then, not per record).
    pub async fn add_published(&self, counts: HashMap<String, u64>) -> Result<()> {
        self.queue(true, move |conn| {
            let tx = conn.transaction()?;
            for (topic, n) in &counts {
                add_published(&tx, topic, *n)?;
            }
            tx.commit()
        })
        .await
    }

    /// Moves every held record of `topic` to the dead-letter state.
    pub async fn kill(&self, topic: &str) -> Result<Tally> {
        let topic = topic.to_string();
        self.queue(true, move |conn| {
            let tx = conn.transaction()?;
            let where_ = "topic = ?1 AND state = 'held'";
            let moved = tally(&tx, where_, params![topic])?;
            tx.execute(
                &format!("UPDATE held SET state = 'dead' WHERE {where_}"),
                params![topic],
            )?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    /// Moves one held record to the dead-letter state (Kafka refuses it for good, or its
    /// headers cannot be read back).
    pub async fn kill_one(&self, id: i64) -> Result<Tally> {
        self.queue(true, move |conn| {
            let tx = conn.transaction()?;
            let where_ = "id = ?1 AND state = 'held'";
            let moved = tally(&tx, where_, params![id])?;
            tx.execute(
                &format!("UPDATE held SET state = 'dead' WHERE {where_}"),
                params![id],
            )?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    /// Lists records of `topic` in `state`, optionally only those of one producer.
    pub async fn list(
        &self,
        topic: &str,
        state: HeldState,
        producer: Option<String>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<HeldRecord>> {
        let topic = topic.to_string();
        self.queue(false, move |conn| {
            select(conn, &topic, state, producer.as_deref(), after_id, limit)
        })
        .await
    }

    /// The dead records of `topic` that a discard would take now.
    pub async fn dead(&self, topic: &str) -> Result<DeadRecords> {
        let topic = topic.to_string();
        self.queue(false, move |conn| {
            conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(id)
                 FROM held WHERE topic = ?1 AND state = 'dead'",
                params![topic],
                |r| {
                    Ok(DeadRecords {
                        records: r.get::<_, i64>(0)? as u64,
                        bytes: r.get::<_, i64>(1)? as u64,
                        last_id: r.get(2)?,
                    })
                },
            )
        })
        .await
    }

    /// Carries out the committed `held_discarded` event `seq`: deletes the dead records of
    /// `topic` up to `up_to_id` (none when `None`) and notes `seq` as done, in one transaction.
    /// Idempotent: ids are never reused, so running it again deletes nothing more.
    pub async fn discard(&self, topic: &str, up_to_id: Option<i64>, seq: u64) -> Result<Tally> {
        let topic = topic.to_string();
        self.queue(true, move |conn| {
            let tx = conn.transaction()?;
            let mut removed = Tally::default();
            if let Some(up_to_id) = up_to_id {
                let where_ = "topic = ?1 AND state = 'dead' AND id <= ?2";
                removed = tally(&tx, where_, params![topic, up_to_id])?;
                tx.execute(
                    &format!("DELETE FROM held WHERE {where_}"),
                    params![topic, up_to_id],
                )?;
            }
            tx.execute(
                "INSERT INTO spool_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                params![DISCARDED_SEQ, seq as i64],
            )?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// The seq of the last `held_discarded` event carried out (0 when none).
    pub async fn discarded_seq(&self) -> Result<u64> {
        self.queue(false, |conn| {
            let seq: Option<i64> = conn
                .query_row(
                    "SELECT value FROM spool_meta WHERE key = ?1",
                    params![DISCARDED_SEQ],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(seq.unwrap_or(0) as u64)
        })
        .await
    }

    /// A small write, to learn whether the disk has room again; clears `storage_full` when it
    /// succeeds.
    pub async fn probe(&self) -> Result<()> {
        self.queue(true, |conn| {
            conn.execute(
                "INSERT INTO spool_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![PROBE, Utc::now().timestamp_micros()],
            )
            .map(|_| ())
        })
        .await
    }

    /// What the spool holds now, per topic (as `open` reads it).
    pub async fn contents(&self) -> Result<HashMap<String, TopicContents>> {
        self.queue(false, |conn| contents(conn)).await
    }

    /// Caps the file at its current size, as a full disk would (SQLite's `max_page_count`):
    /// the next write that needs a new page fails with `SQLITE_FULL`. `None` lifts the cap.
    #[cfg(test)]
    pub(crate) async fn cap_pages(&self, cap: Option<u64>) -> Result<()> {
        self.queue(false, move |conn| {
            let pages = cap.unwrap_or(0xFFFF_FFFE);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|_| ())
        })
        .await
    }
}

/// Counts and sums the rows of `held` that match `where_`.
fn tally(conn: &Connection, where_: &str, args: impl rusqlite::Params) -> rusqlite::Result<Tally> {
    conn.query_row(
        &format!("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM held WHERE {where_}"),
        args,
        |r| {
            Ok(Tally {
                records: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
            })
        },
    )
}

fn add_published(conn: &Connection, topic: &str, n: u64) -> rusqlite::Result<()> {
    if n > 0 {
        conn.execute(
            "INSERT INTO published (topic, count) VALUES (?1, ?2)
             ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count",
            params![topic, n as i64],
        )?;
    }
    Ok(())
}

fn insert(
    conn: &mut Connection,
    topic: &str,
    producer: &str,
    records: &[Record],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut stmt = tx.prepare_cached(
            "INSERT INTO held (topic, state, key, value, tombstone, header_list,
                               kafka_partition, create_time_ms, producer, size, accepted_at)
             VALUES (?1, 'held', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for record in records {
            stmt.execute(params![
                topic,
                record.key,
                record.value.as_deref().unwrap_or_default(),
                record.value.is_none(),
                HeaderList(&record.headers),
                record.partition,
                record.timestamp,
                producer,
                record.size() as i64,
                at
            ])?;
        }
    }
    tx.commit()
}

fn select(
    conn: &Connection,
    topic: &str,
    state: HeldState,
    producer: Option<&str>,
    after_id: i64,
    limit: usize,
) -> rusqlite::Result<Vec<HeldRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, topic, key, value, headers, producer, accepted_at, size,
                tombstone, header_list, kafka_partition, create_time_ms FROM held
         WHERE topic = ?1 AND state = ?2 AND id > ?3 AND (?4 IS NULL OR producer = ?4)
         ORDER BY id LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![topic, state.as_str(), after_id, producer, limit as i64],
        |r| {
            let id: i64 = r.get(0)?;
            let tombstone: bool = r.get(8)?;
            Ok(HeldRecord {
                id,
                topic: r.get(1)?,
                producer: r.get(5)?,
                accepted_at: r.get(6)?,
                state,
                size: r.get::<_, i64>(7)? as u64,
                key: stored_bytes(r.get_ref(2)?),
                value: if tombstone {
                    None
                } else {
                    Some(stored_bytes(r.get_ref(3)?).unwrap_or_default())
                },
                headers: decode_headers(id, r.get(9)?, r.get(4)?),
                partition: r.get(10)?,
                timestamp: r.get(11)?,
            })
        },
    )?;
    rows.collect()
}

fn contents(conn: &Connection) -> rusqlite::Result<HashMap<String, TopicContents>> {
    let mut out: HashMap<String, TopicContents> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT topic, state, COUNT(*), COALESCE(SUM(size), 0)
         FROM held GROUP BY topic, state",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let topic: String = r.get(0)?;
        let state: String = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        let bytes = r.get::<_, i64>(3)? as u64;
        let entry = out.entry(topic).or_default();
        if state == "held" {
            entry.held = n;
            entry.held_bytes = bytes;
        } else {
            entry.dead = n;
            entry.dead_bytes = bytes;
        }
    }
    let mut stmt = conn.prepare("SELECT topic, count FROM published")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let topic: String = r.get(0)?;
        out.entry(topic).or_default().published = r.get::<_, i64>(1)? as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            key: Some(format!("k{n}").into_bytes()),
            value: Some(format!("v{n}").into_bytes()),
            headers: vec![("h".to_string(), Some(n.to_string().into_bytes()))],
            ..Record::default()
        }
    }

    #[tokio::test]
    async fn holds_drains_in_order_and_dead_letters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("open");
        assert!(contents.is_empty());
        let first = spool.hold("t".into(), "alice".into(), (0..3).map(record).collect());
        let second = spool.hold("t".into(), "bob".into(), (3..5).map(record).collect());
        second.await.expect("held");
        first.await.expect("held");
        let batch = spool.next_held("t", 0, 10).await.expect("read");
        let records: Vec<Record> = batch.iter().map(|h| h.record().expect("headers")).collect();
        assert_eq!(records, (0..5).map(record).collect::<Vec<_>>());
        let released = spool.release("t", batch[1].id).await.expect("release");
        let two = (0..2).map(record).map(|r| r.size()).sum();
        assert_eq!(
            released,
            Tally {
                records: 2,
                bytes: two
            }
        );
        assert_eq!(spool.next_held("t", 0, 10).await.expect("read").len(), 3);
        assert_eq!(spool.kill("t").await.expect("kill").records, 3);
        let bobs = spool
            .list("t", HeldState::Dead, Some("bob".into()), 0, 10)
            .await
            .expect("list");
        assert_eq!(bobs.len(), 2);
        drop(spool);

        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("reopen");
        let t = &contents["t"];
        assert_eq!((t.held, t.dead, t.published), (0, 3, 2));
        let dead = spool.dead("t").await.expect("dead");
        assert_eq!((dead.records, dead.last_id), (3, Some(batch[4].id)));
        assert_eq!(
            spool
                .discard("t", dead.last_id, 9)
                .await
                .expect("discard")
                .records,
            3
        );
        let left = spool
            .list("t", HeldState::Dead, None, 0, 10)
            .await
            .expect("list");
        assert!(left.is_empty());
        assert_eq!(spool.discarded_seq().await.expect("seq"), 9);
    }

    #[tokio::test]
    async fn a_discard_takes_only_the_dead_records_up_to_its_id_and_runs_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("open");
        spool
            .hold("t".into(), "p".into(), (0..3).map(record).collect())
            .await
            .expect("held");
        spool.kill("t").await.expect("kill");
        let dead = spool.dead("t").await.expect("dead");
        // Records that die after the discard was decided are not part of it.
        spool
            .hold("t".into(), "p".into(), (3..5).map(record).collect())
            .await
            .expect("held");
        spool.kill("t").await.expect("kill");
        let removed = spool.discard("t", dead.last_id, 4).await.expect("discard");
        assert_eq!(removed.records, 3);
        // Finishing the same event again (replay after a crash) deletes nothing more.
        let again = spool.discard("t", dead.last_id, 4).await.expect("again");
        assert_eq!(again, Tally::default());
        assert_eq!(spool.dead("t").await.expect("dead").records, 2);
        // An older seq never moves the mark back.
        spool.discard("t", None, 2).await.expect("old");
        assert_eq!(spool.discarded_seq().await.expect("seq"), 4);
    }

    #[tokio::test]
    async fn undecodable_headers_are_reported_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("open");
        spool
            .hold("t".into(), "p".into(), (0..2).map(record).collect())
            .await
            .expect("held");
        let batch = spool.next_held("t", 0, 10).await.expect("read");
        // Damage the stored headers of the first record, as a bad disk or a hand edit would.
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("second connection");
        conn.execute(
            "UPDATE held SET header_list = X'0000000168' WHERE id = ?1",
            params![batch[0].id],
        )
        .expect("damage");
        drop(conn);

        let batch = spool.next_held("t", 0, 10).await.expect("read");
        let error = batch[0]
            .record()
            .expect_err("the damaged headers are an error");
        assert_eq!(error.id, batch[0].id);
        assert!(batch[1].record().is_ok(), "the next record is intact");
        let listed = HeldRecordOut::from(&batch[0]);
        let message = listed.headers_error.expect("the listing says why");
        assert!(message.contains("cannot be decoded"), "{message}");
        assert!(listed.record.headers.is_empty());
        assert_eq!(HeldRecordOut::from(&batch[1]).headers_error, None);
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_with_storage_full_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("open");
        spool
            .hold("t".into(), "p".into(), (0..2).map(record).collect())
            .await
            .expect("held");
        assert_eq!(spool.health(), Health::default());
        spool.cap_pages(Some(1)).await.expect("cap");
        let big: Vec<Record> = (0..50)
            .map(|n| Record {
                value: Some(vec![b'x'; 4000 + n]),
                ..Record::default()
            })
            .collect();
        let refused = spool.hold("t".into(), "p".into(), big.clone()).await;
        assert!(matches!(refused, Err(Error::StorageFull(_))), "{refused:?}");
        assert_eq!(refused.expect_err("refused").code(), "storage_full");
        let health = spool.health();
        assert!(health.storage_full, "{health:?}");
        assert!(health.error.is_some_and(|e| e.contains("full")));
        // Nothing of the refused call is in the spool; reads still work.
        assert_eq!(spool.contents().await.expect("contents")["t"].held, 2);
        assert!(spool.health().storage_full, "a read does not clear it");

        // Space comes back: the probe notices, and the same call is taken without reopening.
        spool.cap_pages(None).await.expect("uncap");
        spool.probe().await.expect("probe");
        assert_eq!(spool.health(), Health::default());
        spool
            .hold("t".into(), "p".into(), big)
            .await
            .expect("held after space is back");
        assert_eq!(spool.contents().await.expect("contents")["t"].held, 52);
    }

    #[tokio::test]
    async fn a_kafka_record_comes_back_exactly_as_it_was_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("open");
        let sent = vec![
            Record {
                key: Some(vec![0, 0xff, 0xfe, b'k']),
                value: None,
                headers: vec![
                    ("trace".into(), Some(vec![0xc3, 0x28])),
                    ("trace".into(), Some(b"second".to_vec())),
                    ("empty".into(), Some(Vec::new())),
                    ("null".into(), None),
                ],
                partition: Some(2),
                timestamp: Some(1_700_000_000_123),
            },
            Record {
                key: Some(Vec::new()),
                value: Some(Vec::new()),
                ..Record::default()
            },
            Record {
                value: Some(vec![0xff; 3]),
                partition: Some(0),
                ..Record::default()
            },
        ];
        spool
            .hold("t".into(), "p".into(), sent.clone())
            .await
            .expect("held");
        drop(spool);
        // Read back after a restart, as a drain does.
        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("reopen");
        let sizes: u64 = sent.iter().map(Record::size).sum();
        assert_eq!(contents["t"].held_bytes, sizes);
        let batch = spool.next_held("t", 0, 10).await.expect("read");
        let back: Vec<Record> = batch.iter().map(|h| h.record().expect("headers")).collect();
        assert_eq!(back, sent);
        let listed = HeldRecordOut::from(&batch[0]);
        assert_eq!(listed.record.value, serde_json::Value::Null);
        assert_eq!(listed.record.headers["trace"], "second");
    }

    #[tokio::test]
    async fn a_row_written_before_kafka_records_still_reads_as_it_did() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A spool as the previous version left it: migrations 1 and 2, rows with a TEXT key
        // and headers as a JSON object.
        let mut conn =
            crate::sqlite::open(&dir.path().join(DB_FILE), Durability::Normal).expect("open");
        crate::sqlite::migrate(&mut conn, &MIGRATIONS[..2]).expect("old schema");
        conn.execute(
            "INSERT INTO held (topic, state, key, value, headers, producer, size, accepted_at)
             VALUES ('t', 'held', 'k1', X'7631', '{\"a\":\"1\",\"b\":\"2\"}', 'p', 7,
                     '2026-01-01T00:00:00.000000Z'),
                    ('t', 'held', NULL, X'', NULL, 'p', 0, '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .expect("old rows");
        drop(conn);

        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("migrate");
        assert_eq!((contents["t"].held, contents["t"].held_bytes), (2, 7));
        let batch = spool.next_held("t", 0, 10).await.expect("read");
        let back: Vec<Record> = batch.iter().map(|h| h.record().expect("headers")).collect();
        assert_eq!(
            back,
            vec![
                Record {
                    key: Some(b"k1".to_vec()),
                    value: Some(b"v1".to_vec()),
                    headers: vec![
                        ("a".into(), Some(b"1".to_vec())),
                        ("b".into(), Some(b"2".to_vec())),
                    ],
                    ..Record::default()
                },
                Record {
                    value: Some(Vec::new()),
                    ..Record::default()
                },
            ]
        );
        let listed = serde_json::to_value(HeldRecordOut::from(&batch[0])).expect("json");
        assert_eq!(listed["key"], "k1");
        assert_eq!(listed["value"], "v1");
        assert_eq!(listed["headers"], serde_json::json!({"a": "1", "b": "2"}));
        // A damaged old row is still reported, not sent without its headers.
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("second connection");
        conn.execute(
            "UPDATE held SET headers = '{\"h\": 1' WHERE id = ?1",
            params![batch[0].id],
        )
        .expect("damage");
        drop(conn);
        let batch = spool.next_held("t", 0, 10).await.expect("read");
        assert!(batch[0].record().is_err());
    }

    #[test]
    fn header_lists_decode_only_what_was_encoded() {
        let headers = vec![("a".to_string(), None), ("a".to_string(), Some(vec![1, 2]))];
        let bytes = encode_headers(&headers).expect("encode");
        assert_eq!(decode_header_list(&bytes).expect("decode"), headers);
        // Cut anywhere but between two headers, it is an error.
        for cut in (1..bytes.len()).filter(|&cut| cut != 6) {
            assert!(decode_header_list(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            decode_header_list(&[0, 0, 0, 1, b'a', 7]).is_err(),
            "bad tag"
        );
        assert!(
            decode_header_list(&[0, 0, 0, 1, 0xff, 0]).is_err(),
            "bad name"
        );
    }
}
