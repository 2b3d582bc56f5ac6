//! The consumer actor: one per user, started when the user's first feed opens and stopped
//! (by `subscriptions`) once it has had no feed for a while.
//!
//! It keeps the user's position in each partition of the user's topics and gets the records
//! from one of two sources per topic:
//! - the topic's shared `TopicReader` (one Kafka fetch for every user reading the topic), once
//!   the user's position is inside the reader's window of recent records;
//! - otherwise its own **catch-up reader**: an rdkafka consumer in the group
//!   `kafflow.user.<name>`, assigned by hand at the user's exact positions, until the positions
//!   reach the shared window; then the topic joins the shared reader and leaves the catch-up
//!   reader. The same client commits the user's offsets to that group, so offsets live in Kafka.
//!
//! Across a switch between sources nothing is lost or sent twice: each source delivers, per
//! partition, every record from the position it was given on, in offset order, and the actor
//! hands a record on only if its offset is at least the partition's next position (which it
//! then moves past it). See `accept`.
//!
//! A subscription change resolves, joins or leaves one topic in place; a topic that stays is
//! not disturbed. Every record goes to every open feed of the user; its offset is committed only
//! once each of those feeds has written its frame to the socket (at-least-once).
//!
//! Each feed has a frame format: one frame per record, or one `records` frame per batch
//! (`frames=batch`), whose text is rendered once, off this thread, and shared by every feed
//! (and, for a shared reader's batch, every user) that writes it. See `RecordBatch`.
//!
//! Backpressure: each feed may hold `feeds.buffer_frames` records not yet written, whatever
//! the frames that carry them. When a record cannot be handed to every feed, the actor keeps it. The shared reader never waits for
//! one user: when `FALL_BACK_AT` records wait, or `PULL_BELOW` have waited for `PAUSE_AFTER`,
//! the user's shared topics leave it and their waiting records are dropped; once the feeds
//! have room the topics join again at the first of them, from the reader's window, and only a
//! user that has left the window meanwhile reads alone with its catch-up reader. What each feed
//! has written is counted in atomics (`FeedAcks`) that the actor reads when it dispatches, not
//! sent as a message per write, so a busy actor does not look like slow feeds. The catch-up
//! reader is held back as before: the actor stops
//! pulling records from it (librdkafka then stops fetching once its bounded prefetch is full); if the slow
//! feed has not caught up within `PAUSE_AFTER`, the actor pauses its partitions, which also
//! frees the prefetch. A feed that makes no progress for `feeds.stall_timeout_ms` is closed
//! with a close frame saying so. Memory stays bounded by the feed buffers, at most two fetch
//! batches and librdkafka's prefetch (`queued.max.messages.kbytes`).
//!
//! The rdkafka client lives in a reader task that runs the actor's Kafka operations in order
//! between fetches. Each fetched batch carries the epoch of the last assignment change the
//! reader made before it; records of a topic (re)assigned in a later epoch are stale and dropped,
//! so a record fetched before an unassign can never be delivered after it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::topic_reader::{
    new_member_id, FromReader, Join, Leave, ReaderEvent, TopicReader, TopicReaders,
};
use crate::config::{FeedConfig, KafkaConfig};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::shutdown::Guard;

/// Prefix of the consumer group of each user.
pub const GROUP_PREFIX: &str = "kafflow.user.";

/// Most records handed from the reader to the actor at once.
const MAX_FETCH_BATCH: usize = 512;
/// The reader hands over another batch only while fewer records than this wait for the feeds.
const PULL_BELOW: usize = MAX_FETCH_BATCH;
/// How long the feeds may hold the reader back before the partitions are paused. A pause drops
/// librdkafka's prefetch, so it is kept for a slow client, not for a burst.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// How long the reader waits for partition metadata before retrying.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to resolve a topic whose metadata could not be read.
const ASSIGN_RETRY: Duration = Duration::from_secs(1);
/// Records waiting for the feeds at which the user's shared topics fall back to catching up.
const FALL_BACK_AT: usize = 4 * MAX_FETCH_BATCH;
/// How often a topic reading on its own asks its shared reader again whether it may join.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// Where a feed starts reading when it is the one that starts the user's consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedStart {
    /// Where this user last committed; a topic the user never read starts at its beginning.
    #[default]
    Committed,
    Earliest,
    Latest,
}

/// Why KafFlow closes a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedClose {
    /// The client read nothing for this long while frames were waiting.
    Stalled(Duration),
    /// The user's consumer stopped (shutdown).
    Shutdown,
}

impl FeedClose {
    /// The websocket close code.
    pub fn code(&self) -> u16 {
        match self {
            FeedClose::Stalled(_) => 1008,
            FeedClose::Shutdown => 1001,
        }
    }

    /// The close reason (at most 123 bytes, as the protocol allows).
    pub fn reason(&self) -> String {
        match self {
            FeedClose::Stalled(after) => format!(
                "stalled: nothing read for {} ms; reconnect to resume after the last commit",
                after.as_millis()
            ),
            FeedClose::Shutdown => "KafFlow is shutting down".to_string(),
        }
    }
}

/// Most records in one `records` frame (`frames=batch`).
pub const MAX_BATCH_RECORDS: usize = 512;
/// Most bytes of record JSON in one `records` frame; a single larger record goes alone.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How a feed carries records: the format is chosen per feed when it opens (`frames=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedFormat {
    /// One text frame per record (the original format).
    #[default]
    Record,
    /// One `{"type":"records","records":[...]}` frame per batch of records.
    Batch,
    /// One `{"type":"records","topic":"..","records":[...]}` frame per batch of records of one
    /// topic, each record without its `topic` field: the topic named once per frame.
    Compact,
}

impl FeedFormat {
    /// Whether records go out in `records` frames, many to a frame.
    fn batched(self) -> bool {
        matches!(self, FeedFormat::Batch | FeedFormat::Compact)
    }
}

/// Records handed on together, and their `records` frame, rendered once by the first feed
/// that writes it (on the facade runtime, not the actors' thread) and shared by every other
/// feed, and with a shared reader's batch by every user, that writes the same batch.
///
/// A batch holds records of one topic. The consumer takes, queues and settles a batch as a
/// whole (its `spans` say what it covers), so the actor's work per user is per batch, not per
/// record: 500 users at 5,000 records/s are 2.5 million records a second on its one thread.
pub(crate) struct RecordBatch {
    topic: Arc<str>,
    records: Vec<Arc<Fetched>>,
    /// Per partition in the batch: its first and last offset.
    spans: Vec<(i32, i64, i64)>,
    /// One buffer, written as it is by every feed: a websocket text message can hold shared
    /// bytes, so no feed copies the frame into a string of its own.
    text: OnceLock<Utf8Bytes>,
    /// The same for `frames=compact`.
    compact: OnceLock<Utf8Bytes>,
}

impl RecordBatch {
    /// `records` must be of one topic, in offset order per partition, and not empty.
    fn new(topic: Arc<str>, records: Vec<Arc<Fetched>>) -> RecordBatch {
        let mut spans: Vec<(i32, i64, i64)> = Vec::new();
        for r in &records {
            match spans.iter_mut().find(|(p, _, _)| *p == r.partition) {
                Some(span) => span.2 = r.offset,
                None => spans.push((r.partition, r.offset, r.offset)),
            }
        }
        RecordBatch {
            topic,
            records,
            spans,
            text: OnceLock::new(),
            compact: OnceLock::new(),
        }
    }

    /// How many records the batch holds.
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Per partition in the batch: its first and last offset.
    pub(crate) fn spans(&self) -> &[(i32, i64, i64)] {
        &self.spans
    }

    /// Bytes of its records' frames.
    pub(crate) fn frame_bytes(&self) -> usize {
        self.records.iter().map(|r| r.frame.len()).sum()
    }

