//! The publisher: routes records to Kafka through one shared producer, and holds those that
//! cannot go yet in the durable spool.
//!
//! Per topic: an active topic with an empty spool takes the direct path. Anything else is
//! appended to the spool: records of a pending topic, records that found the producer queue
//! full, and records Kafka did not acknowledge (broker down). While an active topic has held
//! records, a drain sends them to Kafka in arrival order and every newer record of that topic
//! goes to the spool behind them; once the spool of the topic is empty the topic switches back
//! to the direct path. A topic that is rejected, withdrawn, failed or deleted has its held
//! records moved to the dead-letter state.
//!
//! The counts of what the spool holds live in one type, `HeldCounts`. A discard of dead
//! records commits its `held_discarded` event first and deletes the rows after; a deletion that
//! a crash or a failure interrupted is finished from the log (at startup, and before the next
//! discard). When the disk is full, holds fail with `storage_full` and the spool's health says
//! so; a small probe write notices when space is back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use super::event_store::{Append, EventStore, QueryAudit};
use super::governed_view::GovernedView;
use super::held_counts::HeldCounts;
use super::registry::TopicRoute;
use crate::config::SpoolLimits;
use crate::error::{Error, Result};
use crate::events::{AuditQuery, EventKind, NewEvent, StoreError};
use crate::identity::{Principal, Role};
use crate::kafka::{BatchProducer, Undelivered};
use crate::metrics::METRICS;
use crate::record::Record;
use crate::spool::{Health, HeldRecordOut, HeldState, Spool, Tally, TopicContents};

const DRAIN_BATCH: usize = 2000;
const DRAIN_BACKOFF_START: Duration = Duration::from_millis(200);
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
const SAVE_PUBLISHED_EVERY: Duration = Duration::from_secs(2);
/// How often a full disk is probed, and a failed dead-letter or discard retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// `held_discarded` events read from the log per page when finishing discards.
const DISCARD_PAGE: usize = 500;

/// The doors of the event log that the publisher uses: appending its `held_discarded` events
/// and reading them back to finish an interrupted discard.
#[derive(Clone)]
pub struct EventLog {
    pub append: Recipient<Append>,
    pub query: Recipient<QueryAudit>,
}

impl From<Addr<EventStore>> for EventLog {
    fn from(store: Addr<EventStore>) -> Self {
        EventLog {
            append: store.clone().recipient(),
            query: store.recipient(),
        }
    }
}

/// What became of the records of one ingest call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// Acknowledged by Kafka.
    pub published: u64,
    /// Committed to the spool.
    pub held: u64,
}

/// Records of one producer for one topic, in order. Answered when every one is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Receipt>")]
pub struct Publish {
    pub producer: String,
    pub topic: String,
    pub records: Vec<Record>,
    /// The caller has just filed a create request for the topic: hold even if the news of
    /// that request has not reached the publisher yet.
    pub requested: bool,
}

/// Where records of a topic go now (from the watcher, and from the registry at startup).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRoute {
    pub topic: String,
    pub route: TopicRoute,
}

/// Held and published counts of topics, for the topic views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    pub held: u64,
    pub dead: u64,
    pub published: u64,
}

impl From<TopicContents> for TopicCounts {
    fn from(c: TopicContents) -> Self {
        TopicCounts {
            held: c.held,
            dead: c.dead,
            published: c.published,
        }
    }
}

pub use super::held_counts::CountsView;

/// The counts of the named topics (a page of them, or one): a read costs the names asked
/// for, not every topic the spool has seen.
#[derive(Message)]
#[rtype(result = "HashMap<String, TopicCounts>")]
pub struct Counts(pub Vec<String>);

/// Held records of a topic, for the admin or the producer who sent them.
#[derive(Message)]
#[rtype(result = "Result<Vec<HeldRecordOut>>")]
pub struct ListHeld {
    pub principal: Principal,
    /// The topic's owner (its requester while the create request waits), if it has one.
    pub owner: Option<String>,
    pub topic: String,
    pub state: HeldState,
    pub after: i64,
    pub limit: usize,
}

/// Deletes the dead records of a topic (admin). The `held_discarded` event is committed first;
/// the rows are deleted after it.
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub struct DiscardHeld {
    pub principal: Principal,
    pub topic: String,
    /// Only `dead` records can be discarded; held ones are still owed to Kafka.
    pub state: HeldState,
}

/// Whether the spool can write (for `/readyz`).
#[derive(Message)]
#[rtype(result = "Health")]
pub struct SpoolHealth;

/// Records published directly.
#[derive(Message)]
#[rtype(result = "()")]
struct Delivered {
    topic: String,
    records: u64,
}

#[derive(Message)]
#[rtype(result = "Result<u64>")]
struct Spill {
    topic: String,
    producer: String,
    records: Vec<Record>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct HoldFailed {
    topic: String,
    records: Tally,
}

/// Held records moved to the dead-letter state.
#[derive(Message)]
#[rtype(result = "()")]
struct DeadLettered {
    topic: String,
    records: Tally,
}

#[derive(Message)]
#[rtype(result = "()")]
struct DeadLetterIfClosed {
    topic: String,
}

/// Held records released from the spool once Kafka had them.
#[derive(Message)]
#[rtype(result = "()")]
struct Drained {
    topic: String,
    records: Tally,
}

/// The drain of `topic` found the spool empty: may it stop?
#[derive(Message)]
#[rtype(result = "bool")]
struct DrainIdle {
    topic: String,
}

#[derive(Debug, Default)]
struct TopicState {
    route: Option<TopicRoute>,
    draining: bool,
    /// The drain is catching up: new records wait here, unacknowledged and in order, until
    /// the spool is empty, then go straight to Kafka. Without this gate a topic that never
    /// pauses would never leave the spool. Bounded: it lasts less than one drain batch.
    gated: Option<Vec<(Publish, oneshot::Sender<Result<Receipt>>)>>,
}

/// The topics whose next `Publish` would go straight to Kafka, for a facade that forwards
/// records to the broker itself only while that holds. The publisher is its only writer and
/// updates it whenever a topic's route, held count, drain or gate changes: a topic leaves the
/// set before its first record is held, and joins it only once nothing of it is held, gated
/// or draining. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DirectTopics {
    topics: Arc<RwLock<HashSet<String>>>,
}

