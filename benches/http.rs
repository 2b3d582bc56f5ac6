//! HTTP benchmark (`make bench`): the HTTP facade against nginx serving a static file on the
//! same machine, both loaded by `wrk` with 64 connections.
//!
//! 1. `GET /healthz` (no auth, no actor): the facade's own cost per request. Target: 0.8 of
//!    nginx.
//! 2. `GET /api/v1/topics/{name}` with a bearer token, for a requested (pending) topic:
//!    authentication, a read of the registry and of the publisher's counts, the rendering of
//!    the answer. Target: 0.5 of nginx.
//!
//! nginx and wrk come from Debian; the benchmark installs them with apt-get when they are
//! missing. nginx runs as the current user on a free port with a config in a temporary
//! directory and one worker per core, serving a file with the body of `/healthz`. Runs the
//! release binary; the broker is not needed.
//! `KAFFLOW_BENCH_HTTP_SECS` (default 10) sets the time per figure (in slices of 2 s that take
//! turns), `KAFFLOW_BENCH_WORKERS`
//! the service's `[server] worker_threads` (default: one per core).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kafflow::identity::token_sha256;
use serde_json::{json, Value};

#[path = "common/report.rs"]
mod report;

const CLIENT: &str = "bench";
const CLIENT_TOKEN: &str = "bench-client-token";
const ADMIN_TOKEN: &str = "bench-admin-token";
const CONNECTIONS: u32 = 64;
/// What KafFlow answers to `/healthz`; nginx serves the same bytes.
const HEALTHZ_BODY: &str = r#"{"status":"up"}"#;

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers (a SIGKILL would leave them
        // running, orphaned, holding the port); KafFlow shuts down as it does for an operator.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's packages for the programs that are missing.
fn ensure_installed(programs: &[(&str, &str)]) {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    println!("installing {} with apt-get", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        assert!(install(), "apt-get could not install {missing:?}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx in the foreground, on a free port, serving `healthz` from `dir`.
fn start_nginx(dir: &Path) -> (Running, String) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    // nginx's workers drop to an unprivileged user when it is started as root: they must be
    // able to enter the (private) temporary directory.
    use std::os::unix::fs::PermissionsExt;
    for d in [dir, www.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(www.join("healthz"), HEALTHZ_BODY).expect("static file");
    let port = free_port();
    let d = dir.display();
    // The usual tuning of a static server: no access log, sendfile, keep-alive for the whole
    // run; one worker per core, as KafFlow has.
    let config = format!(
        "daemon off;\nmaster_process on;\nworker_processes auto;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
           keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
           client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
           fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           default_type application/json;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n  }}\n}}\n"
    );
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("nginx config");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let nginx = Running(child);
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_until_served(&url);
    (nginx, url)
}

fn wait_until_served(url: &str) {
    let client = reqwest::blocking::Client::new();
    for _ in 0..200 {
        if client
            .get(url)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{url} is not served");
}

fn start_kafflow(dir: &Path) -> (Running, String) {
    let workers = match std::env::var("KAFFLOW_BENCH_WORKERS") {
        Ok(n) => format!("worker_threads = {n}\n"),
        Err(_) => String::new(),
    };
    let config = format!(
        "[server]\n{workers}\
         [kafka]\nbootstrap_servers = \"{}\"\n\
         [watcher]\nreconcile_interval_ms = 3600000\n\
         [[principals]]\nname = \"{CLIENT}\"\nroles = [\"producer\", \"consumer\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nname = \"admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
        bootstrap(),
        token_sha256(CLIENT_TOKEN),
        token_sha256(ADMIN_TOKEN)
    );
    let path = dir.join("kafflow.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafflow"))
        .args(["serve", "--config"])
        .arg(&path)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ingest-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kafflow");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut http = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(url) = line.strip_prefix("listening on ") {
            http = url.to_string();
            break;
        }
    }
    assert!(!http.is_empty(), "kafflow did not start");
    std::thread::spawn(move || for _ in lines {});
    (Running(child), http)
}

