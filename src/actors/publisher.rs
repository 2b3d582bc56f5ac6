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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use super::event_store::{Append, EventStore};
use super::registry::TopicRoute;
use crate::config::SpoolLimits;
use crate::error::{Error, Result};
use crate::events::{EventKind, NewEvent};
use crate::identity::{Principal, Role};
use crate::kafka::BatchProducer;
use crate::metrics::METRICS;
use crate::record::Record;
use crate::spool::{HeldRecordOut, HeldState, Spool, TopicContents};

const DRAIN_BATCH: usize = 2000;
const DRAIN_BACKOFF_START: Duration = Duration::from_millis(200);
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
const SAVE_PUBLISHED_EVERY: Duration = Duration::from_secs(2);

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

#[derive(Message)]
#[rtype(result = "HashMap<String, TopicCounts>")]
pub struct Counts;

/// Held records of a topic, for the admin or the producer who sent them.
#[derive(Message)]
#[rtype(result = "Result<Vec<HeldRecordOut>>")]
pub struct ListHeld {
    pub principal: Principal,
    pub topic: String,
    pub state: HeldState,
    pub after: i64,
    pub limit: usize,
}

/// Deletes the dead records of a topic (admin); recorded as a `held_discarded` event.
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub struct DiscardHeld {
    pub principal: Principal,
    pub topic: String,
    /// Only `dead` records can be discarded; held ones are still owed to Kafka.
    pub state: HeldState,
}

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
    records: u64,
    bytes: u64,
}

/// Held records moved to the dead-letter state.
#[derive(Message)]
#[rtype(result = "()")]
struct DeadLettered {
    topic: String,
    records: u64,
    bytes: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
struct DeadLetterIfClosed {
    topic: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Drained {
    topic: String,
    records: u64,
    bytes: u64,
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
    contents: TopicContents,
    draining: bool,
    /// The drain is catching up: new records wait here, unacknowledged and in order, until
    /// the spool is empty, then go straight to Kafka. Without this gate a topic that never
    /// pauses would never leave the spool. Bounded: it lasts less than one drain batch.
    gated: Option<Vec<(Publish, oneshot::Sender<Result<Receipt>>)>>,
}

impl TopicState {
    fn direct(&self) -> bool {
        self.route == Some(TopicRoute::Active) && self.contents.held == 0 && !self.draining
    }
}

pub struct Publisher {
    producer: Arc<BatchProducer>,
    spool: Spool,
    limits: SpoolLimits,
    event_store: Addr<EventStore>,
    topics: HashMap<String, TopicState>,
    spool_bytes: u64,
    unsaved_published: HashMap<String, u64>,
}

impl Publisher {
    pub fn new(
        producer: BatchProducer,
        spool: Spool,
        contents: HashMap<String, TopicContents>,
        limits: SpoolLimits,
        event_store: Addr<EventStore>,
    ) -> Self {
        let spool_bytes = contents.values().map(|c| c.held_bytes + c.dead_bytes).sum();
        let topics = contents
            .into_iter()
            .map(|(topic, contents)| {
                let state = TopicState {
                    contents,
                    ..TopicState::default()
                };
                (topic, state)
            })
            .collect();
        let publisher = Publisher {
            producer: Arc::new(producer),
            spool,
            limits,
            event_store,
            topics,
            spool_bytes,
            unsaved_published: HashMap::new(),
        };
        publisher.update_gauges();
        publisher
    }

    fn update_gauges(&self) {
        let records: u64 = self
            .topics
            .values()
            .map(|t| t.contents.held + t.contents.dead)
            .sum();
        METRICS.spool_records.set(records as i64);
        METRICS.spool_bytes.set(self.spool_bytes as i64);
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
        let n = records.len() as u64;
        let bytes: u64 = records.iter().map(Record::size).sum();
        let state = self.topics.entry(topic.to_string()).or_default();
        if enforce_limits {
            if state.contents.held + n > self.limits.max_records_per_topic {
                METRICS.spool_full.inc();
                return Err(Error::SpoolFull(format!(
                    "topic {topic} already holds {} records (limit {})",
                    state.contents.held, self.limits.max_records_per_topic
                )));
            }
            if self.spool_bytes + bytes > self.limits.max_bytes_total {
                METRICS.spool_full.inc();
                return Err(Error::SpoolFull(format!(
                    "the spool holds {} bytes (limit {})",
                    self.spool_bytes, self.limits.max_bytes_total
                )));
            }
        }
        // Counted now, in arrival order, so a drain never stops while records are on their way.
        state.contents.held += n;
        state.contents.held_bytes += bytes;
        let start_drain = state.route == Some(TopicRoute::Active) && !state.draining;
        self.spool_bytes += bytes;
        METRICS.held.inc_by(n);
        self.update_gauges();
        if start_drain {
            self.start_drain(topic, ctx);
        }
        let committed = self
            .spool
            .hold(topic.to_string(), producer.to_string(), records);
        let me = ctx.address();
        let topic = topic.to_string();
        Ok(async move {
            match committed.await {
                Ok(()) => Ok(n),
                Err(e) => {
                    me.do_send(HoldFailed {
                        topic,
                        records: n,
                        bytes,
                    });
                    Err(e)
                }
            }
        })
    }