impl DirectTopics {
    /// True only when a `Publish` for this topic would go straight to Kafka now: the route is
    /// active and nothing of the topic is held, gated or draining ahead of new records.
    pub fn is_direct(&self, topic: &str) -> bool {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic)
    }

    fn set(&self, topic: &str, direct: bool) {
        let mut topics = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if direct {
            if !topics.contains(topic) {
                topics.insert(topic.to_string());
            }
        } else {
            topics.remove(topic);
        }
    }
}

pub struct Publisher {
    producer: Arc<BatchProducer>,
    direct_topics: DirectTopics,
    spool: Spool,
    limits: SpoolLimits,
    log: EventLog,
    topics: HashMap<String, TopicState>,
    counts: HeldCounts,
    unsaved_published: HashMap<String, u64>,
    /// Discards run one at a time, in the log's order, so that the spool's `discarded_seq`
    /// never passes an event whose rows are still there.
    discards: Arc<tokio::sync::Mutex<()>>,
    /// A committed discard whose rows are not deleted yet: retried until done.
    discard_owed: bool,
    /// Asked for the route of a topic never given one: at start the publisher is told the
    /// routes of the topics that may still take records, not of every name ever refused, and
    /// a topic asked for a moment ago may not have its `SetRoute` yet.
    governed: Option<GovernedView>,
}

impl Publisher {
    pub fn new(
        producer: BatchProducer,
        spool: Spool,
        contents: HashMap<String, TopicContents>,
        limits: SpoolLimits,
        log: impl Into<EventLog>,
    ) -> Self {
        Publisher {
            producer: Arc::new(producer),
            direct_topics: DirectTopics::default(),
            spool,
            limits,
            log: log.into(),
            topics: HashMap::new(),
            counts: HeldCounts::new(contents),
            unsaved_published: HashMap::new(),
            discards: Arc::default(),
            // The last run may have stopped between a discard's commit and its deletion.
            discard_owed: true,
            governed: None,
        }
    }

    /// Has the publisher ask `view` for the route of a topic it was never told of (a topic
    /// closed for good), so that its records are refused as `topic_closed`.
    pub fn consulting(mut self, view: GovernedView) -> Self {
        self.governed = Some(view);
        self
    }

    /// The topics whose records go straight to Kafka, as the publisher keeps them; take it
    /// before the publisher starts.
    pub fn direct_topics(&self) -> DirectTopics {
        self.direct_topics.clone()
    }

    /// The per-topic counts as the publisher keeps them, readable without a message; take it
    /// before the publisher starts.
    pub fn counts_view(&self) -> CountsView {
        self.counts.view()
    }

    /// Records of `topic` go straight to Kafka: it is active and nothing of it is held.
    fn direct(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|t| {
            t.route == Some(TopicRoute::Active) && !t.draining && t.gated.is_none()
        }) && self.counts.held(topic) == 0
    }

    /// Brings `DirectTopics` up to what `direct` says of `topic` now. Called after every
    /// change to what `direct` reads.
    fn sync_direct(&self, topic: &str) {
        self.direct_topics.set(topic, self.direct(topic));
    }

    /// Appends records to the spool behind everything already there; checks the bounds.
    fn hold(
        &mut self,
        topic: &str,
        producer: &str,
        records: Vec<Record>,
        ctx: &mut Context<Self>,
        enforce_limits: bool,
    ) -> Result<impl std::future::Future<Output = Result<u64>> + use<>> {
        let tally = Tally {
            records: records.len() as u64,
            bytes: records.iter().map(Record::size).sum(),
        };
        if enforce_limits {
            let held = self.counts.held(topic);
            if held + tally.records > self.limits.max_records_per_topic {
                METRICS.spool_full.inc();
                return Err(Error::SpoolFull(format!(
                    "topic {topic} already holds {held} records (limit {})",
                    self.limits.max_records_per_topic
                )));
            }
            let bytes = self.counts.bytes();
            if bytes + tally.bytes > self.limits.max_bytes_total {
                METRICS.spool_full.inc();
                return Err(Error::SpoolFull(format!(
                    "the spool holds {bytes} bytes (limit {})",
                    self.limits.max_bytes_total
                )));
            }
        }
        // Counted now, in arrival order, so a drain never stops while records are on their way.
        self.counts.hold(topic, tally);
        self.sync_direct(topic);
        let state = self.topics.entry(topic.to_string()).or_default();
        if state.route == Some(TopicRoute::Active) && !state.draining {
            self.start_drain(topic, ctx);
        }
        let committed = self
            .spool
            .hold(topic.to_string(), producer.to_string(), records);
        let me = ctx.address();
        let topic = topic.to_string();
        Ok(async move {
            match committed.await {
                Ok(()) => {
                    METRICS.held.inc_by(tally.records);
                    Ok(tally.records)
                }
                Err(e) => {
                    if matches!(e, Error::StorageFull(_)) {
                        METRICS.storage_full.inc();
                    }
                    me.do_send(HoldFailed {
                        topic,
                        records: tally,
                    });
                    Err(e)
                }
            }
        })
    }

    /// Moves every held record of a closed topic to the dead-letter state; retried until the
    /// spool can do it.
    fn kill_held(&mut self, topic: &str, ctx: &mut Context<Self>) {
        let spool = self.spool.clone();
        let topic = topic.to_string();
        let moved = async move {
            let moved = spool.kill(&topic).await;
            (topic, moved)
        };
        ctx.spawn(
            moved
                .into_actor(self)
                .map(|(topic, result), act, ctx| match result {
                    Ok(moved) => {
                        act.counts.dead_letter(&topic, moved);
                        act.sync_direct(&topic);
                        tracing::info!(%topic, records = moved.records, "Held records dead-lettered.");
                    }
                    Err(e) => {
                        tracing::error!(%topic, error = %e, "Held records not dead-lettered; retrying.");
                        ctx.notify_later(DeadLetterIfClosed { topic }, RETRY_EVERY);
                    }
                }),
        );
    }

    fn start_drain(&mut self, topic: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.draining = true;
        self.sync_direct(topic);
        tracing::info!(%topic, held = self.counts.held(topic), "Draining held records.");
        actix::spawn(drain(
            topic.to_string(),
            self.spool.clone(),
            self.producer.clone(),
            ctx.address(),
        ));
    }

    /// Finishes the discards the log has committed and the spool has not carried out (one
    /// at a time with live discards), and counts what they deleted.
    fn finish_owed_discards(&mut self, ctx: &mut Context<Self>, wait: bool) {
        let spool = self.spool.clone();
        let query = self.log.query.clone();
        let turn = self.discards.clone();
        let finished = async move {
            let _turn = turn.lock_owned().await;
            finish_discards(&spool, &query).await
        }
        .into_actor(self)
        .map(|result, act, _| match result {
            Ok(done) => {
                for (topic, removed) in done {
                    act.counts.discard(&topic, removed);
                }
                act.discard_owed = false;
            }
            Err(e) => tracing::error!(error = %e, "Committed discards not finished; retrying."),
        });
        if wait {
            ctx.wait(finished);
        } else {
            ctx.spawn(finished);
        }
    }
}

