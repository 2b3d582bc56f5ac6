//! The topic lifecycle end to end through the real binary, checked against the real broker:
//! request, approve, provision, reject, withdraw, self-approval, deletion, conflicts, policy,
//! authentication, request filters and the audit trail.

mod common;

use std::time::Duration;

use common::{
    assert_error, id_of, kafka_create_topic, kafka_delete_topic, kafka_topic_config,
    kafka_topic_partitions, kinds, run_kafflow, sha256_hex, unique_topic, wait_until, Service,
};
use serde_json::{json, Value};

const PROVISION_TIMEOUT: Duration = Duration::from_secs(60);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn approve_path(id: &str) -> String {
    format!("/api/v1/topic-requests/{id}/approve")
}

fn reject_path(id: &str) -> String {
    format!("/api/v1/topic-requests/{id}/reject")
}

fn withdraw_path(id: &str) -> String {
    format!("/api/v1/topic-requests/{id}/withdraw")
}

fn deletion_path(topic: &str) -> String {
    format!("/api/v1/topics/{topic}/deletion-requests")
}

/// Asserts the audit events are in strictly increasing seq order.
fn assert_seq_increasing(events: &[Value]) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq is a number"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "audit seqs not increasing: {seqs:?}"
    );
}

fn actors(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or("<no actor>"))
        .collect()
}

#[test]
fn approved_request_is_provisioned_in_kafka_and_audited() {
    let svc = Service::start();
    let topic = unique_topic("life");

    let request = svc.create_request(
        "alice",
        json!({
            "topic": topic,
            "partitions": 2,
            "config": {"retention.ms": "3600000"},
            "reason": "orders for the shop"
        }),
    );
    let id = id_of(&request);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "id is not a UUID: {id}");
    assert_eq!(request["kind"], "create", "{request}");
    assert_eq!(request["topic"], topic.as_str(), "{request}");
    assert_eq!(request["partitions"], 2, "{request}");
    assert_eq!(request["replication_factor"], 1, "{request}");
    assert_eq!(request["config"], json!({"retention.ms": "3600000"}));
    assert_eq!(request["reason"], "orders for the shop", "{request}");
    assert_eq!(request["status"], "pending", "{request}");
    assert_eq!(request["requested_by"], "alice", "{request}");
    assert!(request["requested_at"].is_string(), "{request}");
    assert!(request["decided_by"].is_null(), "{request}");

    // Any authenticated principal may read, even one without write roles.
    let (status, read) = svc.get("erin", &format!("/api/v1/topic-requests/{id}"));
    assert_eq!(status, 200, "{read}");
    assert_eq!(read, request, "GET returns the request as created");

    let (status, approved) = svc.post("carol", &approve_path(&id), &json!({"note": "ok"}));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_eq!(approved["decided_by"], "carol", "{approved}");
    assert_eq!(approved["decision_note"], "ok", "{approved}");
    assert!(approved["decided_at"].is_string(), "{approved}");

    let done = svc.wait_request_status(&id, "completed", PROVISION_TIMEOUT);
    assert!(done["error"].is_null(), "{done}");
    let topic_view = svc.wait_topic_status(&topic, "active", Duration::from_secs(10));
    assert_eq!(topic_view["name"], topic.as_str(), "{topic_view}");
    assert_eq!(topic_view["partitions"], 2, "{topic_view}");
    assert_eq!(topic_view["replication_factor"], 1, "{topic_view}");
    assert_eq!(topic_view["owner"], "alice", "{topic_view}");
    assert_eq!(topic_view["request_id"], id.as_str(), "{topic_view}");
    assert_eq!(topic_view["config"], json!({"retention.ms": "3600000"}));

    // Kafka's own view, not KafFlow's.
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic) == Some(2)),
        "topic {topic} with 2 partitions not in Kafka metadata: {:?}",
        kafka_topic_partitions(&topic)
    );
    assert_eq!(
        kafka_topic_config(&topic, "retention.ms").as_deref(),
        Some("3600000"),
        "requested topic config not applied in Kafka"
    );

    let list = Value::Array(svc.list_all("bob", "/api/v1/topics", "topics"));
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|t| t["name"] == topic.as_str())),
        "GET /api/v1/topics lacks {topic}: {list}"
    );

    let events = svc.audit(&format!("topic={topic}"));
    assert_eq!(
        kinds(&events),
        ["topic_requested", "request_approved", "topic_provisioned"],
        "{events:?}"
    );
    assert_eq!(actors(&events), ["alice", "carol", "system"], "{events:?}");
    assert_seq_increasing(&events);
    for event in &events {
        assert_eq!(event["topic"], topic.as_str(), "{event}");
        assert_eq!(event["request_id"], id.as_str(), "{event}");
        assert!(
            event["id"].is_string() && event["at"].is_string(),
            "{event}"
        );
    }
    assert_eq!(events[0]["data"]["partitions"], 2, "{}", events[0]);

    // Decided once, decided for good.
    assert_error(
        &svc.post("dave", &approve_path(&id), &json!({})),
        409,
        "not_pending",
        "approve a completed request",
    );
    assert_error(
        &svc.post("dave", &reject_path(&id), &json!({"reason": "late"})),
        409,
        "not_pending",
        "reject a completed request",
    );

    kafka_delete_topic(&topic);
}

