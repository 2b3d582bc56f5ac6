//! Consumers end to end through the real binary and the real broker: subscriptions over HTTP,
//! records produced with a plain Kafka producer and read on the websocket feed, subscription
//! changes without reconnecting, reconnects, `kill -9`, topic deletion through the approval
//! flow, several feeds and users, a stalled client, and the refusals.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{
    assert_error, id_of, kafka_committed, kafka_produce, unique_topic, wait_until, ExtraPrincipal,
    FeedRead, Produce, Service,
};
use serde_json::{json, Value};

const FRAME: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(700);
const GROUP: &str = "kafflow.user.erin";

/// erin's whole set, every page of it, in the shape of a subscription change's answer.
fn mine(svc: &Service) -> Value {
    json!({"topics": svc.list_all("erin", "/api/v1/me/subscriptions", "topics")})
}

fn subscribe(svc: &Service, who: &str, topic: &str) -> Value {
    let (status, body) = svc.post(
        who,
        &format!("/api/v1/me/subscriptions/{topic}"),
        &json!({}),
    );
    assert_eq!(status, 200, "subscribe {who} to {topic}: {body}");
    body
}

fn unsubscribe(svc: &Service, who: &str, topic: &str) -> Value {
    let path = format!("/api/v1/me/subscriptions/{topic}");
    let (status, body) = svc.send("DELETE", &path, Some(svc.token(who)), None);
    assert_eq!(status, 200, "unsubscribe {who} from {topic}: {body}");
    body
}

fn notice(topics: &[&str]) -> Value {
    json!({"type": "subscriptions", "topics": topics})
}

/// Values `{"i": i}` for `range`.
fn numbered(range: std::ops::Range<u32>) -> Vec<Produce<'static>> {
    range
        .map(|i| Produce::value(json!({ "i": i }).to_string()))
        .collect()
}

fn numbers(records: &[Value]) -> Vec<u64> {
    let mut found: Vec<u64> = records
        .iter()
        .map(|r| r["value"]["i"].as_u64().unwrap_or_else(|| panic!("{r}")))
        .collect();
    found.sort_unstable();
    found
}

/// Waits until erin's group has committed `total` records over the partitions of `topic`.
fn wait_committed(topic: &str, partitions: i32, total: i64) {
    let mut last = Vec::new();
    let done = wait_until(Duration::from_secs(20), || {
        last = kafka_committed(GROUP, topic, partitions);
        last.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total
    });
    assert!(done, "{GROUP} never committed {total} on {topic}: {last:?}");
}

