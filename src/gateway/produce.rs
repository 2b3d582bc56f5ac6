//! Produce and InitProducerId.
//!
//! A batch for an active topic that the publisher sends directly is forwarded to the leader as
//! bytes. A batch for a pending topic (or one whose held records are still draining) is decoded
//! and handed to the publisher, which keeps it in the spool, in order, each record with the
//! partition the client chose; the client's answer waits until it is durable and carries
//! offset -1 ("unknown"). A producer that once sent a topic's records that way keeps doing so
//! for that topic: its order and its sequence numbers stay with KafFlow's own producer.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use std::cell::Cell;
use std::sync::Arc;

use bytes::Buf;

use super::connection::{Connection, Fault, Reply};
use super::error::{
    kafka_code, INVALID_RECORD, NONE, TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    UNKNOWN_TOPIC_OR_PARTITION,
};
use super::inflate::inflate;
use super::sequences::{Batch, Claim};
use super::wire::Request;
use crate::actors::publisher::Receipt;
use crate::actors::registry::ProduceRoute;
use crate::identity::Principal;
use crate::record::Record;

/// Where a producer id sits in a v2 record batch: after base offset (8), length (4), leader
/// epoch (4), magic (1), CRC (4), attributes (2), last offset delta (4) and two timestamps (16).
const PRODUCER_ID_AT: usize = 43;

/// The most one Produce request's held batches may decompress to, all partitions together
/// (Kafka's own default `message.max.bytes` is 1 MiB of compressed batch).
pub(crate) const HELD_BYTES_PER_REQUEST: usize = 64 << 20;

type Release = Box<dyn FnOnce() + Send>;

/// The answer of one topic in the making.
enum TopicAnswer {
    /// Answered by the gateway: one code (and message) for every partition.
    Refused {
        name: String,
        partitions: Vec<i32>,
        code: i16,
        message: String,
    },
    /// Handed to the publisher; partitions out of range answered at once.
    Held {
        name: String,
        partitions: Vec<i32>,
        out_of_range: Vec<i32>,
        receipt: BoxFuture<'static, crate::error::Result<Receipt>>,
        /// Forgets the batches claimed for this answer, if the publisher refuses them.
        release: Release,
    },
}

