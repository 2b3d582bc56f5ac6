//! Shared helpers for the black-box tests: start the real `kafflow` binary on port 0 with a fresh
//! data dir, talk to it over real HTTP, kill it with SIGKILL, restart it on the same data, and look
//! at the real broker through Kafka's own metadata.
//!
//! Every test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The principals every test service knows, with their roles.
pub const PRINCIPALS: &[(&str, &[&str])] = &[
    ("alice", &["producer"]),
    ("bob", &["producer"]),
    ("carol", &["admin"]),
    ("dave", &["admin"]),
    ("erin", &["consumer"]),
];

/// A bootstrap address where nothing listens: the broker looks down.
pub const UNREACHABLE_BROKER: &str = "127.0.0.1:1";

/// How long the service may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many stderr lines a failure message shows.
const STDERR_TAIL: usize = 40;
const STDERR_KEEP: usize = 400;

/// The real broker the tests share.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_u64() -> u64 {
    // Each RandomState is freshly keyed; mixing in the clock keeps values apart across processes.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

fn random_token() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// A topic name no other test (in this process or another) will use.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{}-{n}-{:06x}",
        std::process::id(),
        random_u64() & 0xff_ffff
    )
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `kafflow ARGS` to completion (killed after `timeout`) and returns its exit status
/// (None if it had to be killed), stdout and stderr.
pub fn run_kafflow(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    run_kafflow_with_stdin(args, Vec::new(), timeout)
}