#[test]
fn feed_follows_subscription_changes_without_reconnecting() {
    let svc = Service::start();
    let t1 = unique_topic("feed-a");
    let t2 = unique_topic("feed-b");
    svc.provision(&t1, 2);
    svc.provision(&t2, 1);

    assert_eq!(mine(&svc), json!({"topics": []}));
    assert_eq!(subscribe(&svc, "erin", &t1), json!({"topics": [t1]}));
    assert_eq!(
        subscribe(&svc, "erin", &t1),
        json!({"topics": [t1]}),
        "subscribing twice is harmless"
    );
    assert_eq!(mine(&svc), json!({"topics": [t1]}));

    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(feed.next(FRAME), notice(&[&t1]));

    let acked = kafka_produce(
        &t1,
        &[Produce {
            key: Some("k1"),
            value: br#"{"n": 1}"#.to_vec(),
            headers: &[("source", "first"), ("trace", "t1"), ("source", "test")],
        }],
    );
    let record = feed.next(FRAME);
    assert_eq!(record["topic"], t1.as_str(), "{record}");
    assert_eq!(record["partition"], acked[0].0, "{record}");
    assert_eq!(record["offset"], acked[0].1, "{record}");
    assert_eq!(record["key"], "k1", "{record}");
    assert_eq!(
        record["value"],
        json!({"n": 1}),
        "value is JSON when it parses"
    );
    assert_eq!(
        record["headers"],
        json!({"trace": "t1", "source": "test"}),
        "a repeated header name keeps its last value: {record}"
    );
    assert!(
        record["timestamp"].as_i64().is_some_and(|t| t > 0),
        "{record}"
    );

    kafka_produce(&t1, &[Produce::value("plain text")]);
    let record = feed.next(FRAME);
    assert_eq!(record["value"], "plain text", "else a string: {record}");
    assert!(record["key"].is_null(), "{record}");

    // A topic added while connected: same socket, new records.
    let mut both = [t1.clone(), t2.clone()];
    both.sort();
    assert_eq!(subscribe(&svc, "erin", &t2), json!({"topics": both}));
    assert_eq!(
        feed.next(FRAME),
        json!({"type": "subscriptions", "topics": both})
    );
    kafka_produce(&t2, &[Produce::value("from b")]);
    let record = feed.next(FRAME);
    assert_eq!(
        (record["topic"].as_str(), &record["value"]),
        (Some(t2.as_str()), &json!("from b"))
    );

    // A topic removed while connected: nothing more from it.
    assert_eq!(unsubscribe(&svc, "erin", &t1), json!({"topics": [t2]}));
    assert_eq!(feed.next(FRAME), notice(&[&t2]));
    kafka_produce(&t1, &[Produce::value("unseen")]);
    kafka_produce(&t2, &[Produce::value("marker")]);
    let record = feed.next(FRAME);
    assert_eq!(record["value"], "marker", "{record}");
    let late = feed.drain(QUIET);
    assert!(late.is_empty(), "frames after unsubscribing: {late:?}");

    // Replace the whole set.
    let (status, body) = svc.send(
        "PUT",
        "/api/v1/me/subscriptions",
        Some(svc.token("erin")),
        Some((
            serde_json::to_vec(&json!({"topics": [t1]})).expect("json"),
            "application/json",
        )),
    );
    assert_eq!((status, &body), (200, &json!({"topics": [t1]})));
    assert_eq!(feed.next(FRAME), notice(&[&t1]));
    feed.close();

    let events = svc.audit(&format!("topic={t1}"));
    let ours: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "subscribed" || e["kind"] == "unsubscribed")
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or(""),
                e["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        ours,
        [
            ("subscribed", "erin"),
            ("unsubscribed", "erin"),
            ("subscribed", "erin")
        ]
    );
}

#[test]
fn reconnect_resumes_after_the_last_commit() {
    let svc = Service::start();
    let topic = unique_topic("resume");
    svc.provision(&topic, 3);
    subscribe(&svc, "erin", &topic);

    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(feed.next(FRAME), notice(&[&topic]));
    kafka_produce(&topic, &numbered(0..30));
    let first = feed.records(30, FRAME);
    assert_eq!(numbers(&first), (0..30).collect::<Vec<_>>());
    // Committed only once written: every frame read here was written, so all 30 get committed.
    wait_committed(&topic, 3, 30);
    feed.close();

    kafka_produce(&topic, &numbered(30..50));
    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(feed.next(FRAME), notice(&[&topic]));
    let second = feed.records(20, FRAME);
    assert_eq!(
        numbers(&second),
        (30..50).collect::<Vec<_>>(),
        "nothing lost, nothing before the commit sent again"
    );
    let extra = feed.drain(QUIET);
    assert!(extra.is_empty(), "sent again: {extra:?}");
    wait_committed(&topic, 3, 50);
    feed.close();

    // Several quick reconnects while records flow: every record arrives at least once.
    let mut seen = BTreeSet::new();
    for round in 0..3u32 {
        let base = 50 + round * 10;
        kafka_produce(&topic, &numbered(base..base + 10));
        let mut feed = svc.feed(svc.token("erin"), "");
        let records = feed.records(10, FRAME);
        seen.extend(numbers(&records));
        wait_committed(&topic, 3, i64::from(base + 10));
        feed.close();
    }
    assert_eq!(seen, (50..80).collect::<BTreeSet<u64>>());
}

