//! The Kafka-protocol gateway driven by clients that KafFlow did not write, through the real
//! binary and the real broker: Apache Kafka's own Java tools (`scripts/kafka.sh tool`),
//! kafka-python (a pure Python implementation of the protocol, in `.venv/`), and Debian's kcat
//! (librdkafka 2.0.2, older than the one KafFlow links, so versions are negotiated down). Each
//! authenticates with SASL/PLAIN: the principal's name and its token.
//!
//! Then the refusals as those clients see them, and a cluster of two brokers reached through
//! the gateway alone.
//!
//! `make client-deps` (run by `make test`) installs kcat and kafka-python. A test whose client
//! is missing fails under `CI=true` and reports itself skipped otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    kafka_committed, kafka_produce, kafka_read_until, kafka_read_until_at, unique_topic,
    KafkaRecord, Produce, Service,
};
use serde_json::{json, Value};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// A JVM start and a few round trips; a client that hangs longer has failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------ running a foreign client

/// What a finished client process left: exit code (None if it had to be killed), stdout, stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn both(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.stdout,
            tail(&self.stderr, 40)
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` with `stdin` fed to it; after `timeout` it is killed with everything it
/// started (a JVM under `scripts/kafka.sh` would otherwise outlive it and hold the pipes).
fn run(command: &mut Command, stdin: &[u8], timeout: Duration) -> Ran {
    use std::os::unix::process::CommandExt;
    let mut child = command
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin piped");
    let bytes = stdin.to_vec();
    // Dropping the pipe after the bytes is the client's end of input.
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let read = |from: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut from = from;
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break status.code(),
            None if Instant::now() >= deadline => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = feeder.join();
    Ran {
        code,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `client` can run. Missing, it fails the test under CI and skips it (with a notice on
/// stderr) elsewhere.
fn have(client: &str, found: bool) -> bool {
    if found {
        return true;
    }
    assert!(
        !in_ci(),
        "{client} is not installed: `make client-deps` (run by `make test`) installs it"
    );
    eprintln!("SKIPPED: {client} is not installed; `make client-deps` installs it");
    false
}

/// Debian's kcat with Debian's librdkafka. `cargo test` puts the build's own librdkafka (the
/// one the `rdkafka` crate bundles) on `LD_LIBRARY_PATH`, and kcat would load that one instead.
fn kcat_command() -> Command {
    let mut command = Command::new("kcat");
    command.env_remove("LD_LIBRARY_PATH");
    command
}

/// The librdkafka version kcat runs with, from `kcat -V` ("librdkafka 2.0.2 builtin...").
fn kcat_librdkafka() -> String {
    let out = kcat_command().arg("-V").output().expect("kcat -V");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("librdkafka ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no librdkafka version in `kcat -V`: {text}"))
        .to_string()
}

fn have_kcat() -> bool {
    let found = kcat_command()
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    have("kcat", found)
}

fn venv_python() -> PathBuf {
    Path::new(REPO).join(".venv/bin/python")
}

fn have_python() -> bool {
    let found = Command::new(venv_python())
        .args(["-c", "import kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    have("kafka-python (in .venv/)", found)
}

/// SASL/PLAIN credentials: a principal's name and its token, or anything a test makes up.
#[derive(Clone, Copy)]
struct Login<'a> {
    user: &'a str,
    password: &'a str,
}

fn login<'a>(svc: &'a Service, who: &'a str) -> Login<'a> {
    Login {
        user: who,
        password: svc.token(who),
    }
}

/// kafka-python through `tests/clients/kafka_client.py`: its one JSON answer (an `error` field
/// when the client raised).
fn python(gateway: &str, who: Option<Login<'_>>, args: &[&str]) -> Value {
    let mut command = Command::new(venv_python());
    command
        .arg(Path::new(REPO).join("tests/clients/kafka_client.py"))
        .args(["--bootstrap", gateway]);
    if let Some(who) = who {
        command.args(["--user", who.user, "--password", who.password]);
    }
    let ran = run(command.args(args), b"", CLIENT_TIMEOUT);
    let answer = ran
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    answer.unwrap_or_else(|| panic!("kafka-python {args:?} gave no answer: {ran}"))
}

/// Like [`python`], failing the test on a client error.
fn python_ok(gateway: &str, who: Login<'_>, args: &[&str]) -> Value {
    let answer = python(gateway, Some(who), args);
    assert!(
        answer.get("error").is_none(),
        "kafka-python {args:?} as {}: {answer}",
        who.user
    );
    answer
}

/// kcat with SASL/PLAIN (or none) against the gateway.
fn kcat(gateway: &str, who: Option<Login<'_>>, args: &[&str], stdin: &[u8]) -> Ran {
    let mut command = kcat_command();
    command.args(["-b", gateway, "-X", "socket.timeout.ms=10000"]);
    if let Some(who) = who {
        command.args([
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanisms=PLAIN",
            "-X",
            &format!("sasl.username={}", who.user),
            "-X",
            &format!("sasl.password={}", who.password),
        ]);
    }
    run(command.args(args), stdin, CLIENT_TIMEOUT)
}

/// The jars of the shared broker, as `OwnBroker` finds them.
fn kafka_libs() -> PathBuf {
    if let Ok(dir) = std::env::var("KAFKA_LIBS_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var("KAFKA_HOME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(REPO).join(".kafka"))
        .join("libs")
}

/// `scripts/kafka.sh ARGS` with the shared broker's jars.
fn kafka_sh(args: &[&str], env: &[(&str, String)], stdin: &[u8]) -> Ran {
    let mut command = Command::new("bash");
    command
        .arg("scripts/kafka.sh")
        .args(args)
        .current_dir(REPO)
        .env("KAFKA_LIBS_DIR", kafka_libs());
    for (key, value) in env {
        command.env(key, value);
    }
    run(&mut command, stdin, CLIENT_TIMEOUT)
}

/// A Java client's properties file for SASL/PLAIN over plaintext, in the service's temp dir.
fn java_config(svc: &Service, who: &str) -> PathBuf {
    let path = svc.root().join(format!("{who}-client.properties"));
    let text = format!(
        "security.protocol=SASL_PLAINTEXT\n\
         sasl.mechanism=PLAIN\n\
         sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
         username=\"{who}\" password=\"{}\";\n\
         request.timeout.ms=20000\n\
         default.api.timeout.ms=60000\n\
         max.block.ms=30000\n",
        svc.token(who)
    );
    std::fs::write(&path, text).expect("write client properties");
    path
}

// ------------------------------------------------------------------ checks

/// The `n` of each value `n-<n>`.
fn numbers<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
    values
        .into_iter()
        .map(|v| {
            v.strip_prefix("n-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected value {v:?}"))
        })
        .collect()
}

/// Asserts that the broker holds exactly `0..count` as `n-<i>`, record i at partition
/// `i % partitions`, each partition in the order sent.
#[track_caller]
fn assert_partitioned(records: &[KafkaRecord], count: u64, partitions: u64) {
    let mut by_partition: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for record in records {
        let n = numbers([record.value.as_str()])[0];
        assert_eq!(
            record.partition as u64,
            n % partitions,
            "n-{n} landed on partition {} (offset {}), not the one the client chose",
            record.partition,
            record.offset
        );
        by_partition.entry(record.partition).or_default().push(n);
    }
    for (partition, sent) in &by_partition {
        let expected: Vec<u64> = (0..count)
            .filter(|i| i % partitions == *partition as u64)
            .collect();
        assert_eq!(sent, &expected, "partition {partition}: order or content");
    }
    assert_eq!(
        by_partition.len() as u64,
        partitions.min(count),
        "records on partitions {:?}",
        by_partition.keys()
    );
}

/// The brokers a kcat `-L` lists, as `host:port`.
fn kcat_brokers(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("broker "))
        .filter_map(|l| l.split(" at ").nth(1))
        .map(|addr| {
            addr.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The port of `host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn peers(answer: &Value) -> Vec<String> {
    answer["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers in {answer}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts that none of `peers` is a broker port and that there is at least one.
#[track_caller]
fn assert_only_gateway(what: &str, peers: &[String], broker_ports: &[u16]) {
    assert!(!peers.is_empty(), "{what}: no open connection at all");
    for peer in peers {
        assert!(
            !broker_ports.contains(&port_of(peer)),
            "{what}: a connection went to the broker at {peer} (connections: {peers:?})"
        );
    }
}

fn broker_port() -> u16 {
    port_of(&common::bootstrap())
}

/// Files a create request as `who` with `extra` fields; returns its id.
fn request_topic_with(svc: &Service, who: &str, topic: &str, extra: Value) -> String {
    let mut body = json!({"topic": topic, "partitions": 1, "reason": "gateway test"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    common::id_of(&svc.create_request(who, body))
}

fn activate(svc: &Service, id: &str, topic: &str) {
    svc.approve("carol", id);
    svc.wait_request_status(id, "completed", Duration::from_secs(60));
    svc.wait_topic_status(topic, "active", Duration::from_secs(10));
}

// ------------------------------------------------------------------ Java

#[test]
fn java_topic_command_files_a_request_and_console_clients_round_trip() {
    let svc = Service::start_gateway();
    let gateway = svc.gateway_addr().to_string();
    let topic = unique_topic("gw-java");
    let alice = java_config(&svc, "alice");
    let erin = java_config(&svc, "erin");
    let alice = alice.to_str().expect("utf-8 path");
    let erin = erin.to_str().expect("utf-8 path");

    let create = kafka_sh(
        &[
            "tool",
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            &gateway,
            "--command-config",
            alice,
            "--create",
            "--topic",
            &topic,
            "--partitions",
            "2",
            "--replication-factor",
            "1",
        ],
        &[],
        b"",
    );
    let pattern = regex::Regex::new(&format!(
        r"KafFlow request ([0-9a-f]{{8}}-[0-9a-f-]{{27}}) for {} is pending approval",
        regex::escape(&topic)
    ))
    .expect("regex");
    let id = pattern
        .captures(&create.both())
        .map(|c| c[1].to_string())
        .unwrap_or_else(|| {
            panic!(
                "TopicCommand --create printed no pending request: {create}\nservice stderr:\n{}",
                svc.stderr_tail()
            )
        });
    assert!(
        create.both().contains("PolicyViolationException"),
        "the refusal is Kafka's POLICY_VIOLATION: {create}"
    );

    let request = svc.request(&id);
    assert_eq!(request["status"], "pending", "{request}");
    assert_eq!(request["topic"], topic.as_str(), "{request}");
    assert_eq!(request["partitions"], 2, "{request}");
    assert_eq!(request["requested_by"], "alice", "{request}");
    activate(&svc, &id, &topic);

    const N: u64 = 50;
    let lines: String = (0..N).map(|i| format!("n-{i}\n")).collect();
    let produced = kafka_sh(
        &[
            "tool",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            &gateway,
            "--topic",
            &topic,
            "--command-config",
            alice,
            "--command-property",
            "acks=all",
        ],
        &[],
        lines.as_bytes(),
    );
    assert!(
        produced.ok(),
        "ConsoleProducer through the gateway: {produced}"
    );

    let direct = kafka_read_until(&topic, Duration::from_secs(30), |r| r.len() as u64 >= N);
    let mut sent = numbers(direct.iter().map(|r| r.value.as_str()));
    sent.sort_unstable();
    assert_eq!(sent, (0..N).collect::<Vec<_>>(), "in the broker");

    let consumed = kafka_sh(
        &[
            "tool",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server",
            &gateway,
            "--topic",
            &topic,
            "--command-config",
            erin,
            "--group",
            "erin.console",
            "--from-beginning",
            "--max-messages",
            &N.to_string(),
            "--timeout-ms",
            "60000",
        ],
        &[],
        b"",
    );
    assert!(
        consumed.ok(),
        "ConsoleConsumer through the gateway: {consumed}"
    );
    let mut read = numbers(consumed.stdout.lines().filter(|l| !l.trim().is_empty()));
    read.sort_unstable();
    assert_eq!(read, (0..N).collect::<Vec<_>>(), "read back: {consumed}");
}

/// The Java consumer on the KIP-848 protocol (`group.protocol=consumer`): its group is run by
/// the broker through ConsumerGroupHeartbeat, forwarded by the gateway after the group rule.
#[test]
fn java_consumer_on_the_kip848_protocol_reads_commits_and_is_held_to_its_groups() {
    let svc = Service::start_gateway();
    let gateway = svc.gateway_addr().to_string();
    let topic = unique_topic("gw-kip848");
    svc.provision(&topic, 2);
    const N: u64 = 40;
    let records: Vec<Produce<'_>> = (0..N).map(|i| Produce::value(format!("n-{i}"))).collect();
    kafka_produce(&topic, &records);
    let erin = java_config(&svc, "erin");
    let erin = erin.to_str().expect("utf-8 path");
    let group = format!("erin.{topic}");
    let consume = |group: &str| {
        kafka_sh(
            &[
                "tool",
                "org.apache.kafka.tools.consumer.ConsoleConsumer",
                "--bootstrap-server",
                &gateway,
                "--topic",
                &topic,
                "--command-config",
                erin,
                "--command-property",
                "group.protocol=consumer",
                "--group",
                group,
                "--from-beginning",
                "--max-messages",
                &N.to_string(),
                "--timeout-ms",
                "60000",
            ],
            &[],
            b"",
        )
    };

    let consumed = consume(&group);
    assert!(
        consumed.ok(),
        "KIP-848 consumer through the gateway: {consumed}"
    );
    let mut read = numbers(consumed.stdout.lines().filter(|l| !l.trim().is_empty()));
    read.sort_unstable();
    assert_eq!(read, (0..N).collect::<Vec<_>>(), "read back: {consumed}");
    // Its offsets were committed through the gateway, in the broker.
    let committed = kafka_committed(&group, &topic, 2);
    assert!(
        committed.iter().all(Option::is_some),
        "committed offsets of {group}: {committed:?}"
    );
    assert_eq!(
        committed.iter().flatten().sum::<i64>(),
        N as i64,
        "every record's offset is committed"
    );
    // The broker runs it as a group of the new protocol, not a classic one.
    let listed = kafka_sh(
        &[
            "tool",
            "org.apache.kafka.tools.GroupsCommand",
            "--bootstrap-server",
            &common::bootstrap(),
            "--list",
        ],
        &[],
        b"",
    );
    let line = listed
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(group.as_str()))
        .unwrap_or_else(|| panic!("{group} is not listed: {listed}"));
    assert!(
        line.split_whitespace().any(|w| w == "Consumer"),
        "a group of the consumer protocol: {line}"
    );

    // Another principal's group is refused at the heartbeat.
    let refused = consume(&format!("alice.{topic}"));
    // ConsoleConsumer reports the error and ends with 0 messages (and exit code 0).
    assert!(
        refused.stdout.trim().is_empty()
            && refused.both().contains("Processed a total of 0 messages"),
        "another principal's group reads nothing: {refused}"
    );
    assert!(
        refused.both().contains("GroupAuthorizationException"),
        "refused with GROUP_AUTHORIZATION_FAILED: {refused}"
    );
    assert!(
        kafka_committed(&format!("alice.{topic}"), &topic, 2)
            .iter()
            .all(Option::is_none),
        "nothing committed for the refused group"
    );
}

// ------------------------------------------------------------------ Python

#[test]
fn kafka_python_produces_to_chosen_partitions_and_a_group_reads_and_commits() {
    if !have_python() {
        return;
    }
    let svc = Service::start_gateway();
    let gateway = svc.gateway_addr().to_string();
    let topic = unique_topic("gw-python");
    svc.provision(&topic, 3);

    const N: u64 = 60;
    let produced = python_ok(
        &gateway,
        login(&svc, "alice"),
        &[
            "produce",
            "--topic",
            &topic,
            "--count",
            &N.to_string(),
            "--partitions",
            "3",
        ],
    );
    let acks = produced["acks"].as_array().expect("acks");
    assert_eq!(acks.len() as u64, N, "{produced}");
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack[0], i as u64 % 3, "record {i} acknowledged on {ack}");
    }
    assert_only_gateway("producer", &peers(&produced), &[broker_port()]);

    let direct = kafka_read_until(&topic, Duration::from_secs(30), |r| r.len() as u64 >= N);
    assert_partitioned(&direct, N, 3);

    let consumed = python_ok(
        &gateway,
        login(&svc, "erin"),
        &[
            "consume",
            "--topic",
            &topic,
            "--group",
            "erin.python",
            "--count",
            &N.to_string(),
        ],
    );
    let records = consumed["records"].as_array().expect("records");
    let mut read = numbers(records.iter().map(|r| r["value"].as_str().unwrap_or("")));
    read.sort_unstable();
    assert_eq!(read, (0..N).collect::<Vec<_>>(), "{consumed}");
    for record in records {
        let n = numbers([record["value"].as_str().unwrap_or("")])[0];
        assert_eq!(record["partition"], n % 3, "{record}");
        assert_eq!(record["key"], format!("k{n}"), "{record}");
    }
    assert_eq!(
        consumed["committed"],
        json!({"0": N / 3, "1": N / 3, "2": N / 3}),
        "the group's commits through the gateway"
    );
    assert_only_gateway("consumer", &peers(&consumed), &[broker_port()]);
    // the commits are the broker's own: a plain client reading the offsets directly sees them
    assert_eq!(
        common::kafka_committed("erin.python", &topic, 3),
        vec![Some(N as i64 / 3); 3]
    );
}

// ------------------------------------------------------------------ kcat

#[test]
fn kcat_produces_and_consumes_and_sees_only_the_gateway() {
    if !have_kcat() {
        return;
    }
    // An older librdkafka than the one the gateway's own tests use: version negotiation
    // (ApiVersions, SASL handshake) with a client that knows less.
    let theirs = kcat_librdkafka();
    let bundled = rdkafka::util::get_rdkafka_version().1;
    assert_ne!(
        theirs, bundled,
        "kcat runs with its own librdkafka, not the bundled one"
    );
    let svc = Service::start_gateway();
    let gateway = svc.gateway_addr().to_string();
    let topic = unique_topic("gw-kcat");
    svc.provision(&topic, 2);
    let alice = login(&svc, "alice");

    let listing = kcat(&gateway, Some(alice), &["-L", "-t", &topic], b"");
    assert!(listing.ok(), "kcat -L: {listing}");
    let brokers = kcat_brokers(&listing.stdout);
    assert!(!brokers.is_empty(), "kcat -L lists no broker: {listing}");
    assert_only_gateway("kcat -L", &brokers, &[broker_port()]);
    assert!(
        listing.stdout.contains("2 partitions"),
        "kcat -L shows the topic with its partitions: {listing}"
    );

    // Record i with key k<i> to partition i % 2, one kcat per partition.
    const N: u64 = 40;
    for partition in 0..2u64 {
        let lines: String = (0..N)
            .filter(|i| i % 2 == partition)
            .map(|i| format!("k{i}:n-{i}\n"))
            .collect();
        let produced = kcat(
            &gateway,
            Some(alice),
            &[
                "-P",
                "-t",
                &topic,
                "-p",
                &partition.to_string(),
                "-K",
                ":",
                "-X",
                "acks=all",
            ],
            lines.as_bytes(),
        );
        assert!(produced.ok(), "kcat -P through the gateway: {produced}");
    }
    let direct = kafka_read_until(&topic, Duration::from_secs(30), |r| r.len() as u64 >= N);
    assert_partitioned(&direct, N, 2);
    for record in &direct {
        let n = numbers([record.value.as_str()])[0];
        assert_eq!(record.key.as_deref(), Some(format!("k{n}").as_str()));
    }

    // a plain consumer (no group) to the end of each partition
    let read = kcat(
        &gateway,
        Some(login(&svc, "erin")),
        &["-C", "-t", &topic, "-e", "-f", "%p %k %s\\n"],
        b"",
    );
    assert!(read.ok(), "kcat -C -e through the gateway: {read}");
    let mut seen: Vec<(u64, u64)> = read
        .stdout
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let partition = fields.next()?.parse().ok()?;
            let _key = fields.next()?;
            Some((partition, numbers([fields.next()?])[0]))
        })
        .collect();
    seen.sort_unstable();
    let mut want: Vec<(u64, u64)> = (0..N).map(|i| (i % 2, i)).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "kcat -C: {read}");

    // and as a member of erin's group
    let grouped = kcat(
        &gateway,
        Some(login(&svc, "erin")),
        &[
            "-G",
            "erin.kcat",
            "-o",
            "beginning",
            "-c",
            &N.to_string(),
            "-f",
            "%s\\n",
            &topic,
        ],
        b"",
    );
    assert!(grouped.ok(), "kcat -G through the gateway: {grouped}");
    let mut read = numbers(grouped.stdout.lines().filter(|l| l.starts_with("n-")));
    read.sort_unstable();
    assert_eq!(read, (0..N).collect::<Vec<_>>(), "kcat -G: {grouped}");
}

