//! Event log benchmark (`make bench`), `synchronous=full` throughout:
//!
//! 1. appends: events/s through the store (`Writer::append`, group commit) with 1, 16 and 256
//!    concurrent writers, each waiting for its event to be durable before sending the next;
//!    against a bare rusqlite loop that writes the same rows (same columns, same hash chain,
//!    checked with `verify` afterwards) in one transaction per batch of as many rows as there
//!    are writers, which is the best group commit can do. Target: 0.5 at 256 writers.
//! 2. the approve round trip: `POST /api/v1/topic-requests/{id}/approve` sent at 200/s (open
//!    loop: latency counts from when the request was due, so a stall is not hidden), to its 200.
//!    The 200 is answered once `request_approved` is committed, before the provisioner talks to
//!    Kafka; the service is pointed at a closed port so that no topic creation runs beside it.
//!    Target: p99 under 5 ms.
//!
//! `KAFFLOW_BENCH_LOG_SECS` (default 5) sets how many one-second slices each side gets (they
//! alternate, store then bare loop), `KAFFLOW_BENCH_APPROVALS`
//! (default 2,000) the number of approvals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::SecondsFormat;
use kafflow::events::{
    ChainHead, Durability, EventKind, NewEvent, Store, TopicSpec, Visibility, EVENT_VERSION,
};
use kafflow::identity::token_sha256;
use rusqlite::params;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[path = "common/report.rs"]
mod report;

const WRITERS: [usize; 3] = [1, 16, 256];
const APPROVALS_PER_SECOND: u64 = 200;
const CLIENT_TOKEN: &str = "bench-client-token";
const ADMIN_TOKEN: &str = "bench-admin-token";

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A typical event: a topic request with its spec and reason.
fn event(n: u64) -> NewEvent {
    NewEvent::now(
        "bench",
        Some(&format!("bench.topic-{n}")),
        Some(uuid::Uuid::now_v7()),
        EventKind::TopicRequested {
            spec: TopicSpec {
                partitions: 3,
                replication_factor: 1,
                config: Default::default(),
            },
            reason: Some("the event log benchmark".into()),
            visibility: Visibility::Open,
        },
    )
}

/// Events/s through the store with `writers` concurrent appenders for `seconds`.
fn through_store(writers: usize, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Durability::Full).expect("open store");
    let head = store.replay(|_| {}).expect("replay");
    let (writer, thread) = store.into_writer(head).expect("writer");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (writer, done, stop) = (writer.clone(), done.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = w as u64 * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    writer
                        .append(vec![event(n)])
                        .await
                        .expect("writer")
                        .expect("append");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("writer task");
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(writer);
    thread.join();
    let head = kafflow::events::verify(dir.path()).expect("the store's chain verifies");
    assert_eq!(head.seq, done.load(Ordering::Relaxed));
    head.seq as f64 / elapsed
}

/// One row as the store writes it: the columns and the hash over them.
struct Row {
    id: String,
    at: String,
    kind: String,
    data: String,
    request_id: Option<String>,
    hash: String,
}

/// The row of `event` at `seq` after `prev_hash`, hashed as the store hashes it.
fn row(event: &NewEvent, seq: u64, prev_hash: &str) -> Row {
    let mut tagged = serde_json::to_value(&event.kind).expect("encode event");
    let data = tagged
        .get_mut("data")
        .map(Value::take)
        .unwrap_or_else(|| json!({}))
        .to_string();
    let kind = event.kind.name().to_string();
    let id = event.id.to_string();
    let at = event.at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let request_id = event.request_id.map(|id| id.to_string());
    // The hash input of the rows the store writes (version 3 on; "Hash chain" in
    // docs/architecture.md): each text with its 4-byte big-endian length in front, `seq` and
    // `version` as 8-byte big-endian integers, a tag byte before each nullable column.
    let mut input = Vec::with_capacity(256 + data.len());
    let text = |input: &mut Vec<u8>, value: &str| {
        input.extend_from_slice(&(value.len() as u32).to_be_bytes());
        input.extend_from_slice(value.as_bytes());
    };
    let optional = |input: &mut Vec<u8>, value: Option<&str>| match value {
        Some(value) => {
            input.push(1);
            text(input, value);
        }
        None => input.push(0),
    };
    text(&mut input, prev_hash);
    input.extend_from_slice(&seq.to_be_bytes());
    text(&mut input, &id);
    text(&mut input, &at);
    text(&mut input, &kind);
    input.extend_from_slice(&i64::from(EVENT_VERSION).to_be_bytes());
    text(&mut input, &event.actor);
    optional(&mut input, event.topic.as_deref());
    optional(&mut input, request_id.as_deref());
    text(&mut input, &data);
    let hash = hex::encode(Sha256::digest(&input));
    Row {
        id,
        at,
        kind,
        data,
        request_id,
        hash,
    }
}