#[test]
fn reject_requires_a_reason_and_the_topic_never_reaches_kafka() {
    let svc = Service::start();
    let topic = unique_topic("rejected");
    let id = svc.request_topic("alice", &topic, 1);

    assert_error(
        &svc.post("carol", &reject_path(&id), &json!({})),
        400,
        "reason_required",
        "reject without reason",
    );
    assert_error(
        &svc.post("carol", &reject_path(&id), &json!({"reason": "   "})),
        400,
        "reason_required",
        "reject with a blank reason",
    );
    assert_eq!(
        svc.request(&id)["status"],
        "pending",
        "refused reject changed the request"
    );

    let (status, rejected) = svc.post(
        "carol",
        &reject_path(&id),
        &json!({"reason": "use the shared orders topic"}),
    );
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_eq!(rejected["decided_by"], "carol", "{rejected}");
    assert_eq!(
        rejected["decision_note"], "use the shared orders topic",
        "the decline reason is kept on the request: {rejected}"
    );
    assert_eq!(svc.request(&id)["status"], "rejected");

    assert_error(
        &svc.post("dave", &approve_path(&id), &json!({})),
        409,
        "not_pending",
        "approve a rejected request",
    );

    let events = svc.audit(&format!("request_id={id}"));
    assert_eq!(kinds(&events), ["topic_requested", "request_rejected"]);
    assert_eq!(actors(&events), ["alice", "carol"]);
    assert_eq!(
        events[1]["data"]["reason"], "use the shared orders topic",
        "{}",
        events[1]
    );

    // Nothing was provisioned: give a stray provisioner a moment, then ask Kafka.
    assert!(
        !wait_until(Duration::from_secs(2), || kafka_topic_partitions(&topic)
            .is_some()),
        "rejected topic {topic} exists in Kafka"
    );

    // A rejected request does not block a new one.
    svc.request_topic("alice", &topic, 1);
}

#[test]
fn only_the_requester_withdraws_and_only_once() {
    let svc = Service::start();
    let topic = unique_topic("withdrawn");
    let id = svc.request_topic("alice", &topic, 1);

    assert_error(
        &svc.post("bob", &withdraw_path(&id), &json!({})),
        403,
        "not_requester",
        "bob withdraws alice's request",
    );
    assert_error(
        &svc.post("carol", &withdraw_path(&id), &json!({})),
        403,
        "not_requester",
        "an admin withdraws alice's request",
    );

    let (status, withdrawn) = svc.post("alice", &withdraw_path(&id), &json!({}));
    assert_eq!(status, 200, "{withdrawn}");
    assert_eq!(withdrawn["status"], "withdrawn", "{withdrawn}");

    assert_error(
        &svc.post("alice", &withdraw_path(&id), &json!({})),
        409,
        "not_pending",
        "withdraw twice",
    );
    assert_error(
        &svc.post("carol", &approve_path(&id), &json!({})),
        409,
        "not_pending",
        "approve a withdrawn request",
    );

    let events = svc.audit(&format!("request_id={id}"));
    assert_eq!(kinds(&events), ["topic_requested", "request_withdrawn"]);
    assert_eq!(actors(&events), ["alice", "alice"]);
    assert_eq!(kafka_topic_partitions(&topic), None);
}