/// Carries out every `held_discarded` event after the spool's `discarded_seq`, in log order.
/// Returns the rows each one deleted (none for those already done).
async fn finish_discards(
    spool: &Spool,
    query: &Recipient<QueryAudit>,
) -> Result<Vec<(String, Tally)>> {
    let mut after = spool.discarded_seq().await?;
    let mut done = Vec::new();
    loop {
        let page = query
            .send(QueryAudit(AuditQuery {
                kind: Some("held_discarded".into()),
                after: Some(after),
                limit: DISCARD_PAGE,
                ..AuditQuery::default()
            }))
            .await??;
        for entry in page.events {
            let up_to_id = match EventKind::from_columns(&entry.kind, entry.data) {
                Ok(EventKind::HeldDiscarded { up_to_id, .. }) => up_to_id,
                Ok(other) => {
                    return Err(Error::Store(StoreError::Corrupt {
                        seq: entry.seq,
                        reason: format!("expected held_discarded, read {}", other.name()),
                    }))
                }
                Err(e) => {
                    return Err(Error::Store(StoreError::Corrupt {
                        seq: entry.seq,
                        reason: e.to_string(),
                    }))
                }
            };
            let topic = entry.topic.unwrap_or_default();
            let removed = spool.discard(&topic, up_to_id, entry.seq).await?;
            if removed.records > 0 {
                tracing::info!(%topic, seq = entry.seq, records = removed.records, "Finished a committed discard.");
                done.push((topic, removed));
            }
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(done),
        }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Records of one connection must reach the publisher in the order they were sent.
        ctx.set_mailbox_capacity(super::UNBOUNDED_MAILBOX);
        // Nothing is handled before the discards of the last run are finished.
        self.finish_owed_discards(ctx, true);
        ctx.run_interval(SAVE_PUBLISHED_EVERY, |act, ctx| {
            if act.unsaved_published.is_empty() {
                return;
            }
            let counts = std::mem::take(&mut act.unsaved_published);
            let spool = act.spool.clone();
            let saved = async move {
                let saved = spool.add_published(counts.clone()).await;
                (counts, saved)
            };
            ctx.spawn(saved.into_actor(act).map(|(counts, saved), act, _| {
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "Published counts not saved; keeping them for the next try.");
                    for (topic, n) in counts {
                        *act.unsaved_published.entry(topic).or_default() += n;
                    }
                }
            }));
        });
        ctx.run_interval(RETRY_EVERY, |act, ctx| {
            if act.spool.health().storage_full {
                let spool = act.spool.clone();
                actix::spawn(async move {
                    if spool.probe().await.is_ok() {
                        tracing::info!("The spool can write again.");
                    }
                });
            }
            if act.discard_owed {
                act.finish_owed_discards(ctx, false);
            }
        });
    }
}

impl Handler<Publish> for Publisher {
    type Result = ResponseFuture<Result<Receipt>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(waiting) = self
            .topics
            .get_mut(&msg.topic)
            .and_then(|t| t.gated.as_mut())
        {
            let (reply, receipt) = oneshot::channel();
            waiting.push((msg, reply));
            return Box::pin(async move { receipt.await.map_err(|_| Error::Unavailable)? });
        }
        self.publish_now(msg, ctx)
    }
}