#[test]
fn kill9_restart_brings_subscriptions_back_and_the_feed_resumes() {
    let mut svc = Service::start();
    let topic = unique_topic("restart");
    svc.provision(&topic, 2);
    subscribe(&svc, "erin", &topic);
    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(feed.next(FRAME), notice(&[&topic]));
    kafka_produce(&topic, &numbered(0..5));
    assert_eq!(numbers(&feed.records(5, FRAME)), [0, 1, 2, 3, 4]);
    wait_committed(&topic, 2, 5);

    svc.restart();
    drop(feed);
    assert_eq!(mine(&svc), json!({"topics": [topic]}), "back from replay");
    let (status, body) = svc.get("carol", &format!("/api/v1/subscriptions?topic={topic}"));
    assert_eq!(status, 200, "{body}");
    let listed = body["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(
        (&listed[0]["user"], &listed[0]["topic"]),
        (&json!("erin"), &json!(topic))
    );
    assert!(listed[0]["since"].is_string(), "{body}");

    kafka_produce(&topic, &numbered(5..10));
    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(feed.next(FRAME), notice(&[&topic]));
    assert_eq!(numbers(&feed.records(5, FRAME)), [5, 6, 7, 8, 9]);
    let extra = feed.drain(QUIET);
    assert!(extra.is_empty(), "sent again after restart: {extra:?}");
}

#[test]
fn deleting_a_subscribed_topic_ends_its_subscriptions() {
    let svc = Service::start();
    let doomed = unique_topic("doomed");
    let kept = unique_topic("kept");
    svc.provision(&doomed, 1);
    svc.provision(&kept, 1);
    subscribe(&svc, "erin", &doomed);
    subscribe(&svc, "erin", &kept);
    let mut feed = svc.feed(svc.token("erin"), "");
    feed.next(FRAME);

    let (status, request) = svc.post(
        "alice",
        &format!("/api/v1/topics/{doomed}/deletion-requests"),
        &json!({"reason": "no longer needed"}),
    );
    assert_eq!(status, 201, "{request}");
    let id = id_of(&request);
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", Duration::from_secs(60));

    assert_eq!(
        feed.next_notice(FRAME),
        json!({"type": "topic_deleted", "topic": doomed})
    );
    assert_eq!(feed.next_notice(FRAME), notice(&[&kept]));
    assert_eq!(mine(&svc), json!({"topics": [kept]}));

    let ended: Vec<Value> = svc
        .audit(&format!("topic={doomed}&kind=unsubscribed"))
        .into_iter()
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["actor"], "system");
    assert_eq!(ended[0]["data"]["reason"], "topic_deleted");
    assert!(ended[0]["request_id"].is_null(), "{}", ended[0]);

    let again = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{doomed}"),
        &json!({}),
    );
    assert_error(
        &again,
        409,
        "topic_not_active",
        "subscribe to a deleted topic",
    );

    // The feed goes on for the topic that is left.
    kafka_produce(&kept, &[Produce::value("still here")]);
    assert_eq!(feed.records(1, FRAME)[0]["value"], "still here");
}

#[test]
fn several_feeds_each_get_every_record_and_users_see_only_their_topics() {
    let frank = ExtraPrincipal::new("frank", &["consumer"]);
    let extra = frank.config.clone();
    let svc = Service::start_with_config(move |text| text + &extra);
    let t1 = unique_topic("fan-a");
    let t2 = unique_topic("fan-b");
    svc.provision(&t1, 2);
    svc.provision(&t2, 2);
    subscribe(&svc, "erin", &t1);
    let (status, body) = svc.send_as(
        &frank.token,
        "POST",
        &format!("/api/v1/me/subscriptions/{t2}"),
        None,
    );
    assert_eq!((status, &body), (200, &json!({"topics": [t2]})));

    let mut tab = svc.feed(svc.token("erin"), "");
    let mut cli = svc.feed(svc.token("erin"), "");
    let mut other = svc.feed(&frank.token, "");
    for feed in [&mut tab, &mut cli] {
        assert_eq!(feed.next(FRAME), notice(&[&t1]));
    }
    assert_eq!(other.next(FRAME), notice(&[&t2]));

    kafka_produce(&t1, &numbered(0..20));
    kafka_produce(&t2, &numbered(100..110));
    for (name, feed) in [("tab", &mut tab), ("cli", &mut cli)] {
        let records = feed.records(20, FRAME);
        assert!(
            records.iter().all(|r| r["topic"] == t1.as_str()),
            "{name}: {records:?}"
        );
        assert_eq!(numbers(&records), (0..20).collect::<Vec<_>>(), "{name}");
    }
    let records = other.records(10, FRAME);
    assert!(
        records.iter().all(|r| r["topic"] == t2.as_str()),
        "frank sees only his topic: {records:?}"
    );
    assert_eq!(numbers(&records), (100..110).collect::<Vec<_>>());
    assert!(
        other.drain(QUIET).is_empty(),
        "frank got more than his topic"
    );

    let (status, body) = svc.get("carol", "/api/v1/subscriptions");
    assert_eq!(status, 200, "{body}");
    let pairs: BTreeSet<(String, String)> = body["subscriptions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["user"].as_str().unwrap_or("").to_string(),
                s["topic"].as_str().unwrap_or("").to_string(),
            )
        })
        .filter(|(_, t)| *t == t1 || *t == t2)
        .collect();
    assert_eq!(
        pairs,
        BTreeSet::from([
            ("erin".to_string(), t1.clone()),
            ("frank".to_string(), t2.clone())
        ])
    );
}

