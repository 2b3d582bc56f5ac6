//! Bad input gets a 4xx JSON error with the right code, and the server stays up.
//!
//! Each test collects every mismatch before failing, so one run lists all of them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bootstrap, run_kafflow, unique_topic, write_config, Checks, Service};
use serde_json::{json, Value};

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

    let list = svc.list_all("carol", REQUESTS, "requests");
    assert_eq!(list.len(), 1, "{list:?}");
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

    let list = svc.list_all("carol", REQUESTS, "requests");
    assert_eq!(
        list,
        Vec::<Value>::new(),
        "an oversize request was recorded"
    );
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

// ------------------------------------------------------------------ hostile requests

/// A reply read off the wire as it came, for requests no HTTP library would send.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(300).collect();
        format!("{} {body:?}", self.status)
    }
}

/// Decodes a chunked body (`Transfer-Encoding: chunked`).
fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        body = &body[end + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Sends `request` as it is on a new connection and reads the reply until the server closes.
/// The request is written by a thread of its own, so a server that answers before reading
/// all of a large body is still heard.
fn raw_http(svc: &Service, request: Vec<u8>) -> RawReply {
    use std::io::{Read, Write};
    let address = svc.base_url().trim_start_matches("http://").to_string();
    let stream = std::net::TcpStream::connect(&address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        let _ = writer.flush();
    });
    let mut reader = stream;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset after the reply: what came is what there is.
            Err(_) => break,
        }
        if reply_complete(&bytes) {
            break;
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    parse_reply(&bytes).unwrap_or_else(|| {
        panic!(
            "no HTTP reply: {:?}\nstderr tail:\n{}",
            String::from_utf8_lossy(&bytes),
            svc.stderr_tail()
        )
    })
}

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Whether `bytes` hold a whole reply with a Content-Length (so the connection need not close).
fn reply_complete(bytes: &[u8]) -> bool {
    let Some(end) = head_end(bytes) else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + len)
}

fn parse_reply(bytes: &[u8]) -> Option<RawReply> {
    let end = head_end(bytes)?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = unchunk(&body);
    }
    Some(RawReply {
        status,
        headers,
        body,
    })
}