impl Publisher {
    fn publish_now(
        &mut self,
        msg: Publish,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Receipt>> {
        let topic = msg.topic;
        // A topic never given a route takes the committed one. Closed: at start the publisher
        // is told only the routes of topics that may still take records. Pending or active:
        // the listener checks a batch against the same committed state and sends it at once,
        // so records of a topic asked for a moment ago can come before the watcher's
        // `SetRoute`; they are not refused as unknown for that.
        let asked = match (&self.governed, self.topics.contains_key(&topic)) {
            (Some(view), false) => match view.route(&topic) {
                TopicRoute::Unknown => None,
                known => Some(known),
            },
            _ => None,
        };
        let state = self.topics.entry(topic.clone()).or_default();
        let learnt = asked.is_some();
        if learnt {
            state.route = asked;
        }
        if msg.requested && matches!(state.route, None | Some(TopicRoute::Unknown)) {
            // Not direct before (no route), not direct now: `DirectTopics` stays as it is.
            state.route = Some(TopicRoute::Pending);
        }
        let refused = match &state.route {
            None | Some(TopicRoute::Unknown) => Some(Error::UnknownTopic(topic.clone())),
            Some(TopicRoute::Closed(why)) => Some(Error::TopicClosed {
                topic: topic.clone(),
                why: why.clone(),
            }),
            _ => None,
        };
        if learnt {
            self.sync_direct(&topic);
        }
        if let Some(e) = refused {
            return Box::pin(async move { Err(e) });
        }
        if !self.direct(&topic) {
            let held = self.hold(&topic, &msg.producer, msg.records, ctx, true);
            return Box::pin(async move {
                let held = held?.await?;
                METRICS.ingested.inc_by(held);
                Ok(Receipt { published: 0, held })
            });
        }

        let sent = self.producer.send(&topic, &msg.records);
        let mut records = msg.records;
        // What did not fit in the producer queue waits in the spool, behind what did.
        let overflow = records.split_off(sent.enqueued);
        let overflow_held = if overflow.is_empty() {
            None
        } else {
            Some(self.hold(&topic, &msg.producer, overflow, ctx, false))
        };
        let me = ctx.address();
        let producer = msg.producer;
        Box::pin(async move {
            let mut receipt = Receipt::default();
            if let Some(held) = overflow_held {
                receipt.held += held?.await?;
            }
            let failed: Vec<usize> = match sent.failed.await {
                Ok(failed) => failed.into_iter().map(|u| u.index).collect(),
                Err(_) => (0..records.len()).collect(),
            };
            receipt.published = (records.len() - failed.len()) as u64;
            me.do_send(Delivered {
                topic: topic.clone(),
                records: receipt.published,
            });
            if !failed.is_empty() {
                // Kafka did not take them (broker down, timeout): they wait in the spool. One
                // it refuses for good goes there too; the drain dead-letters it, as it does
                // any held record Kafka refuses.
                let mut is_failed = vec![false; records.len()];
                for i in failed {
                    is_failed[i] = true;
                }
                let failed_records: Vec<Record> = records
                    .into_iter()
                    .zip(is_failed)
                    .filter_map(|(record, failed)| failed.then_some(record))
                    .collect();
                receipt.held += me
                    .send(Spill {
                        topic,
                        producer,
                        records: failed_records,
                    })
                    .await??;
            }
            METRICS.ingested.inc_by(receipt.published + receipt.held);
            Ok(receipt)
        })
    }
}

impl Handler<Spill> for Publisher {
    type Result = ResponseFuture<Result<u64>>;

    fn handle(&mut self, msg: Spill, ctx: &mut Context<Self>) -> Self::Result {
        tracing::warn!(topic = %msg.topic, records = msg.records.len(), "Kafka did not acknowledge records; holding them.");
        // Already accepted by the caller's call: bounds do not apply to what was in flight.
        let held = self.hold(&msg.topic, &msg.producer, msg.records, ctx, false);
        let me = ctx.address();
        let topic = msg.topic;
        Box::pin(async move {
            let n = held?.await?;
            // If the topic closed while these were in flight, they join its dead letters.
            me.do_send(DeadLetterIfClosed { topic });
            Ok(n)
        })
    }
}

impl Handler<HoldFailed> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: HoldFailed, _: &mut Context<Self>) {
        self.counts.hold_failed(&msg.topic, msg.records);
        self.sync_direct(&msg.topic);
    }
}

impl Handler<Delivered> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Delivered, _: &mut Context<Self>) {
        if msg.records > 0 {
            self.counts.publish(&msg.topic, msg.records);
            *self.unsaved_published.entry(msg.topic).or_default() += msg.records;
        }
    }
}

impl Handler<Drained> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Drained, _: &mut Context<Self>) {
        self.counts.drain(&msg.topic, msg.records);
        self.sync_direct(&msg.topic);
    }
}

impl Handler<DeadLettered> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: DeadLettered, _: &mut Context<Self>) {
        self.counts.dead_letter(&msg.topic, msg.records);
        self.sync_direct(&msg.topic);
    }
}

impl Handler<DeadLetterIfClosed> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: DeadLetterIfClosed, ctx: &mut Context<Self>) {
        let closed = self
            .topics
            .get(&msg.topic)
            .is_some_and(|t| matches!(t.route, Some(TopicRoute::Closed(_))))
            && self.counts.held(&msg.topic) > 0;
        if closed {
            self.kill_held(&msg.topic, ctx);
        }
    }
}

/// The drain has caught up with the spool of `topic`: hold new records back until it is empty.
#[derive(Message)]
#[rtype(result = "()")]
struct CatchingUp {
    topic: String,
}

impl Handler<CatchingUp> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: CatchingUp, _: &mut Context<Self>) {
        if let Some(state) = self.topics.get_mut(&msg.topic) {
            if state.route == Some(TopicRoute::Active) && state.gated.is_none() {
                state.gated = Some(Vec::new());
            }
            self.sync_direct(&msg.topic);
        }
    }
}

