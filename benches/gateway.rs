//! Gateway benchmark (`make bench`): the Kafka-protocol gateway against the broker it fronts,
//! with the same rdkafka settings on both sides (`acks=all`, idempotent: the publisher's
//! `kafka::producer_config`), in one run:
//!
//! 1. produce: 1,000,000 records of 100 bytes through the gateway vs straight to the broker,
//!    in halves ordered direct, gateway, gateway, direct;
//! 2. fetch: a consumer reading those records through the gateway vs straight from the broker,
//!    in two rounds of the same order (eight reads in all: one read takes a second or two, so
//!    a single pause of the machine would otherwise decide the ratio);
//! 3. latency: records sent at 5,000/s (`linger.ms=0`), send → acknowledgement, p50 and p99
//!    through the gateway minus direct. One side sends at a time (at the full rate each, so the
//!    broker sees 5,000/s as the target says, not twice that), in slices ordered direct,
//!    gateway, gateway, direct, after two seconds of warm-up per producer; each side's
//!    percentiles are taken over all of its slices;
//! 4. 1,000 idle clients (authenticated, metadata fetched, then silent): the kafflow process's
//!    resident memory per connection.
//!
//! Runs the release binary against the local broker (`make kafka-up`). `KAFFLOW_BENCH_RECORDS`,
//! `KAFFLOW_BENCH_LATENCY_SECS` and `KAFFLOW_BENCH_CONNECTIONS` shrink the runs for a quick look.

#[path = "common/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader as StdBufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafflow::config::KafkaConfig;
use kafflow::identity::token_sha256;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client of every measurement: it produces, consumes and owns the topics.
const CLIENT: &str = "bench";
const CLIENT_TOKEN: &str = "bench-client-token";
const ADMIN_TOKEN: &str = "bench-admin-token";
const VALUE_BYTES: usize = 100;
const PARTITIONS: u32 = 3;
const LATENCY_RATE: u64 = 5_000;

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
    gateway: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// The kafflow process's resident set, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }
}

fn start_service() -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n[policy]\nmax_partitions = 12\n\
         [watcher]\nreconcile_interval_ms = 3600000\n\
         [gateway]\nlisten = \"127.0.0.1:0\"\n\
         [[principals]]\nname = \"{CLIENT}\"\nroles = [\"producer\", \"consumer\"]\ntoken_sha256 = \"{}\"\n\
         [[principals]]\nname = \"admin\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
        bootstrap(),
        token_sha256(CLIENT_TOKEN),
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
    let (mut http, mut gateway) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(addr) = line.strip_prefix("gateway on kafka://") {
            gateway = addr.to_string();
        }
        if let Some(url) = line.strip_prefix("listening on ") {
            http = url.to_string();
            break;
        }
    }
    assert!(!http.is_empty(), "kafflow did not start");
    assert!(!gateway.is_empty(), "kafflow printed no `gateway on` line");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Service {
        child,
        http,
        gateway,
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

/// Files (as the client) and approves (as the admin) a topic, and waits until it is active.
async fn provision(service: &Service, topic: &str) {
    let client = reqwest::Client::new();
    let request = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/topic-requests", service.http),
        CLIENT_TOKEN,
        Some(json!({ "topic": topic, "partitions": PARTITIONS, "reason": "benchmark" })),
    )
    .await;
    let id = request["id"].as_str().expect("request id").to_string();
    call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/topic-requests/{id}/approve", service.http),
        ADMIN_TOKEN,
        None,
    )
    .await;
    loop {
        let view = call(
            &client,
            reqwest::Method::GET,
            format!("{}/api/v1/topics/{topic}", service.http),
            ADMIN_TOKEN,
            None,
        )
        .await;
        if view["status"] == "active" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn value(n: u64) -> String {
    let mut v = format!("{n:010}");
    while v.len() < VALUE_BYTES {
        v.push('x');
    }
    v
}

/// Where a client connects: straight to the broker, or through the gateway with SASL/PLAIN.
#[derive(Clone, Copy)]
enum Via<'a> {
    Direct,
    Gateway(&'a Service),
}

impl Via<'_> {
    fn kafka(&self) -> KafkaConfig {
        match self {
            Via::Direct => KafkaConfig {
                bootstrap_servers: bootstrap(),
                properties: BTreeMap::new(),
            },
            Via::Gateway(service) => KafkaConfig {
                bootstrap_servers: service.gateway.clone(),
                properties: BTreeMap::from([
                    ("security.protocol".into(), "SASL_PLAINTEXT".into()),
                    ("sasl.mechanisms".into(), "PLAIN".into()),
                    ("sasl.username".into(), CLIENT.into()),
                    ("sasl.password".into(), CLIENT_TOKEN.into()),
                ]),
            },
        }
    }
}

