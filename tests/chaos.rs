//! Chaos: mixed load against the real binary while it is killed with SIGKILL at random moments,
//! and its broker stopped and started again at some of them. Every acknowledgement is then held
//! to account (see docs/faults.md for how to read the counts).
//!
//! The load: topic requests, approvals, rejections and withdrawals; records over HTTP (JSON
//! arrays and NDJSON) and TCP to pending and active topics; a websocket feed reading. After
//! each restart: the hash chain is intact, every acknowledged event is in the log, and every
//! request and topic the service showed before the kill is still there, in the same or a later
//! state. At the end: every acknowledged record is in Kafka or the spool, no topic was created
//! twice, and `kafflow audit verify` agrees.
//!
//! It runs on a broker of its own (never the shared one). Parameters, from the environment:
//! - `KAFFLOW_CHAOS_KILLS`: how many SIGKILLs (default 5; `make chaos` runs 20)
//! - `KAFFLOW_CHAOS_BROKER_RESTARTS`: at how many of them the broker is stopped too (default 1)
//! - `KAFFLOW_CHAOS_PHASE_MS`: mean load time before a kill (default 2500)
//! - `KAFFLOW_CHAOS_SEED`: the seed of every random choice, printed at the start to replay a run

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{audit_verify, kafka_topic_partitions_at, parse_verify_ok, OwnBroker, Service};
use serde_json::{json, Value};

const PRODUCERS: &[&str] = &["alice", "bob"];
const ADMINS: &[&str] = &["carol", "dave"];
const READER: &str = "erin";
/// How long settling (provisioning, draining) may take at the end and after a broker restart.
const SETTLE: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------ parameters

struct Params {
    seed: u64,
    kills: usize,
    broker_restarts: usize,
    phase: Duration,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text}: {e}"))
        }
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let kills = env_number("KAFFLOW_CHAOS_KILLS", 5) as usize;
        Params {
            seed: env_number("KAFFLOW_CHAOS_SEED", clock ^ u64::from(std::process::id())),
            kills,
            broker_restarts: (env_number("KAFFLOW_CHAOS_BROKER_RESTARTS", 1) as usize).min(kills),
            phase: Duration::from_millis(env_number("KAFFLOW_CHAOS_PHASE_MS", 2500)),
        }
    }
}

/// splitmix64: small, seedable, and good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }

    /// A duration between half and one and a half of `mean`.
    fn around(&mut self, mean: Duration) -> Duration {
        let ms = mean.as_millis() as u64;
        Duration::from_millis(ms / 2 + self.below(ms.max(1)))
    }
}

// ------------------------------------------------------------------ the ledger

/// A request's state as the answers acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    Pending,
    Approved,
    Rejected,
    Withdrawn,
}

#[derive(Debug, Clone)]
struct Req {
    topic: String,
    requester: String,
    /// Never rejected or withdrawn: TCP ingest and the feed use these.
    stable: bool,
    acked: Acked,
    /// A decision was sent and not answered: the service may or may not have committed it.
    in_doubt: bool,
}

/// Everything the load was told, and what it saw.
#[derive(Default)]
struct Ledger {
    requests: BTreeMap<String, Req>,
    /// Topics of create calls that got no answer: such a request may exist.
    doubtful_creates: BTreeSet<String>,
    /// Every record id sent, answered or not.
    sent: BTreeSet<u64>,
    /// Acknowledged records: id -> topic.
    acked: BTreeMap<u64, String>,
    /// Acknowledged events: (kind, request id or topic).
    events: BTreeSet<(String, String)>,
    http_calls: u64,
    http_unanswered: u64,
    tcp_connections: u64,
    feed_frames: u64,
    /// Feed frames whose record was never sent (must stay empty).
    feed_phantoms: Vec<String>,
    /// Answers the contract does not allow here (must stay empty).
    anomalies: Vec<String>,
}

impl Ledger {
    fn anomaly(&mut self, what: String) {
        eprintln!("chaos anomaly: {what}");
        self.anomalies.push(what);
    }
}

// ------------------------------------------------------------------ talking to the service

/// What a load thread needs to reach the running service: a new one after every restart, since
/// the ports change.
#[derive(Clone)]
struct Target {
    base: String,
    ingest: String,
    tokens: BTreeMap<String, String>,
    http: reqwest::blocking::Client,
}