/// The drain hit a failure: what waits at the gate goes to the spool instead of waiting on.
#[derive(Message)]
#[rtype(result = "()")]
struct OpenGate {
    topic: String,
}

impl Handler<OpenGate> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: OpenGate, ctx: &mut Context<Self>) {
        let waiting = self
            .topics
            .get_mut(&msg.topic)
            .and_then(|t| t.gated.take())
            .unwrap_or_default();
        for (publish, reply) in waiting {
            let receipt = self.publish_now(publish, ctx);
            actix::spawn(async move {
                let _ = reply.send(receipt.await);
            });
        }
        self.sync_direct(&msg.topic);
    }
}

impl Handler<DrainIdle> for Publisher {
    type Result = bool;

    fn handle(&mut self, msg: DrainIdle, ctx: &mut Context<Self>) -> bool {
        let held = self.counts.held(&msg.topic);
        let Some(state) = self.topics.get_mut(&msg.topic) else {
            return true;
        };
        // More records are on their way into the spool, and the topic is still active.
        if held > 0 && state.route == Some(TopicRoute::Active) {
            return false;
        }
        state.draining = false;
        let waiting = state.gated.take().unwrap_or_default();
        if self.direct(&msg.topic) {
            tracing::info!(topic = %msg.topic, waiting = waiting.len(), "Spool drained; publishing directly.");
        }
        // What waited at the gate goes now, in arrival order, by whatever path is right.
        for (publish, reply) in waiting {
            let receipt = self.publish_now(publish, ctx);
            actix::spawn(async move {
                let _ = reply.send(receipt.await);
            });
        }
        // Only now, with what waited handed to the producer ahead of anything newer.
        self.sync_direct(&msg.topic);
        true
    }
}

impl Handler<SetRoute> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: SetRoute, ctx: &mut Context<Self>) {
        let topic = msg.topic;
        let state = self.topics.entry(topic.clone()).or_default();
        if state.route.as_ref() == Some(&msg.route) {
            return;
        }
        tracing::debug!(%topic, route = ?msg.route, "Route changed.");
        state.route = Some(msg.route.clone());
        let draining = state.draining;
        let held = self.counts.held(&topic);
        match msg.route {
            TopicRoute::Active if held > 0 && !draining => self.start_drain(&topic, ctx),
            TopicRoute::Closed(_) if held > 0 => self.kill_held(&topic, ctx),
            _ => {}
        }
        self.sync_direct(&topic);
    }
}

impl Handler<Counts> for Publisher {
    type Result = MessageResult<Counts>;

    fn handle(&mut self, msg: Counts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.0
                .into_iter()
                .map(|topic| {
                    let counts = TopicCounts::from(self.counts.topic(&topic));
                    (topic, counts)
                })
                .collect(),
        )
    }
}

impl Handler<ListHeld> for Publisher {
    type Result = ResponseFuture<Result<Vec<HeldRecordOut>>>;

    fn handle(&mut self, msg: ListHeld, _: &mut Context<Self>) -> Self::Result {
        let spool = self.spool.clone();
        Box::pin(async move {
            msg.principal.require_any(&[Role::Admin, Role::Producer])?;
            // A producer sees only what it sent, unless the topic is its own; an admin sees
            // everything.
            let sees_all = msg.principal.has(Role::Admin)
                || msg.owner.as_deref() == Some(msg.principal.name.as_str());
            let only = (!sees_all).then(|| msg.principal.name.clone());
            let records = spool
                .list(&msg.topic, msg.state, only, msg.after, msg.limit)
                .await?;
            Ok(records.iter().map(HeldRecordOut::from).collect())
        })
    }
}

impl Handler<DiscardHeld> for Publisher {
    type Result = ResponseActFuture<Self, Result<u64>>;

    fn handle(&mut self, msg: DiscardHeld, _: &mut Context<Self>) -> Self::Result {
        let checked = msg.principal.require_any(&[Role::Admin]).and_then(|_| {
            if msg.state == HeldState::Dead {
                Ok(())
            } else {
                Err(Error::InvalidQuery(
                    "only dead records can be discarded: add state=dead".into(),
                ))
            }
        });
        let spool = self.spool.clone();
        let log = self.log.clone();
        let turn = self.discards.clone();
        let topic = msg.topic;
        let actor = msg.principal.name;
        let discard = async move {
            checked?;
            let _turn = turn.lock_owned().await;
            // What an earlier discard still owes goes first: its records are not counted again.
            let finished = finish_discards(&spool, &log.query).await?;
            let dead = spool.dead(&topic).await?;
            let event = NewEvent::now(
                &actor,
                Some(&topic),
                None,
                EventKind::HeldDiscarded {
                    count: dead.records,
                    up_to_id: dead.last_id,
                },
            );
            // Durable first: if the commit fails, every row is still there.
            let committed = log.append.send(Append(vec![event])).await??;
            let seq = committed.first().map_or(0, |e| e.seq);
            let deleted = spool.discard(&topic, dead.last_id, seq).await;
            Ok::<_, Error>((topic, dead.records, finished, deleted))
        };
        Box::pin(discard.into_actor(self).map(|result, act, _| {
            let (topic, count, finished, deleted) = result?;
            for (topic, removed) in finished {
                act.counts.discard(&topic, removed);
            }
            match deleted {
                Ok(removed) => act.counts.discard(&topic, removed),
                Err(e) => {
                    // The discard is decided; the rows go at the next retry or start.
                    tracing::warn!(%topic, error = %e, "Discard committed, rows not deleted yet; retrying.");
                    act.discard_owed = true;
                }
            }
            Ok(count)
        }))
    }
}

impl Handler<SpoolHealth> for Publisher {
    type Result = MessageResult<SpoolHealth>;

    fn handle(&mut self, _: SpoolHealth, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.spool.health())
    }
}

