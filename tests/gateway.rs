//! The Kafka-protocol gateway driven by the `rdkafka` crate (librdkafka), on the real broker:
//! idempotent producers to active and pending topics, consumer groups, admin requests turned
//! into governance, refusals, and a `kill -9` in the middle of held produce.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};

/// A client of the gateway signed in as `who` (SASL/PLAIN, the principal's token).
fn gateway_client(service: &Service, who: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", service.gateway_addr())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", who)
        .set("sasl.password", service.token(who));
    config
}

fn idempotent_producer(service: &Service, who: &str) -> FutureProducer {
    gateway_client(service, who)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("gateway producer")
}

/// Sends records `from..to` of `topic`, record i to partition i % partitions, and waits for
/// each answer; returns the answers in order.
fn send_numbered(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<usize>,
) -> Vec<Result<(i32, i64), KafkaError>> {
    // Queued at once (pipelined), answers awaited in order.
    let sends: Vec<_> = range
        .map(|i| {
            let key = format!("k{i}");
            let value = format!("v{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&i.to_string()),
            });
            producer
                .send_result(
                    FutureRecord::to(topic)
                        .partition(i as i32 % partitions)
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
        })
        .collect();
    block_on(async {
        let mut out = Vec::new();
        for send in sends {
            out.push(match send {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
            });
        }
        out
    })
}

/// Every record i of `0..n` is in Kafka exactly once, in partition i % partitions, in order
/// of i within its partition, with its key and header.
fn assert_numbered_in_kafka(topic: &str, partitions: i32, n: usize) {
    let records = kafka_read_until(topic, Duration::from_secs(60), |r| r.len() >= n);
    assert_eq!(records.len(), n, "{topic}: records in Kafka");
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut seen = vec![false; n];
    for r in &records {
        let i: usize = r.value[1..].parse().expect("numbered value");
        assert!(!seen[i], "{topic}: record {i} twice");
        seen[i] = true;
        assert_eq!(
            r.partition,
            i as i32 % partitions,
            "{topic}: record {i}'s partition"
        );
        assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_str()));
        assert_eq!(
            r.headers.get("n").map(String::as_str),
            Some(i.to_string().as_str())
        );
        if let Some(&before) = last.get(&r.partition) {
            assert!(
                (i as i64) > before,
                "{topic}: record {i} after {before} in partition {}",
                r.partition
            );
        }
        last.insert(r.partition, i as i64);
    }
}

#[test]
fn an_idempotent_producer_writes_active_topics_directly_and_pending_ones_through_the_spool() {
    let service = Service::start_gateway();
    let active = unique_topic("gw-active");
    service.provision(&active, 3);
    let pending = unique_topic("gw-pending");
    let id = service.request_topic("alice", &pending, 3);

    let producer = idempotent_producer(&service, "alice");
    for (i, answer) in send_numbered(&producer, &active, 3, 0..30)
        .iter()
        .enumerate()
    {
        let (partition, offset) = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("active {i}: {e}"));
        assert_eq!(*partition, i as i32 % 3);
        assert!(*offset >= 0, "a direct write has its offset");
    }
    for (i, answer) in send_numbered(&producer, &pending, 3, 0..30)
        .iter()
        .enumerate()
    {
        // librdkafka numbers a batch's records from the -1 the gateway answers: no check.
        let (partition, _) = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("pending {i}: {e}"));
        assert_eq!(*partition, i as i32 % 3);
    }
    assert_eq!(
        kafka_topic_partitions(&pending),
        None,
        "nothing reaches Kafka before approval"
    );
    let (_, topic) = service.topic(&pending);
    assert_eq!(topic["held"], 30, "held while pending: {topic}");

    service.approve("carol", &id);
    service.wait_topic_status(&pending, "active", Duration::from_secs(60));
    // The same producer goes on; its later batches follow the held ones.
    for answer in send_numbered(&producer, &pending, 3, 30..40) {
        answer.expect("after approval");
    }
    for answer in send_numbered(&producer, &active, 3, 30..40) {
        answer.expect("active, later");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    assert_numbered_in_kafka(&active, 3, 40);
    assert_numbered_in_kafka(&pending, 3, 40);
}

#[test]
fn a_consumer_group_reads_through_the_gateway_and_commits() {
    let service = Service::start_gateway();
    let topic = unique_topic("gw-group");
    service.provision(&topic, 2);
    service.grant("erin", &topic, "consume");
    let producer = idempotent_producer(&service, "alice");
    for answer in send_numbered(&producer, &topic, 2, 0..20) {
        answer.expect("produce");
    }
    let group = format!("erin.{}", unique_topic("gw"));
    let consumer: BaseConsumer = gateway_client(&service, "erin")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("gateway consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while values.len() < 20 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("consume through the gateway");
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let header = message
                .headers()
                .and_then(|h| h.iter().next().map(|h| h.key.to_string()));
            assert_eq!(header.as_deref(), Some("n"));
            values.push(value);
        }
    }
    assert_eq!(values.len(), 20, "read through the gateway: {values:?}");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit through the gateway");
    let committed = kafka_committed(&group, &topic, 2);
    let total: i64 = committed.iter().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(total, 20, "committed offsets in Kafka: {committed:?}");
}

