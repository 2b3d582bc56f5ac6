//! Kafka client settings and metadata reads shared by the actors that talk to the cluster.

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::oneshot;

use crate::config::{KafkaConfig, PublisherConfig};
use crate::record::Record;

/// The client config every KafFlow client starts from: the bootstrap servers and the
/// user's pass-through properties (security and the like).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

pub fn admin_client(kafka: &KafkaConfig) -> KafkaResult<AdminClient<DefaultClientContext>> {
    let mut config = client_config(kafka);
    // A metadata lookup must never create the topic it asks about.
    config.set("allow.auto.create.topics", "false");
    config.create()
}

/// A topic as Kafka's metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicShape {
    pub partitions: i32,
    pub replication_factor: i32,
    /// Every partition has a leader: the topic can take records.
    pub ready: bool,
}

/// Looks a topic up in the cluster's metadata. `Ok(None)` when Kafka does not have it.
/// Blocking: call from a blocking task.
pub fn describe_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Option<TopicShape>> {
    let metadata = admin.inner().fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(err) = found.error() {
        if RDKafkaErrorCode::from(err) == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(None);
        }
    }
    let partitions = found.partitions();
    if partitions.is_empty() {
        return Ok(None);
    }
    Ok(Some(TopicShape {
        partitions: partitions.len() as i32,
        replication_factor: partitions
            .iter()
            .map(|p| p.replicas().len() as i32)
            .max()
            .unwrap_or(0),
        ready: partitions
            .iter()
            .all(|p| p.leader() >= 0 && p.error().is_none()),
    }))
}

/// The context of the readiness probe's client: it keeps the last failure librdkafka reported
/// for a broker connection (a refused SASL login, a certificate that is not trusted, a refused
/// connection), which a failed metadata request does not name.
#[derive(Debug, Default)]
pub struct ProbeContext {
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" {
            *lock(&self.last_error) = Some(log_message.to_string());
        }
        DefaultClientContext.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "All brokers down" follows every other failure and says less than it.
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            *lock(&self.last_error) = Some(reason.to_string());
        }
        DefaultClientContext.error(error, reason);
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// The client `broker_reachable` probes with. A producer that never sends: unlike an admin
/// client, polling it hands librdkafka's logs and errors to its context.
pub type ProbeClient = BaseProducer<ProbeContext>;

pub fn probe_client(kafka: &KafkaConfig) -> KafkaResult<ProbeClient> {
    let mut config = client_config(kafka);
    config.set("allow.auto.create.topics", "false");
    config.create_with_context(ProbeContext::default())
}

/// `Ok` when a broker answers a metadata request, else why not (a refused SASL login, a
/// certificate that is not trusted, a timeout, ...). Blocking.
pub fn broker_reachable(probe: &ProbeClient, timeout: Duration) -> Result<(), String> {
    let fetched = probe.client().fetch_metadata(None, timeout);
    // Hand what librdkafka logged meanwhile to the context.
    probe.poll(Duration::ZERO);
    let last_error = &probe.context().last_error;
    match fetched {
        Ok(m) if !m.brokers().is_empty() => {
            lock(last_error).take();
            Ok(())
        }
        Ok(_) => Err("the cluster's metadata names no broker".to_string()),
        // The last failure stays until a probe succeeds: librdkafka does not repeat it on
        // every failed attempt.
        Err(e) => Err(match lock(last_error).as_deref() {
            Some(reason) => format!("{e}: {reason}"),
            None => e.to_string(),
        }),
    }
}

