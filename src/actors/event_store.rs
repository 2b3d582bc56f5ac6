//! The event store actor: the one door to the log. Appends go to the group-committing writer;
//! audit queries run on their own read connections off the actor's thread. Every committed
//! event is passed on to the actors that follow the log (`Follow`), in seq order.

use actix::prelude::*;

use crate::error::{Error, Result};
use crate::events::{AuditPage, AuditQuery, Event, NewEvent, StoreError, Writer};

pub struct EventStore {
    writer: Writer,
}

impl EventStore {
    pub fn new(writer: Writer) -> Self {
        EventStore { writer }
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

/// Events that have just been committed, sent to every follower.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Committed(pub Vec<Event>);

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
        let committed = self.writer.append(msg.0);
        Box::pin(async move { committed.await.unwrap_or(Err(StoreError::WriterGone)) })
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