    /// Moves every held record of a closed topic to the dead-letter state.
    fn kill_held(&mut self, topic: &str, ctx: &mut Context<Self>) {
        let spool = self.spool.clone();
        let topic = topic.to_string();
        let moved = async move { spool.kill(&topic).await.map(|n| (topic, n)) };
        ctx.spawn(moved.into_actor(self).map(|result, act, _| match result {
            Ok((topic, n)) => {
                METRICS.dead_lettered.inc_by(n);
                if let Some(state) = act.topics.get_mut(&topic) {
                    let c = &mut state.contents;
                    c.held = c.held.saturating_sub(n);
                    c.dead += n;
                    c.dead_bytes += c.held_bytes;
                    c.held_bytes = 0;
                }
                act.update_gauges();
                tracing::info!(%topic, records = n, "Held records dead-lettered.");
            }
            Err(e) => tracing::error!(error = %e, "Held records not dead-lettered."),
        }));
    }

    fn start_drain(&mut self, topic: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.draining = true;
        tracing::info!(%topic, held = state.contents.held, "Draining held records.");
        actix::spawn(drain(
            topic.to_string(),
            self.spool.clone(),
            self.producer.clone(),
            ctx.address(),
        ));
    }

    fn count_published(&mut self, topic: &str, n: u64) {
        METRICS.published.inc_by(n);
        self.topics
            .entry(topic.to_string())
            .or_default()
            .contents
            .published += n;
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Records of one connection must reach the publisher in the order they were sent.
        ctx.set_mailbox_capacity(super::UNBOUNDED_MAILBOX);
        ctx.run_interval(SAVE_PUBLISHED_EVERY, |act, _| {
            if act.unsaved_published.is_empty() {
                return;
            }
            let counts = std::mem::take(&mut act.unsaved_published);
            let spool = act.spool.clone();
            actix::spawn(async move {
                if let Err(e) = spool.add_published(counts).await {
                    tracing::warn!(error = %e, "Published counts not saved.");
                }
            });
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
        let state = self.topics.entry(topic.clone()).or_default();
        if msg.requested && matches!(state.route, None | Some(TopicRoute::Unknown)) {
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
        if let Some(e) = refused {
            return Box::pin(async move { Err(e) });
        }
        if !state.direct() {
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
            let failed = sent
                .failed
                .await
                .unwrap_or_else(|_| (0..records.len()).collect());
            receipt.published = (records.len() - failed.len()) as u64;
            me.do_send(Delivered {
                topic: topic.clone(),
                records: receipt.published,
            });
            if !failed.is_empty() {
                // Kafka did not take them (broker down, timeout): they wait in the spool.
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
        if let Some(state) = self.topics.get_mut(&msg.topic) {
            state.contents.held = state.contents.held.saturating_sub(msg.records);
            state.contents.held_bytes = state.contents.held_bytes.saturating_sub(msg.bytes);
        }
        self.spool_bytes = self.spool_bytes.saturating_sub(msg.bytes);
        self.update_gauges();
    }
}

impl Handler<Delivered> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Delivered, _: &mut Context<Self>) {
        if msg.records > 0 {
            self.count_published(&msg.topic, msg.records);
            *self.unsaved_published.entry(msg.topic).or_default() += msg.records;
        }
    }
}

impl Handler<Drained> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Drained, _: &mut Context<Self>) {
        METRICS.drained.inc_by(msg.records);
        self.count_published(&msg.topic, msg.records);
        if let Some(state) = self.topics.get_mut(&msg.topic) {
            state.contents.held = state.contents.held.saturating_sub(msg.records);
            state.contents.held_bytes = state.contents.held_bytes.saturating_sub(msg.bytes);
        }
        self.spool_bytes = self.spool_bytes.saturating_sub(msg.bytes);
        self.update_gauges();
    }
}

impl Handler<DeadLettered> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: DeadLettered, _: &mut Context<Self>) {
        METRICS.dead_lettered.inc_by(msg.records);
        if let Some(state) = self.topics.get_mut(&msg.topic) {
            let c = &mut state.contents;
            c.held = c.held.saturating_sub(msg.records);
            c.held_bytes = c.held_bytes.saturating_sub(msg.bytes);
            c.dead += msg.records;
            c.dead_bytes += msg.bytes;
        }
        self.update_gauges();
    }
}

impl Handler<DeadLetterIfClosed> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: DeadLetterIfClosed, ctx: &mut Context<Self>) {
        let closed = self
            .topics
            .get(&msg.topic)
            .is_some_and(|t| matches!(t.route, Some(TopicRoute::Closed(_))) && t.contents.held > 0);
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
    }
}

impl Handler<DrainIdle> for Publisher {
    type Result = bool;

