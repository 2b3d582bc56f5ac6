//! The provisioner: does the Kafka work an approved request owes, and reports the outcome to
//! the registry. Every job is idempotent, since after a crash it runs again from the log: a
//! topic that already exists with the requested shape counts as provisioned, one that is
//! already gone counts as deleted. Errors that may pass (broker down, timeouts) are retried
//! with backoff until they do; errors that will not (bad config, shape conflict) end the job.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;
use uuid::Uuid;

use super::registry::{Command, Outcome, Registry, RequestKind, TopicRequest};
use crate::config::KafkaConfig;
use crate::events::TopicSpec;
use crate::kafka::{self, TopicShape};

type Admin = Arc<AdminClient<DefaultClientContext>>;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a created topic may take to show leaders for all partitions before we retry.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Do the Kafka work of an approved request (create or delete).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Provision(pub TopicRequest);

/// Whether the last probe reached a broker: `Ok`, or why not (`None` before the first probe).
#[derive(Message)]
#[rtype(result = "Result<(), Option<String>>")]
pub struct BrokerReachable;

#[derive(Message)]
#[rtype(result = "()")]
struct ProbeResult(Result<(), String>);

pub struct Provisioner {
    admin: Admin,
    /// A client of its own for the readiness probe, so that the reason of a failure (a
    /// refused login, say) is the probe's own.
    probe: Arc<kafka::ProbeClient>,
    registry: Addr<Registry>,
    in_flight: HashSet<Uuid>,
    /// The last probe's answer; `None` before the first.
    reachable: Option<Result<(), String>>,
    probing: bool,
}

impl Provisioner {
    pub fn new(kafka: &KafkaConfig, registry: Addr<Registry>) -> KafkaResult<Self> {
        Ok(Provisioner {
            admin: Arc::new(kafka::admin_client(kafka)?),
            probe: Arc::new(kafka::probe_client(kafka)?),
            registry,
            in_flight: HashSet::new(),
            reachable: None,
            probing: false,
        })
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.probing {
            return;
        }
        self.probing = true;
        let probe = self.probe.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let reachable = tokio::task::spawn_blocking(move || {
                kafka::broker_reachable(&probe, METADATA_TIMEOUT)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the probe did not finish: {e}")));
            me.do_send(ProbeResult(reachable));
        });
    }
}

impl Actor for Provisioner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probe(ctx);
        ctx.run_interval(PROBE_INTERVAL, |act, ctx| act.probe(ctx));
    }
}

impl Handler<ProbeResult> for Provisioner {
    type Result = ();

    fn handle(&mut self, msg: ProbeResult, _: &mut Context<Self>) {
        self.probing = false;
        let was = self.reachable.as_ref().map(Result::is_ok);
        match &msg.0 {
            Ok(()) if was != Some(true) => tracing::info!("Kafka broker reachable."),
            Err(error) if was != Some(false) => {
                tracing::warn!(%error, "Kafka broker unreachable; not ready, retrying.")
            }
            _ => {}
        }
        self.reachable = Some(msg.0);
    }
}

impl Handler<BrokerReachable> for Provisioner {
    type Result = Result<(), Option<String>>;

    fn handle(&mut self, _: BrokerReachable, _: &mut Context<Self>) -> Self::Result {
        match &self.reachable {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(Some(error.clone())),
            None => Err(None),
        }
    }
}

impl Handler<Provision> for Provisioner {
    type Result = ();

    fn handle(&mut self, msg: Provision, ctx: &mut Context<Self>) {
        let request = msg.0;
        let id = request.id;
        if !self.in_flight.insert(id) {
            return;
        }
        let admin = self.admin.clone();
        let registry = self.registry.clone();
        let job = async move {
            let topic = request.topic.clone();
            tracing::info!(%topic, request_id = %id, kind = ?request.kind, "Kafka work started.");
            let outcome = match request.kind {
                RequestKind::Create => create(&admin, &request).await,
                RequestKind::Delete => delete(&admin, &request.topic).await,
            };
            tracing::info!(%topic, request_id = %id, ?outcome, "Kafka work done.");
            record(&registry, id, &topic, outcome).await;
        };
        ctx.spawn(job.into_actor(self).map(move |_, act, _| {
            act.in_flight.remove(&id);
        }));
    }
}