fn poll_error(consumer: &BaseConsumer, timeout: Duration) -> Option<KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
            return Some(e);
        }
    }
    None
}

fn code_of(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    error.rdkafka_error_code()
}

#[test]
fn refusals_arrive_as_kafka_errors() {
    let service = Service::start_gateway();
    let topic = unique_topic("gw-refuse");
    service.provision(&topic, 1);

    // Another principal's group.
    service.grant("erin", &topic, "consume");
    let consumer: BaseConsumer = gateway_client(&service, "erin")
        .set("group.id", "alice.not-erins")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let error = poll_error(&consumer, Duration::from_secs(30)).expect("an error for the group");
    assert_eq!(
        code_of(&error),
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        "{error}"
    );

    let quick = |who: &str| -> FutureProducer {
        gateway_client(&service, who)
            .set("message.timeout.ms", "8000")
            .create()
            .expect("producer")
    };
    let send_one = |producer: &FutureProducer, topic: &str| -> KafkaError {
        block_on(async {
            producer
                .send(
                    FutureRecord::<str, str>::to(topic).payload("x"),
                    Duration::from_secs(10),
                )
                .await
                .expect_err("refused")
                .0
        })
    };
    // A restricted topic without a grant.
    let restricted = unique_topic("gw-restricted");
    let request = service.create_request(
        "alice",
        json!({"topic": restricted, "partitions": 1, "visibility": "restricted"}),
    );
    service.approve("carol", &id_of(&request));
    service.wait_topic_status(&restricted, "active", Duration::from_secs(60));
    let error = send_one(&quick("bob"), &restricted);
    assert_eq!(
        code_of(&error),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "{error}"
    );
    // A rejected topic.
    let rejected = unique_topic("gw-rejected");
    let id = service.request_topic("alice", &rejected, 1);
    let (status, body) = service.post(
        "carol",
        &format!("/api/v1/topic-requests/{id}/reject"),
        &json!({"reason": "not this one"}),
    );
    assert_eq!(status, 200, "{body}");
    let error = send_one(&quick("alice"), &rejected);
    assert_eq!(
        code_of(&error),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "{error}"
    );
    // An unknown topic, and one that exists in Kafka but that KafFlow does not govern.
    let unknown = unique_topic("gw-unknown");
    let ungoverned = unique_topic("gw-ungoverned");
    kafka_create_topic(&ungoverned, 1);
    let client: BaseConsumer = gateway_client(&service, "alice").create().expect("client");
    for name in [&unknown, &ungoverned, &rejected, &restricted] {
        let metadata = client
            .fetch_metadata(Some(name), Duration::from_secs(10))
            .expect("metadata");
        let error = metadata.topics().first().and_then(|t| t.error());
        let expected = if name == &rejected {
            Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        } else if name == &restricted {
            None
        } else {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
        };
        assert_eq!(
            error.map(RDKafkaErrorCode::from),
            expected,
            "metadata of {name}"
        );
    }
    kafka_delete_topic(&ungoverned);

    // A wrong password, and no SASL at all: no metadata.
    let wrong: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", service.gateway_addr())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "alice")
        .set("sasl.password", "not-the-token")
        .create()
        .expect("client");
    let error = wrong
        .fetch_metadata(None, Duration::from_secs(5))
        .expect_err("a wrong password gets nothing");
    assert!(!error.to_string().is_empty());
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", service.gateway_addr())
        .create()
        .expect("client");
    assert!(
        plain.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "a client without SASL gets nothing"
    );
    let text = reqwest::blocking::get(format!("{}/metrics", service.base_url()))
        .and_then(|r| r.text())
        .expect("metrics");
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("kafflow_gateway_auth_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "the refused sign-in is counted:\n{text}");
    assert!(text.contains("kafflow_gateway_requests_total{api=\"metadata\"}"));
}

#[test]
fn metadata_shows_only_what_the_principal_may_see_and_only_gateway_addresses() {
    let service = Service::start_gateway();
    let mine = unique_topic("gw-mine");
    service.provision(&mine, 2);
    let pending = unique_topic("gw-meta-pending");
    service.request_topic("alice", &pending, 4);
    let client: BaseConsumer = gateway_client(&service, "alice").create().expect("client");
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata");
    let gateway_host = service
        .gateway_addr()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for broker in metadata.brokers() {
        assert_eq!(broker.host(), gateway_host);
        assert_ne!(
            broker.port().to_string(),
            bootstrap().rsplit(':').next().unwrap_or_default(),
            "no broker port is advertised"
        );
    }
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(names.contains(&mine.as_str()), "{names:?}");
    let shown = metadata
        .topics()
        .iter()
        .find(|t| t.name() == pending)
        .unwrap_or_else(|| panic!("the pending topic is shown to its requester: {names:?}"));
    assert_eq!(shown.partitions().len(), 4, "with its requested partitions");
    assert!(
        !names.iter().any(|n| n.starts_with("__")),
        "internal topics are not shown: {names:?}"
    );
    // bob did not request the pending topic and holds no grant on it.
    let bobs: BaseConsumer = gateway_client(&service, "bob").create().expect("client");
    let seen = bobs
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata");
    assert!(
        !seen.topics().iter().any(|t| t.name() == pending),
        "bob does not see alice's pending topic"
    );
}

#[test]
fn create_and_delete_topics_become_requests_for_the_sasl_principal() {
    let service = Service::start_gateway();
    let admin: AdminClient<DefaultClientContext> = gateway_client(&service, "alice")
        .create()
        .expect("admin client");
    let topic = unique_topic("gw-created");
    let new = NewTopic::new(&topic, 2, TopicReplication::Fixed(1)).set("retention.ms", "3600000");

    // validate_only checks and files nothing.
    let checked = block_on(admin.create_topics([&new], &AdminOptions::new().validate_only(true)))
        .expect("create topics answer");
    assert_eq!(checked[0].as_ref().map(String::as_str), Ok(topic.as_str()));
    let requests = Value::Array(service.list_all(
        "carol",
        &format!("/api/v1/topic-requests?topic={topic}"),
        "requests",
    ));
    assert_eq!(requests.as_array().map(Vec::len), Some(0), "{requests}");

    let answer = block_on(admin.create_topics([&new], &AdminOptions::new())).expect("answer");
    assert_eq!(
        answer[0],
        Err((topic.clone(), RDKafkaErrorCode::PolicyViolation)),
        "a create is a request"
    );
    let requests = Value::Array(service.list_all(
        "carol",
        &format!("/api/v1/topic-requests?topic={topic}"),
        "requests",
    ));
    let request = &requests[0];
    assert_eq!(request["status"], "pending", "{requests}");
    assert_eq!(request["requested_by"], "alice");
    assert_eq!(request["partitions"], 2);
    assert_eq!(request["config"]["retention.ms"], "3600000");
    let bad = NewTopic::new("Bad Name!", 1, TopicReplication::Fixed(1));
    let answer = block_on(admin.create_topics([&bad], &AdminOptions::new())).expect("answer");
    assert_eq!(
        answer[0],
        Err(("Bad Name!".to_string(), RDKafkaErrorCode::InvalidTopic))
    );
    let many = unique_topic("gw-many");
    let too_many = NewTopic::new(&many, 1000, TopicReplication::Fixed(1));
    let answer = block_on(admin.create_topics([&too_many], &AdminOptions::new())).expect("answer");
    assert!(
        matches!(&answer[0], Err((_, RDKafkaErrorCode::InvalidPartitions))),
        "{answer:?}"
    );

    service.approve("carol", &id_of(request));
    service.wait_topic_status(&topic, "active", Duration::from_secs(60));
    let answer = block_on(admin.delete_topics(&[&topic], &AdminOptions::new())).expect("answer");
    assert_eq!(
        answer[0],
        Err((topic.clone(), RDKafkaErrorCode::PolicyViolation))
    );
    let requests = Value::Array(service.list_all(
        "carol",
        &format!("/api/v1/topic-requests?topic={topic}"),
        "requests",
    ));
    let kinds: Vec<&str> = requests
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] == "pending")
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["delete"], "{requests}");
    assert_eq!(
        kafka_topic_partitions(&topic),
        Some(2),
        "still there until approved"
    );
}

