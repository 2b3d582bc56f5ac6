//! Crash safety: `kill -9` the real binary while Kafka work is owed, in the middle of it, and while
//! idle; after a restart the log is replayed, unfinished work completes exactly once, and state,
//! audit and hash chain are what they were.

mod common;

use std::time::Duration;

use common::{
    audit_verify, id_of, kafka_delete_topic, kafka_topic_partitions, kinds, parse_verify_ok,
    unique_topic, wait_until, Checks, Service, UNREACHABLE_BROKER,
};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(60);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Sorts a JSON list by one string field so comparisons do not depend on listing order.
fn sorted_by(list: &Value, key: &str) -> Vec<Value> {
    let mut items = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .clone();
    items.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    items
}

/// Everything a client can observe about governance state, plus the verified chain head.
#[derive(Debug, PartialEq)]
struct Snapshot {
    requests: Vec<Value>,
    topics: Vec<Value>,
    audit: Vec<Value>,
}

fn snapshot(svc: &Service) -> Snapshot {
    let requests = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    let topics = Value::Array(svc.list_all("carol", "/api/v1/topics", "topics"));
    Snapshot {
        requests: sorted_by(&requests, "id"),
        topics: sorted_by(&topics, "name"),
        audit: svc.audit(""),
    }
}

fn verify_head(svc: &Service) -> (u64, String) {
    let (status, stdout, stderr) = audit_verify(svc.data_dir());
    assert!(
        status.is_some_and(|s| s.success()),
        "audit verify failed: {status:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    parse_verify_ok(&stdout)
        .unwrap_or_else(|| panic!("audit verify printed no `ok: N events, head H`: {stdout}"))
}

fn provisioned_count(svc: &Service, topic: &str) -> usize {
    let provisioned = svc.audit(&format!("topic={topic}&kind=topic_provisioned"));
    for event in &provisioned {
        // Which side of the race the kill landed on: true means Kafka had the topic before the
        // restarted service recorded it.
        eprintln!(
            "{topic}: topic_provisioned already_existed={}",
            event["data"]["already_existed"]
        );
    }
    provisioned.len()
}

#[test]
fn approval_while_the_broker_is_down_completes_after_a_crash_and_restart() {
    let mut svc = Service::start_with_bootstrap(UNREACHABLE_BROKER);
    let topic = unique_topic("crash-down");
    let id = svc.request_topic("alice", &topic, 2);
    let approved = svc.approve("carol", &id);
    assert_eq!(approved["status"], "approved", "{approved}");

    // Kafka work is owed and cannot happen: nothing may pretend it did, or give up.
    let (status, body) = svc.get_anon("/readyz");
    assert_eq!(status, 503, "broker unreachable, /readyz: {body}");
    let moved = wait_until(Duration::from_secs(2), || {
        svc.request(&id)["status"] != "approved"
    });
    assert!(
        !moved,
        "request left `approved` with no broker: {}",
        svc.request(&id)
    );
    let (status, view) = svc.topic(&topic);
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "provisioning", "{view}");
    assert_eq!(kafka_topic_partitions(&topic), None);
    // Conflict answers while work is owed; checked at the end so the recovery below always runs.
    let mut conflicts = Checks::default();
    conflicts.expect(
        "create request for a topic being provisioned",
        svc.post("bob", "/api/v1/topic-requests", &json!({"topic": topic})),
        409,
        &["topic_exists"],
    );
    conflicts.expect(
        "deletion request for a topic being provisioned",
        svc.post(
            "alice",
            &format!("/api/v1/topics/{topic}/deletion-requests"),
            &json!({"reason": "changed my mind"}),
        ),
        409,
        &["topic_not_active"],
    );

    svc.kill9();
    svc.restart_with_bootstrap(&common::bootstrap());

    let done = svc.wait_request_status(&id, "completed", SETTLE);
    assert_eq!(done["decided_by"], "carol", "{done}");
    svc.wait_topic_status(&topic, "active", Duration::from_secs(10));
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic) == Some(2)),
        "topic {topic} not in Kafka after restart"
    );
    svc.wait_ready(Duration::from_secs(30));
    assert_eq!(
        provisioned_count(&svc, &topic),
        1,
        "exactly one topic_provisioned"
    );
    let events = svc.audit(&format!("topic={topic}"));
    assert_eq!(
        kinds(&events),
        ["topic_requested", "request_approved", "topic_provisioned"]
    );
    kafka_delete_topic(&topic);
    conflicts.finish();
}