    fn text(&self) -> &Utf8Bytes {
        self.text.get_or_init(|| {
            let size: usize = self.records.iter().map(|r| r.frame.len() + 1).sum();
            let mut out = String::with_capacity(32 + size);
            out.push_str("{\"type\":\"records\",\"records\":[");
            for (i, record) in self.records.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&record.frame);
            }
            out.push_str("]}");
            out.into()
        })
    }

    /// The `frames=compact` frame: the topic once, then each record's frame without its
    /// leading `"topic":..,` member (every record of a batch is of its topic, and `render`
    /// writes that member first, always the same bytes for the same name) and without an
    /// empty `headers` (`render` writes it just before `timestamp`, the last member).
    fn compact_text(&self) -> &Utf8Bytes {
        self.compact.get_or_init(|| {
            let mut topic = String::with_capacity(self.topic.len() + 2);
            push_json_str(&mut topic, &self.topic);
            let member = format!("{{\"topic\":{topic},");
            let size: usize = self.records.iter().map(|r| r.frame.len() + 1).sum();
            let mut out = String::with_capacity(48 + topic.len() + size);
            out.push_str("{\"type\":\"records\",\"topic\":");
            out.push_str(&topic);
            out.push_str(",\"records\":[");
            for (i, record) in self.records.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match record.frame.strip_prefix(member.as_str()) {
                    Some(rest) => {
                        out.push('{');
                        match without_empty_headers(rest) {
                            Some((before, timestamp)) => {
                                out.push_str(before);
                                out.push_str(",\"timestamp\":");
                                out.push_str(timestamp);
                            }
                            None => out.push_str(rest),
                        }
                    }
                    // Not a frame `render` wrote for this topic: sent whole rather than cut.
                    None => out.push_str(&record.frame),
                }
            }
            out.push_str("]}");
            out.into()
        })
    }
}

/// A rendered record frame that ends with an empty `headers` then its `timestamp`, as what
/// comes before `headers` and the timestamp's value with the closing brace. The suffix alone
/// is looked at: a value may hold the same bytes, but never at the end of the frame.
fn without_empty_headers(frame: &str) -> Option<(&str, &str)> {
    const EMPTY: &str = ",\"headers\":{},\"timestamp\":";
    let body = frame.strip_suffix('}')?;
    let digits = body.len()
        - body
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
    let value_at = if digits < body.len() {
        digits
    } else {
        body.strip_suffix("null")?.len()
    };
    let before = body[..value_at].strip_suffix(EMPTY)?;
    Some((before, &frame[value_at..]))
}

/// How many of `records` (at least one, if any) fit in one `records` frame.
pub(crate) fn batch_len<'a>(records: impl Iterator<Item = &'a Fetched>, most: usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for record in records.take(most.min(MAX_BATCH_RECORDS)) {
        bytes += record.frame.len() + 1;
        if n > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Cuts fetched records into batches of one topic that each fit one `records` frame.
pub(crate) fn into_batches(records: Vec<Arc<Fetched>>) -> Vec<Arc<RecordBatch>> {
    let mut batches = Vec::new();
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let topic = first.topic.clone();
        let same = rest
            .iter()
            .take_while(|r| Arc::ptr_eq(&r.topic, &topic) || r.topic == topic)
            .count();
        let n = batch_len(rest[..same].iter().map(|r| &**r), same);
        batches.push(Arc::new(RecordBatch::new(topic, rest[..n].to_vec())));
        rest = &rest[n..];
    }
    batches
}

/// Records of one batch from `from` on, waiting for room in every feed.
struct Chunk {
    batch: Arc<RecordBatch>,
    from: usize,
}

/// Records `from..to` of a batch, handed to the feeds and not yet written by all of them;
/// the last has the sequence number `last_n`.
struct InFlight {
    last_n: u64,
    batch: Arc<RecordBatch>,
    from: usize,
    to: usize,
}

impl InFlight {
    fn first_n(&self) -> u64 {
        self.last_n + 1 - (self.to - self.from) as u64
    }

    fn records(&self) -> &[Arc<Fetched>] {
        &self.batch.records[self.from..self.to]
    }
}

/// Queues the records of `batch` (of `position`'s topic) that are the next ones of their
/// partitions: the whole batch, shared, when it starts at or after every position (each source
/// sends every record from the position it was given, in order, so a record below `next` was
/// already handed on by the other source); otherwise the records that are.
fn accept(position: &mut Position, pending: &mut Pending, batch: &Arc<RecordBatch>) {
    let whole = batch
        .spans
        .iter()
        .all(|(p, first, _)| position.next.get(p).is_none_or(|next| first >= next));
    if whole {
        for (p, _, last) in &batch.spans {
            position.next.insert(*p, last + 1);
        }
        pending.push(batch.clone(), 0);
        return;
    }
    let mut fresh = Vec::new();
    for record in &batch.records {
        let next = position
            .next
            .entry(record.partition)
            .or_insert(record.offset);
        if record.offset >= *next {
            *next = record.offset + 1;
            fresh.push(record.clone());
        }
    }
    if !fresh.is_empty() {
        let part = RecordBatch::new(batch.topic.clone(), fresh);
        pending.push(Arc::new(part), 0);
    }
}

/// The records waiting for the feeds, as chunks of batches, and how many there are.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Chunk>,
    records: usize,
}

impl Pending {
    fn push(&mut self, batch: Arc<RecordBatch>, from: usize) {
        self.records += batch.records.len() - from;
        self.chunks.push_back(Chunk { batch, from });
    }

    fn len(&self) -> usize {
        self.records
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.records = 0;
    }

    /// Keeps the chunks of the topics `keep` says yes to.
    fn retain(&mut self, mut keep: impl FnMut(&Chunk) -> bool) {
        self.chunks.retain(|c| keep(c));
        self.records = self
            .chunks
            .iter()
            .map(|c| c.batch.records.len() - c.from)
            .sum();
    }

    fn records(&self) -> impl Iterator<Item = &Arc<Fetched>> {
        self.chunks.iter().flat_map(|c| &c.batch.records[c.from..])
    }
}

#[derive(Clone)]
enum FrameBody {
    Text(Utf8Bytes),
    Batch(Arc<RecordBatch>),
    Compact(Arc<RecordBatch>),
}

/// One text frame for a feed. Frames that carry records carry the consumer's sequence number
/// `n` of their last record, which the feed reports back once written; notices
/// (`subscriptions`, `topic_deleted`) do not.
#[derive(Clone)]
pub struct Frame {
    n: Option<u64>,
    /// How many records the frame carries.
    records: usize,
    body: FrameBody,
}

impl Frame {
    /// The frame's JSON text; a batch's is rendered on the first call. Cloning it shares the
    /// buffer.
    pub fn text(&self) -> &Utf8Bytes {
        match &self.body {
            FrameBody::Text(text) => text,
            FrameBody::Batch(batch) => batch.text(),
            FrameBody::Compact(batch) => batch.compact_text(),
        }
    }