fn read_all(mut from: impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = from.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `kafflow audit verify --data-dir DIR`.
pub fn audit_verify(data_dir: &Path) -> (Option<ExitStatus>, String, String) {
    let dir = data_dir.to_str().expect("utf-8 path");
    run_kafflow(
        &["audit", "verify", "--data-dir", dir],
        Duration::from_secs(60),
    )
}

/// Parses `ok: N events, head HASH` into (N, HASH).
pub fn parse_verify_ok(stdout: &str) -> Option<(u64, String)> {
    let line = stdout.lines().find(|l| l.starts_with("ok: "))?;
    let rest = line.strip_prefix("ok: ")?;
    let (count, rest) = rest.split_once(" events, head ")?;
    Some((count.trim().parse().ok()?, rest.trim().to_string()))
}

/// Removes terminal colour sequences (`ESC [ ... letter`) so log lines read plainly in failures.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// True when `text` mentions `seq N` for exactly this N (not `seq N0`, `seq N1`, ...).
pub fn mentions_seq(text: &str, seq: i64) -> bool {
    let needle = format!("seq {seq}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// A running `kafflow serve` with its own config and data dir.
pub struct Service {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    data_dir: PathBuf,
    bootstrap: String,
    tokens: BTreeMap<&'static str, String>,
    child: Option<Child>,
    base_url: String,
    ingest_addr: String,
    gateway_addr: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
    http: reqwest::blocking::Client,
}

impl Service {
    /// Starts the service against the real broker.
    pub fn start() -> Service {
        Service::start_with_bootstrap(&bootstrap())
    }

    /// Starts the service against `bootstrap` (e.g. [`UNREACHABLE_BROKER`]).
    pub fn start_with_bootstrap(bootstrap: &str) -> Service {
        Service::start_configured(bootstrap, |text| text)
    }

    /// Starts the service against the real broker with `edit` applied to the config text
    /// (e.g. to append a `[spool]` or `[watcher]` section).
    pub fn start_with_config(edit: impl FnOnce(String) -> String) -> Service {
        Service::start_configured(&bootstrap(), edit)
    }

    /// Starts the service against `bootstrap` (e.g. an [`OwnBroker`]) with `edit` applied to
    /// the config text.
    /// The usual test service with the Kafka-protocol gateway on a free port.
    pub fn start_gateway() -> Service {
        Service::start_gateway_at(&bootstrap(), |c| c)
    }

    /// A gateway service in front of `bootstrap`, its config edited by `edit`.
    pub fn start_gateway_at(bootstrap: &str, edit: impl FnOnce(String) -> String) -> Service {
        Service::start_configured(bootstrap, |c| {
            edit(format!("{c}\n[gateway]\nlisten = \"127.0.0.1:0\"\n"))
        })
    }

    pub fn start_at(bootstrap: &str, edit: impl FnOnce(String) -> String) -> Service {
        Service::start_configured(bootstrap, edit)
    }

    fn start_configured(bootstrap: &str, edit: impl FnOnce(String) -> String) -> Service {
        let dir = tempfile::Builder::new()
            .prefix("kafflow-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let tokens: BTreeMap<&'static str, String> = PRINCIPALS
            .iter()
            .map(|(name, _)| (*name, random_token()))
            .collect();
        let config_path = dir.path().join("kafflow.toml");
        std::fs::write(&config_path, edit(config_text(&tokens))).expect("write config");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut service = Service {
            dir,
            config_path,
            data_dir,
            bootstrap: bootstrap.to_string(),
            tokens,
            child: None,
            base_url: String::new(),
            ingest_addr: String::new(),
            gateway_addr: String::new(),
            stderr: Arc::new(Mutex::new(VecDeque::new())),
            http,
        };
        service.spawn();
        service
    }

    fn serve_args(&self) -> Vec<String> {
        vec![
            "serve".into(),
            "--config".into(),
            self.config_path.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--ingest-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--bootstrap-servers".into(),
            self.bootstrap.clone(),
        ]
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "service already running");
        self.stderr = Arc::new(Mutex::new(VecDeque::new()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kafflow"))
            .args(self.serve_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kafflow serve");

        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&self.stderr);
        // With KAFFLOW_TEST_LOG_DIR set, every line also goes to <dir>/kafflow-<pid>.log, whole
        // (the failure message shows only the tail); set RUST_LOG too, for the level.
        let mut keep = std::env::var_os("KAFFLOW_TEST_LOG_DIR").map(|dir| {
            let path = Path::new(&dir).join(format!("kafflow-{}.log", child.id()));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(file) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{}", strip_ansi(&line));
                }
                let mut lines = sink.lock().expect("stderr lock");
                if lines.len() == STDERR_KEEP {
                    lines.pop_front();
                }
                lines.push_back(strip_ansi(&line));
            }
        });

        // The reader keeps draining stdout after the address line so the child never blocks.
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let text = line.trim();
                    let ingest = text
                        .strip_prefix("ingest on tcp://")
                        .or_else(|| text.strip_prefix("ingest on tls://"));
                    if let Some(addr) = ingest {
                        self.ingest_addr = addr.to_string();
                        continue;
                    }
                    let gateway = text
                        .strip_prefix("gateway on kafka://")
                        .or_else(|| text.strip_prefix("gateway on kafka+tls://"));
                    if let Some(addr) = gateway {
                        self.gateway_addr = addr.to_string();
                        continue;
                    }
                    if let Some(addr) = line.trim().strip_prefix("listening on ") {
                        self.base_url = addr.trim_end_matches('/').to_string();
                        return;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let tail = self.stderr_tail();
                    self.kill9();
                    panic!(
                        "kafflow serve printed no `listening on` line within {START_TIMEOUT:?}; \
                         stdout: {seen:?}\nstderr tail:\n{tail}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    // Give the stderr reader a moment to collect the last lines.
                    thread::sleep(Duration::from_millis(200));
                    panic!(
                        "kafflow serve exited ({status:?}) before listening; stdout: {seen:?}\n\
                         stderr tail:\n{}",
                        self.stderr_tail()
                    );
                }
            }
        }
    }

    /// The last stderr lines of the current process, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().expect("stderr lock");
        let skip = lines.len().saturating_sub(STDERR_TAIL);
        lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL, then reap. Nothing gets a chance to flush or shut down cleanly.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process (if running) and starts it again on the same config and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Like [`Service::restart`], pointing at another broker from now on.
    pub fn restart_with_bootstrap(&mut self, bootstrap: &str) {
        self.kill9();
        self.bootstrap = bootstrap.to_string();
        self.spawn();
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs `kafflow serve` on this data dir expecting it to fail: returns (status, stdout, stderr).
    /// The service must not be running.
    pub fn serve_expecting_exit(&self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        assert!(self.child.is_none(), "stop the service first");
        let args = self.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_kafflow(&args, timeout)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("kafflow.db")
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The TCP ingest listener's `host:port`.
    /// The Kafka-protocol gateway's address (empty unless `[gateway] listen` is set).
    pub fn gateway_addr(&self) -> &str {
        &self.gateway_addr
    }

    pub fn ingest_addr(&self) -> &str {
        &self.ingest_addr
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The plaintext bearer token of a principal.
    pub fn token(&self, who: &str) -> &str {
        self.tokens
            .get(who)
            .unwrap_or_else(|| panic!("no principal named {who}"))
    }

    // ------------------------------------------------------------------ HTTP

    /// Sends one request; `token` None sends no Authorization header. Returns the status and the
    /// body as JSON (`Null` for an empty body, a JSON string holding the text if it is not JSON).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(Vec<u8>, &str)>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("http method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some((bytes, content_type)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}\nstderr tail:\n{}", self.stderr_tail()));
        let status = response.status().as_u16();
        let text = response.text().expect("response body");
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// GET with a raw `Authorization` header value.
    pub fn send_with_header(&self, path: &str, authorization: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .header("Authorization", authorization)
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().expect("response body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET as principal `who`.
    pub fn get(&self, who: &str, path: &str) -> (u16, Value) {
        self.send("GET", path, Some(self.token(who)), None)
    }

    /// Every item of a paged list route as principal `who`: the `field` array of each page,
    /// following `next` until it is null.
    pub fn list_all(&self, who: &str, path: &str, field: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next: Option<String> = None;
        loop {
            let page_path = match &next {
                Some(after) => format!("{path}{sep}limit=1000&after={after}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let (status, page) = self.get(who, &page_path);
            assert_eq!(status, 200, "{page_path}: {page}");
            items.extend(
                page[field]
                    .as_array()
                    .unwrap_or_else(|| panic!("{page}"))
                    .clone(),
            );
            match page["next"].as_str() {
                Some(after) => next = Some(after.to_string()),
                None => return items,
            }
        }
    }

    /// GET without a token.
    pub fn get_anon(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None, None)
    }

    /// POST a JSON body as principal `who`.
    pub fn post(&self, who: &str, path: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json body");
        self.send(
            "POST",
            path,
            Some(self.token(who)),
            Some((bytes, "application/json")),
        )
    }

    /// POST raw bytes as principal `who`.
    pub fn post_raw(&self, who: &str, path: &str, bytes: &[u8]) -> (u16, Value) {
        self.send(
            "POST",
            path,
            Some(self.token(who)),
            Some((bytes.to_vec(), "application/json")),
        )
    }

    // ---------------------------------------------------------- domain calls

    /// Files a create request as `who`; asserts 201 and returns the request.
    pub fn create_request(&self, who: &str, body: Value) -> Value {
        let (status, reply) = self.post(who, "/api/v1/topic-requests", &body);
        assert_eq!(status, 201, "create request {body} as {who}: {reply}");
        reply
    }

    /// Files a create request for `topic` with `partitions` as `who`; returns the request id.
    pub fn request_topic(&self, who: &str, topic: &str, partitions: u32) -> String {
        let reply = self.create_request(
            who,
            json!({"topic": topic, "partitions": partitions, "reason": "test"}),
        );
        id_of(&reply)
    }

    /// Approves as `who`; asserts 200 and returns the request.
    pub fn approve(&self, who: &str, id: &str) -> Value {
        let path = format!("/api/v1/topic-requests/{id}/approve");
        let (status, reply) = self.post(who, &path, &json!({}));
        assert_eq!(status, 200, "approve {id} as {who}: {reply}");
        reply
    }

    /// GET one request (as carol); asserts 200.
    pub fn request(&self, id: &str) -> Value {
        let (status, reply) = self.get("carol", &format!("/api/v1/topic-requests/{id}"));
        assert_eq!(status, 200, "GET request {id}: {reply}");
        reply
    }

    /// GET one topic (as carol): (status, body).
    pub fn topic(&self, name: &str) -> (u16, Value) {
        self.get("carol", &format!("/api/v1/topics/{name}"))
    }

    /// Polls until the request has `status`; panics (with what it last saw) if the request settles
    /// in another final status or the timeout passes.
    pub fn wait_request_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let request = self.request(id);
            let now = request["status"].as_str().unwrap_or_default().to_string();
            if now == status {
                return request;
            }
            let settled = ["completed", "failed", "rejected", "withdrawn"].contains(&now.as_str());
            if settled || Instant::now() >= deadline {
                panic!(
                    "request {id}: waited for status {status}, got {request}\nstderr tail:\n{}",
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the topic has `status`; panics with what it last saw after `timeout`.
    pub fn wait_topic_status(&self, name: &str, status: &str, timeout: Duration) -> Value {
        let mut last = (0, Value::Null);
        let found = wait_until(timeout, || {
            last = self.topic(name);
            last.0 == 200 && last.1["status"] == status
        });
        assert!(
            found,
            "topic {name}: waited for status {status}, got {} {}\nstderr tail:\n{}",
            last.0,
            last.1,
            self.stderr_tail()
        );
        last.1
    }

    /// Files and approves (by carol) a create request from alice and waits until the topic is
    /// active; returns the request id.
    pub fn provision(&self, topic: &str, partitions: u32) -> String {
        let id = self.request_topic("alice", topic, partitions);
        self.approve("carol", &id);
        self.wait_request_status(&id, "completed", Duration::from_secs(60));
        self.wait_topic_status(topic, "active", Duration::from_secs(10));
        id
    }

    /// `who` asks for `access` (`produce` or `consume`) to `topic`, and carol (an admin)
    /// approves; returns the grant's id.
    pub fn grant(&self, who: &str, topic: &str, access: &str) -> String {
        let (status, request) = self.post(
            who,
            "/api/v1/access-requests",
            &json!({"topic": topic, "access": access}),
        );
        assert_eq!(status, 201, "access request: {request}");
        let id = id_of(&request);
        let (status, reply) = self.post(
            "carol",
            &format!("/api/v1/access-requests/{id}/approve"),
            &json!({}),
        );
        assert_eq!(status, 200, "approve access: {reply}");
        id
    }

    /// Every audit event matching `query` (e.g. `topic=x`), following the `next` cursor.
    pub fn audit(&self, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after: Option<u64> = None;
        for _ in 0..10_000 {
            let mut q = query.to_string();
            if let Some(after) = after {
                if !q.is_empty() {
                    q.push('&');
                }
                q.push_str(&format!("after={after}"));
            }
            let (status, page) = self.get("carol", &format!("/api/v1/audit?{q}"));
            assert_eq!(status, 200, "GET /api/v1/audit?{q}: {page}");
            let batch = page["events"]
                .as_array()
                .unwrap_or_else(|| panic!("audit page without events: {page}"));
            events.extend(batch.iter().cloned());
            match page["next"].as_u64() {
                Some(next) => {
                    assert!(
                        after.is_none_or(|a| next > a),
                        "audit cursor does not advance: after {after:?}, next {next}"
                    );
                    after = Some(next);
                }
                None => {
                    assert!(page["next"].is_null(), "bad next cursor: {page}");
                    return events;
                }
            }
        }
        panic!("audit paging did not end");
    }

    /// Polls /readyz until 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let mut last = (0, Value::Null);
        let ready = wait_until(timeout, || {
            last = self.get_anon("/readyz");
            last.0 == 200
        });
        assert!(
            ready,
            "/readyz never became 200: {} {}\nstderr tail:\n{}",
            last.0,
            last.1,
            self.stderr_tail()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn config_text(tokens: &BTreeMap<&'static str, String>) -> String {
    let mut text = format!(
        r#"[kafka]
bootstrap_servers = "{}"

[store]
synchronous = "full"

# Reconciliation only where a test asks for it: the shared broker holds every test's topics.
[watcher]
reconcile_interval_ms = 3600000

[policy]
topic_name_pattern = "^[a-z0-9][a-z0-9._-]*$"
default_partitions = 3
max_partitions = 12
default_replication_factor = 1
max_replication_factor = 1

# The tests send bad tokens on purpose, many from one address; tests/identity.rs lowers this.
[auth]
max_failures_per_minute = 100000
"#,
        bootstrap()
    );
    for (name, roles) in PRINCIPALS {
        let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!(
            "\n[[principals]]\nname = \"{name}\"\nroles = [{}]\ntoken_sha256 = \"{}\"\n",
            roles.join(", "),
            sha256_hex(&tokens[name])
        ));
    }
    text
}

/// Writes a config like every test service's (fresh random tokens) with `edit` applied to its
/// text; returns its path.
pub fn write_config(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let tokens: BTreeMap<&'static str, String> = PRINCIPALS
        .iter()
        .map(|(name, _)| (*name, random_token()))
        .collect();
    let path = dir.join(format!("kafflow-{:08x}.toml", random_u64() as u32));
    std::fs::write(&path, edit(config_text(&tokens))).expect("write config");
    path
}

/// The `id` of a request reply.
pub fn id_of(request: &Value) -> String {
    request["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {request}"))
        .to_string()
}

/// The `error.code` of an error reply.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error.code>")
}

/// Asserts an error reply: status, code, and a non-empty message.
#[track_caller]
pub fn assert_error(reply: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(
        (reply.0, error_code(&reply.1)),
        (status, code),
        "{what}: got {} {}",
        reply.0,
        reply.1
    );
    assert!(
        reply.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{what}: error without a message: {}",
        reply.1
    );
}

/// Collects many error expectations and reports every mismatch at once, so one run shows all
/// the ways the service answers differently from the contract.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
    count: usize,
}

impl Checks {
    /// Expects `status` with one of `codes` in `{"error":{"code","message"}}`.
    pub fn expect(&mut self, what: &str, reply: (u16, Value), status: u16, codes: &[&str]) {
        self.count += 1;
        let code = error_code(&reply.1);
        let has_message = reply.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty());
        if reply.0 != status || !codes.contains(&code) || !has_message {
            self.failures.push(format!(
                "{what}: expected {status} {codes:?}, got {} {}",
                reply.0, reply.1
            ));
        }
    }

    /// Panics listing every mismatch.
    #[track_caller]
    pub fn finish(self) {
        assert!(self.count > 0, "no checks ran");
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failures.len(),
            self.count,
            self.failures.join("\n")
        );
    }
}

/// The `kind`s of audit events, in order.
pub fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("<no kind>"))
        .collect()
}

// -------------------------------------------------------------------- Kafka

/// Runs a future to completion on a small runtime of its own.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// An admin client on the real broker that never asks the broker to create topics.
pub fn kafka_admin() -> AdminClient<DefaultClientContext> {
    kafka_admin_at(&bootstrap())
}

/// Like [`kafka_admin`], on the broker at `bootstrap` (e.g. an [`OwnBroker`]).
pub fn kafka_admin_at(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("kafka admin client")
}

/// The partition count of `name` according to the broker's own metadata; None if the broker
/// does not know the topic.
pub fn kafka_topic_partitions(name: &str) -> Option<usize> {
    kafka_topic_partitions_at(&bootstrap(), name)
}

/// Like [`kafka_topic_partitions`], on the broker at `bootstrap`.
pub fn kafka_topic_partitions_at(bootstrap: &str, name: &str) -> Option<usize> {
    let admin = kafka_admin_at(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
        {
            Ok(metadata) => {
                let topic = metadata.topics().iter().find(|t| t.name() == name)?;
                match topic.error().map(RDKafkaErrorCode::from) {
                    None => return Some(topic.partitions().len()),
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    | Some(RDKafkaErrorCode::UnknownTopic) => return None,
                    // Leader election right after a create or delete: ask again.
                    Some(other) => format!("topic error {other:?}"),
                }
            }
            Err(e) => format!("metadata request failed: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "no usable metadata for {name} from {bootstrap}: {last}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// One topic config value as the broker reports it.
pub fn kafka_topic_config(name: &str, key: &str) -> Option<String> {
    let admin = kafka_admin();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = block_on(admin.describe_configs(&[ResourceSpecifier::Topic(name)], &opts))
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .unwrap_or_else(|e| panic!("describe configs of {name}: {e:?}"));
    resource.get(key).and_then(|entry| entry.value.clone())
}

/// Creates a topic directly in Kafka, behind KafFlow's back.
pub fn kafka_create_topic(name: &str, partitions: i32) {
    let admin = kafka_admin();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = block_on(admin.create_topics(&[topic], &opts)).expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create {topic} in Kafka: {e:?}"));
    }
    assert!(
        wait_until(Duration::from_secs(20), || kafka_topic_partitions(name)
            == Some(partitions as usize)),
        "topic {name} created in Kafka but not visible in metadata"
    );
}

/// Deletes a topic directly in Kafka (cleanup); ignores a topic that is already gone.
pub fn kafka_delete_topic(name: &str) {
    let admin = kafka_admin();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let _ = block_on(admin.delete_topics(&[name], &opts));
}

// ------------------------------------------------------------- consumers

/// A principal's name, token and the config lines that declare it, for tests that need more
/// users than [`PRINCIPALS`] has (append `config` to the service's config text).
pub struct ExtraPrincipal {
    pub name: &'static str,
    pub token: String,
    pub config: String,
}

impl ExtraPrincipal {
    pub fn new(name: &'static str, roles: &[&str]) -> ExtraPrincipal {
        let token = random_token();
        let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
        let config = format!(
            "\n[[principals]]\nname = \"{name}\"\nroles = [{}]\ntoken_sha256 = \"{}\"\n",
            roles.join(", "),
            sha256_hex(&token)
        );
        ExtraPrincipal {
            name,
            token,
            config,
        }
    }
}

/// What a feed read gave.
#[derive(Debug)]
pub enum FeedRead {
    Frame(Value),
    Closed(u16, String),
    /// Nothing arrived in time.
    Quiet,
}

/// A blocking websocket client on `GET /api/v1/me/feed`.
pub struct FeedClient {
    socket: tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>,
    /// The `Sec-WebSocket-Protocol` the server answered with.
    pub protocol: Option<String>,
}

impl FeedClient {
    /// The next text frame as JSON, a close, or `Quiet` after `timeout`.
    pub fn read(&mut self, timeout: Duration) -> FeedRead {
        use tokio_tungstenite::tungstenite::{Error, Message};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return FeedRead::Quiet;
            }
            self.socket
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    return FeedRead::Frame(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("feed frame is not JSON ({e}): {}", text.as_str())
                    }))
                }
                Ok(Message::Close(frame)) => {
                    return match frame {
                        Some(f) => FeedRead::Closed(f.code.into(), f.reason.to_string()),
                        None => FeedRead::Closed(1005, String::new()),
                    }
                }
                Ok(_) => {}
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(Error::ConnectionClosed) | Err(Error::AlreadyClosed) => {
                    return FeedRead::Closed(1006, "connection closed".into())
                }
                Err(e) => return FeedRead::Closed(1006, e.to_string()),
            }
        }
    }

    /// The next frame; panics on a close or after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Value {
        match self.read(timeout) {
            FeedRead::Frame(frame) => frame,
            other => panic!("expected a feed frame within {timeout:?}, got {other:?}"),
        }
    }

    /// The next notice (a frame with a `type`), skipping records; panics after `timeout`.
    pub fn next_notice(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.next(deadline.saturating_duration_since(Instant::now()));
            if frame["type"].is_string() {
                return frame;
            }
        }
    }

    /// Reads record frames (skipping notices) until `n` have arrived; panics after `timeout`
    /// with what it got.
    pub fn records(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < n {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                FeedRead::Frame(frame) if frame["type"].is_string() => {}
                FeedRead::Frame(frame) => records.push(frame),
                other => panic!(
                    "expected {n} records within {timeout:?}, got {} then {other:?}: {records:?}",
                    records.len()
                ),
            }
        }
        records
    }

    /// Every frame that arrives until `quiet` passes without one.
    pub fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let FeedRead::Frame(frame) = self.read(quiet) {
            frames.push(frame);
        }
        frames
    }

    /// Closes the connection cleanly.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
        let _ = self.drain(Duration::from_millis(200));
    }
}