#[test]
fn an_admin_cannot_approve_their_own_request() {
    let svc = Service::start();
    let topic = unique_topic("self");
    let id = svc.request_topic("carol", &topic, 1);

    assert_error(
        &svc.post("carol", &approve_path(&id), &json!({})),
        403,
        "self_approval",
        "carol approves her own request",
    );
    assert_eq!(svc.request(&id)["status"], "pending");

    let approved = svc.approve("dave", &id);
    assert_eq!(approved["decided_by"], "dave", "{approved}");
    svc.wait_request_status(&id, "completed", PROVISION_TIMEOUT);
    let topic_view = svc.wait_topic_status(&topic, "active", Duration::from_secs(10));
    assert_eq!(topic_view["owner"], "carol", "{topic_view}");
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic) == Some(1)),
        "topic {topic} not in Kafka"
    );

    let events = svc.audit(&format!("topic={topic}"));
    assert_eq!(actors(&events), ["carol", "dave", "system"], "{events:?}");
    kafka_delete_topic(&topic);
}

#[test]
fn deletion_by_the_owner_removes_the_topic_from_kafka() {
    let svc = Service::start();
    let topic = unique_topic("deleted");
    let create_id = svc.provision(&topic, 2);
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic) == Some(2)),
        "topic {topic} not in Kafka"
    );

    assert_error(
        &svc.post(
            "bob",
            &deletion_path(&topic),
            &json!({"reason": "mine now"}),
        ),
        403,
        "not_owner",
        "bob asks to delete alice's topic",
    );
    assert_error(
        &svc.post("alice", &deletion_path(&topic), &json!({})),
        400,
        "reason_required",
        "deletion request without a reason",
    );

    let (status, deletion) = svc.post(
        "alice",
        &deletion_path(&topic),
        &json!({"reason": "the shop closed"}),
    );
    assert_eq!(status, 201, "{deletion}");
    assert_eq!(deletion["kind"], "delete", "{deletion}");
    assert_eq!(deletion["topic"], topic.as_str(), "{deletion}");
    assert_eq!(deletion["status"], "pending", "{deletion}");
    assert_eq!(deletion["requested_by"], "alice", "{deletion}");
    assert_eq!(deletion["reason"], "the shop closed", "{deletion}");
    let delete_id = id_of(&deletion);
    assert_ne!(delete_id, create_id);

    assert_error(
        &svc.post("dave", &deletion_path(&topic), &json!({"reason": "again"})),
        409,
        "request_pending",
        "second deletion request while one is pending",
    );
    assert_error(
        &svc.post("alice", &approve_path(&delete_id), &json!({})),
        403,
        "forbidden",
        "a producer approves",
    );

    let approved = svc.approve("carol", &delete_id);
    assert_eq!(approved["status"], "approved", "{approved}");
    svc.wait_request_status(&delete_id, "completed", PROVISION_TIMEOUT);
    svc.wait_topic_status(&topic, "deleted", Duration::from_secs(10));
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic).is_none()),
        "topic {topic} still in Kafka after an approved deletion"
    );

    // Deleted topics stay listed.
    let list = Value::Array(svc.list_all("erin", "/api/v1/topics", "topics"));
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == topic.as_str()).cloned())
        .unwrap_or_else(|| panic!("GET /api/v1/topics lacks deleted {topic}: {list}"));
    assert_eq!(listed["status"], "deleted", "{listed}");

    let events = svc.audit(&format!("topic={topic}"));
    assert_eq!(
        kinds(&events),
        [
            "topic_requested",
            "request_approved",
            "topic_provisioned",
            "deletion_requested",
            "request_approved",
            "topic_deleted"
        ],
        "{events:?}"
    );
    assert_eq!(
        actors(&events),
        ["alice", "carol", "system", "alice", "carol", "system"]
    );
    assert_seq_increasing(&events);
    assert_eq!(events[3]["request_id"], delete_id.as_str());
    assert_eq!(events[5]["request_id"], delete_id.as_str());

    assert_error(
        &svc.post("alice", &deletion_path(&topic), &json!({"reason": "twice"})),
        409,
        "topic_not_active",
        "deletion request for a deleted topic",
    );
    // The name is free again.
    svc.request_topic("bob", &topic, 1);
}

