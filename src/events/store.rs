use std::collections::HashMap;
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::cursor::{Cursor, RawRow};
use super::event::{needs_upcast, upcast, Event, EventKind, NewEvent, EVENT_VERSION};
use super::snapshot::{self, SnapshotError, Snapshotted};

/// Migrations, applied in order at startup; the applied version is kept in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/0001_events.sql"))];

/// The first row version whose hash input is the length-prefixed column bytes
/// (`Columns::hash_length_prefixed`); older rows keep their JSON-encoded input.
const LENGTH_PREFIXED_SINCE: i64 = 3;

/// The hash that the first event chains to.
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most events written in one transaction; bounds the latency of a single commit.
const MAX_BATCH: usize = 4096;

const DB_FILE: &str = "kafflow.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no event log at {0}")]
    Missing(PathBuf),
    #[error("event log database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("event log is corrupt at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("event log commit failed: {0}")]
    Commit(String),
    /// The disk is full: the batch was rolled back; a later commit succeeds once space is freed.
    #[error("event log: the disk is full ({0})")]
    Full(String),
    /// An earlier batch of the same stream failed after this one was staged against it, so it
    /// was not written (see `Stream`).
    #[error("event log: an earlier commit of this stream failed")]
    Superseded,
    #[error("event log writer has stopped")]
    WriterGone,
    #[error("cannot start the event log writer: {0}")]
    WriterStart(std::io::Error),
}

/// Who appends a job, and in which generation of its staged state.
///
/// An event-sourced actor checks each command against its committed state plus the events it
/// has in flight. If one of its batches fails, every later batch it sent before learning of it
/// was checked against events that will never exist; the writer refuses those (`Superseded`)
/// until the actor comes back with a newer generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stream {
    pub name: &'static str,
    pub generation: u64,
}

impl StoreError {
    /// A commit error from SQLite, told apart: a full disk is a condition to wait out.
    fn from_commit(error: &StoreError) -> StoreError {
        let full = match error {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        };
        if full {
            StoreError::Full(error.to_string())
        } else {
            StoreError::Commit(error.to_string())
        }
    }

    /// A failed commit that says nothing about later ones: they are refused or retried, the
    /// process goes on.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Commit(_) | StoreError::Full(_) | StoreError::Superseded
        )
    }
}

/// How hard each commit is pushed to disk (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: an acknowledged event survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: an acknowledged event survives a crash of KafFlow,
    /// but the last commits can be lost on power loss or an OS crash.
    Normal,
}

/// Where the chain stands: the last seq and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// One row as text, exactly as stored: the hash covers these bytes.
struct Row {
    seq: u64,
    id: String,
    at: String,
    kind: String,
    version: i64,
    actor: String,
    topic: Option<String>,
    request_id: Option<String>,
    data: String,
    prev_hash: String,
    hash: String,
}

impl Row {
    fn from_new(event: &NewEvent, seq: u64, prev_hash: &str) -> Result<Row, StoreError> {
        Row::from_new_at(event, seq, prev_hash, i64::from(EVENT_VERSION))
    }

    /// The row of `event` written at row `version` (tests write older versions with it).
    fn from_new_at(
        event: &NewEvent,
        seq: u64,
        prev_hash: &str,
        version: i64,
    ) -> Result<Row, StoreError> {
        let (kind, data) = event.kind.to_columns().map_err(|e| StoreError::Corrupt {
            seq,
            reason: format!("cannot encode event: {e}"),
        })?;
        let mut row = Row {
            seq,
            id: event.id.to_string(),
            at: event.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            kind,
            version,
            actor: event.actor.clone(),
            topic: event.topic.clone(),
            request_id: event.request_id.map(|id| id.to_string()),
            data: data.to_string(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        row.hash = hex::encode(row.columns().hash(&mut Vec::new()));
        Ok(row)
    }

    fn columns(&self) -> Columns<'_> {
        Columns {
            seq: self.seq,
            id: &self.id,
            at: &self.at,
            kind: &self.kind,
            version: self.version,
            actor: &self.actor,
            topic: self.topic.as_deref(),
            request_id: self.request_id.as_deref(),
            data: &self.data,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }
}

/// The columns of a stored row, borrowed from SQLite's buffers: replay reads a million rows
/// without copying any but what the decoded event keeps.
struct Columns<'a> {
    seq: u64,
    id: &'a str,
    at: &'a str,
    kind: &'a str,
    version: i64,
    actor: &'a str,
    topic: Option<&'a str>,
    request_id: Option<&'a str>,
    data: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
}

/// The columns every replay reads, in `Columns::read` order.
const SELECT_ROWS: &str =
    "SELECT seq, id, at, kind, version, actor, topic, request_id, data, prev_hash, hash FROM events";

impl<'a> Columns<'a> {
    fn read(r: &'a rusqlite::Row<'_>) -> rusqlite::Result<Columns<'a>> {
        let text = |i: usize| -> rusqlite::Result<&'a str> {
            r.get_ref(i)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    i,
                    r.get_ref_unwrap(i).data_type(),
                    Box::new(e),
                )
            })
        };
        let optional = |i: usize| -> rusqlite::Result<Option<&'a str>> {
            r.get_ref(i)?.as_str_or_null().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    i,
                    r.get_ref_unwrap(i).data_type(),
                    Box::new(e),
                )
            })
        };
        Ok(Columns {
            seq: r.get::<_, i64>(0)? as u64,
            id: text(1)?,
            at: text(2)?,
            kind: text(3)?,
            version: r.get(4)?,
            actor: text(5)?,
            topic: optional(6)?,
            request_id: optional(7)?,
            data: text(8)?,
            prev_hash: text(9)?,
            hash: text(10)?,
        })
    }

    /// The columns of the row `r` of a `SELECT_ROWS` cursor (the replay's way: two calls into
    /// SQLite a text column, see `cursor.rs`). A column of the wrong type or a text that is
    /// not UTF-8 is an unreadable row: the writer never stores one.
    fn from_raw(r: &RawRow<'a>) -> Result<Columns<'a>, String> {
        let optional = |i: c_int| -> Result<Option<&'a str>, String> {
            match r.text(i).map_err(|e| e.to_string())? {
                Some(bytes) => utf8(bytes)
                    .map(Some)
                    .map_err(|e| format!("column {i} is not UTF-8: {e}")),
                None => Ok(None),
            }
        };
        let text = |i: c_int| -> Result<&'a str, String> {
            optional(i)?.ok_or_else(|| format!("column {i} is NULL"))
        };
        let integer = |i: c_int| {
            r.integer(i)
                .ok_or_else(|| format!("column {i} is not an integer"))
        };
        Ok(Columns {
            seq: integer(0)? as u64,
            id: text(1)?,
            at: text(2)?,
            kind: text(3)?,
            version: integer(4)?,
            actor: text(5)?,
            topic: optional(6)?,
            request_id: optional(7)?,
            data: text(8)?,
            prev_hash: text(9)?,
            hash: text(10)?,
        })
    }

    /// The SHA-256 the row must carry, in the layout its version says (`LENGTH_PREFIXED_SINCE`).
    /// `buf` is scratch space, reused across rows.
    fn hash(&self, buf: &mut Vec<u8>) -> [u8; 32] {
        if self.version >= LENGTH_PREFIXED_SINCE {
            self.hash_length_prefixed(buf)
        } else {
            self.hash_json(buf)
        }
    }

    /// The hash of rows from version 3 on: SHA-256 over the column bytes, each text with its
    /// length in front (4 bytes, big-endian), `seq` and `version` as 8-byte big-endian
    /// integers, and a NULL told from text by a tag byte (0 NULL, 1 text). In column order:
    /// `prev_hash seq id at kind version actor topic request_id data`. No escaping, no number
    /// formatting: the bytes are copied as they are, and no two rows give the same input (each
    /// field's length is known before its bytes). See "Hash chain" in docs/architecture.md.
    fn hash_length_prefixed(&self, buf: &mut Vec<u8>) -> [u8; 32] {
        fn text(buf: &mut Vec<u8>, value: &str) {
            // A column longer than 4 GiB cannot be stored by SQLite (1 GB at most).
            buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
            buf.extend_from_slice(value.as_bytes());
        }
        fn optional(buf: &mut Vec<u8>, value: Option<&str>) {
            match value {
                Some(value) => {
                    buf.push(1);
                    text(buf, value);
                }
                None => buf.push(0),
            }
        }
        buf.clear();
        text(buf, self.prev_hash);
        buf.extend_from_slice(&self.seq.to_be_bytes());
        text(buf, self.id);
        text(buf, self.at);
        text(buf, self.kind);
        buf.extend_from_slice(&self.version.to_be_bytes());
        text(buf, self.actor);
        optional(buf, self.topic);
        optional(buf, self.request_id);
        text(buf, self.data);
        Sha256::digest(buf.as_slice()).into()
    }

    /// The hash of rows before version 3: SHA-256 over the previous hash and every column,
    /// encoded as one JSON array so that no two different rows can produce the same input. The
    /// bytes are exactly `serde_json::json!([...]).to_string()` of the columns, the encoding
    /// the log was first written with.
    fn hash_json(&self, buf: &mut Vec<u8>) -> [u8; 32] {
        buf.clear();
        buf.push(b'[');
        let text = |buf: &mut Vec<u8>, value: Option<&str>| {
            match value {
                Some(value) => {
                    // Writing JSON into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *buf, value);
                }
                None => buf.extend_from_slice(b"null"),
            }
            buf.push(b',');
        };
        text(buf, Some(self.prev_hash));
        buf.extend_from_slice(self.seq.to_string().as_bytes());
        buf.push(b',');
        text(buf, Some(self.id));
        text(buf, Some(self.at));
        text(buf, Some(self.kind));
        buf.extend_from_slice(self.version.to_string().as_bytes());
        buf.push(b',');
        text(buf, Some(self.actor));
        text(buf, self.topic);
        text(buf, self.request_id);
        text(buf, Some(self.data));
        // The last element has no comma after it.
        buf.pop();
        buf.push(b']');
        Sha256::digest(buf.as_slice()).into()
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            seq: self.seq,
            reason: reason.into(),
        }
    }

    /// Checks the row's own hash: its content is what was written.
    fn check_hash(&self, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let mut hex = [0u8; 64];
        // A 32-byte digest always fits 64 hex digits.
        let _ = hex::encode_to_slice(self.hash(buf), &mut hex);
        if hex.as_slice() != self.hash.as_bytes() {
            return Err(self.corrupt("hash does not match the event's content (edited?)"));
        }
        Ok(())
    }

    /// Checks the row against the chain: it follows `head` and its content hashes to its hash.
    fn check(&self, head: &ChainHead, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        self.check_link(head)?;
        self.check_hash(buf)
    }

    /// Checks that the row follows `head`: the next seq, chained to its stored hash. With
    /// `check_hash` of every row, the whole chain: each row's content hashes to its stored
    /// hash, and each stored hash is the next row's `prev_hash`.
    fn check_link(&self, head: &ChainHead) -> Result<(), StoreError> {
        if self.seq != head.seq + 1 {
            return Err(self.corrupt(format!("expected seq {}", head.seq + 1)));
        }
        if self.prev_hash != head.hash {
            return Err(self.corrupt("prev_hash does not match the previous event's hash"));
        }
        Ok(())
    }

    /// The event the row holds (checked or not).
    fn decode(&self) -> Result<Event, StoreError> {
        let version = u32::try_from(self.version)
            .map_err(|_| self.corrupt(format!("unknown event version {}", self.version)))?;
        let kind = self.decode_kind(version)?;
        Ok(NewEvent {
            id: Uuid::try_parse_ascii(self.id.as_bytes())
                .map_err(|e| self.corrupt(format!("bad id: {e}")))?,
            at: parse_at(self.at).map_err(|e| self.corrupt(format!("bad timestamp: {e}")))?,
            actor: self.actor.to_string(),
            topic: self.topic.map(str::to_string),
            request_id: self
                .request_id
                .map(|id| Uuid::try_parse_ascii(id.as_bytes()))
                .transpose()
                .map_err(|e| self.corrupt(format!("bad request_id: {e}")))?,
            kind,
        }
        .with_seq(self.seq))
    }

    /// The event's kind and data. Data of the current layout is parsed straight from the
    /// column into the event (`EventKind::from_data`); only older layouts go through `upcast`.
    fn decode_kind(&self, version: u32) -> Result<EventKind, StoreError> {
        let bad =
            |e: serde_json::Error| self.corrupt(format!("cannot decode {} event: {e}", self.kind));
        if needs_upcast(version, self.kind) {
            let data: serde_json::Value = serde_json::from_str(self.data)
                .map_err(|e| self.corrupt(format!("data is not JSON: {e}")))?;
            let data = upcast(version, self.kind, data).map_err(|e| self.corrupt(e))?;
            return EventKind::from_columns(self.kind, data).map_err(bad);
        }
        EventKind::from_data(self.kind, self.data).map_err(bad)
    }
}