impl Service {
    /// Opens the websocket feed with `headers` (name, value) and `query` (e.g. `from=earliest`);
    /// on a refused handshake returns the HTTP status and JSON body.
    pub fn try_feed(
        &self,
        headers: &[(&str, &str)],
        query: &str,
    ) -> Result<FeedClient, (u16, Value)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::handshake::HandshakeError;
        use tokio_tungstenite::tungstenite::Error;
        let address = self
            .base_url
            .strip_prefix("http://")
            .expect("http base url")
            .to_string();
        let mut url = format!("ws://{address}/api/v1/me/feed");
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut request = url.into_client_request().expect("feed request");
        for (name, value) in headers {
            request.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let stream = std::net::TcpStream::connect(&address).expect("connect to the service");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        match tokio_tungstenite::tungstenite::client(request, stream) {
            Ok((socket, response)) => Ok(FeedClient {
                socket,
                protocol: response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            }),
            Err(HandshakeError::Failure(Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Err((response.status().as_u16(), body))
            }
            Err(e) => panic!("feed handshake: {e}\nstderr tail:\n{}", self.stderr_tail()),
        }
    }

    /// Opens the feed with `token` in the Authorization header; panics if refused.
    pub fn feed(&self, token: &str, query: &str) -> FeedClient {
        let bearer = format!("Bearer {token}");
        self.try_feed(&[("authorization", &bearer)], query)
            .unwrap_or_else(|(status, body)| {
                panic!(
                    "feed refused: {status} {body}\nstderr tail:\n{}",
                    self.stderr_tail()
                )
            })
    }

    /// Sends a request with a raw bearer token (for principals outside [`PRINCIPALS`]).
    pub fn send_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| (serde_json::to_vec(b).expect("json"), "application/json"));
        self.send(method, path, Some(token), body)
    }
}