#[test]
fn an_admin_may_ask_to_delete_any_topic() {
    let svc = Service::start();
    let topic = unique_topic("admin-del");
    svc.provision(&topic, 1);

    // A rejected deletion leaves the topic as it was, and the owner may ask again later.
    let (status, first) = svc.post("alice", &deletion_path(&topic), &json!({"reason": "tidy"}));
    assert_eq!(status, 201, "{first}");
    let (status, rejected) = svc.post(
        "carol",
        &reject_path(&id_of(&first)),
        &json!({"reason": "still read by billing"}),
    );
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    let (status, view) = svc.topic(&topic);
    assert_eq!((status, &view["status"]), (200, &json!("active")), "{view}");
    assert_eq!(
        kafka_topic_partitions(&topic),
        Some(1),
        "rejected deletion removed the topic"
    );

    let (status, deletion) = svc.post(
        "dave",
        &deletion_path(&topic),
        &json!({"reason": "cleanup"}),
    );
    assert_eq!(status, 201, "{deletion}");
    let delete_id = id_of(&deletion);
    assert_error(
        &svc.post("dave", &approve_path(&delete_id), &json!({})),
        403,
        "self_approval",
        "dave approves his own deletion request",
    );
    svc.approve("carol", &delete_id);
    svc.wait_request_status(&delete_id, "completed", PROVISION_TIMEOUT);
    assert!(
        wait_until(KAFKA_TIMEOUT, || kafka_topic_partitions(&topic).is_none()),
        "topic {topic} still in Kafka"
    );
}

#[test]
fn deletion_of_unknown_or_unprovisioned_topics_is_refused() {
    let svc = Service::start();
    assert_error(
        &svc.post(
            "carol",
            &deletion_path(&unique_topic("nowhere")),
            &json!({"reason": "x"}),
        ),
        404,
        "not_found",
        "deletion request for an unknown topic",
    );
    // A pending create request makes no active topic.
    let topic = unique_topic("pending");
    svc.request_topic("alice", &topic, 1);
    let reply = svc.post("carol", &deletion_path(&topic), &json!({"reason": "x"}));
    assert!(
        matches!(
            (reply.0, common::error_code(&reply.1)),
            (404, "not_found") | (409, "topic_not_active") | (409, "request_pending")
        ),
        "deletion request for a topic that was only requested: {} {}",
        reply.0,
        reply.1
    );
}

#[test]
fn duplicate_requests_and_existing_topics_conflict() {
    let svc = Service::start();
    let topic = unique_topic("dup");
    let id = svc.request_topic("alice", &topic, 1);

    assert_error(
        &svc.post("bob", "/api/v1/topic-requests", &json!({"topic": topic})),
        409,
        "request_pending",
        "second request while one is pending",
    );
    assert_error(
        &svc.post("alice", "/api/v1/topic-requests", &json!({"topic": topic})),
        409,
        "request_pending",
        "same requester asks again",
    );

    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", PROVISION_TIMEOUT);
    svc.wait_topic_status(&topic, "active", Duration::from_secs(10));
    assert_error(
        &svc.post("bob", "/api/v1/topic-requests", &json!({"topic": topic})),
        409,
        "topic_exists",
        "request for an active topic",
    );

    let list = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "refused requests must not be recorded: {list}"
    );
    kafka_delete_topic(&topic);
}