/// `bytes` as text. Most columns are ASCII (ids, hashes, timestamps, names): checked a word at a
/// time inline, where the general check is a call per column (5% of the replay reader's time).
fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// A stored timestamp. The log writes them in one fixed form (`2026-01-31T23:59:59.123456Z`),
/// which is read field by field here; anything else goes through the general RFC 3339 parser.
fn parse_at(at: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    let fixed = || -> Option<DateTime<Utc>> {
        let b = at.as_bytes();
        if b.len() != 27
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return None;
        }
        let number = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
        };
        let date =
            chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
        let second = number(17, 19)?;
        // A leap second is left to the general parser.
        if second > 59 {
            return None;
        }
        let time = chrono::NaiveTime::from_hms_micro_opt(
            number(11, 13)?,
            number(14, 16)?,
            second,
            number(20, 26)?,
        )?;
        Some(date.and_time(time).and_utc())
    };
    match fixed() {
        Some(at) => Ok(at),
        None => DateTime::parse_from_rfc3339(at).map(|at| at.with_timezone(&Utc)),
    }
}

/// The SQLite event log, opened for replay; `into_writer` then hands it to the writer thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the log in `data_dir` and applies pending migrations.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = crate::sqlite::open(&path, durability).map_err(|e| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        crate::sqlite::migrate(&mut conn, MIGRATIONS)?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the log's size in pages, so that tests can make a commit fail as on a full disk.
    #[cfg(test)]
    pub(crate) fn limit_pages(&self, pages: u32) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "max_page_count", pages)?;
        Ok(())
    }

    /// Reads the whole log in seq order, checking the hash chain, and hands each event to
    /// `apply`. Stops at the first bad row with an error naming its seq.
    pub fn replay(&self, mut apply: impl FnMut(Event)) -> Result<ChainHead, StoreError> {
        replay_rows(&self.conn, ChainHead::default(), &mut apply)
    }

    /// Rebuilds `S` from the snapshot in the data dir, if it matches the chain, and the events
    /// after it; from the whole log otherwise (a snapshot that does not match is logged and
    /// ignored). `use_snapshot` false replays the whole log.
    pub fn recover<S: Snapshotted>(
        &self,
        use_snapshot: bool,
    ) -> Result<(S, ChainHead, Recovery), StoreError> {
        let started = std::time::Instant::now();
        let (mut state, from) = if use_snapshot {
            base::<S>(&self.conn, self.data_dir())
        } else {
            (S::default(), ChainHead::default())
        };
        let loaded = started.elapsed();
        let snapshot_seq = from.seq;
        let head = replay_rows(&self.conn, from, &mut |event| state.apply(event.body))?;
        Ok((
            state,
            head,
            Recovery {
                snapshot_seq,
                snapshot_load: loaded,
                replay: started.elapsed() - loaded,
            },
        ))
    }

    fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Starts the writer thread that owns the connection from now on. The thread ends once
    /// every `Writer` clone is dropped and the last batch is committed; `WriterThread::join`
    /// waits for that.
    pub fn into_writer(self, head: ChainHead) -> Result<(Writer, WriterThread), StoreError> {
        self.start_writer(head, None)
    }

    /// Like `into_writer`, with a snapshot of `S` written whenever `every` events have been
    /// appended since the last one, and at the end (a clean shutdown). A snapshot is taken on
    /// a thread of its own with its own read connection: it loads the last snapshot, replays
    /// the events after it and writes the result, so appends never wait for it and no second
    /// copy of the state is kept between snapshots. `snapshot_seq` is where the snapshot the
    /// state was recovered from stands (`Recovery::snapshot_seq`).
    pub fn into_writer_snapshotting<S: Snapshotted>(
        self,
        head: ChainHead,
        every: u64,
        snapshot_seq: u64,
    ) -> Result<(Writer, WriterThread), StoreError> {
        self.into_writer_snapshotting_from::<S>(head, every, snapshot_seq, None)
    }

    /// Like `into_writer_snapshotting`, with the state at `head` that the start rebuilt (when it
    /// replayed many events past the last snapshot): the thread writes it as the first snapshot
    /// instead of replaying the whole log into a second copy of the state, which would double
    /// the memory of a start from the whole log for as long as that replay takes.
    pub fn into_writer_snapshotting_from<S: Snapshotted>(
        self,
        head: ChainHead,
        every: u64,
        snapshot_seq: u64,
        replayed: Option<S>,
    ) -> Result<(Writer, WriterThread), StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Nudge>(1);
        let taken = Arc::new(AtomicU64::new(snapshot_seq));
        let path = self.path.clone();
        let seen = taken.clone();
        let first = replayed.map(|state| (head.clone(), state));
        let handle = thread::Builder::new()
            .name("event-snapshots".into())
            .spawn(move || snapshot_loop::<S>(&path, rx, &seen, first))
            .map_err(StoreError::WriterStart)?;
        self.start_writer(
            head,
            Some(Snapshots {
                every: every.max(1),
                taken,
                tx,
                thread: handle,
            }),
        )
    }

    fn start_writer(
        self,
        head: ChainHead,
        snapshots: Option<Snapshots>,
    ) -> Result<(Writer, WriterThread), StoreError> {
        let (tx, rx) = mpsc::channel::<AppendJob>();
        let path = self.path.clone();
        let conn = self.conn;
        let observers = Observers::default();
        let told = observers.clone();
        let handle = thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || {
                write_loop(conn, head, rx, &told, snapshots.as_ref());
                // The log is closed: the snapshot thread takes its last one and ends.
                if let Some(snapshots) = snapshots {
                    drop(snapshots.tx);
                    if snapshots.thread.join().is_err() {
                        tracing::error!("The snapshot thread panicked.");
                    }
                }
            })
            .map_err(StoreError::WriterStart)?;
        Ok((
            Writer {
                tx,
                path,
                observers,
            },
            WriterThread(handle),
        ))
    }
}

