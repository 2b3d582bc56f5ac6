//! Start-up benchmark (`make bench`): time from `kafflow serve` to ready, with and without a
//! snapshot, at 10,000, 100,000 and 1,000,000 events, and the rate of a full replay against
//! the bare read of the same rows.
//!
//! Each log is written straight through the store's own append API (the same event types and
//! hash chain as the service writes), not through HTTP. Its events are what a year of use
//! leaves: up to 10,000 topics requested, approved, provisioned and subscribed to, and for the
//! rest requests that were rejected, withdrawn or are still pending.
//!
//! - ready: the release binary is started on the log; the time until it prints its
//!   `listening on` line (the HTTP listener accepts from then on; `/healthz` is checked to
//!   answer 200 right after). Median of three starts. RSS is read from /proc after start.
//! - baseline: the bare read of the same rows with rusqlite in this process (one `SELECT` of
//!   every column of every row in seq order, each value looked at, nothing decoded or hashed):
//!   the floor for any replay of that log.
//! - replay: `Store::recover` of the whole log in this process (read, hash-chain check,
//!   decode, apply).
//!
//! `KAFFLOW_BENCH_STARTUP_SIZES` (e.g. `10000,100000`) picks the sizes;
//! `KAFFLOW_BENCH_STARTUP_KEEP=DIR` keeps each log in `DIR/<events>` for a profile (and, with
//! `KAFFLOW_BENCH_STARTUP_REUSE=1`, replays a log kept there before instead of writing one).
//! `KAFFLOW_BENCH_STARTUP_REPLAY_ONLY=1` measures the replay alone, split in its two halves:
//! reading (read, chain check and decode, with nothing applied) and applying (`State::apply`
//! over events decoded beforehand); no binary is started, no report row is written.

#[path = "common/report.rs"]
mod report;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafflow::events::{ChainHead, Durability, EventKind, NewEvent, Store, TopicSpec, Visibility};
use kafflow::State;
use rusqlite::{Connection, OpenFlags};
use uuid::Uuid;

const ACTIVE_TOPICS: u64 = 10_000;
const BATCH: usize = 4096;
const STARTS: usize = 3;
const SNAPSHOT_EVERY: u64 = 100_000;
const TARGET_READY_S: f64 = 0.5;
const TARGET_REPLAY_PER_S: f64 = 1_000_000.0;

