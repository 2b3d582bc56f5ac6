//! A generated event log: `active` topics that were requested, approved and provisioned, each
//! read by one of 100 consumers, and the rest of `events` spent on requests that were filed and
//! rejected (the history a year of use leaves: most requests decided, few topics live).
//!
//! It writes through the store's own writer (the same event types, the same hash chain), so a
//! benchmark can start KafFlow on a year of history without a million HTTP calls first. Use it
//! with `#[path = "common/log.rs"] mod log;`.

#![allow(dead_code)] // each benchmark uses what it needs

use std::path::Path;

use kafflow::events::{Durability, EventKind, NewEvent, Store, TopicSpec, Visibility};
use uuid::Uuid;

/// Events per append: the writer commits each as one transaction at most.
const BATCH: usize = 5_000;
/// Appends in flight before the generator waits for the oldest.
const IN_FLIGHT: usize = 8;

/// What `fill` wrote.
#[derive(Debug, Clone)]
pub struct Filled {
    pub events: u64,
    /// Names of the active topics, `active-000000` on.
    pub active: Vec<String>,
    /// Requests filed and rejected.
    pub closed: u64,
}

pub fn active_name(n: usize) -> String {
    format!("active-{n:06}")
}

fn spec() -> TopicSpec {
    TopicSpec {
        partitions: 3,
        replication_factor: 1,
        config: [("retention.ms".to_string(), "604800000".to_string())].into(),
    }
}

/// The events of one active topic: requested, approved, provisioned, subscribed.
fn active_topic(n: usize) -> Vec<NewEvent> {
    let topic = active_name(n);
    let id = Some(Uuid::now_v7());
    let t = Some(topic.as_str());
    vec![
        NewEvent::now(
            "alice",
            t,
            id,
            EventKind::TopicRequested {
                spec: spec(),
                reason: Some(format!("events of service {n}")),
                visibility: Visibility::Open,
            },
        ),
        NewEvent::now(
            "carol",
            t,
            id,
            EventKind::RequestApproved {
                note: Some("ok".into()),
            },
        ),
        NewEvent::now(
            "system",
            t,
            id,
            EventKind::TopicProvisioned {
                spec: spec(),
                already_existed: false,
            },
        ),
        NewEvent::now(
            &format!("reader-{:03}", n % 100),
            t,
            None,
            EventKind::Subscribed {},
        ),
    ]
}

/// The events of one request that was filed and rejected.
fn closed_request(n: u64) -> Vec<NewEvent> {
    let topic = format!("closed-{n:07}");
    let id = Some(Uuid::now_v7());
    let t = Some(topic.as_str());
    vec![
        NewEvent::now(
            "bob",
            t,
            id,
            EventKind::TopicRequested {
                spec: spec(),
                reason: Some("a topic for a test that never ran".into()),
                visibility: Visibility::Open,
            },
        ),
        NewEvent::now(
            "carol",
            t,
            id,
            EventKind::RequestRejected {
                reason: "use the shared topic instead".into(),
            },
        ),
    ]
}

/// Writes about `events` events (a multiple of two at least) with `active` active topics into
/// a new log in `data_dir`, through `Store`'s writer thread.
pub fn fill(data_dir: &Path, events: u64, active: usize) -> Filled {
    let store = Store::open(data_dir, Durability::Normal).expect("open the log");
    let head = store.replay(|_| {}).expect("an empty log");
    assert_eq!(head.seq, 0, "fill wants a new log");
    let (writer, thread) = store.into_writer(head).expect("writer");
    let mut waiting = std::collections::VecDeque::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut written = 0u64;
    let flush = |batch: &mut Vec<NewEvent>, waiting: &mut std::collections::VecDeque<_>| {
        if batch.is_empty() {
            return;
        }
        waiting.push_back(writer.append(std::mem::take(batch)));
        while waiting.len() > IN_FLIGHT {
            let done: tokio::sync::oneshot::Receiver<_> = waiting.pop_front().expect("one");
            done.blocking_recv().expect("writer").expect("committed");
        }
    };
    for n in 0..active {
        batch.extend(active_topic(n));
        written += 4;
        if batch.len() >= BATCH {
            flush(&mut batch, &mut waiting);
        }
    }
    let mut closed = 0;
    while written < events {
        batch.extend(closed_request(closed));
        closed += 1;
        written += 2;
        if batch.len() >= BATCH {
            flush(&mut batch, &mut waiting);
        }
    }
    flush(&mut batch, &mut waiting);
    for done in waiting {
        done.blocking_recv().expect("writer").expect("committed");
    }
    drop(writer);
    thread.join();
    Filled {
        events: written,
        active: (0..active).map(active_name).collect(),
        closed,
    }
}
