//! Producing through KafFlow end to end, read back with a plain Kafka consumer: records for a
//! pending topic are held and reach Kafka in order once it is approved, records for an active
//! topic go straight through, the HTTP refusals, the TCP line protocol and `kafflow produce`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    assert_error, assert_numbered_arrived, kafka_read_numbered, kafka_read_until, numbered_records,
    ok_count, run_kafflow_with_stdin, unique_topic, wait_until, Checks, IngestClient, KafkaRecord,
    Service,
};
use serde_json::{json, Value};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(60);
const REPLY: Duration = Duration::from_secs(30);

fn records_path(topic: &str) -> String {
    format!("/api/v1/topics/{topic}/records")
}

/// Record `i` of the mixed test set: three keys, string, object and number values, headers on
/// every other record.
fn mixed(i: u64) -> Value {
    let value = match i % 3 {
        0 => json!(format!("v-{i}")),
        1 => json!({"n": i, "tags": ["a", "b"], "ok": true}),
        _ => json!(i),
    };
    let mut record = json!({"key": format!("k{}", i % 3), "value": value});
    if i.is_multiple_of(2) {
        record["headers"] = json!({"n": i.to_string(), "source": "ingest-test"});
    }
    record
}

/// Which mixed record a Kafka record is, checking that its value went as the contract says:
/// a JSON string as its text, anything else as its JSON text.
fn decode_mixed(record: &KafkaRecord) -> u64 {
    let text = &record.value;
    let i = match text.strip_prefix("v-") {
        Some(n) => n.parse().unwrap_or_else(|_| panic!("bad value {text:?}")),
        None => {
            let parsed: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("value {text:?} is neither text nor JSON: {e}"));
            parsed
                .as_u64()
                .or_else(|| parsed["n"].as_u64())
                .unwrap_or_else(|| panic!("unexpected value {text:?}"))
        }
    };
    let sent = mixed(i);
    match &sent["value"] {
        Value::String(s) => assert_eq!(text, s, "string value sent as its text"),
        other => {
            let parsed: Value = serde_json::from_str(text).expect("JSON value");
            assert_eq!(&parsed, other, "JSON value sent as JSON text: {text}");
        }
    }
    assert_eq!(record.key.as_deref(), sent["key"].as_str(), "key of {i}");
    let headers: BTreeMap<String, String> = sent["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(record.headers, headers, "headers of {i}");
    i
}

/// Per key, the record numbers in the order Kafka has them.
fn order_by_key(records: &[KafkaRecord]) -> BTreeMap<String, Vec<u64>> {
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in records {
        let i = decode_mixed(record);
        by_key
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push(i);
    }
    by_key
}