/// How a start rebuilt its state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    /// The seq of the snapshot used; 0 when the whole log was replayed.
    pub snapshot_seq: u64,
    /// Reading, decoding and checking the snapshot.
    pub snapshot_load: std::time::Duration,
    /// Replaying the events after it.
    pub replay: std::time::Duration,
}

/// The state to replay on from: the snapshot in `data_dir` if it matches the chain, else the
/// empty state at the genesis hash.
fn base<S: Snapshotted>(conn: &Connection, data_dir: &Path) -> (S, ChainHead) {
    let checked = snapshot::read::<S>(data_dir).and_then(|found| match found {
        Some((head, state)) => check_head(conn, &head).map(|()| Some((state, head))),
        None => Ok(None),
    });
    match checked {
        Ok(Some(base)) => base,
        Ok(None) => (S::default(), ChainHead::default()),
        Err(e) => {
            tracing::warn!(error = %e, "Snapshot ignored; replaying the whole log.");
            (S::default(), ChainHead::default())
        }
    }
}

/// A snapshot at `head` belongs to this log: the event at its seq is there, has its hash, and
/// its content still hashes to it.
fn check_head(conn: &Connection, head: &ChainHead) -> Result<(), SnapshotError> {
    if head.seq == 0 {
        return if head.hash == GENESIS_HASH {
            Ok(())
        } else {
            Err(SnapshotError::Mismatch { seq: 0 })
        };
    }
    let mut stmt = conn
        .prepare_cached(&format!("{SELECT_ROWS} WHERE seq = ?1"))
        .map_err(StoreError::from)?;
    let mut rows = stmt.query([head.seq as i64]).map_err(StoreError::from)?;
    let Some(r) = rows.next().map_err(StoreError::from)? else {
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(StoreError::from)?;
        return Err(SnapshotError::Ahead {
            seq: head.seq,
            last: last as u64,
        });
    };
    let row = Columns::read(r).map_err(StoreError::from)?;
    if row.hash != head.hash {
        return Err(SnapshotError::Mismatch { seq: head.seq });
    }
    row.check_hash(&mut Vec::new())?;
    Ok(())
}

/// Replays the rows after `from` (the head of what is already applied), checking the chain.
///
/// Two threads share the work, so that a start uses both cores: a reader (with its own read
/// connection) steps through the rows and checks that each follows the one before (seq and
/// `prev_hash`); this thread applies the events, in order. Checking each row's hash (SHA-256
/// of its columns) and decoding it into an event is done by either, per batch (`Rows`): the
/// reader checks and decodes a share of each batch itself and copies the other rows' columns
/// into one text buffer, which this thread checks and decodes. The share follows the queue
/// between them: when batches pile up the applying side is the slower one and the reader
/// takes more, when none wait it takes less. An error stops the replay at its seq, with every
/// event before it applied, as a single thread would.
fn replay_rows(
    conn: &Connection,
    from: ChainHead,
    apply: &mut impl FnMut(Event),
) -> Result<ChainHead, StoreError> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return replay_rows_here(conn, from, apply);
    };
    let (tx, rx) = mpsc::sync_channel::<Read>(READ_AHEAD);
    // Emptied batches go back to the reader, so that their buffers are reused.
    let (back, returned) = mpsc::sync_channel::<Rows>(READ_AHEAD + 2);
    // Batches sent and not yet taken: how the reader tells which thread is behind.
    let queued = &AtomicUsize::new(0);
    let mut buf = Vec::with_capacity(1024);
    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("event-replay".into())
            .spawn_scoped(scope, move || read_rows(&db, from, &tx, &returned, queued))
            .map_err(StoreError::WriterStart)?;
        let outcome = loop {
            match rx.recv() {
                Ok(Read::Rows(mut rows)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    rows.events.drain(..).for_each(&mut *apply);
                    if let Err(e) = rows.columns().try_for_each(|row| {
                        row.check_hash(&mut buf)?;
                        apply(row.decode()?);
                        Ok::<(), StoreError>(())
                    }) {
                        break Err(e);
                    }
                    rows.clear();
                    let _ = back.try_send(rows);
                }
                Ok(Read::End(head)) => break Ok(head),
                Ok(Read::Failed(e)) => break Err(e),
                Err(_) => {
                    break Err(StoreError::Corrupt {
                        seq: 0,
                        reason: "the replay reader stopped".into(),
                    })
                }
            }
        };
        drop(rx);
        drop(back);
        let _ = reader.join();
        outcome
    })
}

/// Batches the reader may be ahead by.
const READ_AHEAD: usize = 8;
/// Rows per batch.
const READ_BATCH: usize = 512;
/// How much of the log file the replay's reader maps: all of it (SQLite maps no more than the
/// file's size, and no more than its compile-time cap of 2 GB; pages past that are read).
const REPLAY_MMAP_BYTES: i64 = 1 << 40;

enum Read {
    Rows(Rows),
    End(ChainHead),
    Failed(StoreError),
}

/// Rows on their way from the replay's reader to its applying thread: first the events the
/// reader checked and decoded, then the rows it did not, as the text of every column in one
/// buffer and where each column lies in it. The reader has checked that each of those rows
/// follows the one before (seq and `prev_hash`); whether its content hashes to its `hash` is
/// checked by the applying thread, before it decodes the row.
#[derive(Default)]
struct Rows {
    events: Vec<Event>,
    text: String,
    rows: Vec<RowAt>,
}

/// One row of `Rows`: its integers, and the end in `Rows::text` of each text column (in
/// `TEXT_COLUMNS` order; each starts where the one before it ends, the first where the row
/// before ends).
struct RowAt {
    seq: u64,
    version: i64,
    ends: [u32; TEXT_COLUMNS],
    /// Bit 0: `topic` is NULL; bit 1: `request_id` is NULL.
    nulls: u8,
}

/// id, at, kind, actor, topic, request_id, data, prev_hash, hash.
const TEXT_COLUMNS: usize = 9;

