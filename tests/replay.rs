//! Replay of a large log (100,000 events) rebuilds exactly the state the live registry holds.
//! Drives the real registry and event store actors through the library entry points; no Kafka
//! work is involved (outcomes are recorded as the provisioner would record them).

use std::time::Instant;

use actix::{Actor, Addr};
use futures_util::future::join_all;
use kafflow::actors::event_store::EventStore;
use kafflow::actors::registry::{
    Command, Decision, Governance, ListRequests, ListTopics, Outcome, Registry, RequestFilter,
    TopicRequest, TopicStatus,
};
use kafflow::config::{Config, Overrides};
use kafflow::events::TopicSpec;
use kafflow::identity::{Principal, Role};
use kafflow::paging::PageOf;
use kafflow::shutdown::Fatal;

fn who(name: &str, role: Role) -> Principal {
    Principal {
        name: name.into(),
        roles: [role].into(),
    }
}

const TOPICS: usize = 10_000;
const EVENTS_PER_TOPIC: u64 = 10;
const CONCURRENCY: usize = 500;

fn spec() -> TopicSpec {
    TopicSpec {
        partitions: 3,
        replication_factor: 1,
        config: [("retention.ms", "60000")].into(),
    }
}

async fn run(registry: &Addr<Registry>, command: Command) -> TopicRequest {
    registry
        .send(command)
        .await
        .expect("registry alive")
        .expect("command accepted")
}

/// Ten events: a rejected request, a withdrawn one, an approved one that is provisioned,
/// then a deletion that is approved and carried out (or, for every 7th topic, fails).
async fn topic_lifecycle(registry: Addr<Registry>, n: usize) {
    let topic = format!("replay-{n:05}");
    let create = |actor: &str| Command::FileCreate {
        actor: actor.into(),
        topic: topic.clone(),
        spec: spec(),
        reason: Some(format!("load {n}")),
        visibility: Default::default(),
    };
    let decide = |id, decision| Command::Decide {
        principal: who("carol", Role::Admin),
        id,
        decision,
    };
    let r = run(&registry, create("alice")).await;
    run(
        &registry,
        decide(
            r.id,
            Decision::Reject {
                reason: "not yet".into(),
            },
        ),
    )
    .await;
    let r = run(&registry, create("bob")).await;
    run(
        &registry,
        Command::Withdraw {
            principal: who("bob", Role::Producer),
            id: r.id,
        },
    )
    .await;
    let r = run(&registry, create("alice")).await;
    run(
        &registry,
        decide(
            r.id,
            Decision::Approve {
                note: Some("ok".into()),
            },
        ),
    )
    .await;
    let outcome = Outcome::Provisioned {
        spec: spec(),
        already_existed: n.is_multiple_of(3),
    };
    run(&registry, Command::RecordOutcome { id: r.id, outcome }).await;
    let d = run(
        &registry,
        Command::FileDeletion {
            principal: who("alice", Role::Producer),
            topic: topic.clone(),
            reason: "done".into(),
        },
    )
    .await;
    run(&registry, decide(d.id, Decision::Approve { note: None })).await;
    let outcome = if n.is_multiple_of(7) {
        Outcome::DeletionFailed {
            error: "TopicDeletionDisabled".into(),
        }
    } else {
        Outcome::Deleted {
            already_absent: false,
        }
    };
    run(&registry, Command::RecordOutcome { id: d.id, outcome }).await;
}

#[actix::test]
async fn replay_of_100k_events_matches_live_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(
        "[store]\nsynchronous = \"normal\"\n",
        Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .expect("config");

    let (store, state, head) = kafflow::replay(&config).expect("empty log opens");
    assert_eq!(head.seq, 0);
    let (writer, _thread) = store.into_writer(head).expect("writer");
    let event_store = EventStore::new(writer, Fatal::detached()).start();
    let registry = Registry::new(state.governance, event_store).start();

    let started = Instant::now();
    for chunk in (0..TOPICS).collect::<Vec<_>>().chunks(CONCURRENCY) {
        join_all(chunk.iter().map(|&n| topic_lifecycle(registry.clone(), n))).await;
    }
    let live_secs = started.elapsed().as_secs_f64();
    let live_requests = registry
        .send(ListRequests(RequestFilter::default(), PageOf::all()))
        .await
        .expect("alive")
        .expect("listed")
        .items;
    let live_topics = registry.send(ListTopics).await.expect("alive");
    assert_eq!(live_requests.len(), TOPICS * 4);
    assert_eq!(live_topics.len(), TOPICS);

    let started = Instant::now();
    let (_, replayed, head) = kafflow::replay(&config).expect("replay");
    let replayed: Governance = replayed.governance;
    let replay_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} events: live {live_secs:.1}s ({:.0}/s), replay {replay_secs:.2}s ({:.0}/s)",
        head.seq,
        head.seq as f64 / live_secs,
        head.seq as f64 / replay_secs
    );
    assert_eq!(head.seq, TOPICS as u64 * EVENTS_PER_TOPIC);
    // What the replayed state keeps of each request is what the live registry answers.
    let kept: Vec<_> = replayed
        .every_request()
        .map(|r| {
            let (id, kind, status) = (r.id(), r.kind(), r.status());
            (
                id,
                kind,
                status,
                r.topic().to_string(),
                r.requested_by().to_string(),
            )
        })
        .collect();
    let answered: Vec<_> = live_requests
        .iter()
        .map(|r| {
            (
                r.id,
                r.kind,
                r.status,
                r.topic.clone(),
                r.requested_by.clone(),
            )
        })
        .collect();
    assert_eq!(kept, answered);
    assert_eq!(replayed.topics(), live_topics);
    let failed_deletions = live_topics
        .iter()
        .filter(|t| t.status == TopicStatus::Active)
        .count();
    assert_eq!(failed_deletions, TOPICS.div_ceil(7));
    assert_eq!(
        kafflow::events::verify(dir.path())
            .expect("chain intact")
            .seq,
        head.seq
    );
}
