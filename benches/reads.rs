//! Reads benchmark (`make bench`): what a read costs as the log grows. For logs of 10k, 100k
//! and 1M events (`common::log`: 10,000 active topics at 1M, the rest decided requests), it
//! starts the release binary on the log and measures:
//!
//! - time to ready (the `listening on` line) and resident memory once started, idle;
//! - `GET /topics/{name}` p50 and p99 (one client, keep-alive, random active topics);
//! - the first page of `GET /topics` and of `GET /topic-requests?status=pending`;
//! - `GET /audit?topic=…` (one topic's events: the curve should stay flat);
//! - resident memory under ingest: a new topic is requested and approved, then 1,000,000 records
//!   of 100 bytes are sent to it as HTTP batches of 1,000 (4 calls in flight) while the
//!   resident set is sampled every 50 ms; its peak is the figure.
//!
//! `KAFFLOW_BENCH_READS_SIZES` (comma-separated event counts) and `KAFFLOW_BENCH_READS_CALLS`
//! shrink the run for a quick look. Every figure is also a row of `make bench`'s table.

#[path = "common/log.rs"]
mod log;
#[path = "common/report.rs"]
mod report;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafflow::identity::token_sha256;

const ADMIN_TOKEN: &str = "bench-admin-token";
const PRODUCER_TOKEN: &str = "bench-producer-token";
/// Records sent while the resident set is sampled under ingest.
const INGEST_RECORDS: usize = 1_000_000;
const INGEST_BATCH: usize = 1_000;
const INGEST_IN_FLIGHT: usize = 4;
/// Active topics at 1M events; smaller logs get one per 100 events.
const ACTIVE_AT_1M: usize = 10_000;

struct Service {
    child: Child,
    http: String,
    ready_after: Duration,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }
}

fn start(dir: &std::path::Path) -> Service {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[watcher]\nreconcile_interval_ms = 3600000\n\
         [[principals]]\nname = \"admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nname = \"producer\"\nroles = [\"producer\"]\ntoken_sha256 = \"{}\"\n",
        token_sha256(ADMIN_TOKEN),
        token_sha256(PRODUCER_TOKEN)
    );
    let path = dir.join("kafflow.toml");
    std::fs::write(&path, config).expect("config");
    let started = Instant::now();
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
    let mut http = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read stdout");
        if let Some(url) = line.strip_prefix("listening on ") {
            http = url.to_string();
            break;
        }
    }
    assert!(!http.is_empty(), "kafflow did not start");
    Service {
        child,
        http,
        ready_after: started.elapsed(),
    }
}

/// p50 and p99 in ms of `calls` GETs of the paths `path(i)` gives.
fn latency(
    client: &reqwest::blocking::Client,
    base: &str,
    calls: usize,
    path: impl Fn(usize) -> String,
) -> (f64, f64) {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let url = format!("{base}/api/v1{}", path(i));
        let started = Instant::now();
        let reply = client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .expect("call");
        let status = reply.status();
        let body = reply.bytes().expect("body");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(status.is_success(), "{url}: {status} {body:?}");
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.50), at(0.99))
}