#[test]
fn policy_defaults_and_limits() {
    let svc = Service::start();

    let defaults = svc.create_request("alice", json!({"topic": unique_topic("defaults")}));
    assert_eq!(defaults["partitions"], 3, "default_partitions: {defaults}");
    assert_eq!(
        defaults["replication_factor"], 1,
        "default_replication_factor: {defaults}"
    );
    assert_eq!(defaults["config"], json!({}), "{defaults}");

    let at_max = svc.create_request(
        "alice",
        json!({"topic": unique_topic("max"), "partitions": 12}),
    );
    assert_eq!(at_max["partitions"], 12);

    assert_error(
        &svc.post(
            "alice",
            "/api/v1/topic-requests",
            &json!({"topic": unique_topic("over"), "partitions": 13}),
        ),
        400,
        "invalid_partitions",
        "partitions over max_partitions",
    );
    assert_error(
        &svc.post(
            "alice",
            "/api/v1/topic-requests",
            &json!({"topic": unique_topic("zero"), "partitions": 0}),
        ),
        400,
        "invalid_partitions",
        "zero partitions",
    );
    assert_error(
        &svc.post(
            "alice",
            "/api/v1/topic-requests",
            &json!({"topic": unique_topic("rf"), "replication_factor": 2}),
        ),
        400,
        "invalid_replication_factor",
        "replication factor over max_replication_factor",
    );
    assert_error(
        &svc.post(
            "alice",
            "/api/v1/topic-requests",
            &json!({"topic": "Orders-Upper-Case"}),
        ),
        400,
        "invalid_topic_name",
        "name breaking topic_name_pattern",
    );
    assert_error(
        &svc.post(
            "alice",
            "/api/v1/topic-requests",
            &json!({"topic": "a".repeat(250)}),
        ),
        400,
        "invalid_topic_name",
        "name matching the pattern but longer than Kafka allows",
    );

    let list = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(2),
        "only the two valid requests are recorded: {list}"
    );
}

#[test]
fn authentication_and_roles() {
    let svc = Service::start();
    let topic = unique_topic("auth");

    assert_error(
        &svc.send("GET", "/api/v1/topic-requests", None, None),
        401,
        "unauthorized",
        "no token",
    );
    assert_error(
        &svc.send("GET", "/api/v1/topics", Some("not-a-known-token"), None),
        401,
        "unauthorized",
        "unknown token",
    );
    // The config holds the hash; the hash itself is not a credential.
    let hash = sha256_hex(svc.token("carol"));
    assert_error(
        &svc.send("GET", "/api/v1/topics", Some(&hash), None),
        401,
        "unauthorized",
        "the token's hash used as a token",
    );
    let basic = svc.send_with_header("/api/v1/topics", &format!("Basic {}", svc.token("carol")));
    assert_error(&basic, 401, "unauthorized", "Basic instead of Bearer");
    assert_error(
        &svc.send(
            "POST",
            "/api/v1/topic-requests",
            None,
            Some((
                serde_json::to_vec(&json!({"topic": topic})).expect("json"),
                "application/json",
            )),
        ),
        401,
        "unauthorized",
        "create without a token",
    );

    assert_error(
        &svc.post("erin", "/api/v1/topic-requests", &json!({"topic": topic})),
        403,
        "forbidden",
        "a consumer files a request",
    );
    for path in ["/api/v1/topic-requests", "/api/v1/topics", "/api/v1/audit"] {
        let (status, body) = svc.get("erin", path);
        assert_eq!(status, 200, "consumer reads {path}: {body}");
    }

    let id = svc.request_topic("bob", &topic, 1);
    assert_error(
        &svc.post("alice", &approve_path(&id), &json!({})),
        403,
        "forbidden",
        "a producer approves",
    );
    assert_error(
        &svc.post("alice", &reject_path(&id), &json!({"reason": "no"})),
        403,
        "forbidden",
        "a producer rejects",
    );
    assert_error(
        &svc.post("erin", &approve_path(&id), &json!({})),
        403,
        "forbidden",
        "a consumer approves",
    );
    assert_eq!(svc.request(&id)["status"], "pending");
    let events = svc.audit("");
    assert_eq!(
        kinds(&events),
        ["topic_requested"],
        "refused calls left events"
    );

    let (status, body) = svc.get_anon("/healthz");
    assert_eq!(status, 200, "healthz needs no token: {body}");
}

