//! The event log defends itself: the database refuses UPDATE and DELETE, and an edit made behind
//! its back (trigger dropped) is caught by `kafflow audit verify` and stops `kafflow serve`, both
//! naming the edited row's seq.

mod common;

use std::time::Duration;

use common::{audit_verify, mentions_seq, parse_verify_ok, unique_topic, Service};
use rusqlite::Connection;
use serde_json::json;

/// Five events, none needing Kafka: requested, rejected, requested, withdrawn, requested.
fn service_with_history() -> Service {
    let svc = Service::start();
    let first = svc.request_topic("alice", &unique_topic("tamper-a"), 1);
    let (status, body) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{first}/reject"),
        &json!({"reason": "not now"}),
    );
    assert_eq!(status, 200, "{body}");
    let second = svc.request_topic("bob", &unique_topic("tamper-b"), 1);
    let (status, body) = svc.post(
        "bob",
        &format!("/api/v1/topic-requests/{second}/withdraw"),
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    svc.request_topic("alice", &unique_topic("tamper-c"), 1);
    let events = svc.audit("");
    assert_eq!(events.len(), 5, "{events:?}");
    svc
}

fn verify_ok(svc: &Service) -> (u64, String) {
    let (status, stdout, stderr) = audit_verify(svc.data_dir());
    assert!(
        status.is_some_and(|s| s.success()),
        "audit verify of an untouched log failed: {status:?}\n{stdout}\n{stderr}"
    );
    parse_verify_ok(&stdout).unwrap_or_else(|| panic!("unexpected verify output: {stdout}"))
}

/// Drops the UPDATE guard and rewrites one row's `data`, as an attacker with file access could.
fn forge(svc: &Service, seq: i64, kind: &str, data: &str) {
    let db = Connection::open(svc.db_path()).expect("open kafflow.db");
    let actual: String = db
        .query_row("SELECT kind FROM events WHERE seq = ?1", [seq], |row| {
            row.get(0)
        })
        .expect("row to forge");
    assert_eq!(actual, kind, "event at seq {seq}");
    db.execute_batch("DROP TRIGGER events_no_update")
        .expect("drop trigger");
    let changed = db
        .execute(
            "UPDATE events SET data = ?1 WHERE seq = ?2",
            rusqlite::params![data, seq],
        )
        .expect("forge row");
    assert_eq!(changed, 1);
}

/// `audit verify` and `serve` both refuse the log and name exactly `seq`.
fn assert_caught(svc: &Service, seq: i64) {
    let (status, stdout, stderr) = audit_verify(svc.data_dir());
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "audit verify of a forged log must exit 1; stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        parse_verify_ok(&stdout).is_none(),
        "verify reported ok: {stdout}"
    );
    assert!(
        stderr.lines().any(|l| mentions_seq(l, seq)),
        "verify must name seq {seq}: {stderr}"
    );
    for other in (1..=5).filter(|s| *s != seq) {
        assert!(
            !mentions_seq(&stderr, other),
            "verify names seq {other}, the forged row is {seq}: {stderr}"
        );
    }

    let (status, stdout, stderr) = svc.serve_expecting_exit(Duration::from_secs(60));
    let status = status.unwrap_or_else(|| {
        panic!("serve kept running on a forged log; stdout: {stdout}\nstderr: {stderr}")
    });
    assert!(
        !status.success(),
        "serve on a forged log exited 0; stderr: {stderr}"
    );
    assert!(
        !stdout.contains("listening on"),
        "serve listened on a forged log: {stdout}"
    );
    assert!(
        stderr.lines().any(|l| mentions_seq(l, seq)),
        "serve's error must name seq {seq}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a forged log is an error, not a panic: {stderr}"
    );
}

#[test]
fn an_edited_row_in_the_middle_is_caught() {
    let mut svc = service_with_history();
    svc.kill9();
    let (count, _) = verify_ok(&svc);
    assert_eq!(count, 5);

    forge(
        &svc,
        2,
        "request_rejected",
        r#"{"reason":"approved after all"}"#,
    );
    assert_caught(&svc, 2);
}

#[test]
fn an_edit_of_the_newest_row_is_caught() {
    let mut svc = service_with_history();
    svc.kill9();
    verify_ok(&svc);

    let db = Connection::open(svc.db_path()).expect("open kafflow.db");
    let data: String = db
        .query_row("SELECT data FROM events WHERE seq = 5", [], |row| {
            row.get(0)
        })
        .expect("newest row");
    drop(db);
    let mut forged: serde_json::Value = serde_json::from_str(&data).expect("data is JSON");
    forged["partitions"] = json!(7);
    assert_ne!(forged.to_string(), data, "the edit changes the row");
    forge(&svc, 5, "topic_requested", &forged.to_string());
    assert_caught(&svc, 5);
}

#[test]
fn the_database_refuses_update_and_delete_of_events() {
    let mut svc = service_with_history();
    svc.kill9();
    let before = verify_ok(&svc);

    let db = Connection::open(svc.db_path()).expect("open kafflow.db");
    let update = db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 1", []);
    assert!(
        update.is_err(),
        "UPDATE of an event was allowed: {update:?}"
    );
    let delete = db.execute("DELETE FROM events WHERE seq = 5", []);
    assert!(
        delete.is_err(),
        "DELETE of an event was allowed: {delete:?}"
    );
    let delete_all = db.execute("DELETE FROM events", []);
    assert!(delete_all.is_err(), "DELETE of all events was allowed");
    let count: i64 = db
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .expect("count");
    assert_eq!(count, 5);
    drop(db);

    assert_eq!(
        verify_ok(&svc),
        before,
        "refused statements changed the log"
    );
    svc.restart();
    assert_eq!(svc.audit("").len(), 5);
}