// ------------------------------------------------------------------ refusals

/// Kafka's error codes the refusals carry.
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;
const TOPIC_AUTHORIZATION_FAILED: i64 = 29;

/// Collects every refusal that came out differently, so one run shows them all.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    #[track_caller]
    fn finish(self, svc: &Service) {
        assert!(
            self.0.is_empty(),
            "{} refusals came out differently:\n\n{}\n\nservice stderr:\n{}",
            self.0.len(),
            self.0.join("\n\n"),
            svc.stderr_tail()
        );
    }
}

#[test]
fn refusals_as_foreign_clients_see_them() {
    let (python_there, kcat_there) = (have_python(), have_kcat());
    if !python_there && !kcat_there {
        return;
    }
    let svc = Service::start_gateway();
    let gateway = svc.gateway_addr().to_string();
    let open = unique_topic("gw-open");
    svc.provision(&open, 1);
    let restricted = unique_topic("gw-restricted");
    let id = request_topic_with(
        &svc,
        "alice",
        &restricted,
        json!({"visibility": "restricted"}),
    );
    activate(&svc, &id, &restricted);
    let rejected = unique_topic("gw-rejected");
    let id = request_topic_with(&svc, "alice", &rejected, json!({}));
    let (status, body) = svc.post(
        "carol",
        &format!("/api/v1/topic-requests/{id}/reject"),
        &json!({"reason": "not on this cluster"}),
    );
    assert_eq!(status, 200, "reject: {body}");
    let unknown = unique_topic("gw-unknown");
    let wrong = Login {
        user: "alice",
        password: "not-alices-token",
    };
    let mut seen = Mismatches::default();

    if python_there {
        let py = |who: Option<Login<'_>>, args: &[&str]| python(&gateway, who, args);
        let (alice, bob, erin) = (
            Some(login(&svc, "alice")),
            Some(login(&svc, "bob")),
            Some(login(&svc, "erin")),
        );

        let answer = py(None, &["check-auth"]);
        seen.check(answer.get("error").is_some(), || {
            format!("kafka-python without SASL got metadata: {answer}")
        });

        // A wrong password: refused at SaslAuthenticate. kafka-python reports it as a
        // bootstrap timeout, as it does against a broker's own SASL listener; the gateway's
        // count of refused authentications says the refusal came from SaslAuthenticate.
        let refused_before = gateway_auth_failures(&svc);
        let answer = py(Some(wrong), &["check-auth"]);
        seen.check(answer.get("error").is_some(), || {
            format!("kafka-python with a wrong password got metadata: {answer}")
        });
        seen.check(gateway_auth_failures(&svc) > refused_before, || {
            format!("the wrong password was not refused by SaslAuthenticate: {answer}")
        });

        let answer = py(
            erin,
            &[
                "consume",
                "--topic",
                &open,
                "--group",
                "alice.stolen",
                "--count",
                "1",
                "--timeout",
                "10",
            ],
        );
        seen.check(answer["error"] == "GroupAuthorizationFailedError", || {
            format!("kafka-python: erin in alice's group: {answer}")
        });

        let answer = py(erin, &["describe", "--topic", &restricted]);
        seen.check(answer["error_code"] == TOPIC_AUTHORIZATION_FAILED, || {
            format!("kafka-python: erin describes a restricted topic without a grant: {answer}")
        });
        let answer = py(
            erin,
            &[
                "consume",
                "--topic",
                &restricted,
                "--group",
                "erin.restricted",
                "--count",
                "1",
                "--timeout",
                "10",
            ],
        );
        // kafka-python's consumer logs the refusal and reads nothing rather than raising.
        let refused = answer["error"] == "TopicAuthorizationFailedError"
            || (answer["records"] == json!([])
                && answer["log"].to_string().contains("is not authorized"));
        seen.check(refused, || {
            format!("kafka-python: erin reads a restricted topic without a grant: {answer}")
        });

        // bob neither owns alice's topic nor holds a produce grant on it.
        let answer = py(bob, &["produce", "--topic", &open, "--count", "1"]);
        seen.check(answer["error"] == "TopicAuthorizationFailedError", || {
            format!("kafka-python: bob produces to alice's topic: {answer}")
        });

        let answer = py(alice, &["produce", "--topic", &rejected, "--count", "1"]);
        seen.check(answer["error"] == "TopicAuthorizationFailedError", || {
            format!("kafka-python: alice produces to her rejected topic: {answer}")
        });
        let answer = py(alice, &["describe", "--topic", &rejected]);
        seen.check(answer["error_code"] == TOPIC_AUTHORIZATION_FAILED, || {
            format!("kafka-python: alice describes her rejected topic: {answer}")
        });

        let answer = py(alice, &["describe", "--topic", &unknown]);
        seen.check(answer["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, || {
            format!("kafka-python: alice describes an unknown topic: {answer}")
        });
    }

    if kcat_there {
        let no_sasl = kcat(&gateway, None, &["-L", "-m", "10"], b"");
        seen.check(!no_sasl.ok() && !no_sasl.stdout.contains(&open), || {
            format!("kcat without SASL got metadata: {no_sasl}")
        });
        let bad = kcat(&gateway, Some(wrong), &["-L", "-m", "10"], b"");
        seen.check(!bad.ok() && bad.both().contains("uthentication"), || {
            format!("kcat with a wrong password: {bad}")
        });
        let group = kcat(
            &gateway,
            Some(login(&svc, "erin")),
            &["-G", "alice.stolen", "-c", "1", &open],
            b"",
        );
        // librdkafka prints the answer's error message where there is one, else the code's
        // name; kafka-python above checks the code itself.
        let refused = group.both().contains("Group authorization failed")
            || group.both().contains("\"alice.stolen\" is not allowed");
        seen.check(!group.ok() && refused, || {
            format!("kcat -G as erin in alice's group: {group}")
        });
        for (who, topic, error) in [
            ("alice", &rejected, "Topic authorization failed"),
            ("alice", &unknown, "Unknown topic or partition"),
            ("erin", &restricted, "Topic authorization failed"),
        ] {
            let listing = kcat(&gateway, Some(login(&svc, who)), &["-L", "-t", topic], b"");
            seen.check(listing.both().contains(error), || {
                format!("kcat -L -t {topic} as {who}, want {error:?}: {listing}")
            });
        }
    }

    // Nothing the refused clients did reached the broker as a topic.
    seen.check(common::kafka_topic_partitions(&unknown).is_none(), || {
        format!("{unknown} exists in the broker")
    });
    seen.check(common::kafka_topic_partitions(&rejected).is_none(), || {
        format!("{rejected} exists in the broker")
    });
    seen.finish(&svc);
}