pub(crate) async fn produce(
    connection: &mut Connection,
    principal: &Principal,
    request: Request,
) -> Result<Reply, Fault> {
    let mut asked: ProduceRequest = request.decode("Produce")?;
    let acks = asked.acks;
    if asked.transactional_id.is_some() {
        let answers = asked
            .topic_data
            .iter()
            .map(|t| TopicAnswer::Refused {
                name: t.name.0.to_string(),
                partitions: t.partition_data.iter().map(|p| p.index).collect(),
                code: TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                message: "transactions are not offered by the KafFlow gateway".into(),
            })
            .collect();
        return answer(request, acks, None, answers).await;
    }
    let mut forwarded: Vec<TopicProduceData> = Vec::new();
    let budget = Cell::new(HELD_BYTES_PER_REQUEST);
    let mut answers: Vec<TopicAnswer> = Vec::new();
    let topics = std::mem::take(&mut asked.topic_data);
    let all = topics.len();
    for topic in topics {
        let name = topic.name.0.to_string();
        let partitions: Vec<i32> = topic.partition_data.iter().map(|p| p.index).collect();
        let rules = &connection.shared.rules;
        let route = match rules.may_produce(principal, &name) {
            Ok(route) => route,
            Err(e) => {
                answers.push(TopicAnswer::Refused {
                    name,
                    partitions,
                    code: kafka_code(&e),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let producer_id = topic
            .partition_data
            .iter()
            .find_map(|p| p.records.as_ref().and_then(producer_id))
            .unwrap_or(-1);
        let direct = route == ProduceRoute::Active
            && rules.is_direct(&name)
            && !connection.held_topics.contains(&name)
            && !connection
                .shared
                .held_producers
                .contains(producer_id, &name);
        if direct {
            forwarded.push(topic);
            continue;
        }
        let count = rules.visible_topic(principal, &name).map(|t| t.partitions);
        let mut decoded: Vec<(i32, Vec<Record>, Option<Batch>)> = Vec::new();
        let mut out_of_range = Vec::new();
        let mut bad: Option<String> = None;
        for data in &topic.partition_data {
            if data.index < 0 || count.is_some_and(|n| data.index >= n) {
                out_of_range.push(data.index);
                continue;
            }
            let checked = decode(data.index, data.records.clone(), &budget).and_then(|batch| {
                match batch
                    .iter()
                    .find_map(|r| r.check(rules.record_limits).err())
                {
                    Some(e) => Err(format!("partition {}: {e}", data.index)),
                    None => Ok(batch),
                }
            });
            match checked {
                Ok(batch) => {
                    let sequences = data.records.as_ref().and_then(Batch::of);
                    decoded.push((data.index, batch, sequences));
                }
                Err(why) => bad = Some(why),
            }
        }
        if let Some(why) = bad {
            answers.push(TopicAnswer::Refused {
                name,
                partitions,
                code: INVALID_RECORD,
                message: why,
            });
            continue;
        }
        connection.held_topics.insert(name.clone());
        let held_producers = &connection.shared.held_producers;
        held_producers.mark(producer_id, &name);
        // A retry of a batch already held is answered as a success and not held again.
        let mut records = Vec::new();
        let mut held = Vec::new();
        let mut claimed = Vec::new();
        for (partition, mut batch, sequences) in decoded {
            held.push(partition);
            if let Some(sequences) = sequences {
                if held_producers.claim(&name, partition, sequences) == Claim::Duplicate {
                    tracing::debug!(topic = %name, partition, producer_id, first = sequences.first, "Retried batch already held; not held again.");
                    continue;
                }
                claimed.push((partition, sequences));
            }
            records.append(&mut batch);
        }
        let receipt = rules.hold(&principal.name, &name, records);
        let shared = Arc::clone(&connection.shared);
        let topic_name = name.clone();
        let release: Release = Box::new(move || {
            for (partition, sequences) in claimed {
                shared
                    .held_producers
                    .release(&topic_name, partition, sequences);
            }
        });
        answers.push(TopicAnswer::Held {
            name,
            partitions: held,
            out_of_range,
            receipt,
            release,
        });
    }
    if forwarded.len() == all {
        // Every topic goes straight to the leader: the client's bytes, untouched.
        return match connection
            .forward_payload(&request.payload, acks != 0)
            .await?
        {
            Some(answer) => Ok(Reply::Forwarded(answer)),
            None => Ok(Reply::Nothing),
        };
    }
    let upstream = if forwarded.is_empty() {
        None
    } else {
        asked.topic_data = forwarded;
        let payload = request.with_body(&asked)?;
        connection.forward_payload(&payload, acks != 0).await?
    };
    answer(request, acks, upstream, answers).await
}

/// Puts the answer together once the broker and the publisher have answered.
async fn answer(
    request: Request,
    acks: i16,
    upstream: Option<super::upstream::Answer>,
    answers: Vec<TopicAnswer>,
) -> Result<Reply, Fault> {
    let work = async move {
        let mut header = ResponseHeader::default();
        header.correlation_id = request.header.correlation_id;
        let mut response = ProduceResponse::default();
        if let Some(answer) = upstream {
            let bytes = answer
                .await
                .map_err(|_| Fault::Refused("answer lost".into()))??;
            let (h, r) = request.decode_response::<ProduceResponse>(bytes)?;
            header = h;
            response = r;
        }
        for topic in answers {
            response.responses.push(topic_answer(topic).await);
        }
        Ok::<_, Fault>(request.encode_response(&header, &response)?)
    };
    if acks == 0 {
        // No answer is written, but the records still go where they go.
        tokio::spawn(async move {
            if let Err(e) = work.await {
                tracing::debug!(error = %e, "Produce with acks=0 failed.");
            }
        });
        return Ok(Reply::Nothing);
    }
    Ok(Reply::Later(Box::pin(work)))
}

async fn topic_answer(topic: TopicAnswer) -> TopicProduceResponse {
    let mut out = TopicProduceResponse::default();
    match topic {
        TopicAnswer::Refused {
            name,
            partitions,
            code,
            message,
        } => {
            out.name = TopicName(StrBytes::from_string(name));
            out.partition_responses = partitions
                .into_iter()
                .map(|index| partition_answer(index, code, Some(&message)))
                .collect();
        }
        TopicAnswer::Held {
            name,
            partitions,
            out_of_range,
            receipt,
            release,
        } => {
            let (code, message) = match receipt.await {
                Ok(receipt) => {
                    tracing::debug!(topic = %name, held = receipt.held, published = receipt.published, "Gateway batch taken by the publisher.");
                    (NONE, None)
                }
                Err(e) => {
                    release();
                    (kafka_code(&e), Some(e.to_string()))
                }
            };
            out.name = TopicName(StrBytes::from_string(name));
            out.partition_responses = partitions
                .into_iter()
                .map(|index| partition_answer(index, code, message.as_deref()))
                .chain(out_of_range.into_iter().map(|index| {
                    partition_answer(
                        index,
                        UNKNOWN_TOPIC_OR_PARTITION,
                        Some("no such partition in the requested topic"),
                    )
                }))
                .collect();
        }
    }
    out
}

fn partition_answer(index: i32, code: i16, message: Option<&str>) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code;
    // Held records have no offset yet; -1 says "unknown", as does the append time.
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    if code != NONE {
        p.error_message = message.map(|m| StrBytes::from_string(m.to_string()));
    }
    p
}

/// The producer id of the first batch in `records`, if it is a v2 batch.
fn producer_id(records: &Bytes) -> Option<i64> {
    let bytes = records.get(PRODUCER_ID_AT..PRODUCER_ID_AT + 8)?;
    let magic = *records.get(16)?;
    (magic == 2).then(|| i64::from_be_bytes(bytes.try_into().unwrap_or([0xff; 8])))
}

/// A partition's batches as KafFlow records, each bound for `partition`. What the batches
/// decompress to is taken from `budget`, the bytes one request may still inflate.
fn decode(
    partition: i32,
    records: Option<Bytes>,
    budget: &Cell<usize>,
) -> Result<Vec<Record>, String> {
    let Some(mut bytes) = records else {
        return Ok(Vec::new());
    };
    let inflate_within_budget = |compressed: &mut Bytes, codec: Compression| {
        let out = inflate(compressed, codec, budget.get())?;
        budget.set(budget.get().saturating_sub(out.len()));
        Ok::<_, anyhow::Error>(out)
    };
    let mut sets = Vec::new();
    while bytes.has_remaining() {
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut bytes,
            Some(&inflate_within_budget),
        )
        .map_err(|e| format!("partition {partition}: undecodable record batch: {e}"))?;
        sets.push(set);
    }
    let mut out = Vec::new();
    for set in sets {
        for r in set.records {
            if r.control {
                continue;
            }
            out.push(Record {
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec())))
                    .collect(),
                partition: Some(partition),
                timestamp: Some(r.timestamp),
            });
        }
    }
    Ok(out)
}