#[test]
fn kill_right_after_approval_provisions_exactly_once() {
    let mut svc = Service::start();
    svc.wait_ready(Duration::from_secs(30));
    let topics: Vec<String> = (0..3).map(|_| unique_topic("crash-mid")).collect();
    let ids: Vec<String> = topics
        .iter()
        .map(|t| svc.request_topic("alice", t, 3))
        .collect();

    // Approve all, then SIGKILL the moment the last reply is in: provisioning is racing.
    for id in &ids {
        svc.approve("carol", id);
    }
    svc.kill9();
    svc.restart();

    for (id, topic) in ids.iter().zip(&topics) {
        svc.wait_request_status(id, "completed", SETTLE);
        svc.wait_topic_status(topic, "active", Duration::from_secs(10));
        assert!(
            wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(topic) == Some(3)),
            "topic {topic} not in Kafka after restart"
        );
        assert_eq!(
            provisioned_count(&svc, topic),
            1,
            "exactly one topic_provisioned for {topic}: {:?}",
            svc.audit(&format!("topic={topic}"))
        );
    }

    // A second crash after everything settled changes nothing and repeats nothing.
    let before = snapshot(&svc);
    svc.restart();
    svc.wait_ready(Duration::from_secs(30));
    assert_eq!(snapshot(&svc), before, "state changed over an idle restart");
    for topic in &topics {
        kafka_delete_topic(topic);
    }
}

#[test]
fn idle_kill_preserves_state_audit_and_chain() {
    let mut svc = Service::start();
    svc.wait_ready(Duration::from_secs(30));

    // Some history in every shape: completed, pending, rejected, withdrawn, a pending deletion.
    let active = unique_topic("idle-active");
    svc.provision(&active, 2);
    let (status, deletion) = svc.post(
        "alice",
        &format!("/api/v1/topics/{active}/deletion-requests"),
        &json!({"reason": "later"}),
    );
    assert_eq!(status, 201, "{deletion}");
    let rejected = svc.request_topic("bob", &unique_topic("idle-rejected"), 1);
    let (status, _) = svc.post(
        "dave",
        &format!("/api/v1/topic-requests/{rejected}/reject"),
        &json!({"reason": "no"}),
    );
    assert_eq!(status, 200);
    let withdrawn = svc.request_topic("bob", &unique_topic("idle-withdrawn"), 1);
    let (status, _) = svc.post(
        "bob",
        &format!("/api/v1/topic-requests/{withdrawn}/withdraw"),
        &json!({}),
    );
    assert_eq!(status, 200);
    svc.create_request(
        "alice",
        json!({"topic": unique_topic("idle-pending"), "config": {"cleanup.policy": "compact"}}),
    );

    let before = snapshot(&svc);
    assert_eq!(before.requests.len(), 5, "{:?}", before.requests);
    let head_before = verify_head(&svc);
    assert_eq!(
        head_before.0,
        before.audit.len() as u64,
        "verify counts every event the audit API shows"
    );

    svc.kill9();
    assert_eq!(
        verify_head(&svc),
        head_before,
        "chain changed by the kill itself"
    );
    svc.restart();
    svc.wait_ready(Duration::from_secs(30));

    let after = snapshot(&svc);
    assert_eq!(
        after.requests, before.requests,
        "requests differ after restart"
    );
    assert_eq!(after.topics, before.topics, "topics differ after restart");
    assert_eq!(after.audit, before.audit, "audit differs after restart");
    assert_eq!(
        verify_head(&svc),
        head_before,
        "chain head differs after restart"
    );

    // The replayed state still works: the pending deletion can be decided.
    let delete_id = id_of(&deletion);
    svc.approve("carol", &delete_id);
    svc.wait_request_status(&delete_id, "completed", SETTLE);
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&active).is_none()),
        "topic {active} still in Kafka"
    );
}

#[test]
fn deletion_approved_while_the_broker_is_down_completes_after_restart() {
    let mut svc = Service::start();
    let topic = unique_topic("crash-delete");
    svc.provision(&topic, 1);
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic) == Some(1)),
        "topic {topic} not in Kafka"
    );

    svc.restart_with_bootstrap(UNREACHABLE_BROKER);
    let (status, deletion) = svc.post(
        "alice",
        &format!("/api/v1/topics/{topic}/deletion-requests"),
        &json!({"reason": "retired"}),
    );
    assert_eq!(status, 201, "{deletion}");
    let delete_id = id_of(&deletion);
    svc.approve("carol", &delete_id);
    let moved = wait_until(Duration::from_secs(2), || {
        svc.request(&delete_id)["status"] != "approved"
    });
    assert!(
        !moved,
        "deletion left `approved` with no broker: {}",
        svc.request(&delete_id)
    );
    let (status, view) = svc.topic(&topic);
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "deleting", "{view}");
    // Conflict answers while work is owed; checked at the end so the recovery below always runs.
    let mut conflicts = Checks::default();
    conflicts.expect(
        "deletion request for a topic being deleted",
        svc.post(
            "dave",
            &format!("/api/v1/topics/{topic}/deletion-requests"),
            &json!({"reason": "again"}),
        ),
        409,
        &["topic_not_active"],
    );
    assert_eq!(
        kafka_topic_partitions(&topic),
        Some(1),
        "the topic cannot be gone: the service never reached Kafka"
    );

    svc.kill9();
    svc.restart_with_bootstrap(&common::bootstrap());
    svc.wait_request_status(&delete_id, "completed", SETTLE);
    svc.wait_topic_status(&topic, "deleted", Duration::from_secs(10));
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic).is_none()),
        "topic {topic} still in Kafka after the restart"
    );
    let deleted = svc.audit(&format!("topic={topic}&kind=topic_deleted"));
    assert_eq!(deleted.len(), 1, "exactly one topic_deleted: {deleted:?}");
    assert_eq!(deleted[0]["actor"], "system");
    conflicts.finish();
}