#[test]
fn a_kill_in_the_middle_of_held_produce_loses_nothing_acknowledged() {
    let mut service = Service::start_gateway();
    let topic = unique_topic("gw-crash");
    let id = service.request_topic("alice", &topic, 2);
    let producer = idempotent_producer(&service, "alice");
    let first = send_numbered(&producer, &topic, 2, 0..200);
    assert!(first.iter().all(Result::is_ok), "before the kill");
    // Sends in flight while the service dies: some may fail, every success must survive.
    let sending = {
        let producer = producer.clone();
        let topic = topic.clone();
        std::thread::spawn(move || send_numbered(&producer, &topic, 2, 200..400))
    };
    std::thread::sleep(Duration::from_millis(30));
    service.restart();
    let second = sending.join().expect("sender");
    let acked: Vec<usize> = first
        .iter()
        .chain(second.iter())
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    drop(producer);
    service.approve("carol", &id);
    service.wait_topic_status(&topic, "active", Duration::from_secs(60));
    let records = kafka_read_until(&topic, Duration::from_secs(60), |r| r.len() >= acked.len());
    let values: std::collections::HashSet<String> =
        records.iter().map(|r| r.value.clone()).collect();
    for i in &acked {
        assert!(
            values.contains(&format!("v{i}")),
            "acknowledged record {i} lost ({} acked, {} in Kafka)",
            acked.len(),
            records.len()
        );
    }
    assert!(acked.len() >= 200);
}

