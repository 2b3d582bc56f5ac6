//! One shutdown for every task, the mini-redis way.
//!
//! `serve` owns a `Coordinator`. Every task that accepts work (the HTTP server, the TCP ingest
//! listener and its connections, each feed) holds a `Shutdown`, which resolves once
//! shutdown begins, and a `Guard`, which it drops only after it has answered the last piece of
//! work it accepted. `serve` begins the shutdown, then waits until every guard is gone (or the
//! configured timeout passes).
//!
//! A fatal error (the event log can no longer be written) travels the other way: any part of
//! the service reports it on `Fatal`, and `serve` shuts down and returns it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::events::StoreError;

/// Resolves once shutdown has begun. Cheap to clone; every clone, even one made after the
/// signal, sees it (a watch, not a broadcast that a late subscriber would miss).
#[derive(Debug, Clone)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.notify.borrow()
    }

    /// Waits for the shutdown signal (returns at once if it was already given).
    pub async fn recv(&mut self) {
        // An error means the coordinator is gone, which is a shutdown too.
        let _ = self.notify.wait_for(|&stopping| stopping).await;
    }
}

/// Held by a task until it has finished the work it accepted; `serve` waits for all of them.
#[derive(Debug, Clone)]
pub struct Guard(#[allow(dead_code)] mpsc::Sender<()>);

/// Why the service had to stop on its own.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("the event log cannot be written: {0}")]
    Log(#[from] StoreError),
}

/// Where a part of the service reports a fatal error.
#[derive(Debug, Clone)]
pub struct Fatal(mpsc::UnboundedSender<FatalError>);

impl Fatal {
    pub fn report(&self, error: FatalError) {
        tracing::error!(%error, "Fatal error; shutting down.");
        let _ = self.0.send(error);
    }

    /// A reporter whose reports go nowhere: for tests and tools that run actors without `serve`.
    pub fn detached() -> Fatal {
        let (tx, _) = mpsc::unbounded_channel();
        Fatal(tx)
    }
}

/// Owned by `serve`: hands out `Shutdown`s, `Guard`s and the `Fatal` reporter.
pub struct Coordinator {
    notify: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
    fatal_tx: mpsc::UnboundedSender<FatalError>,
    fatal_rx: mpsc::UnboundedReceiver<FatalError>,
}

impl Default for Coordinator {
    fn default() -> Self {
        let (notify, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        Coordinator {
            notify,
            done_tx,
            done_rx,
            fatal_tx,
            fatal_rx,
        }
    }
}

impl Coordinator {
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            notify: self.notify.subscribe(),
        }
    }

    pub fn guard(&self) -> Guard {
        Guard(self.done_tx.clone())
    }

    pub fn fatal(&self) -> Fatal {
        Fatal(self.fatal_tx.clone())
    }

    /// Waits for the first fatal error. Never resolves if none comes.
    pub async fn fatal_error(&mut self) -> FatalError {
        match self.fatal_rx.recv().await {
            Some(error) => error,
            // `self` holds a sender, so the channel cannot close while we wait.
            None => std::future::pending().await,
        }
    }

    /// Tells every task to stop accepting work, then waits until every guard is dropped or
    /// `timeout` passes. Returns whether every task finished in time.
    pub async fn finish(self, timeout: Duration) -> bool {
        let Coordinator {
            notify,
            done_tx,
            mut done_rx,
            ..
        } = self;
        notify.send_replace(true);
        drop(done_tx);
        tokio::time::timeout(timeout, done_rx.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_waits_for_every_guard() {
        let coordinator = Coordinator::default();
        let mut shutdown = coordinator.shutdown();
        let guard = coordinator.guard();
        let task = tokio::spawn(async move {
            shutdown.recv().await;
            // A clone made after the signal sees it too.
            let late = shutdown.clone();
            assert!(late.is_shutdown());
            // The last acknowledgement goes out after the signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
            shutdown.is_shutdown()
        });
        assert!(coordinator.finish(Duration::from_secs(10)).await);
        assert!(task.await.expect("task"));
    }

    #[tokio::test]
    async fn finish_gives_up_after_the_timeout() {
        let coordinator = Coordinator::default();
        let _stuck = coordinator.guard();
        assert!(!coordinator.finish(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_fatal_report_reaches_the_coordinator() {
        let mut coordinator = Coordinator::default();
        coordinator
            .fatal()
            .report(FatalError::Log(StoreError::WriterGone));
        assert!(matches!(
            coordinator.fatal_error().await,
            FatalError::Log(StoreError::WriterGone)
        ));
    }
}
