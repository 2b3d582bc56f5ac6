//! The event store actor: the one door to the log. Appends go to the group-committing writer;
//! audit queries run on their own read connections off the actor's thread. Every committed
//! event is passed on to the actors that follow the log (`Follow`), in seq order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::error::{Error, Result};
use crate::events::{AuditPage, AuditQuery, Event, NewEvent, StoreError, Stream, Writer};
use crate::shutdown::{Fatal, FatalError};

pub struct EventStore {
    writer: Writer,
    fatal: Fatal,
    /// Whether the last commit failed for lack of disk space (cleared by the next success).
    disk_full: Arc<AtomicBool>,
}

impl EventStore {
    /// `fatal` hears when the writer is gone: nothing can be made durable any more.
    pub fn new(writer: Writer, fatal: Fatal) -> Self {
        EventStore {
            writer,
            fatal,
            disk_full: Arc::new(AtomicBool::new(false)),
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

/// The state of the hash chain, as `kafflow audit verify` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainCheck {
    pub ok: bool,
    /// Events checked (all of them when `ok`).
    pub events: u64,
    pub head: Option<String>,
    /// The first bad seq and why, when not `ok`.
    pub bad_seq: Option<u64>,
    pub error: Option<String>,
}

/// Checks the whole chain on a read connection.
#[derive(Message)]
#[rtype(result = "Result<ChainCheck>")]
pub struct VerifyChain;

impl Handler<VerifyChain> for EventStore {
    type Result = ResponseFuture<Result<ChainCheck>>;

    fn handle(&mut self, _: VerifyChain, _: &mut Context<Self>) -> Self::Result {
        let dir = self
            .writer
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        Box::pin(async move {
            let checked = tokio::task::spawn_blocking(move || crate::events::verify(&dir))
                .await
                .map_err(|_| Error::Unavailable)?;
            Ok(match checked {
                Ok(head) => ChainCheck {
                    ok: true,
                    events: head.seq,
                    head: Some(head.hash),
                    bad_seq: None,
                    error: None,
                },
                Err(StoreError::Corrupt { seq, reason }) => ChainCheck {
                    ok: false,
                    events: seq.saturating_sub(1),
                    head: None,
                    bad_seq: Some(seq),
                    error: Some(reason),
                },
                Err(e) => return Err(e.into()),
            })
        })
    }
}