impl Rows {
    fn push(&mut self, row: &Columns<'_>) {
        let mut ends = [0u32; TEXT_COLUMNS];
        let texts = [
            row.id,
            row.at,
            row.kind,
            row.actor,
            row.topic.unwrap_or(""),
            row.request_id.unwrap_or(""),
            row.data,
            row.prev_hash,
            row.hash,
        ];
        for (end, text) in ends.iter_mut().zip(texts) {
            self.text.push_str(text);
            // A batch holds 512 rows of SQLite text (1 GB each at most): it would take rows of
            // 8 MB on average to pass 4 GB.
            *end = self.text.len() as u32;
        }
        self.rows.push(RowAt {
            seq: row.seq,
            version: row.version,
            ends,
            nulls: u8::from(row.topic.is_none()) | (u8::from(row.request_id.is_none()) << 1),
        });
    }

    fn len(&self) -> usize {
        self.events.len() + self.rows.len()
    }

    fn clear(&mut self) {
        self.events.clear();
        self.text.clear();
        self.rows.clear();
    }

    fn columns(&self) -> impl Iterator<Item = Columns<'_>> {
        self.rows.iter().enumerate().map(move |(n, row)| {
            // A row's text starts where the one before it ends.
            let mut start = match n.checked_sub(1) {
                Some(before) => self.rows[before].ends[TEXT_COLUMNS - 1] as usize,
                None => 0,
            };
            let mut column = [""; TEXT_COLUMNS];
            for (text, &end) in column.iter_mut().zip(&row.ends) {
                // Slices of text pushed whole: always on character boundaries.
                *text = self.text.get(start..end as usize).unwrap_or_default();
                start = end as usize;
            }
            let [id, at, kind, actor, topic, request_id, data, prev_hash, hash] = column;
            Columns {
                seq: row.seq,
                id,
                at,
                kind,
                version: row.version,
                actor,
                topic: (row.nulls & 1 == 0).then_some(topic),
                request_id: (row.nulls & 2 == 0).then_some(request_id),
                data,
                prev_hash,
                hash,
            }
        })
    }
}

/// A read-only connection for one thread: no SQLite mutex around each call.
fn read_only(db: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The reader's half of `replay_rows`.
fn read_rows(
    db: &Path,
    from: ChainHead,
    tx: &mpsc::SyncSender<Read>,
    returned: &mpsc::Receiver<Rows>,
    queued: &AtomicUsize,
) {
    let result = (|| -> Result<ChainHead, StoreError> {
        let conn = read_only(db)?;
        // Pages straight from the file's mapping instead of a copy per page read; the mapping
        // goes with the connection at the end of the replay.
        conn.pragma_update(None, "mmap_size", REPLAY_MMAP_BYTES)?;
        let mut rows = Cursor::new(
            &conn,
            &format!("{SELECT_ROWS} WHERE seq > ?1 ORDER BY seq"),
            from.seq as i64,
        )?;
        let mut head = from;
        let mut buf = Vec::with_capacity(1024);
        let fresh = || returned.try_recv().unwrap_or_default();
        let mut batch = fresh();
        // How many rows of this batch the reader decodes (see `replay_rows`).
        let share = || match queued.load(Ordering::Relaxed) {
            0 => 0,
            1 => READ_BATCH / 4,
            2 => READ_BATCH / 2,
            3 => READ_BATCH * 3 / 4,
            _ => READ_BATCH,
        };
        let mut decode_here = share();
        while let Some(r) = rows.next()? {
            let checked = Columns::from_raw(&r)
                .map_err(|e| StoreError::Corrupt {
                    seq: head.seq + 1,
                    reason: format!("unreadable row: {e}"),
                })
                .and_then(|row| {
                    row.check_link(&head)?;
                    // Decoded rows come first in a batch: the order of the log. The applying
                    // thread checks the hash of the others.
                    if batch.rows.is_empty() && batch.events.len() < decode_here {
                        row.check_hash(&mut buf)?;
                        batch.events.push(row.decode()?);
                    } else {
                        batch.push(&row);
                    }
                    head.seq = row.seq;
                    head.hash.clear();
                    head.hash.push_str(row.hash);
                    Ok(())
                });
            if let Err(e) = checked {
                // What came before the bad row is applied first.
                let _ = tx.send(Read::Rows(batch));
                return Err(e);
            }
            if batch.len() == READ_BATCH {
                let full = std::mem::replace(&mut batch, fresh());
                queued.fetch_add(1, Ordering::Relaxed);
                if tx.send(Read::Rows(full)).is_err() {
                    // Nobody is applying any more.
                    return Ok(head);
                }
                decode_here = share();
            }
        }
        queued.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Read::Rows(batch));
        Ok(head)
    })();
    let _ = tx.send(match result {
        Ok(head) => Read::End(head),
        Err(e) => Read::Failed(e),
    });
}

/// `replay_rows` on one thread, for a connection without a file.
fn replay_rows_here(
    conn: &Connection,
    from: ChainHead,
    apply: &mut impl FnMut(Event),
) -> Result<ChainHead, StoreError> {
    let mut rows = Cursor::new(
        conn,
        &format!("{SELECT_ROWS} WHERE seq > ?1 ORDER BY seq"),
        from.seq as i64,
    )?;
    let mut head = from;
    let mut buf = Vec::with_capacity(1024);
    while let Some(r) = rows.next()? {
        let row = Columns::from_raw(&r).map_err(|e| StoreError::Corrupt {
            seq: head.seq + 1,
            reason: format!("unreadable row: {e}"),
        })?;
        row.check(&head, &mut buf)?;
        let event = row.decode()?;
        head.seq = row.seq;
        head.hash.clear();
        head.hash.push_str(row.hash);
        apply(event);
    }
    Ok(head)
}

/// Checks the chain of the log in `data_dir` without changing anything.
pub fn verify(data_dir: &Path) -> Result<ChainHead, StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(StoreError::Missing(path));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    replay_rows(&conn, ChainHead::default(), &mut |_| {})
}

/// The writer's side of the snapshot thread.
struct Snapshots {
    every: u64,
    /// The seq of the last snapshot written (or recovered from).
    taken: Arc<AtomicU64>,
    tx: mpsc::SyncSender<Nudge>,
    thread: thread::JoinHandle<()>,
}

impl Snapshots {
    /// Asks for a snapshot if `every` events have come since the last. Never waits: if the
    /// thread is busy it already has a request, and takes the newer events with it.
    fn after_commit(&self, head: &ChainHead) {
        if head.seq >= self.taken.load(Ordering::Relaxed) + self.every {
            let _ = self.tx.try_send(Nudge);
        }
    }
}

/// A snapshot is due.
struct Nudge;

/// The snapshot thread: one snapshot per nudge, and a last one when the writer has closed.
fn snapshot_loop<S: Snapshotted>(
    db: &Path,
    rx: mpsc::Receiver<Nudge>,
    taken: &AtomicU64,
    first: Option<(ChainHead, S)>,
) {
    let conn = match read_only(db) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot open the log for snapshots; none will be written.");
            return;
        }
    };
    let dir = db.parent().unwrap_or(Path::new("."));
    let take = || {
        let started = std::time::Instant::now();
        match take_snapshot::<S>(&conn, dir, taken.load(Ordering::Relaxed)) {
            Ok(Some(written)) => {
                taken.store(written.seq, Ordering::Relaxed);
                tracing::info!(
                    seq = written.seq,
                    bytes = written.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Snapshot written."
                );
            }
            Ok(None) => {}
            // The log is intact and a later snapshot may succeed; a start without one replays.
            Err(e) => tracing::warn!(error = %e, "Snapshot not written."),
        }
    };
    if let Some((head, state)) = first {
        let started = std::time::Instant::now();
        let written = snapshot::encode(&head, &state).and_then(|bytes| {
            drop(state);
            snapshot::write(dir, &bytes).map(|()| bytes.len())
        });
        crate::memory::give_back();
        match written {
            Ok(bytes) => {
                taken.store(head.seq, Ordering::Relaxed);
                tracing::info!(
                    seq = head.seq,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Snapshot written."
                );
            }
            Err(e) => tracing::warn!(error = %e, "Snapshot not written."),
        }
    }
    while rx.recv().is_ok() {
        take();
    }
    take();
}

struct Written {
    seq: u64,
    bytes: usize,
}