    fn notice(value: serde_json::Value) -> Frame {
        Frame {
            n: None,
            records: 0,
            body: FrameBody::Text(value.to_string().into()),
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("n", &self.n)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// What a feed waits for next.
pub enum FeedEvent {
    Frame(Frame),
    Closed(FeedClose),
}

/// The receiving end of one feed. Dropping it detaches the feed from the consumer.
pub struct FeedHandle {
    id: u64,
    frames: mpsc::UnboundedReceiver<Frame>,
    close: oneshot::Receiver<FeedClose>,
    consumer: Addr<Consumer>,
    acks: Arc<FeedAcks>,
    /// Set by the consumer while it holds records for want of room in a feed.
    wake: Arc<AtomicBool>,
}

/// What a feed's pump has written, counted where the consumer reads it when it next
/// dispatches, commits or checks for stalls, rather than told in a message per write: behind
/// the shared readers' batches in a busy consumer's mailbox, such messages made the feeds look
/// slow and the user fall back.
#[derive(Default)]
struct FeedAcks {
    /// Records written to the socket, in all.
    records: AtomicU64,
    /// The highest record sequence number written.
    upto: AtomicU64,
}

impl FeedHandle {
    /// The next frame, or the order to close.
    pub async fn next(&mut self) -> FeedEvent {
        tokio::select! {
            biased;
            reason = &mut self.close => FeedEvent::Closed(reason.unwrap_or(FeedClose::Shutdown)),
            frame = self.frames.recv() => match frame {
                Some(frame) => FeedEvent::Frame(frame),
                None => FeedEvent::Closed(FeedClose::Shutdown),
            },
        }
    }

    /// A frame that is already waiting, if any.
    pub fn try_next(&mut self) -> Option<Frame> {
        self.frames.try_recv().ok()
    }

    /// Resolves when the consumer closes this feed.
    pub async fn closed(&mut self) -> FeedClose {
        (&mut self.close).await.unwrap_or(FeedClose::Shutdown)
    }

    /// Tells the consumer that `frames` are written to the socket.
    pub fn written(&self, frames: &[Frame]) {
        let records = frames.iter().map(|f| f.records).sum::<usize>();
        METRICS.delivered.inc_by(records as u64);
        self.acks
            .records
            .fetch_add(records as u64, Ordering::SeqCst);
        if let Some(n) = frames.iter().filter_map(|f| f.n).max() {
            self.acks.upto.fetch_max(n, Ordering::SeqCst);
        }
        // Only a consumer that holds records for want of room needs a message; the others
        // read the counters when they next dispatch or commit.
        if self.wake.swap(false, Ordering::SeqCst) {
            self.consumer.do_send(Written);
        }
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.consumer.do_send(Detach { feed: self.id });
    }
}

/// Opens a feed on this consumer.
#[derive(Message)]
#[rtype(result = "FeedHandle")]
pub struct Attach {
    pub from: FeedStart,
    pub format: FeedFormat,
}

/// The user's subscribed topics changed: this is the whole new set.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTopics(pub BTreeSet<String>);

/// A subscribed topic was deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TopicGone(pub String);

/// Stop now (sent only when the consumer has no feed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Told to whoever started the consumer each time one of its feeds goes away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FeedClosed {
    pub user: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Detach {
    feed: u64,
}

/// A feed wrote frames while the consumer was holding records for want of room.
#[derive(Message)]
#[rtype(result = "()")]
struct Written;

/// A record as a reader fetched it, its frame already rendered.
pub(crate) struct Fetched {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub frame: Utf8Bytes,
}

/// Records fetched after the reader's last assignment change `epoch`; answered with whether
/// the reader should go on handing over records.
#[derive(Message)]
#[rtype(result = "bool")]
struct FetchedBatch {
    epoch: u64,
    records: Vec<Fetched>,
}

/// The catch-up reader found where each partition of `topic` starts for this user.
#[derive(Message)]
#[rtype(result = "()")]
struct Resolved {
    generation: u64,
    topic: String,
    next: HashMap<i32, i64>,
}

/// Where a newly assigned partition starts when no exact offset is known.
#[derive(Debug, Clone, Copy)]
enum StartAt {
    Stored,
    Beginning,
    End,
}

/// Work for the reader task, done in order.
enum KafkaOp {
    /// Find each partition's exact start offset and answer with `Resolved`.
    Resolve {
        generation: u64,
        topics: Vec<String>,
        at: StartAt,
        /// Exact next offsets known for some partitions (they win over `at`).
        resume: HashMap<(String, i32), i64>,
    },
    /// Fetch these partitions from these exact offsets (catch-up).
    Assign {
        epoch: u64,
        offsets: Vec<(String, i32, i64)>,
    },
    Unassign {
        epoch: u64,
        topics: Vec<String>,
    },
    Pause,
    Resume,
    /// Go on handing over records (after a batch was answered with "enough").
    Pull,
    /// Next offsets to commit.
    Commit(Vec<(String, i32, i64)>),
}

/// The shared reader of a topic, once asked to let this consumer join.
struct Membership {
    id: u64,
    reader: Addr<TopicReader>,
}

/// This user's place in one subscribed topic, while the consumer has feeds.
struct Position {
    /// Tells a `Resolved` for this assignment from one for an earlier one.
    generation: u64,
    /// The next offset to hand on, per partition; empty until resolved.
    next: HashMap<i32, i64>,
    resolved: bool,
    shared: Option<Membership>,
    /// The topic left its shared reader because the feeds were slow, and joins it again from
    /// the reader's window once they have room (or catches up alone if it is behind it).
    rejoin: bool,
    /// The window's first offsets when the shared reader last said this user was behind.
    window_from: HashMap<i32, i64>,
    last_join: Option<Instant>,
}

impl Position {
    fn reached_window(&self) -> bool {
        self.window_from
            .iter()
            .all(|(p, from)| self.next.get(p).is_some_and(|next| next >= from))
    }
}

struct FeedSlot {
    format: FeedFormat,
    tx: mpsc::UnboundedSender<Frame>,
    close: Option<oneshot::Sender<FeedClose>>,
    acks: Arc<FeedAcks>,
    /// Records sent (alone or in batches), in all.
    sent: u64,
    /// Records written, as last read from `acks`.
    written: u64,
    /// Records sent (alone or in batches) and not yet written, as last read.
    queued: usize,
    /// Every record up to this sequence number is written (or was never meant for this feed).
    acked: u64,
    /// Last time the feed wrote something, or went from idle to having work.
    progress: Instant,
}

pub struct Consumer {
    user: String,
    settings: FeedConfig,
    ops: mpsc::UnboundedSender<KafkaOp>,
    /// The rdkafka client and the op queue, until `started` hands them to the reader task.
    reader: Option<(StreamConsumer, mpsc::UnboundedReceiver<KafkaOp>)>,
    /// The runtime the reader task runs on: it polls Kafka and renders every frame, which
    /// would otherwise take the actors' thread.
    tasks: tokio::runtime::Handle,
    /// Held by the reader task until the client is closed (its last offsets committed), so
    /// that a shutdown waits for it.
    done: Option<Guard>,
    directory: Recipient<FeedClosed>,
    readers: TopicReaders,
    me: Option<Addr<Consumer>>,
    topics: BTreeSet<String>,
    /// The user's position in each topic being read; empty while there is no feed.
    positions: HashMap<String, Position>,
    generation: u64,
    /// Topics assigned to the catch-up reader and the epoch of their assignment.
    assigned: HashMap<String, u64>,
    epoch: u64,
    feeds: HashMap<u64, FeedSlot>,
    next_feed: u64,
    /// Sequence number of the last record handed to the feeds.
    last_n: u64,
    /// Fetched records waiting for room in every feed.
    pending: Pending,
    /// Since when at least `PULL_BELOW` records have been waiting.
    backlog_since: Option<Instant>,
    in_flight: VecDeque<InFlight>,
    /// Next offset per partition, as last committed (or about to be) by this consumer.
    committed: HashMap<(String, i32), i64>,
    /// Offsets written everywhere but not yet sent to Kafka (see `feeds.commit_interval_ms`).
    to_commit: HashMap<(String, i32), i64>,
    /// Where to restart partitions whose records were dropped when the last feed left.
    resume_at: HashMap<(String, i32), i64>,
    /// Where the feed that started reading asked to start; topics added while connected start
    /// there too, so a feed opened at `latest` is not flooded with a new topic's history.
    start: FeedStart,
    /// Since when the reader has been told to stop handing over records.
    holding: Option<Instant>,
    paused: bool,
    /// Shared with the feeds: set while records wait for room, so that the next write sends
    /// a `Written`.
    wake: Arc<AtomicBool>,
    /// Records of join backlogs not yet handed on: they are a shared reader's window, not
    /// copies, so they do not count towards falling back.
    grace: usize,
}

impl Consumer {
    /// Creates the rdkafka consumer of `user`; it reads nothing until a feed attaches.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        user: &str,
        topics: BTreeSet<String>,
        kafka: &KafkaConfig,
        settings: FeedConfig,
        directory: Recipient<FeedClosed>,
        readers: TopicReaders,
        done: Guard,
        tasks: tokio::runtime::Handle,
    ) -> Result<Consumer> {
        let mut config = crate::kafka::client_config(kafka);
        config
            .set("group.id", format!("{GROUP_PREFIX}{user}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // `committed` on a partition this user never read: from its beginning, so that
            // nothing produced after the subscription is missed.
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false")
            // librdkafka's prefetch per consumer; the default (64 MiB) is a lot for one user.
            .set("queued.max.messages.kbytes", "8192")
            // Let the broker gather up to 5 ms of records per fetch: with fetches answered at
            // each new record, 10 users at 5,000 records/s kept a broker core busy and the
            // median latency went from 7 ms to 500 ms.
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "65536");
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        let client: StreamConsumer = config
            .create()
            .map_err(|e| Error::ConsumerUnavailable(e.to_string()))?;
        let (ops, ops_rx) = mpsc::unbounded_channel();
        Ok(Consumer {
            user: user.to_string(),
            settings,
            ops,
            reader: Some((client, ops_rx)),
            tasks,
            done: Some(done),
            directory,
            readers,
            me: None,
            topics,
            positions: HashMap::new(),
            generation: 0,
            assigned: HashMap::new(),
            epoch: 0,
            feeds: HashMap::new(),
            next_feed: 0,
            last_n: 0,
            pending: Pending::default(),
            backlog_since: None,
            in_flight: VecDeque::new(),
            committed: HashMap::new(),
            to_commit: HashMap::new(),
            resume_at: HashMap::new(),
            start: FeedStart::Committed,
            holding: None,
            paused: false,
            wake: Arc::default(),
            grace: 0,
        })
    }

    fn op(&self, op: KafkaOp) {
        // The reader only stops when this actor does.
        let _ = self.ops.send(op);
    }

    fn subscriptions_notice(&self) -> Frame {
        Frame::notice(serde_json::json!({ "type": "subscriptions", "topics": self.topics }))
    }

    fn broadcast(&self, frame: &Frame) {
        for slot in self.feeds.values() {
            let _ = slot.tx.send(frame.clone());
        }
    }

    /// Starts reading `topics`: their start offsets are resolved first (`Resolved`), then the
    /// topic joins its shared reader or, if behind its window, catches up on its own.
    fn assign(&mut self, topics: Vec<String>, from: FeedStart) {
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|t| !self.positions.contains_key(t))
            .collect();
        if topics.is_empty() {
            return;
        }
        self.generation += 1;
        let mut resume = HashMap::new();
        for topic in &topics {
            self.positions.insert(
                topic.clone(),
                Position {
                    generation: self.generation,
                    next: HashMap::new(),
                    resolved: false,
                    shared: None,
                    rejoin: false,
                    window_from: HashMap::new(),
                    last_join: None,
                },
            );
        }
        let at = match from {
            FeedStart::Committed => {
                // Our own commits may not have reached the broker yet: exact offsets win.
                for (key, offset) in self.committed.iter().chain(self.resume_at.iter()) {
                    if topics.contains(&key.0) {
                        resume.insert(key.clone(), *offset);
                    }
                }
                StartAt::Stored
            }
            FeedStart::Earliest => StartAt::Beginning,
            FeedStart::Latest => StartAt::End,
        };
        self.resume_at
            .retain(|(topic, _), _| !topics.contains(topic));
        self.op(KafkaOp::Resolve {
            generation: self.generation,
            topics,
            at,
            resume,
        });
    }

    /// Asks the topic's shared reader to let this consumer join at its positions.
    fn try_join(&mut self, topic: &str) {
        let Some(me) = self.me.clone() else {
            return;
        };
        let Some(position) = self.positions.get_mut(topic) else {
            return;
        };
        if !position.resolved || position.shared.is_some() {
            return;
        }
        // With many records waiting the feeds are slow: joining would only fall back again.
        let slow = self.pending.len().saturating_sub(self.grace) >= PULL_BELOW;
        if slow && position.rejoin {
            // It waits for room (`rejoin_if_room`) rather than read alone from Kafka.
            return;
        }
        position.last_join = Some(Instant::now());
        let reader = if slow {
            None
        } else {
            match self.readers.reader(topic) {
                Ok(reader) => Some(reader),
                Err(e) => {
                    tracing::warn!(user = %self.user, %topic, error = %e, "No shared reader; catching up alone.");
                    None
                }
            }
        };
        let Some(reader) = reader else {
            self.catch_up(topic);
            return;
        };
        let id = new_member_id();
        reader.do_send(Join {
            member: id,
            positions: position.next.clone(),
            to: me.recipient(),
        });
        // Until the reader answers `Joined`, the catch-up reader (if any) goes on.
        position.shared = Some(Membership { id, reader });
    }

    /// Reads `topic` with the catch-up reader from the user's positions, if not already.
    fn catch_up(&mut self, topic: &str) {
        if self.assigned.contains_key(topic) {
            return;
        }
        let Some(position) = self.positions.get_mut(topic) else {
            return;
        };
        position.rejoin = false;
        let offsets: Vec<(String, i32, i64)> = position
            .next
            .iter()
            .map(|(p, next)| (topic.to_string(), *p, *next))
            .collect();
        self.epoch += 1;
        self.assigned.insert(topic.to_string(), self.epoch);
        METRICS.feed_catchup_topics.inc();
        METRICS.feed_catchups.inc();
        tracing::debug!(user = %self.user, %topic, "Catching up alone.");
        self.op(KafkaOp::Assign {
            epoch: self.epoch,
            offsets,
        });
    }

    /// Stops the catch-up reader on `topics`. Their records already waiting stay: they are
    /// before the positions the shared reader was given or are skipped by `accept`.
    fn stop_catch_up(&mut self, topics: Vec<String>) {
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|t| self.assigned.remove(t).is_some())
            .collect();
        if topics.is_empty() {
            return;
        }
        METRICS.feed_catchup_topics.sub(topics.len() as i64);
        self.epoch += 1;
        self.op(KafkaOp::Unassign {
            epoch: self.epoch,
            topics,
        });
    }

    fn leave_shared(position: &mut Position) {
        if let Some(membership) = position.shared.take() {
            membership.reader.do_send(Leave {
                member: membership.id,
            });
        }
    }

    /// Takes the records of a batch from either source that are the next of their partitions.
    fn accept(&mut self, batch: &Arc<RecordBatch>) {
        let Some(position) = self.positions.get_mut(&*batch.topic) else {
            return;
        };
        accept(position, &mut self.pending, batch);
    }

    /// Records waiting beyond the join backlogs still held (see `grace`).
    fn excess(&self) -> usize {
        self.pending.len().saturating_sub(self.grace)
    }

    /// The feeds are too slow for the shared readers: leave them and drop the waiting records
    /// of their topics, whose positions go back to the first of them. They join again from the
    /// reader's window once the feeds have room (`rejoin_if_room`); only a user by then behind
    /// the window reads alone from Kafka. So a burst, or a busy thread, costs a user a rejoin
    /// from memory, not a Kafka client of its own that fetches every record again.
    fn fall_back_if_slow(&mut self) {
        let slow = self.excess() >= FALL_BACK_AT
            || self
                .backlog_since
                .is_some_and(|since| since.elapsed() >= PAUSE_AFTER);
        if !slow {
            return;
        }
        let shared: Vec<String> = self
            .positions
            .iter()
            .filter(|(_, p)| p.shared.is_some())
            .map(|(t, _)| t.clone())
            .collect();
        if shared.is_empty() {
            return;
        }
        let mut first: HashMap<(Arc<str>, i32), i64> = HashMap::new();
        self.pending.retain(|chunk| {
            if !shared.iter().any(|t| **t == *chunk.batch.topic) {
                return true;
            }
            for r in &chunk.batch.records[chunk.from..] {
                first
                    .entry((r.topic.clone(), r.partition))
                    .and_modify(|o| *o = (*o).min(r.offset))
                    .or_insert(r.offset);
            }
            false
        });
        self.grace = self.grace.min(self.pending.len());
        for ((topic, partition), offset) in first {
            if let Some(position) = self.positions.get_mut(&*topic) {
                position.next.insert(partition, offset);
            }
        }
        // A topic still catching up while its join was on its way restarts from the reset
        // positions too: its client had fetched past the dropped records.
        self.stop_catch_up(shared.clone());
        for topic in &shared {
            if let Some(position) = self.positions.get_mut(topic) {
                Self::leave_shared(position);
                position.rejoin = true;
                position.last_join = Some(Instant::now());
            }
            METRICS.feed_fallbacks.inc();
            tracing::debug!(user = %self.user, %topic, "Feeds slow; leaving the shared reader until they have room.");
        }
        if self.excess() < PULL_BELOW {
            self.backlog_since = None;
        }
    }

    /// Topics that fell back join their shared reader again, at their positions, once few
    /// records wait and every feed has written at least half its buffer: the reader hands
    /// the window's records from there, or says the user is behind, which then reads alone.
    fn rejoin_if_room(&mut self) {
        if self.excess() >= PULL_BELOW || !self.positions.values().any(|p| p.rejoin) {
            return;
        }
        let half = self.settings.buffer_frames / 2;
        if self.feeds.values().any(|f| f.queued > half) {
            // The next write tells; nothing else may come to make this actor look again.
            self.wake.store(true, Ordering::SeqCst);
            return;
        }
        let topics: Vec<String> = self
            .positions
            .iter()
            .filter(|(t, p)| p.rejoin && p.shared.is_none() && !self.assigned.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in topics {
            self.try_join(&topic);
        }
    }

    /// Topics reading alone join their shared reader once their positions reach its window
    /// (or every `JOIN_RETRY`, as a record may never come to move a position there); a topic
    /// whose shared reader went away catches up and joins again.
    fn retry_joins(&mut self) {
        let mut to_join = Vec::new();
        let mut lost = Vec::new();
        for (topic, position) in &mut self.positions {
            match &position.shared {
                Some(m) if !m.reader.connected() => {
                    position.shared = None;
                    lost.push(topic.clone());
                }
                Some(_) => {}
                None if position.resolved
                    && !position.rejoin
                    && (position.reached_window()
                        || position
                            .last_join
                            .is_none_or(|at| at.elapsed() >= JOIN_RETRY)) =>
                {
                    to_join.push(topic.clone());
                }
                None => {}
            }
        }
        for topic in lost {
            self.catch_up(&topic);
        }
        self.rejoin_if_room();
        if self.excess() >= PULL_BELOW {
            return;
        }
        for topic in to_join {
            self.try_join(&topic);
        }
    }

    /// Stops reading `topics`: leaves their shared readers, unassigns them from the catch-up
    /// reader and forgets their waiting records.
    fn unassign(&mut self, topics: Vec<String>) {
        for topic in &topics {
            if let Some(mut position) = self.positions.remove(topic) {
                Self::leave_shared(&mut position);
            }
        }
        self.pending
            .retain(|c| !topics.iter().any(|t| **t == *c.batch.topic));
        self.grace = self.grace.min(self.pending.len());
        self.stop_catch_up(topics);
    }

    /// The last feed left: nothing can be delivered, so give the partitions back and remember
    /// where the undelivered records start, for the next feed.
    fn release(&mut self) {
        let undelivered = self
            .in_flight
            .iter()
            .flat_map(InFlight::records)
            .chain(self.pending.records());
        for record in undelivered {
            self.resume_at
                .entry((record.topic.to_string(), record.partition))
                .and_modify(|o| *o = (*o).min(record.offset))
                .or_insert(record.offset);
        }
        self.in_flight.clear();
        self.pending.clear();
        self.grace = 0;
        self.commit();
        let topics: Vec<String> = self
            .positions
            .keys()
            .chain(self.assigned.keys())
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        self.unassign(topics);
        self.release_hold();
        tracing::debug!(user = %self.user, "Last feed closed; partitions released.");
    }

    /// Hands waiting records to every feed while all have room (counted in records, whatever
    /// the frames); lets the reader hand over more once few wait, and topics that fell back
    /// join again once the feeds have room.
    fn dispatch(&mut self) {
        self.sync_feeds();
        loop {
            self.hand_on();
            if self.pending.chunks.is_empty() || self.feeds.is_empty() {
                break;
            }
            // Held for want of room: the next write sends `Written`. Look once more, as a
            // write may have landed before the flag was up.
            self.wake.store(true, Ordering::SeqCst);
            if !self.sync_feeds() {
                break;
            }
        }
        if self.excess() < PULL_BELOW {
            self.backlog_since = None;
            self.release_hold();
            self.rejoin_if_room();
        } else {
            self.backlog_since.get_or_insert_with(Instant::now);
        }
    }

    /// Reads what each feed's pump has written and commits what all have; true if any feed
    /// wrote since the last look.
    fn sync_feeds(&mut self) -> bool {
        let mut any = false;
        for slot in self.feeds.values_mut() {
            let written = slot.acks.records.load(Ordering::SeqCst);
            if written != slot.written {
                slot.written = written;
                slot.queued = slot.sent.saturating_sub(written) as usize;
                slot.progress = Instant::now();
                any = true;
            }
            slot.acked = slot.acked.max(slot.acks.upto.load(Ordering::SeqCst));
        }
        if any {
            self.advance();
        }
        any
    }

    /// Hands waiting records on while every feed has room.
    fn hand_on(&mut self) {
        let limit = self.settings.buffer_frames;
        while let Some(chunk) = self.pending.chunks.front_mut() {
            let Some(room) = self
                .feeds
                .values()
                .map(|f| limit.saturating_sub(f.queued))
                .min()
                .filter(|&room| room > 0)
            else {
                break;
            };
            let batch = chunk.batch.clone();
            let from = chunk.from;
            let take = room.min(batch.records.len() - from);
            let to = from + take;
            if to == batch.records.len() {
                self.pending.chunks.pop_front();
            } else {
                chunk.from = to;
            }
            self.pending.records -= take;
            self.grace = self.grace.saturating_sub(take);
            let first = self.last_n + 1;
            self.last_n += take as u64;
            let batched = self.feeds.values().any(|f| f.format.batched());
            // A whole batch is its own frame, shared with every user that takes it whole.
            let part = batched.then(|| {
                if from == 0 && to == batch.records.len() {
                    batch.clone()
                } else {
                    Arc::new(RecordBatch::new(
                        batch.topic.clone(),
                        batch.records[from..to].to_vec(),
                    ))
                }
            });
            let frame = |body: fn(Arc<RecordBatch>) -> FrameBody, part: &Arc<RecordBatch>| Frame {
                n: Some(self.last_n),
                records: take,
                body: body(part.clone()),
            };
            let now = Instant::now();
            for slot in self.feeds.values_mut() {
                if slot.queued == 0 {
                    slot.progress = now;
                }
                slot.queued += take;
                slot.sent += take as u64;
                // A closed receiver means the feed is going; its `Detach` is on the way.
                match (slot.format, &part) {
                    (FeedFormat::Batch, Some(part)) => {
                        let _ = slot.tx.send(frame(FrameBody::Batch, part));
                    }
                    (FeedFormat::Compact, Some(part)) => {
                        let _ = slot.tx.send(frame(FrameBody::Compact, part));
                    }
                    _ => {
                        for (n, record) in (first..).zip(&batch.records[from..to]) {
                            let _ = slot.tx.send(Frame {
                                n: Some(n),
                                records: 1,
                                body: FrameBody::Text(record.frame.clone()),
                            });
                        }
                    }
                }
            }
            self.in_flight.push_back(InFlight {
                last_n: self.last_n,
                batch,
                from,
                to,
            });
        }
    }

    /// Lets the reader hand over records again, resuming the partitions if they were paused.
    fn release_hold(&mut self) {
        if self.holding.take().is_none() {
            return;
        }
        if self.paused {
            self.paused = false;
            tracing::debug!(user = %self.user, "Feeds caught up; partitions resumed.");
            self.op(KafkaOp::Resume);
        }
        self.op(KafkaOp::Pull);
    }

    /// Pauses the partitions once the feeds have held the reader back for `PAUSE_AFTER`.
    fn pause_if_held(&mut self) {
        let held = self
            .holding
            .is_some_and(|since| since.elapsed() >= PAUSE_AFTER);
        if held && !self.paused {
            self.paused = true;
            tracing::debug!(user = %self.user, "A feed is slow; partitions paused.");
            self.op(KafkaOp::Pause);
        }
    }

    /// Commits the records every feed has written.
    fn advance(&mut self) {
        let Some(done) = self.feeds.values().map(|f| f.acked).min() else {
            return;
        };
        // A few partitions at most: a list searched by pointer is cheaper than hashing each
        // record's topic name.
        let mut next: Vec<(Arc<str>, i32, i64)> = Vec::new();
        let mut note = |topic: &Arc<str>, partition: i32, offset: i64| {
            let same = |(t, p, _): &&mut (Arc<str>, i32, i64)| {
                *p == partition && (Arc::ptr_eq(t, topic) || **t == **topic)
            };
            match next.iter_mut().find(same) {
                Some(slot) => slot.2 = slot.2.max(offset + 1),
                None => next.push((topic.clone(), partition, offset + 1)),
            }
        };
        while let Some(front) = self.in_flight.front_mut() {
            let first = front.first_n();
            if first > done {
                break;
            }
            let upto = if front.last_n <= done {
                front.to
            } else {
                front.from + (done + 1 - first) as usize
            };
            let batch = &front.batch;
            if front.from == 0 && upto == batch.records.len() {
                for (partition, _, last) in &batch.spans {
                    note(&batch.topic, *partition, *last);
                }
            } else {
                for r in &batch.records[front.from..upto] {
                    note(&batch.topic, r.partition, r.offset);
                }
            }
            if upto == front.to {
                self.in_flight.pop_front();
            } else {
                front.from = upto;
            }
        }
        for (topic, partition, offset) in next {
            let key = (topic.to_string(), partition);
            self.committed.insert(key.clone(), offset);
            self.to_commit.insert(key, offset);
        }
    }

    /// Sends the offsets written everywhere since the last commit to Kafka.
    fn commit(&mut self) {
        if self.to_commit.is_empty() {
            return;
        }
        let commits = self
            .to_commit
            .drain()
            .map(|((topic, partition), offset)| (topic, partition, offset))
            .collect();
        self.op(KafkaOp::Commit(commits));
    }

    fn remove_feed(&mut self, id: u64, close: Option<FeedClose>) {
        // What the feeds wrote is done: not sent again to the next feed.
        self.sync_feeds();
        let Some(mut slot) = self.feeds.remove(&id) else {
            return;
        };
        if let (Some(reason), Some(tx)) = (close, slot.close.take()) {
            let _ = tx.send(reason);
        }
        self.directory.do_send(FeedClosed {
            user: self.user.clone(),
        });
        if self.feeds.is_empty() {
            self.release();
        } else {
            self.advance();
            self.dispatch();
        }
    }

    fn close_stalled(&mut self) {
        self.sync_feeds();
        let limit = Duration::from_millis(self.settings.stall_timeout_ms);
        let stalled: Vec<u64> = self
            .feeds
            .iter()
            .filter(|(_, f)| f.queued > 0 && f.progress.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            tracing::warn!(user = %self.user, feed = id, "Feed stalled; closing it.");
            self.remove_feed(id, Some(FeedClose::Stalled(limit)));
        }
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Topic readers send with `do_send`, which a bounded mailbox would not hold back anyway;
        // their records must not be refused.
        ctx.set_mailbox_capacity(super::UNBOUNDED_MAILBOX);
        self.me = Some(ctx.address());
        if let Some((client, ops)) = self.reader.take() {
            self.tasks
                .spawn(read(client, ops, ctx.address(), self.done.take()));
        }
        let every = Duration::from_millis((self.settings.stall_timeout_ms / 4).clamp(50, 250));
        ctx.run_interval(every, |act, _| {
            act.fall_back_if_slow();
            act.pause_if_held();
            act.close_stalled();
            act.retry_joins();
        });
        // Offsets written everywhere are committed on a rhythm (`feeds.commit_interval_ms`),
        // not after every written batch, which would send the broker an offset commit per batch
        // and per user; a crash can at most send again what was written in this window, which
        // at-least-once allows.
        let commit_every = Duration::from_millis(self.settings.commit_interval_ms);
        ctx.run_interval(commit_every, |act, _| {
            act.sync_feeds();
            act.commit();
        });
        tracing::info!(user = %self.user, "Consumer started.");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // The reader runs the ops already queued before it sees the queue closed.
        self.commit();
        for position in self.positions.values_mut() {
            Self::leave_shared(position);
        }
        METRICS.feed_catchup_topics.sub(self.assigned.len() as i64);
        self.assigned.clear();
        for (_, mut slot) in self.feeds.drain() {
            if let Some(tx) = slot.close.take() {
                let _ = tx.send(FeedClose::Shutdown);
            }
        }
        tracing::info!(user = %self.user, "Consumer stopped.");
    }
}

impl Handler<Attach> for Consumer {
    type Result = MessageResult<Attach>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let first = self.feeds.is_empty();
        let id = self.next_feed;
        self.next_feed += 1;
        let (tx, frames) = mpsc::unbounded_channel();
        let (close_tx, close) = oneshot::channel();
        let _ = tx.send(self.subscriptions_notice());
        let acks = Arc::new(FeedAcks::default());
        self.feeds.insert(
            id,
            FeedSlot {
                format: msg.format,
                tx,
                close: Some(close_tx),
                acks: acks.clone(),
                sent: 0,
                written: 0,
                queued: 0,
                acked: self.last_n,
                progress: Instant::now(),
            },
        );
        if first {
            self.start = msg.from;
            let topics = self.topics.iter().cloned().collect();
            self.assign(topics, msg.from);
        }
        tracing::debug!(user = %self.user, feed = id, format = ?msg.format, feeds = self.feeds.len(), "Feed opened.");
        MessageResult(FeedHandle {
            id,
            frames,
            close,
            consumer: ctx.address(),
            acks,
            wake: self.wake.clone(),
        })
    }
}

impl Handler<Detach> for Consumer {
    type Result = ();

