//! The event log: the one source of truth.
//!
//! `event` defines what can happen (one versioned serde enum); `store` keeps it in SQLite
//! (migrations, group-committed appends, replay with hash-chain verification, audit queries).
//! Nothing here knows about Kafka or HTTP.

mod event;
mod store;

pub use event::{Access, Event, EventKind, NewEvent, TopicSpec, Visibility, EVENT_VERSION};
pub use store::{
    verify, AuditPage, AuditQuery, AuditScope, ChainHead, Durability, Store, StoreError, Stream,
    Writer, WriterThread,
};
