//! The record browser actor: reads an active topic's records straight from Kafka for people
//! looking at them (the console's Messages and topic detail screens), newest first.
//!
//! Reading is never done on the actors' thread: each browse checks the reader's right with the
//! registry, then runs one short-lived rdkafka consumer (no group, nothing committed) on the
//! facade runtime's blocking pool, and is answered from there. The actor itself only counts
//! the reads in flight, so a flood of browses costs at most `MAX_READS_IN_FLIGHT` Kafka clients.
//!
//! A page is made from the end of each partition downwards: every partition is read over the
//! last `limit` offsets below its bound, the records of all partitions are ordered newest first
//! (timestamp, then partition and offset) and the first `limit` are kept. The cursor is each
//! partition's new bound (the lowest offset handed out, or the window's start once all of it
//! was), so the next page starts exactly where this one stopped, whatever was produced since.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::value::RawValue;

use super::access::MayConsume;
use super::consumer::GROUP_PREFIX;
use super::registry::{GetTopic, Registry, TopicStatus};
use super::subscriptions::{ListSubscriptions, Subscriptions};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::identity::{Principal, Role};
use crate::paging::PageOf;

/// Browses running at once; more are refused with 429 rather than queued behind Kafka.
const MAX_READS_IN_FLIGHT: usize = 8;
/// Most bytes of records one browse reads (every partition's window together): a page of 500
/// large records from a dozen partitions would otherwise hold gigabytes.
const MAX_READ_BYTES: usize = 32 * 1024 * 1024;
/// How long one browse may wait for metadata, watermarks and records.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most subscribers whose positions a topic's detail shows (one Kafka offset fetch each).
const MAX_POSITIONS: usize = 50;
/// How long a user's committed offsets may take to read.
const POSITIONS_TIMEOUT: Duration = Duration::from_secs(5);

/// Each partition's exclusive upper bound: the next page holds offsets below it.
pub type Bounds = BTreeMap<i32, i64>;

/// Where a page of records starts (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// The end of each partition.
    Latest,
    /// At or below this offset in each partition read.
    Offset(i64),
    /// The records produced at or before this time (ms since the epoch), found with
    /// `offsets_for_times`.
    Timestamp(i64),
    /// The `next` of an earlier page.
    Cursor(Bounds),
}

/// One page of `topic`'s records, newest first.
#[derive(Message)]
#[rtype(result = "Result<RecordsPage>")]
pub struct Browse {
    pub principal: Principal,
    pub topic: String,
    /// One partition, or every partition when `None`.
    pub partition: Option<i32>,
    pub from: StartFrom,
    pub limit: usize,
}

/// How a key, value or header value is given: JSON as it parsed, text, or base64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Json,
    String,
    Base64,
    /// No bytes at all (a null key, value or header value).
    Null,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BrowsedHeader {
    pub name: String,
    pub value: Option<String>,
    pub encoding: Encoding,
}

/// One record as the browser shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BrowsedRecord {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, as Kafka stores it.
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    pub key_encoding: Encoding,
    pub headers: Vec<BrowsedHeader>,
    /// JSON as Kafka holds it (members in their order), or the text or base64 as a string.
    #[schema(value_type = serde_json::Value)]
    pub value: Box<RawValue>,
    pub value_encoding: Encoding,
    /// Bytes of key, value, header names and header values.
    pub size: usize,
}

#[derive(Debug, Clone)]
pub struct RecordsPage {
    pub records: Vec<BrowsedRecord>,
    /// The bounds of the next page; `None` once every partition is read to its start.
    pub next: Option<Bounds>,
}

/// A topic's partitions as Kafka has them now, and its subscribers' positions.
#[derive(Message)]
#[rtype(result = "Result<TopicPartitions>")]
pub struct DescribePartitions {
    pub principal: Principal,
    pub topic: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The first offset still in the log.
    pub low_watermark: i64,
    /// The offset the next record will get.
    pub high_watermark: i64,
}

