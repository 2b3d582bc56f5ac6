//! The watcher's sync view: topics changed in Kafka behind KafFlow's back show in
//! `GET /api/v1/drift` after the next reconciliation and are recorded as `drift_detected` and
//! `drift_resolved` events. The shared broker holds every test's topics, so only this test's own
//! names are asserted about.

mod common;

use std::time::Duration;

use common::{
    block_on, kafka_admin, kafka_create_topic, kafka_delete_topic, kafka_topic_partitions,
    unique_topic, wait_until, Service,
};
use rdkafka::admin::{AdminOptions, NewPartitions};
use serde_json::Value;

const DRIFT_TIMEOUT: Duration = Duration::from_secs(30);

fn fast_reconcile(text: String) -> String {
    let edited = text.replace(
        "reconcile_interval_ms = 3600000",
        "reconcile_interval_ms = 300",
    );
    assert_ne!(
        edited, text,
        "the harness config has no reconcile interval to shorten"
    );
    edited
}

fn lists(report: &Value, field: &str, topic: &str) -> bool {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("drift without {field}: {report}"))
        .iter()
        .any(|t| t == topic)
}

/// Polls the drift report (as `who`) until `ok` holds; panics with the last report.
fn wait_drift(svc: &Service, who: &str, what: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_until(DRIFT_TIMEOUT, || {
        let (status, report) = svc.get(who, "/api/v1/drift");
        assert_eq!(status, 200, "GET /api/v1/drift: {report}");
        last = report;
        ok(&last)
    });
    assert!(
        found,
        "drift: {what} not seen within {DRIFT_TIMEOUT:?}; last report: {last}\nstderr tail:\n{}",
        svc.stderr_tail()
    );
    last
}

/// Polls the audit until `topic` has an event of `kind`; returns those events.
fn wait_events(svc: &Service, topic: &str, kind: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let found = wait_until(DRIFT_TIMEOUT, || {
        events = svc.audit(&format!("topic={topic}&kind={kind}"));
        !events.is_empty()
    });
    assert!(found, "no {kind} event for {topic}");
    events
}

#[test]
fn changes_made_directly_in_kafka_show_as_drift_and_in_the_audit() {
    let svc = Service::start_with_config(fast_reconcile);
    let unmanaged = unique_topic("drift-unmanaged");
    let missing = unique_topic("drift-missing");
    let widened = unique_topic("drift-widened");
    svc.provision(&missing, 1);
    svc.provision(&widened, 1);

    let (status, report) = svc.get("alice", "/api/v1/drift");
    assert_eq!(status, 200, "{report}");
    let (status, body) = svc.get_anon("/api/v1/drift");
    assert_eq!(status, 401, "drift without a token: {body}");

    // Behind KafFlow's back: a new topic, a deleted one, and one with more partitions.
    kafka_create_topic(&unmanaged, 1);
    kafka_delete_topic(&missing);
    assert!(
        wait_until(DRIFT_TIMEOUT, || kafka_topic_partitions(&missing).is_none()),
        "{missing} still in Kafka"
    );
    let more = NewPartitions::new(&widened, 2);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results =
        block_on(kafka_admin().create_partitions([&more], &opts)).expect("add partitions");
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("add a partition to {topic}: {e:?}"));
    }

    let report = wait_drift(&svc, "carol", "all three changes", |r| {
        lists(r, "unmanaged_in_kafka", &unmanaged)
            && lists(r, "missing_in_kafka", &missing)
            && r["config_differs"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["topic"] == widened.as_str()))
    });
    assert!(report["checked_at"].is_string(), "{report}");
    assert!(!lists(&report, "unmanaged_in_kafka", &missing), "{report}");
    assert!(!lists(&report, "unmanaged_in_kafka", &widened), "{report}");
    assert!(!lists(&report, "missing_in_kafka", &widened), "{report}");
    let diffs: Vec<&Value> = report["config_differs"]
        .as_array()
        .expect("config_differs")
        .iter()
        .filter(|d| d["topic"] == widened.as_str())
        .collect();
    assert_eq!(diffs.len(), 1, "{report}");
    assert_eq!(diffs[0]["key"], "partitions", "{}", diffs[0]);
    assert_eq!(diffs[0]["expected"], "1", "{}", diffs[0]);
    assert_eq!(diffs[0]["actual"], "2", "{}", diffs[0]);

    for (topic, drift) in [
        (&unmanaged, "unmanaged_in_kafka"),
        (&missing, "missing_in_kafka"),
        (&widened, "config_differs"),
    ] {
        let events = wait_events(&svc, topic, "drift_detected");
        assert_eq!(
            events.len(),
            1,
            "recorded once, not per reconciliation: {events:?}"
        );
        assert_eq!(events[0]["actor"], "system", "{}", events[0]);
        assert_eq!(events[0]["topic"], topic.as_str(), "{}", events[0]);
        assert_eq!(events[0]["data"]["drift"], drift, "{}", events[0]);
        assert!(
            events[0]["data"]["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{}",
            events[0]
        );
    }

    // Undone in Kafka: the drift is resolved, and that is recorded too.
    kafka_delete_topic(&unmanaged);
    wait_drift(&svc, "alice", "the unmanaged topic gone", |r| {
        !lists(r, "unmanaged_in_kafka", &unmanaged)
    });
    let resolved = wait_events(&svc, &unmanaged, "drift_resolved");
    assert_eq!(resolved[0]["actor"], "system", "{}", resolved[0]);
    assert_eq!(
        resolved[0]["data"]["drift"], "unmanaged_in_kafka",
        "{}",
        resolved[0]
    );
    // Still missing: no new event for it.
    assert_eq!(
        svc.audit(&format!("topic={missing}&kind=drift_detected"))
            .len(),
        1
    );
    assert!(svc
        .audit(&format!("topic={missing}&kind=drift_resolved"))
        .is_empty());
    kafka_delete_topic(&widened);
}