#[test]
fn held_records_reach_kafka_in_order_when_the_topic_is_approved() {
    let svc = Service::start();
    let topic = unique_topic("ingest-held");
    let id = svc.request_topic("alice", &topic, 3);

    // Four calls while the request is pending, one of them NDJSON.
    let total = 1000u64;
    for call in 0..4u64 {
        let range = call * 250..(call + 1) * 250;
        let records: Vec<Value> = range.map(mixed).collect();
        let reply = if call == 2 {
            let body: String = records.iter().map(|r| format!("{r}\n")).collect();
            svc.produce_ndjson("alice", &topic, &body)
        } else {
            svc.produce("alice", &topic, "", &Value::Array(records))
        };
        assert_eq!(reply.0, 202, "call {call}: {}", reply.1);
        assert_eq!(
            reply.1,
            json!({"accepted": 250, "published": 0, "held": 250}),
            "call {call}"
        );
    }

    // The held records are listed as sent, oldest first, to their producer.
    let held = svc.held_records("alice", &topic, "held");
    assert_eq!(held.len() as u64, total);
    for (i, record) in held.iter().enumerate() {
        let sent = mixed(i as u64);
        assert_eq!(record["topic"], topic.as_str(), "{record}");
        assert_eq!(record["state"], "held", "{record}");
        assert_eq!(record["producer"], "alice", "{record}");
        assert!(record["accepted_at"].is_string(), "{record}");
        assert_eq!(record["key"], sent["key"], "{record}");
        assert_eq!(record["value"], sent["value"], "{record}");
        let headers = sent.get("headers").cloned().unwrap_or(json!({}));
        assert_eq!(record["headers"], headers, "{record}");
    }
    assert!(
        held.windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()),
        "held records not listed in id order"
    );
    assert_eq!(svc.metric("kafflow_spool_records"), total as f64);

    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", SETTLE);
    svc.wait_topic_counts(&topic, SETTLE, |held, _, published| {
        held == 0 && published == total
    });

    let records = kafka_read_until(&topic, KAFKA_TIMEOUT, |r| r.len() as u64 >= total);
    assert_eq!(
        records.len() as u64,
        total,
        "no crash, no broker trouble: each record exactly once"
    );
    let by_key = order_by_key(&records);
    for (key, numbers) in &by_key {
        let sent: Vec<u64> = (0..total)
            .filter(|i| format!("k{}", i % 3) == *key)
            .collect();
        assert_eq!(
            numbers, &sent,
            "key {key}: Kafka order differs from send order"
        );
    }

    // Once the spool is empty the topic takes the direct path: wait for the first record that
    // reports `published`, then a whole call goes straight to Kafka.
    let mut next = total;
    let direct = wait_until(Duration::from_secs(10), || {
        let (status, reply) = svc.produce("alice", &topic, "", &json!([mixed(next)]));
        assert_eq!(status, 202, "{reply}");
        next += 1;
        reply["published"] == 1
    });
    assert!(direct, "records still held after the spool drained");
    let records: Vec<Value> = (next..next + 100).map(mixed).collect();
    let (status, reply) = svc.produce("alice", &topic, "", &Value::Array(records));
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply, json!({"accepted": 100, "published": 100, "held": 0}));
    let all = next + 100;

    let records = kafka_read_until(&topic, KAFKA_TIMEOUT, |r| r.len() as u64 >= all);
    assert_eq!(records.len() as u64, all);
    for (key, numbers) in order_by_key(&records) {
        let sent: Vec<u64> = (0..all).filter(|i| format!("k{}", i % 3) == key).collect();
        assert_eq!(
            numbers, sent,
            "key {key}: Kafka order differs from send order"
        );
    }
    svc.wait_topic_counts(&topic, SETTLE, |held, dead, published| {
        held == 0 && dead == 0 && published == all
    });

    assert_eq!(svc.metric("kafflow_ingested_records_total"), all as f64);
    assert_eq!(svc.metric("kafflow_published_records_total"), all as f64);
    assert!(svc.metric("kafflow_held_records_total") >= total as f64);
    assert!(svc.metric("kafflow_drained_records_total") >= total as f64);
    assert_eq!(svc.metric("kafflow_spool_records"), 0.0);
    assert_eq!(svc.metric("kafflow_spool_bytes"), 0.0);
    assert_eq!(svc.metric("kafflow_dead_lettered_records_total"), 0.0);
}

#[test]
fn produce_with_request_files_a_request_and_holds_the_records() {
    let svc = Service::start();
    let topic = unique_topic("ingest-request");

    let unknown = svc.produce("alice", &topic, "", &numbered_records(0..5, 2));
    assert_error(
        &unknown,
        404,
        "unknown_topic",
        "produce to an unknown topic",
    );
    let (status, reply) = svc.produce("alice", &topic, "?request=true", &numbered_records(0..5, 2));
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply, json!({"accepted": 5, "published": 0, "held": 5}));

    // The request is alice's, with the policy defaults, pending.
    let requests = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    let mine: Vec<&Value> = requests
        .as_array()
        .expect("request list")
        .iter()
        .filter(|r| r["topic"] == topic.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{requests}");
    let request = mine[0];
    assert_eq!(request["requested_by"], "alice", "{request}");
    assert_eq!(request["status"], "pending", "{request}");
    assert_eq!(request["partitions"], 3, "{request}");
    let id = request["id"].as_str().expect("id").to_string();

    // Now the topic is pending: more records are held without `request`, from its owner and
    // from producers granted access while it is pending.
    svc.grant("bob", &topic, "produce");
    let (status, reply) = svc.produce("bob", &topic, "", &numbered_records(5..10, 2));
    assert_eq!((status, reply["held"].as_u64()), (202, Some(5)), "{reply}");
    // A second `request=true` does not file another request.
    let (status, reply) = svc.produce(
        "alice",
        &topic,
        "?request=true",
        &numbered_records(10..15, 2),
    );
    assert_eq!((status, reply["held"].as_u64()), (202, Some(5)), "{reply}");

    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", SETTLE);
    let expected: BTreeSet<u64> = (0..15).collect();
    let records = kafka_read_numbered(&topic, &expected, KAFKA_TIMEOUT);
    assert_eq!(
        assert_numbered_arrived(&records, &expected),
        0,
        "duplicates"
    );
}

