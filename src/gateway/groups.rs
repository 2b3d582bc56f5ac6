//! Fetch, ListOffsets, OffsetForLeaderEpoch, offsets and consumer groups: forwarded to the
//! broker the client chose, once the principal's read access to every topic and its right to
//! the group (ids that begin with its own name and a dot) are checked.
//!
//! Fetch sessions are turned off (every Fetch is a full one), so that every Fetch names its
//! topics and a revoked grant stops the next one. A Fetch that names a topic the principal may
//! not read is forwarded without it, and the answer gets TOPIC_AUTHORIZATION_FAILED for it.
//! The other APIs are answered whole by the gateway when any topic in them is refused.

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::{Connection, Fault, Reply};
use super::wire::MAX_FRAME_BYTES;

/// The most a Fetch may ask for: half a frame, so that an answer always fits in one.
const MAX_FETCH_BYTES: i32 = (MAX_FRAME_BYTES / 2) as i32;
use super::error::{kafka_code, TOPIC_AUTHORIZATION_FAILED};
use super::wire::Request;
use crate::identity::Principal;

/// The first refusal among `topics`, if any: the code and the message.
fn refusal<'a>(
    connection: &Connection,
    principal: &Principal,
    topics: impl IntoIterator<Item = &'a TopicName>,
) -> Option<(i16, String)> {
    topics.into_iter().find_map(|name| {
        connection
            .shared
            .rules
            .may_consume(principal, name.0.as_str())
            .err()
            .map(|e| (kafka_code(&e), e.to_string()))
    })
}

pub(crate) async fn fetch(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let mut asked: FetchRequest = request.decode("Fetch")?;
    let mut refused: Vec<(TopicName, Vec<i32>, i16)> = Vec::new();
    let rules = &connection.shared.rules;
    asked.topics.retain(
        |topic| match rules.may_consume(principal, topic.topic.0.as_str()) {
            Ok(()) => true,
            Err(e) => {
                refused.push((
                    topic.topic.clone(),
                    topic.partitions.iter().map(|p| p.partition).collect(),
                    kafka_code(&e),
                ));
                false
            }
        },
    );
    // A client is never a follower: a replica id would read past the high watermark and move
    // the leader's view of its followers.
    asked.replica_id = BrokerId(-1);
    // An answer must fit in a frame the gateway reads from the broker.
    asked.max_bytes = asked.max_bytes.clamp(0, MAX_FETCH_BYTES);
    for topic in &mut asked.topics {
        for partition in &mut topic.partitions {
            partition.partition_max_bytes = partition.partition_max_bytes.clamp(0, MAX_FETCH_BYTES);
        }
    }
    if request.version() >= 7 {
        // No fetch session: the broker answers every Fetch in full and the client keeps
        // naming every partition, so each Fetch is checked.
        asked.session_id = 0;
        asked.session_epoch = -1;
        asked.forgotten_topics_data.clear();
    }
    if asked.topics.is_empty() && !refused.is_empty() {
        let mut body = FetchResponse::default();
        body.responses = refused.into_iter().map(refused_fetch).collect();
        return Ok(Reply::Now(request.respond(&body)?));
    }
    let payload = request.with_body(&asked)?;
    let answer = connection
        .forward_payload(&payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no Fetch answer".into()))?;
    if refused.is_empty() {
        return Ok(Reply::Forwarded(answer));
    }
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<FetchResponse>(bytes)?;
        response
            .responses
            .extend(refused.into_iter().map(refused_fetch));
        Ok(request.encode_response(&header, &response)?)
    })))
}

fn refused_fetch((topic, partitions, code): (TopicName, Vec<i32>, i16)) -> FetchableTopicResponse {
    let mut t = FetchableTopicResponse::default();
    t.topic = topic;
    t.partitions = partitions
        .into_iter()
        .map(|index| {
            let mut p = PartitionData::default();
            p.partition_index = index;
            p.error_code = code;
            p.high_watermark = -1;
            p.last_stable_offset = -1;
            p.log_start_offset = -1;
            p
        })
        .collect();
    t
}

