//! KafFlow: a governed gateway for Apache Kafka.
//!
//! No topic exists in Kafka until a producer asks for it and an administrator approves it.
//! Every decision is an event in an append-only, hash-chained SQLite log, and all state is
//! rebuilt from that log at startup.
//!
//! The house:
//! - `events`: the event types and the log (append with group commit, replay, hash chain,
//!   snapshots of the rebuilt state).
//! - `actors`: the actix actors that own the state and do the work (see `actors` for the list).
//! - `http`: the warp facade that authenticates, parses, messages an actor and renders.
//! - `gateway`: the Kafka-protocol facade: unmodified Kafka clients, governed by the same actors.
//! - `config`: the config file and flags, validated once.
//! - `identity`: who is calling: config principals, issued tokens and JWTs, and the count of
//!   failed sign-ins per address.
//! - `kafka`: client settings, metadata reads and the batch producer shared by the actors.
//! - `spool`: the held-record store of the publisher (its own SQLite file).
//! - `record`: a producer's record, as ingest takes it and the spool keeps it.
//! - `metrics`: the Prometheus counters behind `/metrics`.
//! - `paging`: pages of list reads, keyed by a cursor that concurrent inserts do not shift.
//! - `sqlite`: how KafFlow opens its SQLite files and applies migrations.
//! - `error`: the domain errors, each with a stable code.
//! - `runtime`: the multi-threaded runtime the facades (HTTP, websockets, feeds' readers, the
//!   gateway) run on, beside the actors' thread.
//! - `shutdown`: the one shutdown every task observes, and the way fatal errors reach `serve`.
//! - `tls`: rustls for both listeners and for the command-line clients.
//! - `client`: the command-line clients of a running service (`kafflow produce`, `kafflow consume`).

pub mod actors;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod kafka;
pub(crate) mod memory;
pub mod metrics;
pub mod paging;
pub mod record;
pub(crate) mod runtime;
pub mod shutdown;
pub mod spool;
pub mod sqlite;
pub mod tls;

use std::net::SocketAddr;

use actix::Actor;
use tokio::net::TcpListener;

use actors::approval::Approval;
use actors::event_store::EventStore;
use actors::event_store::{Close, Follow};
use actors::journal::Owner;
use actors::listener::Listener;
use actors::provisioner::{Provision, Provisioner};
use actors::publisher::{Publisher, SetRoute};
use actors::registry::{AllRoutes, Governance, Registry, UnfinishedWork};
use actors::subscriptions::{SubscriptionBook, Subscriptions};
use actors::tokens::{TokenBook, Tokens};
use actors::watcher::Watcher;
use config::Config;
use events::{Store, StoreError};
use kafka::BatchProducer;
use spool::Spool;
use std::time::Duration;

/// Why `serve` could not start, or had to stop on its own.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Fatal(#[from] shutdown::FatalError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] error::Error),
    #[error("actor system stopped during startup")]
    Actors(#[from] actix::MailboxError),
    #[error("auth.jwt: {0}")]
    Jwks(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
    #[error("cannot start the facade runtime: {0}")]
    Runtime(std::io::Error),
}

/// Everything rebuilt from the log, one part per actor that owns state; what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub governance: Governance,
    pub subscriptions: SubscriptionBook,
    pub drift: actors::watcher::DriftBook,
    pub tokens: TokenBook,
}

impl State {
    /// Each event goes to the one part that owns its kind (`journal::owner`). By value: the
    /// registry keeps a filing's strings (a replay hands each event over once).
    pub fn apply(&mut self, event: events::NewEvent) {
        match actors::journal::owner(&event.kind) {
            Owner::Registry => self.governance.apply(event),
            Owner::Subscriptions => self.subscriptions.apply(&event),
            Owner::Watcher => self.drift.apply(&event),
            Owner::Tokens => self.tokens.apply(&event),
            // The publisher's state is the spool; its events are history.
            Owner::Publisher => {}
        }
    }
}

impl State {
    /// Folds what replay applied into the parts' shared bulk (`Journaled::fold`), as the
    /// journals do when they start.
    fn fold(&mut self) {
        actors::journal::Journaled::fold(&mut self.governance);
    }
}

impl events::Snapshotted for State {
    fn apply(&mut self, event: events::NewEvent) {
        State::apply(self, event);
    }
}

/// Rebuilds state from the log in `data_dir` (from its snapshot on, when snapshots are on and
/// it matches the log) and returns it with the open store.
pub fn replay(config: &Config) -> Result<(Store, State, events::ChainHead), StoreError> {
    let (store, state, head, _) = recover(config)?;
    Ok((store, state, head))
}