fn sizes() -> Vec<u64> {
    std::env::var("KAFFLOW_BENCH_STARTUP_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn spec() -> TopicSpec {
    TopicSpec {
        partitions: 3,
        replication_factor: 1,
        config: [("retention.ms".to_string(), "604800000".to_string())].into(),
    }
}

/// The events of a log of `total` events, in order.
fn events(total: u64) -> impl Iterator<Item = NewEvent> {
    let active = ACTIVE_TOPICS.min(total / 100);
    let event = |actor: &str, topic: &str, id: Option<Uuid>, kind| {
        NewEvent::now(actor, Some(topic), id, kind)
    };
    let lives = (0..active).flat_map(move |n| {
        let topic = format!("orders-{n:05}");
        let id = Some(Uuid::now_v7());
        vec![
            event(
                "alice",
                &topic,
                id,
                EventKind::TopicRequested {
                    spec: spec(),
                    reason: Some(format!("service {n} publishes its orders")),
                    visibility: Visibility::Open,
                },
            ),
            event(
                "carol",
                &topic,
                id,
                EventKind::RequestApproved {
                    note: Some("ok".into()),
                },
            ),
            event(
                "system",
                &topic,
                id,
                EventKind::TopicProvisioned {
                    spec: spec(),
                    already_existed: false,
                },
            ),
            event("erin", &topic, None, EventKind::Subscribed {}),
        ]
    });
    let churn = (0u64..).flat_map(move |n| {
        let topic = format!("scratch-{n:07}");
        let id = Some(Uuid::now_v7());
        let requested = event(
            "bob",
            &topic,
            id,
            EventKind::TopicRequested {
                spec: spec(),
                reason: Some("a try".into()),
                visibility: Visibility::Open,
            },
        );
        match n % 50 {
            0 => vec![requested],
            k if k % 3 == 0 => vec![
                requested,
                event("bob", &topic, id, EventKind::RequestWithdrawn {}),
            ],
            _ => vec![
                requested,
                event(
                    "carol",
                    &topic,
                    id,
                    EventKind::RequestRejected {
                        reason: "use an existing topic".into(),
                    },
                ),
            ],
        }
    });
    lives.chain(churn).take(total as usize)
}

/// Writes a log of `total` events into `data_dir` with the store's append API.
fn write_log(runtime: &tokio::runtime::Runtime, data_dir: &Path, total: u64) -> ChainHead {
    let store = Store::open(data_dir, Durability::Normal).expect("open the log");
    let (writer, thread) = store.into_writer(ChainHead::default()).expect("writer");
    let mut pending = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    for event in events(total) {
        batch.push(event);
        if batch.len() == BATCH {
            pending.push(writer.append(std::mem::take(&mut batch)));
        }
        // A few batches in flight keep the writer busy without holding the log in memory.
        if pending.len() >= 4 {
            runtime.block_on(async {
                for rx in pending.drain(..) {
                    rx.await.expect("writer").expect("commit");
                }
            });
        }
    }
    if !batch.is_empty() {
        pending.push(writer.append(batch));
    }
    runtime.block_on(async {
        for rx in pending {
            rx.await.expect("writer").expect("commit");
        }
    });
    drop(writer);
    thread.join();
    kafflow::events::verify(data_dir).expect("the written log verifies")
}

/// The bare read: every column of every row in seq order, each value looked at.
fn bare_read(data_dir: &Path) -> (u64, Duration) {
    let conn = Connection::open_with_flags(
        data_dir.join("kafflow.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open");
    let started = Instant::now();
    let mut stmt = conn
        .prepare(
            "SELECT seq, id, at, kind, version, actor, topic, request_id, data, prev_hash, hash \
             FROM events WHERE seq > ?1 ORDER BY seq",
        )
        .expect("prepare");
    let mut rows = stmt.query([0i64]).expect("query");
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next().expect("row") {
        for i in 0..11 {
            bytes += match row.get_ref(i).expect("column") {
                rusqlite::types::ValueRef::Text(t) => t.len(),
                _ => 8,
            };
        }
        count += 1;
    }
    std::hint::black_box(bytes);
    (count, started.elapsed())
}

/// A full replay in this process.
fn replay(data_dir: &Path) -> Duration {
    let store = Store::open(data_dir, Durability::Normal).expect("open");
    let started = Instant::now();
    let (state, _, _) = store.recover::<State>(false).expect("replay");
    let elapsed = started.elapsed();
    drop(state);
    elapsed
}

/// The reading half of a replay: read, check and decode, nothing applied (each event is
/// dropped on the applying thread, as a replay frees it there).
fn read_only(data_dir: &Path) -> Duration {
    let store = Store::open(data_dir, Durability::Normal).expect("open");
    let started = Instant::now();
    store.replay(drop).expect("replay");
    started.elapsed()
}

/// The applying half of a replay: `State::apply` over events decoded beforehand, each handed
/// over as a replay does (what the state does not keep is freed inside the clock, as a replay
/// frees it on its applying thread).
fn apply_only(data_dir: &Path) -> Duration {
    let store = Store::open(data_dir, Durability::Normal).expect("open");
    let mut events = Vec::new();
    store.replay(|e| events.push(e)).expect("replay");
    let mut state = State::default();
    let started = Instant::now();
    for event in events {
        state.apply(event.body);
    }
    let elapsed = started.elapsed();
    std::hint::black_box(&state);
    elapsed
}

/// Best and median of `runs` timings of `f`.
fn best_median(runs: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    (times[0], times[times.len() / 2])
}

/// CPU time used so far, in clock ticks: by the whole process, and by the calling thread.
fn cpu_ticks() -> (u64, u64) {
    let ticks = |path: &str| -> u64 {
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        // After the command name (in parentheses, which may hold spaces): utime and stime are
        // the 12th and 13th fields.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0)
    };
    (ticks("/proc/self/stat"), ticks("/proc/thread-self/stat"))
}

/// `KAFFLOW_BENCH_STARTUP_REPLAY_ONLY`: the replay and its two halves, as events/s, and the
/// CPU time of each of the replay's threads per event. On a shared machine the wall clock of
/// a two-thread pipeline says as much about the other tenants as about the replay; the CPU
/// time does not, and the busier thread's bounds the rate on two free cores.
fn replay_split(data_dir: &Path, total: u64) {
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    bare_read(data_dir);
    let (bare, _) = best_median(3, || bare_read(data_dir).1);
    let runs = 5;
    let (all_before, main_before) = cpu_ticks();
    let (full_best, full_median) = best_median(runs, || replay(data_dir));
    let (all_after, main_after) = cpu_ticks();
    // Ticks are 10 ms: per event over all runs.
    let per_event_us = |ticks: u64| ticks as f64 * 10_000.0 / (runs as f64 * total as f64);
    let applying = per_event_us(main_after - main_before);
    let reading = per_event_us((all_after - all_before) - (main_after - main_before));
    let (read_best, read_median) = best_median(3, || read_only(data_dir));
    let (apply_best, apply_median) = best_median(3, || apply_only(data_dir));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{total:>9} events: bare {:.0}/s; replay best {:.0}/s median {:.0}/s; \
         read+check+decode best {:.0}/s median {:.0}/s; apply best {:.0}/s median {:.0}/s; \
         CPU per event in the replay: applying thread {applying:.2} us, reading thread \
         {reading:.2} us (bound on two free cores {:.0}/s); load {}",
        rate(bare),
        rate(full_best),
        rate(full_median),
        rate(read_best),
        rate(read_median),
        rate(apply_best),
        rate(apply_median),
        1e6 / applying.max(reading),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
}

/// Writes the snapshot a clean shutdown writes; returns its time and size.
fn snapshot(data_dir: &Path) -> (Duration, u64) {
    let store = Store::open(data_dir, Durability::Normal).expect("open");
    let (_, head, _) = store.recover::<State>(false).expect("replay");
    let started = Instant::now();
    let (writer, thread) = store
        .into_writer_snapshotting::<State>(head, u64::MAX, 0)
        .expect("writer");
    drop(writer);
    thread.join();
    let size = std::fs::metadata(data_dir.join("kafflow.snapshot"))
        .expect("a snapshot")
        .len();
    (started.elapsed(), size)
}

struct Start {
    ready: Duration,
    rss_mb: f64,
}

/// Starts the release binary on `data_dir` and measures it until ready.
fn start(dir: &Path, data_dir: &Path, snapshot_every: u64) -> Start {
    let config = dir.join("kafflow.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n[store]\nsynchronous = \"normal\"\n\
             snapshot_every = {snapshot_every}\n[watcher]\nreconcile_interval_ms = 3600000\n",
            bootstrap()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafflow"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ingest-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kafflow");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut http = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        if let Some(url) = line.strip_prefix("listening on ") {
            http = url.trim_end_matches('/').to_string();
            break;
        }
    }
    let ready = started.elapsed();
    assert!(!http.is_empty(), "kafflow did not start");
    assert_eq!(healthz(&http), 200, "/healthz once listening");
    let rss_mb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;
    // Killed: a clean stop would write a shutdown snapshot and change the next start.
    let _ = child.kill();
    let _ = child.wait();
    Start { ready, rss_mb }
}

/// The status of `GET /healthz`, over a plain socket.
fn healthz(url: &str) -> u16 {
    let addr = url.trim_start_matches("http://");
    let Ok(mut socket) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = write!(
        socket,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut reply = String::new();
    let _ = socket.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// 1,000,000 for 1000000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn median(mut starts: Vec<Start>) -> Start {
    starts.sort_by_key(|s| s.ready);
    starts.swap_remove(starts.len() / 2)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "start-up benchmark: ready = `listening on` printed (then /healthz 200), median of {STARTS}; \
         baseline = bare rusqlite read of the same rows"
    );
    println!(
        "{:>9} {:>9} {:>12} {:>12} {:>6} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "events",
        "db MB",
        "bare ev/s",
        "replay ev/s",
        "ratio",
        "snap ms",
        "snap MB",
        "ready s",
        "ready+snap",
        "RSS MB",
        "RSS+snap",
        "gen s"
    );
    let replay_only = std::env::var("KAFFLOW_BENCH_STARTUP_REPLAY_ONLY").is_ok_and(|v| v == "1");
    let reuse = std::env::var("KAFFLOW_BENCH_STARTUP_REUSE").is_ok_and(|v| v == "1");
    for total in sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mut reused = false;
        if let Ok(keep) = std::env::var("KAFFLOW_BENCH_STARTUP_KEEP") {
            // For a profile of the same log afterwards.
            let kept = Path::new(&keep).join(total.to_string());
            reused = reuse && kept.join("kafflow.db").exists();
            if !reused {
                let _ = std::fs::remove_dir_all(&kept);
                std::fs::create_dir_all(&kept).expect("keep dir");
            }
            std::os::unix::fs::symlink(&kept, &data_dir).expect("link");
        }
        let generated = Instant::now();
        let head = if reused {
            kafflow::events::verify(&data_dir).expect("the kept log verifies")
        } else {
            write_log(&runtime, &data_dir, total)
        };
        let gen_s = generated.elapsed().as_secs_f64();
        assert_eq!(head.seq, total);
        if replay_only {
            replay_split(&data_dir, total);
            continue;
        }
        let db_mb = std::fs::metadata(data_dir.join("kafflow.db"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1e6;
        // Warm the page cache once, as a restart on a live machine finds it.
        bare_read(&data_dir);
        let bare = (0..3)
            .map(|_| bare_read(&data_dir).1)
            .min()
            .unwrap_or_default();
        let full = (0..3).map(|_| replay(&data_dir)).min().unwrap_or_default();
        let bare_rate = total as f64 / bare.as_secs_f64();
        let replay_rate = total as f64 / full.as_secs_f64();
        let cold = median(
            (0..STARTS)
                .map(|_| start(dir.path(), &data_dir, 0))
                .collect(),
        );
        let (snap_time, snap_bytes) = snapshot(&data_dir);
        let warm = median(
            (0..STARTS)
                .map(|_| start(dir.path(), &data_dir, SNAPSHOT_EVERY))
                .collect(),
        );
        println!(
            "{total:>9} {db_mb:>9.0} {bare_rate:>12.0} {replay_rate:>12.0} {:>6.2} {:>10.0} {:>10.1} {:>9.3} {:>10.3} {:>10.0} {:>9.0} {gen_s:>9.1}",
            replay_rate / bare_rate,
            snap_time.as_secs_f64() * 1e3,
            snap_bytes as f64 / 1e6,
            cold.ready.as_secs_f64(),
            warm.ready.as_secs_f64(),
            cold.rss_mb,
            warm.rss_mb,
        );
        let events = thousands(total);
        report::row(
            "startup",
            &format!("full replay of {events} events (baseline: bare read)"),
            replay_rate,
            "events/s",
            Some(bare_rate),
            report::Target::AtLeast(TARGET_REPLAY_PER_S),
        );
        report::row(
            "startup",
            &format!("ready at {events} events, from a snapshot (baseline: bare read)"),
            warm.ready.as_secs_f64(),
            "s",
            Some(bare.as_secs_f64()),
            report::Target::AtMost(TARGET_READY_S),
        );
        report::row(
            "startup",
            &format!("ready at {events} events, full replay (baseline: bare read)"),
            cold.ready.as_secs_f64(),
            "s",
            Some(bare.as_secs_f64()),
            report::Target::None,
        );
        report::row(
            "startup",
            &format!("RSS after start at {events} events, from a snapshot"),
            warm.rss_mb,
            "MB",
            None,
            report::Target::None,
        );
        report::row(
            "startup",
            &format!("snapshot of {events} events: size"),
            snap_bytes as f64 / 1e6,
            "MB",
            None,
            report::Target::None,
        );
    }
}