/// The settings of KafFlow's shared producer: idempotent, `acks=all`, never creating topics,
/// with the `[publisher]` codec and linger. The ingest benchmark's raw-rdkafka baseline uses
/// the same.
pub fn publisher_config(kafka: &KafkaConfig, publisher: &PublisherConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("allow.auto.create.topics", "false")
        .set(
            "message.timeout.ms",
            publisher.delivery_timeout_ms.to_string(),
        )
        .set("compression.type", publisher.compression.name())
        .set("linger.ms", publisher.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    // The user's properties win over ours.
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// `publisher_config` with the default codec and linger and the given delivery timeout.
pub fn producer_config(kafka: &KafkaConfig, delivery_timeout_ms: u64) -> ClientConfig {
    publisher_config(
        kafka,
        &PublisherConfig {
            delivery_timeout_ms,
            ..PublisherConfig::default()
        },
    )
}

/// A record of a batch that Kafka did not acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// Its place in the batch.
    pub index: usize,
    /// Why no retry can deliver it (its partition does not exist, it is too large); `None`
    /// when a retry may (broker down, timeout).
    pub refused: Option<String>,
}

/// Delivery reports of one group of records sent together.
struct Batch {
    remaining: AtomicUsize,
    failed: Mutex<Vec<Undelivered>>,
    done: Mutex<Option<oneshot::Sender<Vec<Undelivered>>>>,
}

impl Batch {
    fn finish(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            let failed = std::mem::take(&mut *lock(&self.failed));
            if let Some(done) = lock(&self.done).take() {
                let _ = done.send(failed);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which record of which batch a delivery report is about.
pub struct Ack {
    batch: Arc<Batch>,
    index: usize,
}

pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        if let Err((e, message)) = result {
            let refused = refusal(e, message.topic(), message.partition());
            lock(&ack.batch.failed).push(Undelivered {
                index: ack.index,
                refused,
            });
        }
        ack.batch.finish(1);
    }
}

/// A producer that reports per batch: which records Kafka did not take.
///
/// Records without headers or a timestamp of their own (every record of the JSON paths but
/// those marked as text) are enqueued with one `rd_kafka_produce_batch` call per run of them,
/// through a topic handle kept per topic: one topic lookup, one lock and one clock reading per
/// run instead of per record, as `rd_kafka_producev` by name costs. The others go one call
/// each. librdkafka copies each value into the allocation of its own message
/// (`RD_KAFKA_MSG_F_COPY`: one `malloc` per record either way), and the caller keeps the
/// records, which it needs to hold those Kafka does not acknowledge.
pub struct BatchProducer {
    producer: ThreadedProducer<AckContext>,
    /// librdkafka's handle of each topic sent to, kept until the producer is dropped.
    topics: Mutex<HashMap<String, TopicHandle>>,
}

/// A topic handle of the producer's librdkafka client (`rd_kafka_topic_new`), holding one
/// reference that `BatchProducer`'s drop gives back.
struct TopicHandle(*mut rdsys::rd_kafka_topic_t);

// SAFETY: librdkafka's topic handles may be used from any thread (its topic state has its own
// lock); the pointer is only read, and freed once, in `BatchProducer`'s drop.
unsafe impl Send for TopicHandle {}

/// What became of a batch handed to `BatchProducer::send`.
pub struct Sent {
    /// Records `0..enqueued` went to librdkafka, but for those it refused at once, which are
    /// reported through `failed` like any record Kafka did not take; the rest did not go
    /// (queue full, or another error that a retry may cure).
    pub enqueued: usize,
    /// Resolves with the enqueued records that Kafka did not acknowledge, and those librdkafka
    /// refused for good as it enqueued them (`refused` says why), in no set order.
    pub failed: oneshot::Receiver<Vec<Undelivered>>,
}

/// Why no retry can get a record into Kafka, or `None` when one may. Only what stays true
/// counts: a record larger than the broker takes, an argument librdkafka refuses, and a
/// partition the topic does not have (librdkafka says so when it enqueues the record if it
/// knows the topic, else in the delivery report once it has learnt it).
fn refusal(e: &KafkaError, topic: &str, partition: i32) -> Option<String> {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition) => Some(format!(
            "partition {partition} does not exist in topic {topic} ({e})"
        )),
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidArgument,
        ) => Some(e.to_string()),
        _ => None,
    }
}

/// How librdkafka took one record.
enum Enqueued {
    Yes,
    /// Never, whatever the retry: the reason.
    Refused(String),
    /// Not now (queue full, a fatal producer state, ...).
    NotNow,
}