/// Records the outcome, retrying while the log refuses it for a passing reason (a full disk):
/// the Kafka work is done and only its event is owed. Stops when the registry says the
/// request no longer waits for it, or is gone (shutdown; replay resumes the work).
async fn record(registry: &Addr<Registry>, id: Uuid, topic: &str, outcome: Outcome) {
    let mut backoff = BACKOFF_START;
    loop {
        let command = Command::RecordOutcome {
            id,
            outcome: outcome.clone(),
        };
        match registry.send(command).await {
            Ok(Ok(_)) => return,
            Ok(Err(e @ (crate::error::Error::StorageFull(_) | crate::error::Error::Store(_)))) => {
                tracing::warn!(%topic, error = %e, retry_in_ms = backoff.as_millis() as u64, "Outcome not recorded yet; will retry.");
            }
            Ok(Err(e)) => {
                tracing::warn!(%topic, error = %e, "Outcome not recorded.");
                return;
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "Registry unavailable; the work resumes at the next start.");
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What one attempt at a Kafka operation came to.
enum Attempt {
    Done(Outcome),
    Retry(String),
}

async fn with_retries<F, Fut>(topic: &str, mut attempt: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut backoff = BACKOFF_START;
    loop {
        match attempt().await {
            Attempt::Done(outcome) => return outcome,
            Attempt::Retry(why) => {
                tracing::warn!(%topic, reason = %why, retry_in_ms = backoff.as_millis() as u64, "Kafka work will be retried.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Why a metadata read gave no answer. Never taken as "the topic is absent".
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the metadata read did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

async fn describe(admin: &Admin, topic: &str) -> Result<Option<TopicShape>, DescribeError> {
    let admin = admin.clone();
    let topic = topic.to_string();
    let read = tokio::task::spawn_blocking(move || {
        kafka::describe_topic(&admin, &topic, METADATA_TIMEOUT)
    });
    Ok(read.await??)
}

/// Codes that will not change by retrying.
fn is_final(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        InvalidTopic
            | InvalidPartitions
            | InvalidReplicationFactor
            | InvalidReplicaAssignment
            | InvalidConfig
            | PolicyViolation
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TopicDeletionDisabled
            | InvalidRequest
            | UnsupportedVersion
    )
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .request_timeout(Some(OPERATION_TIMEOUT))
}

async fn create(admin: &Admin, request: &TopicRequest) -> Outcome {
    let spec = request.spec();
    with_retries(&request.topic, || create_once(admin, &request.topic, &spec)).await
}

async fn create_once(admin: &Admin, topic: &str, spec: &TopicSpec) -> Attempt {
    let mut new_topic = NewTopic::new(
        topic,
        spec.partitions,
        TopicReplication::Fixed(spec.replication_factor),
    );
    for (key, value) in spec.config.iter() {
        new_topic = new_topic.set(key, value);
    }
    let result = admin.create_topics([&new_topic], &options()).await;
    let already_existed = match result.as_deref() {
        Ok([Ok(_)]) => false,
        Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => true,
        Ok([Err((_, code))]) if is_final(*code) => {
            return Attempt::Done(Outcome::ProvisioningFailed {
                error: format!("Kafka refused to create the topic: {code}"),
            })
        }
        Ok([Err((_, code))]) => return Attempt::Retry(code.to_string()),
        Ok(other) => return Attempt::Retry(format!("unexpected reply {other:?}")),
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    settle(admin, topic, spec, already_existed).await
}

/// Waits until Kafka's metadata shows the topic ready, and checks its shape.
async fn settle(admin: &Admin, topic: &str, spec: &TopicSpec, already_existed: bool) -> Attempt {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        match describe(admin, topic).await {
            Ok(Some(shape))
                if shape.partitions != spec.partitions
                    || shape.replication_factor != spec.replication_factor =>
            {
                return Attempt::Done(Outcome::ProvisioningFailed {
                    error: format!(
                        "topic already exists in Kafka with {} partitions and replication factor {}, \
                         but {} and {} were requested",
                        shape.partitions,
                        shape.replication_factor,
                        spec.partitions,
                        spec.replication_factor
                    ),
                });
            }
            Ok(Some(shape)) if shape.ready => {
                return Attempt::Done(Outcome::Provisioned {
                    spec: spec.clone(),
                    already_existed,
                })
            }
            Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                return Attempt::Retry("topic not visible in metadata yet".into())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn delete(admin: &Admin, topic: &str) -> Outcome {
    with_retries(topic, || delete_once(admin, topic)).await
}

async fn delete_once(admin: &Admin, topic: &str) -> Attempt {
    let result = admin.delete_topics(&[topic], &options()).await;
    let already_absent = match result.as_deref() {
        Ok([Ok(_)]) => false,
        Ok([Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))]) => true,
        Ok([Err((_, code))]) if is_final(*code) => {
            return Attempt::Done(Outcome::DeletionFailed {
                error: format!("Kafka refused to delete the topic: {code}"),
            })
        }
        Ok([Err((_, code))]) => return Attempt::Retry(code.to_string()),
        Ok(other) => return Attempt::Retry(format!("unexpected reply {other:?}")),
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    // Deletion is asynchronous in Kafka; report it once metadata no longer shows the topic.
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        match describe(admin, topic).await {
            Ok(None) => return Attempt::Done(Outcome::Deleted { already_absent }),
            _ if tokio::time::Instant::now() >= deadline => {
                return Attempt::Retry("topic still visible in metadata".into())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