/// A plain Kafka producer on the real broker, as any client outside KafFlow would use.
pub fn kafka_producer() -> rdkafka::producer::FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("kafka producer")
}

/// One record to produce: key, value, headers.
pub struct Produce<'a> {
    pub key: Option<&'a str>,
    pub value: Vec<u8>,
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> Produce<'a> {
    pub fn value(value: impl Into<Vec<u8>>) -> Produce<'a> {
        Produce {
            key: None,
            value: value.into(),
            headers: &[],
        }
    }
}

/// Produces `records` to `topic` and waits for every ack; returns (partition, offset) of each.
pub fn kafka_produce(topic: &str, records: &[Produce<'_>]) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let producer = kafka_producer();
    block_on(async {
        let sends = records.iter().map(|r| {
            let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(*v),
                })
            });
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .payload(&r.value)
                .headers(headers);
            if let Some(key) = r.key {
                record = record.key(key);
            }
            producer.send(record, Duration::from_secs(30))
        });
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .map(|result| {
                let delivery = result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
                (delivery.partition, delivery.offset)
            })
            .collect()
    })
}

/// The next offsets `group` has committed on the partitions of `topic` (None: nothing committed).
pub fn kafka_committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect()
}

// ------------------------------------------------------------ producer pipeline

impl Service {
    /// POSTs a JSON array of records to `topic` as `who`; `query` is appended to the path
    /// (e.g. `?request=true`).
    pub fn produce(&self, who: &str, topic: &str, query: &str, records: &Value) -> (u16, Value) {
        self.post(
            who,
            &format!("/api/v1/topics/{topic}/records{query}"),
            records,
        )
    }