/// Events/s of a bare rusqlite loop: batches of `batch` rows, one transaction each.
fn bare_rusqlite(batch: usize, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    // The store creates the schema; the loop then writes on a connection of its own, opened
    // with the same settings (WAL, synchronous=full).
    drop(Store::open(dir.path(), Durability::Full).expect("open store"));
    let mut conn = kafflow::sqlite::open(&dir.path().join("kafflow.db"), Durability::Full)
        .expect("open sqlite");
    let mut head = ChainHead::default();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    while Instant::now() < deadline {
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, id, at, kind, version, actor, topic, request_id, data, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .expect("prepare");
            for _ in 0..batch {
                n += 1;
                let seq = head.seq + 1;
                let event = event(n);
                let row = row(&event, seq, &head.hash);
                insert
                    .execute(params![
                        seq as i64,
                        row.id,
                        row.at,
                        row.kind,
                        EVENT_VERSION,
                        event.actor,
                        event.topic,
                        row.request_id,
                        row.data,
                        head.hash,
                        row.hash,
                    ])
                    .expect("insert");
                head = ChainHead {
                    seq,
                    hash: row.hash,
                };
            }
        }
        tx.commit().expect("commit");
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(conn);
    let verified = kafflow::events::verify(dir.path()).expect("the bare loop's chain verifies");
    assert_eq!(verified, head, "the bare loop wrote the store's chain");
    head.seq as f64 / elapsed
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service, with Kafka on a port where nothing listens: approvals are committed and
/// answered, and the provisioner's attempts fail at once on a refused connection.
fn start_kafflow(dir: &Path) -> (Running, String) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{closed}\"\n\
         [watcher]\nreconcile_interval_ms = 3600000\n\
         [[principals]]\nname = \"bench\"\nroles = [\"producer\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nname = \"admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
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
        // The provisioner's retries would fill the output with warnings.
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

/// p50 and p99 of the approve round trip, in ms, at `APPROVALS_PER_SECOND`.
async fn approvals(http: &str, total: u64) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    // File the requests first, 16 at a time.
    let mut ids = Vec::new();
    let run = std::process::id();
    for chunk in (0..total).collect::<Vec<_>>().chunks(16) {
        let filed = chunk.iter().map(|n| {
            let client = client.clone();
            let url = format!("{http}/api/v1/topic-requests");
            async move {
                let reply = client
                    .post(url)
                    .bearer_auth(CLIENT_TOKEN)
                    .json(&json!({ "topic": format!("bench.approve-{run:x}-{n}"), "partitions": 1, "reason": "benchmark" }))
                    .send()
                    .await
                    .expect("file a request");
                assert!(reply.status().is_success(), "filing: {}", reply.status());
                let body: Value = reply.json().await.expect("json");
                body["id"].as_str().expect("request id").to_string()
            }
        });
        ids.extend(futures_util::future::join_all(filed).await);
    }
    let every = Duration::from_micros(1_000_000 / APPROVALS_PER_SECOND);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let due = start + every * i as u32;
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        let url = format!("{http}/api/v1/topic-requests/{id}/approve");
        tasks.push(tokio::spawn(async move {
            let reply = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("approve");
            assert_eq!(reply.status(), reqwest::StatusCode::OK, "approve");
            due.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.expect("approve task").as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let seconds = count("KAFFLOW_BENCH_LOG_SECS", 5);
    let total_approvals = count("KAFFLOW_BENCH_APPROVALS", 2_000);
    println!(
        "event log benchmark: synchronous=full, {seconds} alternating slices of 1 s per side; \
         the bare loop writes batches of as many rows as there are writers"
    );
    let mut rows = Vec::new();
    for writers in WRITERS {
        // Alternating one-second slices, so that a change in the disk's fsync latency (the
        // machine is shared) falls on both sides alike.
        let (mut store, mut bare) = (0.0, 0.0);
        for _ in 0..seconds {
            store += through_store(writers, 1) / seconds as f64;
            bare += bare_rusqlite(writers, 1) / seconds as f64;
        }
        println!(
            "{writers:>3} writers: store {store:>8.0} events/s, bare rusqlite {bare:>8.0} events/s, {:.2}",
            store / bare
        );
        rows.push((writers, store, bare));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (service, http) = start_kafflow(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (p50, p99) = runtime.block_on(approvals(&http, total_approvals));
    drop(service);
    println!(
        "approve round trip at {APPROVALS_PER_SECOND}/s ({total_approvals} approvals): p50 {p50:.2} ms, p99 {p99:.2} ms"
    );

    for (writers, store, bare) in &rows {
        report::row(
            "eventlog",
            &format!("appends, {writers} writers, synchronous=full (baseline: bare rusqlite)"),
            *store,
            "events/s",
            Some(*bare),
            if *writers == 256 {
                report::Target::RatioAtLeast(0.5)
            } else {
                report::Target::None
            },
        );
    }
    report::row(
        "eventlog",
        &format!("approve round trip at {APPROVALS_PER_SECOND}/s, p99"),
        p99,
        "ms",
        None,
        report::Target::AtMost(5.0),
    );
    println!("| figure | value | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for (writers, store, bare) in rows {
        let ratio = store / bare;
        let target = if writers == 256 { "≥ 0.5" } else { "" };
        let met = match writers {
            256 if ratio >= 0.5 => "met",
            256 => "not met",
            _ => "",
        };
        println!(
            "| appends, {writers} writers | {store:.0} events/s | bare rusqlite {bare:.0} events/s | {ratio:.2} | {target} | {met} |"
        );
    }
    println!(
        "| approve round trip at {APPROVALS_PER_SECOND}/s, p99 | {p99:.2} ms | 5 ms | {:.2} | < 5 ms | {} |",
        p99 / 5.0,
        if p99 < 5.0 { "met" } else { "not met" }
    );
}
