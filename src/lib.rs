//! KafFlow: a governed gateway for Apache Kafka.
//!
//! No topic exists in Kafka until a producer asks for it and an administrator approves it.
//! Every decision is an event in an append-only, hash-chained SQLite log, and all state is
//! rebuilt from that log at startup.
//!
//! The house:
//! - `events`: the event types and the log (append with group commit, replay, hash chain).
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
//! - `sqlite`: how KafFlow opens its SQLite files and applies migrations.
//! - `error`: the domain errors, each with a stable code.
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
pub mod metrics;
pub mod record;
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
}

/// Everything rebuilt from the log, one part per actor that owns state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub governance: Governance,
    pub subscriptions: SubscriptionBook,
    pub drift: actors::watcher::DriftBook,
    pub tokens: TokenBook,
}

impl State {
    /// Each event goes to the one part that owns its kind (`journal::owner`).
    pub fn apply(&mut self, event: &events::NewEvent) {
        match actors::journal::owner(&event.kind) {
            Owner::Registry => self.governance.apply(event),
            Owner::Subscriptions => self.subscriptions.apply(event),
            Owner::Watcher => self.drift.apply(event),
            Owner::Tokens => self.tokens.apply(event),
            // The publisher's state is the spool; its events are history.
            Owner::Publisher => {}
        }
    }
}

/// Rebuilds state from the log in `data_dir` and returns it with the open store.
pub fn replay(config: &Config) -> Result<(Store, State, events::ChainHead), StoreError> {
    let store = Store::open(&config.data_dir, config.durability)?;
    let mut state = State::default();
    let started = std::time::Instant::now();
    let head = store.replay(|event| state.apply(&event.body))?;
    tracing::info!(
        events = head.seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Log replayed."
    );
    Ok((store, state, head))
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
/// run inside an actix `System`. `on_listening` is called with the bound addresses once the
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
    // The TLS files first: an unusable certificate is a config error, reported before all.
    let (http_tls, ingest_tls) = match &config.tls {
        Some(files) => (
            Some(tls::acceptor(files, &[b"http/1.1"])?),
            Some(tls::acceptor(files, &[])?),
        ),
        None => (None, None),
    };
    // Bind first: a port in use is reported before any other work.
    let listener = listen_nodelay(config.listen).map_err(|source| StartError::Listen {
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
    let (store, state, head) = replay(&config)?;
    let (writer, writer_thread) = store.into_writer(head)?;
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
    )
    .start();
    let provisioner = Provisioner::new(&config.kafka, registry.clone())?.start();
    let approval =
        Approval::new(config.policy.clone(), registry.clone(), provisioner.clone()).start();

    let (spool, contents) = Spool::open(&config.data_dir, config.durability)?;
    let producer = BatchProducer::new(&kafka::producer_config(
        &config.kafka,
        config.publisher.delivery_timeout_ms,
    ))?;
    let publisher = Publisher::new(
        producer,
        spool,
        contents,
        config.spool.clone(),
        event_store.clone(),
    );
    let direct_topics = publisher.direct_topics();
    let publisher = publisher.start();
    // Routes as the log left them; from here on the watcher keeps them in step. Nothing is
    // appended before the watcher follows the log: the provisioner resumes only below.
    for (topic, route) in registry.send(AllRoutes).await? {
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
                governed_view,
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
            )?;
            tracing::info!(%addr, "Kafka-protocol gateway listening.");
            Some(addr)
        }
        None => None,
    };
    let listener_actor = Listener::new(
        publisher.clone(),
        approval.clone(),
        identity.clone(),
        registry.clone(),
        config.limits.clone(),
        actors::listener::IngestSocket {
            tcp: ingest,
            tls: ingest_tls,
        },
        coordinator.shutdown(),
        coordinator.guard(),
    )
    .start();

    // Kafka work that was approved but not finished before the last stop.
    for request in registry.send(UnfinishedWork).await? {
        tracing::info!(topic = %request.topic, request_id = %request.id, "Resuming unfinished Kafka work.");
        provisioner.do_send(Provision(request));
    }

    let app = http::App {
        identity,
        tokens,
        registry,
        approval,
        event_store: event_store.clone(),
        provisioner,
        subscriptions,
        listener: listener_actor,
        publisher,
        watcher,
        shutdown: coordinator.shutdown(),
        feeds_done: coordinator.guard(),
        limits: config.limits.clone(),
    };
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
    actix::spawn(async move {
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
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Shut down."
    );
    outcome
}