    fn handle(&mut self, msg: Detach, _: &mut Context<Self>) {
        self.remove_feed(msg.feed, None);
    }
}

impl Handler<Written> for Consumer {
    type Result = ();

    fn handle(&mut self, _: Written, _: &mut Context<Self>) {
        self.dispatch();
    }
}

impl Handler<FetchedBatch> for Consumer {
    type Result = bool;

    fn handle(&mut self, msg: FetchedBatch, _: &mut Context<Self>) -> bool {
        if self.feeds.is_empty() {
            return true;
        }
        let current = |r: &Fetched| {
            self.assigned
                .get(&*r.topic)
                .is_some_and(|&since| msg.epoch >= since)
        };
        let fresh: Vec<Arc<Fetched>> = msg
            .records
            .into_iter()
            .filter(current)
            .map(Arc::new)
            .collect();
        for batch in into_batches(fresh) {
            self.accept(&batch);
        }
        self.dispatch();
        if self.excess() < PULL_BELOW {
            let reached: Vec<String> = self
                .positions
                .iter()
                .filter(|(_, p)| p.shared.is_none() && p.reached_window())
                .map(|(t, _)| t.clone())
                .collect();
            for topic in reached {
                self.try_join(&topic);
            }
            return true;
        }
        self.holding.get_or_insert_with(Instant::now);
        false
    }
}

impl Handler<Resolved> for Consumer {
    type Result = ();