#[test]
fn a_revoked_token_ends_its_gateway_connections() {
    let service = Service::start_gateway();
    let topic = unique_topic("gw-revoke");
    service.provision(&topic, 1);
    let (id, token) = service.issue_token("gw-reader", &["consumer"]);
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", service.gateway_addr())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "gw-reader")
        .set("sasl.password", &token)
        .create()
        .expect("client");
    client
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata with the issued token");
    let (status, body) = service.send(
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        Some(service.token("carol")),
        None,
    );
    assert_eq!(status, 200, "{body}");
    // The open connection is closed, and signing in again is refused.
    assert!(
        wait_until(Duration::from_secs(20), || client
            .fetch_metadata(None, Duration::from_secs(2))
            .is_err()),
        "the revoked token still reads metadata"
    );
}

#[test]
fn with_request_unknown_topics_a_producer_asks_for_a_topic_by_writing_to_it() {
    let service = Service::start_gateway_at(&bootstrap(), |text| {
        text + "request_unknown_topics = true\n"
    });
    let topic = unique_topic("gw-asked");
    let producer = idempotent_producer(&service, "alice");
    for answer in send_numbered(&producer, &topic, 3, 0..12) {
        answer.expect("held while the request waits");
    }
    let requests = Value::Array(service.list_all(
        "carol",
        &format!("/api/v1/topic-requests?topic={topic}"),
        "requests",
    ));
    let request = &requests[0];
    assert_eq!(request["status"], "pending", "{requests}");
    assert_eq!(request["requested_by"], "alice");
    assert_eq!(request["partitions"], 3, "the policy's default");
    service.approve("carol", &id_of(request));
    service.wait_topic_status(&topic, "active", Duration::from_secs(60));
    assert_numbered_in_kafka(&topic, 3, 12);
    // A consumer-only principal's question files nothing.
    let other = unique_topic("gw-not-asked");
    let client: BaseConsumer = gateway_client(&service, "erin").create().expect("client");
    let _ = client.fetch_metadata(Some(&other), Duration::from_secs(10));
    let requests = Value::Array(service.list_all(
        "carol",
        &format!("/api/v1/topic-requests?topic={other}"),
        "requests",
    ));
    assert_eq!(requests.as_array().map(Vec::len), Some(0), "{requests}");
}

#[test]
fn every_compression_codec_passes_through_direct_and_held() {
    let service = Service::start_gateway();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let active = unique_topic(&format!("gw-{codec}-active"));
        service.provision(&active, 2);
        let pending = unique_topic(&format!("gw-{codec}-pending"));
        let id = service.request_topic("alice", &pending, 2);
        let producer: FutureProducer = gateway_client(&service, "alice")
            .set("enable.idempotence", "true")
            .set("compression.type", codec)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for topic in [&active, &pending] {
            for answer in send_numbered(&producer, topic, 2, 0..20) {
                answer.unwrap_or_else(|e| panic!("{codec} to {topic}: {e}"));
            }
        }
        service.approve("carol", &id);
        service.wait_topic_status(&pending, "active", Duration::from_secs(60));
        assert_numbered_in_kafka(&active, 2, 20);
        assert_numbered_in_kafka(&pending, 2, 20);
    }
}

/// A librdkafka client that signs in with SASL/OAUTHBEARER, handing over a JWT.
struct Bearer(String);

impl rdkafka::ClientContext for Bearer {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        Ok(rdkafka::client::OAuthToken {
            token: self.0.clone(),
            principal_name: "jo".into(),
            lifetime_ms: (chrono::Utc::now().timestamp() + 600) * 1000,
        })
    }
}