/// One subscriber's committed next offsets, and how far behind the high watermarks they are.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PositionView {
    pub user: String,
    /// Next offset per partition; a partition without a commit is left out.
    pub committed: BTreeMap<i32, i64>,
    /// Records not yet committed, summed over partitions (a partition without a commit counts
    /// from its low watermark, where this user would start).
    pub lag: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<PartitionView>,
    /// Positions of the users subscribed to the topic; `None` for a caller who may not list
    /// subscriptions (only admins may).
    pub positions: Option<Vec<PositionView>>,
}

pub struct RecordBrowser {
    kafka: KafkaConfig,
    registry: Addr<Registry>,
    subscriptions: Addr<Subscriptions>,
    /// Where the Kafka reads run: the facade runtime, never the actors' thread.
    tasks: tokio::runtime::Handle,
    in_flight: Arc<AtomicUsize>,
    retry_after_s: u64,
}

impl RecordBrowser {
    pub fn new(
        kafka: KafkaConfig,
        registry: Addr<Registry>,
        subscriptions: Addr<Subscriptions>,
        tasks: tokio::runtime::Handle,
        retry_after_s: u64,
    ) -> RecordBrowser {
        RecordBrowser {
            kafka,
            registry,
            subscriptions,
            tasks,
            in_flight: Arc::default(),
            retry_after_s,
        }
    }

    /// A place among the reads in flight, given back when the read ends.
    fn claim(&self) -> Result<ReadSlot> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = ReadSlot(self.in_flight.clone());
        if taken >= MAX_READS_IN_FLIGHT {
            return Err(Error::TooMany {
                what: "record browses in progress",
                limit: MAX_READS_IN_FLIGHT as u64,
                retry_after_s: self.retry_after_s,
            });
        }
        Ok(slot)
    }
}

struct ReadSlot(Arc<AtomicUsize>);

impl Drop for ReadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Actor for RecordBrowser {
    type Context = Context<Self>;
}

/// Reading needs the consumer role (as a subscription does) or the admin role.
fn may_read(principal: &Principal) -> Result<()> {
    principal.require_any(&[Role::Consumer, Role::Admin])
}

impl Handler<Browse> for RecordBrowser {
    type Result = ResponseFuture<Result<RecordsPage>>;

    fn handle(&mut self, msg: Browse, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        let kafka = self.kafka.clone();
        let tasks = self.tasks.clone();
        let slot = self.claim();
        Box::pin(async move {
            may_read(&msg.principal)?;
            registry
                .send(MayConsume {
                    principal: msg.principal.clone(),
                    topic: msg.topic.clone(),
                })
                .await??;
            let slot = slot?;
            let started = Instant::now();
            let topic = msg.topic.clone();
            let page = tasks
                .spawn_blocking(move || {
                    let _slot = slot;
                    read_page(&kafka, &msg.topic, msg.partition, &msg.from, msg.limit)
                })
                .await
                .map_err(|e| Error::Internal(format!("record browse task: {e}")))??;
            tracing::debug!(%topic, records = page.records.len(), ms = started.elapsed().as_millis() as u64, "Records browsed.");
            Ok(page)
        })
    }
}

impl Handler<DescribePartitions> for RecordBrowser {
    type Result = ResponseFuture<Result<TopicPartitions>>;

    fn handle(&mut self, msg: DescribePartitions, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        let subscriptions = self.subscriptions.clone();
        let kafka = self.kafka.clone();
        let tasks = self.tasks.clone();
        let slot = self.claim();
        Box::pin(async move {
            // The topic's shape is no secret (`GET /topics/{name}` shows it to anyone signed
            // in), but only a live topic has partitions to show.
            let known = registry.send(GetTopic(msg.topic.clone())).await??;
            if known.status != TopicStatus::Active {
                return Err(Error::TopicNotActive {
                    topic: known.name,
                    status: known.status.name().to_string(),
                });
            }
            let users = if msg.principal.has(Role::Admin) {
                let page = subscriptions
                    .send(ListSubscriptions {
                        principal: msg.principal.clone(),
                        topic: Some(msg.topic.clone()),
                        page: PageOf {
                            after: None,
                            limit: MAX_POSITIONS,
                        },
                    })
                    .await??;
                Some(page.items.into_iter().map(|s| s.user).collect::<Vec<_>>())
            } else {
                None
            };
            let slot = slot?;
            tasks
                .spawn_blocking(move || {
                    let _slot = slot;
                    describe(&kafka, &msg.topic, users)
                })
                .await
                .map_err(|e| Error::Internal(format!("partition describe task: {e}")))?
        })
    }
}

