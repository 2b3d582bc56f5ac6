//! A clean shutdown: on SIGTERM KafFlow stops accepting, answers every line and call it has
//! accepted, closes feeds with 1001, and exits 0. Every record it acknowledged is in Kafka or
//! the spool after the restart, during TCP ingest and during a drain alike.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{
    assert_numbered_arrived, kafka_read_numbered, unique_topic, wait_until, FeedRead, Service,
};
use serde_json::json;

const EXIT_WITHIN: Duration = Duration::from_secs(30);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(90);

/// A producer streaming numbered records over TCP, alternating between `topics`, until the
/// server closes the connection. Record `i` (from 0) goes to `topics[i % len]`.
struct Stream {
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    reader: thread::JoinHandle<()>,
    writer: thread::JoinHandle<()>,
}

impl Stream {
    fn start(addr: &str, token: &str, topics: Vec<String>) -> Stream {
        let socket = TcpStream::connect(addr).expect("connect ingest");
        let mut out = socket.try_clone().expect("clone socket");
        let mut replies = BufReader::new(socket);
        writeln!(out, "AUTH {token}").expect("auth");
        let mut first = String::new();
        replies.read_line(&mut first).expect("auth reply");
        assert_eq!(first.trim(), "OK 0");
        let sent = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = {
            let (acked, errors, closed) = (acked.clone(), errors.clone(), closed.clone());
            thread::spawn(move || {
                for line in replies.lines() {
                    let Ok(line) = line else { break };
                    match line.strip_prefix("OK ").and_then(|n| n.parse::<u64>().ok()) {
                        Some(n) => acked.store(n, Ordering::SeqCst),
                        None => errors.lock().expect("lock").push(line),
                    }
                }
                closed.store(true, Ordering::SeqCst);
            })
        };
        let writer = {
            let sent = sent.clone();
            thread::spawn(move || {
                let mut i = 0u64;
                while !closed.load(Ordering::SeqCst) {
                    let mut chunk = String::new();
                    for _ in 0..200 {
                        let topic = &topics[(i % topics.len() as u64) as usize];
                        let line = json!({"topic": topic, "key": format!("k{}", i % 3), "value": format!("n-{i}")});
                        chunk.push_str(&format!("{line}\n"));
                        i += 1;
                    }
                    if out.write_all(chunk.as_bytes()).is_err() {
                        break;
                    }
                    sent.store(i, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Stream {
            sent,
            acked,
            errors,
            reader,
            writer,
        }
    }

    /// Waits for the server to close, then returns how many records it acknowledged.
    fn finish(self) -> (u64, Vec<String>) {
        self.reader.join().expect("reader");
        self.writer.join().expect("writer");
        let errors = self.errors.lock().expect("lock").clone();
        (self.acked.load(Ordering::SeqCst), errors)
    }
}

/// The numbers `< acked` that went to topic number `which` of `of`.
fn numbers_for(acked: u64, which: u64, of: u64) -> BTreeSet<u64> {
    (0..acked).filter(|i| i % of == which).collect()
}

#[test]
fn sigterm_during_tcp_ingest_answers_every_line_and_exits_0() {
    let mut svc = Service::start();
    let active = unique_topic("term-active");
    let pending = unique_topic("term-pending");
    svc.provision(&active, 2);
    let pending_id = svc.request_topic("alice", &pending, 1);

    // A reader on the active topic, to see its feed closed as the service goes away.
    let (status, body) = svc.post(
        "erin",
        &format!("/api/v1/me/subscriptions/{active}"),
        &json!({}),
    );
    assert_eq!(status, 200, "subscribe: {body}");
    let mut feed = svc.feed(svc.token("erin"), "from=earliest");

    let stream = Stream::start(
        svc.ingest_addr(),
        svc.token("alice"),
        vec![active.clone(), pending.clone()],
    );
    let sent = stream.sent.clone();
    let acked = stream.acked.clone();
    assert!(
        wait_until(Duration::from_secs(60), || acked.load(Ordering::SeqCst)
            >= 2_000),
        "ingest never got going: sent {}, acked {}",
        sent.load(Ordering::SeqCst),
        acked.load(Ordering::SeqCst)
    );

    let status = svc.terminate(EXIT_WITHIN);
    let tail = svc.stderr_tail();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must end in exit 0 within {EXIT_WITHIN:?}, got {status:?}\n{tail}"
    );
    let (acked, errors) = stream.finish();
    let sent = sent.load(Ordering::SeqCst);
    eprintln!("sent {sent}, acknowledged {acked} before the shutdown");
    assert!(
        errors.is_empty(),
        "{} lines refused, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(acked >= 2_000 && acked <= sent);

    // The feed went away with 1001, not a dropped connection.
    let mut close = None;
    for _ in 0..100_000 {
        match feed.read(Duration::from_secs(10)) {
            FeedRead::Frame(_) => continue,
            other => {
                close = Some(other);
                break;
            }
        }
    }
    match close {
        Some(FeedRead::Closed(code, _)) => assert_eq!(code, 1001, "feed close code"),
        other => panic!("feed did not close with a reason: {other:?}"),
    }

    // Everything acknowledged is in Kafka (active) or the spool (pending), nothing else.
    svc.start_again();
    let on_active = numbers_for(acked, 0, 2);
    let on_pending = numbers_for(acked, 1, 2);
    let records = kafka_read_numbered(&active, &on_active, KAFKA_TIMEOUT);
    assert_numbered_arrived(&records, &on_active);
    let (held, _, _) = svc.topic_counts(&pending).expect("pending topic view");
    assert_eq!(held, on_pending.len() as u64, "held records after restart");
    svc.approve("carol", &pending_id);
    // The topic exists in Kafka only once provisioned: reading earlier finds no topic.
    svc.wait_topic_status(&pending, "active", KAFKA_TIMEOUT);
    let records = kafka_read_numbered(&pending, &on_pending, KAFKA_TIMEOUT);
    assert_numbered_arrived(&records, &on_pending);
}

#[test]
fn sigterm_during_a_drain_loses_nothing() {
    let mut svc = Service::start();
    let topic = unique_topic("term-drain");
    let id = svc.request_topic("alice", &topic, 3);
    let total = 30_000u64;
    let mut client = common::IngestClient::connect(svc.ingest_addr());
    client.send_line(&format!("AUTH {}", svc.token("alice")));
    let body: String = (0..total)
        .map(|i| {
            format!(
                "{}\n",
                json!({"topic": topic, "key": format!("k{}", i % 5), "value": format!("n-{i}")})
            )
        })
        .collect();
    client.send(&body);
    let replies = client.read_until(Duration::from_secs(60), |l| {
        common::ok_count(l) == Some(total)
    });
    assert!(
        replies.iter().any(|l| common::ok_count(l) == Some(total)),
        "all held: {replies:?}"
    );
    client.finish_sending();

    svc.approve("carol", &id);
    // Stop while the held records are on their way to Kafka.
    assert!(
        wait_until(Duration::from_secs(60), || {
            svc.topic_counts(&topic)
                .is_some_and(|(_, _, published)| published > 0)
        }),
        "the drain never started"
    );
    let status = svc.terminate(EXIT_WITHIN);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM during a drain must end in exit 0, got {status:?}\n{}",
        svc.stderr_tail()
    );
    svc.start_again();
    let expected: BTreeSet<u64> = (0..total).collect();
    let records = kafka_read_numbered(&topic, &expected, KAFKA_TIMEOUT);
    let duplicates = assert_numbered_arrived(&records, &expected);
    eprintln!("{total} held records, {duplicates} sent twice across the shutdown");
    svc.wait_topic_counts(&topic, Duration::from_secs(60), |held, _, _| held == 0);
}