    fn handle(&mut self, msg: DrainIdle, ctx: &mut Context<Self>) -> bool {
        let Some(state) = self.topics.get_mut(&msg.topic) else {
            return true;
        };
        // More records are on their way into the spool, and the topic is still active.
        if state.contents.held > 0 && state.route == Some(TopicRoute::Active) {
            return false;
        }
        state.draining = false;
        let waiting = state.gated.take().unwrap_or_default();
        if state.direct() {
            tracing::info!(topic = %msg.topic, waiting = waiting.len(), "Spool drained; publishing directly.");
        }
        // What waited at the gate goes now, in arrival order, by whatever path is right.
        for (publish, reply) in waiting {
            let receipt = self.publish_now(publish, ctx);
            actix::spawn(async move {
                let _ = reply.send(receipt.await);
            });
        }
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
        match msg.route {
            TopicRoute::Active if state.contents.held > 0 && !state.draining => {
                self.start_drain(&topic, ctx)
            }
            TopicRoute::Closed(_) if state.contents.held > 0 => self.kill_held(&topic, ctx),
            _ => {}
        }
    }
}

impl Handler<Counts> for Publisher {
    type Result = MessageResult<Counts>;

    fn handle(&mut self, _: Counts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.topics
                .iter()
                .map(|(topic, state)| {
                    let c = &state.contents;
                    let counts = TopicCounts {
                        held: c.held,
                        dead: c.dead,
                        published: c.published,
                    };
                    (topic.clone(), counts)
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
            // A producer sees only what it sent; an admin sees everything.
            let only = (!msg.principal.has(Role::Admin)).then(|| msg.principal.name.clone());
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
        let spool = self.spool.clone();
        let checked = msg.principal.require_any(&[Role::Admin]).and_then(|_| {
            if msg.state == HeldState::Dead {
                Ok(())
            } else {
                Err(Error::InvalidQuery(
                    "only dead records can be discarded: add state=dead".into(),
                ))
            }
        });
        let topic = msg.topic.clone();
        let discard = async move {
            checked?;
            spool
                .discard(&topic)
                .await
                .map(|(n, bytes)| (topic, n, bytes))
        };
        let event_store = self.event_store.clone();
        Box::pin(
            discard
                .into_actor(self)
                .map(|result, act, _| {
                    // The rows are gone: the counts follow whatever happens to the event.
                    let (topic, count, bytes) = result?;
                    METRICS.discarded.inc_by(count);
                    if let Some(state) = act.topics.get_mut(&topic) {
                        state.contents.dead = state.contents.dead.saturating_sub(count);
                        state.contents.dead_bytes = state.contents.dead_bytes.saturating_sub(bytes);
                    }
                    act.spool_bytes = act.spool_bytes.saturating_sub(bytes);
                    act.update_gauges();
                    Ok((topic, count))
                })
                .then(move |result: Result<(String, u64)>, act, _| {
                    async move {
                        let (topic, count) = result?;
                        let event = NewEvent::now(
                            &msg.principal.name,
                            Some(&topic),
                            None,
                            EventKind::HeldDiscarded { count },
                        );
                        event_store.send(Append(vec![event])).await??;
                        Ok(count)
                    }
                    .into_actor(act)
                }),
        )
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
        let records: Vec<Record> = batch.iter().map(|h| h.record.clone()).collect();
        let sent = producer.send(&topic, &records);
        // No delivery reports at all: nothing is known to be in Kafka.
        let failed = sent
            .failed
            .await
            .unwrap_or_else(|_| (0..sent.enqueued).collect());
        // Everything before the first record Kafka did not take is in Kafka, in order.
        let delivered = failed
            .iter()
            .copied()
            .min()
            .unwrap_or(sent.enqueued)
            .min(sent.enqueued);
        if delivered > 0 {
            let last = &batch[delivered - 1];
            let bytes = records[..delivered].iter().map(Record::size).sum();
            match spool.release(&topic, last.id, delivered as u64).await {
                Ok(()) => me.do_send(Drained {
                    topic: topic.clone(),
                    records: delivered as u64,
                    bytes,
                }),
                Err(e) => tracing::error!(%topic, error = %e, "Cannot release drained records."),
            }
        }
        if let (Some(reason), true) = (&sent.refused, delivered == sent.enqueued) {
            if let Some(bad) = batch.get(delivered) {
                // Retrying cannot help, and would block every later record of the topic.
                tracing::error!(%topic, id = bad.id, %reason, "Kafka refuses a held record; dead-lettering it.");
                match spool.kill_one(bad.id).await {
                    Ok(()) => me.do_send(DeadLettered {
                        topic: topic.clone(),
                        records: 1,
                        bytes: bad.record.size(),
                    }),
                    Err(e) => {
                        tracing::error!(%topic, error = %e, "Cannot dead-letter a held record.")
                    }
                }
                continue;
            }
        }
        failing = delivered < batch.len();
        if delivered < batch.len() {
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