#[test]
fn a_stalled_feed_is_closed_with_a_reason() {
    let svc = Service::start_with_config(|text| {
        text + "\n[feeds]\nbuffer_frames = 20\nstall_timeout_ms = 1000\n"
    });
    let topic = unique_topic("stall");
    svc.provision(&topic, 1);
    subscribe(&svc, "erin", &topic);
    let mut feed = svc.feed(svc.token("erin"), "");

    // Far more than the socket buffers hold, and the client reads none of it for a while.
    let big = "x".repeat(64 * 1024);
    let records: Vec<Produce> = (0..500)
        .map(|i| Produce::value(format!("{i}:{big}")))
        .collect();
    kafka_produce(&topic, &records);
    std::thread::sleep(Duration::from_secs(3));

    let index =
        |frame: &Value| -> Option<u32> { frame["value"].as_str()?.split(':').next()?.parse().ok() };
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let closed = loop {
        match feed.read(FRAME) {
            FeedRead::Frame(frame) => seen.extend(index(&frame)),
            FeedRead::Closed(code, reason) => break (code, reason),
            FeedRead::Quiet => panic!(
                "no close after {} frames in {:?}",
                seen.len(),
                started.elapsed()
            ),
        }
    };
    assert_eq!(closed.0, 1008, "{closed:?}");
    assert!(closed.1.contains("stalled"), "{closed:?}");
    assert!(
        seen.len() < 500,
        "the feed was closed before everything was sent"
    );

    // What was not written was not committed: a new feed brings the rest.
    let mut feed = svc.feed(svc.token("erin"), "");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 500 {
        let left = deadline.saturating_duration_since(Instant::now());
        match feed.read(left) {
            FeedRead::Frame(frame) => seen.extend(index(&frame)),
            other => panic!(
                "{} of 500 records, then {other:?}\n{}",
                seen.len(),
                svc.stderr_tail()
            ),
        }
    }
}

