//! Feeds with batched frames (`frames=batch`): every record once and in order per partition
//! across many `records` frames; a batch feed and a per-record feed on one topic both get
//! everything; compact frames (`frames=compact`) name the topic once and carry the same
//! records (an empty `headers` left out); after `kill -9` a batch feed resumes at the committed position (nothing lost,
//! repeats only of what was not yet committed); a bad `frames` value is refused.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    kafka_committed, kafka_produce, unique_topic, wait_until, ExtraPrincipal, FeedClient, FeedRead,
    Produce, Service,
};
use serde_json::{json, Value};

const FRAME: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);
/// The documented bound of one `records` frame.
const MAX_BATCH_RECORDS: usize = 512;

fn numbered(range: std::ops::Range<u32>) -> Vec<Produce<'static>> {
    range
        .map(|i| Produce::value(json!({ "i": i }).to_string()))
        .collect()
}

fn service(users: &[&ExtraPrincipal]) -> Service {
    let extra: String = users.iter().map(|u| u.config.clone()).collect();
    Service::start_with_config(move |text| text + &extra)
}

fn subscribe(svc: &Service, token: &str, topic: &str) {
    let path = format!("/api/v1/me/subscriptions/{topic}");
    let (status, body) = svc.send_as(token, "POST", &path, None);
    assert_eq!(status, 200, "subscribe to {topic}: {body}");
}

/// Reads `records` frames until `n` records have arrived; returns the records and how many
/// frames carried them. Each frame must be a well-formed, bounded batch.
fn batches(feed: &mut FeedClient, n: usize, timeout: Duration) -> (Vec<Value>, usize) {
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut frames = 0;
    while records.len() < n {
        match feed.read(deadline.saturating_duration_since(Instant::now())) {
            FeedRead::Frame(frame) if frame["type"] == "records" => {
                let batch = frame["records"].as_array().expect("records array");
                assert!(!batch.is_empty(), "an empty batch: {frame}");
                assert!(batch.len() <= MAX_BATCH_RECORDS, "{} records", batch.len());
                frames += 1;
                records.extend(batch.iter().cloned());
            }
            FeedRead::Frame(frame) => {
                assert!(
                    frame["type"].is_string(),
                    "a bare record on a batch feed: {frame}"
                );
            }
            other => panic!(
                "expected {n} records within {timeout:?}, got {} then {other:?}",
                records.len()
            ),
        }
    }
    (records, frames)
}

/// The values `i` of `records` sorted, checking that each partition's offsets only go up.
fn in_order(who: &str, records: &[Value]) -> Vec<u64> {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in records {
        let partition = r["partition"].as_i64().expect("partition");
        let offset = r["offset"].as_i64().expect("offset");
        if let Some(before) = last.insert(partition, offset) {
            assert!(
                offset > before,
                "{who}: partition {partition} went from offset {before} to {offset}"
            );
        }
    }
    let mut found: Vec<u64> = records
        .iter()
        .map(|r| r["value"]["i"].as_u64().unwrap_or_else(|| panic!("{r}")))
        .collect();
    found.sort_unstable();
    found
}

fn wait_committed(group: &str, topic: &str, partitions: i32, total: i64) {
    let mut last = Vec::new();
    let done = wait_until(Duration::from_secs(20), || {
        last = kafka_committed(group, topic, partitions);
        last.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total
    });
    assert!(done, "{group} never committed {total} on {topic}: {last:?}");
}