fn kafka_error(e: KafkaError) -> Error {
    Error::KafkaRead(e)
}

fn timed_out() -> Error {
    Error::KafkaRead(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
}

/// A consumer that never joins a group nor commits: it only reads where it is told.
fn reader(kafka: &KafkaConfig, group: Option<&str>) -> Result<BaseConsumer> {
    let mut config = crate::kafka::client_config(kafka);
    config
        .set("group.id", group.unwrap_or("kafflow.record-browser"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        // The end of a partition's window is seen as an event, not waited for.
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    config.create().map_err(kafka_error)
}

/// One partition as Kafka's metadata shows it.
struct PartitionMeta {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// The partitions of `topic` (metadata) with their leader, replicas and in-sync replicas.
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<PartitionMeta>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(kafka_error)?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| !t.partitions().is_empty())
        .ok_or_else(|| Error::NotFound(format!("topic {topic} in Kafka's metadata")))?;
    let mut partitions: Vec<_> = found
        .partitions()
        .iter()
        .map(|p| PartitionMeta {
            id: p.id(),
            leader: p.leader(),
            replicas: p.replicas().to_vec(),
            isr: p.isr().to_vec(),
        })
        .collect();
    partitions.sort_by_key(|p| p.id);
    Ok(partitions)
}

fn read_page(
    kafka: &KafkaConfig,
    topic: &str,
    partition: Option<i32>,
    from: &StartFrom,
    limit: usize,
) -> Result<RecordsPage> {
    let consumer = reader(kafka, None)?;
    let count = partitions_of(&consumer, topic)?.len() as i32;
    if let Some(p) = partition {
        if !(0..count).contains(&p) {
            return Err(Error::InvalidQuery(format!(
                "partition {p} does not exist: {topic} has partitions 0 to {}",
                count - 1
            )));
        }
    }
    let read: Vec<i32> = match partition {
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    // (low watermark, bound) of every partition read.
    let mut windows: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for &p in &read {
        let (low, hi) = consumer
            .fetch_watermarks(topic, p, READ_TIMEOUT)
            .map_err(kafka_error)?;
        windows.insert(p, (low, hi));
    }
    match from {
        StartFrom::Latest => {}
        StartFrom::Offset(offset) => {
            for (low, bound) in windows.values_mut() {
                *bound = (*bound).min(offset.saturating_add(1)).max(*low);
            }
        }
        StartFrom::Cursor(bounds) => {
            for (p, (low, bound)) in windows.iter_mut() {
                // A partition the cursor does not name was finished on an earlier page.
                *bound = bounds.get(p).map_or(*low, |b| (*b).clamp(*low, *bound));
            }
        }
        StartFrom::Timestamp(ms) => {
            // The first offset after `ms` bounds the page: what is below it was produced at or
            // before `ms` (log-append order; a producer's own CreateTime may disagree).
            let mut list = TopicPartitionList::new();
            for &p in &read {
                list.add_partition_offset(topic, p, Offset::Offset(ms.saturating_add(1)))
                    .map_err(kafka_error)?;
            }
            let found = consumer
                .offsets_for_times(list, READ_TIMEOUT)
                .map_err(kafka_error)?;
            for (p, (low, bound)) in windows.iter_mut() {
                if let Some(Offset::Offset(o)) = found.find_partition(topic, *p).map(|e| e.offset())
                {
                    *bound = o.clamp(*low, *bound);
                }
                // No record after `ms` (Offset::End): the whole partition is older.
            }
        }
    }
    let span = limit as i64;
    let ranges: Vec<(i32, i64, i64)> = windows
        .iter()
        .filter(|(_, (low, bound))| bound > low)
        .map(|(p, (low, bound))| (*p, (*bound - span).max(*low), *bound))
        .collect();
    let records = fetch_ranges(&consumer, topic, &ranges)?;
    drop(consumer);

    // Each partition newest offset first, then merged by timestamp: a page always takes the
    // top offsets of each partition, so the bound below them is exact even when timestamps
    // are out of offset order.
    let mut by_partition: BTreeMap<i32, Vec<BrowsedRecord>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for list in by_partition.values_mut() {
        list.sort_by_key(|r| r.offset);
    }
    let mut taken = Vec::new();
    while taken.len() < limit {
        let newest = by_partition
            .iter()
            .filter_map(|(p, list)| list.last().map(|r| (r.timestamp, std::cmp::Reverse(*p))))
            .max();
        let Some((_, std::cmp::Reverse(p))) = newest else {
            break;
        };
        if let Some(record) = by_partition.get_mut(&p).and_then(Vec::pop) {
            taken.push(record);
        }
    }
    // Each partition's next bound: below the lowest record handed out, or the window's start
    // once all of it was (gaps of a compacted log included).
    let mut next: Bounds = windows.iter().map(|(p, (_, b))| (*p, *b)).collect();
    for (p, start, _) in &ranges {
        let left = by_partition.get(p).and_then(|list| list.last());
        let lowest_taken = taken
            .iter()
            .filter(|r| r.partition == *p)
            .map(|r| r.offset)
            .min();
        match (left, lowest_taken) {
            (None, _) => next.insert(*p, *start),
            (Some(_), Some(lowest)) => next.insert(*p, lowest),
            (Some(_), None) => None,
        };
    }
    next.retain(|p, bound| windows.get(p).is_some_and(|(low, _)| *bound > *low));
    let next = (!next.is_empty()).then_some(next);
    Ok(RecordsPage {
        records: taken,
        next,
    })
}

/// Reads `[start, end)` of each partition; returns their records in no particular order.
fn fetch_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
) -> Result<Vec<BrowsedRecord>> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    for (p, start, _) in ranges {
        list.add_partition_offset(topic, *p, Offset::Offset(*start))
            .map_err(kafka_error)?;
    }
    consumer.assign(&list).map_err(kafka_error)?;
    let mut open: HashMap<i32, i64> = ranges.iter().map(|(p, _, end)| (*p, *end)).collect();
    let mut out = Vec::new();
    let mut read = 0;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(kafka_error(e)),
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&end) = open.get(&p) else { continue };
                if m.offset() < end {
                    let record = browsed(&m);
                    read += record.size;
                    if read > MAX_READ_BYTES {
                        return Err(Error::TooLarge {
                            what: "bytes of records read for one page; ask for a smaller limit or one partition",
                            limit: MAX_READ_BYTES as u64,
                        });
                    }
                    out.push(record);
                }
                if m.offset() >= end - 1 {
                    open.remove(&p);
                }
            }
        }
    }
    Ok(out)
}

