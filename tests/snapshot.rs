//! Snapshots through the real binary: a restart from a snapshot answers as a full replay does,
//! a snapshot that does not match the chain is ignored (and the log replayed), and a kill -9
//! between snapshots loses nothing. Decided requests, whose details the registry reads from the
//! log, read the same after a restart from a snapshot and after a full replay; so does a topic
//! closed for good (the governed view's closed names come from the history's latest request of
//! each name). A snapshot of an older format is ignored and the log replayed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_error, numbered_records, unique_topic, wait_until, Service};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SNAPSHOT: &str = "kafflow.snapshot";

/// A snapshot every `every` events.
fn start(every: u64) -> Service {
    Service::start_with_config(|c| {
        c.replace(
            "[store]\nsynchronous = \"full\"\n",
            &format!("[store]\nsynchronous = \"full\"\nsnapshot_every = {every}\n"),
        )
    })
}

/// The seq the snapshot in `data_dir` reflects (bytes 12..20 of the file), if there is one.
fn snapshot_seq(data_dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join(SNAPSHOT)).ok()?;
    Some(u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?))
}

/// `bytes` with its header's seq and/or hash replaced and the checksum made right again: a
/// well-formed snapshot that claims another place in the chain.
fn forge(bytes: &[u8], seq: Option<u64>, hash: Option<[u8; 32]>) -> Vec<u8> {
    let mut forged = bytes.to_vec();
    if let Some(seq) = seq {
        forged[12..20].copy_from_slice(&seq.to_le_bytes());
    }
    if let Some(hash) = hash {
        forged[20..52].copy_from_slice(&hash);
    }
    checksummed(forged)
}

/// `bytes` marked as written in format `version` (bytes 8..12), the checksum made right again:
/// a snapshot of another release, intact.
fn of_format(bytes: &[u8], version: u32) -> Vec<u8> {
    let mut other = bytes.to_vec();
    other[8..12].copy_from_slice(&version.to_le_bytes());
    checksummed(other)
}

/// `forged` with the checksum of its header and state put back (bytes 60..92).
fn checksummed(mut forged: Vec<u8>) -> Vec<u8> {
    let mut sum = Sha256::new();
    sum.update(&forged[8..60]);
    sum.update(&forged[92..]);
    let sum = sum.finalize();
    forged[60..92].copy_from_slice(&sum);
    forged
}

/// What the API says about everything the log rebuilds.
fn answers(service: &Service) -> Vec<(String, Value)> {
    [
        "/api/v1/topics",
        "/api/v1/topic-requests",
        "/api/v1/access-requests",
        "/api/v1/grants",
        "/api/v1/subscriptions",
        "/api/v1/tokens",
        "/api/v1/audit/verify",
    ]
    .iter()
    .map(|path| {
        let (status, body) = service.get("carol", path);
        assert_eq!(status, 200, "GET {path}: {body}");
        (path.to_string(), body)
    })
    .collect()
}

/// The `snapshot_seq` of the last start's "Log replayed." line.
fn started_from(service: &Service) -> u64 {
    let mut seq = None;
    wait_until(Duration::from_secs(10), || {
        seq = service
            .stderr_tail()
            .lines()
            .rev()
            .filter(|l| l.contains("Log replayed."))
            .filter_map(|l| l.split("snapshot_seq=").nth(1))
            .find_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
        seq.is_some()
    });
    seq.unwrap_or_else(|| panic!("no `Log replayed.` line:\n{}", service.stderr_tail()))
}

/// Requests, decisions, a topic in Kafka, a grant, a subscription and a token: one of every
/// part of the state. Returns the names of the rejected and the withdrawn topic.
fn build_state(service: &Service) -> [String; 2] {
    let pending = unique_topic("snap-pending");
    service.request_topic("alice", &pending, 1);
    let rejected_topic = unique_topic("snap-rejected");
    let rejected = service.request_topic("bob", &rejected_topic, 1);
    let (status, body) = service.post(
        "carol",
        &format!("/api/v1/topic-requests/{rejected}/reject"),
        &json!({"reason": "not now"}),
    );
    assert_eq!(status, 200, "reject: {body}");
    let withdrawn_topic = unique_topic("snap-withdrawn");
    let withdrawn = service.request_topic("bob", &withdrawn_topic, 1);
    let (status, body) = service.post(
        "bob",
        &format!("/api/v1/topic-requests/{withdrawn}/withdraw"),
        &json!({}),
    );
    assert_eq!(status, 200, "withdraw: {body}");
    let active = unique_topic("snap-active");
    service.provision(&active, 1);
    let (status, body) = service.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{active}"),
        &json!({}),
    );
    assert_eq!(status, 200, "subscribe: {body}");
    let (status, body) = service.post(
        "carol",
        "/api/v1/tokens",
        &json!({"name": "loader", "roles": ["producer"]}),
    );
    assert_eq!(status, 201, "token: {body}");
    [rejected_topic, withdrawn_topic]
}