/// Writes a snapshot of the log as it stands, unless the last one (at `taken`) already is.
fn take_snapshot<S: Snapshotted>(
    conn: &Connection,
    dir: &Path,
    taken: u64,
) -> Result<Option<Written>, SnapshotError> {
    let last: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(StoreError::from)?;
    if last as u64 <= taken {
        return Ok(None);
    }
    let (mut state, from) = base::<S>(conn, dir);
    let head = replay_rows(conn, from, &mut |event| state.apply(event.body))?;
    let bytes = snapshot::encode(&head, &state)?;
    drop(state);
    snapshot::write(dir, &bytes)?;
    let written = Written {
        seq: head.seq,
        bytes: bytes.len(),
    };
    drop(bytes);
    // The copy of the state this thread built is gone; so are its pages.
    crate::memory::give_back();
    Ok(Some(written))
}

/// The writer thread; joined at shutdown so the last commit is on disk before `serve` returns.
pub struct WriterThread(thread::JoinHandle<()>);

impl WriterThread {
    /// Waits until the writer has committed its last batch and closed the log (and, with
    /// snapshots, the last snapshot is written). Every `Writer` must be dropped first, or this
    /// waits for ever.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("The event writer thread panicked.");
        }
    }
}

struct AppendJob {
    events: Vec<NewEvent>,
    stream: Option<Stream>,
    reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
}

/// Called with every committed batch, in seq order, on the writer thread: keep it short.
pub type Observer = Box<dyn Fn(&[Event]) + Send>;

#[derive(Clone, Default)]
struct Observers(Arc<Mutex<Vec<Observer>>>);

impl Observers {
    fn tell(&self, events: &[Event]) {
        let observers = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for observe in observers.iter() {
            observe(events);
        }
    }
}

/// The handle to the writer thread. Appends from many callers are committed together.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<AppendJob>,
    path: PathBuf,
    observers: Observers,
}

impl Writer {
    /// Queues events for the next commit; the receiver resolves once they are durable.
    pub fn append(
        &self,
        events: Vec<NewEvent>,
    ) -> oneshot::Receiver<Result<Vec<Event>, StoreError>> {
        self.append_to(None, events)
    }

    /// Like `append`, for a stream whose batches depend on each other (see `Stream`).
    pub fn append_to(
        &self,
        stream: Option<Stream>,
        events: Vec<NewEvent>,
    ) -> oneshot::Receiver<Result<Vec<Event>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let job = AppendJob {
            events,
            stream,
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            let _ = job.reply.send(Err(StoreError::WriterGone));
        }
        rx
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers `observer` for every batch committed from now on.
    pub fn observe(&self, observer: Observer) {
        self.observers
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(observer);
    }
}

/// Group commit: take every job waiting, write them in one transaction, answer them all.
/// Returns how many transactions it committed.
fn write_loop(
    mut conn: Connection,
    mut head: ChainHead,
    rx: mpsc::Receiver<AppendJob>,
    observers: &Observers,
    snapshots: Option<&Snapshots>,
) -> u64 {
    let mut commits = 0;
    // A start that replayed many events past the last snapshot takes one at once.
    if let Some(snapshots) = snapshots {
        snapshots.after_commit(&head);
    }
    // Per stream, the newest generation that had a batch fail: its later batches are refused.
    let mut failed: HashMap<&'static str, u64> = HashMap::new();
    let superseded = |job: &AppendJob, failed: &HashMap<&'static str, u64>| {
        job.stream
            .is_some_and(|s| failed.get(s.name).is_some_and(|&g| s.generation <= g))
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::new();
        let mut count = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if superseded(&job, &failed) {
                let _ = job.reply.send(Err(StoreError::Superseded));
            } else {
                count += job.events.len();
                jobs.push(job);
            }
            if count < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        match commit_batch(&mut conn, &head, &jobs) {
            Ok((new_head, written)) => {
                tracing::debug!(
                    events = count,
                    jobs = jobs.len(),
                    seq = new_head.seq,
                    "Events committed."
                );
                head = new_head;
                commits += 1;
                if let Some(snapshots) = snapshots {
                    snapshots.after_commit(&head);
                }
                let all: Vec<Event> = written.iter().flatten().cloned().collect();
                observers.tell(&all);
                for (job, events) in jobs.into_iter().zip(written) {
                    let _ = job.reply.send(Ok(events));
                }
            }
            Err(e) => {
                let e = StoreError::from_commit(&e);
                tracing::error!(error = %e, events = count, "Event commit failed; nothing of the batch was written.");
                for job in jobs {
                    if let Some(stream) = job.stream {
                        let newest = failed.entry(stream.name).or_insert(stream.generation);
                        *newest = (*newest).max(stream.generation);
                    }
                    let again = match &e {
                        StoreError::Full(m) => StoreError::Full(m.clone()),
                        StoreError::Commit(m) => StoreError::Commit(m.clone()),
                        other => StoreError::Commit(other.to_string()),
                    };
                    let _ = job.reply.send(Err(again));
                }
            }
        }
    }
    commits
}

type Committed = (ChainHead, Vec<Vec<Event>>);

fn commit_batch(
    conn: &mut Connection,
    head: &ChainHead,
    jobs: &[AppendJob],
) -> Result<Committed, StoreError> {
    let tx = conn.transaction()?;
    let mut seq = head.seq;
    let mut hash = head.hash.clone();
    let mut written = Vec::with_capacity(jobs.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (seq, id, at, kind, version, actor, topic, request_id, data, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for job in jobs {
            let mut events = Vec::with_capacity(job.events.len());
            for event in &job.events {
                seq += 1;
                let row = Row::from_new(event, seq, &hash)?;
                insert.execute(params![
                    row.seq as i64,
                    row.id,
                    row.at,
                    row.kind,
                    row.version,
                    row.actor,
                    row.topic,
                    row.request_id,
                    row.data,
                    row.prev_hash,
                    row.hash,
                ])?;
                hash = row.hash;
                events.push(event.clone().with_seq(seq));
            }
            written.push(events);
        }
    }
    tx.commit()?;
    Ok((ChainHead { seq, hash }, written))
}

/// The events of the requests `ids`, in seq order, on a read connection of their own (WAL lets
/// it run beside the writer): one indexed read (`events_request`) however many ids.
pub fn request_events(db: &Path, ids: &[Uuid]) -> Result<Vec<NewEvent>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let conn = read_only(db)?;
    // A UUID's text needs no escaping: the ids are one JSON array parameter.
    let list: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    let list = format!("[{}]", list.join(","));
    let mut stmt = conn.prepare(&format!(
        "{SELECT_ROWS} WHERE request_id IN (SELECT value FROM json_each(?1)) ORDER BY seq"
    ))?;
    let mut rows = stmt.query([list])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        let columns = Columns::read(row)?;
        events.push(columns.decode()?.body);
    }
    Ok(events)
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub topic: Option<String>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub request_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Past this seq in the listing's order: above it oldest first, below it newest first.
    pub after: Option<u64>,
    pub limit: usize,
    /// Newest first. The cursor then runs downwards, so one `after` serves both orders.
    pub descending: bool,
    /// For a reader who may not see everything: only events about these topics, about these
    /// requests, or by this actor.
    pub scope: Option<AuditScope>,
}

/// The part of the trail a non-admin reads (see `actors::access`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditScope {
    pub topics: Vec<String>,
    pub request_ids: Vec<String>,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub id: String,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub topic: Option<String>,
    pub request_id: Option<String>,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// The `after` value for the next page, when there may be one.
    pub next: Option<u64>,
}