    /// POSTs an NDJSON body of records to `topic` as `who`.
    pub fn produce_ndjson(&self, who: &str, topic: &str, body: &str) -> (u16, Value) {
        self.send(
            "POST",
            &format!("/api/v1/topics/{topic}/records"),
            Some(self.token(who)),
            Some((body.as_bytes().to_vec(), "application/x-ndjson")),
        )
    }

    /// The `/metrics` text (no auth).
    pub fn metrics_text(&self) -> String {
        let (status, body) = self.get_anon("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body.as_str()
            .unwrap_or_else(|| panic!("/metrics is not text: {body}"))
            .to_string()
    }

    /// One unlabelled sample of `/metrics`; panics if it is not there.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
    }
}

/// Like [`run_kafflow`], with `stdin` fed to the child.
pub fn run_kafflow_with_stdin(
    args: &[&str],
    stdin: Vec<u8>,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafflow"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kafflow");
    let mut input = child.stdin.take().expect("stdin piped");
    // Dropping the pipe at the end is the child's end of input.
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let out = thread::spawn(move || read_all(stdout));
    let err = thread::spawn(move || read_all(stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = feeder.join();
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// A client of the TCP ingest listener that speaks the line protocol by hand.
pub struct IngestClient {
    writer: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl IngestClient {
    pub fn connect(addr: &str) -> IngestClient {
        let stream = std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connect to ingest {addr}: {e}"));
        let reader = BufReader::new(stream.try_clone().expect("clone stream"));
        IngestClient {
            writer: stream,
            reader,
        }
    }

    /// Sends `text` as it is (lines must carry their own newlines).
    pub fn send(&mut self, text: &str) {
        use std::io::Write;
        self.writer
            .write_all(text.as_bytes())
            .expect("write to ingest");
    }

    /// Sends one line, adding the newline.
    pub fn send_line(&mut self, line: &str) {
        self.send(&format!("{line}\n"));
    }

    /// Half-closes the connection: the server sees the end of input and answers the rest.
    pub fn finish_sending(&mut self) {
        self.writer
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown write");
    }

    /// The next reply line without its newline; None when the server closed the connection.
    /// Panics if nothing comes within `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => panic!("no reply from ingest within {timeout:?}: {e}"),
        }
    }

    /// Reads reply lines until `done` says so for one of them (included); panics on a close
    /// or after `timeout`, with what came.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "ingest replies within {timeout:?}: {lines:?}"
            );
            match self.read_line(left) {
                Some(line) => {
                    let stop = done(&line);
                    lines.push(line);
                    if stop {
                        return lines;
                    }
                }
                None => panic!("ingest closed the connection; replies so far: {lines:?}"),
            }
        }
    }

    /// Every reply line until the server closes the connection.
    pub fn read_to_end(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "ingest did not close within {timeout:?}: {lines:?}"
            );
            match self.read_line(left) {
                Some(line) => lines.push(line),
                None => return lines,
            }
        }
    }
}

