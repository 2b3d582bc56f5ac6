//! Ingest benchmark (`make bench`): records/s of 1,000,000 records of 100 bytes into an active
//! topic through (a) the TCP listener, (b) HTTP batches of 1,000 and (c) a raw rdkafka producer
//! with the publisher's settings, each as a ratio to (c); and the time from the approve call
//! to the last of 100,000 held records being acknowledged by Kafka.
//!
//! Each codec of `KAFFLOW_BENCH_COMPRESSION` (default `none,lz4`) is measured on both sides:
//! KafFlow's publisher and the baseline get the same `[publisher] compression` (and
//! `linger_ms` from `KAFFLOW_BENCH_LINGER_MS`, when set), through `kafka::publisher_config`.
//!
//! Runs the release binary against the local broker (`make kafka-up`). `KAFFLOW_BENCH_RECORDS`
//! and `KAFFLOW_BENCH_HELD` shrink the runs for a quick look.

#[path = "common/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader as StdBufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafflow::config::{KafkaConfig, PublisherConfig};
use kafflow::identity::token_sha256;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

const PRODUCER_TOKEN: &str = "bench-producer-token";
const ADMIN_TOKEN: &str = "bench-admin-token";
const VALUE_BYTES: usize = 100;
const HTTP_BATCH: usize = 1000;
const HTTP_IN_FLIGHT: usize = 4;

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

