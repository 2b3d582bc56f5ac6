//! Feeds that share one Kafka fetch per topic: several users on one topic each get every
//! record once and in order while one topic reader fetches; each user resumes at its own
//! committed position after `kill -9`; a user starting from the beginning catches up alone
//! and then joins the shared reader, with nothing lost or repeated across the switch; a user
//! whose client stops reading falls back and, once it reads again, rejoins the shared reader
//! from its window without a Kafka fetch of its own (or, too far behind the window, catches up
//! alone first), with nothing lost or repeated, while another user on the topic reads on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    kafka_committed, kafka_produce, unique_topic, wait_until, ExtraPrincipal, FeedClient, Produce,
    Service,
};
use serde_json::{json, Value};

const FRAME: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);

fn numbered(range: std::ops::Range<u32>) -> Vec<Produce<'static>> {
    range
        .map(|i| Produce::value(json!({ "i": i }).to_string()))
        .collect()
}

fn subscribe(svc: &Service, token: &str, topic: &str) {
    let path = format!("/api/v1/me/subscriptions/{topic}");
    let (status, body) = svc.send_as(token, "POST", &path, None);
    assert_eq!(status, 200, "subscribe to {topic}: {body}");
}

/// The values `i` of `records`, checking that each partition's offsets only go up.
fn in_order(who: &str, records: &[Value]) -> Vec<u64> {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in records {
        let partition = r["partition"].as_i64().expect("partition");
        let offset = r["offset"].as_i64().expect("offset");
        if let Some(before) = last.insert(partition, offset) {
            assert!(
                offset > before,
                "{who}: partition {partition} went from offset {before} to {offset}"
            );
        }
    }
    let mut found: Vec<u64> = records
        .iter()
        .map(|r| r["value"]["i"].as_u64().unwrap_or_else(|| panic!("{r}")))
        .collect();
    found.sort_unstable();
    found
}

fn expect(who: &str, feed: &mut FeedClient, range: std::ops::Range<u64>) {
    let records = feed.records((range.end - range.start) as usize, FRAME);
    assert_eq!(
        in_order(who, &records),
        range.collect::<Vec<_>>(),
        "{who}: every record once"
    );
}

fn wait_committed(group: &str, topic: &str, partitions: i32, total: i64) {
    let mut last = Vec::new();
    let done = wait_until(Duration::from_secs(20), || {
        last = kafka_committed(group, topic, partitions);
        last.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total
    });
    assert!(done, "{group} never committed {total} on {topic}: {last:?}");
}

/// Waits until one shared reader runs and no topic reads on its own.
fn wait_shared(svc: &Service) {
    let mut last = (0.0, 0.0);
    let shared = wait_until(Duration::from_secs(20), || {
        last = (
            svc.metric("kafflow_feed_topic_readers"),
            svc.metric("kafflow_feed_catchup_topics"),
        );
        last == (1.0, 0.0)
    });
    assert!(shared, "(topic readers, catch-up topics) stayed {last:?}");
}

fn service(users: &[&ExtraPrincipal]) -> Service {
    let extra: String = users.iter().map(|u| u.config.clone()).collect();
    Service::start_with_config(move |text| text + &extra)
}

#[test]
fn users_on_one_topic_share_one_fetch_and_each_get_every_record_in_order() {
    let users = [
        ExtraPrincipal::new("ula", &["consumer"]),
        ExtraPrincipal::new("uma", &["consumer"]),
        ExtraPrincipal::new("una", &["consumer"]),
        ExtraPrincipal::new("uta", &["consumer"]),
    ];
    let svc = service(&users.iter().collect::<Vec<_>>());
    let topic = unique_topic("shared");
    svc.provision(&topic, 2);
    let mut feeds = Vec::new();
    for user in &users {
        subscribe(&svc, &user.token, &topic);
        let mut feed = svc.feed(&user.token, "");
        assert_eq!(
            feed.next(FRAME),
            json!({"type": "subscriptions", "topics": [topic]})
        );
        feeds.push(feed);
    }
    wait_shared(&svc);
    kafka_produce(&topic, &numbered(0..300));
    for (user, feed) in users.iter().zip(&mut feeds) {
        expect(user.name, feed, 0..300);
    }
    // One fetch for the topic, whatever the number of users; each user has its own position.
    wait_shared(&svc);
    for user in &users {
        wait_committed(&format!("kafflow.user.{}", user.name), &topic, 2, 300);
    }
    kafka_produce(&topic, &numbered(300..400));
    for (user, feed) in users.iter().zip(&mut feeds) {
        expect(user.name, feed, 300..400);
        let extra = feed.drain(QUIET);
        assert!(extra.is_empty(), "{}: sent again: {extra:?}", user.name);
    }
}