    fn handle(&mut self, msg: Resolved, _: &mut Context<Self>) {
        let Some(position) = self.positions.get_mut(&msg.topic) else {
            return;
        };
        if position.generation != msg.generation || position.resolved {
            return;
        }
        position.next = msg.next;
        position.resolved = true;
        self.try_join(&msg.topic);
    }
}

impl Handler<FromReader> for Consumer {
    type Result = ();

    fn handle(&mut self, msg: FromReader, _: &mut Context<Self>) {
        let Some(position) = self.positions.get_mut(&*msg.topic) else {
            return;
        };
        if position.shared.as_ref().is_none_or(|m| m.id != msg.member) {
            // An answer to a join this consumer has since left.
            return;
        }
        match msg.event {
            ReaderEvent::Joined(backlog) => {
                METRICS.feed_joins.inc();
                if std::mem::take(&mut position.rejoin) {
                    METRICS.feed_rejoins.inc();
                }
                let before = self.pending.len();
                for batch in backlog.iter() {
                    accept(position, &mut self.pending, batch);
                }
                self.grace += self.pending.len() - before;
                tracing::debug!(user = %self.user, topic = %msg.topic, backlog = self.pending.len() - before, "Joined the shared reader.");
                self.stop_catch_up(vec![msg.topic.to_string()]);
                self.dispatch();
            }
            ReaderEvent::Behind(from) => {
                position.shared = None;
                position.window_from = from;
                if position.rejoin {
                    tracing::debug!(user = %self.user, topic = %msg.topic, "Behind the shared window; catching up alone.");
                }
                self.catch_up(&msg.topic);
            }
            ReaderEvent::Records(batches) => {
                // One topic per message: its position is looked up once, not per record.
                for batch in batches.iter() {
                    accept(position, &mut self.pending, batch);
                }
                self.dispatch();
                if self.excess() >= FALL_BACK_AT {
                    self.fall_back_if_slow();
                }
            }
        }
    }
}

impl Handler<SetTopics> for Consumer {
    type Result = ();