#[test]
fn ingest_refusals() {
    let svc = Service::start();
    let active = unique_topic("ingest-refuse");
    svc.provision(&active, 1);
    let good = numbered_records(0..3, 1);
    let path = records_path(&active);
    let mut checks = Checks::default();

    checks.expect(
        "no token",
        svc.send(
            "POST",
            &path,
            None,
            Some((good.to_string().into_bytes(), "application/json")),
        ),
        401,
        &["unauthorized"],
    );
    checks.expect(
        "a consumer produces",
        svc.produce("erin", &active, "", &good),
        403,
        &["forbidden"],
    );
    checks.expect(
        "an admin without the producer role produces",
        svc.produce("carol", &active, "", &good),
        403,
        &["forbidden"],
    );
    checks.expect(
        "unknown topic",
        svc.produce("alice", &unique_topic("ingest-nowhere"), "", &good),
        404,
        &["unknown_topic"],
    );
    checks.expect(
        "not JSON",
        svc.post_raw("alice", &path, b"{not json"),
        400,
        &["invalid_json", "invalid_record"],
    );
    checks.expect(
        "an object instead of an array",
        svc.produce("alice", &active, "", &json!({"value": 1})),
        400,
        &["invalid_json", "invalid_record"],
    );
    checks.expect(
        "no records",
        svc.produce("alice", &active, "", &json!([])),
        400,
        &["invalid_record"],
    );
    checks.expect(
        "an unknown query parameter",
        svc.produce("alice", &active, "?bogus=1", &good),
        400,
        &["invalid_query"],
    );
    checks.finish();

    // One bad record refuses the whole call and names its index.
    let bad_records: [(&str, Value); 5] = [
        ("missing value", json!({"key": "k"})),
        ("numeric key", json!({"key": 5, "value": "x"})),
        (
            "non-string header",
            json!({"value": "x", "headers": {"h": 1}}),
        ),
        ("unknown field", json!({"value": "x", "partition": 2})),
        ("another topic", json!({"topic": "elsewhere", "value": "x"})),
    ];
    for (what, bad) in bad_records {
        let body = json!([{"value": "ok-0"}, {"value": "ok-1"}, bad, {"value": "ok-3"}]);
        let reply = svc.produce("alice", &active, "", &body);
        assert_error(&reply, 400, "invalid_record", what);
        assert!(
            names_index(&reply.1, 2),
            "{what}: index 2 not named: {}",
            reply.1
        );
    }
    let ndjson = "{\"value\":\"ok\"}\n{\"value\":\"ok\"}\nnot json\n";
    let reply = svc.produce_ndjson("alice", &active, ndjson);
    assert_error(&reply, 400, "invalid_record", "bad NDJSON line");
    assert!(names_index(&reply.1, 2), "index 2 not named: {}", reply.1);

    // Too large: a value over `max_record_bytes` (1 MiB), and a body over 16 MiB.
    let big = "x".repeat((1 << 20) + 1);
    let reply = svc.produce(
        "alice",
        &active,
        "",
        &json!([{"value": "ok"}, {"value": big}]),
    );
    assert_error(
        &reply,
        400,
        "invalid_record",
        "a value over the record limit",
    );
    assert!(names_index(&reply.1, 1), "index 1 not named: {}", reply.1);
    // Only just over, so the whole body is sent before the server answers and closes.
    let limit = 16 << 20;
    let mut huge: Vec<Value> = (0..16)
        .map(|_| json!({"value": "x".repeat(1_000_000)}))
        .collect();
    let used = serde_json::to_vec(&huge).expect("json").len();
    let pad = limit + 1 - used - r#",{"value":""}"#.len();
    huge.push(json!({"value": "x".repeat(pad)}));
    let body = serde_json::to_vec(&huge).expect("json");
    assert_eq!(body.len(), limit + 1);
    let reply = svc.post_raw("alice", &path, &body);
    assert_error(&reply, 413, "payload_too_large", "a body over 16 MiB");

    // Nothing of the refused calls reached Kafka; a good call does.
    let (status, reply) = svc.produce("alice", &active, "", &good);
    assert_eq!(
        (status, reply["published"].as_u64()),
        (202, Some(3)),
        "{reply}"
    );
    let records = kafka_read_until(&active, KAFKA_TIMEOUT, |r| r.len() >= 3);
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["n-0", "n-1", "n-2"]);
    assert_eq!(svc.metric("kafflow_ingested_records_total"), 3.0);
}