#[test]
fn request_list_filters() {
    let svc = Service::start();
    let t1 = unique_topic("filter-a");
    let t2 = unique_topic("filter-b");
    let t3 = unique_topic("filter-c");

    let id1 = svc.provision(&t1, 1);
    let id2 = svc.request_topic("bob", &t2, 1);
    let id3 = svc.request_topic("alice", &t3, 1);
    let (status, _) = svc.post("alice", &withdraw_path(&id3), &json!({}));
    assert_eq!(status, 200);
    let (status, deletion) = svc.post("alice", &deletion_path(&t1), &json!({"reason": "done"}));
    assert_eq!(status, 201, "{deletion}");
    let id4 = id_of(&deletion);

    let ids = |query: &str| -> Vec<String> {
        let list = svc.list_all(
            "erin",
            &format!("/api/v1/topic-requests{query}"),
            "requests",
        );
        let mut ids: Vec<String> = list.iter().map(id_of).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<&String>| -> Vec<String> {
        v.sort();
        v.into_iter().cloned().collect()
    };

    assert_eq!(ids(""), sorted(vec![&id1, &id2, &id3, &id4]), "no filter");
    assert_eq!(
        ids("?status=pending"),
        sorted(vec![&id2, &id4]),
        "status=pending"
    );
    assert_eq!(
        ids("?status=completed"),
        vec![id1.clone()],
        "status=completed"
    );
    assert_eq!(
        ids("?status=withdrawn"),
        vec![id3.clone()],
        "status=withdrawn"
    );
    assert_eq!(
        ids(&format!("?topic={t1}")),
        sorted(vec![&id1, &id4]),
        "topic"
    );
    assert_eq!(
        ids("?requested_by=bob"),
        vec![id2.clone()],
        "requested_by=bob"
    );
    assert_eq!(ids("?kind=delete"), vec![id4.clone()], "kind=delete");
    assert_eq!(
        ids("?kind=create"),
        sorted(vec![&id1, &id2, &id3]),
        "kind=create"
    );
    assert_eq!(
        ids("?status=pending&requested_by=alice"),
        vec![id4.clone()],
        "status and requested_by together"
    );
    assert!(
        ids("?requested_by=nobody").is_empty(),
        "requested_by=nobody"
    );
    assert_error(
        &svc.get("carol", "/api/v1/topic-requests?status=sleeping"),
        400,
        "invalid_query",
        "unknown status value",
    );
    assert_error(
        &svc.get("carol", "/api/v1/topic-requests?kind=rename"),
        400,
        "invalid_query",
        "unknown kind value",
    );
    kafka_delete_topic(&t1);
}

#[test]
fn audit_filters_and_paging() {
    let svc = Service::start();
    let t1 = unique_topic("audit-a");
    let t2 = unique_topic("audit-b");
    let t3 = unique_topic("audit-c");
    let id1 = svc.request_topic("alice", &t1, 1);
    let id2 = svc.request_topic("bob", &t2, 1);
    let (status, _) = svc.post("carol", &reject_path(&id1), &json!({"reason": "no"}));
    assert_eq!(status, 200);
    let (status, _) = svc.post("bob", &withdraw_path(&id2), &json!({}));
    assert_eq!(status, 200);
    svc.request_topic("alice", &t3, 1);

    let all = svc.audit("");
    assert_eq!(all.len(), 5, "{all:?}");
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5],
        "a fresh log has gap-free seqs from 1"
    );

    // One unpaged read of everything agrees with the paged walk.
    let (status, first) = svc.get("carol", "/api/v1/audit?limit=2");
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first["events"].as_array().map(Vec::len),
        Some(2),
        "limit=2: {first}"
    );
    assert!(
        first["next"].is_u64(),
        "more events remain, next must be a seq: {first}"
    );
    let mut paged: Vec<Value> = first["events"].as_array().cloned().unwrap_or_default();
    let mut next = first["next"].as_u64();
    let mut pages = 1;
    while let Some(after) = next {
        let (status, page) = svc.get("carol", &format!("/api/v1/audit?limit=2&after={after}"));
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().cloned().unwrap_or_default();
        assert!(events.len() <= 2, "limit=2 returned {}", events.len());
        assert!(
            events.iter().all(|e| e["seq"].as_u64() > Some(after)),
            "after={after} returned older events: {page}"
        );
        paged.extend(events);
        next = page["next"].as_u64();
        pages += 1;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(paged, all, "pages joined differ from the full list");

    let (status, tail) = svc.get("carol", "/api/v1/audit?after=3");
    assert_eq!(status, 200);
    let tail_seqs: Vec<u64> = tail["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(tail_seqs, [4, 5], "after=3: {tail}");
    assert!(tail["next"].is_null(), "last page has next null: {tail}");

    let carol = svc.audit("actor=carol");
    assert_eq!(kinds(&carol), ["request_rejected"], "actor=carol");
    let withdrawn = svc.audit("kind=request_withdrawn");
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(withdrawn[0]["actor"], "bob");
    let of_request = svc.audit(&format!("request_id={id2}"));
    assert_eq!(kinds(&of_request), ["topic_requested", "request_withdrawn"]);
    let of_topic = svc.audit(&format!("topic={t3}"));
    assert_eq!(kinds(&of_topic), ["topic_requested"]);

    assert_eq!(
        svc.audit("since=2000-01-01T00:00:00Z").len(),
        5,
        "since=2000"
    );
    assert!(
        svc.audit("until=2000-01-01T00:00:00Z").is_empty(),
        "until=2000"
    );
    let stamp = all[2]["at"].as_str().expect("at").to_string();
    let since = svc.audit(&format!("since={}", stamp.replace('+', "%2B")));
    let since_seqs: Vec<u64> = since.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        since_seqs == [3, 4, 5] || since_seqs == [4, 5],
        "since=<at of seq 3> ({stamp}) returned seqs {since_seqs:?}"
    );
}

