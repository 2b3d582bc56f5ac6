//! Metadata, FindCoordinator and DescribeCluster: every broker address in an answer becomes
//! the gateway's port for that broker, and Metadata shows only what the principal may see.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::{Connection, Fault, Reply};
use super::error::{kafka_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED, UNKNOWN_TOPIC_OR_PARTITION};
use super::Shared;
use crate::actors::approval::RequestTopic;
use crate::actors::registry::{VisibleStatus, VisibleTopic};
use crate::error::Error;
use crate::identity::{Principal, Role};

/// What the principal gets for one topic name.
enum Shown {
    /// Live in Kafka: the brokers' entry.
    Active,
    /// Waiting for approval or being created: led by the gateway.
    Pending(i32),
    Refused(i16, String),
}

pub(crate) async fn metadata(
    connection: &mut Connection,
    principal: &Principal,
    request: super::wire::Request,
) -> Result<Reply, Fault> {
    let mut asked: MetadataRequest = request.decode("Metadata")?;
    let version = request.version();
    let names: Option<Vec<String>> = asked.topics.as_ref().map(|topics| {
        topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect()
    });
    // Metadata v0 asks for every topic with an empty list.
    let names = match names {
        Some(list) if list.is_empty() && version == 0 => None,
        other => other,
    };
    let rules = &connection.shared.rules;
    let mut shown: BTreeMap<String, Shown> = BTreeMap::new();
    match names {
        None => {
            for topic in rules.visible(principal) {
                shown.insert(topic.name.clone(), shown_of(&topic));
            }
        }
        Some(list) => {
            for name in list {
                let entry = match rules.visible_topic(principal, &name) {
                    Some(topic) => shown_of(&topic),
                    None => why_not(connection, principal, &name).await,
                };
                shown.insert(name, entry);
            }
        }
    }
    let active: Vec<String> = shown
        .iter()
        .filter(|(_, s)| matches!(s, Shown::Active))
        .map(|(name, _)| name.clone())
        .collect();
    // The brokers are asked only about what may be shown, and never to create anything.
    asked.topics = Some(
        active
            .iter()
            .map(|name| {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(TopicName(StrBytes::from_string(name.clone())));
                t
            })
            .collect(),
    );
    // The field exists from v4; before it, only the topics asked for are asked about.
    if version >= 4 {
        asked.allow_auto_topic_creation = false;
    }
    let payload = request.with_body(&asked)?;
    let answer = connection
        .forward_payload(&payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no Metadata answer".into()))?;
    let shared = Arc::clone(&connection.shared);
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<MetadataResponse>(bytes)?;
        rewrite_brokers(&shared, &mut response);
        let leader = response
            .brokers
            .iter()
            .map(|b| b.node_id.0)
            .min()
            .unwrap_or(-1);
        let wanted: HashSet<&str> = active.iter().map(String::as_str).collect();
        let mut topics: Vec<MetadataResponseTopic> = response
            .topics
            .into_iter()
            .filter(|t| {
                t.name
                    .as_ref()
                    .is_some_and(|n| wanted.contains(n.0.as_str()))
            })
            .collect();
        for (name, entry) in shown {
            match entry {
                Shown::Active => {}
                Shown::Pending(partitions) => topics.push(pending_topic(&name, partitions, leader)),
                Shown::Refused(code, _why) => {
                    let mut t = MetadataResponseTopic::default();
                    t.name = Some(TopicName(StrBytes::from_string(name)));
                    t.error_code = code;
                    topics.push(t);
                }
            }
        }
        response.topics = topics;
        Ok(request.encode_response(&header, &response)?)
    })))
}

fn shown_of(topic: &VisibleTopic) -> Shown {
    match topic.status {
        VisibleStatus::Active => Shown::Active,
        VisibleStatus::Pending => Shown::Pending(topic.partitions),
    }
}

/// A topic the principal may not see: unknown, or known and closed or not theirs. With
/// `request_unknown_topics`, a producer's question about an unknown topic files a request.
async fn why_not(connection: &Connection, principal: &Principal, name: &str) -> Shown {
    let rules = &connection.shared.rules;
    let refusal = match rules.may_produce(principal, name) {
        Err(e) => e,
        // Visible to nobody but writable: not yet settled; the client asks again.
        Ok(_) => return Shown::Refused(UNKNOWN_TOPIC_OR_PARTITION, String::new()),
    };
    let unknown = matches!(refusal, Error::UnknownTopic(_));
    if unknown && connection.shared.config.request_unknown_topics && principal.has(Role::Producer) {
        let filed = rules
            .request_topic(RequestTopic {
                principal: principal.clone(),
                topic: name.to_string(),
                partitions: None,
                replication_factor: None,
                config: Default::default(),
                reason: Some("asked for by a Kafka client's Metadata request".into()),
                visibility: None,
                validate_only: false,
            })
            .await;
        return match filed {
            Ok(request) => {
                tracing::info!(topic = %name, request_id = %request.id, principal = %principal.name, "Topic requested through the gateway's Metadata.");
                Shown::Pending(request.partitions)
            }
            Err(e) => Shown::Refused(kafka_code(&e), e.to_string()),
        };
    }
    Shown::Refused(kafka_code(&refusal), refusal.to_string())
}