// ------------------------------------------------------------------ two brokers

/// A cluster of two brokers of this test's own (`scripts/kafka.sh cluster`), on free ports and
/// in a folder under the target dir; stopped and removed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    ports: [u16; 3],
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kafka-cluster-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cluster dir");
        let bound: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports = [0, 1, 2].map(|i| bound[i].local_addr().expect("addr").port());
        drop(bound);
        let cluster = Cluster { dir, ports };
        let up = cluster.script(&["cluster", "up"]);
        assert!(up.ok(), "scripts/kafka.sh cluster up: {up}");
        cluster
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_CLUSTER_DIR", self.dir.path().display().to_string()),
            ("KAFKA_CLUSTER_PORT_1", self.ports[0].to_string()),
            ("KAFKA_CLUSTER_PORT_2", self.ports[1].to_string()),
            ("KAFKA_CLUSTER_CONTROLLER_PORT", self.ports[2].to_string()),
        ]
    }

    fn script(&self, args: &[&str]) -> Ran {
        kafka_sh(args, &self.env(), b"")
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{},127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    fn broker_ports(&self) -> [u16; 2] {
        [self.ports[0], self.ports[1]]
    }

    /// The leader of each partition, from `scripts/kafka.sh cluster describe` (Kafka's own
    /// admin client, straight to the brokers).
    fn leaders(&self, topic: &str) -> BTreeMap<u32, u32> {
        let described = self.script(&["cluster", "describe", topic]);
        assert!(described.ok(), "cluster describe {topic}: {described}");
        let field = |line: &str, name: &str| -> Option<u32> {
            let rest = line.split(&format!("{name}: ")).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        };
        described
            .stdout
            .lines()
            .filter_map(|l| Some((field(l, "Partition")?, field(l, "Leader")?)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let down = self.script(&["cluster", "down"]);
        if !down.ok() {
            eprintln!("could not stop the cluster: {down}");
        }
    }
}

#[test]
fn two_brokers_reached_through_the_gateway_only() {
    let (python_there, kcat_there) = (have_python(), have_kcat());
    if !python_there {
        return;
    }
    let cluster = Cluster::start();
    let svc = Service::start_gateway_at(&cluster.bootstrap(), |c| c);
    let gateway = svc.gateway_addr().to_string();
    let topic = unique_topic("gw-two");
    const PARTITIONS: u64 = 4;
    svc.provision(&topic, PARTITIONS as u32);

    let leaders = cluster.leaders(&topic);
    assert_eq!(leaders.len() as u64, PARTITIONS, "leaders: {leaders:?}");
    let leading: BTreeSet<u32> = leaders.values().copied().collect();
    assert_eq!(
        leading,
        BTreeSet::from([1, 2]),
        "each broker leads a partition: {leaders:?}"
    );

    let broker_ports = cluster.broker_ports();
    if kcat_there {
        let listing = kcat(
            &gateway,
            Some(login(&svc, "alice")),
            &["-L", "-t", &topic],
            b"",
        );
        assert!(listing.ok(), "kcat -L: {listing}");
        let brokers = kcat_brokers(&listing.stdout);
        assert_only_gateway("kcat -L", &brokers, &broker_ports);
    }

    const N: u64 = 80;
    let produced = python_ok(
        &gateway,
        login(&svc, "alice"),
        &[
            "produce",
            "--topic",
            &topic,
            "--count",
            &N.to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
        ],
    );
    for (i, ack) in produced["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .enumerate()
    {
        assert_eq!(ack[0], i as u64 % PARTITIONS, "record {i}: {ack}");
    }
    assert_only_gateway("producer", &peers(&produced), &broker_ports);

    let direct = kafka_read_until_at(&cluster.bootstrap(), &topic, Duration::from_secs(30), |r| {
        r.len() as u64 >= N
    });
    assert_partitioned(&direct, N, PARTITIONS);

    let consumed = python_ok(
        &gateway,
        login(&svc, "erin"),
        &[
            "consume",
            "--topic",
            &topic,
            "--group",
            "erin.two",
            "--count",
            &N.to_string(),
        ],
    );
    let records = consumed["records"].as_array().expect("records");
    let mut by_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for record in records {
        let n = numbers([record["value"].as_str().unwrap_or("")])[0];
        let partition = record["partition"].as_u64().expect("partition");
        assert_eq!(partition, n % PARTITIONS, "{record}");
        by_partition.entry(partition).or_default().push(n);
    }
    for (partition, read) in &by_partition {
        let want: Vec<u64> = (0..N).filter(|i| i % PARTITIONS == *partition).collect();
        assert_eq!(
            read, &want,
            "partition {partition} read through the gateway"
        );
    }
    assert_eq!(by_partition.len() as u64, PARTITIONS, "{consumed}");
    assert_only_gateway("consumer", &peers(&consumed), &broker_ports);
}

/// `kafflow_gateway_auth_failures_total` of the service now.
fn gateway_auth_failures(service: &Service) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", service.base_url()))
        .and_then(|r| r.text())
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("kafflow_gateway_auth_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
