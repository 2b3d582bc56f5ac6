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
//! - `config`: the config file and flags, validated once.
//! - `identity`: principals and bearer-token authentication.
//! - `kafka`: client settings and metadata reads shared by the actors that talk to Kafka.
//! - `error`: the domain errors, each with a stable code.

pub mod actors;
pub mod config;
pub mod error;
pub mod events;
pub mod http;
pub mod identity;
pub mod kafka;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Actor;
use tokio::net::TcpListener;

use actors::approval::Approval;
use actors::event_store::EventStore;
use actors::provisioner::{Provision, Provisioner};
use actors::registry::{Governance, Registry, UnfinishedWork};
use config::Config;
use events::{Store, StoreError};

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("actor system stopped during startup")]
    Actors(#[from] actix::MailboxError),
}

/// Rebuilds state from the log in `data_dir` and returns it with the open store.
pub fn replay(config: &Config) -> Result<(Store, Governance, events::ChainHead), StoreError> {
    let store = Store::open(&config.data_dir, config.durability)?;
    let mut state = Governance::default();
    let started = std::time::Instant::now();
    let head = store.replay(|event| state.apply(&event.body))?;
    tracing::info!(
        events = head.seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Log replayed."
    );
    Ok((store, state, head))
}

/// Runs the service until `shutdown` resolves. Must run inside an actix `System`.
/// `on_listening` is called with the bound address once the service accepts connections.
pub async fn serve(
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // Bind first: a port in use is reported before any other work.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let (store, state, head) = replay(&config)?;
    let event_store = EventStore::new(store.into_writer(head)).start();
    let registry = Registry::new(state, event_store.clone()).start();
    let provisioner = Provisioner::new(&config.kafka, registry.clone())?.start();
    let approval =
        Approval::new(config.policy.clone(), registry.clone(), provisioner.clone()).start();

    // Kafka work that was approved but not finished before the last stop.
    for request in registry.send(UnfinishedWork).await? {
        tracing::info!(topic = %request.topic, request_id = %request.id, "Resuming unfinished Kafka work.");
        provisioner.do_send(Provision(request));
    }

    let app = http::App {
        principals: Arc::new(config.principals.clone()),
        registry,
        approval,
        event_store,
        provisioner,
    };
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "KafFlow listening.");
    on_listening(addr);
    warp::serve(http::routes(app))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    Ok(())
}