/// Whether an error message names `index` as a number of its own.
fn names_index(body: &Value, index: u64) -> bool {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .any(|n| n.parse() == Ok(index))
}

/// Replies of the ingest listener split into `OK` counts and `ERR` lines.
fn split_replies(lines: &[String]) -> (Vec<u64>, Vec<String>) {
    let mut oks = Vec::new();
    let mut errs = Vec::new();
    for line in lines {
        if let Some(n) = ok_count(line) {
            oks.push(n);
        } else if line.starts_with("ERR ") {
            errs.push(line.clone());
        } else {
            panic!("unexpected reply {line:?} in {lines:?}");
        }
    }
    assert!(
        oks.windows(2).all(|w| w[0] <= w[1]),
        "OK counts go backwards: {oks:?}"
    );
    (oks, errs)
}

/// The (line, code) of an `ERR <line> <code> <message>` reply, checking it has a message.
fn err_parts(line: &str) -> (u64, String) {
    let mut parts = line.splitn(4, ' ');
    assert_eq!(parts.next(), Some("ERR"), "{line}");
    let number = parts.next().and_then(|n| n.parse().ok());
    let code = parts.next().unwrap_or_default().to_string();
    let message = parts.next().unwrap_or_default();
    assert!(!message.trim().is_empty(), "ERR without a message: {line}");
    (
        number.unwrap_or_else(|| panic!("no line number: {line}")),
        code,
    )
}

#[test]
fn tcp_answers_bad_lines_with_err_and_goes_on() {
    let svc = Service::start();
    let active = unique_topic("tcp-active");
    svc.provision(&active, 1);
    let pending = unique_topic("tcp-pending");
    let pending_id = svc.request_topic("bob", &pending, 1);
    // alice sends to bob's pending topic with a grant asked for while it waits.
    svc.grant("alice", &pending, "produce");
    let rejected = unique_topic("tcp-rejected");
    let rejected_id = svc.request_topic("bob", &rejected, 1);
    let (status, body) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{rejected_id}/reject"),
        &json!({"reason": "not needed"}),
    );
    assert_eq!(status, 200, "{body}");

    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("alice")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));

    let line = |topic: &str, n: u64| {
        json!({"topic": topic, "key": "k", "value": format!("n-{n}")}).to_string()
    };
    // Line 1 was AUTH.
    let first = [
        line(&active, 0),                                                   // 2
        "this is not json".to_string(),                                     // 3
        json!({"value": "n-100"}).to_string(),                              // 4: no topic
        line(&unique_topic("tcp-unknown"), 101),                            // 5
        json!({"topic": active, "key": "k"}).to_string(),                   // 6: no value
        line(&active, 1),                                                   // 7
        line(&pending, 2),                                                  // 8: held
        line(&rejected, 102),                                               // 9
        json!({"topic": active, "value": "x", "partition": 1}).to_string(), // 10
        line(&active, 3),                                                   // 11
    ];
    for l in &first {
        tcp.send_line(l);
    }
    let mut replies = tcp.read_until(REPLY, |l| ok_count(l) == Some(4));
    // The refusals of the first lines may still be on their way after the OK.
    let wanted_errs = 6;
    while replies.iter().filter(|l| l.starts_with("ERR ")).count() < wanted_errs {
        match tcp.read_line(REPLY) {
            Some(l) => replies.push(l),
            None => panic!("connection closed: {replies:?}"),
        }
    }

    // The connection goes on after the refusals.
    let second = [line(&active, 4), "{".to_string(), line(&active, 5)]; // 12, 13, 14
    for l in &second {
        tcp.send_line(l);
    }
    tcp.finish_sending();
    replies.extend(tcp.read_to_end(REPLY));

    let (oks, errs) = split_replies(&replies);
    assert_eq!(
        oks.last(),
        Some(&6),
        "final OK counts every accepted record: {replies:?}"
    );
    // Refusals of parsing and of routing may come in either order: the line number says which.
    let mut errs: Vec<(u64, String)> = errs.iter().map(|e| err_parts(e)).collect();
    errs.sort();
    assert_eq!(
        errs,
        [
            (3, "invalid_record".to_string()),
            (4, "invalid_record".to_string()),
            (5, "unknown_topic".to_string()),
            (6, "invalid_record".to_string()),
            (9, "topic_closed".to_string()),
            (10, "invalid_record".to_string()),
            (13, "invalid_record".to_string()),
        ],
        "{replies:?}"
    );

    let records = kafka_read_until(&active, KAFKA_TIMEOUT, |r| r.len() >= 5);
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["n-0", "n-1", "n-3", "n-4", "n-5"]);
    let held = svc.held_records("alice", &pending, "held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["value"], "n-2");
    svc.approve("carol", &pending_id);
    svc.wait_request_status(&pending_id, "completed", SETTLE);
    let records = kafka_read_until(&pending, KAFKA_TIMEOUT, |r| !r.is_empty());
    assert_eq!(records[0].value, "n-2");
}