#[test]
fn after_kill9_each_user_resumes_at_its_own_committed_position() {
    let ivy = ExtraPrincipal::new("ivy", &["consumer"]);
    let jon = ExtraPrincipal::new("jon", &["consumer"]);
    let mut svc = service(&[&ivy, &jon]);
    let topic = unique_topic("own-resume");
    svc.provision(&topic, 2);
    subscribe(&svc, &ivy.token, &topic);
    subscribe(&svc, &jon.token, &topic);

    let mut a = svc.feed(&ivy.token, "");
    let mut b = svc.feed(&jon.token, "");
    a.next(FRAME);
    b.next(FRAME);
    kafka_produce(&topic, &numbered(0..40));
    expect("ivy", &mut a, 0..40);
    expect("jon", &mut b, 0..40);
    wait_committed("kafflow.user.jon", &topic, 2, 40);
    b.close();
    // Only ivy reads on: her position moves on, jon's stays.
    kafka_produce(&topic, &numbered(40..100));
    expect("ivy", &mut a, 40..100);
    wait_committed("kafflow.user.ivy", &topic, 2, 100);

    svc.restart();
    drop(a);
    kafka_produce(&topic, &numbered(100..120));
    let mut a = svc.feed(&ivy.token, "");
    let mut b = svc.feed(&jon.token, "");
    expect("ivy", &mut a, 100..120);
    expect("jon", &mut b, 40..120);
    for (who, feed) in [("ivy", &mut a), ("jon", &mut b)] {
        let extra = feed.drain(QUIET);
        assert!(
            extra.is_empty(),
            "{who}: sent again after restart: {extra:?}"
        );
    }
    // jon started behind the shared window, caught up alone, then joined.
    wait_shared(&svc);
    kafka_produce(&topic, &numbered(120..130));
    expect("ivy", &mut a, 120..130);
    expect("jon", &mut b, 120..130);
}

#[test]
fn a_user_from_earliest_catches_up_then_joins_the_shared_tail() {
    let kim = ExtraPrincipal::new("kim", &["consumer"]);
    let lou = ExtraPrincipal::new("lou", &["consumer"]);
    let svc = service(&[&kim, &lou]);
    let topic = unique_topic("catch-up");
    svc.provision(&topic, 2);
    subscribe(&svc, &kim.token, &topic);
    subscribe(&svc, &lou.token, &topic);
    kafka_produce(&topic, &numbered(0..2000));

    // kim tails from the end: the shared reader starts there.
    let mut tail = svc.feed(&kim.token, "from=latest");
    tail.next(FRAME);
    wait_shared(&svc);
    let joins = svc.metric("kafflow_feed_joins_total");

    // lou starts from the beginning, behind the window, while records keep coming.
    let mut early = svc.feed(&lou.token, "from=earliest");
    early.next(FRAME);
    let mut seen = Vec::new();
    for round in 0..5u32 {
        let base = 2000 + round * 100;
        kafka_produce(&topic, &numbered(base..base + 100));
        seen.extend(early.records(400, FRAME));
    }
    let rest = early.records(2500 - seen.len(), FRAME);
    seen.extend(rest);
    assert_eq!(
        in_order("lou", &seen),
        (0..2500).collect::<Vec<u64>>(),
        "lou: everything once, in order, across the switch"
    );
    expect("kim", &mut tail, 2000..2500);

    wait_shared(&svc);
    assert!(
        svc.metric("kafflow_feed_joins_total") > joins,
        "lou never joined the shared reader"
    );
    kafka_produce(&topic, &numbered(2500..2600));
    let mut after = BTreeSet::new();
    after.extend(in_order("lou", &early.records(100, FRAME)));
    assert_eq!(after, (2500..2600).collect::<BTreeSet<u64>>());
    expect("kim", &mut tail, 2500..2600);
    for (who, feed) in [("lou", &mut early), ("kim", &mut tail)] {
        let extra = feed.drain(QUIET);
        assert!(extra.is_empty(), "{who}: sent again: {extra:?}");
    }
    wait_committed("kafflow.user.lou", &topic, 2, 2600);
}

/// Records of about 8 KiB, so that a few hundred fill the sockets of a client that stops
/// reading while all of them stay inside the shared reader's window (32,768 records and
/// 64 MiB per partition).
fn padded(range: std::ops::Range<u32>) -> Vec<Produce<'static>> {
    let pad = "x".repeat(8 * 1024);
    range
        .map(|i| Produce::value(json!({ "i": i, "pad": pad }).to_string()))
        .collect()
}

/// A service whose feeds hold few records, so that a client that stops reading makes its user
/// fall back soon.
fn small_buffers(users: &[&ExtraPrincipal]) -> Service {
    let extra: String = users.iter().map(|u| u.config.clone()).collect();
    Service::start_with_config(move |text| text + "\n[feeds]\nbuffer_frames = 50\n" + &extra)
}