/// One request as bytes: `Connection: close`, a Content-Length when there is a body.
fn request_bytes(
    method: &str,
    target: &[u8],
    headers: &[(String, Vec<u8>)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: kafflow.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// Events in the log (count and head hash) and rows in the spool: what must not change.
fn durable_state(svc: &Service) -> ((u64, String), i64) {
    let (status, stdout, stderr) = common::audit_verify(svc.data_dir());
    assert!(
        status.is_some_and(|s| s.success()),
        "audit verify: {stdout} {stderr}"
    );
    let log = common::parse_verify_ok(&stdout).unwrap_or_else(|| panic!("verify: {stdout}"));
    let spool = rusqlite::Connection::open_with_flags(
        svc.data_dir().join("spool.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open spool.db");
    let rows: i64 = spool
        .query_row("SELECT count(*) FROM held", [], |row| row.get(0))
        .expect("count held rows");
    (log, rows)
}

/// A route of the facade, as `src/http` declares it.
struct Route {
    method: &'static str,
    /// `{id}` and `{topic}` are filled in; the last segment is where hostile names go.
    path: &'static str,
    authenticated: bool,
    body: bool,
    query: bool,
}

const fn route(method: &'static str, path: &'static str) -> Route {
    Route {
        method,
        path,
        authenticated: true,
        body: false,
        query: false,
    }
}

const fn with_body(method: &'static str, path: &'static str) -> Route {
    Route {
        body: true,
        ..route(method, path)
    }
}

const fn with_query(method: &'static str, path: &'static str) -> Route {
    Route {
        query: true,
        ..route(method, path)
    }
}

const fn open(path: &'static str) -> Route {
    Route {
        authenticated: false,
        ..route("GET", path)
    }
}

/// Every route of `src/http` (mod.rs, records.rs, feed.rs, ui.rs, access.rs, tokens.rs,
/// audit.rs, me.rs, messages.rs).
const ROUTES: &[Route] = &[
    open("/healthz"),
    open("/readyz"),
    open("/metrics"),
    open("/"),
    open("/app.js"),
    open("/app.css"),
    open("/vendor/uplot/uPlot.iife.min.js"),
    open("/vendor/uplot/uPlot.min.css"),
    open("/vendor/uplot/LICENSE"),
    with_body("POST", "/api/v1/topic-requests"),
    with_query("GET", "/api/v1/topic-requests"),
    route("GET", "/api/v1/topic-requests/{id}"),
    with_body("POST", "/api/v1/topic-requests/{id}/approve"),
    with_body("POST", "/api/v1/topic-requests/{id}/reject"),
    with_body("POST", "/api/v1/topic-requests/{id}/withdraw"),
    with_query("GET", "/api/v1/topics"),
    route("GET", "/api/v1/topics/{topic}"),
    with_body("POST", "/api/v1/topics/{topic}/deletion-requests"),
    Route {
        query: true,
        ..with_body("POST", "/api/v1/topics/{topic}/records")
    },
    with_query("GET", "/api/v1/audit"),
    route("GET", "/api/v1/audit/verify"),
    with_query("GET", "/api/v1/audit/export"),
    route("GET", "/api/v1/me"),
    route("GET", "/api/v1/policy"),
    route("GET", "/api/v1/drift"),
    with_query("GET", "/api/v1/held"),
    with_query("DELETE", "/api/v1/held"),
    with_query("GET", "/api/v1/me/subscriptions"),
    with_body("PUT", "/api/v1/me/subscriptions"),
    route("POST", "/api/v1/me/subscriptions/{topic}"),
    route("DELETE", "/api/v1/me/subscriptions/{topic}"),
    with_query("GET", "/api/v1/subscriptions"),
    with_query("GET", "/api/v1/me/feed"),
    with_body("POST", "/api/v1/topics/{topic}/ownership-requests"),
    with_body("POST", "/api/v1/access-requests"),
    with_query("GET", "/api/v1/access-requests"),
    route("GET", "/api/v1/access-requests/{id}"),
    with_body("POST", "/api/v1/access-requests/{id}/approve"),
    with_body("POST", "/api/v1/access-requests/{id}/reject"),
    with_body("POST", "/api/v1/access-requests/{id}/withdraw"),
    with_query("GET", "/api/v1/grants"),
    route("DELETE", "/api/v1/grants/{id}"),
    with_body("POST", "/api/v1/tokens"),
    with_query("GET", "/api/v1/tokens"),
    route("DELETE", "/api/v1/tokens/{id}"),
    with_query("GET", "/api/v1/topics/{topic}/messages"),
    route("GET", "/api/v1/topics/{topic}/partitions"),
];

/// What a hostile request expects: an exact status, or any 4xx.
#[derive(Clone, Copy)]
enum Expect {
    Status(u16),
    AnyClientError,
}

/// Bodies no route takes: each is refused before anything is decided.
fn hostile_bodies(max_body: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("truncated JSON", br#"{"topic":"x","reas"#.to_vec()),
        ("truncated array", br#"[{"value":"#.to_vec()),
        ("unknown field", br#"{"bogus":1}"#.to_vec()),
        (
            "wrong types",
            br#"{"topic":[1],"topics":7,"note":{},"reason":[]}"#.to_vec(),
        ),
        ("array of numbers", b"[1,2,3]".to_vec()),
        ("invalid UTF-8", b"{\"topic\":\"\xff\xfe\xfd\"}".to_vec()),
        ("NUL bytes", b"{\"topic\":\"a\0b\",\0}".to_vec()),
        ("only NUL bytes", vec![0u8; 64]),
        (
            "100,000 nested arrays",
            [b"[".repeat(100_000), b"]".repeat(100_000)].concat(),
        ),
        (
            "100 nested objects",
            [b"{\"a\":".repeat(100), b"1".to_vec(), b"}".repeat(100)].concat(),
        ),
        ("JSON string", br#""\ud800""#.to_vec()),
        ("oversize", vec![b' '; max_body + 1]),
    ]
}

fn hostile_queries() -> Vec<(&'static str, String)> {
    // Short enough to fit hyper's 64 KB request target; a longer one is the bare 414 below.
    let many: Vec<String> = (0..10_000).map(|i| format!("{i}=")).collect();
    vec![
        ("10,000 query parameters", many.join("&")),
        (
            "10,000 repeats of one parameter",
            vec!["a=1"; 10_000].join("&"),
        ),
        (
            "invalid UTF-8 escapes",
            "topic=%ff%fe&state=%c3%28".to_string(),
        ),
        ("NUL escapes", "topic=%00&kind=%00&from=%00".to_string()),
        ("broken escapes", "topic=%zz%&limit=%".to_string()),
        (
            "huge numbers",
            "limit=999999999999999999999999&after=-99999999999999999999".to_string(),
        ),
        ("unknown parameter", "sudo=true".to_string()),
    ]
}

#[test]
fn every_route_refuses_hostile_requests() {
    let mut svc = Service::start();
    // A pending topic: records for it would be held in the spool if any got through.
    let topic = unique_topic("hostile");
    let id = svc.request_topic("alice", &topic, 1);
    let before = durable_state(&svc);

    let defaults = kafflow::config::Limits::default();
    let token = |who: &str| format!("Bearer {}", svc.token(who)).into_bytes();
    let mut failures = Vec::new();
    let mut sent = 0;
    let mut check = |what: String, reply: RawReply, expect: Expect| {
        sent += 1;
        let json = reply.json();
        let code = json["error"]["code"].as_str().unwrap_or_default();
        let status_ok = match expect {
            Expect::Status(s) => reply.status == s,
            Expect::AnyClientError => (400..500).contains(&reply.status),
        };
        if !status_ok || code.is_empty() {
            failures.push(format!("{what}: got {}", reply.describe()));
        }
    };

    for route in ROUTES {
        let path = route.path.replace("{id}", &id).replace("{topic}", &topic);
        // Who may call it, if anyone must: carol decides, alice does the rest.
        let who = if route.path.contains("/approve")
            || route.path.contains("/reject")
            || route.path.contains("/tokens")
        {
            "carol"
        } else if route.path.contains("/me/") {
            "erin"
        } else {
            "alice"
        };
        let auth = || vec![("Authorization".to_string(), token(who))];
        let name = |what: &str| format!("{} {} [{what}]", route.method, route.path);
        let send =
            |method: &str, target: &[u8], headers: &[(String, Vec<u8>)], body: Option<&[u8]>| {
                raw_http(&svc, request_bytes(method, target, headers, body))
            };
        let body_for = |route: &Route| route.body.then_some(&b"{\"bogus\":1}"[..]);

        if route.authenticated {
            check(
                name("no token"),
                send(route.method, path.as_bytes(), &[], body_for(route)),
                Expect::Status(401),
            );
            check(
                name("a token of nobody"),
                send(
                    route.method,
                    path.as_bytes(),
                    &[("Authorization".into(), b"Bearer nobody".to_vec())],
                    body_for(route),
                ),
                Expect::Status(401),
            );
            check(
                name("Authorization not UTF-8"),
                send(
                    route.method,
                    path.as_bytes(),
                    &[("Authorization".into(), b"Bearer \xff\xfe\xc3\x28".to_vec())],
                    body_for(route),
                ),
                Expect::AnyClientError,
            );
        }
        let mut big = auth();
        big.push((
            "X-Padding".into(),
            vec![b'a'; defaults.max_request_header_bytes + 1],
        ));
        check(
            name("headers over the limit"),
            send(route.method, path.as_bytes(), &big, body_for(route)),
            Expect::Status(431),
        );
        check(
            name("wrong method"),
            send("PATCH", path.as_bytes(), &auth(), Some(b"{}")),
            Expect::Status(405),
        );
        let base = path.trim_end_matches('/');
        let parent = base.rsplit_once('/').map_or("", |(p, _)| p);
        for (what, target) in [
            ("path traversal", format!("{base}/../../../../etc/passwd")),
            (
                "escaped path traversal",
                format!("{base}/..%2F..%2F..%2Fetc%2Fpasswd"),
            ),
            ("dot segments", format!("{parent}/..")),
            ("NUL in the path", format!("{parent}/a%00b")),
            ("invalid UTF-8 in the path", format!("{parent}/%ff%fe")),
            (
                "a 4,000-character segment",
                format!("{parent}/{}", "a".repeat(4000)),
            ),
        ] {
            let body = body_for(route);
            check(
                name(what),
                send(route.method, target.as_bytes(), &auth(), body),
                Expect::AnyClientError,
            );
        }
        if route.body {
            let max = if route.path.ends_with("/records") {
                defaults.max_ingest_body_bytes
            } else {
                defaults.max_body_bytes
            } as usize;
            for (what, body) in hostile_bodies(max) {
                let expect = if what == "oversize" {
                    Expect::Status(413)
                } else {
                    Expect::AnyClientError
                };
                let mut headers = auth();
                headers.push(("Content-Type".into(), b"application/json".to_vec()));
                check(
                    name(what),
                    send(route.method, path.as_bytes(), &headers, Some(&body)),
                    expect,
                );
            }
        }
        if route.query {
            for (what, query) in hostile_queries() {
                let target = format!("{path}?{query}");
                check(
                    name(what),
                    send(route.method, target.as_bytes(), &auth(), body_for(route)),
                    Expect::AnyClientError,
                );
            }
        }
    }
    // Records in NDJSON that are each broken in their own way.
    let mut headers = vec![
        ("Authorization".to_string(), token("alice")),
        ("Content-Type".to_string(), b"application/x-ndjson".to_vec()),
    ];
    let ndjson = b"{\"value\":1}\n{\"value\":\0}\n[]\n\xff\n".to_vec();
    check(
        "NDJSON with a NUL, an array and invalid UTF-8".into(),
        raw_http(
            &svc,
            request_bytes(
                "POST",
                format!("/api/v1/topics/{topic}/records").as_bytes(),
                &headers,
                Some(&ndjson),
            ),
        ),
        Expect::Status(400),
    );
    headers.truncate(1);
    let bad_headers = br#"[{"value":1,"headers":{"h":1}},{"value":2,"headers":[]}]"#;
    check(
        "records with non-string headers".into(),
        raw_http(
            &svc,
            request_bytes(
                "POST",
                format!("/api/v1/topics/{topic}/records").as_bytes(),
                &headers,
                Some(bad_headers),
            ),
        ),
        Expect::Status(400),
    );

    assert!(
        failures.is_empty(),
        "{} of {sent} hostile requests were not refused with a 4xx JSON error:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(svc.is_running(), "the server died:\n{}", svc.stderr_tail());
    let (status, ready) = svc.get_anon("/readyz");
    assert_eq!(status, 200, "readyz after {sent} hostile requests: {ready}");
    assert_eq!(
        durable_state(&svc),
        before,
        "hostile requests changed the log or the spool"
    );
    assert_eq!(svc.request(&id)["status"], "pending");
}

/// What the HTTP layer refuses before any route sees it gets a bare 4xx: the contract
/// (docs/api.md) says so, and the server goes on.
#[test]
fn requests_http_cannot_parse_get_a_bare_client_error() {
    let mut svc = Service::start();
    let mut problems = Vec::new();
    let too_many_headers: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("X-H{i}"), b"1".to_vec()))
        .collect();
    let long_uri = format!("/api/v1/audit?topic={}", "a".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "200 headers",
            request_bytes("GET", b"/api/v1/topics", &too_many_headers, None),
        ),
        (
            "a 70 KB URI",
            request_bytes("GET", long_uri.as_bytes(), &[], None),
        ),
        (
            "a NUL in the request line",
            request_bytes("GET", b"/api/v1/\0topics", &[], None),
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n".to_vec(),
        ),
        (
            "a request line of garbage",
            b"\xff\xfe\xfd \x01\x02 HTTP/9.9\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in cases {
        let reply = raw_http(&svc, request);
        if !(400..500).contains(&reply.status) {
            problems.push(format!("{what}: {}", reply.describe()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_still_serving(&mut svc);
}

// ------------------------------------------------------------------ limits

const SMALL_LIMITS: &str = "
[limits]
max_body_bytes = 1024
max_ingest_body_bytes = 4096
max_records_per_call = 5
max_record_bytes = 100
max_headers_per_record = 2
max_request_header_bytes = 2048
max_feeds_per_user = 1
max_tcp_connections = 2
max_tcp_connections_per_principal = 1
max_concurrent_http_requests = 2
retry_after_s = 3
";

/// Connects to TCP ingest and sends AUTH; returns the client and the first reply line.
fn tcp_auth(svc: &Service, token: &str) -> (common::IngestClient, Option<String>) {
    let mut client = common::IngestClient::connect(svc.ingest_addr());
    client.send_line(&format!("AUTH {token}"));
    let first = client.read_line(Duration::from_secs(30));
    (client, first)
}

#[test]
fn every_limit_is_refused_with_a_reason() {
    let mut svc = Service::start_with_config(|c| format!("{c}{SMALL_LIMITS}"));
    let mut checks = Checks::default();
    let topic = unique_topic("limits");
    let records = format!("/api/v1/topics/{topic}/records");
    let record = |i: usize| json!({"value": format!("v{i}")});

    // Sizes and counts of one call.
    let six: Vec<_> = (0..6).map(record).collect();
    checks.expect(
        "6 records in one call",
        svc.post("alice", &records, &json!(six)),
        413,
        &["payload_too_large"],
    );
    let ndjson: String = (0..6).map(|i| format!("{}\n", record(i))).collect();
    checks.expect(
        "6 NDJSON records in one call",
        svc.produce_ndjson("alice", &topic, &ndjson),
        413,
        &["payload_too_large"],
    );
    checks.expect(
        "a 200-byte record",
        svc.post("alice", &records, &json!([{"value": "x".repeat(200)}])),
        400,
        &["invalid_record"],
    );
    checks.expect(
        "a record with 3 headers",
        svc.post(
            "alice",
            &records,
            &json!([{"value": 1, "headers": {"a": "1", "b": "2", "c": "3"}}]),
        ),
        400,
        &["invalid_record"],
    );
    checks.expect(
        "a 5,000-byte ingest body",
        svc.post_raw("alice", &records, " ".repeat(5000).as_bytes()),
        413,
        &["payload_too_large"],
    );
    checks.expect(
        "a 2,000-byte request body",
        svc.post(
            "alice",
            REQUESTS,
            &json!({"topic": topic, "reason": "r".repeat(2000)}),
        ),
        413,
        &["payload_too_large"],
    );
    let padding = "p".repeat(3000);
    let big_header = raw_http(
        &svc,
        request_bytes(
            "GET",
            b"/api/v1/topics",
            &[
                (
                    "Authorization".into(),
                    format!("Bearer {}", svc.token("carol")).into_bytes(),
                ),
                ("X-Padding".into(), padding.into_bytes()),
            ],
            None,
        ),
    );
    checks.expect(
        "3,000 bytes of headers",
        (big_header.status, big_header.json()),
        431,
        &["headers_too_large"],
    );
    // Within every limit, the same call goes through (to a topic nobody asked for).
    let five: Vec<_> = (0..5).map(record).collect();
    checks.expect(
        "5 records in one call",
        svc.post("alice", &records, &json!(five)),
        404,
        &["unknown_topic"],
    );

    // TCP: one connection per principal, two in total.
    let (mut first, reply) = tcp_auth(&svc, svc.token("alice"));
    assert_eq!(reply.as_deref(), Some("OK 0"));
    first.send_line(r#"{"topic":"t","value":1,"headers":{"a":"1","b":"2","c":"3"}}"#);
    let refused = first.read_line(Duration::from_secs(30)).unwrap_or_default();
    assert!(
        refused.starts_with("ERR 2 invalid_record") && refused.contains("3 headers"),
        "{refused}"
    );
    let (mut second, reply) = tcp_auth(&svc, svc.token("alice"));
    let reply = reply.unwrap_or_default();
    assert!(
        reply.starts_with("ERR 1 too_many_requests") && reply.contains("retry after 3 s"),
        "alice's second connection: {reply}"
    );
    assert!(second.read_to_end(Duration::from_secs(30)).is_empty());
    drop(second);
    // The refused connection gives its place back once it is gone.
    let mut bob = None;
    let freed = common::wait_until(Duration::from_secs(30), || {
        let (client, reply) = tcp_auth(&svc, svc.token("bob"));
        let ok = reply.as_deref() == Some("OK 0");
        if ok {
            bob = Some(client);
        }
        ok
    });
    assert!(freed, "bob never got a connection");
    let mut third = common::IngestClient::connect(svc.ingest_addr());
    let lines = third.read_to_end(Duration::from_secs(30));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ERR 0 too_many_requests"),
        "a third connection: {lines:?}"
    );
    drop((first, bob));

    // Feeds: one per user.
    let feed = svc.feed(svc.token("erin"), "");
    let bearer = format!("Bearer {}", svc.token("erin"));
    match svc.try_feed(&[("authorization", &bearer)], "") {
        Ok(_) => panic!("a second feed of erin was opened"),
        Err(reply) => checks.expect("a second feed", reply, 429, &["too_many_requests"]),
    }
    feed.close();
    let reopened = common::wait_until(Duration::from_secs(30), || {
        svc.try_feed(&[("authorization", &bearer)], "").is_ok()
    });
    assert!(reopened, "erin's place was not given back");

    // HTTP: two requests at once. Two bodies that never finish hold both places.
    let hold = || {
        use std::io::Write;
        let address = svc.base_url().trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        let head = format!(
            "POST {REQUESTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{",
            svc.token("alice")
        );
        stream.write_all(head.as_bytes()).expect("write");
        stream
    };
    let mut held = vec![hold(), hold()];
    let carol = [(
        "Authorization".to_string(),
        format!("Bearer {}", svc.token("carol")).into_bytes(),
    )];
    let mut busy = None;
    let full = common::wait_until(Duration::from_secs(30), || {
        // A held request that was answered (refused while a call of the steps above still
        // had its place, on another worker thread) is sent again, so that both places end up
        // taken by bodies that never finish.
        for stream in held.iter_mut() {
            let _ = stream.set_nonblocking(true);
            let answered = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
            let _ = stream.set_nonblocking(false);
            if answered {
                *stream = hold();
            }
        }
        let reply = raw_http(&svc, request_bytes("GET", b"/api/v1/topics", &carol, None));
        let is_full = reply.status == 429;
        busy = Some(reply);
        is_full
    });
    let busy = busy.expect("a reply");
    if !full {
        // What the two held requests were told, if anything: the failure says why they
        // did not hold their places.
        let told: Vec<String> = held
            .iter_mut()
            .map(|stream| {
                use std::io::Read;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut bytes = vec![0u8; 512];
                let n = stream.read(&mut bytes).unwrap_or(0);
                String::from_utf8_lossy(&bytes[..n]).into_owned()
            })
            .collect();
        panic!(
            "never 429 with every place taken: {}; the held requests were told {told:?}",
            busy.describe()
        );
    }
    assert_eq!(busy.json()["error"]["code"], "too_many_requests");
    assert_eq!(busy.header("retry-after"), Some("3"), "{:?}", busy.headers);
    let (status, _) = svc.get_anon("/healthz");
    assert_eq!(status, 200, "healthz takes no place");
    drop(held);
    let freed = common::wait_until(Duration::from_secs(30), || {
        svc.get("carol", "/api/v1/topics").0 == 200
    });
    assert!(freed, "places were not given back");

    checks.finish();
    assert_still_serving(&mut svc);
}
