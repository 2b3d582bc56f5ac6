//! Browsing a topic's records and partitions through the real binary and the real broker:
//! `GET /api/v1/topics/{name}/messages` newest first, paged to the end, by partition and
//! offset, from a time; `GET /api/v1/topics/{name}/partitions`; and the refusals.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_error, id_of, kafka_produce, unique_topic, Produce, Service};
use serde_json::{json, Value};

/// Values `{"i": i}` with keys `k{i % 5}` and one header.
fn numbered(range: std::ops::Range<u32>) -> Vec<(String, String)> {
    range
        .map(|i| (format!("k{}", i % 5), json!({ "i": i }).to_string()))
        .collect()
}

fn produce_numbered(topic: &str, range: std::ops::Range<u32>) -> Vec<(i32, i64)> {
    let records = numbered(range);
    let produce: Vec<Produce<'_>> = records
        .iter()
        .map(|(key, value)| Produce {
            key: Some(key),
            value: value.clone().into_bytes(),
            headers: &[("source", "messages-test")],
        })
        .collect();
    kafka_produce(topic, &produce)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn browse(svc: &Service, who: &str, topic: &str, query: &str) -> Value {
    let (status, body) = svc.get(who, &format!("/api/v1/topics/{topic}/messages?{query}"));
    assert_eq!(status, 200, "browse {topic}?{query} as {who}: {body}");
    body
}

/// Every record, following `next` with pages of `limit`; asserts no page is empty but the
/// last and that pages come newest first.
fn browse_all(svc: &Service, who: &str, topic: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut q = format!("limit={limit}");
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let page = browse(svc, who, topic, &q);
        let records = page["records"].as_array().expect("records").clone();
        assert!(records.len() <= limit, "page larger than {limit}: {page}");
        all.extend(records);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return all,
        }
    }
    panic!("browsing {topic} never ended");
}

fn number(record: &Value) -> u64 {
    record["value"]["i"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a numbered record: {record}"))
}

fn newest_first(records: &[Value]) -> bool {
    records.windows(2).all(|w| {
        w[0]["timestamp"].as_i64() >= w[1]["timestamp"].as_i64()
            && (w[0]["partition"] != w[1]["partition"]
                || w[0]["offset"].as_i64() > w[1]["offset"].as_i64())
    })
}

#[test]
fn records_come_newest_first_paged_to_the_end_by_partition_offset_and_time() {
    let svc = Service::start();
    let topic = unique_topic("browse");
    svc.provision(&topic, 2);

    // 15 records, a moment, 10 more, then a text and a binary value.
    let mut placed = produce_numbered(&topic, 0..15);
    std::thread::sleep(Duration::from_millis(300));
    let between = now_ms();
    std::thread::sleep(Duration::from_millis(300));
    placed.extend(produce_numbered(&topic, 15..25));
    let text = kafka_produce(&topic, &[Produce::value("plain words")]);
    let binary = kafka_produce(&topic, &[Produce::value(vec![0xff, 0xfe, 0x00])]);
    placed.extend(&text);
    placed.extend(&binary);

    // The first page: the default limit, newest first, the newest record on top.
    let first = browse(&svc, "erin", &topic, "");
    let records = first["records"].as_array().expect("records");
    assert_eq!(records.len(), 20, "default limit is 20: {first}");
    assert!(first["next"].is_string(), "more follow: {first}");
    assert!(newest_first(records), "newest first: {first}");
    let top = &records[0];
    assert_eq!(top["value_encoding"], "base64", "{top}");
    assert_eq!(top["value"], "//4A", "{top}");
    assert_eq!(
        (top["partition"].as_i64(), top["offset"].as_i64()),
        (Some(i64::from(binary[0].0)), Some(binary[0].1))
    );
    assert_eq!(records[1]["value_encoding"], "string", "{}", records[1]);
    assert_eq!(records[1]["value"], "plain words");
    let numbered_one = records
        .iter()
        .find(|r| r["value_encoding"] == "json")
        .expect("a JSON record");
    let i = number(numbered_one);
    assert_eq!(numbered_one["key"], format!("k{}", i % 5));
    assert_eq!(numbered_one["key_encoding"], "string");
    assert_eq!(
        numbered_one["headers"],
        json!([{"name": "source", "value": "messages-test", "encoding": "string"}])
    );
    let value_len = json!({ "i": i }).to_string().len();
    let expected_size = 2 + value_len + "source".len() + "messages-test".len();
    assert_eq!(numbered_one["size"], json!(expected_size), "{numbered_one}");

    // Paged to the end: every record once, and then `next` is null.
    let all = browse_all(&svc, "erin", &topic, "", 7);
    assert_eq!(all.len(), 27, "every record: {all:#?}");
    let places: BTreeSet<(i64, i64)> = all
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap_or(-1),
                r["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let produced: BTreeSet<(i64, i64)> = placed.iter().map(|(p, o)| (i64::from(*p), *o)).collect();
    assert_eq!(places, produced, "each record exactly once");
    assert!(newest_first(&all), "pages continue newest first");

    // One partition, newest offset first.
    let on_zero: Vec<i64> = placed
        .iter()
        .filter(|(p, _)| *p == 0)
        .map(|(_, o)| *o)
        .collect();
    let zero = browse_all(&svc, "erin", &topic, "partition=0", 4);
    let offsets: Vec<i64> = zero.iter().filter_map(|r| r["offset"].as_i64()).collect();
    let mut expected = on_zero.clone();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(offsets, expected, "partition 0 newest first");
    assert!(zero.iter().all(|r| r["partition"] == 0));

    // From an offset: that record first, then the older ones.
    let middle = expected[expected.len() / 2];
    let from = browse(
        &svc,
        "erin",
        &topic,
        &format!("partition=0&offset={middle}&limit=500"),
    );
    let offsets: Vec<i64> = from["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["offset"].as_i64())
        .collect();
    let older: Vec<i64> = expected.iter().copied().filter(|o| *o <= middle).collect();
    assert_eq!(offsets, older, "from offset {middle}");
    assert!(from["next"].is_null(), "nothing below: {from}");

    // From a time: only what was produced at or before it.
    let before = browse_all(&svc, "erin", &topic, &format!("timestamp={between}"), 500);
    let mut numbers: Vec<u64> = before.iter().map(number).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..15).collect::<Vec<u64>>(),
        "records up to the time"
    );
    // The same time as RFC 3339 (a browser's clock, to the millisecond).
    let rfc = chrono::DateTime::from_timestamp_millis(between)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let same = browse_all(&svc, "carol", &topic, &format!("timestamp={rfc}"), 500);
    assert_eq!(same.len(), 15, "RFC 3339 time {rfc}");

    // The partitions: leader, replicas, in-sync replicas and the high watermarks.
    let (status, parts) = svc.get("erin", &format!("/api/v1/topics/{topic}/partitions"));
    assert_eq!(status, 200, "{parts}");
    let list = parts["partitions"].as_array().expect("partitions");
    assert_eq!(list.len(), 2, "{parts}");
    let high: i64 = list
        .iter()
        .filter_map(|p| p["high_watermark"].as_i64())
        .sum();
    assert_eq!(high, 27, "{parts}");
    for p in list {
        assert!(p["leader"].as_i64().unwrap_or(-1) >= 0, "{p}");
        assert!(
            !p["replicas"].as_array().expect("replicas").is_empty(),
            "{p}"
        );
        assert!(!p["isr"].as_array().expect("isr").is_empty(), "{p}");
    }
    assert!(
        parts["positions"].is_null(),
        "only admins see positions: {parts}"
    );

    // An admin sees each subscriber's position: erin subscribed and read nothing yet.
    let (status, body) = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{topic}"),
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, parts) = svc.get("carol", &format!("/api/v1/topics/{topic}/partitions"));
    assert_eq!(status, 200, "{parts}");
    assert_eq!(
        parts["positions"],
        json!([{"user": "erin", "committed": {}, "lag": 27}]),
        "{parts}"
    );
}