fn recover(
    config: &Config,
) -> Result<(Store, State, events::ChainHead, events::Recovery), StoreError> {
    let store = Store::open(&config.data_dir, config.durability)?;
    let (state, head, recovery) = store.recover::<State>(config.snapshot_every > 0)?;
    tracing::info!(
        events = head.seq,
        snapshot_seq = recovery.snapshot_seq,
        snapshot_ms = recovery.snapshot_load.as_millis() as u64,
        replayed = head.seq - recovery.snapshot_seq,
        replay_ms = recovery.replay.as_millis() as u64,
        "Log replayed."
    );
    Ok((store, state, head, recovery))
}

/// The addresses the service listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub ingest: SocketAddr,
    /// The Kafka-protocol gateway, when `[gateway] listen` is set.
    pub gateway: Option<SocketAddr>,
    /// Every listener speaks TLS (`https://`, `tls://` and SASL_SSL).
    pub tls: bool,
}

/// A listener whose connections have Nagle's algorithm off (Linux hands TCP_NODELAY down to
/// accepted sockets): a feed frame must not wait for the client's delayed ACK.
fn listen_nodelay(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Runs the service until `signal` resolves (then shuts down cleanly and returns `Ok`) or a
/// fatal error stops it (then shuts down as cleanly as it can and returns the error). Must
/// run inside an actix `System`, whose thread runs the actors; the facades get a
/// multi-threaded runtime of their own (`[server] worker_threads`, see `runtime`). `on_listening` is called with the bound addresses once the
/// service accepts connections.
///
/// The shutdown: every task is told (`shutdown::Shutdown`) and stops accepting; every call and
/// line already accepted is answered; then the event log's writer commits what it has and
/// closes. All of it within `[server] shutdown_timeout_ms`.
pub async fn serve(
    config: Config,
    on_listening: impl FnOnce(Bound),
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    memory::fix_thresholds();
    // The TLS files first: an unusable certificate is a config error, reported before all.
    let (http_tls, ingest_tls) = match &config.tls {
        Some(files) => (
            Some(tls::acceptor(files, &[b"http/1.1"])?),
            Some(tls::acceptor(files, &[])?),
        ),
        None => (None, None),
    };
    let facades = runtime::Facades::start(
        config
            .server
            .worker_threads
            .unwrap_or_else(runtime::default_workers),
    )
    .map_err(StartError::Runtime)?;
    // Bind first: a port in use is reported before any other work. The HTTP socket is
    // registered with the facade runtime, so its readiness is polled there, not on the
    // actors' thread.
    let listener = {
        let _facade = facades.handle().enter();
        listen_nodelay(config.listen)
    }
    .map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let ingest = TcpListener::bind(config.ingest_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.ingest_listen,
            source,
        })?;
    let ingest_addr = ingest.local_addr().map_err(|source| StartError::Listen {
        addr: config.ingest_listen,
        source,
    })?;
    let gateway = match config.gateway.listen {
        Some(addr) => Some(gateway::Gateway::bind(addr)?),
        None => None,
    };
    let gateway_tls = match &config.tls {
        Some(files) => Some(tls::acceptor(files, &[])?),
        None => None,
    };

    let mut coordinator = shutdown::Coordinator::default();
    let (store, mut state, head, recovery) = recover(&config)?;
    let (writer, writer_thread) = if config.snapshot_every > 0 {
        // A start that replayed many events past the last snapshot takes one at once: of the
        // state just rebuilt, folded first so that the copy shares the history's bulk.
        let replayed = (head.seq >= recovery.snapshot_seq + config.snapshot_every).then(|| {
            state.fold();
            state.clone()
        });
        store.into_writer_snapshotting_from::<State>(
            head,
            config.snapshot_every,
            recovery.snapshot_seq,
            replayed,
        )?
    } else {
        store.into_writer(head)?
    };
    let event_store = EventStore::new(writer, coordinator.fatal()).start();
    let registry = Registry::new(state.governance, event_store.clone());
    let governed_view = registry.view();
    let registry = registry.start();
    let subscriptions = Subscriptions::new(
        state.subscriptions,
        event_store.clone(),
        registry.clone(),
        config.kafka.clone(),
        config.feeds.clone(),
        coordinator.shutdown(),
        coordinator.guard(),
        facades.handle(),
    )
    .start();
    let provisioner = Provisioner::new(&config.kafka, registry.clone())?.start();
    let approval =
        Approval::new(config.policy.clone(), registry.clone(), provisioner.clone()).start();

    let (spool, contents) = Spool::open(&config.data_dir, config.durability)?;
    let held: Vec<String> = contents
        .iter()
        .filter(|(_, c)| c.held > 0)
        .map(|(topic, _)| topic.clone())
        .collect();
    let producer = BatchProducer::new(&kafka::publisher_config(&config.kafka, &config.publisher))?;
    let publisher = Publisher::new(
        producer,
        spool,
        contents,
        config.spool.clone(),
        event_store.clone(),
    )
    .consulting(governed_view.clone());
    let direct_topics = publisher.direct_topics();
    let counts_view = publisher.counts_view();
    let publisher = publisher.start();
    // Routes as the log left them, of the topics that may still take records or have records
    // held (a topic closed for good is looked up when asked for); from here on the watcher
    // keeps them in step. Nothing is appended before the watcher follows the log: the
    // provisioner resumes only below.
    for (topic, route) in registry.send(AllRoutes(held)).await? {
        publisher.do_send(SetRoute { topic, route });
    }
    let watcher = Watcher::new(
        registry.clone(),
        publisher.clone(),
        event_store.clone(),
        kafka::admin_client(&config.kafka)?,
        Duration::from_millis(config.watcher.reconcile_interval_ms),
        state.drift,
    )
    .start();
    event_store.do_send(Follow(watcher.clone().recipient()));
    let (tokens, published_tokens) =
        Tokens::new(state.tokens, event_store.clone(), config.principals.names());
    let tokens = tokens.start();
    let jwt = match config.auth.jwt.clone() {
        Some(jwt) => Some(
            identity::jwt::Verifier::start(jwt)
                .await
                .map_err(StartError::Jwks)?,
        ),
        None => None,
    };
    let identity = identity::Identity::new(
        config.principals.clone(),
        published_tokens,
        jwt,
        config.auth.max_failures_per_minute,
    );
    let gateway_addr = match gateway {
        Some(gateway) => {
            let addr = gateway.addr();
            let rules = gateway::Rules::new(
                identity.clone(),
                approval.clone(),
                publisher.clone(),
                governed_view.clone(),
                direct_topics,
                record::RecordLimits::from(&config.limits),
            );
            gateway.start(
                config.gateway.clone(),
                &config.kafka.bootstrap_servers,
                rules,
                gateway_tls,
                coordinator.shutdown(),
                coordinator.guard(),
                &facades.handle(),
            );
            tracing::info!(%addr, "Kafka-protocol gateway listening.");
            Some(addr)
        }
        None => None,
    };
    let listener_actor = Listener::new(
        publisher.clone(),
        approval.clone(),
        identity.clone(),
        governed_view.clone(),
        config.limits.clone(),
        actors::listener::IngestSocket {
            tcp: ingest,
            tls: ingest_tls,
        },
        coordinator.shutdown(),
        coordinator.guard(),
        facades.handle(),
    )
    .start();

    // Kafka work that was approved but not finished before the last stop.
    for request in registry.send(UnfinishedWork).await? {
        tracing::info!(topic = %request.topic, request_id = %request.id, "Resuming unfinished Kafka work.");
        provisioner.do_send(Provision(request));
    }

    let record_browser = actors::record_browser::RecordBrowser::new(
        config.kafka.clone(),
        registry.clone(),
        subscriptions.clone(),
        facades.handle(),
        config.limits.retry_after_s,
    )
    .start();
    let app = std::sync::Arc::new(http::AppState {
        identity,
        record_browser,
        tokens,
        registry,
        approval,
        event_store: event_store.clone(),
        provisioner,
        subscriptions,
        listener: listener_actor,
        publisher,
        watcher,
        topics: governed_view,
        counts: counts_view,
        shutdown: coordinator.shutdown(),
        feeds_done: coordinator.guard(),
        limits: config.limits.clone(),
    });
    // The state is built and the replay's transient maps are gone: their pages go back.
    memory::give_back();
    tracing::info!(%addr, tls = config.tls.is_some(), data_dir = %config.data_dir.display(), "KafFlow listening.");
    let tls_on = http_tls.is_some();
    on_listening(Bound {
        http: addr,
        ingest: ingest_addr,
        gateway: gateway_addr,
        tls: tls_on,
    });
    // The server answers every request it has accepted before it returns.
    let routes = http::routes(app, http::Cors::new(&config.server.cors_origins));
    let http_shutdown = coordinator.shutdown();
    let http_done = coordinator.guard();
    facades.handle().spawn(async move {
        http::server::serve(listener, routes, http_tls, http_shutdown).await;
        drop(http_done);
    });

    let outcome = tokio::select! {
        _ = signal => Ok(()),
        error = coordinator.fatal_error() => Err(StartError::Fatal(error)),
    };
    let timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
    let started = std::time::Instant::now();
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "Shutting down: no new work, answering what was accepted."
    );
    if !coordinator.finish(timeout).await {
        tracing::warn!("Shutdown timeout passed with work still in flight; stopping anyway.");
    }
    // Every acknowledgement is out: close the log, and wait for its writer to finish.
    let _ = event_store.send(Close).await;
    drop(event_store);
    let left = timeout.saturating_sub(started.elapsed());
    let joined = tokio::task::spawn_blocking(move || writer_thread.join());
    if tokio::time::timeout(left.max(Duration::from_secs(1)), joined)
        .await
        .is_err()
    {
        tracing::warn!("The event writer did not finish in time.");
    }
    // Every guard is gone: what still runs on the facade runtime holds no accepted work.
    drop(facades);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Shut down."
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use events::{Access, EventKind, NewEvent, TopicSpec, Visibility};
    use sha2::{Digest, Sha256};
    use uuid::Uuid;

    /// One event of every kind that builds state, with fixed ids and times.
    fn events() -> Vec<NewEvent> {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default();
        let id = |n: u128| Uuid::from_u128(n);
        let spec = TopicSpec {
            partitions: 3,
            replication_factor: 1,
            config: [("retention.ms".to_string(), "1000".to_string())].into(),
        };
        let event = |n: i64, actor: &str, request: Option<Uuid>, kind: EventKind| NewEvent {
            id: id(1000 + n as u128),
            at: at(n),
            actor: actor.into(),
            topic: Some("orders".into()),
            request_id: request,
            kind,
        };
        vec![
            event(
                1,
                "alice",
                Some(id(1)),
                EventKind::TopicRequested {
                    spec: spec.clone(),
                    reason: Some("why".into()),
                    visibility: Visibility::Restricted,
                },
            ),
            event(
                2,
                "carol",
                Some(id(1)),
                EventKind::RequestApproved { note: None },
            ),
            event(
                3,
                "system",
                Some(id(1)),
                EventKind::TopicProvisioned {
                    spec,
                    already_existed: false,
                },
            ),
            event(
                4,
                "erin",
                Some(id(2)),
                EventKind::AccessRequested {
                    access: Access::Consume,
                    to: None,
                    reason: None,
                },
            ),
            event(
                5,
                "alice",
                Some(id(2)),
                EventKind::AccessApproved {
                    note: Some("ok".into()),
                },
            ),
            event(6, "erin", None, EventKind::Subscribed {}),
            event(
                7,
                "system",
                None,
                EventKind::DriftDetected {
                    drift: "config_differs".into(),
                    detail: "retention.ms".into(),
                },
            ),
            NewEvent {
                topic: None,
                ..event(
                    8,
                    "carol",
                    None,
                    EventKind::TokenIssued {
                        token_id: id(3),
                        name: "loader".into(),
                        roles: [identity::Role::Producer].into(),
                        sha256: "ab".repeat(32),
                        expires_at: Some(at(9)),
                    },
                )
            },
        ]
    }

    fn state() -> State {
        let mut state = State::default();
        for event in events() {
            state.apply(event);
        }
        state
    }

    /// A log whose first events were written before row version 3 (the JSON-encoded hash
    /// input) and the rest by this version replays into the state the events build live.
    #[tokio::test]
    async fn a_replay_of_old_and_new_rows_builds_the_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = events();
        let (old, new) = events.split_at(events.len() / 2);
        let head = events::append_rows_at(dir.path(), events::ChainHead::default(), old, 2)
            .expect("old rows");
        let store = Store::open(dir.path(), events::Durability::Normal).expect("open");
        let (writer, thread) = store.into_writer(head).expect("writer");
        writer
            .append(new.to_vec())
            .await
            .expect("reply")
            .expect("commit");
        drop(writer);
        thread.join();
        let store = Store::open(dir.path(), events::Durability::Normal).expect("open");
        let (replayed, head, _) = store.recover::<State>(false).expect("replay");
        assert_eq!(head.seq, events.len() as u64);
        assert_eq!(replayed, state());
    }

    #[test]
    fn the_state_survives_a_snapshot() {
        let state = state();
        assert_ne!(state, State::default());
        let head = events::ChainHead {
            seq: 8,
            hash: "01".repeat(32),
        };
        let bytes = events::snapshot_bytes(&head, &state).expect("encode");
        let (at, back) = events::snapshot_state::<State>(&bytes).expect("decode");
        assert_eq!(at, head);
        assert_eq!(back, state);
    }

    /// postcard does not describe its layout: a changed state type would decode as something
    /// else. This digest changes with the layout, and says when `SNAPSHOT_VERSION` must move.
    #[test]
    fn layout_is_pinned() {
        let head = events::ChainHead::default();
        let bytes = events::snapshot_bytes(&head, &state()).expect("encode");
        let digest = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            (events::SNAPSHOT_VERSION, digest.as_str()),
            (
                5,
                "4ccf3c3557bea2e6259015035e44c613c0eb9f84a67e28d3240edfd2a5d0e233"
            ),
            "the snapshot layout changed: bump SNAPSHOT_VERSION and pin the new digest"
        );
    }
}
