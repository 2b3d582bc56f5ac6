//! The actors. Each owns its state; the others ask it with messages.
//!
//! - `event_store`: the door to the event log (group-committed appends, audit reads).
//! - `registry`: governance state (requests, topics), the single writer of its events.
//! - `approval`: the governance rules (roles, policy, self-approval, ownership).
//! - `provisioner`: the Kafka work (create, delete), idempotent and retried.
//!
//! Still to come, each in its own file here: `listener` (ingest), `publisher` (routing to
//! Kafka and the held-record spool), `watcher` (activation and reconciliation with Kafka) and
//! `consumer` (one per user, feeding websockets).

pub mod approval;
pub mod event_store;
pub mod provisioner;
pub mod registry;
