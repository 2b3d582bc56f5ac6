//! The topic reader actor: one per topic that some feed reads, shared by every user reading it.
//!
//! It tails every partition of its topic with one rdkafka consumer (no group: it commits
//! nothing, positions belong to the users), renders each record's frame once, and hands the
//! same records to every user's `Consumer` that has joined it. It keeps a window of the last
//! `WINDOW_RECORDS` records (at most `WINDOW_BYTES`) of each partition, so a consumer whose position is inside the
//! window joins from memory; one whose position is before the window is told so (`Behind`) and
//! reads with its own catch-up reader until it reaches the window.
//!
//! A reader never waits for its members: a consumer whose feeds are slow leaves (see
//! `consumer.rs`), so one slow feed cannot hold back the others. The reader starts at the end
//! of each partition (exact offsets read from the watermarks, so the window's start is known)
//! and stops once it has had no member for `feeds.idle_consumer_ms`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::consumer::{fetched, into_batches, Fetched, RecordBatch};
use crate::config::{FeedConfig, KafkaConfig};
use crate::error::{Error, Result};
use crate::metrics::METRICS;

/// Records kept per partition for consumers that join behind the tail: a user whose feeds fell
/// behind rejoins from here rather than fetching from Kafka on its own. About 20 s of a
/// partition at 1,700 records/s; at 4,096 records (2.4 s), a loaded machine's slow users had
/// left the window by the time their feeds had room: 637 of the 663 fall-backs of 500 users
/// ended reading alone from Kafka.
const WINDOW_RECORDS: usize = 32_768;
/// And at most this many bytes of rendered frames per partition, so large records do not make
/// the window large.
const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Most records handed from the reader task to the actor at once.
const MAX_FETCH_BATCH: usize = 512;
/// How long the reader task waits for metadata and watermarks before retrying.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to start reading a topic whose metadata could not be read.
const START_RETRY: Duration = Duration::from_secs(1);

/// A member id no other join of this process has used: readers key their members by it.
pub(crate) fn new_member_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The running topic readers, by topic; every `Consumer` holds a clone.
#[derive(Clone)]
pub struct TopicReaders {
    running: Arc<Mutex<HashMap<String, Addr<TopicReader>>>>,
    kafka: KafkaConfig,
    settings: FeedConfig,
    /// The runtime the tail tasks run on: they poll Kafka and render every frame, work for
    /// the facade runtime, not for the actors' thread.
    tasks: tokio::runtime::Handle,
}

impl TopicReaders {
    pub fn new(
        kafka: KafkaConfig,
        settings: FeedConfig,
        tasks: tokio::runtime::Handle,
    ) -> TopicReaders {
        TopicReaders {
            running: Arc::default(),
            kafka,
            settings,
            tasks,
        }
    }

    /// The reader of `topic`, started if none runs.
    pub(crate) fn reader(&self, topic: &str) -> Result<Addr<TopicReader>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = running.get(topic).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let reader = TopicReader::new(
            topic,
            &self.kafka,
            &self.settings,
            self.running.clone(),
            self.tasks.clone(),
        )?;
        let addr = reader.start();
        running.insert(topic.to_string(), addr.clone());
        Ok(addr)
    }
}

/// What a topic reader tells a member (or a consumer asking to join).
pub(crate) enum ReaderEvent {
    /// The join is accepted, with the window's records from the member's positions on (the
    /// backlog, which the consumer may hold beyond its usual bound: they are the window's own
    /// records, shared, not copies).
    Joined(Arc<[Arc<RecordBatch>]>),
    /// A position is before the window; these are the window's first offsets per partition.
    Behind(HashMap<i32, i64>),
    /// Records, in offset order per partition, cut into batches that each fit one `records`
    /// frame; the same batches go to every member, so their rendered frames are shared.
    Records(Arc<[Arc<RecordBatch>]>),
}