#[test]
fn feeds_and_subscriptions_refuse_what_they_must() {
    let svc = Service::start();
    let topic = unique_topic("refuse");
    svc.provision(&topic, 1);
    let pending = unique_topic("pending");
    svc.request_topic("alice", &pending, 1);

    // Roles: a producer is no consumer; the admin list is for admins.
    let path = format!("/api/v1/me/subscriptions/{topic}");
    assert_error(
        &svc.get("alice", "/api/v1/me/subscriptions"),
        403,
        "forbidden",
        "producer lists",
    );
    assert_error(
        &svc.post("alice", &path, &json!({})),
        403,
        "forbidden",
        "producer subscribes",
    );
    assert_error(
        &svc.get("erin", "/api/v1/subscriptions"),
        403,
        "forbidden",
        "consumer asks who reads what",
    );
    let bearer = format!("Bearer {}", svc.token("alice"));
    let refused = svc
        .try_feed(&[("authorization", &bearer)], "")
        .err()
        .expect("refused");
    assert_error(&refused, 403, "forbidden", "producer opens a feed");

    // Tokens: none, wrong, wrong in the subprotocol.
    assert_error(
        &svc.get_anon("/api/v1/me/subscriptions"),
        401,
        "unauthorized",
        "no token",
    );
    assert_error(
        &svc.send_with_header("/api/v1/me/subscriptions", "Bearer nope"),
        401,
        "unauthorized",
        "bad token",
    );
    let refused = svc.try_feed(&[], "").err().expect("refused");
    assert_error(&refused, 401, "unauthorized", "feed without a token");
    let refused = svc
        .try_feed(&[("authorization", "Bearer nope")], "")
        .err()
        .expect("refused");
    assert_error(&refused, 401, "unauthorized", "feed with a bad token");
    let refused = svc
        .try_feed(&[("sec-websocket-protocol", "bearer.nope")], "")
        .err()
        .expect("refused");
    assert_error(
        &refused,
        401,
        "unauthorized",
        "feed with a bad subprotocol token",
    );

    // Topics: unknown, not active, not subscribed; a bad replace changes nothing.
    let unknown = unique_topic("nowhere");
    let reply = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{unknown}"),
        &json!({}),
    );
    assert_error(&reply, 404, "not_found", "unknown topic");
    let reply = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{pending}"),
        &json!({}),
    );
    assert_error(&reply, 409, "topic_not_active", "pending topic");
    let reply = svc.send("DELETE", &path, Some(svc.token("erin")), None);
    assert_error(
        &reply,
        404,
        "not_found",
        "unsubscribe from a topic not subscribed",
    );
    subscribe(&svc, "erin", &topic);
    let body = serde_json::to_vec(&json!({"topics": [topic, unknown]})).expect("json");
    let reply = svc.send(
        "PUT",
        "/api/v1/me/subscriptions",
        Some(svc.token("erin")),
        Some((body, "application/json")),
    );
    assert_error(&reply, 404, "not_found", "replace with an unknown topic");
    let reply = svc.send(
        "PUT",
        "/api/v1/me/subscriptions",
        Some(svc.token("erin")),
        Some((b"{\"topics\": 3}".to_vec(), "application/json")),
    );
    assert_error(&reply, 400, "invalid_json", "replace with a bad body");
    assert_eq!(mine(&svc), json!({"topics": [topic]}), "nothing changed");

    // The feed: a plain GET, a bad start position.
    assert_error(
        &svc.get("erin", "/api/v1/me/feed"),
        426,
        "upgrade_required",
        "feed without upgrade",
    );
    let bearer = format!("Bearer {}", svc.token("erin"));
    let refused = svc
        .try_feed(&[("authorization", &bearer)], "from=yesterday")
        .err()
        .expect("refused");
    assert_error(&refused, 400, "invalid_query", "bad from");
    let refused = svc
        .try_feed(&[("authorization", &bearer)], "bogus=1")
        .err()
        .expect("refused");
    assert_error(&refused, 400, "invalid_query", "unknown feed parameter");
    let refused = svc
        .try_feed(&[("authorization", "Bearer nope")], "bogus=1")
        .err()
        .expect("refused");
    assert_error(&refused, 401, "unauthorized", "the token is checked first");
    assert_error(
        &svc.get("carol", "/api/v1/subscriptions?bogus=1"),
        400,
        "invalid_query",
        "unknown list parameter",
    );

    // The token as a subprotocol, as browsers send it, and the server picks that protocol.
    let protocol = format!("bearer.{}", svc.token("erin"));
    let mut feed = svc
        .try_feed(&[("sec-websocket-protocol", &protocol)], "from=latest")
        .unwrap_or_else(|e| panic!("subprotocol feed refused: {e:?}"));
    assert_eq!(feed.protocol.as_deref(), Some(protocol.as_str()));
    assert_eq!(feed.next(FRAME), notice(&[&topic]));
}