fn call(method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> Value {
    let client = reqwest::blocking::Client::new();
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().expect("request").json().expect("json reply")
}

/// Files a request for a topic: `GET /topics/{name}` answers for it while it is pending, by
/// the same route (the registry's view and the publisher's counts), and the figure does not
/// depend on the broker.
fn file_request(http: &str, topic: &str) {
    let request = call(
        reqwest::Method::POST,
        format!("{http}/api/v1/topic-requests"),
        CLIENT_TOKEN,
        Some(json!({ "topic": topic, "partitions": 1, "reason": "benchmark" })),
    );
    assert!(request["id"].is_string(), "filing {topic}: {request}");
    let view = call(
        reqwest::Method::GET,
        format!("{http}/api/v1/topics/{topic}"),
        CLIENT_TOKEN,
        None,
    );
    assert_eq!(view["name"], topic, "{view}");
}

/// Requests per second that `wrk` measured; panics if any answer was not a 2xx, so that a
/// refusal is never counted as throughput.
fn wrk(url: &str, token: Option<&str>, seconds: u64) -> f64 {
    let mut command = Command::new("wrk");
    command
        .arg("-t2")
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx or 3xx responses"),
        "{url} answered errors under load:\n{text}"
    );
    assert!(
        !text.contains("Socket errors"),
        "{url}: socket errors under load:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

fn row(figure: &str, value: f64, baseline: f64, target: f64) {
    let ratio = value / baseline;
    println!(
        "| {figure} | {value:.0}/s | nginx {baseline:.0}/s | {ratio:.2} | ≥ {target:.1} | {} |",
        if ratio >= target { "met" } else { "not met" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let seconds = count("KAFFLOW_BENCH_HTTP_SECS", 10);
    ensure_installed(&[("nginx", "nginx-light"), ("wrk", "wrk")]);
    let nginx_dir = tempfile::tempdir().expect("tempdir");
    let kafflow_dir = tempfile::tempdir().expect("tempdir");
    let (nginx, nginx_url) = start_nginx(nginx_dir.path());
    let (kafflow, http) = start_kafflow(kafflow_dir.path());
    let topic = format!("bench-http-{:x}", std::process::id());
    file_request(&http, &topic);
    wait_until_served(&format!("{http}/healthz"));
    println!(
        "HTTP benchmark: wrk, 2 threads, {CONNECTIONS} connections, {seconds} s per figure in \
         slices of 2 s taken in turn; nginx serving a {}-byte static file",
        HEALTHZ_BODY.len()
    );

    // Warm both up, so neither pays for its first connections in the measured run.
    wrk(&nginx_url, None, 1);
    wrk(&format!("{http}/healthz"), None, 1);
    // Slices of 2 s, taking turns: the machine is shared, and a change in its load then falls
    // on every side alike instead of on whichever ran at the time.
    let topic_url = format!("{http}/api/v1/topics/{topic}");
    let slices = (seconds / 2).max(1);
    let (mut static_file, mut healthz, mut topic_read) = (0.0, 0.0, 0.0);
    for _ in 0..slices {
        static_file += wrk(&nginx_url, None, 2) / slices as f64;
        healthz += wrk(&format!("{http}/healthz"), None, 2) / slices as f64;
        topic_read += wrk(&topic_url, Some(CLIENT_TOKEN), 2) / slices as f64;
    }
    println!("| figure | value | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    row("`GET /healthz`, 64 connections", healthz, static_file, 0.8);
    row(
        "`GET /api/v1/topics/{name}` with a bearer token, 64 connections",
        topic_read,
        static_file,
        0.5,
    );
    report::row(
        "http",
        "GET /healthz, 64 connections (baseline: nginx, static file)",
        healthz,
        "requests/s",
        Some(static_file),
        report::Target::RatioAtLeast(0.8),
    );
    report::row(
        "http",
        "GET /api/v1/topics/{name}, bearer token, 64 connections (baseline: nginx, static file)",
        topic_read,
        "requests/s",
        Some(static_file),
        report::Target::RatioAtLeast(0.5),
    );
    drop(kafflow);
    drop(nginx);
}