#[test]
fn tcp_refuses_a_bad_auth_and_closes() {
    let svc = Service::start();
    let topic = unique_topic("tcp-auth");
    svc.provision(&topic, 1);
    let record = json!({"topic": topic, "value": "n-0"}).to_string();

    for (what, auth, code) in [
        (
            "wrong token",
            "AUTH not-a-token".to_string(),
            "unauthorized",
        ),
        ("no AUTH line", record.clone(), "unauthorized"),
        (
            "a consumer",
            format!("AUTH {}", svc.token("erin")),
            "forbidden",
        ),
    ] {
        let mut tcp = IngestClient::connect(svc.ingest_addr());
        tcp.send_line(&auth);
        let reply = tcp.read_line(REPLY).unwrap_or_default();
        let (line, got) = err_parts(&reply);
        assert_eq!((line, got.as_str()), (1, code), "{what}: {reply}");
        // The server closes after the refusal, whatever else was sent.
        let rest = tcp.read_to_end(REPLY);
        assert!(
            rest.is_empty(),
            "{what}: more replies after the refusal: {rest:?}"
        );
    }
    assert_eq!(svc.metric("kafflow_ingested_records_total"), 0.0);
}

#[test]
fn tcp_acknowledges_a_stream_without_waiting_for_its_end() {
    let svc = Service::start();
    let topic = unique_topic("tcp-stream");
    svc.provision(&topic, 1);
    let total = 20_000u64;

    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("alice")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));
    let body: String = (0..total)
        .map(|i| {
            format!(
                "{}\n",
                json!({"topic": topic, "key": format!("k{}", i % 4), "value": format!("n-{i}")})
            )
        })
        .collect();
    tcp.send(&body);
    // Everything is acknowledged while the connection is still open for writing.
    let replies = tcp.read_until(KAFKA_TIMEOUT, |l| ok_count(l) == Some(total));
    let (oks, errs) = split_replies(&replies);
    assert!(errs.is_empty(), "{errs:?}");
    eprintln!("{} OK lines for {total} records", oks.len());
    tcp.finish_sending();
    assert!(
        tcp.read_to_end(REPLY).is_empty(),
        "nothing after the last OK"
    );

    let expected: BTreeSet<u64> = (0..total).collect();
    let records = kafka_read_numbered(&topic, &expected, KAFKA_TIMEOUT);
    assert_eq!(
        assert_numbered_arrived(&records, &expected),
        0,
        "duplicates"
    );
    // One partition: the whole stream is in send order.
    let numbers: Vec<u64> = records
        .iter()
        .filter_map(|r| common::number_of(&r.value))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "stream out of order"
    );
    svc.wait_topic_counts(&topic, SETTLE, |_, _, published| published == total);
}