impl rdkafka::producer::ProducerContext for Bearer {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[test]
fn a_jwt_signs_in_with_oauthbearer() {
    let idp = TestIdp::new();
    let service = Service::start_gateway_at(&bootstrap(), |text| text + &idp.config);
    let topic = unique_topic("gw-jwt");
    let request = service.create_request(
        "alice",
        json!({"topic": topic, "partitions": 1, "visibility": "restricted"}),
    );
    service.approve("carol", &id_of(&request));
    service.wait_topic_status(&topic, "active", Duration::from_secs(60));
    let bearer = |jwt: String| -> rdkafka::producer::ThreadedProducer<Bearer> {
        ClientConfig::new()
            .set("bootstrap.servers", service.gateway_addr())
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "OAUTHBEARER")
            .create_with_context(Bearer(jwt))
            .expect("OAUTHBEARER client")
    };
    // A consumer's JWT: it signs in, and sees the topics it may read once granted.
    let client = bearer(idp.token("jo", &["consumer"], 600));
    let metadata = client
        .client()
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata with a JWT");
    assert!(!metadata.brokers().is_empty());
    assert!(
        !metadata.topics().iter().any(|t| t.name() == topic),
        "jo holds no grant on the restricted topic yet"
    );
    let jwt = idp.token("jo", &["consumer"], 600);
    let (status, request) = service.send_as(
        &jwt,
        "POST",
        "/api/v1/access-requests",
        Some(&json!({"topic": topic, "access": "consume"})),
    );
    assert_eq!(status, 201, "{request}");
    let (status, reply) = service.post(
        "carol",
        &format!("/api/v1/access-requests/{}/approve", id_of(&request)),
        &json!({}),
    );
    assert_eq!(status, 200, "{reply}");
    let metadata = client
        .client()
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata with a JWT");
    assert!(
        metadata.topics().iter().any(|t| t.name() == topic),
        "jo sees the topic it may read"
    );
    // An expired JWT is refused at SaslAuthenticate.
    let expired = bearer(idp.token("jo", &["consumer"], -3600));
    assert!(expired
        .client()
        .fetch_metadata(None, Duration::from_secs(5))
        .is_err());
}

/// A raw Kafka connection, for requests no well-behaved client sends.
struct Raw(std::net::TcpStream);

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw(stream)
    }

    fn send<T: kafka_protocol::protocol::Encodable>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        body: &T,
    ) {
        use kafka_protocol::protocol::Encodable;
        let mut header = kafka_protocol::messages::RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        let mut buf = bytes::BytesMut::new();
        header
            .encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        self.send_payload(&buf);
    }

    fn send_payload(&mut self, payload: &[u8]) {
        use std::io::Write;
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        let _ = self.0.write_all(&frame);
    }

    /// The next answer's payload, or None when the gateway closed the connection.
    fn answer(&mut self) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut size = [0u8; 4];
        self.0.read_exact(&mut size).ok()?;
        let mut payload = vec![0u8; i32::from_be_bytes(size) as usize];
        self.0.read_exact(&mut payload).ok()?;
        Some(payload)
    }

    fn sign_in(addr: &str, who: &str, token: &str) -> Raw {
        use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
        let mut raw = Raw::connect(addr);
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = kafka_protocol::protocol::StrBytes::from_static_str("PLAIN");
        raw.send(ApiKey::SaslHandshake, 1, &handshake);
        raw.answer().expect("handshake answer");
        let mut authenticate = SaslAuthenticateRequest::default();
        authenticate.auth_bytes = bytes::Bytes::from(format!("\0{who}\0{token}"));
        raw.send(ApiKey::SaslAuthenticate, 2, &authenticate);
        let answer = raw.answer().expect("authenticate answer");
        // Header (correlation id, tagged fields), then the error code.
        assert_eq!(&answer[5..7], &[0, 0], "signed in");
        raw
    }
}

/// SaslHandshake v0 (what clients before KIP-152 send, and what librdkafka 2.0 needs to see
/// offered): the client's token follows bare, without a request header, and so does the
/// answer. A wrong token closes the connection, as a broker does.
#[test]
fn sasl_handshake_v0_takes_a_bare_token() {
    use kafka_protocol::messages::{ApiKey, MetadataRequest, SaslHandshakeRequest};
    let service = Service::start_gateway();
    let addr = service.gateway_addr().to_string();
    let handshake = |raw: &mut Raw| {
        let mut asked = SaslHandshakeRequest::default();
        asked.mechanism = kafka_protocol::protocol::StrBytes::from_static_str("PLAIN");
        raw.send(ApiKey::SaslHandshake, 0, &asked);
        let answer = raw.answer().expect("handshake answer");
        // Correlation id, then the error code.
        assert_eq!(&answer[4..6], &[0, 0], "PLAIN accepted: {answer:?}");
    };

    let mut raw = Raw::connect(&addr);
    handshake(&mut raw);
    raw.send_payload(format!("\0alice\0{}", service.token("alice")).as_bytes());
    assert_eq!(
        raw.answer(),
        Some(Vec::new()),
        "an empty server token: signed in"
    );
    raw.send(ApiKey::Metadata, 12, &MetadataRequest::default());
    let answer = raw.answer().expect("a Metadata answer once signed in");
    assert_eq!(
        &answer[..4],
        &7i32.to_be_bytes(),
        "the request's correlation id"
    );

    let mut raw = Raw::connect(&addr);
    handshake(&mut raw);
    raw.send_payload(b"\0alice\0not-the-token");
    assert_eq!(raw.answer(), None, "a wrong token closes the connection");
    let failures = service.metric("kafflow_gateway_auth_failures_total");
    assert!(failures >= 1.0, "the refusal is counted: {failures}");
}