/// The `n` of an `OK n` reply.
pub fn ok_count(line: &str) -> Option<u64> {
    line.strip_prefix("OK ")?.trim().parse().ok()
}

/// A record as a plain Kafka consumer reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning of every partition with a plain consumer (no group
/// membership, nothing committed) until `enough` holds for what has been read, checked
/// whenever the consumer has caught up; returns everything read, in (partition, offset) order.
/// Panics after `timeout` with a summary of what arrived.
pub fn kafka_read_until(
    topic: &str,
    timeout: Duration,
    enough: impl FnMut(&[KafkaRecord]) -> bool,
) -> Vec<KafkaRecord> {
    kafka_read_until_at(&bootstrap(), topic, timeout, enough)
}

/// Like [`kafka_read_until`], on the broker at `bootstrap`.
pub fn kafka_read_until_at(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut enough: impl FnMut(&[KafkaRecord]) -> bool,
) -> Vec<KafkaRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let partitions = kafka_topic_partitions_at(bootstrap, topic)
        .unwrap_or_else(|| panic!("topic {topic} is not in Kafka")) as i32;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("kafflow-test-reader-{:x}", random_u64()),
        )
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("kafka consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&list).expect("assign partitions");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut since_check = 0usize;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(KafkaRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: message
                        .payload()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                    headers,
                });
                since_check += 1;
                // A long backlog: look now and then rather than only when caught up.
                if since_check < 50_000 {
                    continue;
                }
            }
            Some(Err(e)) => eprintln!("kafka read of {topic}: {e}"),
            None => {}
        }
        since_check = 0;
        if enough(&records) {
            records.sort_by_key(|r| (r.partition, r.offset));
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic} from Kafka: condition not met within {timeout:?} after {} records",
            records.len()
        );
    }
}