    fn handle(&mut self, msg: SetTopics, _: &mut Context<Self>) {
        let removed: Vec<String> = self.topics.difference(&msg.0).cloned().collect();
        let added: Vec<String> = msg.0.difference(&self.topics).cloned().collect();
        if removed.is_empty() && added.is_empty() {
            return;
        }
        self.topics = msg.0;
        self.resume_at.retain(|(t, _), _| !removed.contains(t));
        if !self.feeds.is_empty() {
            self.unassign(removed);
            // A topic added while connected starts where the connected feed asked to start.
            self.assign(added, self.start);
        }
        tracing::info!(user = %self.user, topics = ?self.topics, "Subscriptions changed in place.");
        self.broadcast(&self.subscriptions_notice());
        self.dispatch();
    }
}

impl Handler<TopicGone> for Consumer {
    type Result = ();

    fn handle(&mut self, msg: TopicGone, _: &mut Context<Self>) {
        let topic = msg.0;
        self.unassign(vec![topic.clone()]);
        self.in_flight.retain(|r| *r.batch.topic != *topic);
        self.committed.retain(|(t, _), _| *t != topic);
        self.to_commit.retain(|(t, _), _| *t != topic);
        self.resume_at.retain(|(t, _), _| *t != topic);
        self.broadcast(&Frame::notice(
            serde_json::json!({ "type": "topic_deleted", "topic": topic }),
        ));
        if self.topics.remove(&topic) {
            self.broadcast(&self.subscriptions_notice());
        }
        self.advance();
        self.dispatch();
    }
}

impl Handler<Stop> for Consumer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// The feed frame of one record: `value` is the payload's JSON when it parses, else a string;
/// always a string when a `content-type` header says the payload is text.
fn render(message: &BorrowedMessage<'_>) -> String {
    let mut out = String::with_capacity(96 + message.payload_len());
    out.push_str("{\"topic\":");
    push_json_str(&mut out, message.topic());
    let _ = write!(
        out,
        ",\"partition\":{},\"offset\":{},\"key\":",
        message.partition(),
        message.offset()
    );
    match message.key() {
        Some(key) => push_json_str(&mut out, &String::from_utf8_lossy(key)),
        None => out.push_str("null"),
    }
    out.push_str(",\"value\":");
    let text = message.headers().is_some_and(|headers| {
        crate::record::declared_text(headers.iter().map(|h| (h.key, h.value)))
    });
    match message.payload() {
        Some(payload) if text => push_json_str(&mut out, &String::from_utf8_lossy(payload)),
        payload => push_value(&mut out, payload),
    }
    out.push_str(",\"headers\":{");
    if let Some(headers) = message.headers() {
        let all: Vec<_> = headers.iter().collect();
        // Kafka allows a name twice; a JSON object should not have it twice: the last one wins.
        let last = |i: usize| !all[i + 1..].iter().any(|h| h.key == all[i].key);
        let mut first = true;
        let kept = all
            .iter()
            .enumerate()
            .filter(|(i, _)| last(*i))
            .map(|(_, h)| h);
        for header in kept {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            push_json_str(&mut out, header.key);
            out.push(':');
            match header.value {
                Some(value) => push_json_str(&mut out, &String::from_utf8_lossy(value)),
                None => out.push_str("null"),
            }
        }
    }
    out.push_str("},\"timestamp\":");
    match message.timestamp().to_millis() {
        Some(ms) => {
            let _ = write!(out, "{ms}");
        }
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

fn push_json_str(out: &mut String, text: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string()));
}

fn push_value(out: &mut String, payload: Option<&[u8]>) {
    let Some(payload) = payload else {
        out.push_str("null");
        return;
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        let text = String::from_utf8_lossy(payload);
        let text = text.trim();
        if !text.contains(['\n', '\r']) {
            // Valid JSON on one line goes out as it is, sparing a parse and a print.
            out.push_str(text);
            return;
        }
        // Pretty-printed JSON is made compact, so that every frame is one NDJSON line.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
            out.push_str(&value.to_string());
            return;
        }
    }
    push_json_str(out, &String::from_utf8_lossy(payload));
}