fn pending_topic(name: &str, partitions: i32, leader: i32) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default();
    topic.name = Some(TopicName(StrBytes::from_string(name.to_string())));
    topic.partitions = (0..partitions.max(1))
        .map(|index| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = index;
            p.leader_id = BrokerId(leader);
            p.leader_epoch = 0;
            p.replica_nodes = vec![BrokerId(leader)];
            p.isr_nodes = vec![BrokerId(leader)];
            p
        })
        .collect();
    topic
}

fn rewrite_brokers(shared: &Arc<Shared>, response: &mut MetadataResponse) {
    for broker in &mut response.brokers {
        let port = shared.broker_port(broker.node_id.0, broker.host.as_str(), broker.port);
        broker.host = StrBytes::from_string(shared.advertised_host.clone());
        broker.port = i32::from(port);
    }
}

pub(crate) async fn find_coordinator(
    connection: &mut Connection,
    principal: &Principal,
    request: super::wire::Request,
) -> Result<Reply, Fault> {
    let mut asked: FindCoordinatorRequest = request.decode("FindCoordinator")?;
    let rules = &connection.shared.rules;
    let check = |key: &str| -> Result<(), (i16, String)> {
        match asked.key_type {
            0 => rules
                .may_use_group(principal, key)
                .map_err(|e| (kafka_code(&e), e.to_string())),
            _ => Err((
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                "transactions are not offered by the KafFlow gateway".to_string(),
            )),
        }
    };
    // Up to v3 one key; from v4 a list.
    let mut refused: Vec<Coordinator> = Vec::new();
    if request.version() < 4 {
        if let Err((code, why)) = check(asked.key.as_str()) {
            let mut body = FindCoordinatorResponse::default();
            body.error_code = code;
            body.error_message = Some(StrBytes::from_string(why));
            body.node_id = BrokerId(-1);
            body.port = -1;
            return Ok(Reply::Now(request.respond(&body)?));
        }
    } else {
        let mut allowed = Vec::new();
        for key in std::mem::take(&mut asked.coordinator_keys) {
            match check(key.as_str()) {
                Ok(()) => allowed.push(key),
                Err((code, why)) => {
                    let mut c = Coordinator::default();
                    c.key = key;
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = code;
                    c.error_message = Some(StrBytes::from_string(why));
                    refused.push(c);
                }
            }
        }
        if allowed.is_empty() {
            let mut body = FindCoordinatorResponse::default();
            body.coordinators = refused;
            return Ok(Reply::Now(request.respond(&body)?));
        }
        asked.coordinator_keys = allowed;
    }
    let payload = request.with_body(&asked)?;
    let answer = connection
        .forward_payload(&payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no FindCoordinator answer".into()))?;
    let shared = Arc::clone(&connection.shared);
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<FindCoordinatorResponse>(bytes)?;
        // Up to v3 one coordinator at the top; from v4 a list (the top-level fields unset).
        if request.version() < 4 && response.error_code == 0 && response.node_id.0 >= 0 {
            let port =
                shared.broker_port(response.node_id.0, response.host.as_str(), response.port);
            response.host = StrBytes::from_string(shared.advertised_host.clone());
            response.port = i32::from(port);
        }
        for c in &mut response.coordinators {
            if c.error_code == 0 && c.node_id.0 >= 0 {
                let port = shared.broker_port(c.node_id.0, c.host.as_str(), c.port);
                c.host = StrBytes::from_string(shared.advertised_host.clone());
                c.port = i32::from(port);
            }
        }
        response.coordinators.extend(refused);
        Ok(request.encode_response(&header, &response)?)
    })))
}

pub(crate) async fn describe_cluster(
    connection: &mut Connection,
    request: super::wire::Request,
) -> Result<Reply, Fault> {
    let answer = connection
        .forward_payload(&request.payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no DescribeCluster answer".into()))?;
    let shared = Arc::clone(&connection.shared);
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<DescribeClusterResponse>(bytes)?;
        for broker in &mut response.brokers {
            let port = shared.broker_port(broker.broker_id.0, broker.host.as_str(), broker.port);
            broker.host = StrBytes::from_string(shared.advertised_host.clone());
            broker.port = i32::from(port);
        }
        Ok(request.encode_response(&header, &response)?)
    })))
}