#[test]
fn health_and_readiness() {
    let svc = Service::start();
    let (status, _) = svc.get_anon("/healthz");
    assert_eq!(status, 200);
    svc.wait_ready(Duration::from_secs(30));
    let (status, body) = svc.get_anon("/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
}

#[test]
fn a_topic_already_in_kafka_with_the_same_shape_counts_as_provisioned() {
    let svc = Service::start();
    let topic = unique_topic("preexisting");
    kafka_create_topic(&topic, 2);

    let id = svc.request_topic("alice", &topic, 2);
    svc.approve("carol", &id);
    svc.wait_request_status(&id, "completed", PROVISION_TIMEOUT);
    svc.wait_topic_status(&topic, "active", Duration::from_secs(10));
    let provisioned = svc.audit(&format!("topic={topic}&kind=topic_provisioned"));
    assert_eq!(provisioned.len(), 1, "{provisioned:?}");
    assert_eq!(
        provisioned[0]["data"]["already_existed"], true,
        "the event says Kafka already had the topic: {}",
        provisioned[0]
    );
    kafka_delete_topic(&topic);
}

#[test]
fn a_topic_already_in_kafka_with_another_shape_fails_with_a_reason() {
    let svc = Service::start();
    let topic = unique_topic("clash");
    kafka_create_topic(&topic, 1);

    let id = svc.request_topic("alice", &topic, 4);
    svc.approve("carol", &id);
    let failed = svc.wait_request_status(&id, "failed", PROVISION_TIMEOUT);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| !e.trim().is_empty()),
        "a failed request says why: {failed}"
    );
    svc.wait_topic_status(&topic, "failed", Duration::from_secs(10));
    assert_error(
        &svc.post("alice", &deletion_path(&topic), &json!({"reason": "x"})),
        409,
        "topic_not_active",
        "deletion request for a failed topic",
    );
    let events = svc.audit(&format!("topic={topic}"));
    assert_eq!(
        kinds(&events),
        ["topic_requested", "request_approved", "provisioning_failed"]
    );
    assert_eq!(events[2]["actor"], "system");
    assert_eq!(
        kafka_topic_partitions(&topic),
        Some(1),
        "KafFlow must not reshape a topic it did not create"
    );
    kafka_delete_topic(&topic);
}