/// A topic waiting for its partition count and start offsets.
struct WaitingResolve {
    generation: u64,
    topic: String,
    at: StartAt,
    resume: HashMap<(String, i32), i64>,
}

/// The catch-up reader task: owns the user's rdkafka client, runs the actor's operations in
/// order and feeds it fetched records. Ends when the actor stops.
async fn read(
    client: StreamConsumer,
    mut ops: mpsc::UnboundedReceiver<KafkaOp>,
    actor: Addr<Consumer>,
    done: Option<Guard>,
) {
    let client = Arc::new(client);
    let mut epoch = 0;
    let mut paused = false;
    let mut pulling = true;
    let mut waiting: Vec<WaitingResolve> = Vec::new();
    let mut last_error = String::new();
    let mut retry = tokio::time::interval(ASSIGN_RETRY);
    loop {
        tokio::select! {
            biased;
            op = ops.recv() => {
                let Some(op) = op else { break };
                match op {
                    KafkaOp::Resolve { generation, topics, at, resume } => {
                        waiting.extend(topics.into_iter().map(|topic| WaitingResolve {
                            generation,
                            topic,
                            at,
                            resume: resume.clone(),
                        }));
                        waiting = resolve_waiting(&client, waiting, &actor).await;
                    }
                    KafkaOp::Assign { epoch: e, offsets } => {
                        epoch = e;
                        assign(&client, &offsets, paused);
                    }
                    KafkaOp::Unassign { epoch: e, topics } => {
                        epoch = e;
                        waiting.retain(|w| !topics.contains(&w.topic));
                        unassign(&client, &topics);
                    }
                    KafkaOp::Pause => {
                        paused = true;
                        pause(&client, true);
                    }
                    KafkaOp::Resume => {
                        paused = false;
                        pause(&client, false);
                    }
                    KafkaOp::Pull => pulling = true,
                    KafkaOp::Commit(offsets) => commit(&client, &offsets),
                }
            }
            _ = retry.tick(), if !waiting.is_empty() => {
                waiting = resolve_waiting(&client, std::mem::take(&mut waiting), &actor).await;
            }
            first = client.recv(), if pulling => {
                let mut records = Vec::new();
                match first {
                    Ok(message) => records.push(fetched(&message)),
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            tracing::warn!(error = %text, "Kafka consumer error.");
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
                match actor.send(FetchedBatch { epoch, records }).await {
                    Ok(more) => pulling = more,
                    Err(_) => break,
                }
            }
        }
    }
    // Closing a consumer blocks until librdkafka lets go of it, after the commits in flight.
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
    drop(done);
}

pub(crate) fn fetched(message: &BorrowedMessage<'_>) -> Fetched {
    Fetched {
        topic: message.topic().into(),
        partition: message.partition(),
        offset: message.offset(),
        frame: render(message).into(),
    }
}

/// Finds the exact start offset of every partition of the waiting topics and tells the actor;
/// returns the topics to retry.
async fn resolve_waiting(
    client: &Arc<StreamConsumer>,
    waiting: Vec<WaitingResolve>,
    actor: &Addr<Consumer>,
) -> Vec<WaitingResolve> {
    let mut retry = Vec::new();
    for wanted in waiting {
        let c = client.clone();
        let topic = wanted.topic.clone();
        let at = wanted.at;
        let known: HashMap<i32, i64> = wanted
            .resume
            .iter()
            .filter(|((t, _), _)| *t == wanted.topic)
            .map(|((_, p), o)| (*p, *o))
            .collect();
        let resolved = tokio::task::spawn_blocking(move || start_offsets(&c, &topic, at, known))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match resolved {
            Ok(next) => actor.do_send(Resolved {
                generation: wanted.generation,
                topic: wanted.topic,
                next,
            }),
            Err(e) => {
                tracing::warn!(topic = %wanted.topic, error = %e, "Start offsets not readable yet; will retry.");
                retry.push(wanted);
            }
        }
    }
    retry
}

/// The next offset to read of every partition of `topic`: `known` ones as given, else the
/// group's committed offset (`Stored`), else the beginning or the end as `at` says. Exact
/// numbers, so that the actor can compare them with a shared reader's window. Blocking.
fn start_offsets(
    client: &StreamConsumer,
    topic: &str,
    at: StartAt,
    mut known: HashMap<i32, i64>,
) -> std::result::Result<HashMap<i32, i64>, String> {
    let count = partition_count(client, topic).ok_or("no partition metadata yet")?;
    if matches!(at, StartAt::Stored) {
        let unknown: Vec<i32> = (0..count).filter(|p| !known.contains_key(p)).collect();
        let stored = committed_offsets(client, topic, &unknown).map_err(|e| e.to_string())?;
        known.extend(stored);
    }
    for partition in 0..count {
        if known.contains_key(&partition) {
            continue;
        }
        let (low, high) = client
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| e.to_string())?;
        // Nothing committed: from the beginning, as `auto.offset.reset` says.
        let next = match at {
            StartAt::Stored | StartAt::Beginning => low,
            StartAt::End => high,
        };
        known.insert(partition, next);
    }
    known.retain(|p, _| (0..count).contains(p));
    Ok(known)
}