impl AuditQuery {
    /// Runs the query on its own read connection (WAL lets it run beside the writer).
    pub fn run(&self, db: &Path) -> Result<AuditPage, StoreError> {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let (past, order, start) = if self.descending {
            ("<", "DESC", self.after.map_or(i64::MAX, |a| a as i64))
        } else {
            (">", "ASC", self.after.map_or(0, |a| a as i64))
        };
        let mut sql = format!(
            "SELECT seq, id, at, kind, actor, topic, request_id, data FROM events WHERE seq {past} ?1"
        );
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(start)];
        let mut filter = |column: &str, op: &str, value: Box<dyn rusqlite::ToSql>| {
            args.push(value);
            sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
        };
        if let Some(topic) = &self.topic {
            filter("topic", "=", Box::new(topic.clone()));
        }
        if let Some(actor) = &self.actor {
            filter("actor", "=", Box::new(actor.clone()));
        }
        if let Some(kind) = &self.kind {
            filter("kind", "=", Box::new(kind.clone()));
        }
        if let Some(id) = &self.request_id {
            filter("request_id", "=", Box::new(id.to_string()));
        }
        // Stored timestamps are fixed-width RFC 3339 in UTC, so text order is time order.
        if let Some(since) = &self.since {
            filter(
                "at",
                ">=",
                Box::new(since.to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
        if let Some(until) = &self.until {
            filter(
                "at",
                "<",
                Box::new(until.to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
        if let Some(scope) = &self.scope {
            // Each set is one JSON array parameter, however many topics a reader has.
            let topics = serde_json::to_string(&scope.topics).unwrap_or_else(|_| "[]".into());
            let ids = serde_json::to_string(&scope.request_ids).unwrap_or_else(|_| "[]".into());
            args.push(Box::new(topics));
            let t = args.len();
            args.push(Box::new(ids));
            let r = args.len();
            args.push(Box::new(scope.actor.clone()));
            let a = args.len();
            sql.push_str(&format!(
                " AND (topic IN (SELECT value FROM json_each(?{t})) \
                 OR request_id IN (SELECT value FROM json_each(?{r})) OR actor = ?{a})"
            ));
        }
        // One extra row tells whether another page follows.
        args.push(Box::new(self.limit as i64 + 1));
        sql.push_str(&format!(" ORDER BY seq {order} LIMIT ?{}", args.len()));
        let mut stmt = conn.prepare(&sql)?;
        let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
        let mut events = stmt
            .query_map(params.as_slice(), |r| {
                let data: String = r.get(7)?;
                Ok(AuditEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    id: r.get(1)?,
                    at: r.get(2)?,
                    kind: r.get(3)?,
                    actor: r.get(4)?,
                    topic: r.get(5)?,
                    request_id: r.get(6)?,
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let next = if events.len() > self.limit {
            events.truncate(self.limit);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }
}

/// Appends `events` to the log in `data_dir` after `head` as rows of row `version`, as a
/// KafFlow writing that version left them: how tests build logs of old and new rows.
#[cfg(test)]
pub(crate) fn append_rows_at(
    data_dir: &Path,
    head: ChainHead,
    events: &[NewEvent],
    version: i64,
) -> Result<ChainHead, StoreError> {
    Store::open(data_dir, Durability::Normal)?;
    let conn = Connection::open(data_dir.join(DB_FILE))?;
    let mut head = head;
    for event in events {
        let row = Row::from_new_at(event, head.seq + 1, &head.hash, version)?;
        conn.execute(
            "INSERT INTO events (seq, id, at, kind, version, actor, topic, request_id, data, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                row.seq as i64,
                row.id,
                row.at,
                row.kind,
                row.version,
                row.actor,
                row.topic,
                row.request_id,
                row.data,
                row.prev_hash,
                row.hash,
            ],
        )?;
        head = ChainHead {
            seq: row.seq,
            hash: row.hash,
        };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> NewEvent {
        NewEvent::now(
            "alice",
            Some(&format!("t{n}")),
            Some(Uuid::now_v7()),
            EventKind::RequestRejected {
                reason: format!("r{n}"),
            },
        )
    }

    #[tokio::test]
    async fn appends_replay_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let head = store.replay(|_| {}).expect("replay");
        let (writer, _thread) = store.into_writer(head).expect("writer");
        let pending: Vec<_> = (0..50)
            .map(|n| writer.append(vec![event(n), event(n + 100)]))
            .collect();
        let mut written = Vec::new();
        for rx in pending {
            written.extend(rx.await.expect("reply").expect("commit"));
        }
        let seqs: Vec<u64> = written.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());

        let head = verify(dir.path()).expect("verify");
        assert_eq!(head.seq, 100);
        let store = Store::open(dir.path(), Durability::Normal).expect("reopen");
        let mut replayed = Vec::new();
        store.replay(|e| replayed.push(e)).expect("replay");
        assert_eq!(replayed, written);
    }

    /// The hash as the log was first written: `json!` of the columns.
    fn reference_hash(c: &Columns<'_>) -> String {
        let input = serde_json::json!([
            c.prev_hash,
            c.seq,
            c.id,
            c.at,
            c.kind,
            c.version,
            c.actor,
            c.topic,
            c.request_id,
            c.data,
        ]);
        hex::encode(Sha256::digest(input.to_string().as_bytes()))
    }

    #[test]
    fn the_hash_input_is_the_json_array_of_the_columns() {
        let awkward = [
            "plain",
            "quote \" and \\ back",
            "tab\tnew\nline\u{1}",
            "é ü 日本 🎉",
            "",
        ];
        for (n, text) in awkward.iter().enumerate() {
            let c = Columns {
                seq: u64::MAX - n as u64,
                id: text,
                at: "2026-01-01T00:00:00.000000Z",
                kind: text,
                version: -(n as i64),
                actor: text,
                topic: (n % 2 == 0).then_some(*text),
                request_id: (n % 3 == 0).then_some(*text),
                data: text,
                prev_hash: GENESIS_HASH,
                hash: "",
            };
            assert_eq!(
                hex::encode(c.hash(&mut Vec::new())),
                reference_hash(&c),
                "{text:?}"
            );
        }
    }

    /// The bytes of the version 3 input, spelled out: what docs/architecture.md documents.
    #[test]
    fn the_length_prefixed_input_is_as_documented() {
        let c = Columns {
            seq: 258,
            id: "i",
            at: "at",
            kind: "k\"",
            version: 3,
            actor: "é",
            topic: None,
            request_id: Some(""),
            data: "{}",
            prev_hash: "ph",
            hash: "",
        };
        let mut expected: Vec<u8> = Vec::new();
        expected.extend_from_slice(b"\0\0\0\x02ph");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(b"\0\0\0\x01i");
        expected.extend_from_slice(b"\0\0\0\x02at");
        expected.extend_from_slice(b"\0\0\0\x02k\"");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        expected.push(0);
        expected.extend_from_slice(b"\x01\0\0\0\0");
        expected.extend_from_slice(b"\0\0\0\x02{}");
        let mut buf = Vec::new();
        let hash = c.hash(&mut buf);
        assert_eq!(buf, expected);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&expected)));
        // Version 2 of the same columns: the JSON array.
        let old = Columns { version: 2, ..c };
        assert_eq!(hex::encode(old.hash(&mut buf)), reference_hash(&old));
    }

    #[test]
    fn timestamps_read_field_by_field_as_the_general_parser_reads_them() {
        for at in [
            "2026-12-06T12:47:34.123456Z",
            "1970-01-01T00:00:00.000000Z",
            "2024-02-29T23:59:59.999999Z",
            // Not the fixed form: the general parser.
            "2026-12-06T12:47:34Z",
            "2026-12-06T13:47:34.5+01:00",
            "2016-12-31T23:59:60.000000Z",
        ] {
            assert_eq!(
                parse_at(at).expect(at),
                DateTime::parse_from_rfc3339(at)
                    .expect(at)
                    .with_timezone(&Utc),
                "{at}"
            );
        }
        for bad in [
            "2026-02-30T00:00:00.000000Z",
            "2026-12-06T24:00:00.000000Z",
            "2026-12-06T12:47:3x.123456Z",
            "",
        ] {
            assert!(parse_at(bad).is_err(), "{bad}");
        }
    }

    /// A log written before version 3 (rows hashed over their JSON encoding) and continued by
    /// this version (length-prefixed input) replays and verifies as one chain; an edit of a row
    /// of either kind is caught at its seq.
    #[tokio::test]
    async fn a_log_of_old_rows_then_new_rows_verifies_and_edits_of_either_are_caught() {
        for edited in [None, Some(3), Some(8)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let old: Vec<NewEvent> = (0..5).map(event).collect();
            let head = append_rows_at(dir.path(), ChainHead::default(), &old, 2).expect("old rows");
            let store = Store::open(dir.path(), Durability::Normal).expect("open");
            assert_eq!(store.replay(|_| {}).expect("replay"), head);
            let (writer, thread) = store.into_writer(head).expect("writer");
            let new: Vec<NewEvent> = (5..10).map(event).collect();
            writer
                .append(new.clone())
                .await
                .expect("reply")
                .expect("commit");
            drop(writer);
            thread.join();

            let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
            let versions: Vec<i64> = conn
                .prepare("SELECT version FROM events ORDER BY seq")
                .expect("prepare")
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("versions");
            assert_eq!(versions, [2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
            let Some(seq) = edited else {
                assert_eq!(verify(dir.path()).expect("verify").seq, 10);
                let store = Store::open(dir.path(), Durability::Normal).expect("open");
                let mut replayed = Vec::new();
                store.replay(|e| replayed.push(e.body)).expect("replay");
                assert_eq!(replayed, old.into_iter().chain(new).collect::<Vec<_>>());
                continue;
            };
            conn.execute_batch("DROP TRIGGER events_no_update")
                .expect("drop");
            conn.execute(
                "UPDATE events SET data = '{\"reason\":\"forged\"}' WHERE seq = ?1",
                [seq],
            )
            .expect("update");
            match verify(dir.path()) {
                Err(StoreError::Corrupt { seq: at, .. }) => assert_eq!(at, seq),
                other => panic!("expected corruption at seq {seq}, got {other:?}"),
            }
        }
    }

    /// Batches of decoded events and of rows left to the applying thread, many of them: the
    /// events come out in the log's order, and a bad row late in the log stops the replay at
    /// its seq with every event before it applied.
    #[tokio::test]
    async fn a_long_replay_applies_every_event_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let (writer, thread) = store.into_writer(ChainHead::default()).expect("writer");
        let written = writer
            .append((0..3000).map(event).collect())
            .await
            .expect("reply")
            .expect("commit");
        drop(writer);
        thread.join();
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let mut replayed = Vec::new();
        let head = store
            .replay(|e| {
                // A slow applier: the reader decodes more of each batch.
                if e.seq % 64 == 0 {
                    thread::sleep(std::time::Duration::from_micros(200));
                }
                replayed.push(e)
            })
            .expect("replay");
        assert_eq!(head.seq, 3000);
        assert_eq!(replayed, written);

        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        conn.execute_batch("DROP TRIGGER events_no_update")
            .expect("drop");
        conn.execute("UPDATE events SET kind = 'exploded' WHERE seq = 2900", [])
            .expect("update");
        let mut applied = 0;
        match store.replay(|_| applied += 1) {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 2900),
            other => panic!("expected corruption at seq 2900, got {other:?}"),
        }
        assert_eq!(applied, 2899, "every event before the bad row is applied");
    }

    /// The topics of the events applied, in order: enough to tell two replays apart.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Topics(Vec<String>);

    impl Snapshotted for Topics {
        fn apply(&mut self, event: NewEvent) {
            self.0.push(event.topic.unwrap_or_default());
        }
    }

    async fn log_of(dir: &Path, n: usize) -> ChainHead {
        let store = Store::open(dir, Durability::Normal).expect("open");
        let head = store.replay(|_| {}).expect("replay");
        let (writer, thread) = store.into_writer(head).expect("writer");
        writer
            .append((0..n).map(event).collect())
            .await
            .expect("reply")
            .expect("commit");
        drop(writer);
        thread.join();
        verify(dir).expect("chain")
    }

    fn recover(dir: &Path) -> (Topics, ChainHead, Recovery) {
        let store = Store::open(dir, Durability::Normal).expect("open");
        store.recover::<Topics>(true).expect("recover")
    }

    #[tokio::test]
    async fn a_snapshot_that_matches_the_chain_is_used_and_one_that_does_not_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        log_of(dir.path(), 30).await;
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        let written = take_snapshot::<Topics>(&conn, dir.path(), 0)
            .expect("snapshot")
            .expect("written");
        assert_eq!(written.seq, 30);
        assert!(
            take_snapshot::<Topics>(&conn, dir.path(), 30)
                .expect("nothing new")
                .is_none(),
            "no snapshot when nothing came since the last"
        );
        drop(conn);
        // Ten more events after the snapshot.
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let head = store.replay(|_| {}).expect("replay");
        let (writer, thread) = store.into_writer(head).expect("writer");
        writer
            .append((30..40).map(event).collect())
            .await
            .expect("reply")
            .expect("commit");
        drop(writer);
        thread.join();

        let full: Vec<String> = (0..40).map(|n| format!("t{n}")).collect();
        let (state, head, recovery) = recover(dir.path());
        assert_eq!(recovery.snapshot_seq, 30, "the snapshot is used");
        assert_eq!(head.seq, 40);
        assert_eq!(state.0, full, "snapshot plus tail is the full replay");

        let path = dir.path().join(snapshot::FILE);
        let good = std::fs::read(&path).expect("snapshot");
        let (at, _): (ChainHead, Topics) = snapshot::decode(&good).expect("decode");
        let mut wrong_hash = at.clone();
        wrong_hash.hash = "cd".repeat(32);
        let mut wrong_seq = at.clone();
        wrong_seq.seq = 29;
        let mut ahead = at.clone();
        ahead.seq = 41;
        let snapshots = [
            snapshot::encode(&wrong_hash, &Topics(vec!["forged".into()])).expect("encode"),
            snapshot::encode(&wrong_seq, &Topics(vec!["forged".into()])).expect("encode"),
            snapshot::encode(&ahead, &Topics(vec!["forged".into()])).expect("encode"),
            good[..good.len() - 3].to_vec(),
            b"garbage".to_vec(),
        ];
        for (n, bytes) in snapshots.iter().enumerate() {
            std::fs::write(&path, bytes).expect("write");
            let (state, head, recovery) = recover(dir.path());
            assert_eq!(recovery.snapshot_seq, 0, "bad snapshot {n} is ignored");
            assert_eq!((state.0, head.seq), (full.clone(), 40), "bad snapshot {n}");
        }
        // Turned off: not even read.
        std::fs::write(&path, &good).expect("write");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let (_, _, recovery) = store.recover::<Topics>(false).expect("recover");
        assert_eq!(recovery.snapshot_seq, 0);
    }

    #[tokio::test]
    async fn a_snapshot_of_an_edited_event_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        log_of(dir.path(), 5).await;
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        take_snapshot::<Topics>(&conn, dir.path(), 0).expect("snapshot");
        // The row at the snapshot's seq keeps its hash, but its content changed.
        conn.execute_batch("DROP TRIGGER events_no_update")
            .expect("drop");
        conn.execute("UPDATE events SET actor = 'mallory' WHERE seq = 5", [])
            .expect("update");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        assert!(check_head(&store.conn, &verify_head(dir.path())).is_err());
        // Not trusted: the whole log is replayed, which finds the edit.
        match store.recover::<Topics>(true) {
            Err(StoreError::Corrupt { seq: 5, .. }) => {}
            other => panic!("the edited head must not be trusted: {other:?}"),
        }
    }

    fn verify_head(dir: &Path) -> ChainHead {
        let bytes = std::fs::read(dir.join(snapshot::FILE)).expect("snapshot");
        snapshot::decode::<Topics>(&bytes).expect("decode").0
    }

    /// A start that replayed the log hands its state to the snapshot thread, which writes it
    /// as it is (no second replay into a copy of its own) and then skips the snapshot the
    /// writer asks for at once.
    #[tokio::test]
    async fn the_state_a_start_replayed_is_the_first_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = log_of(dir.path(), 12).await;
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        // Not what the log rebuilds: the snapshot shows which state was written.
        let handed = Topics(vec!["handed over".into()]);
        let (writer, thread) = store
            .into_writer_snapshotting_from::<Topics>(head.clone(), 10, 0, Some(handed.clone()))
            .expect("writer");
        assert_eq!(wait_for_snapshot(dir.path(), 12), 12);
        let bytes = std::fs::read(dir.path().join(snapshot::FILE)).expect("snapshot");
        let (at, state) = snapshot::decode::<Topics>(&bytes).expect("decode");
        assert_eq!(at, head);
        assert_eq!(
            state, handed,
            "the state handed over, not a replay of the log"
        );
        drop(writer);
        thread.join();
        let bytes = std::fs::read(dir.path().join(snapshot::FILE)).expect("snapshot");
        let (_, state) = snapshot::decode::<Topics>(&bytes).expect("decode");
        assert_eq!(state, handed, "nothing appended since: no other snapshot");
    }

    #[tokio::test]
    async fn the_writer_takes_snapshots_every_n_events_and_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let (writer, thread) = store
            .into_writer_snapshotting::<Topics>(ChainHead::default(), 10, 0)
            .expect("writer");
        for n in 0..25 {
            writer
                .append(vec![event(n)])
                .await
                .expect("reply")
                .expect("commit");
        }
        // Every ten events: one at 10 or later has been asked for.
        let taken = wait_for_snapshot(dir.path(), 10);
        assert!(taken >= 10, "a snapshot after ten events, got {taken}");
        drop(writer);
        thread.join();
        assert_eq!(verify_head(dir.path()).seq, 25, "the last one at shutdown");
        let (state, _, recovery) = recover(dir.path());
        assert_eq!(recovery.snapshot_seq, 25);
        assert_eq!(state.0.len(), 25);
    }