pub(crate) async fn list_offsets(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let mut asked: ListOffsetsRequest = request.decode("ListOffsets")?;
    let Some((code, _)) = refusal(connection, principal, asked.topics.iter().map(|t| &t.name))
    else {
        return forward_as_consumer(connection, request, asked.replica_id, |id| {
            asked.replica_id = id;
            asked
        })
        .await;
    };
    let mut body = ListOffsetsResponse::default();
    body.topics = asked
        .topics
        .iter()
        .map(|t| {
            let mut out = ListOffsetsTopicResponse::default();
            out.name = t.name.clone();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default();
                    r.partition_index = p.partition_index;
                    r.error_code = code;
                    r.timestamp = -1;
                    r.offset = -1;
                    r.leader_epoch = -1;
                    r
                })
                .collect();
            out
        })
        .collect();
    Ok(Reply::Now(request.respond(&body)?))
}

pub(crate) async fn offset_for_leader_epoch(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let mut asked: OffsetForLeaderEpochRequest = request.decode("OffsetForLeaderEpoch")?;
    let Some((code, _)) = refusal(connection, principal, asked.topics.iter().map(|t| &t.topic))
    else {
        // The replica id exists from v3; before it the request is a consumer's.
        if request.version() < 3 {
            return connection.forward(&request).await;
        }
        return forward_as_consumer(connection, request, asked.replica_id, |id| {
            asked.replica_id = id;
            asked
        })
        .await;
    };
    let mut body = OffsetForLeaderEpochResponse::default();
    body.topics = asked
        .topics
        .iter()
        .map(|t| {
            let mut out = OffsetForLeaderTopicResult::default();
            out.topic = t.topic.clone();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut e = EpochEndOffset::default();
                    e.partition = p.partition;
                    e.error_code = code;
                    e.leader_epoch = -1;
                    e.end_offset = -1;
                    e
                })
                .collect();
            out
        })
        .collect();
    Ok(Reply::Now(request.respond(&body)?))
}

/// Forwards a request that carries a replica id as a consumer's (-1): a client is never a
/// broker's follower, nor the debugging replica (-2).
async fn forward_as_consumer<T: kafka_protocol::protocol::Encodable>(
    connection: &mut Connection,
    request: Request,
    replica_id: BrokerId,
    with_id: impl FnOnce(BrokerId) -> T,
) -> Result<Reply, Fault> {
    if replica_id.0 == -1 {
        return connection.forward(&request).await;
    }
    let payload = request.with_body(&with_id(BrokerId(-1)))?;
    match connection.forward_payload(&payload, true).await? {
        Some(answer) => Ok(Reply::Forwarded(answer)),
        None => Err(Fault::Refused("no answer".into())),
    }
}

