//! The Kafka-protocol gateway: unmodified Kafka clients connect here instead of to the brokers
//! and are governed like every other KafFlow caller.
//!
//! Like `http`, it is a facade: it decodes a request, asks the actors (through `rules`), and
//! encodes the answer. It holds no governance rule of its own. Record batches are forwarded as
//! bytes unless a rule needs to read them (records for a pending topic, which go to the spool).
//!
//! - `connection`: one client connection: frames, ApiVersions, SASL, dispatch by API.
//! - `metadata`: Metadata, FindCoordinator and DescribeCluster, with every broker address
//!   replaced by the gateway's and the topics filtered to what the principal may see.
//! - `produce`: Produce and InitProducerId: forwarded to the leader, or held in the spool.
//! - `groups`: Fetch, ListOffsets, OffsetForLeaderEpoch, offsets and consumer groups.
//! - `admin`: CreateTopics and DeleteTopics become requests; other admin writes are refused.
//! - `upstream`: a connection to one broker. `wire`: framing. `error`: domain errors to Kafka
//!   error codes, in one place. `rules`: the questions the gateway asks of the actors.
//!
//! Every broker is reached through a port of its own on the gateway ("port per broker"): the
//! listen port is the bootstrap, and a broker's port is `broker_port_base + node id`, or a
//! free port picked when the gateway first sees the broker in a Metadata answer.

mod admin;
mod connection;
mod error;
mod groups;
mod inflate;
mod metadata;
mod produce;
pub(crate) mod rules;
mod sequences;
mod upstream;
mod versions;
mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::GatewayConfig;
use crate::shutdown::{Guard, Shutdown};

pub use rules::Rules;

/// Which broker a gateway port stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The listen port: any broker of the bootstrap list.
    Bootstrap,
    Broker(i32),
}

/// A broker as the gateway knows it: where it really is, and which gateway port stands for it.
#[derive(Debug, Clone)]
struct BrokerRoute {
    upstream: String,
    port: u16,
}

/// What every connection of the gateway shares.
pub(crate) struct Shared {
    config: GatewayConfig,
    /// The host clients are told to connect to.
    advertised_host: String,
    /// The IP the broker ports bind to (the listen address's).
    bind_ip: IpAddr,
    bootstrap_upstreams: Vec<String>,
    brokers: Mutex<HashMap<i32, BrokerRoute>>,
    versions: tokio::sync::OnceCell<Arc<versions::Versions>>,
    /// One clone per open connection: shutdown waits until only the gateway's own is left.
    open: Arc<()>,
    /// Producer ids that sent records to a topic while it was held: the rest of their batches
    /// for that topic go the same way, so their order and their sequence numbers hold; and
    /// their last batches, so that a retry is not held twice.
    pub(crate) held_producers: sequences::HeldProducers,
    pub(crate) rules: Rules,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
    runtime: tokio::runtime::Handle,
    /// Kept by every accept loop and connection; dropped when they are done.
    guard: Mutex<Option<Guard>>,
}

impl Shared {
    /// The gateway port that stands for `node_id` whose real address is `host:port`, bound
    /// at first sight.
    pub(crate) fn broker_port(self: &Arc<Self>, node_id: i32, host: &str, port: i32) -> u16 {
        let upstream = format!("{host}:{port}");
        let mut brokers = match self.brokers.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(route) = brokers.get_mut(&node_id) {
            if route.upstream != upstream {
                tracing::info!(node_id, %upstream, "Broker moved.");
                route.upstream = upstream;
            }
            return route.port;
        }
        let wanted = match self.config.broker_port_base {
            Some(base) => u16::try_from(i64::from(base) + i64::from(node_id)).unwrap_or(0),
            None => 0,
        };
        match self.bind_broker_port(node_id, wanted) {
            Ok(port) => {
                tracing::info!(node_id, %upstream, port, "Broker reachable through the gateway.");
                brokers.insert(node_id, BrokerRoute { upstream, port });
                port
            }
            Err(e) => {
                // Clients would be sent nowhere: say so loudly, and point them at the bootstrap.
                tracing::error!(node_id, port = wanted, error = %e, "Cannot bind a gateway port for a broker.");
                0
            }
        }
    }

    fn bind_broker_port(self: &Arc<Self>, node_id: i32, port: u16) -> std::io::Result<u16> {
        let listener = std::net::TcpListener::bind(SocketAddr::new(self.bind_ip, port))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?.port();
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(shared, listener, Target::Broker(node_id)).await,
                Err(e) => tracing::error!(node_id, error = %e, "Gateway broker port unusable."),
            }
        });
        Ok(bound)
    }

    /// Where a connection to `target` goes upstream.
    fn upstream_of(&self, target: Target) -> Vec<String> {
        match target {
            Target::Bootstrap => self.bootstrap_upstreams.clone(),
            Target::Broker(node_id) => {
                let brokers = match self.brokers.lock() {
                    Ok(b) => b,
                    Err(poisoned) => poisoned.into_inner(),
                };
                match brokers.get(&node_id) {
                    Some(route) => vec![route.upstream.clone()],
                    None => self.bootstrap_upstreams.clone(),
                }
            }
        }
    }

    fn guard(&self) -> Option<Guard> {
        match self.guard.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The gateway's listen socket, bound before anything else starts (a port in use is reported
/// first), then started once the actors are up.
pub struct Gateway {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Gateway {
    pub fn bind(listen: SocketAddr) -> Result<Gateway, GatewayError> {
        let error = |source| GatewayError::Listen {
            addr: listen,
            source,
        };
        let listener = std::net::TcpListener::bind(listen).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let addr = listener.local_addr().map_err(error)?;
        Ok(Gateway { listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves on `runtime` (the facade runtime, one worker per core): the hot path does not
    /// share the actors' thread. `guard` is held until every connection has ended after
    /// shutdown, or a deadline has passed; connections still open then end with the runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        self,
        config: GatewayConfig,
        bootstrap_servers: &str,
        rules: Rules,
        tls: Option<TlsAcceptor>,
        shutdown: Shutdown,
        guard: Guard,
        runtime: &tokio::runtime::Handle,
    ) {
        let bind_ip = self.addr.ip();
        let advertised_host = config.advertised_host.clone().unwrap_or_else(|| {
            if bind_ip.is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST).to_string()
            } else {
                bind_ip.to_string()
            }
        });
        let bootstrap_upstreams = bootstrap_servers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let shared = Arc::new(Shared {
            config,
            advertised_host,
            bind_ip,
            bootstrap_upstreams,
            brokers: Mutex::new(HashMap::new()),
            versions: tokio::sync::OnceCell::new(),
            open: Arc::new(()),
            held_producers: sequences::HeldProducers::default(),
            rules,
            tls,
            shutdown,
            runtime: runtime.clone(),
            guard: Mutex::new(Some(guard)),
        });
        let listener = self.listener;
        runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(Arc::clone(&shared), listener, Target::Bootstrap).await,
                Err(e) => {
                    tracing::error!(error = %e, "Gateway listener unusable; the gateway is off.")
                }
            }
            // Connections answer what they have read, then end.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&shared.open) > 1 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let mut guard = match shared.guard.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.take();
        });
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, target: Target) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                tokio::spawn(connection::serve(shared, stream, peer, target));
            }
            Err(e) => {
                tracing::warn!(error = %e, "Gateway accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
