//! The operator commands (`kafflow topics|requests|access|grants|held|audit|drift|completions`)
//! through the real binary against a running KafFlow and the real broker: tables for people,
//! `-o json` for scripts, exit codes 0 (done), 1 (refused, the API's code on stderr), 2 (usage).
//! And `kafflow produce`: the bytes of each line reach Kafka, the feeds and `/held` as sent.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

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
    // Newest first is the same trail the other way round.
    let newest_first = json_of(
        &svc,
        "carol",
        &[
            "audit", "list", "--topic", &topic, "--order", "desc", "-o", "json",
        ],
    );
    let seqs = |v: &Value| -> Vec<u64> {
        v.as_array()
            .map(|e| e.iter().filter_map(|e| e["seq"].as_u64()).collect())
            .unwrap_or_default()
    };
    let mut reversed = seqs(&events);
    reversed.reverse();
    assert!(reversed.len() >= 5, "{events}");
    assert_eq!(seqs(&newest_first), reversed);
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

/// The subcommands the walk above does not take: reading one request, withdrawing and
/// rejecting (topic and access requests), and dead letters exported and discarded.
#[test]
fn withdrawals_rejections_and_dead_letters_from_the_command_line() {
    let svc = Service::start();
    let status_of = |who: &str, args: &[&str]| -> String {
        json_of(&svc, who, args)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // A topic request read back, then withdrawn by its requester.
    let withdrawn = unique_topic("cli-withdrawn");
    let request = json_of(
        &svc,
        "alice",
        &["topics", "request", &withdrawn, "-o", "json"],
    );
    let id = id_of(&request);
    assert_eq!(
        status_of("carol", &["requests", "get", &id, "-o", "json"]),
        "pending"
    );
    let (code, _, err) = kafflow(&svc, "bob", &["requests", "withdraw", &id]);
    assert_eq!(code, Some(1), "only the requester withdraws: {err}");
    let (code, _, err) = kafflow(&svc, "alice", &["requests", "withdraw", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        status_of("alice", &["requests", "get", &id, "-o", "json"]),
        "withdrawn"
    );

    // A record held for a requested topic turns dead when carol rejects the request; carol
    // exports the dead letter as NDJSON and discards it.
    let rejected = unique_topic("cli-rejected");
    let id = id_of(&json_of(
        &svc,
        "alice",
        &["topics", "request", &rejected, "-o", "json"],
    ));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, reply) = svc.produce("alice", &rejected, "", &json!([{"value": "late"}]));
        if status == 202 && reply["held"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never held: {reply}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = kafflow(
        &svc,
        "carol",
        &["requests", "reject", &id, "--reason", "use orders"],
    );
    assert_eq!(code, Some(0), "{err}");
    let decided = json_of(&svc, "alice", &["requests", "get", &id, "-o", "json"]);
    assert_eq!(
        (
            decided["status"].as_str(),
            decided["decision_note"].as_str()
        ),
        (Some("rejected"), Some("use orders")),
        "{decided}"
    );
    let dead = |svc: &Service| {
        json_of(
            svc,
            "carol",
            &["held", "list", "--topic", &rejected, "--dead", "-o", "json"],
        )
        .as_array()
        .map_or(0, Vec::len)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while dead(&svc) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the held record never turned dead"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = kafflow(
        &svc,
        "carol",
        &["held", "export", "--topic", &rejected, "--dead"],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["value"], "late", "{out}");
    assert_eq!(dead(&svc), 1, "an export leaves the records where they are");
    let (code, _, err) = kafflow(&svc, "alice", &["held", "discard", "--topic", &rejected]);
    assert_eq!(code, Some(1), "only an admin discards: {err}");
    let (code, _, err) = kafflow(&svc, "carol", &["held", "discard", "--topic", &rejected]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(dead(&svc), 0, "discarded");

    // Access requests: listed, read, withdrawn by erin, and one rejected by the owner.
    let topic = unique_topic("cli-access");
    svc.provision(&topic, 1);
    let ask = |svc: &Service| {
        id_of(&json_of(
            svc,
            "erin",
            &[
                "access", "request", "--topic", &topic, "--access", "consume", "-o", "json",
            ],
        ))
    };
    let first = ask(&svc);
    let listed = json_of(
        &svc,
        "alice",
        &["access", "list", "--topic", &topic, "-o", "json"],
    );
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == first.as_str())),
        "{listed}"
    );
    assert_eq!(
        status_of("erin", &["access", "get", &first, "-o", "json"]),
        "pending"
    );
    let (code, _, err) = kafflow(&svc, "erin", &["access", "withdraw", &first]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        status_of("erin", &["access", "get", &first, "-o", "json"]),
        "withdrawn"
    );
    let second = ask(&svc);
    let (code, _, err) = kafflow(
        &svc,
        "alice",
        &["access", "reject", &second, "--reason", "not this quarter"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        status_of("erin", &["access", "get", &second, "-o", "json"]),
        "rejected"
    );
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

/// `kafflow produce --topic TOPIC ARGS` with `input` on stdin, as alice: (exit code, stderr).
fn produce(svc: &Service, topic: &str, args: &[&str], input: &str) -> (Option<i32>, String) {
    let ingest = format!("tcp://{}", svc.ingest_addr());
    let mut all = vec![
        "produce",
        "--topic",
        topic,
        "--ingest",
        &ingest,
        "--server",
        svc.base_url(),
        "--token",
        svc.token("alice"),
    ];
    all.extend_from_slice(args);
    let (status, _, err) = run_kafflow_with_stdin(&all, input.as_bytes().to_vec(), WAIT);
    (status.and_then(|s| s.code()), err)
}

#[test]
fn produce_keeps_the_bytes_of_each_line_and_sets_keys() {
    let svc = Service::start();
    let topic = unique_topic("cli-bytes");
    svc.provision(&topic, 1);

    // Raw (the default): each line's bytes, whatever they look like, no key.
    let raw = ["1", "\"1\"", " {\"a\": 1}\t", "h\u{e9}llo \\n", ""];
    let input: String = raw.iter().map(|l| format!("{l}\n")).collect();
    let (code, err) = produce(&svc, &topic, &[], &input);
    assert_eq!(code, Some(0), "{err}");
    // JSON: each line is a JSON value, sent as written; a string as its text.
    let lines = ["{\"b\": 2,  \"a\": [1, 2]}", "7", "\"text\""];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (code, err) = produce(&svc, &topic, &["--format", "json"], &input);
    assert_eq!(code, Some(0), "{err}");
    // Keys: before the separator (kcat -K), or from a field of the JSON object.
    let (code, err) = produce(
        &svc,
        &topic,
        &["--key-separator", "::"],
        "k1::v1::x\nno key here\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = produce(
        &svc,
        &topic,
        &["--format", "json", "--key-field", "id"],
        "{\"id\":\"o-1\",\"n\":1}\n{\"id\":42}\n",
    );
    assert_eq!(code, Some(0), "{err}");

    let records = kafka_read_until(&topic, WAIT, |r| r.len() >= 12);
    let got: Vec<(Option<&str>, &str)> = records
        .iter()
        .map(|r| (r.key.as_deref(), r.value.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (None, "1"),
            (None, "\"1\""),
            (None, " {\"a\": 1}\t"),
            (None, "h\u{e9}llo \\n"),
            (None, ""),
            (None, "{\"b\": 2,  \"a\": [1, 2]}"),
            (None, "7"),
            (None, "text"),
            (Some("k1"), "v1::x"),
            (None, "no key here"),
            (Some("o-1"), "{\"id\":\"o-1\",\"n\":1}"),
            (Some("42"), "{\"id\":42}"),
        ],
        "Kafka has exactly the bytes of each line"
    );
    // The line "1" sent raw is text, and says so; the JSON 7 needs no word.
    assert_eq!(
        records[0].headers.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8")
    );
    assert!(records[6].headers.is_empty(), "{:?}", records[6].headers);

    // The feed shows the text "1" as the string it was, and the JSON 7 as a number.
    let (status, body) = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{topic}"),
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let mut feed = svc.feed(svc.token("erin"), "from=earliest");
    let frames = feed.records(12, WAIT);
    let values: Vec<&Value> = frames.iter().map(|f| &f["value"]).collect();
    assert_eq!(values[0], &json!("1"), "raw 1 stays a string: {frames:?}");
    assert_eq!(
        values[1],
        &json!("\"1\""),
        "a raw line is text, quotes and all"
    );
    assert_eq!(values[2], &json!(" {\"a\": 1}\t"));
    assert_eq!(values[5], &json!({"b": 2, "a": [1, 2]}));
    assert_eq!(values[6], &json!(7));
    assert_eq!(values[7], &json!("text"));
    feed.close();

    // /held: the same for records waiting for their topic.
    let pending = unique_topic("cli-bytes-held");
    let (code, err) = produce(&svc, &pending, &["--request"], "1\n");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = produce(&svc, &pending, &["--format", "json"], "1\n");
    assert_eq!(code, Some(0), "{err}");
    let (status, held) = svc.get("alice", &format!("/api/v1/held?topic={pending}"));
    assert_eq!(status, 200, "{held}");
    let values: Vec<&Value> = held["records"]
        .as_array()
        .map(|r| r.iter().map(|r| &r["value"]).collect())
        .unwrap_or_default();
    assert_eq!(values, vec![&json!("1"), &json!(1)], "{held}");
}

#[test]
fn produce_refuses_what_cannot_be_a_record() {
    let svc = Service::start();
    let topic = unique_topic("cli-bad-lines");
    svc.provision(&topic, 1);
    // Usage errors: exit 2, before anything is sent.
    let (code, err) = produce(&svc, &topic, &["--format", "yaml"], "1\n");
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = produce(&svc, &topic, &["--key-field", "id"], "1\n");
    assert_eq!(code, Some(2), "--key-field needs --format json: {err}");
    assert!(err.contains("--format json"), "{err}");
    let (code, err) = produce(
        &svc,
        &topic,
        &[
            "--format",
            "json",
            "--key-field",
            "id",
            "--key-separator",
            ":",
        ],
        "1\n",
    );
    assert_eq!(code, Some(2), "{err}");

    // A line that is not JSON, or lacks the key field, is refused here; the others go, and the
    // line numbers are the connection's (stdin's plus the AUTH line).
    let (code, err) = produce(
        &svc,
        &topic,
        &["--format", "json", "--key-field", "id"],
        "{\"id\":\"a\"}\nnot json\n{\"n\":1}\n{\"id\":\"b\"}\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ERR 3 invalid_record it is not JSON"), "{err}");
    assert!(
        err.contains("ERR 4 invalid_record it has no field \"id\""),
        "{err}"
    );
    assert!(err.contains("2 of 4 records were refused"), "{err}");
    let records = kafka_read_until(&topic, WAIT, |r| r.len() >= 2);
    let keys: Vec<Option<&str>> = records.iter().map(|r| r.key.as_deref()).collect();
    assert_eq!(keys, vec![Some("a"), Some("b")]);
}