#[test]
fn kafflow_produce_streams_stdin_and_fails_on_an_unknown_topic() {
    let svc = Service::start();
    let topic = unique_topic("cli-produce");
    svc.provision(&topic, 1);
    let ingest = format!("tcp://{}", svc.ingest_addr());
    let total = 500u64;
    let input: String = (0..total).map(|i| format!("n-{i}\n")).collect();
    let produce = |topic: &str, extra: &[&str], token: &str, input: Vec<u8>| {
        let mut args = vec![
            "produce",
            "--topic",
            topic,
            "--ingest",
            &ingest,
            "--server",
            svc.base_url(),
            "--token",
            token,
        ];
        args.extend_from_slice(extra);
        run_kafflow_with_stdin(&args, input, REPLY)
    };

    let (status, stdout, stderr) = produce(&topic, &[], svc.token("alice"), input.into_bytes());
    assert!(
        status.is_some_and(|s| s.success()),
        "kafflow produce: {status:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{total} sent, {total} acknowledged, 0 held")),
        "summary line with the held count from --server: {stderr}"
    );
    let records = kafka_read_until(&topic, KAFKA_TIMEOUT, |r| r.len() as u64 >= total);
    let values: Vec<String> = records.iter().map(|r| r.value.clone()).collect();
    let sent: Vec<String> = (0..total).map(|i| format!("n-{i}")).collect();
    assert_eq!(values, sent, "stdin lines as values, in order, once each");

    // An unknown topic: the first refusal stops the sending; one error line, not one per record.
    let nowhere = unique_topic("cli-nowhere");
    let many: String = (0..5000).map(|i| format!("n-{i}\n")).collect();
    let (status, stdout, stderr) = produce(&nowhere, &[], svc.token("alice"), many.into_bytes());
    assert!(
        status.is_some_and(|s| !s.success()),
        "unknown topic must fail: {status:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("ERR ")),
        "no ERR line per record: {stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("kafflow: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains("records were refused: unknown_topic")
            && errors[0].contains("--request"),
        "the count, the reason and what to do: {}",
        errors[0]
    );
    assert!(stderr.lines().count() <= 3, "a short answer: {stderr}");

    // --request files the create request on the way; the records are held for it.
    let asked = unique_topic("cli-asked");
    let (status, _, stderr) = produce(
        &asked,
        &["--request"],
        svc.token("alice"),
        b"a\nb\nc\n".to_vec(),
    );
    assert!(status.is_some_and(|s| s.success()), "--request: {stderr}");
    assert!(stderr.contains("filed request"), "{stderr}");
    let (code, view) = svc.topic(&asked);
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "pending", "{view}");
    assert_eq!(view["held"], 3, "{view}");
    // A second --request to a topic KafFlow knows files nothing more.
    let (status, _, stderr) = produce(&asked, &["--request"], svc.token("alice"), b"d\n".to_vec());
    assert!(status.is_some_and(|s| s.success()), "{stderr}");
    assert!(!stderr.contains("filed request"), "{stderr}");
    let pending = svc.get("carol", &format!("/api/v1/topic-requests?topic={asked}"));
    let requests = pending.1.get("requests").unwrap_or(&pending.1).clone();
    assert_eq!(
        requests.as_array().map(Vec::len),
        Some(1),
        "one request for {asked}: {}",
        pending.1
    );

    let (status, _, stderr) = produce(&topic, &[], "wrong", b"a\n".to_vec());
    assert!(
        status.is_some_and(|s| !s.success()),
        "bad token must fail: {stderr}"
    );
    assert!(stderr.contains("unauthorized"), "{stderr}");

    // One meaning per flag: --server is the HTTP API, --ingest the TCP listener.
    let (status, _, stderr) = run_kafflow_with_stdin(
        &[
            "produce", "--topic", &topic, "--server", &ingest, "--token", "t",
        ],
        b"a\n".to_vec(),
        REPLY,
    );
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(
        stderr.contains("--server is the HTTP API") && stderr.contains("--ingest"),
        "{stderr}"
    );
    let (status, _, stderr) = run_kafflow_with_stdin(
        &[
            "produce",
            "--topic",
            &topic,
            "--ingest",
            svc.base_url(),
            "--token",
            "t",
        ],
        b"a\n".to_vec(),
        REPLY,
    );
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(
        stderr.contains("--ingest is the TCP ingest listener"),
        "{stderr}"
    );
}

/// Streams numbered lines (`n-<i>` from `base`, keys `t0`..`t4`) to `topic` over one TCP
/// connection, `per_write` lines every `gap`, until `stop`; returns the next number, after
/// checking that the final `OK` acknowledged every line.
fn stream_tcp(
    svc: &Service,
    topic: &str,
    base: u64,
    per_write: u64,
    gap: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> u64 {
    let mut tcp = IngestClient::connect(svc.ingest_addr());
    tcp.send_line(&format!("AUTH {}", svc.token("alice")));
    assert_eq!(tcp.read_line(REPLY).as_deref(), Some("OK 0"));
    let mut next = base;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let lines: String = (next..next + per_write)
            .map(|i| {
                let key = format!("t{}", i % 5);
                let record = json!({"topic": topic, "key": key, "value": format!("n-{i}")});
                format!("{record}\n")
            })
            .collect();
        tcp.send(&lines);
        next += per_write;
        std::thread::sleep(gap);
    }
    tcp.finish_sending();
    let replies = tcp.read_to_end(KAFKA_TIMEOUT);
    let (oks, errs) = split_replies(&replies);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(oks.last(), Some(&(next - base)), "every line acknowledged");
    next
}