impl Target {
    fn of(svc: &Service) -> Target {
        let tokens = common::PRINCIPALS
            .iter()
            .map(|(name, _)| (name.to_string(), svc.token(name).to_string()))
            .collect();
        Target {
            base: svc.base_url().to_string(),
            ingest: svc.ingest_addr().to_string(),
            tokens,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// One call; None when no answer came (the service died under it).
    fn call(
        &self,
        who: &str,
        method: &str,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Option<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who]);
        if let Some((bytes, content_type)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().ok()?;
        let status = response.status().as_u16();
        let text = response.text().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn post(&self, who: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
        let bytes = serde_json::to_vec(body).expect("json");
        self.call(who, "POST", path, Some((bytes, "application/json")))
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A record's body: its id in the value, so that it can be found anywhere.
fn record(id: u64) -> Value {
    json!({"key": format!("k{}", id % 7), "value": {"c": id}})
}

fn id_in(value: &Value) -> Option<u64> {
    value["c"].as_u64()
}

// ------------------------------------------------------------------ load threads

struct Load<'a> {
    target: Target,
    ledger: &'a Mutex<Ledger>,
    stop: &'a AtomicBool,
    next_record: &'a AtomicU64,
    next_topic: &'a AtomicU64,
    seed: u64,
}

impl Load<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    /// Requests, approvals, rejections, withdrawals.
    fn governance(&self, mut rng: Rng) {
        while !self.stopped() {
            let roll = rng.below(100);
            if roll < 35 {
                self.create(&mut rng);
            } else {
                let open: Vec<(String, Req)> = self
                    .ledger()
                    .requests
                    .iter()
                    .filter(|(_, r)| !r.stable && !r.in_doubt && r.acked == Acked::Pending)
                    .map(|(id, r)| (id.clone(), r.clone()))
                    .collect();
                let Some((id, req)) = rng.pick(&open).cloned() else {
                    self.create(&mut rng);
                    continue;
                };
                if roll < 65 {
                    let who = rng.pick(ADMINS).expect("admins");
                    self.decide(
                        &id,
                        who,
                        "approve",
                        json!({"note": "chaos"}),
                        Acked::Approved,
                    );
                } else if roll < 83 {
                    let who = rng.pick(ADMINS).expect("admins");
                    self.decide(
                        &id,
                        who,
                        "reject",
                        json!({"reason": "chaos"}),
                        Acked::Rejected,
                    );
                } else {
                    self.decide(&id, &req.requester, "withdraw", json!({}), Acked::Withdrawn);
                }
            }
            thread::sleep(Duration::from_millis(20 + rng.below(40)));
        }
    }

    fn create(&self, rng: &mut Rng) {
        let n = self.next_topic.fetch_add(1, Ordering::Relaxed);
        let topic = format!("chaos-{:x}-{n}", self.seed & 0xffff_ffff);
        let who = rng.pick(PRODUCERS).expect("producers");
        let body = json!({"topic": topic, "partitions": 1 + rng.below(3), "reason": "chaos"});
        let reply = self.target.post(who, "/api/v1/topic-requests", &body);
        let mut ledger = self.ledger();
        ledger.http_calls += 1;
        match reply {
            Some((201, request)) => {
                let id = request["id"].as_str().unwrap_or_default().to_string();
                ledger.events.insert(("topic_requested".into(), id.clone()));
                ledger.requests.insert(
                    id,
                    Req {
                        topic,
                        requester: who.to_string(),
                        stable: false,
                        acked: Acked::Pending,
                        in_doubt: false,
                    },
                );
            }
            Some((status, body)) => {
                ledger.anomaly(format!("create {topic}: {status} {body}"));
            }
            None => {
                ledger.http_unanswered += 1;
                ledger.doubtful_creates.insert(topic);
            }
        }
    }

    fn decide(&self, id: &str, who: &str, action: &str, body: Value, to: Acked) {
        let path = format!("/api/v1/topic-requests/{id}/{action}");
        // Marked before the call: a kill may come before the answer.
        if let Some(req) = self.ledger().requests.get_mut(id) {
            req.in_doubt = true;
        }
        let reply = self.target.post(who, &path, &body);
        let mut ledger = self.ledger();
        ledger.http_calls += 1;
        let kind = match to {
            Acked::Approved => "request_approved",
            Acked::Rejected => "request_rejected",
            Acked::Withdrawn => "request_withdrawn",
            Acked::Pending => unreachable!("no decision goes back to pending"),
        };
        match reply {
            Some((200, _)) => {
                ledger.events.insert((kind.into(), id.to_string()));
                if let Some(req) = ledger.requests.get_mut(id) {
                    req.acked = to;
                    req.in_doubt = false;
                }
            }
            Some((status, body)) => {
                ledger.anomaly(format!("{action} {id} as {who}: {status} {body}"));
            }
            None => ledger.http_unanswered += 1,
        }
    }

    /// Topics that may take records: pending or approved, not in doubt.
    fn open_topics(&self, stable_only: bool) -> Vec<String> {
        self.open_topics_by_owner(stable_only)
            .into_iter()
            .map(|(topic, _)| topic)
            .collect()
    }

    /// The open topics with their requesters, who own them and so may send to them.
    fn open_topics_by_owner(&self, stable_only: bool) -> Vec<(String, String)> {
        self.ledger()
            .requests
            .values()
            .filter(|r| !stable_only || r.stable)
            .filter(|r| matches!(r.acked, Acked::Pending | Acked::Approved))
            .map(|r| (r.topic.clone(), r.requester.clone()))
            .collect()
    }

    fn record_ids(&self, n: u64) -> Vec<u64> {
        let first = self.next_record.fetch_add(n, Ordering::Relaxed);
        let ids: Vec<u64> = (first..first + n).collect();
        self.ledger().sent.extend(ids.iter().copied());
        ids
    }

    /// Records over HTTP, as JSON arrays and NDJSON, to any open topic.
    fn http_ingest(&self, mut rng: Rng) {
        while !self.stopped() {
            let topics = self.open_topics_by_owner(false);
            let Some((topic, owner)) = rng.pick(&topics).cloned() else {
                thread::sleep(Duration::from_millis(50));
                continue;
            };
            let who = owner.as_str();
            let ids = self.record_ids(1 + rng.below(20));
            let records: Vec<Value> = ids.iter().map(|&id| record(id)).collect();
            let path = format!("/api/v1/topics/{topic}/records");
            let reply = if rng.below(2) == 0 {
                self.target.post(who, &path, &Value::Array(records))
            } else {
                let body: String = records.iter().map(|r| format!("{r}\n")).collect();
                self.target.call(
                    who,
                    "POST",
                    &path,
                    Some((body.into_bytes(), "application/x-ndjson")),
                )
            };
            let mut ledger = self.ledger();
            ledger.http_calls += 1;
            match reply {
                Some((202, body)) if body["accepted"].as_u64() == Some(ids.len() as u64) => {
                    for id in ids {
                        ledger.acked.insert(id, topic.clone());
                    }
                }
                // A topic that a concurrent decision closed, or one the publisher has not heard
                // of yet.
                Some((409, body)) if code(&body) == "topic_closed" => {}
                Some((404, body)) if code(&body) == "unknown_topic" => {}
                Some((status, body)) => {
                    ledger.anomaly(format!("produce to {topic}: {status} {body}"));
                }
                None => ledger.http_unanswered += 1,
            }
            drop(ledger);
            thread::sleep(Duration::from_millis(5 + rng.below(20)));
        }
    }

    /// Records over TCP to the stable topics, one connection at a time.
    fn tcp_ingest(&self, mut rng: Rng) {
        while !self.stopped() {
            let topics = self.open_topics(true);
            if topics.is_empty() || self.tcp_connection(&mut rng, &topics).is_none() {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// One connection until the stop or a broken pipe; None if it could not start.
    fn tcp_connection(&self, rng: &mut Rng, topics: &[String]) -> Option<()> {
        let stream = TcpStream::connect(&self.target.ingest).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        let mut writer = stream.try_clone().ok()?;
        let mut reader = BufReader::new(stream);
        writeln!(writer, "AUTH {}", self.target.tokens["alice"]).ok()?;
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim() != "OK 0" {
            self.ledger()
                .anomaly(format!("TCP AUTH answered {:?}", line.trim()));
            return None;
        }
        self.ledger().tcp_connections += 1;
        let mut conn = TcpConn::default();
        let mut line_no = 1;
        loop {
            let finishing = self.stopped();
            if finishing {
                let _ = writer.shutdown(std::net::Shutdown::Write);
            } else {
                let ids = self.record_ids(1 + rng.below(40));
                let mut text = String::new();
                for id in ids {
                    let topic = rng.pick(topics).expect("topics").clone();
                    line_no += 1;
                    let mut r = record(id);
                    r["topic"] = json!(topic);
                    text.push_str(&format!("{r}\n"));
                    conn.lines.push((line_no, id, topic));
                }
                if writer.write_all(text.as_bytes()).is_err() {
                    return Some(());
                }
            }
            // Read until everything sent is answered (or the end when finishing).
            loop {
                let mut reply = String::new();
                match reader.read_line(&mut reply) {
                    Ok(0) | Err(_) => return Some(()),
                    Ok(_) => {}
                }
                let reply = reply.trim_end();
                let mut ledger = self.ledger();
                conn.answer(reply, &mut ledger);
                if !finishing && conn.ok + conn.refused.len() as u64 >= conn.lines.len() as u64 {
                    break;
                }
            }
        }
    }

    /// A websocket feed of the reader's subscriptions, reopened whenever it drops.
    fn feed(&self) {
        while !self.stopped() {
            if self.feed_once().is_none() {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn feed_once(&self) -> Option<()> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
        let address = self.target.base.strip_prefix("http://")?.to_string();
        let mut request = format!("ws://{address}/api/v1/me/feed")
            .into_client_request()
            .ok()?;
        let bearer = format!("Bearer {}", self.target.tokens[READER]);
        request
            .headers_mut()
            .insert("authorization", bearer.parse().ok()?);
        let stream = TcpStream::connect(&address).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let (mut socket, _) = tokio_tungstenite::tungstenite::client(request, stream).ok()?;
        while !self.stopped() {
            match socket.read() {
                Ok(Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if frame["type"].is_string() {
                        continue;
                    }
                    let mut ledger = self.ledger();
                    ledger.feed_frames += 1;
                    let known = id_in(&frame["value"]).is_some_and(|id| ledger.sent.contains(&id));
                    if !known {
                        ledger.feed_phantoms.push(text.to_string());
                    }
                }
                Ok(Message::Close(_)) => return Some(()),
                Ok(_) => {}
                Err(tokio_tungstenite::tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(()),
            }
        }
        let _ = socket.close(None);
        Some(())
    }
}

/// One TCP ingest connection's bookkeeping: an `OK n` acknowledges the first n accepted lines.
#[derive(Default)]
struct TcpConn {
    /// (line number, record id, topic), in order.
    lines: Vec<(u64, u64, String)>,
    refused: BTreeSet<u64>,
    /// The highest `OK n`.
    ok: u64,
    /// How many of `lines` (accepted ones) are in the ledger as acknowledged.
    counted: usize,
}

impl TcpConn {
    fn answer(&mut self, reply: &str, ledger: &mut Ledger) {
        if let Some(n) = reply
            .strip_prefix("OK ")
            .and_then(|n| n.trim().parse().ok())
        {
            self.ok = self.ok.max(n);
        } else if let Some(rest) = reply.strip_prefix("ERR ") {
            let line: u64 = rest
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            ledger.anomaly(format!("TCP to a stable topic refused: {reply}"));
            if let Some(&(_, id, _)) = self.lines.iter().find(|(l, _, _)| *l == line) {
                // Counted already by a too-early OK: it was not accepted after all.
                if ledger.acked.remove(&id).is_some() {
                    ledger.anomaly(format!("ERR for line {line} after an OK covering it"));
                }
            }
            self.refused.insert(line);
        } else {
            ledger.anomaly(format!("TCP reply {reply:?}"));
            return;
        }
        let accepted = self
            .lines
            .iter()
            .filter(|(line, _, _)| !self.refused.contains(line));
        for (_, id, topic) in accepted.take(self.ok as usize).skip(self.counted) {
            ledger.acked.insert(*id, topic.clone());
            self.counted += 1;
        }
    }
}

// ------------------------------------------------------------------ checks

/// GET as carol, panicking on anything but 200.
fn get(svc: &Service, path: &str) -> Value {
    let (status, body) = svc.get("carol", path);
    assert_eq!(status, 200, "GET {path}: {body}\n{}", svc.stderr_tail());
    body
}

/// What the service shows: request id -> status, and topic name -> topic view.
#[derive(Debug, Default, Clone)]
struct Shown {
    requests: BTreeMap<String, String>,
    topics: BTreeMap<String, Value>,
}

fn shown(svc: &Service) -> Shown {
    let requests = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    let topics = Value::Array(svc.list_all("carol", "/api/v1/topics", "topics"));
    Shown {
        requests: requests
            .as_array()
            .expect("request list")
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        topics: topics
            .as_array()
            .expect("topic list")
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap_or_default().to_string(),
                    t.clone(),
                )
            })
            .collect(),
    }
}

/// Whether a request may go from `before` (shown before a kill) to `after` (shown after it).
fn request_may_become(before: &str, after: &str) -> bool {
    match before {
        "pending" => true,
        "approved" => matches!(after, "approved" | "completed" | "failed"),
        settled => after == settled,
    }
}

/// Whether a topic may go from `before` to `after`.
fn topic_may_become(before: &str, after: &str) -> bool {
    match before {
        "provisioning" => matches!(after, "provisioning" | "active" | "failed"),
        settled => after == settled,
    }
}

/// Compares what the service shows after a restart with what it showed before the kill and with
/// what the load was told; adopts what decisions in doubt came to.
fn check_state(svc: &Service, before: &Shown, ledger: &mut Ledger) -> Shown {
    let now = shown(svc);
    for (id, was) in &before.requests {
        let is = now.requests.get(id).map(String::as_str).unwrap_or("<gone>");
        assert!(
            request_may_become(was, is),
            "request {id} was {was} before the kill and is {is} after it"
        );
    }
    for (name, was) in &before.topics {
        let is = now.topics.get(name).cloned().unwrap_or(Value::Null);
        let (was_status, is_status) = (
            was["status"].as_str().unwrap_or_default(),
            is["status"].as_str().unwrap_or("<gone>"),
        );
        assert!(
            topic_may_become(was_status, is_status),
            "topic {name} was {was_status} before the kill and is {is_status} after it"
        );
        for field in [
            "partitions",
            "replication_factor",
            "owner",
            "request_id",
            "config",
        ] {
            assert_eq!(
                was[field], is[field],
                "topic {name}: {field} changed in the restart"
            );
        }
    }
    for (id, req) in ledger.requests.iter_mut() {
        let is = now.requests.get(id).map(String::as_str).unwrap_or("<gone>");
        let fits = match (req.acked, req.in_doubt) {
            (Acked::Pending, false) => is == "pending",
            (Acked::Pending, true) => is != "<gone>",
            (Acked::Approved, _) => matches!(is, "approved" | "completed"),
            (Acked::Rejected, _) => is == "rejected",
            (Acked::Withdrawn, _) => is == "withdrawn",
        };
        assert!(
            fits,
            "request {id} ({}) was acknowledged {:?} (in doubt: {}) and is {is} after the restart",
            req.topic, req.acked, req.in_doubt
        );
        if req.in_doubt {
            req.acked = match is {
                "pending" => Acked::Pending,
                "rejected" => Acked::Rejected,
                "withdrawn" => Acked::Withdrawn,
                _ => Acked::Approved,
            };
            req.in_doubt = false;
        }
    }
    // A request nobody was told about can only come from a create that got no answer.
    let listed = Value::Array(svc.list_all("carol", "/api/v1/topic-requests", "requests"));
    for request in listed.as_array().expect("request list") {
        let id = request["id"].as_str().unwrap_or_default().to_string();
        if ledger.requests.contains_key(&id) {
            continue;
        }
        let topic = request["topic"].as_str().unwrap_or_default().to_string();
        assert!(
            ledger.doubtful_creates.remove(&topic),
            "request {id} for {topic} is in the service, but no create call for it was made"
        );
        let acked = match request["status"].as_str().unwrap_or_default() {
            "pending" => Acked::Pending,
            other => panic!("an unanswered create of {topic} came back as {other}"),
        };
        ledger.requests.insert(
            id,
            Req {
                topic,
                requester: request["requested_by"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                stable: false,
                acked,
                in_doubt: false,
            },
        );
    }
    now
}

/// Every acknowledged event is in the log: returns (acknowledged, present).
fn check_events(svc: &Service, ledger: &Ledger) -> (usize, usize) {
    let events = svc.audit("limit=1000");
    let logged: BTreeSet<(String, String)> = events
        .iter()
        .map(|e| {
            let kind = e["kind"].as_str().unwrap_or_default().to_string();
            let about = e["request_id"]
                .as_str()
                .or(e["topic"].as_str())
                .unwrap_or_default()
                .to_string();
            (kind, about)
        })
        .collect();
    let missing: Vec<&(String, String)> = ledger.events.difference(&logged).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the log: {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    (ledger.events.len(), ledger.events.len() - missing.len())
}

fn check_chain(svc: &Service) -> u64 {
    let verify = get(svc, "/api/v1/audit/verify");
    assert_eq!(verify["ok"], true, "hash chain broken: {verify}");
    verify["events"].as_u64().unwrap_or_default()
}

/// Reads every record of `topics` from the broker at `bootstrap` until `enough` says so for the
/// ids read, or `timeout` passes. Returns (topic, record id) of each record, duplicates included.
fn kafka_read_all(
    bootstrap: &str,
    topics: &[String],
    timeout: Duration,
    mut enough: impl FnMut(&BTreeSet<u64>) -> bool,
) -> Vec<(String, Option<u64>)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let mut found = Vec::new();
    if topics.is_empty() {
        return found;
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafflow-chaos-check")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("kafka consumer");
    // One metadata request for every topic (the long run has hundreds).
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("kafka metadata");
    let partitions: BTreeMap<&str, usize> = metadata
        .topics()
        .iter()
        .map(|t| (t.name(), t.partitions().len()))
        .collect();
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let count = match partitions.get(topic.as_str()) {
            Some(&n) if n > 0 => n,
            _ => kafka_topic_partitions_at(bootstrap, topic)
                .unwrap_or_else(|| panic!("active topic {topic} is not in Kafka")),
        };
        for p in 0..count as i32 {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition offset");
        }
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut ids = BTreeSet::new();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let id = message
                    .payload()
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                    .and_then(|v| id_in(&v));
                ids.extend(id);
                found.push((message.topic().to_string(), id));
                continue;
            }
            Some(Err(e)) => eprintln!("chaos: kafka read: {e}"),
            None => {}
        }
        if enough(&ids) || Instant::now() >= deadline {
            return found;
        }
    }
}

// ------------------------------------------------------------------ the run

#[test]
fn acknowledged_work_survives_kill_9_and_broker_restarts() {
    let params = Params::from_env();
    eprintln!(
        "chaos: seed {:#x} (replay with KAFFLOW_CHAOS_SEED={:#x}), {} kills, {} with a broker \
         restart, load phases around {:?}",
        params.seed, params.seed, params.kills, params.broker_restarts, params.phase
    );
    let started = Instant::now();
    let mut rng = Rng::new(params.seed);
    let broker = OwnBroker::start();
    let bootstrap = broker.bootstrap();
    eprintln!(
        "chaos: own broker on {bootstrap} after {:?}",
        started.elapsed()
    );
    let mut svc = Service::start_at(&bootstrap, |text| {
        text + "\n[publisher]\ndelivery_timeout_ms = 3000\n"
    });

    let ledger = Mutex::new(Ledger::default());
    let next_record = AtomicU64::new(0);
    let next_topic = AtomicU64::new(0);

    // Stable topics: two active ones the reader follows, two pending until the end.
    for i in 0..4 {
        let topic = format!("chaos-{:x}-stable-{i}", params.seed & 0xffff_ffff);
        let id = if i < 2 {
            svc.provision(&topic, 2)
        } else {
            svc.request_topic("alice", &topic, 2)
        };
        let mut ledger = ledger.lock().expect("ledger");
        ledger.events.insert(("topic_requested".into(), id.clone()));
        let acked = if i < 2 {
            ledger
                .events
                .insert(("request_approved".into(), id.clone()));
            let (status, body) = svc.post(
                READER,
                &format!("/api/v1/me/subscriptions/{topic}"),
                &json!({}),
            );
            assert_eq!(status, 200, "subscribe to {topic}: {body}");
            ledger.events.insert(("subscribed".into(), topic.clone()));
            Acked::Approved
        } else {
            Acked::Pending
        };
        ledger.requests.insert(
            id,
            Req {
                topic,
                requester: "alice".into(),
                stable: true,
                acked,
                in_doubt: false,
            },
        );
    }

    // Which kills also stop the broker.
    let mut broker_kills = BTreeSet::new();
    while broker_kills.len() < params.broker_restarts {
        broker_kills.insert(rng.below(params.kills as u64) as usize);
    }

    let mut kills = 0;
    let mut broker_restarts = 0;
    let mut broker_down = false;
    for round in 0..params.kills {
        let stop = AtomicBool::new(false);
        let load = Load {
            target: Target::of(&svc),
            ledger: &ledger,
            stop: &stop,
            next_record: &next_record,
            next_topic: &next_topic,
            seed: params.seed,
        };
        let phase = rng.around(params.phase);
        let thread_seeds: Vec<u64> = (0..3).map(|_| rng.next()).collect();
        let before = thread::scope(|scope| {
            scope.spawn(|| load.governance(Rng::new(thread_seeds[0])));
            scope.spawn(|| load.http_ingest(Rng::new(thread_seeds[1])));
            scope.spawn(|| load.tcp_ingest(Rng::new(thread_seeds[2])));
            scope.spawn(|| load.feed());
            thread::sleep(phase);
            // What the service shows now must survive the kill.
            let before = shown(&svc);
            svc.kill9();
            stop.store(true, Ordering::Relaxed);
            before
        });
        kills += 1;

        if broker_kills.contains(&round) {
            broker.down();
            broker_down = true;
            broker_restarts += 1;
        }
        svc.restart();
        let mut ledger_now = ledger.lock().expect("ledger");
        check_state(&svc, &before, &mut ledger_now);
        let (acked_events, present) = check_events(&svc, &ledger_now);
        let chain = check_chain(&svc);
        drop(ledger_now);
        if broker_down {
            let (status, body) = svc.get_anon("/readyz");
            assert_eq!(status, 503, "/readyz with the broker down: {body}");
            // Load with the broker gone, then bring it back.
            let stop = AtomicBool::new(false);
            let load = Load {
                target: Target::of(&svc),
                ledger: &ledger,
                stop: &stop,
                next_record: &next_record,
                next_topic: &next_topic,
                seed: params.seed,
            };
            thread::scope(|scope| {
                scope.spawn(|| load.governance(Rng::new(thread_seeds[0] ^ 1)));
                scope.spawn(|| load.http_ingest(Rng::new(thread_seeds[1] ^ 1)));
                thread::sleep(phase);
                broker.up();
                stop.store(true, Ordering::Relaxed);
            });
            broker_down = false;
        }
        svc.wait_ready(SETTLE);
        eprintln!(
            "chaos: kill {kills}/{} after {phase:?}{}: {acked_events} events acknowledged, \
             {present} in the log of {chain}, chain intact ({:?} so far)",
            params.kills,
            if broker_kills.contains(&round) {
                " with a broker restart"
            } else {
                ""
            },
            started.elapsed()
        );
    }

    // The end: approve the stable pending topics, let everything settle, then count.
    let stable_pending: Vec<String> = ledger
        .lock()
        .expect("ledger")
        .requests
        .iter()
        .filter(|(_, r)| r.stable && r.acked == Acked::Pending)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &stable_pending {
        svc.approve("carol", id);
        let mut ledger = ledger.lock().expect("ledger");
        ledger
            .events
            .insert(("request_approved".into(), id.clone()));
        if let Some(req) = ledger.requests.get_mut(id) {
            req.acked = Acked::Approved;
        }
    }
    let ledger = ledger.into_inner().expect("ledger");
    let approved: Vec<(String, String)> = ledger
        .requests
        .iter()
        .filter(|(_, r)| r.acked == Acked::Approved)
        .map(|(id, r)| (id.clone(), r.topic.clone()))
        .collect();
    for (id, _) in &approved {
        svc.wait_request_status(id, "completed", SETTLE);
    }
    let topics: Vec<String> = approved.iter().map(|(_, t)| t.clone()).collect();
    let drained = common::wait_until(SETTLE, || {
        topics
            .iter()
            .all(|t| svc.topic_counts(t).is_some_and(|(held, _, _)| held == 0))
    });
    eprintln!("chaos: held records drained: {drained}");

    // Found: in the spool (held or dead), then in Kafka.
    let mut found: Vec<(String, Option<u64>)> = Vec::new();
    let all_topics: BTreeSet<String> = ledger.requests.values().map(|r| r.topic.clone()).collect();
    for topic in &all_topics {
        for state in ["held", "dead"] {
            for held in svc.held_records("carol", topic, state) {
                found.push((topic.clone(), id_in(&held["value"])));
            }
        }
    }
    let in_spool: BTreeSet<u64> = found.iter().filter_map(|(_, id)| *id).collect();
    let wanted: BTreeSet<u64> = ledger
        .acked
        .keys()
        .filter(|id| !in_spool.contains(id))
        .copied()
        .collect();
    found.extend(kafka_read_all(&bootstrap, &topics, SETTLE, |ids| {
        wanted.is_subset(ids)
    }));

    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut misplaced = Vec::new();
    let mut unknown = 0;
    for (topic, id) in &found {
        let Some(id) = id else {
            unknown += 1;
            continue;
        };
        *copies.entry(*id).or_default() += 1;
        if let Some(acked_topic) = ledger.acked.get(id) {
            if acked_topic != topic {
                misplaced.push((*id, acked_topic.clone(), topic.clone()));
            }
        }
    }
    let lost: Vec<u64> = ledger
        .acked
        .keys()
        .filter(|id| !copies.contains_key(id))
        .copied()
        .collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let never_sent = copies.keys().filter(|id| !ledger.sent.contains(id)).count();
    let unacked_found = copies
        .keys()
        .filter(|id| !ledger.acked.contains_key(id))
        .count();

    // Topics created twice: a second provisioning that did not find the topic already there.
    let provisioned = svc.audit("kind=topic_provisioned&limit=1000");
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for event in &provisioned {
        if event["data"]["already_existed"] == false {
            *creates
                .entry(event["topic"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    let created_twice: Vec<&String> = creates
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t)
        .collect();
    let retried = provisioned.len() - creates.values().sum::<usize>();
    let (events_acked, events_present) = check_events(&svc, &ledger);

    // The log, checked offline by the command line with the service stopped.
    svc.kill9();
    let (status, stdout, stderr) = audit_verify(svc.data_dir());
    assert!(
        status.is_some_and(|s| s.success()),
        "kafflow audit verify: {status:?}\n{stdout}\n{stderr}"
    );
    let (log_events, _) = parse_verify_ok(&stdout).expect("verify output");

    let status_count = |acked: Acked| {
        ledger
            .requests
            .values()
            .filter(|r| r.acked == acked)
            .count()
    };
    eprintln!(
        "chaos: seed {seed:#x}, {elapsed:?}\n\
         chaos: kills                   {kills} ({broker_restarts} with a broker restart)\n\
         chaos: requests                {requests} ({pending} pending, {approved} approved, \
         {rejected} rejected, {withdrawn} withdrawn)\n\
         chaos: http calls              {calls} ({unanswered} unanswered), {tcp} tcp connections\n\
         chaos: records sent            {sent}\n\
         chaos: records acknowledged    {acked}\n\
         chaos: records found           {found_n} ({spool} in the spool, the rest in Kafka; \
         {unacked_found} found but never acknowledged)\n\
         chaos: records lost            {lost_n}\n\
         chaos: duplicates              {duplicates} (at-least-once)\n\
         chaos: feed frames             {frames}\n\
         chaos: events acknowledged     {events_acked}, present {events_present}, lost {events_lost}\n\
         chaos: topics provisioned      {topics_n}, created twice {twice}, provisionings that \
         found the topic there {retried}\n\
         chaos: hash chain              intact, {log_events} events",
        seed = params.seed,
        elapsed = started.elapsed(),
        requests = ledger.requests.len(),
        pending = status_count(Acked::Pending),
        approved = status_count(Acked::Approved),
        rejected = status_count(Acked::Rejected),
        withdrawn = status_count(Acked::Withdrawn),
        calls = ledger.http_calls,
        unanswered = ledger.http_unanswered,
        tcp = ledger.tcp_connections,
        sent = ledger.sent.len(),
        acked = ledger.acked.len(),
        found_n = copies.len(),
        spool = in_spool.len(),
        lost_n = lost.len(),
        frames = ledger.feed_frames,
        events_lost = events_acked - events_present,
        topics_n = creates.len(),
        twice = created_twice.len(),
    );

    assert!(
        lost.is_empty(),
        "{} acknowledged records are neither in Kafka nor in the spool, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(
        misplaced.is_empty(),
        "records in the wrong topic: {misplaced:?}"
    );
    assert_eq!(never_sent, 0, "records found that were never sent");
    assert_eq!(
        unknown, 0,
        "records in the chaos topics without a record id"
    );
    assert!(
        created_twice.is_empty(),
        "topics created twice: {created_twice:?}"
    );
    assert!(
        ledger.feed_phantoms.is_empty(),
        "feed frames of records never sent: {:?}",
        &ledger.feed_phantoms[..ledger.feed_phantoms.len().min(5)]
    );
    assert!(
        ledger.anomalies.is_empty(),
        "answers the contract does not allow: {:?}",
        ledger.anomalies
    );
    assert!(!ledger.acked.is_empty(), "the load acknowledged no record");
    assert!(kills >= params.kills, "fewer kills than asked for");
}
