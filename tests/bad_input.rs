//! Bad input gets a 4xx JSON error with the right code, and the server stays up.
//!
//! Each test collects every mismatch before failing, so one run lists all of them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bootstrap, run_kafflow, unique_topic, write_config, Checks, Service};
use serde_json::json;

const REQUESTS: &str = "/api/v1/topic-requests";

/// Ends each test: the process lives and still does real work.
fn assert_still_serving(svc: &mut Service) {
    assert!(svc.is_running(), "the server died:\n{}", svc.stderr_tail());
    let (status, _) = svc.get_anon("/healthz");
    assert_eq!(status, 200, "healthz after bad input");
    svc.create_request("alice", json!({"topic": unique_topic("still-up")}));
}

#[test]
fn malformed_and_mistyped_bodies() {
    let mut svc = Service::start();
    let mut checks = Checks::default();
    let topic = unique_topic("bad-body");
    let bad_json = ["invalid_json"];

    let raw: &[(&str, &[u8])] = &[
        ("truncated JSON", br#"{"topic":"#),
        ("trailing comma", br#"{"topic":"x",}"#),
        ("not JSON at all", b"topic=x"),
        ("empty body", b""),
        ("invalid UTF-8", b"{\"topic\":\"\xff\xfe\"}"),
        ("a JSON array", b"[]"),
        ("a JSON string", br#""orders""#),
        ("JSON null", b"null"),
    ];
    for (what, bytes) in raw {
        checks.expect(what, svc.post_raw("alice", REQUESTS, bytes), 400, &bad_json);
    }

    let bodies = [
        ("unknown field", json!({"topic": topic, "owner": "mallory"})),
        ("topic as a number", json!({"topic": 5})),
        (
            "partitions as a string",
            json!({"topic": topic, "partitions": "3"}),
        ),
        (
            "partitions as a float",
            json!({"topic": topic, "partitions": 3.5}),
        ),
        (
            "replication_factor as bool",
            json!({"topic": topic, "replication_factor": true}),
        ),
        ("reason as a number", json!({"topic": topic, "reason": 42})),
        (
            "config as a list",
            json!({"topic": topic, "config": ["retention.ms"]}),
        ),
    ];
    for (what, body) in bodies {
        let codes: &[&str] = if what == "config as a list" {
            &["invalid_json", "invalid_config"]
        } else {
            &bad_json
        };
        checks.expect(what, svc.post("alice", REQUESTS, &body), 400, codes);
    }
    checks.expect(
        "config value as a number",
        svc.post(
            "alice",
            REQUESTS,
            &json!({"topic": topic, "config": {"retention.ms": 1000}}),
        ),
        400,
        &["invalid_config"],
    );
    checks.expect(
        "missing topic",
        svc.post("alice", REQUESTS, &json!({"partitions": 1})),
        400,
        &["invalid_json", "invalid_topic_name"],
    );
    checks.expect(
        "partitions beyond any integer",
        svc.post_raw(
            "alice",
            REQUESTS,
            format!(r#"{{"topic":"{topic}","partitions":100000000000000000000}}"#).as_bytes(),
        ),
        400,
        &["invalid_json", "invalid_partitions"],
    );
    checks.expect(
        "negative partitions",
        svc.post(
            "alice",
            REQUESTS,
            &json!({"topic": topic, "partitions": -1}),
        ),
        400,
        &["invalid_json", "invalid_partitions"],
    );

    // The decision endpoints parse their bodies just as strictly.
    let id = svc.request_topic("alice", &topic, 1);
    let decide = |action: &str| format!("{REQUESTS}/{id}/{action}");
    checks.expect(
        "approve with an unknown field",
        svc.post(
            "carol",
            &decide("approve"),
            &json!({"note": "ok", "force": true}),
        ),
        400,
        &bad_json,
    );
    checks.expect(
        "approve with a numeric note",
        svc.post("carol", &decide("approve"), &json!({"note": 1})),
        400,
        &bad_json,
    );
    checks.expect(
        "approve with malformed JSON",
        svc.post_raw("carol", &decide("approve"), b"{note"),
        400,
        &bad_json,
    );
    checks.expect(
        "reject with a numeric reason",
        svc.post("carol", &decide("reject"), &json!({"reason": 7})),
        400,
        &bad_json,
    );
    checks.expect(
        "deletion request with an unknown field",
        svc.post(
            "alice",
            &format!("/api/v1/topics/{topic}/deletion-requests"),
            &json!({"reason": "x", "now": true}),
        ),
        400,
        &["invalid_json"],
    );
    let request = svc.request(&id);
    assert_eq!(
        request["status"], "pending",
        "bad bodies changed it: {request}"
    );

    checks.finish();
    assert_still_serving(&mut svc);
}

#[test]
fn invalid_topic_names_partitions_and_replication() {
    let mut svc = Service::start();
    let mut checks = Checks::default();

    let long = "a".repeat(250);
    let names = [
        ("empty name", ""),
        ("dot", "."),
        ("dot dot", ".."),
        ("space", "orders v2"),
        ("slash", "orders/v2"),
        ("non-ASCII", "bestellungen-ä"),
        ("upper case (pattern)", "Orders"),
        ("leading dash (pattern)", "-orders"),
        ("250 characters", long.as_str()),
    ];
    for (what, name) in names {
        checks.expect(
            &format!("topic name: {what}"),
            svc.post("alice", REQUESTS, &json!({"topic": name})),
            400,
            &["invalid_topic_name"],
        );
    }
    for partitions in [0, 13, 1000] {
        checks.expect(
            &format!("{partitions} partitions"),
            svc.post(
                "alice",
                REQUESTS,
                &json!({"topic": unique_topic("p"), "partitions": partitions}),
            ),
            400,
            &["invalid_partitions"],
        );
    }
    for rf in [0, 2] {
        checks.expect(
            &format!("replication factor {rf}"),
            svc.post(
                "alice",
                REQUESTS,
                &json!({"topic": unique_topic("rf"), "replication_factor": rf}),
            ),
            400,
            &["invalid_replication_factor"],
        );
    }
    // 249 characters is Kafka's limit, and the pattern allows it.
    svc.create_request("alice", json!({"topic": "b".repeat(249)}));

    let (status, list) = svc.get("carol", REQUESTS);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    checks.finish();
    assert_still_serving(&mut svc);
}

#[test]
fn oversize_bodies_are_refused() {
    let mut svc = Service::start();
    let mut checks = Checks::default();
    let topic = unique_topic("big");

    for size in [64 * 1024 + 1, 70_000, 256 * 1024] {
        let filler = "x".repeat(size);
        let body = json!({"topic": topic, "reason": filler});
        checks.expect(
            &format!("{size}-byte reason"),
            svc.post("alice", REQUESTS, &body),
            413,
            &["payload_too_large"],
        );
    }
    // Just under the limit is parsed as usual (and refused here only for its bad name).
    let near = format!(
        r#"{{"topic":"Bad Name","reason":"{}"}}"#,
        "y".repeat(60_000)
    );
    checks.expect(
        "60 KB body",
        svc.post_raw("alice", REQUESTS, near.as_bytes()),
        400,
        &["invalid_topic_name"],
    );
    checks.finish();

    let (status, list) = svc.get("carol", REQUESTS);
    assert_eq!(status, 200);
    assert_eq!(list, json!([]), "an oversize request was recorded");
    assert_still_serving(&mut svc);
}

#[test]
fn bad_ids_unknown_routes_and_wrong_methods() {
    let mut svc = Service::start();
    let mut checks = Checks::default();
    let carol = Some(svc.token("carol").to_string());
    let carol = carol.as_deref();
    let empty = || Some((b"{}".to_vec(), "application/json"));
    let unknown = uuid::Uuid::now_v7().to_string();

    for id in ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g"] {
        checks.expect(
            &format!("GET request {id}"),
            svc.get("carol", &format!("{REQUESTS}/{id}")),
            400,
            &["invalid_id"],
        );
        for action in ["approve", "reject", "withdraw"] {
            checks.expect(
                &format!("{action} {id}"),
                svc.post(
                    "carol",
                    &format!("{REQUESTS}/{id}/{action}"),
                    &json!({"reason": "r"}),
                ),
                400,
                &["invalid_id"],
            );
        }
    }

    checks.expect(
        "GET unknown request",
        svc.get("carol", &format!("{REQUESTS}/{unknown}")),
        404,
        &["not_found"],
    );
    checks.expect(
        "approve unknown request",
        svc.post(
            "carol",
            &format!("{REQUESTS}/{unknown}/approve"),
            &json!({}),
        ),
        404,
        &["not_found"],
    );
    checks.expect(
        "reject unknown request",
        svc.post(
            "carol",
            &format!("{REQUESTS}/{unknown}/reject"),
            &json!({"reason": "r"}),
        ),
        404,
        &["not_found"],
    );
    checks.expect(
        "withdraw unknown request",
        svc.post(
            "alice",
            &format!("{REQUESTS}/{unknown}/withdraw"),
            &json!({}),
        ),
        404,
        &["not_found"],
    );
    checks.expect(
        "GET unknown topic",
        svc.get(
            "carol",
            &format!("/api/v1/topics/{}", unique_topic("ghost")),
        ),
        404,
        &["not_found"],
    );

    for path in [
        "/api/v1/nothing-here",
        "/api/v2/topics",
        "/nothing",
        "/api/v1/topics/a/b/c",
    ] {
        checks.expect(
            &format!("GET {path}"),
            svc.get("carol", path),
            404,
            &["not_found"],
        );
    }

    let wrong_methods = [
        ("DELETE", REQUESTS.to_string()),
        ("PUT", REQUESTS.to_string()),
        ("POST", "/api/v1/topics".to_string()),
        ("DELETE", format!("{REQUESTS}/{unknown}")),
        ("GET", format!("{REQUESTS}/{unknown}/approve")),
        ("PATCH", format!("/api/v1/topics/{}", unique_topic("m"))),
        ("POST", "/api/v1/audit".to_string()),
        ("POST", "/healthz".to_string()),
    ];
    for (method, path) in wrong_methods {
        let body = if method == "GET" { None } else { empty() };
        checks.expect(
            &format!("{method} {path}"),
            svc.send(method, &path, carol, body),
            405,
            &["method_not_allowed"],
        );
    }

    checks.finish();
    assert_still_serving(&mut svc);
}

#[test]
fn bad_queries() {
    let mut svc = Service::start();
    let mut checks = Checks::default();
    for query in [
        "limit=abc",
        "limit=-1",
        "after=abc",
        "after=-5",
        "since=yesterday",
        "until=2024-13-45T99:00:00Z",
    ] {
        checks.expect(
            &format!("audit?{query}"),
            svc.get("carol", &format!("/api/v1/audit?{query}")),
            400,
            &["invalid_query"],
        );
    }
    for query in ["status=sleeping", "kind=rename"] {
        checks.expect(
            &format!("topic-requests?{query}"),
            svc.get("carol", &format!("{REQUESTS}?{query}")),
            400,
            &["invalid_query"],
        );
    }
    checks.finish();
    assert_still_serving(&mut svc);
}

/// A change to the text of a good config.
type ConfigEdit = fn(String) -> String;

/// Runs `serve` expecting a clean refusal; returns what is wrong with the way it refused, if
/// anything.
fn refusal_problem(config: &Path, data_dir: &Path, listen: &str) -> Option<String> {
    let (status, stdout, stderr) = run_kafflow(
        &[
            "serve",
            "--config",
            &config.display().to_string(),
            "--listen",
            listen,
            "--data-dir",
            &data_dir.display().to_string(),
            "--bootstrap-servers",
            &bootstrap(),
        ],
        Duration::from_secs(30),
    );
    let Some(status) = status else {
        return Some(format!("kept running; stdout: {stdout:?}"));
    };
    if status.success() {
        return Some(format!("exited 0; stderr: {stderr:?}"));
    }
    if stdout.contains("listening on") {
        return Some(format!("listened before failing: {stdout:?}"));
    }
    if stderr.contains("panicked") {
        return Some(format!("panicked instead of an error line: {stderr:?}"));
    }
    if stderr.trim().is_empty() {
        return Some("failed without a word on stderr".to_string());
    }
    None
}

#[test]
fn bad_startup_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut problems = Vec::new();
    let mut check = |what: &str, config: &Path, data_dir: &Path, listen: &str| {
        if let Some(problem) = refusal_problem(config, data_dir, listen) {
            problems.push(format!("{what}: {problem}"));
        }
    };

    let edits: [(&str, ConfigEdit); 5] = [
        ("config is not TOML", |_| "this = is not [ toml".to_string()),
        ("topic_name_pattern is no regex", |c| {
            c.replace(
                r#"topic_name_pattern = "^[a-z0-9][a-z0-9._-]*$""#,
                r#"topic_name_pattern = "(""#,
            )
        }),
        ("token_sha256 is not hex", |c| {
            c.replacen(r#"token_sha256 = ""#, r#"token_sha256 = "zz"#, 1)
        }),
        ("unknown role", |c| {
            c.replace(r#"["consumer"]"#, r#"["superuser"]"#)
        }),
        ("default_partitions above max_partitions", |c| {
            c.replace("max_partitions = 12", "max_partitions = 2")
        }),
    ];
    // Every other test starts the unedited config, so each refusal here is about its edit.
    let good = write_config(dir.path(), |c| c);
    let plain = std::fs::read_to_string(&good).expect("config");
    for (what, edit) in edits {
        assert_ne!(
            edit(plain.clone()),
            plain,
            "{what}: the edit changes nothing"
        );
        let config = write_config(dir.path(), edit);
        check(what, &config, &data, "127.0.0.1:0");
    }

    check(
        "missing config file",
        &dir.path().join("no-such.toml"),
        &data,
        "127.0.0.1:0",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    check("port in use", &good, &data, &taken_addr);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("file");
    check(
        "data dir inside a regular file",
        &good,
        &file.join("data"),
        "127.0.0.1:0",
    );
    drop(taken);

    assert!(
        problems.is_empty(),
        "startup refusals:\n{}",
        problems.join("\n")
    );
}
