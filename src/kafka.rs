//! Kafka client settings and metadata reads shared by the actors that talk to the cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::AdminClient;
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
pub struct BatchProducer {
    producer: ThreadedProducer<AckContext>,
}

/// What became of a batch handed to `BatchProducer::send`.
pub struct Sent {
    /// Records `0..enqueued` went to librdkafka; the rest did not (queue full, or `refused`).
    pub enqueued: usize,
    /// Record `enqueued` was refused by librdkafka for good (e.g. larger than
    /// `message.max.bytes`, or sent to a partition the topic does not have), with the reason;
    /// `None` when the queue was merely full.
    pub refused: Option<String>,
    /// Resolves with the enqueued records that Kafka did not acknowledge, in no set order.
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

impl BatchProducer {
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        Ok(BatchProducer {
            producer: config.create_with_context(AckContext)?,
        })
    }

    /// Enqueues `records` for `topic` in order without blocking. Stops at the first record
    /// that does not fit in the queue.
    pub fn send(&self, topic: &str, records: &[Record]) -> Sent {
        let (done, failed) = oneshot::channel();
        let batch = Arc::new(Batch {
            // One extra count, released below, so the batch cannot finish while enqueuing.
            remaining: AtomicUsize::new(records.len() + 1),
            failed: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        });
        let mut enqueued = 0;
        let mut refused = None;
        for (index, record) in records.iter().enumerate() {
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
                Ok(()) => enqueued += 1,
                Err((e, _)) => {
                    // Only what no retry can change counts as refused; anything else (queue
                    // full, unknown topic for now, a fatal producer state) is retried.
                    let partition = record.partition.unwrap_or(-1);
                    refused = refusal(&e, topic, partition);
                    break;
                }
            }
        }
        batch.finish(records.len() - enqueued + 1);
        Sent {
            enqueued,
            refused,
            failed,
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