#[test]
fn a_batched_feed_gets_every_record_in_order_across_several_batches() {
    let bea = ExtraPrincipal::new("bea", &["consumer"]);
    let svc = service(&[&bea]);
    let topic = unique_topic("batched");
    svc.provision(&topic, 2);
    subscribe(&svc, &bea.token, &topic);
    let mut feed = svc.feed(&bea.token, "frames=batch");
    // Control frames are as before.
    assert_eq!(
        feed.next(FRAME),
        json!({"type": "subscriptions", "topics": [topic]})
    );
    let mut seen = Vec::new();
    let mut frames = 0;
    for round in 0..4u32 {
        kafka_produce(&topic, &numbered(round * 500..(round + 1) * 500));
        let (records, n) = batches(&mut feed, 500, FRAME);
        seen.extend(records);
        frames += n;
    }
    assert_eq!(
        in_order("bea", &seen),
        (0..2000).collect::<Vec<u64>>(),
        "every record once"
    );
    assert!(frames >= 4, "{frames} frames for 4 rounds");
    assert!(frames < 2000, "one frame per record: not batched");
    // Each record carries the fields of a record frame.
    let first = &seen[0];
    for field in [
        "topic",
        "partition",
        "offset",
        "key",
        "value",
        "headers",
        "timestamp",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(first["topic"], topic);
    assert!(feed.drain(QUIET).is_empty(), "nothing more");
    wait_committed("kafflow.user.bea", &topic, 2, 2000);
}

#[test]
fn a_batch_feed_and_a_record_feed_on_one_topic_both_get_everything() {
    let cal = ExtraPrincipal::new("cal", &["consumer"]);
    let dee = ExtraPrincipal::new("dee", &["consumer"]);
    let svc = service(&[&cal, &dee]);
    let topic = unique_topic("mixed");
    svc.provision(&topic, 3);
    subscribe(&svc, &cal.token, &topic);
    subscribe(&svc, &dee.token, &topic);
    let mut batched = svc.feed(&cal.token, "frames=batch");
    let mut plain = svc.feed(&dee.token, "");
    // A second feed of the batch user, per record: formats are per feed.
    let mut cal_plain = svc.feed(&cal.token, "frames=record");
    for feed in [&mut batched, &mut plain, &mut cal_plain] {
        assert_eq!(feed.next(FRAME)["type"], "subscriptions");
    }
    kafka_produce(&topic, &numbered(0..600));
    let (records, _) = batches(&mut batched, 600, FRAME);
    assert_eq!(
        in_order("cal batch", &records),
        (0..600).collect::<Vec<_>>()
    );
    for (who, feed) in [("dee", &mut plain), ("cal record", &mut cal_plain)] {
        let records = feed.records(600, FRAME);
        assert!(
            records.iter().all(|r| r.get("type").is_none()),
            "{who}: a per-record feed got a batch"
        );
        assert_eq!(in_order(who, &records), (0..600).collect::<Vec<_>>());
    }
    for feed in [&mut batched, &mut plain, &mut cal_plain] {
        assert!(feed.drain(QUIET).is_empty(), "sent again");
    }
    wait_committed("kafflow.user.cal", &topic, 3, 600);
    wait_committed("kafflow.user.dee", &topic, 3, 600);
}

/// Reads `frames=compact` frames until `n` records have arrived: each frame names `topic`
/// once and none of its records has a `topic` of its own.
fn compact_batches(feed: &mut FeedClient, topic: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + FRAME;
    let mut records = Vec::new();
    while records.len() < n {
        match feed.read(deadline.saturating_duration_since(Instant::now())) {
            FeedRead::Frame(frame) if frame["type"] == "records" => {
                assert_eq!(frame["topic"], topic, "{frame}");
                let batch = frame["records"].as_array().expect("records array");
                assert!(!batch.is_empty() && batch.len() <= MAX_BATCH_RECORDS);
                for record in batch {
                    assert!(record.get("topic").is_none(), "topic repeated: {record}");
                }
                records.extend(batch.iter().cloned());
            }
            FeedRead::Frame(frame) => assert!(frame["type"].is_string(), "{frame}"),
            other => panic!("expected {n} records, got {} then {other:?}", records.len()),
        }
    }
    records
}

#[test]
fn a_compact_feed_names_the_topic_once_and_carries_the_same_records() {
    let gil = ExtraPrincipal::new("gil", &["consumer"]);
    let svc = service(&[&gil]);
    let topic = unique_topic("compact");
    svc.provision(&topic, 3);
    subscribe(&svc, &gil.token, &topic);
    let mut compact = svc.feed(&gil.token, "frames=compact");
    let mut batched = svc.feed(&gil.token, "frames=batch");
    for feed in [&mut compact, &mut batched] {
        assert_eq!(
            feed.next(FRAME),
            json!({"type": "subscriptions", "topics": [topic]})
        );
    }
    let keys: Vec<String> = (0..700u32).map(|i| format!("k{i}")).collect();
    let produced: Vec<Produce<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Produce {
            key: Some(key),
            value: json!({ "i": i, "topic": "not this one" })
                .to_string()
                .into(),
            // Every other record without headers: compact records leave out an empty `headers`.
            headers: if i % 2 == 0 {
                &[("source", "shop")]
            } else {
                &[]
            },
        })
        .collect();
    kafka_produce(&topic, &produced);
    let compact_records = compact_batches(&mut compact, &topic, 700);
    let (batch_records, _) = batches(&mut batched, 700, FRAME);
    assert_eq!(
        in_order("gil compact", &compact_records),
        (0..700).collect::<Vec<u64>>(),
        "every record once"
    );
    // Record for record, a compact record is the batch feed's record without its topic.
    let by_position = |records: &[Value]| -> BTreeMap<(i64, i64), Value> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if let Some(fields) = r.as_object_mut() {
                    fields.remove("topic");
                    if fields.get("headers") == Some(&json!({})) {
                        fields.remove("headers");
                    }
                }
                (
                    (
                        r["partition"].as_i64().expect("partition"),
                        r["offset"].as_i64().expect("offset"),
                    ),
                    r,
                )
            })
            .collect()
    };
    assert!(batch_records.iter().all(|r| r["topic"] == topic));
    assert_eq!(by_position(&compact_records), by_position(&batch_records));
    for record in &compact_records {
        let i = record["value"]["i"].as_u64().expect("i");
        assert_eq!(record["key"], format!("k{i}"), "{record}");
        if i % 2 == 0 {
            assert_eq!(record["headers"], json!({"source": "shop"}), "{record}");
        } else {
            assert!(
                record.get("headers").is_none(),
                "empty headers sent: {record}"
            );
        }
        assert!(record["timestamp"].as_i64().is_some(), "{record}");
    }
    for feed in [&mut compact, &mut batched] {
        assert!(feed.drain(QUIET).is_empty(), "sent again");
    }
    wait_committed("kafflow.user.gil", &topic, 3, 700);
}

