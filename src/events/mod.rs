//! The event log: the one source of truth.
//!
//! `event` defines what can happen (one versioned serde enum); `store` keeps it in SQLite
//! (migrations, group-committed appends, replay with hash-chain verification, audit queries);
//! `snapshot` saves the rebuilt state with the chain head it reflects, so a start replays only
//! the events after it.
//! Nothing here knows about Kafka or HTTP.

mod cursor;
mod event;
mod snapshot;
mod store;
mod topic_config;

pub use event::{Access, Event, EventKind, NewEvent, TopicSpec, Visibility, EVENT_VERSION};
#[cfg(test)]
pub(crate) use snapshot::{decode as snapshot_state, encode as snapshot_bytes};
pub use snapshot::{SnapshotError, Snapshotted, SNAPSHOT_VERSION};
#[cfg(test)]
pub(crate) use store::append_rows_at;
pub use store::{
    request_events, verify, AuditEntry, AuditPage, AuditQuery, AuditScope, ChainHead, Durability,
    Recovery, Store, StoreError, Stream, Writer, WriterThread,
};
pub use topic_config::TopicConfig;