/// A message from the reader of `topic` to the consumer that joined as `member`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct FromReader {
    pub topic: Arc<str>,
    pub member: u64,
    pub event: ReaderEvent,
}

/// Join at `positions` (next offset wanted per partition).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Join {
    pub member: u64,
    pub positions: HashMap<i32, i64>,
    pub to: Recipient<FromReader>,
}

/// Stop sending to `member`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leave {
    pub member: u64,
}

/// The reader task knows where each partition starts.
#[derive(Message)]
#[rtype(result = "()")]
struct Started(HashMap<i32, i64>);

/// Records fetched by the reader task; answered once fanned out, so the task fetches at the
/// pace the actor hands records on.
#[derive(Message)]
#[rtype(result = "()")]
struct Tail(Vec<Fetched>);

/// Where the window stands in one partition. Every record from `from` on that Kafka has is
/// either in the window's batches or still to come from the reader task.
struct Window {
    from: i64,
    /// The last offset taken into the window (`from - 1` before any).
    last: i64,
}

/// The recent records of every partition, kept as the very batches that went to the members:
/// a consumer that joins from the window gets them as they are, already rendered and shared
/// with every other user, instead of the window's records cut into batches (and frames
/// rendered) again for each join.
#[derive(Default)]
struct Batches {
    batches: VecDeque<Arc<RecordBatch>>,
    records: usize,
    /// Bytes of the records' frames.
    bytes: usize,
}

pub struct TopicReader {
    topic: Arc<str>,
    /// The rdkafka client, until `started` hands it to the reader task.
    client: Option<StreamConsumer>,
    /// Dropped when the actor stops, which ends the reader task.
    stop: Option<oneshot::Sender<()>>,
    running: Arc<Mutex<HashMap<String, Addr<TopicReader>>>>,
    tasks: tokio::runtime::Handle,
    idle_after: Duration,
    /// Empty until the reader task has started (`Started`).
    windows: HashMap<i32, Window>,
    window: Batches,
    started: bool,
    members: HashMap<u64, Recipient<FromReader>>,
    /// Joins that arrived before the reader knew where it starts.
    waiting: Vec<Join>,
    idle_since: Option<Instant>,
}

impl TopicReader {
    fn new(
        topic: &str,
        kafka: &KafkaConfig,
        settings: &FeedConfig,
        running: Arc<Mutex<HashMap<String, Addr<TopicReader>>>>,
        tasks: tokio::runtime::Handle,
    ) -> Result<TopicReader> {
        let mut config = crate::kafka::client_config(kafka);
        config
            // librdkafka wants a group for a consumer; this one never joins nor commits.
            .set("group.id", "kafflow.topic-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset gone to retention restarts at the oldest record rather than skipping
            // to the newest: records already in the window are dropped as repeats.
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", "16384")
            // As for the per-user readers: let the broker gather a few ms of records per fetch.
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "65536");
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        let client: StreamConsumer = config
            .create()
            .map_err(|e| Error::ConsumerUnavailable(e.to_string()))?;
        Ok(TopicReader {
            topic: topic.into(),
            client: Some(client),
            stop: None,
            running,
            tasks,
            idle_after: Duration::from_millis(settings.idle_consumer_ms),
            windows: HashMap::new(),
            window: Batches::default(),
            started: false,
            members: HashMap::new(),
            waiting: Vec::new(),
            idle_since: Some(Instant::now()),
        })
    }

