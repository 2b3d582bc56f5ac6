//! The broker itself refuses topics nobody approved: auto-creation is really off.

mod common;

use std::time::Duration;

use common::{
    block_on, bootstrap, kafka_create_topic, kafka_delete_topic, kafka_topic_partitions,
    unique_topic,
};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A plain producer, as an application would configure it. `allow.auto.create.topics` keeps
/// librdkafka's producer default (ask the broker to create), so only the broker can say no.
fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.timeout.ms", "5000")
        .create()
        .expect("producer")
}

fn produce(producer: &FutureProducer, topic: &str) -> Result<(i32, i64), String> {
    let record = FutureRecord::to(topic).key("k").payload("hello");
    block_on(producer.send(record, Duration::from_secs(5)))
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(e, _)| e.to_string())
}

#[test]
fn producing_to_an_unapproved_topic_fails_and_creates_nothing() {
    let producer = producer();

    // The control: the same producer delivers to a topic that exists, so a failure below is the
    // broker's refusal, not a broken client.
    let existing = unique_topic("broker-control");
    kafka_create_topic(&existing, 1);
    let delivered = produce(&producer, &existing);
    kafka_delete_topic(&existing);
    assert!(
        delivered.is_ok(),
        "control produce to an existing topic failed: {delivered:?}"
    );

    let topic = unique_topic("never-approved");
    let result = produce(&producer, &topic);
    assert!(
        result.is_err(),
        "produce to unapproved topic {topic} was delivered: {result:?}"
    );
    assert_eq!(
        kafka_topic_partitions(&topic),
        None,
        "the broker created {topic} on produce: auto.create.topics.enable is on"
    );
}