/// Records for each of `topics` are refused as `topic_closed`, and a name never asked for is
/// `unknown_topic`: the closed names are known as such after a start, not forgotten.
fn assert_closed(service: &Service, topics: &[String], when: &str) {
    for topic in topics {
        let reply = service.produce("alice", topic, "", &numbered_records(0..1, 1));
        assert_error(&reply, 409, "topic_closed", &format!("{topic} {when}"));
    }
    let never = service.produce(
        "alice",
        &unique_topic("snap-never"),
        "",
        &numbered_records(0..1, 1),
    );
    assert_error(
        &never,
        404,
        "unknown_topic",
        &format!("never asked for, {when}"),
    );
}

#[test]
fn a_restart_from_a_snapshot_answers_as_a_full_replay() {
    let mut service = start(3);
    let closed = build_state(&service);
    let before = answers(&service);
    assert_closed(&service, &closed, "before the restart");
    // A clean stop writes a snapshot at the head of the log.
    assert!(
        service.terminate(Duration::from_secs(30)).is_some(),
        "clean stop"
    );
    let head = before[6].1["events"].as_u64();
    let seq = snapshot_seq(service.data_dir()).expect("a snapshot after a clean stop");
    assert!(seq > 0, "the snapshot reflects the log");
    assert_eq!(Some(seq), head, "the shutdown snapshot is at the head");

    service.start_again();
    assert_eq!(started_from(&service), seq, "started from the snapshot");
    assert_eq!(answers(&service), before, "from the snapshot");
    assert_closed(&service, &closed, "after a start from the snapshot");

    // The same log without the snapshot: a full replay, the same answers.
    service.kill9();
    std::fs::remove_file(service.data_dir().join(SNAPSHOT)).expect("remove snapshot");
    service.start_again();
    assert_eq!(started_from(&service), 0, "a full replay");
    assert_eq!(answers(&service), before, "from the whole log");
    assert_closed(&service, &closed, "after a full replay");
}

#[test]
fn a_snapshot_that_does_not_match_the_chain_is_ignored() {
    let mut service = start(1_000_000);
    build_state(&service);
    let before = answers(&service);
    assert!(service.terminate(Duration::from_secs(30)).is_some());
    let path = service.data_dir().join(SNAPSHOT);
    let good = std::fs::read(&path).expect("a snapshot after a clean stop");
    let seq = snapshot_seq(service.data_dir()).expect("seq");

    let forgeries = [
        ("another hash", forge(&good, None, Some([7u8; 32]))),
        ("an earlier seq", forge(&good, Some(seq - 1), None)),
        ("a seq past the log", forge(&good, Some(seq + 5), None)),
        ("truncated", good[..good.len() - 10].to_vec()),
        // The format before the latest requests' statuses were kept with the names: its
        // state would decode as something else, so it is never decoded at all.
        ("an older format", of_format(&good, 3)),
        ("a flipped byte", {
            let mut bad = good.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            bad
        }),
    ];
    for (what, bytes) in forgeries {
        std::fs::write(&path, &bytes).expect("write the forged snapshot");
        service.start_again();
        assert_eq!(
            started_from(&service),
            0,
            "{what}: the whole log is replayed"
        );
        assert!(
            service.stderr_tail().contains("Snapshot ignored"),
            "{what}: a warning says so:\n{}",
            service.stderr_tail()
        );
        assert_eq!(answers(&service), before, "{what}: the same answers");
        // Killed, so that no new snapshot replaces the forged one for the next round.
        service.kill9();
    }

    std::fs::write(&path, &good).expect("put the good one back");
    service.start_again();
    assert_eq!(started_from(&service), seq, "the genuine snapshot is used");
    assert_eq!(answers(&service), before);
}