// ------------------------------------------------------------------ produce

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

/// Records/s of `records` sent as fast as the producer takes them, until every one is acked.
fn produce(via: Via<'_>, topic: &str, records: u64) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> =
        kafflow::kafka::producer_config(&via.kafka(), 60_000)
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
        "the producer lost records"
    );
    let _ = producer.flush(Duration::from_secs(10));
    records as f64 / elapsed
}

/// The rate of equal runs together: records over the time they all took.
fn harmonic_all(rates: &[f64]) -> f64 {
    rates.len() as f64 / rates.iter().map(|r| 1.0 / r).sum::<f64>()
}

/// The rate of two equal runs together: records over the time both took.
fn harmonic(a: f64, b: f64) -> f64 {
    2.0 / (1.0 / a + 1.0 / b)
}

// ------------------------------------------------------------------ fetch

/// Records/s of a consumer reading `records` from the start of every partition of `topic`.
fn fetch(via: Via<'_>, topic: &str, records: u64, run: &str) -> f64 {
    let mut config: ClientConfig = kafflow::kafka::client_config(&via.kafka());
    let consumer: BaseConsumer = config
        .set("group.id", format!("{CLIENT}.fetch-{run}"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&list).expect("assign");
    let started = Instant::now();
    let mut read = 0u64;
    let deadline = started + Duration::from_secs(600);
    while read < records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => panic!("fetch of {topic}: {e}"),
            None => assert!(Instant::now() < deadline, "fetch stalled at {read}"),
        }
    }
    records as f64 / started.elapsed().as_secs_f64()
}

// ------------------------------------------------------------------ latency

struct Timing(Arc<Mutex<Vec<u64>>>, Arc<AtomicU64>);

impl ClientContext for Timing {}

