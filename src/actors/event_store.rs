//! The event store actor: the one door to the log. Appends go to the group-committing writer;
//! audit queries run on their own read connections off the actor's thread. Every committed
//! event is passed on to the actors that follow the log (`Follow`), in seq order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::error::{Error, Result};
use crate::events::{AuditPage, AuditQuery, Event, NewEvent, StoreError, Stream, Writer};
use crate::identity::{Principal, Role};
use crate::metrics::METRICS;
use crate::shutdown::{Fatal, FatalError};

pub struct EventStore {
    writer: Writer,
    fatal: Fatal,
    /// Whether the last commit failed for lack of disk space (cleared by the next success).
    disk_full: Arc<AtomicBool>,
    /// The last chain check and the log head (seq, hash) it was made at.
    verified: Arc<Mutex<Option<(LogHead, ChainCheck)>>>,
}

/// The last row of the log: what a chain check is valid for.
type LogHead = Option<(i64, String)>;

impl EventStore {
    /// `fatal` hears when the writer is gone: nothing can be made durable any more.
    pub fn new(writer: Writer, fatal: Fatal) -> Self {
        EventStore {
            writer,
            fatal,
            disk_full: Arc::new(AtomicBool::new(false)),
            verified: Arc::new(Mutex::new(None)),
        }
    }

    fn commit(
        &self,
        stream: Option<Stream>,
        events: Vec<NewEvent>,
    ) -> ResponseFuture<Result<Vec<Event>, StoreError>> {
        let committed = self.writer.append_to(stream, events);
        let fatal = self.fatal.clone();
        let disk_full = self.disk_full.clone();
        Box::pin(async move {
            let result = committed.await.unwrap_or(Err(StoreError::WriterGone));
            match &result {
                Ok(_) => disk_full.store(false, Ordering::Relaxed),
                Err(StoreError::Full(_)) => disk_full.store(true, Ordering::Relaxed),
                Err(e) if !e.is_transient() => {
                    fatal.report(FatalError::Log(StoreError::Commit(e.to_string())));
                }
                Err(_) => {}
            }
            result
        })
    }
}

impl Actor for EventStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A full mailbox would park senders and could reorder appends; the registry's order
        // must be the log's order.
        ctx.set_mailbox_capacity(crate::actors::UNBOUNDED_MAILBOX);
    }
}

/// Appends events; answered once they are committed, with their seqs.
#[derive(Message)]
#[rtype(result = "Result<Vec<Event>, StoreError>")]
pub struct Append(pub Vec<NewEvent>);

/// Appends the events of an event-sourced actor's stream (see `journal`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Event>, StoreError>")]
pub struct Persist {
    pub stream: Stream,
    pub events: Vec<NewEvent>,
}

/// Events that have just been committed, sent to every follower.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Committed(pub Vec<Event>);

/// Whether the event log can take writes now, for `/readyz`: `false` while the last commit
/// failed because the disk is full.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct LogWritable;

impl Handler<LogWritable> for EventStore {
    type Result = bool;

    fn handle(&mut self, _: LogWritable, _: &mut Context<Self>) -> bool {
        !self.disk_full.load(Ordering::Relaxed)
    }
}

/// Stops the actor, dropping its writer handle so the writer thread can finish (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for EventStore {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Registers an actor to be told of every event committed from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Follow(pub Recipient<Committed>);

impl Handler<Follow> for EventStore {
    type Result = ();

    fn handle(&mut self, msg: Follow, _: &mut Context<Self>) {
        let follower = msg.0;
        // Told from the writer thread right after each commit, so followers see seq order.
        self.writer.observe(Box::new(move |events| {
            follower.do_send(Committed(events.to_vec()))
        }));
    }
}

impl Handler<Append> for EventStore {
    type Result = ResponseFuture<Result<Vec<Event>, StoreError>>;

    fn handle(&mut self, msg: Append, _: &mut Context<Self>) -> Self::Result {
        self.commit(None, msg.0)
    }
}

impl Handler<Persist> for EventStore {
    type Result = ResponseFuture<Result<Vec<Event>, StoreError>>;