#[test]
fn hostile_frames_close_their_connection_and_nothing_else() {
    let service = Service::start_gateway();
    let addr = service.gateway_addr().to_string();
    // A Metadata v1 request claiming 2^31-1 topics in 4 bytes: refused, not reserved.
    let mut raw = Raw::sign_in(&addr, "alice", service.token("alice"));
    let mut payload = Vec::new();
    payload.extend_from_slice(&3i16.to_be_bytes()); // Metadata
    payload.extend_from_slice(&1i16.to_be_bytes()); // v1
    payload.extend_from_slice(&9i32.to_be_bytes()); // correlation id
    payload.extend_from_slice(&(-1i16).to_be_bytes()); // no client id
    payload.extend_from_slice(&i32::MAX.to_be_bytes()); // topics: 2^31-1 of them
    raw.send_payload(&payload);
    assert_eq!(raw.answer(), None, "the connection is closed");
    // Before SASL, a frame larger than 512 KiB is refused before it is read.
    let mut raw = Raw::connect(&addr);
    raw.send_payload(&vec![0u8; 600 * 1024]);
    assert_eq!(raw.answer(), None, "the connection is closed");
    // A request other than ApiVersions or SASL before signing in.
    let mut raw = Raw::connect(&addr);
    raw.send(
        kafka_protocol::messages::ApiKey::Metadata,
        12,
        &kafka_protocol::messages::MetadataRequest::default(),
    );
    assert_eq!(raw.answer(), None, "the connection is closed");
    // The service is still there for everyone else.
    let client: BaseConsumer = gateway_client(&service, "alice").create().expect("client");
    client
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata after the hostile frames");
}

#[test]
fn create_partitions_is_refused_and_config_reads_are_forwarded() {
    use rdkafka::admin::{NewPartitions, ResourceSpecifier};
    let service = Service::start_gateway();
    let topic = unique_topic("gw-admin");
    service.provision(&topic, 1);
    let admin: AdminClient<DefaultClientContext> = gateway_client(&service, "alice")
        .create()
        .expect("admin client");
    let options = AdminOptions::new();

    let grown = block_on(admin.create_partitions([&NewPartitions::new(&topic, 4)], &options))
        .expect("answer");
    assert_eq!(
        grown[0],
        Err((topic.clone(), RDKafkaErrorCode::PolicyViolation)),
        "CreatePartitions"
    );
    assert_eq!(
        kafka_topic_partitions(&topic),
        Some(1),
        "nothing changed in Kafka"
    );

    // Reading a visible topic's config is forwarded to the broker.
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &options))
        .expect("answer");
    let own = described[0].as_ref().expect("alice's topic is described");
    assert!(own.get("retention.ms").is_some(), "{:?}", own.entries);
}

