//! Held records whose topic never comes: a rejected or withdrawn request dead-letters them, and
//! they are listed, exported and discarded (the event first, the rows after, finished at the
//! next start when a crash comes in between); held records whose stored headers are damaged;
//! and the bounds of the spool, which answer 429 and accept again once space frees.

mod common;

use std::time::Duration;

use common::{
    assert_error, kafka_topic_partitions, numbered_records, unique_topic, Checks, IngestClient,
    Service,
};
use kafflow::events::{Durability, EventKind, NewEvent, Store};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(60);
const REPLY: Duration = Duration::from_secs(30);

fn values(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["value"].as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

fn n_values(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("n-{i}")).collect()
}

/// Polls the dead-letter listing (as carol) until it holds `n` records.
fn wait_dead(svc: &Service, topic: &str, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    let done = common::wait_until(SETTLE, || {
        last = svc.held_records("carol", topic, "dead");
        last.len() == n
    });
    assert!(
        done,
        "{topic}: {} dead records, expected {n}\nstderr tail:\n{}",
        last.len(),
        svc.stderr_tail()
    );
    last
}

fn reject(svc: &Service, id: &str) {
    let (status, body) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{id}/reject"),
        &json!({"reason": "use the shared topic"}),
    );
    assert_eq!(status, 200, "reject: {body}");
}

