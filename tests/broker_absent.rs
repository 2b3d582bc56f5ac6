//! The broker gone at start-up: `serve` starts anyway, answers reads, holds the records of
//! pending and active topics, says it is not ready and why, and catches up once the broker
//! appears: held records reach Kafka and approvals given meanwhile are provisioned.
//!
//! It stops and starts a broker of its own, never the shared one.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    assert_numbered_arrived, kafka_read_until_at, kafka_topic_partitions_at, number_of,
    numbered_records, unique_topic, wait_until, OwnBroker, Service,
};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(120);

/// Sends numbered records `range` to `topic` until a call is accepted whole (a topic requested a
/// moment ago may be unknown to the publisher for that moment); returns the reply.
fn produce(svc: &Service, topic: &str, range: std::ops::Range<u64>) -> Value {
    let body = numbered_records(range.clone(), 3);
    let mut last = (0, Value::Null);
    let accepted = wait_until(Duration::from_secs(30), || {
        last = svc.produce("alice", topic, "", &body);
        last.0 == 202
    });
    assert!(
        accepted,
        "produce {range:?} to {topic}: {} {}",
        last.0, last.1
    );
    assert_eq!(
        last.1["accepted"].as_u64(),
        Some(range.end - range.start),
        "{}",
        last.1
    );
    last.1
}

fn read_numbered(bootstrap: &str, topic: &str, expected: &BTreeSet<u64>) -> usize {
    let records = kafka_read_until_at(bootstrap, topic, SETTLE, |records| {
        let seen: BTreeSet<u64> = records.iter().filter_map(|r| number_of(&r.value)).collect();
        expected.is_subset(&seen)
    });
    assert_numbered_arrived(&records, expected)
}

#[test]
fn serve_starts_without_its_broker_and_catches_up_when_it_appears() {
    let broker = OwnBroker::start();
    let bootstrap = broker.bootstrap();
    let mut svc = Service::start_at(&bootstrap, |text| {
        text + "\n[publisher]\ndelivery_timeout_ms = 3000\n"
    });
    let active = unique_topic("absent-active");
    svc.provision(&active, 2);
    let reply = produce(&svc, &active, 0..10);
    assert_eq!(reply["published"].as_u64(), Some(10), "{reply}");

    // The broker goes, and KafFlow starts again without it.
    svc.kill9();
    broker.down();
    svc.restart();

    let (status, body) = svc.get_anon("/readyz");
    assert_eq!(status, 503, "/readyz without a broker: {body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["broker_reachable"], false, "the reason: {body}");
    assert_eq!(svc.get_anon("/healthz").0, 200);

    // Reads answer from the log.
    let (status, topic) = svc.topic(&active);
    assert_eq!(
        (status, &topic["status"]),
        (200, &Value::from("active")),
        "{topic}"
    );
    svc.list_all("carol", "/api/v1/topics", "topics");
    let requests = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    assert_eq!(requests.as_array().map(Vec::len), Some(1), "{requests}");
    assert!(!svc.audit(&format!("topic={active}")).is_empty());

    // Records for a pending topic and for an active one are held.
    let pending = unique_topic("absent-pending");
    let pending_id = svc.request_topic("alice", &pending, 2);
    let reply = produce(&svc, &pending, 100..110);
    assert_eq!(reply["held"].as_u64(), Some(10), "{reply}");
    let reply = produce(&svc, &active, 10..20);
    assert_eq!(reply["held"].as_u64(), Some(10), "{reply}");
    let (held, _, _) = svc.topic_counts(&active).expect("active topic");
    assert_eq!(held, 10, "held for the active topic");

    // An approval is recorded; its Kafka work waits for the broker.
    let approved = svc.approve("carol", &pending_id);
    assert_eq!(approved["status"], "approved", "{approved}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(svc.request(&pending_id)["status"], "approved");
    assert_eq!(svc.get_anon("/readyz").0, 503, "ready without a broker");

    // The broker appears: ready again, the approval provisioned, the held records published.
    broker.up();
    svc.wait_ready(SETTLE);
    svc.wait_request_status(&pending_id, "completed", SETTLE);
    svc.wait_topic_status(&pending, "active", SETTLE);
    assert_eq!(kafka_topic_partitions_at(&bootstrap, &pending), Some(2));
    for topic in [&active, &pending] {
        svc.wait_topic_counts(topic, SETTLE, |held, dead, _| held == 0 && dead == 0);
    }
    let duplicates = read_numbered(&bootstrap, &active, &(0..20).collect());
    assert_eq!(duplicates, 0, "records of {active} sent twice");
    let duplicates = read_numbered(&bootstrap, &pending, &(100..110).collect());
    assert_eq!(duplicates, 0, "records of {pending} sent twice");

    // And the records sent now go straight to Kafka.
    let reply = produce(&svc, &active, 20..30);
    assert_eq!(reply["published"].as_u64(), Some(10), "{reply}");
}
