//! Admin requests become governance: CreateTopics files a topic request and DeleteTopics a
//! deletion request, for the SASL principal, exactly as the HTTP routes do; the answer says
//! that the request waits for approval. Other admin writes are refused with a message saying
//! where to ask. DescribeConfigs is forwarded for what the principal may see.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreateAclsRequest, CreateAclsResponse,
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeAclsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::{Connection, Fault, Reply};
use super::error::{
    kafka_code, CLUSTER_AUTHORIZATION_FAILED, INVALID_REPLICA_ASSIGNMENT, NONE, POLICY_VIOLATION,
};
use super::wire::Request;
use crate::actors::approval::{RequestDeletion, RequestTopic};
use crate::identity::Principal;

/// Where changes are asked for instead, for the messages of refused admin writes.
const ASK_INSTEAD: &str = "KafFlow governs this cluster: topics are created and deleted through \
     requests that an administrator approves (CreateTopics and DeleteTopics through this gateway, \
     or POST /api/v1/topic-requests); other changes are made by the cluster's operators";

/// Resource type of a topic in the config and ACL APIs.
const TOPIC_RESOURCE: i8 = 2;

pub(crate) fn create_topics(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let asked: CreateTopicsRequest = request.decode("CreateTopics")?;
    let validate_only = asked.validate_only;
    let rules = &connection.shared.rules;
    let mut pending = Vec::new();
    for topic in asked.topics {
        let name = topic.name.0.to_string();
        if !topic.assignments.is_empty() {
            pending.push((
                topic.name,
                None,
                Some((
                    INVALID_REPLICA_ASSIGNMENT,
                    "replica assignments are the cluster's to make; give a partition count"
                        .to_string(),
                )),
            ));
            continue;
        }
        let config: BTreeMap<String, serde_json::Value> = topic
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), serde_json::Value::String(v.to_string())))
            })
            .collect();
        let filed = rules.request_topic(RequestTopic {
            principal: principal.clone(),
            topic: name,
            partitions: (topic.num_partitions >= 0).then_some(i64::from(topic.num_partitions)),
            replication_factor: (topic.replication_factor >= 0)
                .then_some(i64::from(topic.replication_factor)),
            config,
            reason: Some("asked for with Kafka CreateTopics".into()),
            visibility: None,
            validate_only,
        });
        pending.push((topic.name, Some(filed), None));
    }
    Ok(Reply::Later(Box::pin(async move {
        let mut body = CreateTopicsResponse::default();
        for (name, filed, refused) in pending {
            let mut result = CreatableTopicResult::default();
            result.name = name.clone();
            result.num_partitions = -1;
            result.replication_factor = -1;
            let (code, message) = match (filed, refused) {
                (_, Some((code, why))) => (code, Some(why)),
                (Some(filed), None) => match filed.await {
                    Ok(filed) if validate_only => {
                        result.num_partitions = filed.partitions;
                        result.replication_factor =
                            i16::try_from(filed.replication_factor).unwrap_or(-1);
                        (NONE, None)
                    }
                    Ok(filed) => {
                        tracing::info!(topic = %filed.topic, request_id = %filed.id, principal = %filed.requested_by, "Topic requested through the gateway.");
                        (
                            POLICY_VIOLATION,
                            Some(format!(
                                "KafFlow request {} for {} is pending approval",
                                filed.id, filed.topic
                            )),
                        )
                    }
                    Err(e) => (kafka_code(&e), Some(e.to_string())),
                },
                (None, None) => (POLICY_VIOLATION, None),
            };
            result.error_code = code;
            result.error_message = message.map(StrBytes::from_string);
            body.topics.push(result);
        }
        Ok(request.respond(&body)?)
    })))
}

pub(crate) fn delete_topics(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let asked: DeleteTopicsRequest = request.decode("DeleteTopics")?;
    // Up to v5 a list of names; from v6 names or ids.
    let names: Vec<Option<TopicName>> = if request.version() >= 6 {
        asked.topics.into_iter().map(|t| t.name).collect()
    } else {
        asked.topic_names.into_iter().map(Some).collect()
    };
    let rules = &connection.shared.rules;
    let pending: Vec<_> = names
        .into_iter()
        .map(|name| {
            let filed = name.as_ref().map(|n| {
                rules.request_deletion(RequestDeletion {
                    principal: principal.clone(),
                    topic: n.0.to_string(),
                    reason: Some("asked for with Kafka DeleteTopics".into()),
                    validate_only: false,
                })
            });
            (name, filed)
        })
        .collect();
    Ok(Reply::Later(Box::pin(async move {
        let mut body = DeleteTopicsResponse::default();
        for (name, filed) in pending {
            let mut result = DeletableTopicResult::default();
            result.name = name;
            let (code, message) = match filed {
                None => (
                    super::error::INVALID_REQUEST,
                    "name the topic: deletion by topic id is not offered".to_string(),
                ),
                Some(filed) => match filed.await {
                    Ok(filed) => {
                        tracing::info!(topic = %filed.topic, request_id = %filed.id, principal = %filed.requested_by, "Topic deletion requested through the gateway.");
                        (
                            POLICY_VIOLATION,
                            format!(
                                "KafFlow request {} to delete {} is pending approval",
                                filed.id, filed.topic
                            ),
                        )
                    }
                    Err(e) => (kafka_code(&e), e.to_string()),
                },
            };
            result.error_code = code;
            result.error_message = Some(StrBytes::from_string(message));
            body.responses.push(result);
        }
        Ok(request.respond(&body)?)
    })))
}