#[test]
fn rejected_topic_dead_letters_its_records_for_export_and_discard() {
    let mut svc = Service::start();
    let topic = unique_topic("held-reject");
    let id = svc.request_topic("alice", &topic, 1);
    for call in 0..3u64 {
        let (status, reply) = svc.produce(
            "alice",
            &topic,
            "",
            &numbered_records(call * 10..(call + 1) * 10, 2),
        );
        assert_eq!((status, reply["held"].as_u64()), (202, Some(10)), "{reply}");
    }
    svc.grant("bob", &topic, "produce");
    let (status, reply) = svc.produce(
        "bob",
        &topic,
        "",
        &json!([{"key": "b", "value": {"from": "bob"}, "headers": {"h": "1"}}]),
    );
    assert_eq!((status, reply["held"].as_u64()), (202, Some(1)), "{reply}");
    // While the topic waits, its requester sees every record held for it; bob, who sent
    // with a grant, only his own.
    let seen_by_alice = svc.held_records("alice", &topic, "held");
    assert_eq!(
        seen_by_alice.len(),
        31,
        "the requester sees all held records"
    );
    assert_eq!(
        seen_by_alice[30]["producer"], "bob",
        "{}",
        seen_by_alice[30]
    );
    let seen_by_bob = svc.held_records("bob", &topic, "held");
    assert_eq!(
        seen_by_bob.len(),
        1,
        "bob sees only his own: {seen_by_bob:?}"
    );

    reject(&svc, &id);
    let dead = wait_dead(&svc, &topic, 31);
    assert_eq!(svc.metric("kafflow_dead_lettered_records_total"), 31.0);
    // Dead letters are kept through a kill -9 like held records.
    svc.restart();
    assert_eq!(
        svc.held_records("carol", &topic, "dead"),
        dead,
        "after a restart"
    );
    assert!(
        svc.held_records("carol", &topic, "held").is_empty(),
        "records still held after the reject"
    );

    // The admin sees everything in arrival order; each producer only what it sent.
    let mut expected = n_values(0..30);
    expected.push("<not a string>".into());
    assert_eq!(values(&dead), expected);
    for record in &dead {
        assert_eq!(record["state"], "dead", "{record}");
        assert_eq!(record["topic"], topic.as_str(), "{record}");
    }
    assert_eq!(dead[0]["producer"], "alice");
    assert_eq!(dead[0]["key"], "k0");
    let bobs = &dead[30];
    assert_eq!(bobs["producer"], "bob", "{bobs}");
    assert_eq!(bobs["value"], json!({"from": "bob"}), "{bobs}");
    assert_eq!(bobs["headers"], json!({"h": "1"}), "{bobs}");
    assert_eq!(
        values(&svc.held_records("alice", &topic, "dead")),
        n_values(0..30)
    );
    let seen_by_bob = svc.held_records("bob", &topic, "dead");
    assert_eq!(
        seen_by_bob.len(),
        1,
        "bob sees only his own: {seen_by_bob:?}"
    );
    assert_eq!(seen_by_bob[0]["producer"], "bob");
    let (status, body) = svc.get("erin", &format!("/api/v1/held?topic={topic}&state=dead"));
    assert_eq!(status, 403, "a consumer lists dead records: {body}");

    // Paging: `next` is the last id of a full page.
    let (status, page) = svc.get(
        "carol",
        &format!("/api/v1/held?topic={topic}&state=dead&limit=4"),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        values(page["records"].as_array().expect("records")),
        n_values(0..4)
    );
    assert_eq!(page["next"], page["records"][3]["id"], "{page}");
    let (status, page) = svc.get(
        "carol",
        &format!(
            "/api/v1/held?topic={topic}&state=dead&limit=4&after={}",
            page["next"]
        ),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        values(page["records"].as_array().expect("records")),
        n_values(4..8)
    );

    // Export as NDJSON, by query or by Accept header: the same records, one per line.
    let (status, text) = svc.get(
        "carol",
        &format!("/api/v1/held?topic={topic}&state=dead&format=ndjson"),
    );
    assert_eq!(status, 200, "{text}");
    let text = text
        .as_str()
        .expect("NDJSON is text, not one JSON document");
    let exported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    assert_eq!(exported, dead, "NDJSON export equals the listing");
    let response = reqwest::blocking::Client::new()
        .get(format!(
            "{}/api/v1/held?topic={topic}&state=dead",
            svc.base_url()
        ))
        .bearer_auth(svc.token("alice"))
        .header("Accept", "application/x-ndjson")
        .send()
        .expect("GET held as NDJSON");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/x-ndjson")),
        "content type: {:?}",
        response.headers().get("content-type")
    );
    let text = response.text().expect("body");
    assert_eq!(text.lines().count(), 30, "alice exports her own 30: {text}");

    // Ingest to the rejected topic is refused; nothing ever reached Kafka.
    let closed = svc.produce("alice", &topic, "", &numbered_records(0..1, 1));
    assert_error(&closed, 409, "topic_closed", "produce to a rejected topic");
    let closed = svc.produce("alice", &topic, "?request=true", &numbered_records(0..1, 1));
    assert_error(
        &closed,
        409,
        "topic_closed",
        "produce with request to a rejected topic",
    );
    assert_eq!(kafka_topic_partitions(&topic), None);

    // Only an admin discards, and only dead records.
    let path = format!("/api/v1/held?topic={topic}&state=dead");
    let mut checks = Checks::default();
    checks.expect(
        "the producer discards",
        svc.send("DELETE", &path, Some(svc.token("alice")), None),
        403,
        &["forbidden"],
    );
    checks.expect(
        "a consumer discards",
        svc.send("DELETE", &path, Some(svc.token("erin")), None),
        403,
        &["forbidden"],
    );
    checks.expect(
        "discard held (not dead) records",
        svc.send(
            "DELETE",
            &format!("/api/v1/held?topic={topic}&state=held"),
            Some(svc.token("carol")),
            None,
        ),
        400,
        &["invalid_query"],
    );
    checks.finish();
    assert_eq!(svc.held_records("carol", &topic, "dead").len(), 31);

    let (status, body) = svc.send("DELETE", &path, Some(svc.token("carol")), None);
    assert_eq!(
        (status, body.clone()),
        (200, json!({"discarded": 31})),
        "{body}"
    );
    assert!(svc.held_records("carol", &topic, "dead").is_empty());
    let (status, body) = svc.send("DELETE", &path, Some(svc.token("dave")), None);
    assert_eq!(
        (status, body.clone()),
        (200, json!({"discarded": 0})),
        "{body}"
    );

    let discarded = svc.audit(&format!("topic={topic}&kind=held_discarded"));
    assert!(!discarded.is_empty(), "no held_discarded event");
    assert_eq!(discarded[0]["actor"], "carol", "{}", discarded[0]);
    assert_eq!(discarded[0]["data"]["count"], 31, "{}", discarded[0]);
    // The event names the last record it takes: what a restart needs to finish it.
    assert_eq!(
        discarded[0]["data"]["up_to_id"], dead[30]["id"],
        "{}",
        discarded[0]
    );

    assert_eq!(svc.metric("kafflow_discarded_records_total"), 31.0);
    assert_eq!(svc.metric("kafflow_spool_records"), 0.0);
}