#[test]
fn config_reads_are_governed_and_config_writes_refused_on_the_wire() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{
        ApiKey, DescribeConfigsRequest, DescribeConfigsResponse, ResponseHeader,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    let service = Service::start_gateway();
    let restricted = unique_topic("gw-config-restricted");
    let request = service.create_request(
        "alice",
        json!({"topic": restricted, "partitions": 1, "visibility": "restricted"}),
    );
    service.approve("carol", &id_of(&request));
    service.wait_topic_status(&restricted, "active", Duration::from_secs(60));
    let ask = |who: &str| -> DescribeConfigsResponse {
        let mut raw = Raw::sign_in(service.gateway_addr(), who, service.token(who));
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = 2;
        resource.resource_name = StrBytes::from_string(restricted.clone());
        let mut body = DescribeConfigsRequest::default();
        body.resources = vec![resource];
        raw.send(ApiKey::DescribeConfigs, 1, &body);
        let answer = raw.answer().expect("an answer");
        let mut buf = bytes::Bytes::from(answer);
        ResponseHeader::decode(&mut buf, 0).expect("header");
        DescribeConfigsResponse::decode(&mut buf, 1).expect("body")
    };
    // bob neither owns the restricted topic nor holds a grant: refused, no configs.
    let refused = ask("bob");
    assert_eq!(refused.results.len(), 1);
    assert_eq!(
        refused.results[0].error_code, 29,
        "TOPIC_AUTHORIZATION_FAILED"
    );
    assert!(refused.results[0].configs.is_empty());
    // alice owns it: the broker's configs.
    let own = ask("alice");
    assert_eq!(own.results[0].error_code, 0);
    assert!(own.results[0]
        .configs
        .iter()
        .any(|c| c.name.as_str() == "retention.ms"));

    // Changing a config is the cluster operators' business, even for the owner.
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
    let mut raw = Raw::sign_in(service.gateway_addr(), "alice", service.token("alice"));
    let mut config = AlterableConfig::default();
    config.name = StrBytes::from_static_str("retention.ms");
    config.value = Some(StrBytes::from_static_str("1000"));
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_string(restricted.clone());
    resource.configs = vec![config];
    let mut body = AlterConfigsRequest::default();
    body.resources = vec![resource];
    raw.send(ApiKey::AlterConfigs, 1, &body);
    let mut buf = bytes::Bytes::from(raw.answer().expect("an answer"));
    ResponseHeader::decode(&mut buf, 0).expect("header");
    let altered = AlterConfigsResponse::decode(&mut buf, 1).expect("body");
    assert_eq!(altered.responses[0].error_code, 44, "POLICY_VIOLATION");
    let message = altered.responses[0]
        .error_message
        .as_ref()
        .map(|m| m.to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("topic-requests")),
        "the refusal says where to ask: {message:?}"
    );
    assert_ne!(
        kafka_topic_config(&restricted, "retention.ms").as_deref(),
        Some("1000"),
        "the config is unchanged in Kafka"
    );
}

#[test]
fn offset_fetch_for_several_groups_answers_the_allowed_and_refuses_the_others() {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::{
        ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse, ResponseHeader,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    let service = Service::start_gateway();
    // erin's group has committed offset 5 on a topic (straight to Kafka).
    let topic = unique_topic("gw-offsets");
    service.provision(&topic, 1);
    let mine = format!("erin.{}", unique_topic("mine"));
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &mine)
        .create()
        .expect("consumer");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, rdkafka::Offset::Offset(5))
        .expect("offset");
    committer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit");
    let mut raw = Raw::sign_in(service.gateway_addr(), "erin", service.token("erin"));
    let group = |id: &str| {
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = GroupId(StrBytes::from_string(id.to_string()));
        // Every topic the group has committed.
        g.topics = None;
        g
    };
    let mut body = OffsetFetchRequest::default();
    body.groups = vec![group(&mine), group("alice.theirs")];
    raw.send(ApiKey::OffsetFetch, 8, &body);
    let mut buf = bytes::Bytes::from(raw.answer().expect("an answer"));
    ResponseHeader::decode(&mut buf, ApiKey::OffsetFetch.response_header_version(8))
        .expect("header");
    let answer = OffsetFetchResponse::decode(&mut buf, 8).expect("body");
    let codes: BTreeMap<String, i16> = answer
        .groups
        .iter()
        .map(|g| (g.group_id.0.to_string(), g.error_code))
        .collect();
    assert_eq!(
        codes,
        BTreeMap::from([("alice.theirs".to_string(), 30), (mine.clone(), 0)]),
        "alice's group is refused"
    );
    let erins = answer
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == mine)
        .expect("erin's group");
    let committed: Vec<(String, i64)> = erins
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.committed_offset))
        })
        .collect();
    assert_eq!(
        committed,
        vec![(topic.clone(), 5)],
        "erin's group is answered by the broker"
    );
}

/// One Produce v9 of `batch` to partition 0 of `topic`, answered with (error code, message).
fn raw_produce(raw: &mut Raw, topic: &str, batch: bytes::Bytes) -> (i16, Option<String>) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(batch);
    let mut data = TopicProduceData::default();
    data.name = kafka_protocol::messages::TopicName(StrBytes::from_string(topic.to_string()));
    data.partition_data = vec![partition];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 10_000;
    request.topic_data = vec![data];
    raw.send(ApiKey::Produce, 9, &request);
    let mut answer = bytes::Bytes::from(raw.answer().expect("produce answer"));
    ResponseHeader::decode(&mut answer, ApiKey::Produce.response_header_version(9))
        .expect("header");
    let response = ProduceResponse::decode(&mut answer, 9).expect("response");
    let p = &response.responses[0].partition_responses[0];
    (
        p.error_code,
        p.error_message.as_ref().map(|m| m.to_string()),
    )
}

