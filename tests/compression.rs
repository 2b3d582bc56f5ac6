//! The publisher's codec (`[publisher] compression`) is the codec Kafka stores the records
//! with: records sent through the binary are fetched back from the broker with a plain Fetch
//! request, and the attributes of every record batch name the codec.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{bootstrap, unique_topic, Service};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use serde_json::json;

/// Fetch v11: topics by name, no tagged fields.
const FETCH_VERSION: i16 = 11;

/// The codec (the low three bits of the attributes: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)
/// of every record batch of partition 0 of `topic`, read straight from the broker.
fn batch_codecs(topic: &str) -> Vec<i16> {
    let mut stream = std::net::TcpStream::connect(bootstrap()).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(16 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(16 << 20)])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(FETCH_VERSION)
        .with_correlation_id(1);
    let mut payload = bytes::BytesMut::new();
    header
        .encode(
            &mut payload,
            ApiKey::Fetch.request_header_version(FETCH_VERSION),
        )
        .expect("header");
    request
        .encode(&mut payload, FETCH_VERSION)
        .expect("request");
    let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).expect("send fetch");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("answer size");
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).expect("answer");
    let mut answer = bytes::Bytes::from(answer);
    ResponseHeader::decode(
        &mut answer,
        ApiKey::Fetch.response_header_version(FETCH_VERSION),
    )
    .expect("answer header");
    let response = FetchResponse::decode(&mut answer, FETCH_VERSION).expect("fetch answer");
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0, "fetch of {topic}");
    let records = partition.records.clone().expect("records");
    // A record batch: base offset (8 bytes), batch length (4), leader epoch (4), magic (1),
    // CRC (4), attributes (2), ...
    let mut codecs = Vec::new();
    let mut at = 0;
    while at + 23 <= records.len() {
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        let attributes = i16::from_be_bytes(records[at + 21..at + 23].try_into().expect("2 bytes"));
        codecs.push(attributes & 0x07);
        at += 12 + length as usize;
    }
    codecs
}

/// Sends 500 text records to a new topic of one partition through HTTP; all are published.
fn send_records(svc: &Service, topic: &str) {
    svc.provision(topic, 1);
    let records: Vec<_> = (0..500)
        .map(|i| json!({ "value": format!("record {i:05} of a stream that compresses well") }))
        .collect();
    let (status, body) = svc.post(
        "alice",
        &format!("/api/v1/topics/{topic}/records"),
        &json!(records),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["published"], 500, "{body}");
}

#[test]
fn the_publisher_sends_record_batches_with_the_configured_codec() {
    // Without a setting: none.
    let svc = Service::start();
    let topic = unique_topic("codec-default");
    send_records(&svc, &topic);
    let codecs = batch_codecs(&topic);
    assert!(!codecs.is_empty(), "no batch read back");
    assert!(codecs.iter().all(|&c| c == 0), "none expected: {codecs:?}");
    drop(svc);

    for (codec, id) in [("lz4", 3), ("zstd", 4)] {
        let svc = Service::start_with_config(|c| {
            format!("{c}\n[publisher]\ncompression = \"{codec}\"\n")
        });
        let topic = unique_topic(&format!("codec-{codec}"));
        send_records(&svc, &topic);
        let codecs = batch_codecs(&topic);
        assert!(!codecs.is_empty(), "no batch read back");
        assert!(
            codecs.iter().all(|&c| c == id),
            "{codec} expected: {codecs:?}"
        );
    }
}