/// Requests and approves a topic of its own, then sends it `INGEST_RECORDS` records over HTTP
/// while sampling the service's resident set; returns the peak in MB.
fn peak_rss_under_ingest(service: &Service, client: &reqwest::blocking::Client) -> f64 {
    let base = service.http.trim_end_matches('/');
    let topic = format!("bench-reads-ingest-{:x}", std::process::id());
    let filed: serde_json::Value = client
        .post(format!("{base}/api/v1/topic-requests"))
        .bearer_auth(PRODUCER_TOKEN)
        .json(&serde_json::json!({ "topic": topic, "partitions": 3, "reason": "benchmark" }))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("request a topic");
    let id = filed["id"].as_str().expect("request id");
    client
        .post(format!("{base}/api/v1/topic-requests/{id}/approve"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .and_then(|r| r.error_for_status())
        .expect("approve");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view: serde_json::Value = client
            .get(format!("{base}/api/v1/topics/{topic}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .and_then(|r| r.json())
            .expect("topic view");
        if view["status"] == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} did not turn active: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let value = "x".repeat(100);
    let body = serde_json::to_vec(&vec![serde_json::json!({ "value": value }); INGEST_BATCH])
        .expect("json");
    let url = format!("{base}/api/v1/topics/{topic}/records");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let sending = std::sync::atomic::AtomicBool::new(true);
    let mut peak: f64 = service.rss_mb();
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..INGEST_IN_FLIGHT)
            .map(|_| {
                scope.spawn(|| {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        < INGEST_RECORDS / INGEST_BATCH
                    {
                        let reply = client
                            .post(&url)
                            .bearer_auth(PRODUCER_TOKEN)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .expect("post records");
                        assert_eq!(reply.status().as_u16(), 202, "ingest refused");
                    }
                })
            })
            .collect();
        scope.spawn(|| {
            for sender in senders {
                let _ = sender.join();
            }
            sending.store(false, std::sync::atomic::Ordering::Relaxed);
        });
        while sending.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(service.rss_mb());
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    peak.max(service.rss_mb())
}

struct Row {
    events: u64,
    active: usize,
    ready_s: f64,
    rss_mb: f64,
    rss_ingest_mb: f64,
    topic: (f64, f64),
    topics_page: (f64, f64),
    pending_page: (f64, f64),
    audit_topic: (f64, f64),
}

fn measure(events: u64, calls: usize) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = ((events / 100) as usize).min(ACTIVE_AT_1M);
    let written = Instant::now();
    let filled = log::fill(&dir.path().join("data"), events, active);
    eprintln!(
        "reads: {} events ({} active topics, {} rejected requests) written in {:.1} s",
        filled.events,
        filled.active.len(),
        filled.closed,
        written.elapsed().as_secs_f64()
    );
    let service = start(dir.path());
    // Let start-up work (routes to the publisher, the first probes) settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let rss_mb = service.rss_mb();
    let client = reqwest::blocking::Client::new();
    let base = service.http.trim_end_matches('/');
    // A cheap spread over the active topics, the same every run.
    let pick = |i: usize| &filled.active[(i * 7919) % filled.active.len()];
    latency(&client, base, 50, |i| format!("/topics/{}", pick(i)));
    let topic = latency(&client, base, calls, |i| format!("/topics/{}", pick(i)));
    let topics_page = latency(&client, base, calls / 10, |_| "/topics".into());
    let pending_page = latency(&client, base, calls / 10, |_| {
        "/topic-requests?status=rejected".into()
    });
    let audit_topic = latency(&client, base, calls / 2, |i| {
        format!("/audit?topic={}", pick(i))
    });
    let rss_ingest_mb = peak_rss_under_ingest(&service, &client);
    Row {
        events: filled.events,
        active,
        ready_s: service.ready_after.as_secs_f64(),
        rss_mb,
        rss_ingest_mb,
        topic,
        topics_page,
        pending_page,
        audit_topic,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let sizes: Vec<u64> = std::env::var("KAFFLOW_BENCH_READS_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let calls: usize = std::env::var("KAFFLOW_BENCH_READS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rows: Vec<Row> = sizes.iter().map(|&n| measure(n, calls)).collect();
    println!();
    println!("reads: p50 / p99 in ms, one client, keep-alive; RSS after start, idle, and its peak under ingest");
    println!(
        "| events | active topics | ready s | RSS MB | RSS under ingest MB | GET /topics/{{name}} | GET /topics (page 1) | GET /topic-requests?status= (page 1) | GET /audit?topic= |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
            r.events,
            r.active,
            r.ready_s,
            r.rss_mb,
            r.rss_ingest_mb,
            r.topic.0,
            r.topic.1,
            r.topics_page.0,
            r.topics_page.1,
            r.pending_page.0,
            r.pending_page.1,
            r.audit_topic.0,
            r.audit_topic.1,
        );
    }
    for r in &rows {
        let at = |what: &str| format!("{what} at {} events", r.events);
        report::row(
            "reads",
            &at("GET /topics/{name} p99"),
            r.topic.1,
            "ms",
            None,
            report::Target::AtMost(2.0),
        );
        report::row(
            "reads",
            &at("GET /topics first page p99"),
            r.topics_page.1,
            "ms",
            None,
            report::Target::None,
        );
        report::row(
            "reads",
            &at("GET /topic-requests?status=rejected first page p99"),
            r.pending_page.1,
            "ms",
            None,
            report::Target::None,
        );
        report::row(
            "reads",
            &at("GET /audit?topic= p50"),
            r.audit_topic.0,
            "ms",
            None,
            report::Target::None,
        );
        report::row(
            "reads",
            &at("GET /audit?topic= p99"),
            r.audit_topic.1,
            "ms",
            None,
            report::Target::None,
        );
        report::row(
            "reads",
            &at("time to ready"),
            r.ready_s,
            "s",
            None,
            report::Target::None,
        );
        let memory_target = || {
            if r.events >= 1_000_000 {
                report::Target::AtMost(150.0)
            } else {
                report::Target::None
            }
        };
        report::row(
            "reads",
            &format!(
                "RSS after start, idle, at {} events and {} active topics",
                r.events, r.active
            ),
            r.rss_mb,
            "MB",
            None,
            memory_target(),
        );
        report::row(
            "reads",
            &format!(
                "peak RSS under ingest (HTTP, {} records), at {} events and {} active topics",
                INGEST_RECORDS, r.events, r.active
            ),
            r.rss_ingest_mb,
            "MB",
            None,
            memory_target(),
        );
    }
}