/// Assigns partitions to the catch-up reader at exact offsets.
fn assign(client: &StreamConsumer, offsets: &[(String, i32, i64)], paused: bool) {
    let mut list = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%topic, partition, error = %e, "Bad start offset.");
        }
    }
    if list.count() == 0 {
        return;
    }
    match client.incremental_assign(&list) {
        Ok(()) => {
            // librdkafka keeps a partition's pause across unassign and assign: set it anew.
            let result = if paused {
                client.pause(&list)
            } else {
                client.resume(&list)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, paused, "Cannot pause or resume new partitions.");
            }
        }
        Err(e) => tracing::warn!(error = %e, "Cannot assign partitions."),
    }
}

/// The user's committed next offsets on `partitions` of `topic` (a partition without a commit is
/// left out). Read here rather than left to librdkafka's assign with `Offset::Stored`: when the
/// offset fetch that assign sends fails (for example `NOT_COORDINATOR` from a group coordinator
/// still loading `__consumer_offsets`, as on a new broker's first group request), librdkafka
/// leaves the partition assigned but never fetches it; an error here is retried with the
/// assignment.
fn committed_offsets(
    client: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> KafkaResult<HashMap<i32, i64>> {
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(topic, partition);
    }
    let committed = client.committed_offsets(list, METADATA_TIMEOUT)?;
    let mut offsets = HashMap::new();
    for elem in committed.elements() {
        elem.error()?;
        if let Offset::Offset(next) = elem.offset() {
            offsets.insert(elem.partition(), next);
        }
    }
    Ok(offsets)
}

fn partition_count(client: &StreamConsumer, topic: &str) -> Option<i32> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if found.error().is_some() || found.partitions().is_empty() {
        return None;
    }
    Some(found.partitions().len() as i32)
}

fn unassign(client: &StreamConsumer, topics: &[String]) {
    let Ok(current) = client.assignment() else {
        return;
    };
    let mut list = TopicPartitionList::new();
    for elem in current.elements() {
        if topics.iter().any(|t| t == elem.topic()) {
            list.add_partition(elem.topic(), elem.partition());
        }
    }
    if list.count() > 0 {
        if let Err(e) = client.incremental_unassign(&list) {
            tracing::warn!(error = %e, "Cannot unassign partitions.");
        }
    }
}

fn pause(client: &StreamConsumer, pause: bool) {
    let Ok(current) = client.assignment() else {
        return;
    };
    if current.count() == 0 {
        return;
    }
    let result = if pause {
        client.pause(&current)
    } else {
        client.resume(&current)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "Cannot pause or resume partitions.");
    }
}

fn commit(client: &StreamConsumer, offsets: &[(String, i32, i64)]) {
    let mut list = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%topic, partition, error = %e, "Bad commit offset.");
        }
    }
    if let Err(e) = client.commit(&list, CommitMode::Async) {
        tracing::warn!(error = %e, "Offset commit failed; the records may be sent again.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(payload: &[u8]) -> serde_json::Value {
        let mut out = String::new();
        push_value(&mut out, Some(payload));
        serde_json::from_str(&out).expect("valid JSON")
    }

    #[test]
    fn value_is_json_when_it_parses_and_a_string_otherwise() {
        assert_eq!(value_of(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(value_of(b" 42 "), serde_json::json!(42));
        assert_eq!(value_of(b"hello"), serde_json::json!("hello"));
        assert_eq!(value_of(b"{\"a\":"), serde_json::json!("{\"a\":"));
        let mut out = String::new();
        push_value(&mut out, Some(b"{\n  \"a\": [1,\n 2]\n}"));
        assert_eq!(out, r#"{"a":[1,2]}"#, "pretty JSON is made one line");
        assert_eq!(value_of(&[0xff, b'x']), serde_json::json!("\u{fffd}x"));
    }

    fn record(offset: i64, value: &str) -> Arc<Fetched> {
        Arc::new(Fetched {
            topic: "t".into(),
            partition: 0,
            offset,
            frame: format!("{{\"offset\":{offset},\"value\":{value:?}}}").into(),
        })
    }

    #[test]
    fn a_batch_frame_holds_the_record_frames_in_order() {
        let batch = RecordBatch::new("t".into(), vec![record(1, "a"), record(2, "b")]);
        let frame: serde_json::Value = serde_json::from_str(batch.text().as_str()).expect("JSON");
        assert_eq!(
            frame,
            serde_json::json!({"type": "records", "records": [
                {"offset": 1, "value": "a"}, {"offset": 2, "value": "b"}
            ]})
        );
    }

    #[test]
    fn a_compact_frame_names_the_topic_once_and_keeps_the_rest_of_each_record() {
        let framed = |offset: i64| {
            Arc::new(Fetched {
                topic: "or\"ders".into(),
                partition: 1,
                offset,
                frame: format!(
                    "{{\"topic\":\"or\\\"ders\",\"partition\":1,\"offset\":{offset},\"value\":{{\"topic\":\"x\"}}}}"
                )
                .into(),
            })
        };
        // A frame not written for this topic goes whole rather than cut wrongly.
        let odd = Arc::new(Fetched {
            topic: "or\"ders".into(),
            partition: 1,
            offset: 9,
            frame: "{\"topic\":\"other\",\"offset\":9}".into(),
        });
        let with = |offset: i64, headers: &str, timestamp: &str| {
            Arc::new(Fetched {
                topic: "or\"ders".into(),
                partition: 1,
                offset,
                frame: format!(
                    "{{\"topic\":\"or\\\"ders\",\"offset\":{offset},\"value\":{{\"headers\":{{}},\"timestamp\":1}},\"headers\":{headers},\"timestamp\":{timestamp}}}"
                )
                .into(),
            })
        };
        let batch = RecordBatch::new(
            "or\"ders".into(),
            vec![
                framed(7),
                framed(8),
                odd,
                with(10, "{}", "1795464822902"),
                with(11, "{}", "null"),
                with(12, "{\"h\":\"v\"}", "5"),
            ],
        );
        let frame: serde_json::Value =
            serde_json::from_str(batch.compact_text().as_str()).expect("JSON");
        let value = serde_json::json!({"headers": {}, "timestamp": 1});
        assert_eq!(
            frame,
            serde_json::json!({"type": "records", "topic": "or\"ders", "records": [
                {"partition": 1, "offset": 7, "value": {"topic": "x"}},
                {"partition": 1, "offset": 8, "value": {"topic": "x"}},
                {"topic": "other", "offset": 9},
                {"offset": 10, "value": value, "timestamp": 1795464822902_u64},
                {"offset": 11, "value": value, "timestamp": null},
                {"offset": 12, "value": value, "headers": {"h": "v"}, "timestamp": 5},
            ]})
        );
        // The `batch` text of the same batch is unchanged by it.
        let full: serde_json::Value = serde_json::from_str(batch.text().as_str()).expect("JSON");
        assert_eq!(full["records"][0]["topic"], "or\"ders");
    }

    #[test]
    fn batches_are_bounded_in_records_and_bytes() {
        let many: Vec<_> = (0..1200).map(|i| record(i, "x")).collect();
        let sizes: Vec<usize> = into_batches(many).iter().map(|b| b.records.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_RECORDS, MAX_BATCH_RECORDS, 176]);
        let big = "y".repeat(MAX_BATCH_BYTES / 3);
        let large: Vec<_> = (0..7).map(|i| record(i, &big)).collect();
        let sizes: Vec<usize> = into_batches(large)
            .iter()
            .map(|b| b.records.len())
            .collect();
        assert_eq!(sizes, [2, 2, 2, 1]);
        let huge = vec![record(0, &"z".repeat(2 * MAX_BATCH_BYTES))];
        assert_eq!(
            into_batches(huge).len(),
            1,
            "a record larger than a batch goes alone"
        );
    }

    #[test]
    fn stall_reason_fits_a_close_frame() {
        let reason = FeedClose::Stalled(Duration::from_secs(86_400)).reason();
        assert!(reason.len() <= 123, "{} bytes", reason.len());
        assert_eq!(FeedClose::Stalled(Duration::ZERO).code(), 1008);
    }
}