/// Text when the bytes are UTF-8, else base64.
fn text_or_base64(bytes: Option<&[u8]>) -> (Option<String>, Encoding) {
    match bytes {
        None => (None, Encoding::Null),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => (Some(text.to_string()), Encoding::String),
            Err(_) => (Some(STANDARD.encode(b)), Encoding::Base64),
        },
    }
}

/// The value as JSON when it parses (kept as it is), else as text, else as base64. A value
/// whose `content-type` header says text (`declared_text`) is never read as JSON.
fn value_of(payload: Option<&[u8]>, declared_text: bool) -> (Box<RawValue>, Encoding) {
    let json = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "null".to_string());
    let raw =
        |text: String| RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned());
    let Some(bytes) = payload else {
        return (RawValue::NULL.to_owned(), Encoding::Null);
    };
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !declared_text && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            // Outer whitespace and line breaks are not part of the value.
            return (raw(text.trim().to_string()), Encoding::Json);
        }
    }
    match text_or_base64(Some(bytes)) {
        (Some(text), encoding) => (raw(json(&text)), encoding),
        (None, encoding) => (RawValue::NULL.to_owned(), encoding),
    }
}

fn browsed(m: &BorrowedMessage<'_>) -> BrowsedRecord {
    let (key, key_encoding) = text_or_base64(m.key());
    let text = m
        .headers()
        .is_some_and(|all| crate::record::declared_text(all.iter().map(|h| (h.key, h.value))));
    let (value, value_encoding) = value_of(m.payload(), text);
    let mut size = m.key_len() + m.payload_len();
    let mut headers = Vec::new();
    if let Some(all) = m.headers() {
        for h in all.iter() {
            size += h.key.len() + h.value.map_or(0, <[u8]>::len);
            let (value, encoding) = text_or_base64(h.value);
            headers.push(BrowsedHeader {
                name: h.key.to_string(),
                value,
                encoding,
            });
        }
    }
    BrowsedRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key,
        key_encoding,
        headers,
        value,
        value_encoding,
        size,
    }
}