#[test]
fn withdrawn_request_dead_letters_its_records_too() {
    let svc = Service::start();
    let topic = unique_topic("held-withdraw");
    let id = svc.request_topic("bob", &topic, 1);
    let (status, reply) = svc.produce("bob", &topic, "", &numbered_records(0..5, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(5)), "{reply}");
    let (status, body) = svc.post(
        "bob",
        &format!("/api/v1/topic-requests/{id}/withdraw"),
        &json!({}),
    );
    assert_eq!(status, 200, "withdraw: {body}");
    let dead = wait_dead(&svc, &topic, 5);
    assert_eq!(values(&dead), n_values(0..5));
    assert_eq!(
        values(&svc.held_records("bob", &topic, "dead")),
        n_values(0..5)
    );
    assert!(svc.held_records("alice", &topic, "dead").is_empty());
    let closed = svc.produce("bob", &topic, "", &numbered_records(5..6, 1));
    assert_error(&closed, 409, "topic_closed", "produce to a withdrawn topic");
}

#[test]
fn topic_view_counts_held_and_dead_records_before_activation() {
    let svc = Service::start();
    let topic = unique_topic("held-view");
    let id = svc.request_topic("alice", &topic, 1);
    let (status, reply) = svc.produce("alice", &topic, "", &numbered_records(0..7, 1));
    assert_eq!(status, 202, "{reply}");
    let (status, view) = svc.topic(&topic);
    assert_eq!(
        status, 200,
        "view of a pending topic with held records: {view}"
    );
    assert_eq!(view["held"], 7, "{view}");
    assert_eq!(view["status"], "pending", "{view}");
    reject(&svc, &id);
    // A rejected topic has no view; its dead letters are listed instead.
    let dead = common::wait_until(SETTLE, || {
        svc.held_records("carol", &topic, "dead").len() == 7
    });
    assert!(
        dead,
        "the 7 held records were not dead-lettered after the reject"
    );
}

/// Appends `event` to the log of a stopped service, as the service itself would have.
fn append_event(data_dir: &std::path::Path, event: NewEvent) {
    let store = Store::open(data_dir, Durability::Full).expect("open the log");
    let head = store.replay(|_| {}).expect("replay the log");
    let (writer, thread) = store.into_writer(head).expect("writer");
    common::block_on(writer.append(vec![event]))
        .expect("writer reply")
        .expect("commit");
    drop(writer);
    thread.join();
}

#[test]
fn a_discard_committed_before_a_crash_is_finished_at_the_next_start() {
    let mut svc = Service::start();
    let topic = unique_topic("held-discard-crash");
    let id = svc.request_topic("alice", &topic, 1);
    let (status, reply) = svc.produce("alice", &topic, "", &numbered_records(0..5, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(5)), "{reply}");
    reject(&svc, &id);
    let dead = wait_dead(&svc, &topic, 5);
    let up_to_id = dead[4]["id"].as_i64().expect("id");

    // What a kill between the commit of `held_discarded` and the deletion leaves behind: the
    // event in the log, the rows still in the spool.
    svc.kill9();
    append_event(
        svc.data_dir(),
        NewEvent::now(
            "carol",
            Some(&topic),
            None,
            EventKind::HeldDiscarded {
                count: 5,
                up_to_id: Some(up_to_id),
            },
        ),
    );
    svc.restart();
    assert!(
        svc.held_records("carol", &topic, "dead").is_empty(),
        "the start finishes the committed discard"
    );
    assert_eq!(svc.metric("kafflow_spool_records"), 0.0);
    assert_eq!(svc.metric("kafflow_spool_bytes"), 0.0);
    assert_eq!(svc.metric("kafflow_discarded_records_total"), 5.0);

    // Nothing is counted twice: one event in the log, and a new discard finds nothing.
    let (status, body) = svc.send(
        "DELETE",
        &format!("/api/v1/held?topic={topic}&state=dead"),
        Some(svc.token("carol")),
        None,
    );
    assert_eq!(
        (status, body.clone()),
        (200, json!({"discarded": 0})),
        "{body}"
    );
    let events = svc.audit(&format!("topic={topic}&kind=held_discarded"));
    let counts: Vec<&Value> = events.iter().map(|e| &e["data"]["count"]).collect();
    assert_eq!(counts, [&json!(5), &json!(0)], "{events:?}");
    // And a further restart deletes nothing more.
    svc.restart();
    assert_eq!(svc.metric("kafflow_discarded_records_total"), 0.0);
}