/// Records `{"key": "k<i mod keys>", "value": "n-<i>"}` for `range`, as an ingest body.
pub fn numbered_records(range: std::ops::Range<u64>, keys: u64) -> Value {
    Value::Array(
        range
            .map(|i| json!({"key": format!("k{}", i % keys), "value": format!("n-{i}")}))
            .collect(),
    )
}

/// The `i` of a `n-<i>` value.
pub fn number_of(value: &str) -> Option<u64> {
    value.strip_prefix("n-")?.parse().ok()
}

/// Checks numbered records read back from Kafka: every one of `expected` is there (duplicates
/// allowed, as after a crash), nothing else is, and per key the first arrivals keep the sent
/// order. Returns how many duplicates there were.
#[track_caller]
pub fn assert_numbered_arrived(
    records: &[KafkaRecord],
    expected: &std::collections::BTreeSet<u64>,
) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut duplicates = 0;
    let mut last_by_key: BTreeMap<Option<String>, u64> = BTreeMap::new();
    for record in records {
        let n = number_of(&record.value)
            .unwrap_or_else(|| panic!("unexpected record in Kafka: {record:?}"));
        assert!(
            expected.contains(&n),
            "record n-{n} was never acknowledged: {record:?}"
        );
        if !seen.insert(n) {
            duplicates += 1;
            continue;
        }
        if let Some(before) = last_by_key.insert(record.key.clone(), n) {
            assert!(
                before < n,
                "key {:?}: n-{n} arrived after n-{before} (partition {}, offset {})",
                record.key,
                record.partition,
                record.offset
            );
        }
    }
    let missing: Vec<u64> = expected.difference(&seen).copied().take(20).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records missing in Kafka, first: {missing:?}",
        expected.len() - seen.len()
    );
    duplicates
}

/// Reads numbered records from `topic` until every one of `expected` is there.
pub fn kafka_read_numbered(
    topic: &str,
    expected: &std::collections::BTreeSet<u64>,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    kafka_read_until(topic, timeout, |records| {
        let seen: std::collections::BTreeSet<u64> =
            records.iter().filter_map(|r| number_of(&r.value)).collect();
        expected.is_subset(&seen)
    })
}

impl Service {
    /// (held, dead, published) of a topic's view, as carol; None if the topic is unknown.
    pub fn topic_counts(&self, name: &str) -> Option<(u64, u64, u64)> {
        let (status, view) = self.topic(name);
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "GET topic {name}: {view}");
        let count = |field: &str| {
            view[field]
                .as_u64()
                .unwrap_or_else(|| panic!("topic view without {field}: {view}"))
        };
        Some((count("held"), count("dead"), count("published")))
    }

    /// Polls the topic view until its counts satisfy `ok`; panics with the last seen.
    pub fn wait_topic_counts(
        &self,
        name: &str,
        timeout: Duration,
        mut ok: impl FnMut(u64, u64, u64) -> bool,
    ) -> (u64, u64, u64) {
        let mut last = None;
        let found = wait_until(timeout, || {
            last = self.topic_counts(name);
            last.is_some_and(|(h, d, p)| ok(h, d, p))
        });
        assert!(
            found,
            "topic {name}: counts (held, dead, published) stayed {last:?}\nstderr tail:\n{}",
            self.stderr_tail()
        );
        last.expect("counts")
    }

    /// Every held record of `topic` in `state` visible to `who`, following the `next` cursor.
    pub fn held_records(&self, who: &str, topic: &str, state: &str) -> Vec<Value> {
        let mut records = Vec::new();
        let mut after: Option<i64> = None;
        loop {
            let mut path = format!("/api/v1/held?topic={topic}&state={state}&limit=500");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let (status, page) = self.get(who, &path);
            assert_eq!(status, 200, "GET {path} as {who}: {page}");
            let batch = page["records"]
                .as_array()
                .unwrap_or_else(|| panic!("held page without records: {page}"));
            records.extend(batch.iter().cloned());
            match page["next"].as_i64() {
                Some(next) => {
                    assert!(after.is_none_or(|a| next > a), "held cursor stuck: {page}");
                    after = Some(next);
                }
                None => return records,
            }
        }
    }
}