/// librdkafka's `RD_KAFKA_PARTITION_UA`: the partitioner chooses (a C macro, not in the
/// bindings).
const PARTITION_UA: i32 = -1;

/// Records past this many go to librdkafka in more than one call (its count is a C `int`).
const MAX_PER_CALL: usize = 100_000;

/// Whether `rd_kafka_produce_batch` can carry the record: it takes no headers and no
/// timestamp (it stamps every record of a call with one clock reading).
fn batchable(record: &Record) -> bool {
    record.headers.is_empty() && record.timestamp.is_none()
}

impl BatchProducer {
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        Ok(BatchProducer {
            producer: config.create_with_context(AckContext)?,
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Enqueues `records` for `topic` in order without blocking. Stops at the first record
    /// that librdkafka does not take now but might later (the queue is full): nothing after it
    /// is enqueued, so a retry keeps their order. A record it refuses for good is passed over
    /// (it never reaches Kafka, so the order of those that do is kept) and reported in
    /// `failed`.
    pub fn send(&self, topic: &str, records: &[Record]) -> Sent {
        let (done, failed) = oneshot::channel();
        let batch = Arc::new(Batch {
            // One extra count, released below, so the batch cannot finish while enqueuing.
            remaining: AtomicUsize::new(records.len() + 1),
            failed: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        });
        let handle = self.topic_handle(topic);
        let mut outcomes: Vec<Enqueued> = Vec::with_capacity(records.len());
        while outcomes.len() < records.len() {
            let next = outcomes.len();
            let run = match handle {
                Some(_) => records[next..]
                    .iter()
                    .take(MAX_PER_CALL)
                    .take_while(|r| batchable(r))
                    .count(),
                None => 0,
            };
            let before = outcomes.len();
            match handle {
                Some(rkt) if run > 0 => self.enqueue_run(
                    rkt,
                    topic,
                    &records[next..next + run],
                    next,
                    &batch,
                    &mut outcomes,
                ),
                _ => outcomes.push(self.enqueue_one(topic, &records[next], next, &batch)),
            }
            // A record not taken now ends the call: nothing after it may pass it.
            if outcomes[before..]
                .iter()
                .any(|o| matches!(o, Enqueued::NotNow))
            {
                break;
            }
        }
        // Everything up to the last record librdkafka took or refused counts as handed over;
        // a record before that which it did not take now (librdkafka ends a call at a full
        // queue, so only an error of that one record can do this) is reported like a failed
        // delivery, so that it is retried from the spool.
        let enqueued = outcomes
            .iter()
            .rposition(|o| !matches!(o, Enqueued::NotNow))
            .map_or(0, |last| last + 1);
        let mut settled = 0;
        {
            let mut failed = lock(&batch.failed);
            for (index, outcome) in outcomes.into_iter().enumerate().take(enqueued) {
                let refused = match outcome {
                    Enqueued::Yes => continue,
                    Enqueued::Refused(reason) => Some(reason),
                    Enqueued::NotNow => {
                        tracing::warn!(%topic, index, "librdkafka skipped a record of a batch and took later ones; it is retried.");
                        None
                    }
                };
                failed.push(Undelivered { index, refused });
                settled += 1;
            }
        }
        batch.finish(records.len() - enqueued + settled + 1);
        Sent { enqueued, failed }
    }

    /// The kept handle of `topic`, made on first use; `None` if librdkafka has none for that
    /// name (the per-record path then gives the reason).
    fn topic_handle(&self, topic: &str) -> Option<*mut rdsys::rd_kafka_topic_t> {
        let mut topics = lock(&self.topics);
        if let Some(handle) = topics.get(topic) {
            return Some(handle.0);
        }
        let name = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `self.producer` lives; `name` is a valid C
        // string for the call; a null `conf` takes the producer's default topic config.
        let rkt = unsafe {
            rdsys::rd_kafka_topic_new(
                self.producer.client().native_ptr(),
                name.as_ptr(),
                ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            return None;
        }
        topics.insert(topic.to_string(), TopicHandle(rkt));
        Some(rkt)
    }

    /// Enqueues a run of batchable records with one librdkafka call, pushing an outcome per
    /// record. `first` is the index of `run[0]` in the caller's batch.
    fn enqueue_run(
        &self,
        rkt: *mut rdsys::rd_kafka_topic_t,
        topic: &str,
        run: &[Record],
        first: usize,
        batch: &Arc<Batch>,
        outcomes: &mut Vec<Enqueued>,
    ) {
        let bytes = |b: &Option<Vec<u8>>| match b {
            // librdkafka only reads what it copies (`RD_KAFKA_MSG_F_COPY`); a null pointer is
            // Kafka's null, not an empty value.
            Some(b) => (b.as_ptr() as *mut c_void, b.len()),
            None => (ptr::null_mut(), 0),
        };
        let mut messages: Vec<rdsys::rd_kafka_message_t> = run
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let (payload, len) = bytes(&record.value);
                let (key, key_len) = bytes(&record.key);
                let ack = Box::new(Ack {
                    batch: batch.clone(),
                    index: first + i,
                });
                rdsys::rd_kafka_message_t {
                    err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                    rkt: ptr::null_mut(),
                    partition: record.partition.unwrap_or(PARTITION_UA),
                    payload,
                    len,
                    key,
                    key_len,
                    offset: 0,
                    _private: Box::into_raw(ack) as *mut c_void,
                }
            })
            .collect();
        // SAFETY: `rkt` is a live handle of this producer's client (kept in `self.topics`
        // until drop); `messages` is `run.len()` initialised entries (fewer than
        // `MAX_PER_CALL`, so the count fits an int) whose payload and key point into `run`,
        // alive and unchanged for the call, and librdkafka copies them
        // (`RD_KAFKA_MSG_F_COPY`). `RD_KAFKA_MSG_F_PARTITION` makes it read each entry's
        // partition, `RD_KAFKA_PARTITION_UA` leaving that record to the partitioner.
        unsafe {
            rdsys::rd_kafka_produce_batch(
                rkt,
                PARTITION_UA,
                (rdsys::RD_KAFKA_MSG_F_COPY | rdsys::RD_KAFKA_MSG_F_PARTITION) as c_int,
                messages.as_mut_ptr(),
                messages.len() as c_int,
            );
        }
        for (message, record) in messages.iter().zip(run) {
            if message.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                // librdkafka owns the `Ack` now and hands it to `AckContext::delivery`.
                outcomes.push(Enqueued::Yes);
                continue;
            }
            // SAFETY: a message librdkafka did not enqueue leaves `_private` to the caller: it
            // is the `Box<Ack>` made above, not freed anywhere else, reclaimed once here.
            drop(unsafe { Box::from_raw(message._private as *mut Ack) });
            let e = KafkaError::MessageProduction(RDKafkaErrorCode::from(message.err));
            outcomes.push(match refusal(&e, topic, record.partition.unwrap_or(-1)) {
                Some(reason) => Enqueued::Refused(reason),
                None => Enqueued::NotNow,
            });
        }
    }