#[test]
fn a_held_record_with_damaged_headers_is_dead_lettered_not_sent_without_them() {
    let mut svc = Service::start();
    let topic = unique_topic("held-bad-headers");
    let id = svc.request_topic("alice", &topic, 1);
    let records: Vec<Value> = (0..3)
        .map(|i| json!({"key": "k", "value": format!("n-{i}"), "headers": {"h": i.to_string()}}))
        .collect();
    let (status, reply) = svc.produce("alice", &topic, "", &Value::Array(records));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(3)), "{reply}");
    let held = svc.held_records("carol", &topic, "held");
    assert_eq!(held.len(), 3);

    // The middle record's stored headers are damaged while the service is down.
    svc.kill9();
    let spool = rusqlite::Connection::open(svc.data_dir().join("spool.db")).expect("spool.db");
    let damaged = spool
        .execute(
            "UPDATE held SET header_list = X'00000001' WHERE id = ?1",
            [held[1]["id"].as_i64().expect("id")],
        )
        .expect("damage the headers");
    assert_eq!(damaged, 1);
    drop(spool);
    svc.restart();

    // The listing says what is wrong instead of showing the record without headers.
    let listed = svc.held_records("carol", &topic, "held");
    assert_eq!(listed.len(), 3);
    let error = listed[1]["headers_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be decoded"), "{}", listed[1]);
    assert!(listed[0].get("headers_error").is_none(), "{}", listed[0]);
    assert_eq!(listed[2]["headers"], json!({"h": "2"}));

    // Approval: the intact records reach Kafka with their headers, the damaged one is
    // dead-lettered.
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", SETTLE);
    let dead = wait_dead(&svc, &topic, 1);
    assert_eq!(values(&dead), ["n-1"]);
    assert!(dead[0]["headers_error"].is_string(), "{}", dead[0]);
    let arrived = common::kafka_read_until(&topic, SETTLE, |r| r.len() >= 2);
    let got: Vec<(String, Option<String>)> = arrived
        .iter()
        .map(|r| (r.value.clone(), r.headers.get("h").cloned()))
        .collect();
    assert_eq!(
        got,
        [
            ("n-0".to_string(), Some("0".to_string())),
            ("n-2".to_string(), Some("2".to_string()))
        ]
    );
    svc.wait_topic_counts(&topic, SETTLE, |held, dead, published| {
        (held, dead, published) == (0, 1, 2)
    });
    assert_eq!(svc.metric("kafflow_undecodable_held_records_total"), 1.0);
}

/// `[spool]` bounds small enough to reach in a test.
fn bounded(text: String) -> String {
    text + "\n[spool]\nmax_records_per_topic = 100\nmax_bytes_total = 20000\n"
}