/// A v2 batch of `records`, each with a value of `value_bytes` zeros, under `compression`.
fn zero_batch(
    compression: kafka_protocol::records::Compression,
    records: i64,
    value_bytes: usize,
) -> bytes::Bytes {
    idempotent_batch(compression, records, value_bytes, -1, -1)
}

/// Like `zero_batch`, written by idempotent producer `producer_id` (epoch 0) from sequence
/// `first` on (−1 and −1: not idempotent).
fn idempotent_batch(
    compression: kafka_protocol::records::Compression,
    records: i64,
    value_bytes: usize,
    producer_id: i64,
    first: i32,
) -> bytes::Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: if producer_id < 0 { -1 } else { 0 },
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: if first < 0 { -1 } else { first + i as i32 },
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(vec![0u8; value_bytes])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buf.freeze()
}

#[test]
fn a_compressed_bomb_for_a_pending_topic_is_refused_and_holds_nothing() {
    use kafka_protocol::records::Compression;
    let service = Service::start_gateway_at(&bootstrap(), |config| {
        // Records up to 4 MiB, so that only the decompression ceiling can refuse the bomb.
        format!("{config}\n[limits]\nmax_record_bytes = 4194304\n")
    });
    let addr = service.gateway_addr().to_string();
    let pending = unique_topic("gw-bomb");
    service.request_topic("alice", &pending, 1);
    let mut raw = Raw::sign_in(&addr, "alice", service.token("alice"));

    // 40 records of 2 MiB of zeros: 80 MiB once inflated, a few hundred KiB compressed.
    let bomb = zero_batch(Compression::Zstd, 40, 2 << 20);
    assert!(
        bomb.len() < 1 << 20,
        "the bomb is small on the wire: {}",
        bomb.len()
    );
    let (code, message) = raw_produce(&mut raw, &pending, bomb);
    assert_eq!(code, 87, "INVALID_RECORD: {message:?}");
    let message = message.unwrap_or_default();
    assert!(message.contains("decompress to more than"), "{message}");
    let (_, topic) = service.topic(&pending);
    assert_eq!(topic["held"], 0, "nothing of the bomb is held: {topic}");

    // The same connection goes on, and a batch within bounds is held.
    let (code, message) = raw_produce(&mut raw, &pending, zero_batch(Compression::Lz4, 3, 100));
    assert_eq!(code, 0, "{message:?}");
    let (_, topic) = service.topic(&pending);
    assert_eq!(topic["held"], 3, "{topic}");
}

#[test]
fn a_retried_idempotent_batch_for_a_pending_topic_is_held_once() {
    use kafka_protocol::records::Compression;
    let service = Service::start_gateway();
    let addr = service.gateway_addr().to_string();
    let pending = unique_topic("gw-retry");
    let id = service.request_topic("alice", &pending, 1);
    let mut raw = Raw::sign_in(&addr, "alice", service.token("alice"));
    let first = idempotent_batch(Compression::None, 3, 10, 4242, 0);

    assert_eq!(raw_produce(&mut raw, &pending, first.clone()).0, 0);
    // The same batch again, as a producer retries one whose answer it did not get, also on
    // another connection: a success, and nothing more is held.
    assert_eq!(raw_produce(&mut raw, &pending, first.clone()).0, 0);
    let mut other = Raw::sign_in(&addr, "alice", service.token("alice"));
    assert_eq!(raw_produce(&mut other, &pending, first).0, 0);
    let (_, topic) = service.topic(&pending);
    assert_eq!(topic["held"], 3, "the retries are not held again: {topic}");
    // The next batch of that producer, and the same sequence from another producer, are new.
    let next = idempotent_batch(Compression::Lz4, 2, 10, 4242, 3);
    assert_eq!(raw_produce(&mut raw, &pending, next).0, 0);
    let stranger = idempotent_batch(Compression::None, 3, 10, 4343, 0);
    assert_eq!(raw_produce(&mut raw, &pending, stranger).0, 0);
    let (_, topic) = service.topic(&pending);
    assert_eq!(topic["held"], 8, "{topic}");

    service.approve("carol", &id);
    service.wait_topic_status(&pending, "active", Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), || service.topic(&pending).1
            ["held"]
            == 0),
        "the held records drain"
    );
    // Everything is in Kafka by now: read until the log's end (an empty poll after 8).
    let read = kafka_read_until(&pending, Duration::from_secs(30), |r| r.len() >= 8);
    assert_eq!(read.len(), 8, "each batch once in Kafka: {read:?}");
    assert_eq!(
        kafka_offsets_end(&pending),
        8,
        "the partition's end offset counts each batch once"
    );
}

/// The end offset (high watermark) of partition 0 of `topic`, straight from the broker.
fn kafka_offsets_end(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("kafka consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    high
}