/// Sends the held records of `topic` to Kafka in arrival order until the spool has none left
/// and the publisher agrees to stop. A batch that Kafka only partly takes is sent again from
/// its first unacknowledged record (records after it may then reach Kafka twice).
async fn drain(topic: String, spool: Spool, producer: Arc<BatchProducer>, me: Addr<Publisher>) {
    let mut backoff = DRAIN_BACKOFF_START;
    // Whether the last batch did not get through: then the gate stays open, so that callers
    // are held in the spool rather than in memory while Kafka is away.
    let mut failing = false;
    loop {
        let batch = match spool.next_held(&topic, 0, DRAIN_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(%topic, error = %e, "Cannot read the spool.");
                tokio::time::sleep(DRAIN_BACKOFF_MAX).await;
                continue;
            }
        };
        if batch.len() < DRAIN_BATCH && !failing {
            // Everything the spool had fits in this batch: close the gate behind it.
            me.do_send(CatchingUp {
                topic: topic.clone(),
            });
        }
        if batch.is_empty() {
            match me
                .send(DrainIdle {
                    topic: topic.clone(),
                })
                .await
            {
                Ok(false) => {
                    // Holds are still being committed: give the spool thread a moment.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                _ => return,
            }
        }
        // Records go up to the first one whose headers cannot be read back; that one is
        // dead-lettered when it comes first, never sent without its headers.
        let records: Vec<Record> = batch.iter().map_while(|h| h.record().ok()).collect();
        if records.is_empty() {
            let bad = &batch[0];
            if let Err(e) = &bad.headers {
                tracing::error!(%topic, id = bad.id, error = %e, "A held record cannot be read back; dead-lettering it.");
            }
            METRICS.undecodable_held.inc();
            dead_letter_one(&topic, &spool, bad.id, &me).await;
            continue;
        }
        let sent = producer.send(&topic, &records);
        // No delivery reports at all: nothing is known to be in Kafka.
        let failed = sent.failed.await.unwrap_or_else(|_| {
            (0..sent.enqueued)
                .map(|index| Undelivered {
                    index,
                    refused: None,
                })
                .collect()
        });
        // Everything before the first record that a retry may still deliver is done: in
        // Kafka, in order, or refused by it for good.
        let delivered = failed
            .iter()
            .filter(|u| u.refused.is_none())
            .map(|u| u.index)
            .min()
            .unwrap_or(sent.enqueued)
            .min(sent.enqueued);
        // Those refused for good leave the held state first, so the release below, which
        // takes the held records up to an id, counts only what Kafka has.
        for undelivered in failed.iter().filter(|u| u.index < delivered) {
            if let (Some(reason), Some(bad)) = (&undelivered.refused, batch.get(undelivered.index))
            {
                tracing::error!(%topic, id = bad.id, %reason, "Kafka refuses a held record; dead-lettering it.");
                dead_letter_one(&topic, &spool, bad.id, &me).await;
            }
        }
        if delivered > 0 {
            release(&topic, &spool, batch[delivered - 1].id, &me).await;
        }
        failing = delivered < records.len();
        if failing {
            me.do_send(OpenGate {
                topic: topic.clone(),
            });
            tracing::warn!(%topic, retry_in_ms = backoff.as_millis() as u64, "Kafka did not take held records; retrying.");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(DRAIN_BACKOFF_MAX);
        } else {
            backoff = DRAIN_BACKOFF_START;
        }
    }
}