/// The consumer group APIs.
pub(crate) async fn group(
    connection: &mut Connection,
    api: ApiKey,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let rules = connection.shared.rules.clone();
    let group_refusal = |group: &str| -> Option<(i16, String)> {
        rules
            .may_use_group(principal, group)
            .err()
            .map(|e| (kafka_code(&e), e.to_string()))
    };
    let local: Option<Reply> = match api {
        ApiKey::JoinGroup => {
            let asked: JoinGroupRequest = request.decode("JoinGroup")?;
            match group_refusal(asked.group_id.0.as_str()) {
                Some((code, _)) => {
                    let mut body = JoinGroupResponse::default();
                    body.error_code = code;
                    body.generation_id = -1;
                    body.member_id = asked.member_id;
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::SyncGroup => {
            let asked: SyncGroupRequest = request.decode("SyncGroup")?;
            match group_refusal(asked.group_id.0.as_str()) {
                Some((code, _)) => {
                    let mut body = SyncGroupResponse::default();
                    body.error_code = code;
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::Heartbeat => {
            let asked: HeartbeatRequest = request.decode("Heartbeat")?;
            match group_refusal(asked.group_id.0.as_str()) {
                Some((code, _)) => {
                    let mut body = HeartbeatResponse::default();
                    body.error_code = code;
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::LeaveGroup => {
            let asked: LeaveGroupRequest = request.decode("LeaveGroup")?;
            match group_refusal(asked.group_id.0.as_str()) {
                Some((code, _)) => {
                    let mut body = LeaveGroupResponse::default();
                    body.error_code = code;
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::DescribeGroups => {
            let mut asked: DescribeGroupsRequest = request.decode("DescribeGroups")?;
            let refused: Vec<DescribedGroup> = asked
                .groups
                .iter()
                .filter_map(|g| {
                    group_refusal(g.0.as_str()).map(|(code, why)| {
                        let mut d = DescribedGroup::default();
                        d.group_id = g.clone();
                        d.error_code = code;
                        // The message exists from v6.
                        if request.version() >= 6 {
                            d.error_message = Some(StrBytes::from_string(why));
                        }
                        d
                    })
                })
                .collect();
            if refused.is_empty() {
                None
            } else {
                // The principal's own groups are described by the broker, the others refused.
                asked
                    .groups
                    .retain(|g| group_refusal(g.0.as_str()).is_none());
                if asked.groups.is_empty() {
                    let mut body = DescribeGroupsResponse::default();
                    body.groups = refused;
                    Some(Reply::Now(request.respond(&body)?))
                } else {
                    let payload = request.with_body(&asked)?;
                    let answer = connection
                        .forward_payload(&payload, true)
                        .await?
                        .ok_or_else(|| Fault::Refused("no DescribeGroups answer".into()))?;
                    let request = request.clone();
                    Some(Reply::Later(Box::pin(async move {
                        let bytes = answer
                            .await
                            .map_err(|_| Fault::Refused("answer lost".into()))??;
                        let (header, mut response) =
                            request.decode_response::<DescribeGroupsResponse>(bytes)?;
                        response.groups.extend(refused);
                        Ok(request.encode_response(&header, &response)?)
                    })))
                }
            }
        }
        ApiKey::OffsetCommit => {
            let asked: OffsetCommitRequest = request.decode("OffsetCommit")?;
            let refused = group_refusal(asked.group_id.0.as_str())
                .or_else(|| refusal(connection, principal, asked.topics.iter().map(|t| &t.name)));
            match refused {
                Some((code, _)) => {
                    let mut body = OffsetCommitResponse::default();
                    body.topics = asked
                        .topics
                        .iter()
                        .map(|t| {
                            let mut out = OffsetCommitResponseTopic::default();
                            out.name = t.name.clone();
                            out.partitions = t
                                .partitions
                                .iter()
                                .map(|p| {
                                    let mut r = OffsetCommitResponsePartition::default();
                                    r.partition_index = p.partition_index;
                                    r.error_code = code;
                                    r
                                })
                                .collect();
                            out
                        })
                        .collect();
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::OffsetFetch => {
            offset_fetch(connection, principal, &request, &group_refusal).await?
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let asked: ConsumerGroupHeartbeatRequest = request.decode("ConsumerGroupHeartbeat")?;
            let refused = group_refusal(asked.group_id.0.as_str())
                .or_else(|| {
                    asked.subscribed_topic_regex.as_ref().map(|_| {
                        (
                            TOPIC_AUTHORIZATION_FAILED,
                            "subscribing by pattern is not offered by the KafFlow gateway; \
                             subscribe to topic names"
                                .to_string(),
                        )
                    })
                })
                .or_else(|| {
                    asked
                        .subscribed_topic_names
                        .as_ref()
                        .and_then(|names| refusal(connection, principal, names.iter()))
                });
            match refused {
                Some((code, why)) => {
                    let mut body = ConsumerGroupHeartbeatResponse::default();
                    body.error_code = code;
                    body.error_message = Some(StrBytes::from_string(why));
                    body.member_epoch = -1;
                    Some(Reply::Now(request.respond(&body)?))
                }
                None => None,
            }
        }
        ApiKey::ListGroups => return list_groups(connection, principal, request).await,
        _ => None,
    };
    match local {
        Some(reply) => Ok(reply),
        None => connection.forward(&request).await,
    }
}

async fn offset_fetch(
    connection: &mut Connection,
    principal: &Principal,
    request: &Request,
    group_refusal: &(dyn Fn(&str) -> Option<(i16, String)> + Sync),
) -> Result<Option<Reply>, Fault> {
    let mut asked: OffsetFetchRequest = request.decode("OffsetFetch")?;
    if request.version() < 8 {
        let refused = group_refusal(asked.group_id.0.as_str()).or_else(|| {
            asked
                .topics
                .as_ref()
                .and_then(|topics| refusal(connection, principal, topics.iter().map(|t| &t.name)))
        });
        let Some((code, _)) = refused else {
            return Ok(None);
        };
        let mut body = OffsetFetchResponse::default();
        body.error_code = code;
        body.topics = asked
            .topics
            .iter()
            .flatten()
            .map(|t| {
                let mut out = OffsetFetchResponseTopic::default();
                out.name = t.name.clone();
                out.partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&index| {
                        let mut p = OffsetFetchResponsePartition::default();
                        p.partition_index = index;
                        p.committed_offset = -1;
                        p.committed_leader_epoch = -1;
                        p.error_code = code;
                        p
                    })
                    .collect();
                out
            })
            .collect();
        return Ok(Some(Reply::Now(request.respond(&body)?)));
    }
    let mut any = false;
    let groups: Vec<OffsetFetchResponseGroup> = asked
        .groups
        .iter()
        .map(|g| {
            let refused = group_refusal(g.group_id.0.as_str()).or_else(|| {
                g.topics.as_ref().and_then(|topics| {
                    refusal(connection, principal, topics.iter().map(|t| &t.name))
                })
            });
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = g.group_id.clone();
            if let Some((code, _)) = refused {
                any = true;
                out.error_code = code;
                out.topics = g
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        let mut topic = OffsetFetchResponseTopics::default();
                        topic.name = t.name.clone();
                        topic.partitions = t
                            .partition_indexes
                            .iter()
                            .map(|&index| {
                                let mut p = OffsetFetchResponsePartitions::default();
                                p.partition_index = index;
                                p.committed_offset = -1;
                                p.committed_leader_epoch = -1;
                                p.error_code = code;
                                p
                            })
                            .collect();
                        topic
                    })
                    .collect();
            }
            out
        })
        .collect();
    if !any {
        return Ok(None);
    }
    // The allowed groups are answered by the broker, the refused ones by the gateway.
    let refused: Vec<OffsetFetchResponseGroup> =
        groups.into_iter().filter(|g| g.error_code != 0).collect();
    let refused_ids: std::collections::HashSet<&str> =
        refused.iter().map(|g| g.group_id.0.as_str()).collect();
    asked
        .groups
        .retain(|g| !refused_ids.contains(g.group_id.0.as_str()));
    if asked.groups.is_empty() {
        let mut body = OffsetFetchResponse::default();
        body.groups = refused;
        return Ok(Some(Reply::Now(request.respond(&body)?)));
    }
    let payload = request.with_body(&asked)?;
    let answer = connection
        .forward_payload(&payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no OffsetFetch answer".into()))?;
    let request = request.clone();
    Ok(Some(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<OffsetFetchResponse>(bytes)?;
        response.groups.extend(refused);
        Ok(request.encode_response(&header, &response)?)
    }))))
}

/// ListGroups: the brokers' answer, cut to the groups the principal may use.
async fn list_groups(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let answer = connection
        .forward_payload(&request.payload, true)
        .await?
        .ok_or_else(|| Fault::Refused("no ListGroups answer".into()))?;
    let rules = Arc::new(connection.shared.rules.clone());
    let principal = principal.clone();
    Ok(Reply::Later(Box::pin(async move {
        let bytes = answer
            .await
            .map_err(|_| Fault::Refused("answer lost".into()))??;
        let (header, mut response) = request.decode_response::<ListGroupsResponse>(bytes)?;
        response.groups.retain(|g| {
            rules
                .may_use_group(&principal, g.group_id.0.as_str())
                .is_ok()
        });
        Ok(request.encode_response(&header, &response)?)
    })))
}
