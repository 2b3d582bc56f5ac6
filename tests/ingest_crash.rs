//! `kill -9` of KafFlow while it holds acknowledged records, and while it drains them into
//! Kafka: after a restart every acknowledged record reaches Kafka. Duplicates are allowed
//! (delivery is at-least-once), loss is not, and per key the first arrivals keep their order.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{
    assert_numbered_arrived, kafka_read_numbered, numbered_records, ok_count, unique_topic,
    IngestClient, Service,
};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(120);
const REPLY: Duration = Duration::from_secs(30);
const KEYS: u64 = 10;

/// Produces `range` over HTTP in calls of `per_call`; asserts each call was held whole.
fn hold(svc: &Service, topic: &str, range: std::ops::Range<u64>, per_call: u64) {
    let mut start = range.start;
    while start < range.end {
        let end = (start + per_call).min(range.end);
        let (status, reply) = svc.produce("alice", topic, "", &numbered_records(start..end, KEYS));
        assert_eq!(status, 202, "{reply}");
        assert_eq!(reply["held"].as_u64(), Some(end - start), "{reply}");
        start = end;
    }
}

#[test]
fn held_records_survive_kill_9_and_are_published_after_approval() {
    let mut svc = Service::start();
    let topic = unique_topic("crash-held");
    let id = svc.request_topic("alice", &topic, 3);
    hold(&svc, &topic, 0..2000, 500);

    // Records acknowledged on TCP are as durable as those of HTTP.
    svc.grant("bob", &topic, "produce");
    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("bob")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));
    let lines: String = (2000..2500u64)
        .map(|i| {
            let record =
                json!({"topic": topic, "key": format!("k{}", i % KEYS), "value": format!("n-{i}")});
            format!("{record}\n")
        })
        .collect();
    tcp.send(&lines);
    tcp.read_until(REPLY, |l| ok_count(l) == Some(500));

    // SIGKILL the moment the last acknowledgement is in.
    svc.kill9();
    drop(tcp);
    svc.restart();

    let held = svc.held_records("carol", &topic, "held");
    assert_eq!(held.len(), 2500, "held records after restart");
    assert_eq!(svc.metric("kafflow_spool_records"), 2500.0);
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", SETTLE);
    let expected: BTreeSet<u64> = (0..2500).collect();
    let records = kafka_read_numbered(&topic, &expected, SETTLE);
    let duplicates = assert_numbered_arrived(&records, &expected);
    eprintln!(
        "{topic}: {} records read, {duplicates} duplicates",
        records.len()
    );
    svc.wait_topic_counts(&topic, SETTLE, |held, _, published| {
        held == 0 && published == 2500
    });
}

#[test]
fn kill_9_during_provisioning_and_during_the_drain_loses_nothing() {
    let mut svc = Service::start();
    let topic = unique_topic("crash-drain");
    let id = svc.request_topic("alice", &topic, 3);
    let total = 30_000u64;
    hold(&svc, &topic, 0..total, 5000);

    // First kill: right after the approve reply, while the topic is being provisioned.
    svc.approve("carol", &id);
    svc.kill9();
    svc.restart();

    // Second kill: as soon as part of the spool is in Kafka, while the rest drains.
    let deadline = Instant::now() + SETTLE;
    let (held, published) = loop {
        if let Some((held, _, published)) = svc.topic_counts(&topic) {
            if published > 0 {
                break (held, published);
            }
        }
        assert!(
            Instant::now() < deadline,
            "drain never started\nstderr tail:\n{}",
            svc.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    svc.kill9();
    eprintln!("{topic}: killed with {held} held, {published} published");
    if held == 0 {
        eprintln!("{topic}: the drain had finished before the kill; no mid-drain crash this run");
    }
    svc.restart();

    svc.wait_request_status(&id, "completed", SETTLE);
    svc.wait_topic_counts(&topic, SETTLE, |held, _, published| {
        held == 0 && published == total
    });
    let expected: BTreeSet<u64> = (0..total).collect();
    let records = kafka_read_numbered(&topic, &expected, SETTLE);
    let duplicates = assert_numbered_arrived(&records, &expected);
    eprintln!(
        "{topic}: {} records read, {duplicates} duplicates",
        records.len()
    );
    assert_eq!(svc.metric("kafflow_spool_records"), 0.0);
}

#[test]
fn kill_9_right_after_a_reject_still_dead_letters_the_held_records() {
    let mut svc = Service::start();
    let topic = unique_topic("crash-reject");
    let id = svc.request_topic("alice", &topic, 1);
    hold(&svc, &topic, 0..500, 250);
    let (status, body) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{id}/reject"),
        &json!({"reason": "not this one"}),
    );
    assert_eq!(status, 200, "{body}");
    svc.kill9();
    svc.restart();

    let mut dead = Vec::new();
    let moved = common::wait_until(SETTLE, || {
        dead = svc.held_records("carol", &topic, "dead");
        dead.len() == 500
    });
    assert!(
        moved,
        "{} of 500 records dead after the restart",
        dead.len()
    );
    assert!(svc.held_records("carol", &topic, "held").is_empty());
    let numbers: Vec<u64> = dead
        .iter()
        .filter_map(|r| r["value"].as_str().and_then(common::number_of))
        .collect();
    assert_eq!(
        numbers,
        (0..500).collect::<Vec<u64>>(),
        "dead letters in arrival order"
    );
}