struct Service {
    child: Child,
    http: String,
    ingest: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[publisher]` section of a codec (and `KAFFLOW_BENCH_LINGER_MS`, when set), for
/// KafFlow's publisher and the baseline alike.
fn publisher_section(codec: &str) -> String {
    let mut section = format!("[publisher]\ncompression = \"{codec}\"\n");
    if let Ok(linger) = std::env::var("KAFFLOW_BENCH_LINGER_MS") {
        section.push_str(&format!("linger_ms = {linger}\n"));
    }
    section
}

fn start_service(codec: &str) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n{}[policy]\nmax_partitions = 12\n[spool]\nmax_records_per_topic = 2000000\n[watcher]\nreconcile_interval_ms = 3600000\n\
         [[principals]]\nname = \"producer\"\nroles = [\"producer\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nname = \"admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
        bootstrap(),
        publisher_section(codec),
        token_sha256(PRODUCER_TOKEN),
        token_sha256(ADMIN_TOKEN)
    );
    let path = dir.path().join("kafflow.toml");
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
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kafflow");
    let mut lines = StdBufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut http, mut ingest) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(addr) = line.strip_prefix("ingest on tcp://") {
            ingest = addr.to_string();
        }
        if let Some(url) = line.strip_prefix("listening on ") {
            http = url.to_string();
            break;
        }
    }
    assert!(!http.is_empty(), "kafflow did not start");
    Service {
        child,
        http,
        ingest,
        _dir: dir,
    }
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.expect("request");
    reply.json().await.expect("json reply")
}

/// Files and (unless `approve` is false) approves a topic; returns the request id.
async fn request_topic(
    client: &reqwest::Client,
    service: &Service,
    topic: &str,
    approve: bool,
) -> String {
    let request = call(
        client,
        reqwest::Method::POST,
        format!("{}/api/v1/topic-requests", service.http),
        PRODUCER_TOKEN,
        Some(json!({ "topic": topic, "partitions": 3, "reason": "benchmark" })),
    )
    .await;
    let id = request["id"].as_str().expect("request id").to_string();
    if approve {
        approve_and_wait(client, service, &id, topic).await;
    }
    id
}

async fn approve(client: &reqwest::Client, service: &Service, id: &str) {
    call(
        client,
        reqwest::Method::POST,
        format!("{}/api/v1/topic-requests/{id}/approve", service.http),
        ADMIN_TOKEN,
        None,
    )
    .await;
}

async fn approve_and_wait(client: &reqwest::Client, service: &Service, id: &str, topic: &str) {
    approve(client, service, id).await;
    loop {
        let t = topic_view(client, service, topic).await;
        if t["status"] == "active" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn topic_view(client: &reqwest::Client, service: &Service, topic: &str) -> Value {
    call(
        client,
        reqwest::Method::GET,
        format!("{}/api/v1/topics/{topic}", service.http),
        ADMIN_TOKEN,
        None,
    )
    .await
}

fn value(n: u64) -> String {
    let mut v = format!("{n:010}");
    while v.len() < VALUE_BYTES {
        v.push('x');
    }
    v
}

/// (a) The TCP listener: one connection, records streamed, wait for the last `OK`.
async fn tcp(service: &Service, topic: &str, records: u64) -> f64 {
    let stream = TcpStream::connect(&service.ingest).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, write) = stream.into_split();
    let mut replies = BufReader::new(read).lines();
    let mut out = BufWriter::with_capacity(1 << 20, write);
    out.write_all(format!("AUTH {PRODUCER_TOKEN}\n").as_bytes())
        .await
        .expect("auth");
    out.flush().await.expect("flush");
    assert_eq!(
        replies.next_line().await.expect("reply").as_deref(),
        Some("OK 0")
    );
    let started = Instant::now();
    let topic = topic.to_string();
    let writer = tokio::spawn(async move {
        for n in 0..records {
            let line = format!("{{\"topic\":\"{topic}\",\"value\":\"{}\"}}\n", value(n));
            out.write_all(line.as_bytes()).await.expect("write");
        }
        out.flush().await.expect("flush");
        out
    });
    let target = format!("OK {records}");
    while let Some(line) = replies.next_line().await.expect("reply") {
        assert!(!line.starts_with("ERR"), "refused: {line}");
        if line == target {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(writer.await);
    records as f64 / elapsed
}

/// (b) HTTP batches of 1,000 records, a few calls in flight.
async fn http(service: &Service, topic: &str, records: u64) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/topics/{topic}/records", service.http);
    let batches = records / HTTP_BATCH as u64;
    // The bodies are made before the clock starts: the baseline builds no JSON either.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..batches)
            .map(|batch| {
                let body: Vec<Value> = (0..HTTP_BATCH as u64)
                    .map(|i| json!({ "value": value(batch * HTTP_BATCH as u64 + i) }))
                    .collect();
                bytes::Bytes::from(serde_json::to_vec(&body).expect("json"))
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..HTTP_IN_FLIGHT)
        .map(|_| {
            let (client, url, next, bodies) =
                (client.clone(), url.clone(), next.clone(), bodies.clone());
            tokio::spawn(async move {
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch >= batches {
                        return;
                    }
                    let reply = client
                        .post(&url)
                        .bearer_auth(PRODUCER_TOKEN)
                        .header("content-type", "application/json")
                        .body(bodies[batch as usize].clone())
                        .send()
                        .await
                        .expect("post");
                    assert_eq!(reply.status().as_u16(), 202, "ingest refused");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    (batches * HTTP_BATCH as u64) as f64 / started.elapsed().as_secs_f64()
}

struct Counting(Arc<AtomicU64>, Arc<AtomicU64>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.1.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// (c) The baseline: rdkafka alone, with the publisher's settings, every record acknowledged.
fn raw(topic: &str, records: u64, codec: &str) -> f64 {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap(),
        properties: BTreeMap::new(),
    };
    #[derive(serde::Deserialize)]
    struct Section {
        publisher: PublisherConfig,
    }
    let section: Section = toml::from_str(&publisher_section(codec)).expect("publisher section");
    let publisher = PublisherConfig {
        delivery_timeout_ms: 30_000,
        ..section.publisher
    };
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> = kafflow::kafka::publisher_config(&kafka, &publisher)
        .create_with_context(Counting(acked.clone(), failed.clone()))
        .expect("producer");
    let started = Instant::now();
    for n in 0..records {
        let v = value(n);
        let mut record = BaseRecord::<(), str>::to(topic).payload(v.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }
    while acked.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < records {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "raw producer lost records"
    );
    let _ = producer.flush(Duration::from_secs(10));
    records as f64 / elapsed
}

/// Time from the approve call until Kafka has acknowledged the last of `held` held records.
async fn drain(service: &Service, topic: &str, held: u64) -> f64 {
    let client = reqwest::Client::new();
    let id = request_topic(&client, service, topic, false).await;
    tcp(service, topic, held).await;
    let started = Instant::now();
    approve(&client, service, &id).await;
    loop {
        let t = topic_view(&client, service, topic).await;
        if t["held"] == 0 && t["published"].as_u64() >= Some(held) {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let records = count("KAFFLOW_BENCH_RECORDS", 1_000_000);
    let held = count("KAFFLOW_BENCH_HELD", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `KAFFLOW_BENCH_COMPRESSION`: the codecs to compare, each on both sides (KafFlow's
    // publisher and the baseline) through `[publisher] compression`.
    let codecs = std::env::var("KAFFLOW_BENCH_COMPRESSION").unwrap_or_else(|_| "none,lz4".into());
    let mb = |rate: f64| rate * VALUE_BYTES as f64 / 1e6;
    println!("ingest benchmark: {records} records of {VALUE_BYTES} bytes, 3 partitions, acks=all, idempotent");
    for codec in codecs.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let service = start_service(codec);
        let run = format!("{:x}-{codec}", std::process::id());
        let client = reqwest::Client::new();
        let (ta, tb, tc, td) = (
            format!("bench-tcp-{run}"),
            format!("bench-http-{run}"),
            format!("bench-raw-{run}"),
            format!("bench-held-{run}"),
        );
        runtime.block_on(async {
            for t in [&ta, &tb, &tc] {
                request_topic(&client, &service, t, true).await;
            }
        });
        println!("compression.type={codec}");
        let c = raw(&tc, records, codec);
        println!(
            "(c) raw rdkafka producer : {c:>10.0} records/s  {:>6.1} MB/s  1.00",
            mb(c)
        );
        let a = runtime.block_on(tcp(&service, &ta, records));
        println!(
            "(a) TCP listener         : {a:>10.0} records/s  {:>6.1} MB/s  {:.2} of (c)",
            mb(a),
            a / c
        );
        let b = runtime.block_on(http(&service, &tb, records));
        println!(
            "(b) HTTP batches of {HTTP_BATCH}  : {b:>10.0} records/s  {:>6.1} MB/s  {:.2} of (c)",
            mb(b),
            b / c
        );
        let bench = format!("ingest ({codec})");
        report::row(
            &bench,
            "raw rdkafka producer",
            c,
            "records/s",
            None,
            report::Target::None,
        );
        report::row(
            &bench,
            "TCP listener",
            a,
            "records/s",
            Some(c),
            report::Target::RatioAtLeast(1.0),
        );
        report::row(
            &bench,
            "HTTP batches of 1,000",
            b,
            "records/s",
            Some(c),
            report::Target::RatioAtLeast(0.8),
        );
        let d = runtime.block_on(drain(&service, &td, held));
        report::row(
            &bench,
            "held drain",
            held as f64 / d,
            "records/s",
            None,
            report::Target::None,
        );
        println!(
            "held drain: {held} held records acknowledged by Kafka {d:.2} s after the approve call ({:.0} records/s)",
            held as f64 / d
        );
    }
}
