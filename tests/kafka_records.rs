//! Records as a Kafka client sends them reach Kafka exactly so through the publisher, on the
//! direct path and through the spool: key bytes, a null value, repeated headers with binary or
//! null values, the partition the client chose and its CreateTime. A record for a partition
//! the topic does not have is dead-lettered, neither lost nor retried for ever, and the records
//! around it still arrive. Records enqueued a batch at a time keep each partition's order, and
//! one that librdkafka refuses in the middle of a batch is dead-lettered alone, every other
//! record acknowledged once.

mod common;

use std::time::{Duration, Instant};

use actix::prelude::*;
use common::{bootstrap, kafka_create_topic, kafka_delete_topic, unique_topic};
use kafflow::actors::event_store::EventStore;
use kafflow::actors::publisher::{Counts, Publish, Publisher, SetRoute};
use kafflow::actors::registry::TopicRoute;
use kafflow::config::{KafkaConfig, SpoolLimits};
use kafflow::events::{Durability, Store};
use kafflow::kafka::{producer_config, BatchProducer};
use kafflow::record::Record;
use kafflow::shutdown::Fatal;
use kafflow::spool::{HeldState, Spool};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, Timestamp, TopicPartitionList};

const SETTLE: Duration = Duration::from_secs(60);

/// A record as a plain consumer reads it, every field as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    create_time: Option<i64>,
}

/// Reads `n` records of `topic` (of `partitions` partitions) from the beginning.
fn read(topic: &str, partitions: i32, n: usize) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + SETTLE;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "{topic}: read {out:?}");
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Read {
            partition: m.partition(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            create_time: match m.timestamp() {
                Timestamp::CreateTime(t) => Some(t),
                _ => None,
            },
        });
    }
    out
}

fn kafka_record(tag: &str, partition: Option<i32>) -> Record {
    Record {
        key: Some(vec![0xff, 0x00, tag.as_bytes()[0]]),
        value: Some(format!("value {tag}").into_bytes()),
        headers: vec![
            ("h".into(), Some(tag.as_bytes().to_vec())),
            ("h".into(), Some(vec![0xfe, 0xff])),
            ("null".into(), None),
        ],
        partition,
        timestamp: Some(1_600_000_000_000),
    }
}

fn expected(record: &Record, partition: i32) -> Read {
    Read {
        partition,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record.headers.clone(),
        create_time: record.timestamp,
    }
}

async fn publisher(dir: &std::path::Path) -> (Addr<Publisher>, Spool) {
    publisher_with(dir, &[]).await
}

/// A publisher whose producer takes `properties` over the defaults.
async fn publisher_with(
    dir: &std::path::Path,
    properties: &[(&str, &str)],
) -> (Addr<Publisher>, Spool) {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap(),
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let producer = BatchProducer::new(&producer_config(&kafka, 10_000)).expect("producer");
    let (spool, contents) = Spool::open(dir, Durability::Normal).expect("spool");
    let store = Store::open(dir, Durability::Normal).expect("log");
    let head = store.replay(|_| {}).expect("replay");
    let (writer, _thread) = store.into_writer(head).expect("writer");
    let events = EventStore::new(writer, Fatal::detached()).start();
    let publisher = Publisher::new(
        producer,
        spool.clone(),
        contents,
        SpoolLimits::default(),
        events,
    );
    (publisher.start(), spool)
}

async fn publish(publisher: &Addr<Publisher>, topic: &str, records: Vec<Record>) {
    let receipt = publisher
        .send(Publish {
            producer: "alice".into(),
            topic: topic.into(),
            records,
            requested: false,
        })
        .await
        .expect("mailbox");
    receipt.expect("accepted");
}