    /// Enqueues one record of any kind (headers, a timestamp) with `rd_kafka_producev`.
    fn enqueue_one(
        &self,
        topic: &str,
        record: &Record,
        index: usize,
        batch: &Arc<Batch>,
    ) -> Enqueued {
        let ack = Box::new(Ack {
            batch: batch.clone(),
            index,
        });
        // No payload is Kafka's null value (a tombstone), not an empty one.
        let mut base = BaseRecord::<[u8], [u8], Box<Ack>>::with_opaque_to(topic, ack);
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            base = base.timestamp(timestamp);
        }
        if !record.headers.is_empty() {
            let headers = record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    })
                });
            base = base.headers(headers);
        }
        match self.producer.send(base) {
            Ok(()) => Enqueued::Yes,
            // Only what no retry can change counts as refused; anything else (queue full,
            // unknown topic for now, a fatal producer state) is retried.
            Err((e, _)) => match refusal(&e, topic, record.partition.unwrap_or(-1)) {
                Some(reason) => Enqueued::Refused(reason),
                None => Enqueued::NotNow,
            },
        }
    }
}

impl Drop for BatchProducer {
    fn drop(&mut self) {
        for (_, handle) in lock(&self.topics).drain() {
            // SAFETY: each handle holds one reference from `rd_kafka_topic_new` on the client
            // that `self.producer` still owns here (fields drop after this); it is given back
            // once. Records in flight hold references of their own.
            unsafe { rdsys::rd_kafka_topic_destroy(handle.0) };
        }
    }
}

