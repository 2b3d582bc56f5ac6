//! Kafka client settings and metadata reads shared by the actors that talk to the cluster.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

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

/// True when a broker answers a metadata request. Blocking.
pub fn broker_reachable(admin: &AdminClient<DefaultClientContext>, timeout: Duration) -> bool {
    admin
        .inner()
        .fetch_metadata(None, timeout)
        .map(|m| !m.brokers().is_empty())
        .unwrap_or(false)
}