#[test]
fn kill_9_between_snapshots_loses_nothing() {
    let mut service = start(6);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(service.request_topic("alice", &unique_topic("snap-kill"), 1));
    }
    // Nothing more is written until the snapshot is there: it reflects exactly six events.
    assert!(
        wait_until(Duration::from_secs(20), || snapshot_seq(service.data_dir())
            == Some(6)),
        "a snapshot after six events"
    );
    // Acknowledged after the last snapshot (too few for the next), then the process dies
    // without a word.
    for _ in 0..3 {
        ids.push(service.request_topic("bob", &unique_topic("snap-kill"), 1));
    }
    let before = answers(&service);
    assert_eq!(before[6].1["events"], 9);
    service.kill9();
    assert_eq!(snapshot_seq(service.data_dir()), Some(6));
    service.start_again();
    assert_eq!(
        started_from(&service),
        6,
        "from the snapshot, with a tail of three"
    );
    for id in &ids {
        assert_eq!(service.request(id)["status"], "pending", "{id}");
    }
    assert_eq!(answers(&service), before);
}

/// Decided requests of every kind the registry reduces (rejected, withdrawn, completed), with
/// a config, reasons and notes; returns their ids and the replies their last command got.
fn decide_some(service: &Service) -> Vec<(String, Value)> {
    let mut decided = Vec::new();
    for n in 0..5 {
        let filed = service.create_request(
            "bob",
            json!({
                "topic": unique_topic("decided-rejected"),
                "partitions": 1 + n,
                "config": {"retention.ms": format!("{}", 3_600_000 + n)},
                "reason": format!("test {n}"),
            }),
        );
        let id = filed["id"].as_str().expect("id").to_string();
        let (status, reply) = service.post(
            "carol",
            &format!("/api/v1/topic-requests/{id}/reject"),
            &json!({"reason": format!("not now ({n})")}),
        );
        assert_eq!(status, 200, "reject: {reply}");
        decided.push((id, reply));
    }
    let id = service.request_topic("alice", &unique_topic("decided-withdrawn"), 2);
    let (status, reply) = service.post(
        "alice",
        &format!("/api/v1/topic-requests/{id}/withdraw"),
        &json!({}),
    );
    assert_eq!(status, 200, "withdraw: {reply}");
    decided.push((id, reply));
    let id = service.provision(&unique_topic("decided-completed"), 1);
    let reply = service.request(&id);
    assert_eq!(reply["status"], "completed", "{reply}");
    decided.push((id, reply));
    decided
}

/// Every rejected request, walked two at a time.
fn rejected_pages(service: &Service) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/topic-requests?status=rejected&limit=2&after={a}"),
            None => "/api/v1/topic-requests?status=rejected&limit=2".to_string(),
        };
        let (status, page) = service.get("carol", &path);
        assert_eq!(status, 200, "{path}: {page}");
        after = page["next"].as_str().map(str::to_string);
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

#[test]
fn decided_requests_read_from_the_log_are_the_same_after_a_restart() {
    let mut service = start(1_000_000);
    let decided = decide_some(&service);
    // Read back now (from the log: the registry keeps only what decisions need of them), they
    // are what the command that decided them answered, field by field.
    let before: Vec<Value> = decided
        .iter()
        .map(|(id, reply)| {
            let read = service.request(id);
            assert_eq!(&read, reply, "request {id} read back");
            read
        })
        .collect();
    let rejected = before.iter().filter(|r| r["status"] == "rejected").count();
    assert_eq!(rejected, 5);
    assert_eq!(before[0]["config"], json!({"retention.ms": "3600000"}));
    assert_eq!(before[0]["decision_note"], "not now (0)");
    assert!(before[0]["decided_at"].is_string(), "{}", before[0]);
    let pages = rejected_pages(&service);
    assert_eq!(pages.len(), 3, "five rejected requests, two a page");

    let check = |service: &Service, from: &str| {
        for ((id, _), was) in decided.iter().zip(&before) {
            assert_eq!(&service.request(id), was, "{from}: request {id}");
        }
        assert_eq!(
            rejected_pages(service),
            pages,
            "{from}: the pages of rejected requests"
        );
    };
    assert!(service.terminate(Duration::from_secs(30)).is_some());
    let seq = snapshot_seq(service.data_dir()).expect("a snapshot after a clean stop");
    service.start_again();
    assert_eq!(started_from(&service), seq, "started from the snapshot");
    check(&service, "from the snapshot");

    service.kill9();
    std::fs::remove_file(service.data_dir().join(SNAPSHOT)).expect("remove snapshot");
    service.start_again();
    assert_eq!(started_from(&service), 0, "a full replay");
    check(&service, "from the whole log");
}