    fn join(&mut self, msg: Join) {
        let behind = self.windows.iter().any(|(partition, window)| {
            msg.positions
                .get(partition)
                .is_none_or(|&next| next < window.from)
        });
        if behind {
            let from = self.windows.iter().map(|(p, w)| (*p, w.from)).collect();
            msg.to.do_send(FromReader {
                topic: self.topic.clone(),
                member: msg.member,
                event: ReaderEvent::Behind(from),
            });
            return;
        }
        // Every batch with a record at or after the member's position; the consumer drops the
        // records before it from the first ones (`accept`) and shares the rest whole.
        let wanted = |(partition, _, last): &(i32, i64, i64)| {
            msg.positions
                .get(partition)
                .is_some_and(|&next| *last >= next)
        };
        let backlog: Arc<[Arc<RecordBatch>]> = self
            .window
            .batches
            .iter()
            .filter(|batch| batch.spans().iter().any(wanted))
            .cloned()
            .collect();
        tracing::debug!(topic = %self.topic, member = msg.member, backlog = backlog.len(), "Consumer joined the topic reader.");
        msg.to.do_send(FromReader {
            topic: self.topic.clone(),
            member: msg.member,
            event: ReaderEvent::Joined(backlog),
        });
        self.members.insert(msg.member, msg.to);
        self.idle_since = None;
    }

    /// Stops the reader if it has had no member for the idle time. The entry in `running` is
    /// removed under its lock first, so a consumer either finds this reader before (its `Join`
    /// then fails and is retried on a new one) or a new one after.
    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = self.members.is_empty()
            && self.waiting.is_empty()
            && self
                .idle_since
                .is_some_and(|s| s.elapsed() >= self.idle_after);
        if !idle {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let me = ctx.address();
        if running.get(&*self.topic).is_some_and(|a| *a == me) {
            running.remove(&*self.topic);
        }
        ctx.stop();
    }
}

impl Actor for TopicReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::UNBOUNDED_MAILBOX);
        METRICS.feed_topic_readers.inc();
        if let Some(client) = self.client.take() {
            let (stop, stopped) = oneshot::channel();
            self.stop = Some(stop);
            self.tasks
                .spawn(tail(client, self.topic.clone(), ctx.address(), stopped));
        }
        let every = (self.idle_after / 2).clamp(Duration::from_millis(50), START_RETRY);
        ctx.run_interval(every, |act, ctx| act.stop_if_idle(ctx));
        tracing::info!(topic = %self.topic, "Topic reader started.");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        METRICS.feed_topic_readers.dec();
        tracing::info!(topic = %self.topic, "Topic reader stopped.");
    }
}

impl Handler<Join> for TopicReader {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        if self.started {
            self.join(msg);
        } else {
            self.waiting.push(msg);
        }
        // A consumer told it is behind is no member: it does not keep the reader running.
        if self.members.is_empty() && self.waiting.is_empty() {
            self.idle_since.get_or_insert_with(Instant::now);
        } else {
            self.idle_since = None;
        }
    }
}

impl Handler<Leave> for TopicReader {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.members.remove(&msg.member);
        self.waiting.retain(|j| j.member != msg.member);
        if self.members.is_empty() && self.waiting.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }
}

impl Handler<Started> for TopicReader {
    type Result = ();

    fn handle(&mut self, msg: Started, _: &mut Context<Self>) {
        self.windows = msg
            .0
            .into_iter()
            .map(|(partition, from)| {
                let window = Window {
                    from,
                    last: from - 1,
                };
                (partition, window)
            })
            .collect();
        self.started = true;
        for join in std::mem::take(&mut self.waiting) {
            self.join(join);
        }
        if self.members.is_empty() {
            self.idle_since.get_or_insert_with(Instant::now);
        }
    }
}

impl Handler<Tail> for TopicReader {
    type Result = ();

    fn handle(&mut self, msg: Tail, _: &mut Context<Self>) {
        let mut fresh = Vec::with_capacity(msg.0.len());
        for mut record in msg.0 {
            let Some(window) = self.windows.get_mut(&record.partition) else {
                continue;
            };
            if record.offset <= window.last {
                continue;
            }
            window.last = record.offset;
            // One name for every record of the topic: cutting batches compares names, and a
            // shared one compares by pointer.
            record.topic = self.topic.clone();
            fresh.push(Arc::new(record));
        }
        if fresh.is_empty() {
            return;
        }
        let records: Arc<[Arc<RecordBatch>]> = into_batches(fresh).into();
        self.keep(&records);
        if self.members.is_empty() {
            return;
        }
        for (member, to) in &self.members {
            to.do_send(FromReader {
                topic: self.topic.clone(),
                member: *member,
                event: ReaderEvent::Records(records.clone()),
            });
        }
    }
}