    fn handle(&mut self, msg: Persist, _: &mut Context<Self>) -> Self::Result {
        self.commit(Some(msg.stream), msg.events)
    }
}

/// One page of the audit trail.
#[derive(Message)]
#[rtype(result = "Result<AuditPage>")]
pub struct QueryAudit(pub AuditQuery);

impl Handler<QueryAudit> for EventStore {
    type Result = ResponseFuture<Result<AuditPage>>;

    fn handle(&mut self, msg: QueryAudit, _: &mut Context<Self>) -> Self::Result {
        let db = self.writer.path().to_path_buf();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || msg.0.run(&db))
                .await
                .map_err(|_| Error::Unavailable)?
                .map_err(Error::from)
        })
    }
}

/// The events of some requests, in seq order (the details of decided requests, which the
/// registry does not keep in memory).
#[derive(Message)]
#[rtype(result = "Result<Vec<NewEvent>>")]
pub struct RequestEvents(pub Vec<uuid::Uuid>);

impl Handler<RequestEvents> for EventStore {
    type Result = ResponseFuture<Result<Vec<NewEvent>>>;

    fn handle(&mut self, msg: RequestEvents, _: &mut Context<Self>) -> Self::Result {
        let db = self.writer.path().to_path_buf();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || crate::events::request_events(&db, &msg.0))
                .await
                .map_err(|_| Error::Unavailable)?
                .map_err(Error::from)
        })
    }
}

/// The state of the hash chain, as `kafflow audit verify` reports it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ChainCheck {
    pub ok: bool,
    /// Events checked (all of them when `ok`).
    pub events: u64,
    pub head: Option<String>,
    /// The first bad seq and why, when not `ok`.
    pub bad_seq: Option<u64>,
    pub error: Option<String>,
    /// Answered from the check made at the same log head, without reading the log again.
    pub cached: bool,
}

/// Checks the whole chain on a read connection, for an admin; answered from the last check
/// while the log head has not moved.
#[derive(Message)]
#[rtype(result = "Result<ChainCheck>")]
pub struct VerifyChain(pub Principal);

/// The seq and hash of the last event, read on its own connection.
fn log_head(db: &std::path::Path) -> Result<LogHead, StoreError> {
    use rusqlite::OptionalExtension;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// A chain check as the API shows it; a broken chain is data, other errors are errors.
fn chain_check(result: Result<crate::events::ChainHead, StoreError>) -> Result<ChainCheck> {
    Ok(match result {
        Ok(head) => ChainCheck {
            ok: true,
            events: head.seq,
            head: Some(head.hash),
            bad_seq: None,
            error: None,
            cached: false,
        },
        Err(StoreError::Corrupt { seq, reason }) => ChainCheck {
            ok: false,
            events: seq.saturating_sub(1),
            head: None,
            bad_seq: Some(seq),
            error: Some(reason),
            cached: false,
        },
        Err(e) => return Err(e.into()),
    })
}

impl Handler<VerifyChain> for EventStore {
    type Result = ResponseFuture<Result<ChainCheck>>;

    fn handle(&mut self, msg: VerifyChain, _: &mut Context<Self>) -> Self::Result {
        let allowed = msg.0.require_any(&[Role::Admin]);
        let db = self.writer.path().to_path_buf();
        let dir = db
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let verified = self.verified.clone();
        Box::pin(async move {
            allowed?;
            tokio::task::spawn_blocking(move || {
                // Read before the check: an append during it makes the next call check again.
                let head = log_head(&db)?;
                let mut last = verified.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, check)) = last.as_ref().filter(|(at, _)| *at == head) {
                    return Ok(ChainCheck {
                        cached: true,
                        ..check.clone()
                    });
                }
                // Checked under the lock: a flood of calls waits for one check, not many.
                METRICS.audit_verify_runs.inc();
                let check = chain_check(crate::events::verify(&dir))?;
                *last = Some((head, check.clone()));
                Ok(check)
            })
            .await
            .map_err(|_| Error::Unavailable)?
        })
    }
}
