//! The operator commands (`kafflow topics|requests|access|grants|held|audit|drift|completions`)
//! through the real binary against a running KafFlow and the real broker: tables for people,
//! `-o json` for scripts, exit codes 0 (done), 1 (refused, the API's code on stderr), 2 (usage).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `kafflow ARGS --server URL --token TOKEN-of-who`: (exit code, stdout, stderr).
fn kafflow(svc: &Service, who: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--server", svc.base_url(), "--token", svc.token(who)]);
    let (status, out, err) = run_kafflow(&all, WAIT);
    (status.and_then(|s| s.code()), out, err)
}

/// The JSON a `-o json` command printed, which must have succeeded.
fn json_of(svc: &Service, who: &str, args: &[&str]) -> Value {
    let (code, out, err) = kafflow(svc, who, args);
    assert_eq!(code, Some(0), "kafflow {args:?}: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kafflow {args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn every_governance_action_from_the_command_line() {
    let svc = Service::start();
    let topic = unique_topic("cli-ops");

    // alice asks for a topic; the request is printed as JSON with -o json.
    let request = json_of(
        &svc,
        "alice",
        &[
            "topics",
            "request",
            &topic,
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
            "--reason",
            "from the CLI",
            "-o",
            "json",
        ],
    );
    assert_eq!(request["status"], "pending", "{request}");
    assert_eq!(request["partitions"], 2, "{request}");
    assert_eq!(request["config"]["retention.ms"], "3600000", "{request}");
    let id = id_of(&request);

    // The pending list, every page, has it.
    let pending = json_of(
        &svc,
        "carol",
        &["requests", "list", "--status", "pending", "-o", "json"],
    );
    assert!(
        pending
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == id.as_str())),
        "{pending}"
    );

    // A refusal: exit 1 and the API's code on stderr, one line.
    let (code, out, err) = kafflow(&svc, "alice", &["requests", "approve", &id]);
    assert_eq!(code, Some(1), "a producer cannot approve: {out}{err}");
    assert!(err.starts_with("kafflow: error: forbidden:"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // carol approves; the topic turns active; `topics get` shows it as a table.
    let (code, out, err) = kafflow(&svc, "carol", &["requests", "approve", &id, "--note", "ok"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("status") && l.ends_with("approved")),
        "{out}"
    );
    svc.wait_topic_status(&topic, "active", WAIT);
    let (code, out, _) = kafflow(&svc, "erin", &["topics", "get", &topic]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with("status") && l.ends_with("active")),
        "{out}"
    );
    assert_eq!(kafka_topic_partitions(&topic), Some(2), "in Kafka");

    // The table of topics: a header, and a row for the topic.
    let (code, out, _) = kafflow(&svc, "erin", &["topics", "list"]);
    assert_eq!(code, Some(0));
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(topic.as_str()))
        .unwrap_or_else(|| panic!("no row for {topic}: {out}"));
    assert!(row.split_whitespace().any(|w| w == "active"), "{row}");

    // Access: erin asks, alice (the owner) approves, the grant is listed and revoked.
    let asked = json_of(
        &svc,
        "erin",
        &[
            "access", "request", "--topic", &topic, "--access", "consume", "-o", "json",
        ],
    );
    let access_id = id_of(&asked);
    let (code, _, err) = kafflow(&svc, "alice", &["access", "approve", &access_id]);
    assert_eq!(code, Some(0), "{err}");
    let grants = json_of(
        &svc,
        "alice",
        &["grants", "list", "--topic", &topic, "-o", "json"],
    );
    assert!(
        grants.as_array().is_some_and(|g| g
            .iter()
            .any(|g| g["user"] == "erin" && g["access"] == "consume")),
        "{grants}"
    );
    let (code, _, err) = kafflow(&svc, "alice", &["grants", "revoke", &access_id]);
    assert_eq!(code, Some(0), "{err}");
    let grants = json_of(
        &svc,
        "alice",
        &["grants", "list", "--topic", &topic, "-o", "json"],
    );
    assert!(
        !grants
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["user"] == "erin")),
        "revoked: {grants}"
    );

    // A deletion request, decided by the other admin.
    let deletion = json_of(
        &svc,
        "alice",
        &["topics", "delete", &topic, "--reason", "done", "-o", "json"],
    );
    assert_eq!(deletion["kind"], "delete", "{deletion}");
    let (code, _, err) = kafflow(
        &svc,
        "dave",
        &[
            "requests",
            "reject",
            &id_of(&deletion),
            "--reason",
            "keep it",
        ],
    );
    assert_eq!(code, Some(0), "{err}");

    // The audit trail of the topic, and the chain check against the server.
    let events = json_of(
        &svc,
        "carol",
        &["audit", "list", "--topic", &topic, "-o", "json"],
    );
    let kinds: Vec<&str> = events
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    for kind in [
        "topic_requested",
        "request_approved",
        "access_approved",
        "grant_revoked",
        "request_rejected",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let verified = json_of(&svc, "carol", &["audit", "verify", "-o", "json"]);
    assert!(verified.is_object(), "{verified}");

    // Drift and held answer; held for a topic with nothing held is an empty table.
    json_of(&svc, "carol", &["drift", "-o", "json"]);
    let held = json_of(
        &svc,
        "carol",
        &["held", "list", "--topic", &topic, "-o", "json"],
    );
    assert_eq!(held, Value::Array(Vec::new()), "{held}");
}

#[test]
fn usage_errors_exit_2_and_completions_are_printed() {
    let (status, _, err) = run_kafflow(&["topics", "frobnicate"], WAIT);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    let (status, _, err) = run_kafflow(&["topics", "list", "-o", "yaml"], WAIT);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    // No token: one readable line, exit 1.
    let (status, _, err) = run_kafflow(&["topics", "list", "--server", "http://127.0.0.1:1"], WAIT);
    if std::env::var_os("KAFFLOW_TOKEN").is_none() {
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
        assert!(err.contains("a token is needed"), "{err}");
    }
    // A server that is not an HTTP address.
    let (status, _, err) = run_kafflow(
        &[
            "topics",
            "list",
            "--server",
            "tcp://127.0.0.1:7070",
            "--token",
            "t",
        ],
        WAIT,
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("--server is the HTTP API"), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        let (status, out, err) = run_kafflow(&["completions", shell], WAIT);
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
        assert!(
            out.contains("kafflow") && out.contains("requests"),
            "{shell}: {out}"
        );
    }
}