#[test]
fn issued_and_revoked_tokens_survive_kill9() {
    let mut svc = Service::start();
    let (_, kept) = svc.issue_token("kept", &["producer"]);
    let revoked = svc.revoked_token("gone", &["producer"]);
    let before = Value::Array(svc.list_all("carol", "/api/v1/tokens", "tokens"));
    let head_before = verify_head(&svc);

    svc.restart();

    let after = Value::Array(svc.list_all("carol", "/api/v1/tokens", "tokens"));
    assert_eq!(after, before, "the tokens differ after restart");
    assert_eq!(
        verify_head(&svc),
        head_before,
        "chain head differs after restart"
    );
    let (status, _) = svc.send("GET", "/api/v1/topics", Some(&kept), None);
    assert_eq!(
        status, 200,
        "a token issued before the kill signs in after it"
    );
    let (status, body) = svc.send("GET", "/api/v1/topics", Some(&revoked), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "a token revoked before the kill stays revoked: {body}"
    );
}

/// Everything a client can observe of the access model, as an admin sees it.
fn access_snapshot(svc: &Service, topic: &str) -> (Value, Value, Value, Vec<Value>) {
    let grants = Value::Array(svc.list_all("carol", "/api/v1/grants", "grants"));
    let requests = Value::Array(svc.list_all("carol", "/api/v1/access-requests", "requests"));
    let (status, shown) = svc.topic(topic);
    assert_eq!(status, 200, "{shown}");
    (grants, requests, shown, svc.audit(""))
}

#[test]
fn grants_revocations_and_ownership_survive_kill9() {
    let mut svc = Service::start();
    svc.wait_ready(Duration::from_secs(30));
    let ok = |reply: (u16, Value), status: u16, what: &str| {
        assert_eq!(reply.0, status, "{what}: {}", reply.1);
        reply.1
    };
    // A restricted topic of alice.
    let topic = unique_topic("crash-acl");
    let create = svc.create_request(
        "alice",
        json!({"topic": topic, "partitions": 1, "visibility": "restricted"}),
    );
    svc.approve("carol", &id_of(&create));
    svc.wait_topic_status(&topic, "active", SETTLE);
    let ask = |who: &str, access: &str| {
        let reply = svc.post(
            who,
            "/api/v1/access-requests",
            &json!({"topic": topic, "access": access, "reason": "work"}),
        );
        id_of(&ok(reply, 201, "access request"))
    };
    let produce = ask("bob", "produce");
    ok(
        svc.post(
            "alice",
            &format!("/api/v1/access-requests/{produce}/approve"),
            &json!({"note": "go"}),
        ),
        200,
        "owner approves",
    );
    let consume = ask("erin", "consume");
    ok(
        svc.post(
            "carol",
            &format!("/api/v1/access-requests/{consume}/approve"),
            &json!({}),
        ),
        200,
        "admin approves",
    );
    ok(
        svc.send(
            "DELETE",
            &format!("/api/v1/grants/{consume}"),
            Some(svc.token("alice")),
            None,
        ),
        200,
        "owner revokes",
    );
    let again = ask("erin", "consume");
    let handover = ok(
        svc.post(
            "alice",
            &format!("/api/v1/topics/{topic}/ownership-requests"),
            &json!({"to": "bob", "reason": "team change"}),
        ),
        201,
        "handover",
    );
    ok(
        svc.post(
            "bob",
            &format!("/api/v1/access-requests/{}/approve", id_of(&handover)),
            &json!({}),
        ),
        200,
        "bob accepts",
    );

    let before = access_snapshot(&svc, &topic);
    assert_eq!(before.2["owner"], "bob", "{}", before.2);
    assert_eq!(before.2["visibility"], "restricted");
    let grants = before.0.as_array().expect("grants");
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(
        (grants[0]["user"].as_str(), grants[0]["access"].as_str()),
        (Some("bob"), Some("produce"))
    );
    let pending: Vec<_> = before
        .1
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["status"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["id"], json!(again));
    assert!(kinds(&before.3).contains(&"grant_revoked"));

    svc.kill9();
    svc.restart();
    svc.wait_ready(Duration::from_secs(30));
    let after = access_snapshot(&svc, &topic);
    assert_eq!(after.0, before.0, "grants differ after restart");
    assert_eq!(after.1, before.1, "access requests differ after restart");
    assert_eq!(after.2, before.2, "the topic differs after restart");
    assert_eq!(after.3, before.3, "audit differs after restart");
    // The replayed state decides: alice handed the topic over and holds no grant.
    let refused = svc.post(
        "alice",
        &format!("/api/v1/topics/{topic}/records"),
        &json!([{"value": 1}]),
    );
    common::assert_error(&refused, 403, "no_access", "the former owner sends");
    kafka_delete_topic(&topic);
}