    pub(super) fn wait_for_snapshot(dir: &Path, at_least: u64) -> u64 {
        for _ in 0..100 {
            if let Ok(bytes) = std::fs::read(dir.join(snapshot::FILE)) {
                let seq = snapshot::decode::<Topics>(&bytes).expect("decode").0.seq;
                if seq >= at_least {
                    return seq;
                }
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
        0
    }

    #[tokio::test]
    async fn waiting_appends_share_one_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Full).expect("open");
        let (tx, rx) = mpsc::channel();
        let replies: Vec<_> = (0..40)
            .map(|n| {
                let (reply, done) = oneshot::channel();
                tx.send(AppendJob {
                    events: vec![event(n)],
                    stream: None,
                    reply,
                })
                .expect("queued");
                done
            })
            .collect();
        drop(tx);
        // Forty callers were waiting when the writer woke: one transaction serves them all.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let observers = Observers::default();
        let log = seen.clone();
        observers
            .0
            .lock()
            .expect("lock")
            .push(Box::new(move |events: &[Event]| {
                log.lock()
                    .expect("lock")
                    .extend(events.iter().map(|e| e.seq));
            }));
        assert_eq!(
            write_loop(store.conn, ChainHead::default(), rx, &observers, None),
            1
        );
        assert_eq!(*seen.lock().expect("lock"), (1..=40).collect::<Vec<u64>>());
        for (n, done) in replies.into_iter().enumerate() {
            let events = done.await.expect("reply").expect("commit");
            assert_eq!(events[0].seq, n as u64 + 1);
        }
        assert_eq!(verify(dir.path()).expect("verify").seq, 40);
    }