impl ProducerContext for Timing {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        let micros = sent.elapsed().as_micros() as u64;
        match result {
            Ok(_) => self.0.lock().expect("latencies").push(micros),
            Err(_) => {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A producer for the latency measurement, connected and warmed up: it knows the leaders, has
/// its idempotent producer id, and has sent two seconds at the rate (not counted: a freshly
/// started broker answers its first thousands of records slower than the rest).
struct Paced {
    producer: ThreadedProducer<Timing>,
    latencies: Arc<Mutex<Vec<u64>>>,
    failed: Arc<AtomicU64>,
    topic: String,
}

impl Paced {
    fn warm(via: Via<'_>, topic: &str) -> Paced {
        let mut kafka = via.kafka();
        kafka.properties.insert("linger.ms".into(), "0".into());
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let producer: ThreadedProducer<Timing> = kafflow::kafka::producer_config(&kafka, 60_000)
            .create_with_context(Timing(latencies.clone(), failed.clone()))
            .expect("producer");
        // Connect, learn the leaders and get the idempotent producer's id before the clock
        // starts: one record sent and acknowledged, not counted.
        let warm = value(0);
        producer
            .send(
                BaseRecord::<(), str, Box<Instant>>::with_opaque_to(
                    topic,
                    Box::new(Instant::now()),
                )
                .payload(warm.as_str()),
            )
            .map_err(|(e, _)| e)
            .expect("send");
        producer
            .flush(Duration::from_secs(30))
            .expect("first record acknowledged");
        // Two seconds at the rate, not counted: a freshly started broker answers its first
        // thousands of records slower than the rest.
        send_paced(&producer, topic, LATENCY_RATE * 2);
        let _ = producer.flush(Duration::from_secs(30));
        latencies.lock().expect("latencies").clear();
        Paced {
            producer,
            latencies,
            failed,
            topic: topic.to_string(),
        }
    }

    /// One slice: `records` sent at the rate, each timed until acknowledged; the timings add
    /// to this producer's.
    fn slice(&self, records: u64) {
        send_paced(&self.producer, &self.topic, records);
        let _ = self.producer.flush(Duration::from_secs(30));
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "the producer lost records"
        );
    }

    /// (p50, p99) in ms over every slice, and how many records they timed.
    fn percentiles(&self) -> (f64, f64, usize) {
        let mut all = std::mem::take(&mut *self.latencies.lock().expect("latencies"));
        all.sort_unstable();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
        (at(0.50), at(0.99), all.len())
    }
}

/// `records` records sent one by one at `LATENCY_RATE` per second, each timed from its send.
fn send_paced(producer: &ThreadedProducer<Timing>, topic: &str, records: u64) {
    let started = Instant::now();
    for n in 0..records {
        let due = started + Duration::from_micros(n * 1_000_000 / LATENCY_RATE);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let v = value(n);
        let record =
            BaseRecord::<(), str, Box<Instant>>::with_opaque_to(topic, Box::new(Instant::now()))
                .payload(v.as_str());
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
}

// ------------------------------------------------------------------ idle connections

/// One request and its answer over `stream`, encoded and decoded by the `kafka-protocol` crate.
async fn round_trip<Req: Encodable, Resp: Decodable>(
    stream: &mut TcpStream,
    api: ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("kafflow-bench")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api.request_header_version(version))
        .expect("encode header");
    request.encode(&mut body, version).expect("encode request");
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.expect("send request");
    let size = stream.read_i32().await.expect("response size");
    let mut payload = vec![0u8; size as usize];
    stream.read_exact(&mut payload).await.expect("response");
    let mut payload = Bytes::from(payload);
    ResponseHeader::decode(&mut payload, api.response_header_version(version))
        .expect("response header");
    Resp::decode(&mut payload, version).expect("decode response")
}

/// The highest version of `api` both the gateway (`offered`) and this client speak.
fn version(offered: &ApiVersionsResponse, api: ApiKey) -> i16 {
    let theirs = offered
        .api_keys
        .iter()
        .find(|k| k.api_key == api as i16)
        .unwrap_or_else(|| panic!("the gateway does not offer {api:?}"));
    theirs.max_version.min(api.valid_versions().max)
}

/// A client as a real one starts: ApiVersions, SASL/PLAIN, one Metadata request; then idle.
async fn idle_client(gateway: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let offered: ApiVersionsResponse = round_trip(
        &mut stream,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kafflow-bench"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    )
    .await;
    assert_eq!(offered.error_code, 0, "ApiVersions refused");
    let handshake: SaslHandshakeResponse = round_trip(
        &mut stream,
        ApiKey::SaslHandshake,
        version(&offered, ApiKey::SaslHandshake),
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    )
    .await;
    assert_eq!(handshake.error_code, 0, "SaslHandshake refused");
    let auth: SaslAuthenticateResponse = round_trip(
        &mut stream,
        ApiKey::SaslAuthenticate,
        version(&offered, ApiKey::SaslAuthenticate),
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from(format!("\0{CLIENT}\0{CLIENT_TOKEN}"))),
    )
    .await;
    assert_eq!(auth.error_code, 0, "SaslAuthenticate refused");
    let _: MetadataResponse = round_trip(
        &mut stream,
        ApiKey::Metadata,
        version(&offered, ApiKey::Metadata),
        &MetadataRequest::default().with_topics(Some(Vec::new())),
    )
    .await;
    stream
}

/// Bytes of kafflow's resident memory per idle client, `clients` of them open at once.
async fn idle_connections(service: &Service, clients: u64) -> (u64, u64, f64) {
    // One client first: whatever the first one sets up once is not per connection.
    let first = idle_client(&service.gateway).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = service.rss();
    let mut open = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        open.push(idle_client(&service.gateway).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = service.rss();
    drop(open);
    drop(first);
    (
        before,
        after,
        after.saturating_sub(before) as f64 / clients as f64,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let records = count("KAFFLOW_BENCH_RECORDS", 1_000_000);
    let latency_secs = count("KAFFLOW_BENCH_LATENCY_SECS", 10);
    let clients = count("KAFFLOW_BENCH_CONNECTIONS", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let service = start_service();
    let run = format!("{:x}", std::process::id());
    let (direct_topic, gateway_topic, direct_latency, gateway_latency) = (
        format!("bench-gw-direct-{run}"),
        format!("bench-gw-through-{run}"),
        format!("bench-gw-direct-latency-{run}"),
        format!("bench-gw-through-latency-{run}"),
    );
    runtime.block_on(async {
        for topic in [
            &direct_topic,
            &gateway_topic,
            &direct_latency,
            &gateway_latency,
        ] {
            provision(&service, topic).await;
        }
    });
    let gateway = Via::Gateway(&service);
    println!(
        "gateway benchmark: {records} records of {VALUE_BYTES} bytes, {PARTITIONS} partitions, \
         acks=all, idempotent; the same rdkafka settings direct and through the gateway (SASL/PLAIN)"
    );

    // Each comparison runs in the order direct, gateway, gateway, direct (each half the
    // records): a drift of the machine or the broker during the run weighs on both sides alike.
    let half = (records / 2).max(1);
    let (d1, g1) = (
        produce(Via::Direct, &direct_topic, half),
        produce(gateway, &gateway_topic, half),
    );
    let (g2, d2) = (
        produce(gateway, &gateway_topic, half),
        produce(Via::Direct, &direct_topic, half),
    );
    let (direct, through) = (harmonic(d1, d2), harmonic(g1, g2));
    report::row(
        "gateway",
        "produce",
        through,
        "records/s",
        Some(direct),
        report::Target::RatioAtLeast(0.9),
    );
    println!("produce, direct            : {direct:>10.0} records/s  (halves {d1:.0}, {d2:.0})");
    println!(
        "produce, through gateway   : {through:>10.0} records/s  (halves {g1:.0}, {g2:.0})  {:.2} of direct",
        through / direct
    );

    // Every fetch reads the same records (those sent through the gateway), so only the path
    // differs; each with a group of its own.
    let sent = half * 2;
    let (mut direct_rates, mut gateway_rates) = (Vec::new(), Vec::new());
    for round in 0..2 {
        let read = |via: Via<'_>, n: u32| {
            fetch(
                via,
                &gateway_topic,
                sent,
                &format!("{run}-{}", round * 4 + n),
            )
        };
        direct_rates.push(read(Via::Direct, 1));
        gateway_rates.push(read(gateway, 2));
        gateway_rates.push(read(gateway, 3));
        direct_rates.push(read(Via::Direct, 4));
    }
    let (direct, through) = (harmonic_all(&direct_rates), harmonic_all(&gateway_rates));
    let rounds = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (d1, d2) = (rounds(&direct_rates), rounds(&gateway_rates));
    report::row(
        "gateway",
        "fetch",
        through,
        "records/s",
        Some(direct),
        report::Target::RatioAtLeast(0.9),
    );
    println!("fetch, direct              : {direct:>10.0} records/s  (reads {d1})");
    println!(
        "fetch, through gateway     : {through:>10.0} records/s  (reads {d2})  {:.2} of direct",
        through / direct
    );

    // One side at a time at the full rate, in slices ordered direct, gateway, gateway, direct:
    // the broker sees the target's 5,000/s, and a drift of the machine weighs on both alike.
    let direct_side = Paced::warm(Via::Direct, &direct_latency);
    let gateway_side = Paced::warm(gateway, &gateway_latency);
    let slice = LATENCY_RATE * latency_secs.div_ceil(4).max(1);
    for side in [&direct_side, &gateway_side, &gateway_side, &direct_side] {
        side.slice(slice);
    }
    let (d50, d99, timed) = direct_side.percentiles();
    let (g50, g99, _) = gateway_side.percentiles();
    println!(
        "latency at {LATENCY_RATE}/s, direct: p50 {d50:.2} ms  p99 {d99:.2} ms  ({timed} records a side, one side at a time)"
    );
    println!("latency, through gateway  : p50 {g50:.2} ms  p99 {g99:.2} ms");
    println!(
        "latency added by gateway  : p50 {:+.2} ms  p99 {:+.2} ms",
        g50 - d50,
        g99 - d99
    );

    report::row(
        "gateway",
        "added produce latency p50 at 5,000/s",
        g50 - d50,
        "ms",
        None,
        report::Target::AtMost(1.0),
    );
    report::row(
        "gateway",
        "added produce latency p99 at 5,000/s",
        g99 - d99,
        "ms",
        None,
        report::Target::AtMost(5.0),
    );
    let (before, after, per) = runtime.block_on(idle_connections(&service, clients));
    report::row(
        "gateway",
        "RSS per idle client connection",
        per / 1024.0,
        "KiB",
        None,
        report::Target::None,
    );
    println!(
        "{clients} idle clients through the gateway: RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    );
}