#[test]
fn the_spool_bound_per_topic_answers_429_and_recovers() {
    let svc = Service::start_with_config(bounded);
    let topic = unique_topic("held-bound");
    let id = svc.request_topic("alice", &topic, 1);
    // The bound is the topic's, whoever sends: bob may send too.
    svc.grant("bob", &topic, "produce");

    let (status, reply) = svc.produce("alice", &topic, "", &numbered_records(0..60, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(60)), "{reply}");
    let full = svc.produce("alice", &topic, "", &numbered_records(60..120, 1));
    assert_error(&full, 429, "spool_full", "a call past the per-topic bound");
    // The refused call took nothing: exactly up to the bound still fits.
    let (status, reply) = svc.produce("alice", &topic, "", &numbered_records(60..100, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(40)), "{reply}");
    let full = svc.produce("bob", &topic, "", &numbered_records(100..101, 1));
    assert_error(&full, 429, "spool_full", "one record past the bound");

    // The same on TCP: ERR for the line, and the connection goes on.
    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("alice")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));
    tcp.send_line(&json!({"topic": topic, "value": "n-100"}).to_string());
    let reply = tcp.read_line(REPLY).unwrap_or_default();
    assert!(reply.starts_with("ERR 2 spool_full "), "{reply}");
    assert_eq!(svc.metric("kafflow_spool_full_total"), 3.0);

    // Another topic is not held back by this one's bound.
    let other = unique_topic("held-bound-other");
    svc.request_topic("bob", &other, 1);
    let (status, reply) = svc.produce("bob", &other, "", &numbered_records(0..10, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(10)), "{reply}");

    // Approval drains the spool: the topic takes records again.
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", SETTLE);
    svc.wait_topic_counts(&topic, SETTLE, |held, _, published| {
        held == 0 && published == 100
    });
    let (status, reply) = svc.produce("alice", &topic, "", &numbered_records(100..200, 1));
    assert_eq!(
        (status, reply["accepted"].as_u64()),
        (202, Some(100)),
        "{reply}"
    );
    tcp.send_line(&json!({"topic": topic, "value": "n-200"}).to_string());
    tcp.finish_sending();
    let replies = tcp.read_to_end(REPLY);
    assert_eq!(
        replies.last().map(String::as_str),
        Some("OK 1"),
        "{replies:?}"
    );

    let expected = (0..201).collect();
    let records = common::kafka_read_numbered(&topic, &expected, SETTLE);
    assert_eq!(common::assert_numbered_arrived(&records, &expected), 0);
}

#[test]
fn the_spool_bound_in_bytes_answers_429_until_dead_records_are_discarded() {
    let svc = Service::start_with_config(bounded);
    let filler = "x".repeat(995);
    let big = |range: std::ops::Range<u64>| {
        Value::Array(
            range
                .map(|i| json!({"value": format!("n-{i:03}{filler}")}))
                .collect(),
        )
    };

    // 15 records of 1,000 bytes, then rejected: dead, but still in the spool.
    let first = unique_topic("held-bytes");
    let first_id = svc.request_topic("alice", &first, 1);
    let (status, reply) = svc.produce("alice", &first, "", &big(0..15));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(15)), "{reply}");
    reject(&svc, &first_id);
    wait_dead(&svc, &first, 15);
    assert_eq!(svc.metric("kafflow_spool_bytes"), 15_000.0);

    let second = unique_topic("held-bytes-next");
    svc.request_topic("bob", &second, 1);
    let full = svc.produce("bob", &second, "", &big(0..10));
    assert_error(
        &full,
        429,
        "spool_full",
        "a call past the total bytes bound",
    );
    let (status, reply) = svc.produce("bob", &second, "", &big(0..5));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(5)), "{reply}");
    let full = svc.produce("bob", &second, "", &big(5..6));
    assert_error(&full, 429, "spool_full", "one record past the bytes bound");

    let (status, body) = svc.send(
        "DELETE",
        &format!("/api/v1/held?topic={first}&state=dead"),
        Some(svc.token("carol")),
        None,
    );
    assert_eq!(
        (status, body.clone()),
        (200, json!({"discarded": 15})),
        "{body}"
    );
    assert_eq!(svc.metric("kafflow_spool_bytes"), 5_000.0);
    let (status, reply) = svc.produce("bob", &second, "", &big(5..15));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(10)), "{reply}");
    assert_eq!(svc.metric("kafflow_spool_full_total"), 2.0);
}