/// Requests and topics with configs of several keys, filed by several people (the registry
/// keeps a topic's config as one shared list of entries in key order, and a decided request's
/// requester as an index into the people it has met): a restart from the snapshot and a full
/// replay answer as the running service did, field by field, and the pages of each requester's
/// requests are the same.
#[test]
fn configs_and_requesters_read_the_same_after_a_restart() {
    let mut service = start(1_000_000);
    let config = |n: u32| {
        // Keys given out of order: every answer lists them in key order.
        json!({
            "segment.ms": format!("{}", 600_000 + n),
            "cleanup.policy": "delete",
            "retention.ms": format!("{}", 3_600_000 + n),
        })
    };
    let mut ids = Vec::new();
    for (n, who) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let n = n as u32;
        let filed = service.create_request(
            who,
            json!({"topic": unique_topic("cfg-rejected"), "partitions": 1, "config": config(n)}),
        );
        let id = filed["id"].as_str().expect("id").to_string();
        assert_eq!(filed["config"], config(n), "{filed}");
        let (status, reply) = service.post(
            if *who == "carol" { "dave" } else { "carol" },
            &format!("/api/v1/topic-requests/{id}/reject"),
            &json!({"reason": "not now"}),
        );
        assert_eq!(status, 200, "reject: {reply}");
        ids.push(id);
        let pending = service.create_request(
            who,
            json!({"topic": unique_topic("cfg-pending"), "partitions": 1, "config": config(n + 10)}),
        );
        ids.push(pending["id"].as_str().expect("id").to_string());
    }
    let active = unique_topic("cfg-active");
    let filed = service.create_request(
        "bob",
        json!({"topic": active, "partitions": 1, "config": config(20)}),
    );
    let id = filed["id"].as_str().expect("id").to_string();
    service.approve("carol", &id);
    service.wait_topic_status(&active, "active", Duration::from_secs(60));
    ids.push(id);

    let answers = |service: &Service| {
        let requests: Vec<Value> = ids.iter().map(|id| service.request(id)).collect();
        let (status, topic) = service.topic(&active);
        assert_eq!(status, 200, "{topic}");
        let mine: Vec<Vec<Value>> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|who| {
                service.list_all(
                    "carol",
                    &format!("/api/v1/topic-requests?requested_by={who}"),
                    "requests",
                )
            })
            .collect();
        (requests, topic, mine)
    };
    let before = answers(&service);
    assert_eq!(before.1["config"], config(20), "{}", before.1);
    for (n, r) in before.0.iter().enumerate().take(8) {
        let n = (n / 2) as u32 + if n % 2 == 0 { 0 } else { 10 };
        assert_eq!(r["config"], config(n), "{r}");
    }
    assert_eq!(
        before.2[0].len(),
        2,
        "alice's two requests: {:?}",
        before.2[0]
    );
    assert_eq!(before.2[1].len(), 3, "bob's three requests");
    assert_eq!(before.2[1][0]["requested_by"], "bob");

    assert!(service.terminate(Duration::from_secs(30)).is_some());
    let seq = snapshot_seq(service.data_dir()).expect("a snapshot after a clean stop");
    service.start_again();
    assert_eq!(started_from(&service), seq, "started from the snapshot");
    assert_eq!(answers(&service), before, "from the snapshot");

    service.kill9();
    std::fs::remove_file(service.data_dir().join(SNAPSHOT)).expect("remove snapshot");
    service.start_again();
    assert_eq!(started_from(&service), 0, "a full replay");
    assert_eq!(answers(&service), before, "from the whole log");
}
