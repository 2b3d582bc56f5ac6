//! The event store actor: the one door to the log. Appends go to the group-committing writer;
//! audit queries run on their own read connections off the actor's thread.

use actix::prelude::*;

use crate::error::{Error, Result};
use crate::events::{AuditPage, AuditQuery, Event, NewEvent, Writer};

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
}

/// Appends events; answered once they are committed, with their seqs.
#[derive(Message)]
#[rtype(result = "Result<Vec<Event>, crate::events::StoreError>")]
pub struct Append(pub Vec<NewEvent>);

impl Handler<Append> for EventStore {
    type Result = ResponseFuture<Result<Vec<Event>, crate::events::StoreError>>;

    fn handle(&mut self, msg: Append, _: &mut Context<Self>) -> Self::Result {
        let committed = self.writer.append(msg.0);
        Box::pin(async move {
            committed
                .await
                .unwrap_or(Err(crate::events::StoreError::WriterGone))
        })
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