/// DescribeConfigs: topics the principal may not see are answered by the gateway; the rest
/// (and broker resources) by the brokers.
pub(crate) async fn describe_configs(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let mut asked: DescribeConfigsRequest = request.decode("DescribeConfigs")?;
    let rules = &connection.shared.rules;
    let mut refused: Vec<DescribeConfigsResult> = Vec::new();
    asked.resources.retain(|r| {
        if r.resource_type != TOPIC_RESOURCE {
            return true;
        }
        let name = r.resource_name.as_str();
        if rules.visible_topic(principal, name).is_some() {
            return true;
        }
        let (code, why) = match rules.may_consume(principal, name) {
            Err(e) => (kafka_code(&e), e.to_string()),
            Ok(()) => (
                super::error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name} is not visible"),
            ),
        };
        let mut result = DescribeConfigsResult::default();
        result.resource_type = r.resource_type;
        result.resource_name = r.resource_name.clone();
        result.error_code = code;
        result.error_message = Some(StrBytes::from_string(why));
        refused.push(result);
        false
    });
    if refused.is_empty() {
        return connection.forward(&request).await;
    }
    if asked.resources.is_empty() {
        let mut body = DescribeConfigsResponse::default();
        body.results = refused;
        return Ok(Reply::Now(request.respond(&body)?));
    }
    let payload = request.with_body(&asked)?;
    let answer = connection
        .forward_payload(&payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no DescribeConfigs answer".into()))?;
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<DescribeConfigsResponse>(bytes)?;
        response.results.extend(refused);
        Ok(request.encode_response(&header, &response)?)
    })))
}

/// Admin writes KafFlow does not take through Kafka: each item refused, saying where to ask.
pub(crate) fn refuse(api: ApiKey, request: Request) -> Result<Reply, Fault> {
    let why = || Some(StrBytes::from_static_str(ASK_INSTEAD));
    let payload = match api {
        ApiKey::CreatePartitions => {
            let asked: CreatePartitionsRequest = request.decode("CreatePartitions")?;
            let mut body = CreatePartitionsResponse::default();
            body.results = asked
                .topics
                .into_iter()
                .map(|t| {
                    let mut r =
                        kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult::default();
                    r.name = t.name;
                    r.error_code = POLICY_VIOLATION;
                    r.error_message = why();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::AlterConfigs => {
            let asked: AlterConfigsRequest = request.decode("AlterConfigs")?;
            let mut body = AlterConfigsResponse::default();
            body.responses = asked
                .resources
                .into_iter()
                .map(|res| {
                    let mut r =
                        kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default();
                    r.resource_type = res.resource_type;
                    r.resource_name = res.resource_name;
                    r.error_code = POLICY_VIOLATION;
                    r.error_message = why();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::IncrementalAlterConfigs => {
            let asked: IncrementalAlterConfigsRequest =
                request.decode("IncrementalAlterConfigs")?;
            let mut body = IncrementalAlterConfigsResponse::default();
            body.responses = asked
                .resources
                .into_iter()
                .map(|res| {
                    let mut r = kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                    r.resource_type = res.resource_type;
                    r.resource_name = res.resource_name;
                    r.error_code = POLICY_VIOLATION;
                    r.error_message = why();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::DeleteRecords => {
            let asked: DeleteRecordsRequest = request.decode("DeleteRecords")?;
            let mut body = DeleteRecordsResponse::default();
            body.topics = asked
                .topics
                .into_iter()
                .map(|t| {
                    let mut r = kafka_protocol::messages::delete_records_response::DeleteRecordsTopicResult::default();
                    r.name = t.name;
                    r.partitions = t
                        .partitions
                        .into_iter()
                        .map(|p| {
                            let mut pr = kafka_protocol::messages::delete_records_response::DeleteRecordsPartitionResult::default();
                            pr.partition_index = p.partition_index;
                            pr.low_watermark = -1;
                            pr.error_code = POLICY_VIOLATION;
                            pr
                        })
                        .collect();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::CreateAcls => {
            let asked: CreateAclsRequest = request.decode("CreateAcls")?;
            let mut body = CreateAclsResponse::default();
            body.results = asked
                .creations
                .iter()
                .map(|_| {
                    let mut r =
                        kafka_protocol::messages::create_acls_response::AclCreationResult::default(
                        );
                    r.error_code = CLUSTER_AUTHORIZATION_FAILED;
                    r.error_message = why();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::DeleteAcls => {
            let asked: DeleteAclsRequest = request.decode("DeleteAcls")?;
            let mut body = DeleteAclsResponse::default();
            body.filter_results = asked
                .filters
                .iter()
                .map(|_| {
                    let mut r = kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult::default();
                    r.error_code = CLUSTER_AUTHORIZATION_FAILED;
                    r.error_message = why();
                    r
                })
                .collect();
            request.respond(&body)?
        }
        ApiKey::DescribeAcls => {
            let mut body = DescribeAclsResponse::default();
            body.error_code = CLUSTER_AUTHORIZATION_FAILED;
            body.error_message = why();
            request.respond(&body)?
        }
        other => {
            return Err(Fault::Refused(format!(
                "{} is not offered",
                super::connection::api_name(other)
            )))
        }
    };
    Ok(Reply::Now(payload))
}