#[test]
fn records_sent_while_the_topic_turns_active_all_arrive_in_key_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let svc = Service::start();
    let topic = unique_topic("ingest-switch");
    let id = svc.request_topic("alice", &topic, 3);
    let stop = AtomicBool::new(false);
    // HTTP numbers from 0 (keys k*), TCP numbers from 1,000,000 (keys t*): one sender each,
    // each in order on its own.
    const TCP_BASE: u64 = 1_000_000;

    let (http_acked, tcp_acked) = std::thread::scope(|scope| {
        let http = scope.spawn(|| {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (status, reply) =
                    svc.produce("alice", &topic, "", &numbered_records(next..next + 50, 5));
                assert_eq!(status, 202, "{reply}");
                next += 50;
                std::thread::sleep(Duration::from_millis(10));
            }
            next
        });
        let tcp = scope
            .spawn(|| stream_tcp(&svc, &topic, TCP_BASE, 50, Duration::from_millis(10), &stop));
        let progress = |what: &str, f: &dyn Fn(&Service) -> bool| {
            let done = wait_until(SETTLE, || {
                http.is_finished() || tcp.is_finished() || f(&svc)
            });
            assert!(
                done && !http.is_finished() && !tcp.is_finished(),
                "{what}\nstderr tail:\n{}",
                svc.stderr_tail()
            );
        };
        progress("records held while pending", &|s| {
            s.metric("kafflow_spool_records") >= 2000.0
        });
        let backlog = svc.metric("kafflow_ingested_records_total");
        svc.approve("carol", &id);
        svc.wait_request_status(&id, "completed", SETTLE);
        progress("the backlog drained, and more records after it", &|s| {
            s.metric("kafflow_published_records_total") >= backlog + 3000.0
        });
        stop.store(true, Ordering::Relaxed);
        (
            http.join().expect("http sender"),
            tcp.join().expect("tcp sender"),
        )
    });

    let expected: BTreeSet<u64> = (0..http_acked).chain(TCP_BASE..tcp_acked).collect();
    eprintln!("{topic}: {} records acknowledged", expected.len());
    let records = kafka_read_numbered(&topic, &expected, KAFKA_TIMEOUT);
    let duplicates = assert_numbered_arrived(&records, &expected);
    assert_eq!(duplicates, 0, "no crash, no outage: no duplicates");
    svc.wait_topic_counts(&topic, SETTLE, |held, _, published| {
        held == 0 && published == expected.len() as u64
    });
}

#[test]
fn a_busy_topic_returns_to_the_direct_path_after_its_drain() {
    use std::sync::atomic::AtomicBool;
    let svc = Service::start();
    let topic = unique_topic("ingest-busy");
    let id = svc.request_topic("alice", &topic, 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // 50 records every 5 ms (about 10,000/s): steady, and far below what TCP ingest takes.
        let tcp = scope.spawn(|| stream_tcp(&svc, &topic, 0, 50, Duration::from_millis(5), &stop));
        let held_some = wait_until(SETTLE, || svc.metric("kafflow_held_records_total") >= 200.0);
        assert!(held_some, "nothing held while pending");
        svc.approve("carol", &id);
        svc.wait_request_status(&id, "completed", SETTLE);
        // Direct again: records keep coming in, and none of them is held any more.
        let mut last = (0.0, 0.0);
        let direct = wait_until(Duration::from_secs(15), || {
            let now = (
                svc.metric("kafflow_ingested_records_total"),
                svc.metric("kafflow_held_records_total"),
            );
            let went_direct = now.0 > last.0 && now.1 == last.1;
            last = now;
            std::thread::sleep(Duration::from_millis(400));
            went_direct
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tcp.join().expect("tcp sender");
        assert!(
            direct,
            "every record still goes through the spool 15 s after approval: \
             ingested {}, held {}",
            last.0, last.1
        );
    });
}