/// Every non-internal topic in the cluster with its partition count. Blocking.
pub fn list_topics(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> KafkaResult<std::collections::BTreeMap<String, i32>> {
    let metadata = admin.inner().fetch_metadata(None, timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__") && t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer with no broker to reach: what it enqueues stays queued until
    /// `message.timeout.ms`, then is reported undelivered.
    fn unreachable(settings: &[(&str, &str)]) -> BatchProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "300");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        BatchProducer::new(&config).expect("producer")
    }

    fn plain(n: usize, bytes: usize) -> Record {
        Record {
            key: Some(format!("k{n}").into_bytes()),
            value: Some(vec![b'v'; bytes]),
            ..Record::default()
        }
    }

    /// The reports of a batch, sorted by index; fails if they never all come.
    fn reports(sent: Sent) -> Vec<Undelivered> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let mut failed = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), sent.failed).await })
            .expect("every record reported in time")
            .expect("reports");
        failed.sort_by_key(|u| u.index);
        failed
    }

    #[test]
    fn a_full_queue_ends_the_batch_and_every_enqueued_record_is_reported_once() {
        let producer = unreachable(&[("queue.buffering.max.messages", "10")]);
        let records: Vec<Record> = (0..25).map(|n| plain(n, 10)).collect();
        let sent = producer.send("t", &records);
        assert_eq!(
            sent.enqueued, 10,
            "nothing after the first record refused for now"
        );
        let failed = reports(sent);
        // Each enqueued record is reported once (a second report would have resolved the
        // batch early, a missing one never), as a failure a retry may cure.
        assert_eq!(
            failed,
            (0..10)
                .map(|index| Undelivered {
                    index,
                    refused: None
                })
                .collect::<Vec<_>>()
        );
        // The handle kept for the topic serves the next batch as well.
        let again = producer.send("t", &records[..3]);
        assert!(again.enqueued <= 3);
        drop(reports(again));
    }

    #[test]
    fn a_record_refused_for_good_is_passed_over_and_reported_with_its_reason() {
        let producer = unreachable(&[("message.max.bytes", "1000")]);
        let mut records: Vec<Record> = (0..6).map(|n| plain(n, 10)).collect();
        records[2] = plain(2, 5000);
        // Headers take the per-record path; the batch goes on around it.
        records[4].headers = vec![("h".into(), Some(b"x".to_vec()))];
        records[5] = plain(5, 5000);
        records[5].timestamp = Some(1);
        let sent = producer.send("t", &records);
        assert_eq!(
            sent.enqueued, 6,
            "a refusal for good does not stop the batch"
        );
        let failed = reports(sent);
        let indices: Vec<usize> = failed.iter().map(|u| u.index).collect();
        assert_eq!(indices, vec![0, 1, 2, 3, 4, 5], "each record reported once");
        for u in &failed {
            match u.index {
                2 | 5 => assert!(
                    u.refused
                        .as_deref()
                        .is_some_and(|r| r.contains("too large")),
                    "{u:?}"
                ),
                _ => assert_eq!(u.refused, None, "{u:?}"),
            }
        }
    }

    #[test]
    fn an_empty_batch_resolves_at_once() {
        let producer = unreachable(&[]);
        let sent = producer.send("t", &[]);
        assert_eq!(sent.enqueued, 0);
        assert!(reports(sent).is_empty());
    }
}
