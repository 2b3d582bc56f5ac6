//! The HTTP accept loop: warp's filter served through hyper, over plain TCP or TLS.
//!
//! warp 0.4 has no TLS of its own and no way to plug in an acceptor, so this loop does what
//! its graceful server does, with a TLS handshake in front when the listener has one. Each
//! connection (and its handshake) runs in a task of its own: a client that stalls or fails
//! its handshake holds up nobody else.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use crate::shutdown::Shutdown;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer address of a request's connection, for the handlers that need it (warp's own
/// `addr::remote` is filled only by warp's server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client address of the request, when it came through [`serve`].
pub fn client_addr(
) -> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| addr.map(|a| a.0))
}

/// Serves `routes` on `listener` until `shutdown` fires, then stops accepting and returns
/// once every open connection has answered the requests it had (websockets are closed by
/// their own tasks on the same signal).
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => break,
        };
        let routes = routes.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), peer, routes, watcher).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => done,
                        _ = shutdown.recv() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            connection(TokioIo::new(stream), peer, routes, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                            crate::metrics::METRICS.tls_handshake_failures.inc();
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out.");
                            crate::metrics::METRICS.tls_handshake_failures.inc();
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn connection<I>(io: I, peer: SocketAddr, routes: BoxedFilter<(Response,)>, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let filtered = warp::service(routes);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ClientAddr(peer));
        let mut filtered = filtered.clone();
        async move { filtered.call(request).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = watcher.watch(builder.serve_connection_with_upgrades(io, service));
    if let Err(e) = served.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
    }
}