#[test]
fn consume_cli_subscribes_and_prints_ndjson() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let svc = Service::start();
    let topic = unique_topic("cli");
    svc.provision(&topic, 2);

    let (status, _, stderr) = common::run_kafflow(
        &[
            "consume",
            "--topic",
            &topic,
            "--server",
            svc.base_url(),
            "--token",
            "wrong",
        ],
        Duration::from_secs(30),
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "a bad token fails: {stderr}"
    );
    assert!(stderr.contains("401"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_kafflow"))
        .args(["consume", "--topic", &topic, "--server", svc.base_url()])
        .env("KAFFLOW_TOKEN", svc.token("erin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kafflow consume");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });

    // The command subscribes first; records produced after that are printed.
    let subscribed = wait_until(Duration::from_secs(20), || {
        mine(&svc)["topics"] == json!([topic])
    });
    assert!(subscribed, "kafflow consume did not subscribe");
    kafka_produce(&topic, &numbered(0..3));
    let mut printed = Vec::new();
    for _ in 0..3 {
        let line = lines.recv_timeout(FRAME).expect("an NDJSON line");
        let record: Value = serde_json::from_str(&line).expect("each line is JSON");
        assert_eq!(record["topic"], topic.as_str(), "{line}");
        printed.push(record);
    }
    assert_eq!(numbers(&printed), [0, 1, 2]);

    // When its topic is deleted the command says so and ends.
    let (status, request) = svc.post(
        "alice",
        &format!("/api/v1/topics/{topic}/deletion-requests"),
        &json!({"reason": "done"}),
    );
    assert_eq!(status, 201, "{request}");
    svc.approve("carol", &id_of(&request));
    let ended = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("consume output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        ended,
        "kafflow consume kept running after its topic was deleted"
    );
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("deleted"), "{stderr}");
}

#[test]
fn an_idle_consumer_stops_and_a_new_one_resumes_at_the_commit() {
    let svc = Service::start_with_config(|text| text + "\n[feeds]\nidle_consumer_ms = 100\n");
    let topic = unique_topic("idle");
    svc.provision(&topic, 2);
    subscribe(&svc, "erin", &topic);
    let mut feed = svc.feed(svc.token("erin"), "");
    kafka_produce(&topic, &numbered(0..10));
    assert_eq!(
        numbers(&feed.records(10, FRAME)),
        (0..10).collect::<Vec<_>>()
    );
    feed.close();
    // The last feed's close commits at once; the consumer stops after the idle time.
    wait_committed(&topic, 2, 10);
    let stopped = wait_until(Duration::from_secs(10), || {
        svc.stderr_tail().contains("Consumer stopped.")
    });
    assert!(
        stopped,
        "the idle consumer did not stop:\n{}",
        svc.stderr_tail()
    );

    kafka_produce(&topic, &numbered(10..20));
    let mut feed = svc.feed(svc.token("erin"), "");
    assert_eq!(
        numbers(&feed.records(10, FRAME)),
        (10..20).collect::<Vec<_>>()
    );
    assert!(
        feed.drain(QUIET).is_empty(),
        "sent again after a restart of the consumer"
    );
}

#[test]
fn a_feed_from_latest_starts_a_topic_added_while_connected_at_its_end() {
    let svc = Service::start();
    let topic = unique_topic("latest-added");
    svc.provision(&topic, 2);
    kafka_produce(&topic, &numbered(0..50));

    let mut feed = svc.feed(svc.token("erin"), "from=latest");
    assert_eq!(feed.next(FRAME), notice(&[]));
    subscribe(&svc, "erin", &topic);
    assert_eq!(feed.next(FRAME), notice(&[&topic]));

    // The topic's end is found a moment after the subscription: send until a record arrives.
    let mut seen = Vec::new();
    let mut next = 50;
    let deadline = Instant::now() + FRAME;
    while seen.is_empty() {
        assert!(Instant::now() < deadline, "no new record arrived");
        kafka_produce(&topic, &numbered(next..next + 1));
        next += 1;
        seen.extend(
            feed.drain(QUIET)
                .into_iter()
                .filter(|f| f.get("type").is_none()),
        );
    }
    seen.extend(feed.drain(QUIET));
    let got = numbers(&seen);
    assert!(
        got.iter().all(|i| *i >= 50),
        "the 50 records from before the subscription were not sent: {got:?}"
    );
}