/// InitProducerId: forwarded for idempotent producers; transactions are not offered.
pub(crate) async fn init_producer_id(
    connection: &mut Connection,
    request: Request,
) -> Result<Reply, Fault> {
    let asked: InitProducerIdRequest = request.decode("InitProducerId")?;
    if asked.transactional_id.is_some() {
        let mut body = InitProducerIdResponse::default();
        body.error_code = TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        body.producer_id = (-1).into();
        body.producer_epoch = -1;
        return Ok(Reply::Now(request.respond(&body)?));
    }
    connection.forward(&request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record as KafkaRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(compression: Compression, producer_id: i64) -> Bytes {
        let mut headers = kafka_protocol::indexmap::IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"\x00\xff")),
        );
        let records: Vec<KafkaRecord> = (0..3)
            .map(|i| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: (i != 1).then(|| Bytes::from(vec![0xfe, i as u8])),
                value: (i != 2).then(|| Bytes::from(format!("v{i}"))),
                headers: headers.clone(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    #[test]
    fn batches_decode_to_records_bound_for_their_partition_under_every_codec() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records =
                decode(4, Some(batch(compression, 77)), &Cell::new(1 << 20)).expect("decode");
            assert_eq!(records.len(), 3, "{compression:?}");
            assert_eq!(records[0].key, Some(vec![0xfe, 0]));
            assert_eq!(records[1].key, None);
            assert_eq!(records[2].value, None, "a tombstone stays a tombstone");
            assert_eq!(records[1].value, Some(b"v1".to_vec()));
            assert_eq!(records[2].timestamp, Some(1_700_000_000_002));
            assert!(records.iter().all(|r| r.partition == Some(4)));
            assert_eq!(
                records[0].headers,
                vec![("h".to_string(), Some(vec![0, 0xff]))]
            );
        }
    }

    #[test]
    fn the_producer_id_is_read_from_the_batch_header() {
        assert_eq!(producer_id(&batch(Compression::None, 4242)), Some(4242));
        assert_eq!(producer_id(&batch(Compression::Lz4, -1)), Some(-1));
        assert_eq!(producer_id(&Bytes::from_static(b"short")), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(0, Some(Bytes::from_static(&[0u8; 70])), &Cell::new(1 << 20)).is_err());
        assert!(decode(
            0,
            Some(Bytes::from_static(b"\x00\x01")),
            &Cell::new(1 << 20)
        )
        .is_err());
        assert_eq!(
            decode(0, None, &Cell::new(0)).expect("no records"),
            Vec::new()
        );
    }
}