fn describe(
    kafka: &KafkaConfig,
    topic: &str,
    users: Option<Vec<String>>,
) -> Result<TopicPartitions> {
    let consumer = reader(kafka, None)?;
    let mut partitions = Vec::new();
    for meta in partitions_of(&consumer, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, meta.id, READ_TIMEOUT)
            .map_err(kafka_error)?;
        partitions.push(PartitionView {
            partition: meta.id,
            leader: meta.leader,
            replicas: meta.replicas,
            isr: meta.isr,
            low_watermark: low,
            high_watermark: high,
        });
    }
    drop(consumer);
    let positions = users
        .map(|users| {
            users
                .into_iter()
                .map(|user| position_of(kafka, topic, &user, &partitions))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    Ok(TopicPartitions {
        topic: topic.to_string(),
        partitions,
        positions,
    })
}

/// `user`'s committed offsets on `topic`, read from the user's consumer group.
fn position_of(
    kafka: &KafkaConfig,
    topic: &str,
    user: &str,
    partitions: &[PartitionView],
) -> Result<PositionView> {
    let consumer = reader(kafka, Some(&format!("{GROUP_PREFIX}{user}")))?;
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(topic, p.partition);
    }
    let found = consumer
        .committed_offsets(list, POSITIONS_TIMEOUT)
        .map_err(kafka_error)?;
    let mut committed = BTreeMap::new();
    let mut lag = 0;
    for p in partitions {
        let next = match found.find_partition(topic, p.partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => {
                committed.insert(p.partition, o);
                o
            }
            _ => p.low_watermark,
        };
        lag += (p.high_watermark - next.max(p.low_watermark)).max(0);
    }
    Ok(PositionView {
        user: user.to_string(),
        committed,
        lag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_json_as_it_was_text_or_base64() {
        let shown = |payload: Option<&[u8]>| {
            let (raw, encoding) = value_of(payload, false);
            (raw.get().to_string(), encoding)
        };
        assert_eq!(
            shown(Some(b" {\"b\":1,\n\"a\":2} ")),
            ("{\"b\":1,\n\"a\":2}".to_string(), Encoding::Json)
        );
        let (raw, encoding) = value_of(Some(b"1"), true);
        assert_eq!(
            (raw.get(), encoding),
            ("\"1\"", Encoding::String),
            "declared text stays text"
        );
        assert_eq!(
            shown(Some(b"plain words")),
            ("\"plain words\"".to_string(), Encoding::String)
        );
        assert_eq!(
            shown(Some(&[0xff, 0xfe, 0x00])),
            ("\"//4A\"".to_string(), Encoding::Base64)
        );
        assert_eq!(shown(None), ("null".to_string(), Encoding::Null));
    }
}