#[test]
fn discarding_records_with_headers_frees_all_their_bytes() {
    let svc = Service::start_with_config(bounded);
    let header = "h".repeat(1000);
    let first = unique_topic("held-headers");
    let id = svc.request_topic("alice", &first, 1);
    let records: Vec<Value> = (0..15)
        .map(|i| json!({"value": format!("n-{i}"), "headers": {"big": header}}))
        .collect();
    let (status, reply) = svc.produce("alice", &first, "", &Value::Array(records));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(15)), "{reply}");
    reject(&svc, &id);
    wait_dead(&svc, &first, 15);
    let (status, body) = svc.send(
        "DELETE",
        &format!("/api/v1/held?topic={first}&state=dead"),
        Some(svc.token("carol")),
        None,
    );
    assert_eq!(
        (status, body.clone()),
        (200, json!({"discarded": 15})),
        "{body}"
    );
    assert_eq!(svc.metric("kafflow_spool_records"), 0.0);
    assert_eq!(svc.metric("kafflow_spool_bytes"), 0.0, "the spool is empty");

    // With the spool empty, 10,000 bytes fit under a 20,000-byte bound.
    let second = unique_topic("held-headers-next");
    svc.request_topic("bob", &second, 1);
    let filler = "x".repeat(995);
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"value": format!("n-{i:03}{filler}")}))
        .collect();
    let (status, reply) = svc.produce("bob", &second, "", &Value::Array(records));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(10)), "{reply}");
}

#[test]
fn failed_provisioning_dead_letters_and_deletion_closes_the_topic() {
    let svc = Service::start();
    // A topic of another shape is already in Kafka: provisioning fails.
    let clash = unique_topic("held-failed");
    common::kafka_create_topic(&clash, 2);
    let id = svc.request_topic("alice", &clash, 1);
    let (status, reply) = svc.produce("alice", &clash, "", &numbered_records(0..4, 1));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(4)), "{reply}");
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "failed", SETTLE);
    assert_eq!(values(&wait_dead(&svc, &clash, 4)), n_values(0..4));
    let closed = svc.produce("alice", &clash, "", &numbered_records(4..5, 1));
    assert_error(&closed, 409, "topic_closed", "produce to a failed topic");
    // KafFlow did not write into the topic it does not manage.
    let offsets = kafka_high_watermarks(&clash);
    assert!(offsets.iter().all(|&o| o == 0), "{clash}: {offsets:?}");
    common::kafka_delete_topic(&clash);

    // A deleted topic takes no records either.
    let gone = unique_topic("held-deleted");
    svc.provision(&gone, 1);
    let (status, reply) = svc.produce("alice", &gone, "", &numbered_records(0..2, 1));
    assert_eq!(
        (status, reply["published"].as_u64()),
        (202, Some(2)),
        "{reply}"
    );
    let (status, deletion) = svc.post(
        "alice",
        &format!("/api/v1/topics/{gone}/deletion-requests"),
        &json!({"reason": "done with it"}),
    );
    assert_eq!(status, 201, "{deletion}");
    svc.approve("carol", &common::id_of(&deletion));
    svc.wait_topic_status(&gone, "deleted", SETTLE);
    let closed = svc.produce("alice", &gone, "", &numbered_records(2..3, 1));
    assert_error(&closed, 409, "topic_closed", "produce to a deleted topic");
}

/// The high watermark of each partition of `topic`.
fn kafka_high_watermarks(topic: &str) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let partitions = kafka_topic_partitions(topic).expect("topic in Kafka") as i32;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .expect("kafka consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// At start the publisher is told the routes of live and pending topics only; a topic closed
/// for good is looked up the first time records come for it, and refused as before.
#[test]
fn a_topic_closed_before_a_restart_is_still_closed_after_it() {
    let mut svc = Service::start();
    let topic = unique_topic("closed-restart");
    let id = svc.request_topic("alice", &topic, 1);
    let (status, reply) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{id}/reject"),
        &json!({"reason": "no"}),
    );
    assert_eq!(status, 200, "{reply}");
    svc.restart();
    let closed = svc.produce("alice", &topic, "", &numbered_records(0..1, 1));
    assert_error(
        &closed,
        409,
        "topic_closed",
        "produce to a rejected topic after a restart",
    );
    let closed = svc.produce("alice", &topic, "?request=true", &numbered_records(0..1, 1));
    assert_error(
        &closed,
        409,
        "topic_closed",
        "asked again by producing, after a restart",
    );
    let unknown = svc.produce(
        "alice",
        &unique_topic("never-asked"),
        "",
        &numbered_records(0..1, 1),
    );
    assert_error(&unknown, 404, "unknown_topic", "a name never asked for");
}