#[test]
fn hash_token_prints_the_sha256_of_the_token() {
    let (status, stdout, stderr) =
        run_kafflow(&["hash-token", "s3cret-token"], Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "hash-token failed: {status:?} {stderr}"
    );
    assert_eq!(stdout.trim(), sha256_hex("s3cret-token"));
}

#[test]
fn concurrent_calls_admit_exactly_one_winner() {
    let svc = Service::start();
    let svc = &svc;
    let shared = unique_topic("race");
    let burst: Vec<String> = (0..20).map(|_| unique_topic("burst")).collect();

    // Eight principals race for one topic while twenty other requests land at the same time.
    let (race, landed) = std::thread::scope(|s| {
        let race: Vec<_> = (0..8)
            .map(|i| {
                let who = if i % 2 == 0 { "alice" } else { "bob" };
                let body = json!({"topic": shared});
                s.spawn(move || svc.post(who, "/api/v1/topic-requests", &body))
            })
            .collect();
        let landed: Vec<_> = burst
            .iter()
            .map(|topic| {
                let body = json!({"topic": topic, "partitions": 1});
                s.spawn(move || svc.post("alice", "/api/v1/topic-requests", &body))
            })
            .collect();
        let join =
            |h: std::thread::ScopedJoinHandle<'_, (u16, Value)>| h.join().expect("request thread");
        (
            race.into_iter().map(join).collect::<Vec<_>>(),
            landed.into_iter().map(join).collect::<Vec<_>>(),
        )
    });

    let winners: Vec<&(u16, Value)> = race.iter().filter(|r| r.0 == 201).collect();
    assert_eq!(winners.len(), 1, "one request per topic: {race:?}");
    for reply in race.iter().filter(|r| r.0 != 201) {
        assert_error(reply, 409, "request_pending", "losing racer");
    }
    for reply in &landed {
        assert_eq!(reply.0, 201, "concurrent distinct request: {}", reply.1);
    }
    let all = svc.audit("");
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=21).collect::<Vec<u64>>(), "gap-free under load");

    // Two admins decide the same request at once: one decision wins.
    let id = id_of(&winners[0].1);
    let decisions: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = ["carol", "dave"]
            .into_iter()
            .map(|who| {
                let path = approve_path(&id);
                s.spawn(move || svc.post(who, &path, &json!({})))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("approve thread"))
            .collect()
    });
    let approvals = decisions.iter().filter(|d| d.0 == 200).count();
    assert_eq!(approvals, 1, "exactly one approval wins: {decisions:?}");
    for reply in decisions.iter().filter(|d| d.0 != 200) {
        assert_error(reply, 409, "not_pending", "losing approver");
    }
    svc.wait_request_status(&id, "completed", PROVISION_TIMEOUT);
    let events = svc.audit(&format!("topic={shared}"));
    assert_eq!(
        kinds(&events),
        ["topic_requested", "request_approved", "topic_provisioned"],
        "{events:?}"
    );
    kafka_delete_topic(&shared);
}

#[test]
fn a_config_kafka_refuses_ends_in_failed_not_in_endless_retries() {
    let svc = Service::start();
    let topic = unique_topic("bad-config");
    let (status, reply) = svc.post(
        "alice",
        "/api/v1/topic-requests",
        &json!({"topic": topic, "partitions": 1, "config": {"retention.ms": "soon"}}),
    );
    if status == 400 {
        // Refusing the value up front is as good as failing at provisioning.
        assert_error(
            &(status, reply),
            400,
            "invalid_config",
            "a config value Kafka refuses",
        );
        return;
    }
    assert_eq!(status, 201, "{reply}");
    let id = id_of(&reply);
    svc.approve("carol", &id);
    let failed = svc.wait_request_status(&id, "failed", PROVISION_TIMEOUT);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| !e.trim().is_empty()),
        "a failed request says why: {failed}"
    );
    svc.wait_topic_status(&topic, "failed", Duration::from_secs(10));
    let failures = svc.audit(&format!("topic={topic}&kind=provisioning_failed"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["actor"], "system");
    assert_eq!(kafka_topic_partitions(&topic), None);
}
