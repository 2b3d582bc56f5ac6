//! The multi-threaded tokio runtime the facades run on.
//!
//! The actors live on the actix `System` thread, where each handler runs to completion before
//! the next: that thread is for decisions. The work that scales with traffic (the HTTP accept
//! loop and its connections, JSON parsing, websocket pumps, each feed's Kafka reader and its
//! frame rendering, the Kafka-protocol gateway) runs here instead, on one worker thread per
//! core, and reaches the actors through their `Addr`, which is `Send`.

use tokio::runtime::{Handle, Runtime};

/// Owns the runtime; dropping it stops the runtime without blocking, which is allowed inside
/// the actix thread's own async context (a plain `Runtime` drop there panics).
pub(crate) struct Facades {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Facades {
    /// Starts `workers` worker threads (at least one).
    pub(crate) fn start(workers: usize) -> std::io::Result<Facades> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("kafflow-facade")
            .enable_all()
            .build()?;
        tracing::info!(workers = workers.max(1), "Facade runtime started.");
        Ok(Facades {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for Facades {
    fn drop(&mut self) {
        // By now `serve` has waited for every task that holds a shutdown guard; what is left
        // (idle keep-alive reads, a gateway connection past its deadline) is cancelled.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The worker count when `[server] worker_threads` is not set: one per core.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