/// Releases the held records of `topic` up to `up_to_id`, which Kafka has. Retried until the
/// spool can (a full disk refuses even a delete): sending them again would duplicate them.
async fn release(topic: &str, spool: &Spool, up_to_id: i64, me: &Addr<Publisher>) {
    let mut backoff = DRAIN_BACKOFF_START;
    loop {
        match spool.release(topic, up_to_id).await {
            Ok(released) => {
                me.do_send(Drained {
                    topic: topic.to_string(),
                    records: released,
                });
                return;
            }
            Err(e) => {
                tracing::error!(%topic, error = %e, "Cannot release drained records; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(DRAIN_BACKOFF_MAX);
            }
        }
    }
}

/// Moves one held record to the dead-letter state. Retried until the spool can: the drain
/// cannot pass the record before.
async fn dead_letter_one(topic: &str, spool: &Spool, id: i64, me: &Addr<Publisher>) {
    let mut backoff = DRAIN_BACKOFF_START;
    loop {
        match spool.kill_one(id).await {
            Ok(moved) => {
                me.do_send(DeadLettered {
                    topic: topic.to_string(),
                    records: moved,
                });
                return;
            }
            Err(e) => {
                tracing::error!(%topic, id, error = %e, "Cannot dead-letter a held record; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(DRAIN_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::events::{Durability, Event, Store};

    /// An event log whose appends fail, as a full or broken disk makes them.
    struct FailingAppends;

    impl Actor for FailingAppends {
        type Context = Context<Self>;
    }

    impl Handler<Append> for FailingAppends {
        type Result = std::result::Result<Vec<Event>, StoreError>;

        fn handle(&mut self, _: Append, _: &mut Context<Self>) -> Self::Result {
            Err(StoreError::Full("database or disk is full".into()))
        }
    }

    fn event_store(dir: &std::path::Path) -> Addr<EventStore> {
        let store = Store::open(dir, Durability::Normal).expect("open the log");
        let head = store.replay(|_| {}).expect("replay");
        let (writer, _thread) = store.into_writer(head).expect("writer");
        EventStore::new(writer, crate::shutdown::Fatal::detached()).start()
    }

    fn admin() -> Principal {
        Principal {
            name: "carol".into(),
            roles: BTreeSet::from([Role::Admin]),
        }
    }

    fn producer() -> BatchProducer {
        // Never reached: these tests do not send to Kafka.
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        BatchProducer::new(&config).expect("producer")
    }

    fn record(n: usize) -> Record {
        Record {
            key: Some(format!("k{n}").into_bytes()),
            value: Some(format!("v{n}").into_bytes()),
            headers: vec![("h".to_string(), Some(n.to_string().into_bytes()))],
            ..Record::default()
        }
    }

    /// A spool in `dir` whose topic `t` has three dead records.
    async fn spool_with_dead(dir: &std::path::Path) -> Spool {
        let (spool, _) = Spool::open(dir, Durability::Normal).expect("spool");
        spool
            .hold("t".into(), "alice".into(), (0..3).map(record).collect())
            .await
            .expect("held");
        spool.kill("t").await.expect("dead");
        spool
    }

    async fn start(spool: &Spool, log: EventLog) -> Addr<Publisher> {
        let contents = spool.contents().await.expect("contents");
        Publisher::new(
            producer(),
            spool.clone(),
            contents,
            SpoolLimits::default(),
            log,
        )
        .start()
    }

    fn discard() -> DiscardHeld {
        DiscardHeld {
            principal: admin(),
            topic: "t".into(),
            state: HeldState::Dead,
        }
    }

    async fn dead_of(spool: &Spool, topic: &str) -> Vec<i64> {
        let dead = spool.list(topic, HeldState::Dead, None, 0, 100).await;
        dead.expect("list").iter().map(|h| h.id).collect()
    }

    #[actix::test]
    async fn a_discard_deletes_nothing_when_its_event_is_not_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = spool_with_dead(dir.path()).await;
        let store = event_store(dir.path());
        let failing = EventLog {
            append: FailingAppends.start().recipient(),
            query: store.clone().recipient(),
        };
        let publisher = start(&spool, failing).await;

        let refused = publisher.send(discard()).await.expect("mailbox");
        assert!(
            matches!(refused, Err(Error::StorageFull(_))),
            "the failed commit is the caller's error: {refused:?}"
        );
        assert_eq!(dead_of(&spool, "t").await.len(), 3, "no row is deleted");
        let counts = publisher
            .send(Counts(vec!["t".into()]))
            .await
            .expect("counts");
        assert_eq!(counts["t"].dead, 3);

        // With a log that commits, the same discard goes through: event first, then rows.
        let publisher = start(&spool, store.clone().into()).await;
        let ids = dead_of(&spool, "t").await;
        let discarded = publisher.send(discard()).await.expect("mailbox");
        assert_eq!(discarded.expect("discarded"), 3);
        assert!(dead_of(&spool, "t").await.is_empty());
        assert_eq!(
            publisher
                .send(Counts(vec!["t".into()]))
                .await
                .expect("counts")["t"]
                .dead,
            0
        );
        let page = store
            .send(QueryAudit(AuditQuery {
                kind: Some("held_discarded".into()),
                limit: 10,
                ..AuditQuery::default()
            }))
            .await
            .expect("mailbox")
            .expect("audit");
        assert_eq!(page.events.len(), 1);
        assert_eq!(
            page.events[0].data,
            serde_json::json!({"count": 3, "up_to_id": ids[2]})
        );
        assert_eq!(
            spool.discarded_seq().await.expect("seq"),
            page.events[0].seq
        );
    }

    #[actix::test]
    async fn a_discard_committed_before_a_crash_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = spool_with_dead(dir.path()).await;
        spool
            .hold("u".into(), "bob".into(), (0..2).map(record).collect())
            .await
            .expect("held");
        spool.kill("u").await.expect("dead");
        let ids = dead_of(&spool, "t").await;
        // The crash came after the commit and before the deletion.
        let store = event_store(dir.path());
        let event = NewEvent::now(
            "carol",
            Some("t"),
            None,
            EventKind::HeldDiscarded {
                count: 3,
                up_to_id: Some(ids[2]),
            },
        );
        let committed = store.send(Append(vec![event])).await.expect("mailbox");
        let seq = committed.expect("committed")[0].seq;

        let publisher = start(&spool, store.clone().into()).await;
        // The first answer comes after the start has finished what the log owed.
        let counts = publisher
            .send(Counts(vec!["t".into(), "u".into()]))
            .await
            .expect("counts");
        assert_eq!(counts["t"].dead, 0, "{counts:?}");
        assert_eq!(counts["u"].dead, 2, "another topic's dead records stay");
        assert!(dead_of(&spool, "t").await.is_empty());
        assert_eq!(dead_of(&spool, "u").await.len(), 2);
        assert_eq!(spool.discarded_seq().await.expect("seq"), seq);

        // Records of `t` that die later are not part of that discard, at any later start.
        spool
            .hold("t".into(), "alice".into(), (3..5).map(record).collect())
            .await
            .expect("held");
        spool.kill("t").await.expect("dead");
        let publisher = start(&spool, store.into()).await;
        assert_eq!(
            publisher
                .send(Counts(vec!["t".into()]))
                .await
                .expect("counts")["t"]
                .dead,
            2
        );
        assert_eq!(dead_of(&spool, "t").await.len(), 2);
    }

    #[actix::test]
    async fn direct_topics_say_when_a_publish_would_go_straight_to_kafka() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, contents) = Spool::open(dir.path(), Durability::Normal).expect("spool");
        let publisher = Publisher::new(
            producer(),
            spool,
            contents,
            SpoolLimits::default(),
            event_store(dir.path()),
        );
        let direct = publisher.direct_topics();
        let publisher = publisher.start();
        let route = |topic: &str, route| SetRoute {
            topic: topic.into(),
            route,
        };
        assert!(!direct.is_direct("t"), "no route yet");
        publisher
            .send(route("t", TopicRoute::Active))
            .await
            .expect("route");
        assert!(direct.is_direct("t"), "active, nothing held");

        publisher
            .send(route("u", TopicRoute::Pending))
            .await
            .expect("route");
        let held = publisher.send(Publish {
            producer: "alice".into(),
            topic: "u".into(),
            records: (0..2).map(record).collect(),
            requested: false,
        });
        assert_eq!(held.await.expect("mailbox").expect("held").held, 2);
        assert!(!direct.is_direct("u"), "pending");
        // Active with records held: they drain first (and cannot, with no broker).
        publisher
            .send(route("u", TopicRoute::Active))
            .await
            .expect("route");
        assert!(!direct.is_direct("u"), "records held ahead of new ones");
        assert_eq!(
            publisher
                .send(Counts(vec!["u".into()]))
                .await
                .expect("counts")["u"]
                .held,
            2
        );

        let closed = TopicRoute::Closed("its request was rejected".into());
        publisher.send(route("t", closed)).await.expect("route");
        assert!(!direct.is_direct("t"), "closed");
    }

    #[actix::test]
    async fn a_full_disk_refuses_ingest_with_storage_full_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("spool");
        let publisher = start(&spool, event_store(dir.path()).into()).await;
        publisher
            .send(SetRoute {
                topic: "t".into(),
                route: TopicRoute::Pending,
            })
            .await
            .expect("route");
        let publish = || Publish {
            producer: "alice".into(),
            topic: "t".into(),
            records: (0..40)
                .map(|n| Record {
                    value: Some(vec![b'x'; 4000 + n]),
                    ..Record::default()
                })
                .collect(),
            requested: false,
        };
        spool.cap_pages(Some(1)).await.expect("cap");
        let refused = publisher.send(publish()).await.expect("mailbox");
        assert!(matches!(refused, Err(Error::StorageFull(_))), "{refused:?}");
        let health = publisher.send(SpoolHealth).await.expect("health");
        assert!(health.storage_full, "{health:?}");
        let counts = publisher
            .send(Counts(vec!["t".into()]))
            .await
            .expect("counts");
        assert_eq!(counts["t"].held, 0, "the refused records are not counted");
        assert!(METRICS.storage_full.get() > 0);

        spool.cap_pages(None).await.expect("uncap");
        let receipt = publisher.send(publish()).await.expect("mailbox");
        assert_eq!(receipt.expect("held").held, 40);
        assert!(
            !publisher
                .send(SpoolHealth)
                .await
                .expect("health")
                .storage_full
        );
        assert_eq!(
            publisher
                .send(Counts(vec!["t".into()]))
                .await
                .expect("counts")["t"]
                .held,
            40
        );
    }

    #[actix::test]
    async fn a_held_record_whose_headers_cannot_be_read_is_dead_lettered_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(dir.path(), Durability::Normal).expect("spool");
        spool
            .hold("t".into(), "alice".into(), vec![record(0)])
            .await
            .expect("held");
        let conn = rusqlite::Connection::open(dir.path().join("spool.db")).expect("connection");
        conn.execute("UPDATE held SET header_list = X'ff'", [])
            .expect("damage");
        drop(conn);
        let publisher = start(&spool, event_store(dir.path()).into()).await;
        let before = METRICS.undecodable_held.get();
        publisher
            .send(SetRoute {
                topic: "t".into(),
                route: TopicRoute::Active,
            })
            .await
            .expect("route");
        // The drain runs on its own; wait for it to move the record.
        let mut counts = TopicCounts::default();
        for _ in 0..600 {
            counts = publisher
                .send(Counts(vec!["t".into()]))
                .await
                .expect("counts")["t"];
            if counts.dead == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!((counts.held, counts.dead, counts.published), (0, 1, 0));
        assert_eq!(dead_of(&spool, "t").await.len(), 1);
        assert!(METRICS.undecodable_held.get() > before);
    }

    #[actix::test]
    async fn records_of_a_topic_asked_for_a_moment_ago_are_held_before_its_route_arrives() {
        use crate::actors::registry::{Command, Registry};
        use crate::events::{TopicSpec, Visibility};
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new(Default::default(), event_store(dir.path()));
        let view = registry.view();
        let registry = registry.start();
        registry
            .send(Command::FileCreate {
                actor: "alice".into(),
                topic: "t".into(),
                spec: TopicSpec {
                    partitions: 1,
                    replication_factor: 1,
                    config: Default::default(),
                },
                reason: None,
                visibility: Visibility::Open,
            })
            .await
            .expect("mailbox")
            .expect("filed");
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let (spool, contents) = Spool::open(spool_dir.path(), Durability::Normal).expect("spool");
        // No `SetRoute` is sent: the watcher has not passed the request on yet.
        let publisher = Publisher::new(
            producer(),
            spool.clone(),
            contents,
            SpoolLimits::default(),
            event_store(spool_dir.path()),
        )
        .consulting(view)
        .start();
        let receipt = publisher
            .send(Publish {
                producer: "alice".into(),
                topic: "t".into(),
                records: vec![record(0)],
                requested: false,
            })
            .await
            .expect("mailbox")
            .expect("held, not refused as unknown");
        assert_eq!(
            receipt,
            Receipt {
                published: 0,
                held: 1
            }
        );
        let unknown = publisher
            .send(Publish {
                producer: "alice".into(),
                topic: "never-asked".into(),
                records: vec![record(1)],
                requested: false,
            })
            .await
            .expect("mailbox");
        assert!(
            matches!(unknown, Err(Error::UnknownTopic(_))),
            "{unknown:?}"
        );
    }
}