/// Produces `records` (numbered from 0) while the other user's client reads nothing and
/// `fast` reads them all on a thread of its own; returns `fast` once it has every record and
/// the stalled user has fallen back.
fn stall_while_producing(
    svc: &Service,
    topic: &str,
    fast: FeedClient,
    records: Vec<Produce<'static>>,
    fallbacks: f64,
) -> FeedClient {
    let total = records.len() as u64;
    let reader = std::thread::spawn(move || {
        let mut fast = fast;
        let records = fast.records(total as usize, Duration::from_secs(60));
        (fast, records)
    });
    kafka_produce(topic, &records);
    let (fast, records) = reader.join().expect("the fast reader");
    assert_eq!(
        in_order("the fast user", &records),
        (0..total).collect::<Vec<_>>(),
        "the fast user got everything while the other stalled"
    );
    let fell = wait_until(Duration::from_secs(20), || {
        svc.metric("kafflow_feed_fallbacks_total") > fallbacks
    });
    assert!(fell, "the stalled user never fell back");
    fast
}

#[test]
fn a_stalled_user_rejoins_the_shared_reader_from_its_window() {
    let max = ExtraPrincipal::new("max", &["consumer"]);
    let ned = ExtraPrincipal::new("ned", &["consumer"]);
    let svc = small_buffers(&[&max, &ned]);
    let topic = unique_topic("rejoin");
    svc.provision(&topic, 1);
    subscribe(&svc, &max.token, &topic);
    subscribe(&svc, &ned.token, &topic);
    let mut slow = svc.feed(&max.token, "");
    let mut fast = svc.feed(&ned.token, "");
    slow.next(FRAME);
    fast.next(FRAME);
    wait_shared(&svc);
    let (fallbacks, rejoins, catchups) = (
        svc.metric("kafflow_feed_fallbacks_total"),
        svc.metric("kafflow_feed_rejoins_total"),
        svc.metric("kafflow_feed_catchups_total"),
    );

    // max reads nothing while 2,400 records (about 19 MiB) come: more than the sockets, the
    // feed and the consumer hold, all inside the window.
    let mut fast = stall_while_producing(&svc, &topic, fast, padded(0..2400), fallbacks);

    // max reads again: every record once, in order, from the window.
    expect("max", &mut slow, 0..2400);
    let back = wait_until(Duration::from_secs(20), || {
        svc.metric("kafflow_feed_rejoins_total") > rejoins
    });
    assert!(back, "max never rejoined the shared reader");
    wait_shared(&svc);
    assert_eq!(
        svc.metric("kafflow_feed_catchups_total"),
        catchups,
        "max read from Kafka on its own instead of the window"
    );

    kafka_produce(&topic, &numbered(2400..2500));
    expect("max", &mut slow, 2400..2500);
    expect("ned", &mut fast, 2400..2500);
    for (who, feed) in [("max", &mut slow), ("ned", &mut fast)] {
        let extra = feed.drain(QUIET);
        assert!(extra.is_empty(), "{who}: sent again: {extra:?}");
    }
    wait_committed("kafflow.user.max", &topic, 1, 2500);
    wait_committed("kafflow.user.ned", &topic, 1, 2500);
}

#[test]
fn a_user_stalled_past_the_window_catches_up_alone_then_rejoins() {
    let oli = ExtraPrincipal::new("oli", &["consumer"]);
    let pam = ExtraPrincipal::new("pam", &["consumer"]);
    let svc = small_buffers(&[&oli, &pam]);
    let topic = unique_topic("cut-loose");
    svc.provision(&topic, 1);
    subscribe(&svc, &oli.token, &topic);
    subscribe(&svc, &pam.token, &topic);
    let mut slow = svc.feed(&oli.token, "");
    let mut fast = svc.feed(&pam.token, "");
    slow.next(FRAME);
    fast.next(FRAME);
    wait_shared(&svc);
    let (fallbacks, catchups) = (
        svc.metric("kafflow_feed_fallbacks_total"),
        svc.metric("kafflow_feed_catchups_total"),
    );

    // 1,500 large records fill oli's sockets and make it fall back; 35,000 small ones push
    // where it stopped out of the window (the last 32,768 records).
    let mut records = padded(0..1500);
    records.extend(numbered(1500..36_500));
    let mut fast = stall_while_producing(&svc, &topic, fast, records, fallbacks);

    // oli reads again: behind the window, it reads alone from Kafka, then joins again.
    expect("oli", &mut slow, 0..36_500);
    assert!(
        svc.metric("kafflow_feed_catchups_total") > catchups,
        "oli was behind the window and yet never read alone"
    );
    wait_shared(&svc);
    kafka_produce(&topic, &numbered(36_500..36_600));
    expect("oli", &mut slow, 36_500..36_600);
    expect("pam", &mut fast, 36_500..36_600);
    for (who, feed) in [("oli", &mut slow), ("pam", &mut fast)] {
        let extra = feed.drain(QUIET);
        assert!(extra.is_empty(), "{who}: sent again: {extra:?}");
    }
    wait_committed("kafflow.user.oli", &topic, 1, 36_600);
}
