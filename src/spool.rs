//! The spool: held records in `spool.db`, kept until Kafka has acknowledged them.
//!
//! One thread owns the connection and runs every operation in the order it was asked for, so
//! a drain that reads after an insert always sees it, and ids (arrival order) are committed in
//! order. Only the publisher actor uses it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use chrono::{SecondsFormat, Utc};
use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::events::Durability;
use crate::record::{Record, RecordOut};

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/spool_0001_held.sql"))];
const DB_FILE: &str = "spool.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// A record in the spool.
#[derive(Debug, Clone)]
pub struct HeldRecord {
    pub id: i64,
    pub topic: String,
    pub producer: String,
    pub accepted_at: String,
    pub state: HeldState,
    pub record: Record,
}

/// How a held record is listed and exported.
#[derive(Debug, Clone, Serialize)]
pub struct HeldRecordOut {
    pub id: i64,
    pub topic: String,
    pub state: HeldState,
    pub producer: String,
    pub accepted_at: String,
    #[serde(flatten)]
    pub record: RecordOut,
}

impl From<&HeldRecord> for HeldRecordOut {
    fn from(held: &HeldRecord) -> Self {
        HeldRecordOut {
            id: held.id,
            topic: held.topic.clone(),
            state: held.state,
            producer: held.producer.clone(),
            accepted_at: held.accepted_at.clone(),
            record: RecordOut::from(&held.record),
        }
    }
}

/// Per-topic contents, for the publisher's accounting at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicContents {
    pub held: u64,
    pub held_bytes: u64,
    pub dead: u64,
    pub dead_bytes: u64,
    pub published: u64,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
}

fn spool_error(e: impl std::fmt::Display) -> Error {
    Error::Spool(e.to_string())
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
            .map_err(spool_error)?;
        Ok((Spool { tx }, contents))
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        self.tx
            .send(job)
            .map_err(|_| Error::Spool("spool thread stopped".into()))?;
        rx.await
            .map_err(|_| Error::Spool("spool thread stopped".into()))?
            .map_err(spool_error)
    }

    /// Stores records for `topic` in one transaction; durable when this returns.
    pub fn hold(
        &self,
        topic: String,
        producer: String,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<()>> + use<> {
        let spool = self.clone();
        // Queued now, in the caller's order; the future only waits for the commit.
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(insert(conn, &topic, &producer, &records));
        });
        let queued = spool.tx.send(job);
        async move {
            queued.map_err(|_| Error::Spool("spool thread stopped".into()))?;
            rx.await
                .map_err(|_| Error::Spool("spool thread stopped".into()))?
                .map_err(spool_error)
        }
    }

    /// The next held records of `topic` after `after_id`, oldest first.
    pub async fn next_held(
        &self,
        topic: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<HeldRecord>> {
        let topic = topic.to_string();
        self.call(move |conn| select(conn, &topic, HeldState::Held, None, after_id, limit))
            .await
    }

    /// Removes held records of `topic` up to `up_to_id`, once Kafka has them.
    pub async fn release(&self, topic: &str, up_to_id: i64, published: u64) -> Result<()> {
        let topic = topic.to_string();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM held WHERE topic = ?1 AND state = 'held' AND id <= ?2",
                params![topic, up_to_id],
            )?;
            add_published(&tx, &topic, published)?;
            tx.commit()
        })
        .await
    }

    /// Counts records that went straight to Kafka (saved now and then, not per record).
    pub async fn add_published(&self, counts: HashMap<String, u64>) -> Result<()> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            for (topic, n) in &counts {
                add_published(&tx, topic, *n)?;
            }
            tx.commit()
        })
        .await
    }

    /// Moves every held record of `topic` to the dead-letter state; returns how many.
    pub async fn kill(&self, topic: &str) -> Result<u64> {
        let topic = topic.to_string();
        self.call(move |conn| {
            conn.execute(
                "UPDATE held SET state = 'dead' WHERE topic = ?1 AND state = 'held'",
                params![topic],
            )
            .map(|n| n as u64)
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
        self.call(move |conn| select(conn, &topic, state, producer.as_deref(), after_id, limit))
            .await
    }

    /// Moves one held record to the dead-letter state (Kafka refuses it for good).
    pub async fn kill_one(&self, id: i64) -> Result<()> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE held SET state = 'dead' WHERE id = ?1 AND state = 'held'",
                params![id],
            )
            .map(|_| ())
        })
        .await
    }

    /// Deletes the dead records of `topic`; returns how many and their bytes.
    pub async fn discard(&self, topic: &str) -> Result<(u64, u64)> {
        let topic = topic.to_string();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let (n, bytes): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0)
                 FROM held WHERE topic = ?1 AND state = 'dead'",
                params![topic],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "DELETE FROM held WHERE topic = ?1 AND state = 'dead'",
                params![topic],
            )?;
            tx.commit()?;
            Ok((n as u64, bytes as u64))
        })
        .await
    }
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
            "INSERT INTO held (topic, state, key, value, headers, producer, size, accepted_at)
             VALUES (?1, 'held', ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for record in records {
            let headers = if record.headers.is_empty() {
                None
            } else {
                serde_json::to_string(&record.headers).ok()
            };
            stmt.execute(params![
                topic,
                record.key,
                record.value,
                headers,
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
        "SELECT id, topic, key, value, headers, producer, accepted_at FROM held
         WHERE topic = ?1 AND state = ?2 AND id > ?3 AND (?4 IS NULL OR producer = ?4)
         ORDER BY id LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![topic, state.as_str(), after_id, producer, limit as i64],
        |r| {
            let headers: Option<String> = r.get(4)?;
            Ok(HeldRecord {
                id: r.get(0)?,
                topic: r.get(1)?,
                producer: r.get(5)?,
                accepted_at: r.get(6)?,
                state,
                record: Record {
                    key: r.get(2)?,
                    value: r.get(3)?,
                    headers: headers
                        .and_then(|h| serde_json::from_str::<BTreeMap<String, String>>(&h).ok())
                        .unwrap_or_default(),
                },
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
            key: Some(format!("k{n}")),
            value: format!("v{n}").into_bytes(),
            headers: BTreeMap::from([("h".to_string(), n.to_string())]),
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
        let values: Vec<_> = batch.iter().map(|h| h.record.value.clone()).collect();
        assert_eq!(
            values,
            (0..5)
                .map(|n| format!("v{n}").into_bytes())
                .collect::<Vec<_>>()
        );
        assert_eq!(batch[4].record.headers["h"], "4");
        spool.release("t", batch[1].id, 2).await.expect("release");
        assert_eq!(spool.next_held("t", 0, 10).await.expect("read").len(), 3);
        assert_eq!(spool.kill("t").await.expect("kill"), 3);
        let bobs = spool
            .list("t", HeldState::Dead, Some("bob".into()), 0, 10)
            .await
            .expect("list");
        assert_eq!(bobs.len(), 2);
        drop(spool);

        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("reopen");
        let t = &contents["t"];
        assert_eq!((t.held, t.dead, t.published), (0, 3, 2));
        assert_eq!(spool.discard("t").await.expect("discard").0, 3);
        let left = spool
            .list("t", HeldState::Dead, None, 0, 10)
            .await
            .expect("list");
        assert!(left.is_empty());
    }
}