/// Waits until the publisher counts `dead` dead records of `topic` and none held.
async fn settled(publisher: &Addr<Publisher>, topic: &str, dead: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let counts = publisher
            .send(Counts(vec![topic.to_string()]))
            .await
            .expect("counts");
        let c = counts.get(topic).copied().unwrap_or_default();
        if c.held == 0 && c.dead == dead {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn kafka_records_arrive_as_sent_and_a_missing_partition_is_dead_lettered() {
    let direct = unique_topic("kafka-records-direct");
    let held = unique_topic("kafka-records-held");
    kafka_create_topic(&direct, 2);
    kafka_create_topic(&held, 2);
    actix::System::new().block_on(scenario(&direct, &held));
    kafka_delete_topic(&direct);
    kafka_delete_topic(&held);
}

async fn scenario(direct: &str, held: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (publisher, spool) = publisher(dir.path()).await;

    // Straight to Kafka: the topic is active and nothing of it is held.
    publisher
        .send(SetRoute {
            topic: direct.into(),
            route: TopicRoute::Active,
        })
        .await
        .expect("route");
    let tombstone = Record {
        key: Some(b"gone".to_vec()),
        partition: Some(0),
        ..Record::default()
    };
    let sent = vec![
        kafka_record("a", Some(1)),
        kafka_record("b", Some(7)),
        tombstone.clone(),
        kafka_record("c", Some(1)),
    ];
    publish(&publisher, direct, sent.clone()).await;
    settled(&publisher, direct, 1).await;
    let mut arrived = read(direct, 2, 3);
    arrived.sort_by_key(|r| r.partition);
    assert!(
        arrived[0].create_time.is_some(),
        "librdkafka stamps a record sent without one"
    );
    assert_eq!(
        arrived,
        vec![
            Read {
                create_time: arrived[0].create_time,
                ..expected(&tombstone, 0)
            },
            expected(&sent[0], 1),
            expected(&sent[3], 1),
        ]
    );
    assert_eq!(arrived[0].value, None, "a tombstone stays null");
    let dead = spool
        .list(direct, HeldState::Dead, None, 0, 10)
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record().expect("headers"), sent[1]);

    // Through the spool: held while pending, drained in order once active.
    publisher
        .send(SetRoute {
            topic: held.into(),
            route: TopicRoute::Pending,
        })
        .await
        .expect("route");
    let sent = vec![
        kafka_record("x", Some(0)),
        kafka_record("y", Some(9)),
        kafka_record("z", Some(0)),
        kafka_record("w", None),
    ];
    publish(&publisher, held, sent.clone()).await;
    publisher
        .send(SetRoute {
            topic: held.into(),
            route: TopicRoute::Active,
        })
        .await
        .expect("route");
    settled(&publisher, held, 1).await;
    let arrived = read(held, 2, 3);
    // `w` goes where the partitioner puts it, perhaps partition 0 too.
    let on_zero: Vec<&Read> = arrived
        .iter()
        .filter(|r| r.partition == 0 && r.value != sent[3].value)
        .collect();
    assert_eq!(
        on_zero,
        vec![&expected(&sent[0], 0), &expected(&sent[2], 0)],
        "in order, at the partition chosen"
    );
    let w = arrived
        .iter()
        .find(|r| r.value == sent[3].value)
        .expect("w");
    assert_eq!(*w, expected(&sent[3], w.partition));
    let dead = spool
        .list(held, HeldState::Dead, None, 0, 10)
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record().expect("headers"), sent[1]);
}

#[test]
fn a_batch_keeps_each_partitions_order_and_a_refused_record_is_dead_lettered_alone() {
    let topic = unique_topic("kafka-records-batch");
    kafka_create_topic(&topic, 2);
    actix::System::new().block_on(batch_scenario(&topic));
    kafka_delete_topic(&topic);
}

async fn batch_scenario(topic: &str) {
    const N: usize = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    // librdkafka refuses a record past 1,000 bytes when it is enqueued.
    let (publisher, spool) = publisher_with(dir.path(), &[("message.max.bytes", "1000")]).await;
    publisher
        .send(SetRoute {
            topic: topic.into(),
            route: TopicRoute::Active,
        })
        .await
        .expect("route");
    // Plain records (one `rd_kafka_produce_batch` call per run of them) over both partitions,
    // with a record too large, one for a partition the topic does not have, and one with a
    // header (enqueued on its own) in between.
    let mut sent: Vec<Record> = (0..N)
        .map(|n| Record {
            key: Some(format!("k{}", n % 7).into_bytes()),
            value: Some(format!("v{n}").into_bytes()),
            partition: Some((n % 2) as i32),
            ..Record::default()
        })
        .collect();
    sent[100].value = Some(vec![b'x'; 5000]);
    sent[300].partition = Some(7);
    sent[200].headers = vec![("h".into(), Some(b"1".to_vec()))];
    let receipt = publisher
        .send(Publish {
            producer: "alice".into(),
            topic: topic.into(),
            records: sent.clone(),
            requested: false,
        })
        .await
        .expect("mailbox")
        .expect("accepted");
    // The two refused records are held (then dead-lettered), every other one is in Kafka:
    // each record is counted once.
    assert_eq!((receipt.published, receipt.held), (N as u64 - 2, 2));
    settled(&publisher, topic, 2).await;
    let counts = publisher
        .send(Counts(vec![topic.to_string()]))
        .await
        .expect("counts")[topic];
    assert_eq!(counts.published, N as u64 - 2);
    let mut dead: Vec<Record> = spool
        .list(topic, HeldState::Dead, None, 0, 10)
        .await
        .expect("dead")
        .iter()
        .map(|h| h.record().expect("headers"))
        .collect();
    dead.sort_by_key(|r| r.partition);
    assert_eq!(dead, vec![sent[100].clone(), sent[300].clone()]);

    let arrived = read(topic, 2, N - 2);
    for partition in 0..2 {
        let got: Vec<&Read> = arrived
            .iter()
            .filter(|r| r.partition == partition)
            .collect();
        let want: Vec<Read> = sent
            .iter()
            .enumerate()
            .filter(|(n, r)| *n != 100 && *n != 300 && r.partition == Some(partition))
            .map(|(_, r)| Read {
                create_time: None,
                ..expected(r, partition)
            })
            .collect();
        let got: Vec<Read> = got
            .into_iter()
            .map(|r| Read {
                create_time: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(
            got, want,
            "partition {partition}: in the order sent, each once"
        );
    }
    // Nothing more than those: no record was written twice.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    let written: i64 = (0..2)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum();
    assert_eq!(written, N as i64 - 2);
}