    #[tokio::test]
    async fn tampering_is_caught_at_its_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let (writer, _thread) = store.into_writer(ChainHead::default()).expect("writer");
        writer
            .append((0..5).map(event).collect())
            .await
            .expect("reply")
            .expect("commit");

        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        let refused = conn.execute("UPDATE events SET actor = 'mallory' WHERE seq = 3", []);
        assert!(refused.is_err(), "the trigger must refuse UPDATE");
        assert!(conn
            .execute("DELETE FROM events WHERE seq = 5", [])
            .is_err());
        assert!(
            conn.execute(
                "INSERT INTO events (seq, id, at, kind, version, actor, data, prev_hash, hash)
                 VALUES (9, 'x', 'x', 'x', 1, 'x', '{}', 'x', 'x')",
                [],
            )
            .is_err(),
            "a gap in seq must be refused"
        );
        conn.execute_batch("DROP TRIGGER events_no_update")
            .expect("drop");
        conn.execute("UPDATE events SET actor = 'mallory' WHERE seq = 3", [])
            .expect("update");
        match verify(dir.path()) {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 3),
            other => panic!("expected corruption at seq 3, got {other:?}"),
        }
    }

    /// The replay reads columns as raw bytes (`cursor.rs`): an edit of any column, to other
    /// text, to NULL, to another type or to bytes that are not UTF-8, still stops it at the
    /// edited row's seq.
    #[tokio::test]
    async fn an_edit_of_any_column_is_caught_at_its_seq() {
        let zeros = "0".repeat(64);
        let edits = [
            "id = '00000000-0000-0000-0000-000000000000'".to_string(),
            "at = '2020-01-01T00:00:00.000000Z'".to_string(),
            "kind = 'request_withdrawn'".to_string(),
            "version = 2".to_string(),
            // The column's INTEGER affinity stores '3' as 3: a REAL is another type.
            "version = 3.5".to_string(),
            "actor = 'mallory'".to_string(),
            "actor = CAST('alice' AS BLOB) || X'ff'".to_string(),
            "topic = NULL".to_string(),
            "topic = 'elsewhere'".to_string(),
            "request_id = NULL".to_string(),
            "data = '{\"reason\":\"forged\"}'".to_string(),
            format!("prev_hash = '{zeros}'"),
            format!("hash = '{zeros}'"),
        ];
        for edit in edits {
            let dir = tempfile::tempdir().expect("tempdir");
            let events: Vec<NewEvent> = (0..5).map(event).collect();
            append_rows_at(
                dir.path(),
                ChainHead::default(),
                &events,
                i64::from(EVENT_VERSION),
            )
            .expect("rows");
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
            conn.execute_batch("DROP TRIGGER events_no_update")
                .expect("drop");
            conn.execute(&format!("UPDATE events SET {edit} WHERE seq = 3"), [])
                .expect("update");
            match verify(dir.path()) {
                Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 3, "{edit}"),
                other => panic!("{edit}: expected corruption at seq 3, got {other:?}"),
            }
            let store = Store::open(dir.path(), Durability::Normal).expect("open");
            let mut applied = Vec::new();
            match store.replay(|e| applied.push(e.body)) {
                Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 3, "{edit}"),
                other => panic!("{edit}: expected corruption at seq 3, got {other:?}"),
            }
            assert_eq!(
                applied,
                events[..2],
                "{edit}: the events before it are applied"
            );
        }
    }

    #[tokio::test]
    async fn audit_pages_and_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        let (writer, _thread) = store.into_writer(ChainHead::default()).expect("writer");
        writer
            .append((0..10).map(event).collect())
            .await
            .expect("reply")
            .expect("commit");
        let db = dir.path().join(DB_FILE);
        let page = AuditQuery {
            limit: 4,
            scope: None,
            ..Default::default()
        }
        .run(&db)
        .expect("query");
        assert_eq!(page.events.len(), 4);
        assert_eq!(page.next, Some(4));
        let last = AuditQuery {
            limit: 4,
            scope: None,
            after: Some(8),
            ..Default::default()
        }
        .run(&db)
        .expect("query");
        assert_eq!(
            last.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![9, 10]
        );
        assert_eq!(last.next, None);
        let one = AuditQuery {
            limit: 100,
            scope: None,
            topic: Some("t3".into()),
            ..Default::default()
        }
        .run(&db)
        .expect("query");
        assert_eq!(one.events.len(), 1);
        assert_eq!(one.events[0].data["reason"], "r3");

        // Newest first: the cursor runs downwards and reaches seq 1 in whole pages.
        let mut seqs = Vec::new();
        let mut after = None;
        loop {
            let page = AuditQuery {
                limit: 4,
                after,
                descending: true,
                ..Default::default()
            }
            .run(&db)
            .expect("query");
            seqs.extend(page.events.iter().map(|e| e.seq));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seqs, (1..=10).rev().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_batch_supersedes_the_later_ones_of_its_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Durability::Normal).expect("open");
        // Room for small events only: a large one fails as on a full disk.
        store.limit_pages(24).expect("limit");
        let (writer, _thread) = store.into_writer(ChainHead::default()).expect("writer");
        let stream = |name, generation| Some(Stream { name, generation });
        let big = NewEvent::now(
            "alice",
            Some("big"),
            None,
            EventKind::RequestRejected {
                reason: "x".repeat(512 * 1024),
            },
        );
        // Queued back to back: the second was staged on top of the first.
        let first = writer.append_to(stream("s", 0), vec![big]);
        let second = writer.append_to(stream("s", 0), vec![event(1)]);
        let other = writer.append_to(stream("t", 0), vec![event(2)]);
        assert!(matches!(
            first.await.expect("reply"),
            Err(StoreError::Full(_))
        ));
        match second.await.expect("reply") {
            // Either refused on its own, or it shared the failed batch.
            Err(StoreError::Superseded | StoreError::Full(_)) => {}
            other => panic!("a batch staged on a failed one must not commit: {other:?}"),
        }
        let _ = other.await.expect("reply");
        let next = writer
            .append_to(stream("s", 1), vec![event(3)])
            .await
            .expect("reply")
            .expect("a newer generation commits once space allows");
        let head = verify(dir.path()).expect("chain");
        assert_eq!(head.seq, next[0].seq);
        assert_eq!(next[0].body.topic.as_deref(), Some("t3"));
    }
}