impl Service {
    /// SIGTERM, then waits up to `timeout` for the process to exit. Returns its status, or
    /// None if it was still running (it is then SIGKILLed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same config and data dir, after `terminate`.
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

// ------------------------------------------------------------ a broker of one test's own

/// A single-node broker of one test's own: `scripts/kafka.sh` with its own home (under the
/// target dir) and its own ports, reading the shared broker's jars. A test may stop and start it
/// at will; it is stopped, and its data removed, when dropped.
pub struct OwnBroker {
    home: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    sasl_port: u16,
}

/// Three ports nothing listens on now.
fn free_ports() -> (u16, u16, u16) {
    let bound: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let port = |i: usize| bound[i].local_addr().expect("local addr").port();
    (port(0), port(1), port(2))
}

impl OwnBroker {
    /// A broker home and two free ports, with nothing started: until [`OwnBroker::up`], its
    /// bootstrap address is one where nothing listens.
    pub fn new() -> OwnBroker {
        let home = tempfile::Builder::new()
            .prefix("kafka-own-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("broker home");
        let (port, controller_port, sasl_port) = free_ports();
        OwnBroker {
            home,
            port,
            controller_port,
            sasl_port,
        }
    }

    /// A new broker, started and answering.
    pub fn start() -> OwnBroker {
        let broker = OwnBroker::new();
        broker.up();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The jars of the shared broker (`KAFKA_LIBS_DIR`, else `KAFKA_HOME_DIR/libs`, else the
    /// repository's `.kafka/libs`): fetched once, read by every instance.
    fn libs_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("KAFKA_LIBS_DIR") {
            return PathBuf::from(dir);
        }
        let home = std::env::var("KAFKA_HOME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".kafka"));
        home.join("libs")
    }

    fn script(&self, command: &str) -> std::process::Output {
        Command::new("bash")
            .arg("scripts/kafka.sh")
            .arg(command)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KAFKA_HOME_DIR", self.home.path())
            .env("KAFKA_LIBS_DIR", OwnBroker::libs_dir())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_SASL_PORT", self.sasl_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run scripts/kafka.sh {command}: {e}"))
    }

    fn script_ok(&self, command: &str) {
        let out = self.script(command);
        assert!(
            out.status.success(),
            "scripts/kafka.sh {command} for {}: {}\n{}{}",
            self.bootstrap(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the broker (formatting its data dir the first time) and waits until it answers.
    pub fn up(&self) {
        self.script_ok("up");
    }

    /// Stops the broker with SIGTERM (a controlled shutdown) and waits until it has exited.
    pub fn down(&self) {
        self.script_ok("down");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let out = self.script("down");
        if !out.status.success() {
            eprintln!(
                "could not stop the broker on {}: {}",
                self.bootstrap(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An identity provider for tests: an EC P-256 key made at run time, its JWKS in a file, and
/// the `[auth.jwt]` section that trusts it (append `config` to a service's config).
pub struct TestIdp {
    pem: Vec<u8>,
    pub config: String,
    _dir: tempfile::TempDir,
}

impl TestIdp {
    pub const ISSUER: &'static str = "https://idp.test/realms/kafka";

    pub fn new() -> TestIdp {
        use base64::Engine;
        use openssl::bn::{BigNum, BigNumContext};
        use openssl::ec::{EcGroup, EcKey};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("P-256");
        let key = EcKey::generate(&group).expect("ec key");
        let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
        let mut ctx = BigNumContext::new().expect("ctx");
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .expect("coordinates");
        let pem = openssl::pkey::PKey::from_ec_key(key)
            .expect("pkey")
            .private_key_to_pem_pkcs8()
            .expect("pkcs8");
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "test",
            "x": b64(&x.to_vec_padded(32).expect("x")),
            "y": b64(&y.to_vec_padded(32).expect("y")),
        }]});
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write jwks");
        let config = format!(
            "\n[auth.jwt]\njwks_file = \"{}\"\nissuer = \"{}\"\naudience = \"kafflow\"\n",
            path.display(),
            TestIdp::ISSUER
        );
        TestIdp {
            pem,
            config,
            _dir: dir,
        }
    }

    /// A JWT for `name` with `roles`, signed by this IdP, that expires `exp_in_s` seconds from
    /// now (negative: already expired).
    pub fn token(&self, name: &str, roles: &[&str], exp_in_s: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": TestIdp::ISSUER, "aud": "kafflow", "sub": name, "roles": roles,
            "iat": now, "exp": now + exp_in_s,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&self.pem).expect("encoding key");
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    }
}

impl Service {
    /// Issues a token named `name` with `roles` as carol (admin); returns (id, secret).
    pub fn issue_token(&self, name: &str, roles: &[&str]) -> (String, String) {
        let (status, issued) = self.post(
            "carol",
            "/api/v1/tokens",
            &json!({"name": name, "roles": roles}),
        );
        assert_eq!(status, 201, "POST /api/v1/tokens: {issued}");
        (
            issued["id"].as_str().expect("id").to_string(),
            issued["token"].as_str().expect("token").to_string(),
        )
    }

    /// A token that was issued (with `roles`) and then revoked: refused with `token_revoked`.
    pub fn revoked_token(&self, name: &str, roles: &[&str]) -> String {
        let (id, secret) = self.issue_token(name, roles);
        let (status, body) = self.send(
            "DELETE",
            &format!("/api/v1/tokens/{id}"),
            Some(self.token("carol")),
            None,
        );
        assert_eq!(status, 200, "DELETE /api/v1/tokens/{id}: {body}");
        secret
    }
}