#[test]
fn a_batched_feed_resumes_at_the_committed_position_after_kill9() {
    let eli = ExtraPrincipal::new("eli", &["consumer"]);
    let mut svc = service(&[&eli]);
    let topic = unique_topic("batch-resume");
    svc.provision(&topic, 2);
    subscribe(&svc, &eli.token, &topic);
    let mut feed = svc.feed(&eli.token, "frames=batch");
    feed.next(FRAME);
    kafka_produce(&topic, &numbered(0..300));
    let (before, _) = batches(&mut feed, 300, FRAME);
    wait_committed("kafflow.user.eli", &topic, 2, 300);
    // Read more and kill at once: some of these may not be committed yet.
    kafka_produce(&topic, &numbered(300..400));
    let (tail, _) = batches(&mut feed, 100, FRAME);
    svc.kill9();
    let committed = kafka_committed("kafflow.user.eli", &topic, 2);
    let mut delivered = before;
    delivered.extend(tail);

    svc.restart();
    drop(feed);
    kafka_produce(&topic, &numbered(400..450));
    let mut feed = svc.feed(&eli.token, "frames=batch");
    feed.next(FRAME);
    let uncommitted = delivered
        .iter()
        .filter(|r| {
            let p = r["partition"].as_i64().expect("partition") as usize;
            r["offset"].as_i64() >= committed[p]
        })
        .count();
    let expect = uncommitted + 50;
    let (after, _) = batches(&mut feed, expect, FRAME);
    assert!(
        feed.drain(QUIET).is_empty(),
        "more than the uncommitted tail"
    );
    for r in &after {
        let p = r["partition"].as_i64().expect("partition") as usize;
        assert!(
            r["offset"].as_i64() >= committed[p],
            "a committed record sent again: {r} (committed {committed:?})"
        );
    }
    let resumed = in_order("eli after restart", &after);
    let mut all = in_order("eli before", &delivered);
    all.extend(&resumed);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..450).collect::<Vec<u64>>(), "nothing lost");
}

#[test]
fn a_bad_frames_value_is_refused_with_a_code() {
    let fay = ExtraPrincipal::new("fay", &["consumer"]);
    let svc = service(&[&fay]);
    let bearer = format!("Bearer {}", fay.token);
    for query in ["frames=v2", "frames=", "frames=BATCH"] {
        let (status, body) = svc
            .try_feed(&[("authorization", &bearer)], query)
            .err()
            .unwrap_or_else(|| panic!("{query} accepted"));
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
    }
}
