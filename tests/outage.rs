//! A broker outage while producing to an active topic: ingest keeps answering and holds what
//! Kafka cannot take, and once the broker is back every acknowledged record arrives.
//!
//! This stops the shared broker, so it is the only test of its binary (cargo runs test binaries
//! one after another); a guard starts the broker again however the test ends.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    assert_numbered_arrived, kafka_read_numbered, numbered_records, unique_topic, wait_until,
    Service,
};

const SETTLE: Duration = Duration::from_secs(120);
const PER_CALL: u64 = 20;
const KEYS: u64 = 5;
/// An ingest call may wait for Kafka's delivery timeout (3 s here), then for the spool.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// `scripts/kafka.sh <command>` from the repository root; panics if it fails.
fn kafka_script(command: &str) {
    let status = Command::new("bash")
        .arg("scripts/kafka.sh")
        .arg(command)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("run scripts/kafka.sh {command}: {e}"));
    assert!(status.success(), "scripts/kafka.sh {command}: {status}");
}

/// Starts the broker again when dropped, so a failing test never leaves it down.
struct BrokerBackUp;

impl Drop for BrokerBackUp {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("scripts/kafka.sh")
            .arg("up")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
}

/// What the producer thread has seen.
#[derive(Debug, Default)]
struct Produced {
    /// The first number of the next call.
    next: u64,
    acked: BTreeSet<u64>,
    calls: u64,
    held_calls: u64,
    slowest: Duration,
    /// Calls answered, held and published whole since the last `mark`.
    since_mark: u64,
    held_since_mark: u64,
    direct_since_mark: u64,
}

impl Produced {
    fn mark(&mut self) {
        self.since_mark = 0;
        self.held_since_mark = 0;
        self.direct_since_mark = 0;
    }
}

/// Runs `steps` while a thread produces to `topic`, one call of `PER_CALL` records after
/// another, and stops the thread after them. `steps` gets a `wait` function: it polls until its
/// condition on what was produced holds, and fails the test (with `what`) if the producer
/// thread fails or the condition never holds.
fn producing(
    svc: &Service,
    topic: &str,
    produced: &Mutex<Produced>,
    steps: impl FnOnce(&dyn Fn(&str, &dyn Fn(&Produced) -> bool)),
) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let next = produced.lock().expect("lock").next;
                let started = Instant::now();
                let body = numbered_records(next..next + PER_CALL, KEYS);
                let (status, reply) = svc.produce("alice", topic, "", &body);
                let took = started.elapsed();
                assert_eq!(status, 202, "call for n-{next}.. answered {reply}");
                assert_eq!(reply["accepted"].as_u64(), Some(PER_CALL), "{reply}");
                let mut p = produced.lock().expect("lock");
                p.next += PER_CALL;
                p.acked.extend(next..next + PER_CALL);
                p.calls += 1;
                p.since_mark += 1;
                if reply["held"].as_u64().is_some_and(|h| h > 0) {
                    p.held_calls += 1;
                    p.held_since_mark += 1;
                }
                if reply["published"].as_u64() == Some(PER_CALL) {
                    p.direct_since_mark += 1;
                }
                p.slowest = p.slowest.max(took);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let wait = |what: &str, ok: &dyn Fn(&Produced) -> bool| {
            let done = wait_until(SETTLE, || {
                producer.is_finished() || ok(&produced.lock().expect("lock"))
            });
            assert!(
                done && !producer.is_finished(),
                "{what}: {:?}\nstderr tail:\n{}",
                produced.lock().expect("lock").calls,
                svc.stderr_tail()
            );
        };
        // A failed step must still stop the producer, or the scope would never end.
        let steps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&wait)));
        stop.store(true, Ordering::Relaxed);
        let joined = producer.join();
        if let Err(panic) = steps {
            std::panic::resume_unwind(panic);
        }
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
    });
}

#[test]
fn records_acknowledged_through_a_broker_outage_and_a_kill_9_all_arrive() {
    let _guard = BrokerBackUp;
    let mut svc =
        Service::start_with_config(|text| text + "\n[publisher]\ndelivery_timeout_ms = 3000\n");
    let topic = unique_topic("outage");
    svc.provision(&topic, 3);
    let produced = Mutex::new(Produced::default());

    producing(&svc, &topic, &produced, |wait| {
        wait("no records before the outage", &|p| p.acked.len() >= 200);
        kafka_script("down");
        produced.lock().expect("lock").mark();
        // Ingest keeps answering with the broker gone, and holds the records.
        wait("ingest stopped answering during the outage", &|p| {
            p.held_since_mark >= 5 && p.since_mark >= 20
        });
    });
    let (held, _, _) = svc.topic_counts(&topic).expect("topic view");
    assert!(held > 0, "nothing held during the outage");

    // KafFlow dies too, and comes back while the broker is still down.
    svc.kill9();
    svc.restart();
    let (after, _, _) = svc.topic_counts(&topic).expect("topic view");
    assert!(
        after >= held,
        "held records lost in the restart: {held} before, {after} after"
    );

    producing(&svc, &topic, &produced, |wait| {
        produced.lock().expect("lock").mark();
        wait("ingest does not answer after the restart", &|p| {
            p.held_since_mark >= 5
        });
        kafka_script("up");
        produced.lock().expect("lock").mark();
        // The spool drains and the topic goes back to the direct path.
        wait(
            "no call published directly after the broker came back",
            &|p| p.direct_since_mark >= 5,
        );
    });

    let produced = produced.into_inner().expect("lock");
    eprintln!(
        "{topic}: {} records in {} calls, {} calls held, slowest call {:?}",
        produced.acked.len(),
        produced.calls,
        produced.held_calls,
        produced.slowest
    );
    assert!(
        produced.slowest < CALL_LIMIT,
        "an ingest call took {:?}",
        produced.slowest
    );
    let total = produced.acked.len() as u64;
    // The published count may lag after the kill (direct sends are counted every 2 s).
    let (_, _, published) = svc.wait_topic_counts(&topic, SETTLE, |held, _, _| held == 0);
    eprintln!("{topic}: {total} acknowledged, {published} counted as published");
    let records = kafka_read_numbered(&topic, &produced.acked, SETTLE);
    let duplicates = assert_numbered_arrived(&records, &produced.acked);
    eprintln!(
        "{topic}: {} records read, {duplicates} duplicates",
        records.len()
    );
}
