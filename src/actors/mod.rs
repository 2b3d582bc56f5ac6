//! The actors. Each owns its state; the others ask it with messages.
//!
//! - `event_store`: the door to the event log (group-committed appends, audit reads).
//! - `journal`: not an actor; how the event-sourced actors (registry, subscriptions, watcher)
//!   stage, persist and then apply their events, and which actor owns each event kind.
//! - `registry`: governance state (requests, topics), the single writer of its events, and
//!   (`governed_view`) the read-only view of it that the Kafka-protocol facade reads.
//! - `approval`: the governance rules (roles, policy, self-approval, ownership).
//! - `provisioner`: the Kafka work (create, delete), idempotent and retried.
//! - `subscriptions`: who reads which topic (the single writer of its events), and the door to
//!   each user's consumer.
//! - `consumer`: one per user; the user's positions, fanned out to the user's websocket feeds.
//! - `topic_reader`: one per topic being read; one Kafka fetch shared by every user reading it.
//! - `listener`: record ingest over HTTP and the TCP line protocol.
//! - `publisher`: routes records to Kafka, holding in the durable spool what cannot go yet
//!   (`held_counts`: its accounting of what the spool holds).
//! - `record_browser`: reads an active topic's records and partitions from Kafka for the
//!   console (newest first, paged), off the actors' thread.
//! - `watcher`: tells the publisher of route changes as they commit; reconciles with Kafka.
//! - `tokens`: the bearer tokens KafFlow issues (the single writer of their events), published
//!   to sign-in after every commit.

pub mod access;
pub mod approval;
pub mod consumer;
pub mod event_store;
pub mod governed_view;
mod held_counts;
pub mod history;
pub mod journal;
pub mod listener;
pub mod provisioner;
pub mod publisher;
pub mod record_browser;
pub mod registry;
pub mod subscriptions;
pub mod tokens;
pub mod topic_reader;
pub mod watcher;

/// Mailbox capacity for actors whose senders rely on message order: a full mailbox parks
/// `send` callers, and parked senders can overtake each other. Callers bound their own load.
pub(crate) const UNBOUNDED_MAILBOX: usize = 1 << 24;