impl TopicReader {
    /// Adds `batches` to the window and drops its oldest batches past `WINDOW_RECORDS` per
    /// partition or `WINDOW_BYTES`, moving each partition's `from` past what was dropped.
    fn keep(&mut self, batches: &[Arc<RecordBatch>]) {
        let window = &mut self.window;
        for batch in batches {
            window.records += batch.record_count();
            window.bytes += batch.frame_bytes();
            window.batches.push_back(batch.clone());
        }
        let most_records = WINDOW_RECORDS * self.windows.len().max(1);
        let most_bytes = WINDOW_BYTES * self.windows.len().max(1);
        while window.batches.len() > 1
            && (window.records > most_records || window.bytes > most_bytes)
        {
            let Some(old) = window.batches.pop_front() else {
                break;
            };
            window.records -= old.record_count();
            window.bytes -= old.frame_bytes();
            for &(partition, _, last) in old.spans() {
                if let Some(w) = self.windows.get_mut(&partition) {
                    w.from = w.from.max(last + 1);
                }
            }
        }
    }
}

/// The reader task: finds where each partition ends, assigns the client there, and hands the
/// fetched records to the actor until the actor stops.
async fn tail(
    client: StreamConsumer,
    topic: Arc<str>,
    actor: Addr<TopicReader>,
    mut stopped: oneshot::Receiver<()>,
) {
    let client = Arc::new(client);
    let start = loop {
        let c = client.clone();
        let t = topic.clone();
        let found = tokio::task::spawn_blocking(move || ends(&c, &t))
            .await
            .ok()
            .flatten();
        if let Some(start) = found {
            break Some(start);
        }
        tracing::warn!(%topic, "No partition metadata yet; the topic reader will retry.");
        tokio::select! {
            _ = &mut stopped => break None,
            _ = tokio::time::sleep(START_RETRY) => {}
        }
    };
    if let Some(start) = start {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in &start {
            if let Err(e) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(%topic, partition, error = %e, "Bad start offset.");
            }
        }
        match client.assign(&list) {
            Ok(()) => {
                actor.do_send(Started(start));
                fetch(&client, &topic, &actor, &mut stopped).await;
            }
            Err(e) => tracing::warn!(%topic, error = %e, "Cannot assign the topic reader."),
        }
    }
    // Closing a consumer blocks until librdkafka lets go of it.
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
}

async fn fetch(
    client: &StreamConsumer,
    topic: &str,
    actor: &Addr<TopicReader>,
    stopped: &mut oneshot::Receiver<()>,
) {
    let mut last_error = String::new();
    loop {
        let first = tokio::select! {
            _ = &mut *stopped => return,
            first = client.recv() => first,
        };
        let mut records = Vec::new();
        match first {
            Ok(message) => records.push(fetched(&message)),
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(%topic, error = %text, "Kafka consumer error.");
                    last_error = text;
                }
                continue;
            }
        }
        while records.len() < MAX_FETCH_BATCH {
            match client.recv().now_or_never() {
                Some(Ok(message)) => records.push(fetched(&message)),
                _ => break,
            }
        }
        if actor.send(Tail(records)).await.is_err() {
            return;
        }
    }
}

/// The next offset of every partition of `topic` (its high watermark), if metadata answers.
fn ends(client: &StreamConsumer, topic: &str) -> Option<HashMap<i32, i64>> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if found.error().is_some() || found.partitions().is_empty() {
        return None;
    }
    let mut ends = HashMap::new();
    for partition in found.partitions() {
        let (_, high) = client
            .fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)
            .ok()?;
        ends.insert(partition.id(), high);
    }
    Some(ends)
}