#[test]
fn browsing_refuses_bad_input_unknown_pending_and_restricted_topics() {
    let svc = Service::start();
    let open = unique_topic("browse-open");
    svc.provision(&open, 1);
    let path = |q: &str| format!("/api/v1/topics/{open}/messages?{q}");

    for (query, what) in [
        ("limit=0", "limit 0"),
        ("limit=501", "limit over 500"),
        ("limit=many", "limit not a number"),
        ("partition=1", "a partition the topic lacks"),
        ("partition=-1", "a negative partition"),
        ("offset=-5", "a negative offset"),
        ("offset=1&timestamp=2", "offset and timestamp"),
        ("timestamp=yesterday", "a time that is not one"),
        ("after=nonsense", "a cursor of no page"),
        ("junk=1", "an unknown parameter"),
    ] {
        assert_error(&svc.get("erin", &path(query)), 400, "invalid_query", what);
    }
    assert_error(
        &svc.get("erin", &format!("/api/v1/topics/{open}/partitions/extra")),
        404,
        "not_found",
        "no such route",
    );

    // An empty topic: an empty last page.
    let empty = browse(&svc, "erin", &open, "");
    assert_eq!(empty, json!({"records": [], "next": null}));

    // Unknown and pending topics.
    let unknown = unique_topic("browse-unknown");
    assert_error(
        &svc.get("erin", &format!("/api/v1/topics/{unknown}/messages")),
        404,
        "not_found",
        "unknown topic",
    );
    assert_error(
        &svc.get("erin", &format!("/api/v1/topics/{unknown}/partitions")),
        404,
        "not_found",
        "unknown topic's partitions",
    );
    let pending = unique_topic("browse-pending");
    svc.request_topic("alice", &pending, 1);
    assert_error(
        &svc.get("erin", &format!("/api/v1/topics/{pending}/messages")),
        409,
        "topic_not_active",
        "pending topic",
    );

    // A restricted topic: a consumer without a grant, and a producer without the role.
    let restricted = unique_topic("browse-restricted");
    let request = svc.create_request(
        "alice",
        json!({"topic": restricted, "partitions": 1, "visibility": "restricted", "reason": "test"}),
    );
    let id = id_of(&request);
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", Duration::from_secs(60));
    kafka_produce(&restricted, &[Produce::value(r#"{"secret":true}"#)]);
    let restricted_path = format!("/api/v1/topics/{restricted}/messages");
    assert_error(
        &svc.get("erin", &restricted_path),
        403,
        "no_access",
        "consumer without a grant",
    );
    assert_error(
        &svc.get("alice", &restricted_path),
        403,
        "forbidden",
        "a producer",
    );
    let (status, _) = svc.get_anon(&restricted_path);
    assert_eq!(status, 401, "no token");
    // An admin reads it; so does erin once granted.
    let page = browse(&svc, "carol", &restricted, "");
    assert_eq!(
        page["records"][0]["value"],
        json!({"secret": true}),
        "{page}"
    );
    svc.grant("erin", &restricted, "consume");
    let page = browse(&svc, "erin", &restricted, "");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1), "{page}");
}
