//! A connection to one upstream broker. Requests are written in order and Kafka answers them
//! in order on one connection, so each answer goes to the oldest waiting caller.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::wire::{read_frame, write_frame, WireError, MAX_FRAME_BYTES};

/// How long a broker may take to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a caller gets back: the response payload (header and body), or why there is none.
pub(crate) type Answer = oneshot::Receiver<Result<Bytes, UpstreamError>>;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("broker {addr} unreachable: {why}")]
    Unreachable { addr: String, why: String },
    #[error("broker {addr} closed the connection: {why}")]
    Closed { addr: String, why: String },
}

struct Waiting {
    reply: oneshot::Sender<Result<Bytes, UpstreamError>>,
}

/// One TCP connection to a broker, shared by one client connection's requests.
pub(crate) struct Upstream {
    addr: String,
    /// Writes and the queue of callers must stay in the same order: one lock for both.
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    half: tokio::net::tcp::OwnedWriteHalf,
    waiting: mpsc::UnboundedSender<Waiting>,
    /// Set by the reader when the connection ends, so the next call reconnects.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    pub(crate) fn new(addr: String) -> Upstream {
        Upstream {
            addr,
            writer: Mutex::new(None),
        }
    }

    /// Sends a request payload. With `expect_answer` false (a Produce with `acks=0`) the
    /// broker sends nothing back and neither does this.
    pub(crate) async fn call(
        &self,
        payload: &Bytes,
        expect_answer: bool,
    ) -> Result<Option<Answer>, UpstreamError> {
        let mut guard = self.writer.lock().await;
        // Connected once, never again: a request written on a new connection after the old
        // one broke could overtake one the client will retry, so the client reconnects instead.
        if guard
            .as_ref()
            .is_some_and(|w| w.broken.load(std::sync::atomic::Ordering::Acquire))
        {
            return Err(self.closed("the broker connection broke"));
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let Some(writer) = guard.as_mut() else {
            return Err(self.unreachable("no connection"));
        };
        let answer = if expect_answer {
            let (reply, answer) = oneshot::channel();
            if writer.waiting.send(Waiting { reply }).is_err() {
                return Err(self.closed("reader stopped"));
            }
            Some(answer)
        } else {
            None
        };
        if let Err(e) = write_frame(&mut writer.half, payload).await {
            writer
                .broken
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(self.closed(e));
        }
        Ok(answer)
    }

    /// A call whose answer is awaited here.
    pub(crate) async fn round_trip(&self, payload: &Bytes) -> Result<Bytes, UpstreamError> {
        let answer = self
            .call(payload, true)
            .await?
            .ok_or_else(|| self.closed("no answer expected"))?;
        answer.await.map_err(|_| self.closed("connection lost"))?
    }

    async fn connect(&self) -> Result<Writer, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| self.unreachable("connect timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let _ = stream.set_nodelay(true);
        let (mut read, half) = stream.into_split();
        let (waiting, mut queue) = mpsc::unbounded_channel::<Waiting>();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&broken);
        let addr = self.addr.clone();
        tokio::spawn(async move {
            let mut pending: VecDeque<Waiting> = VecDeque::new();
            let why = loop {
                match read_frame(&mut read, MAX_FRAME_BYTES).await {
                    Ok(Some(payload)) => {
                        while let Ok(w) = queue.try_recv() {
                            pending.push_back(w);
                        }
                        let next = match pending.pop_front() {
                            Some(w) => Some(w),
                            None => queue.recv().await,
                        };
                        match next {
                            Some(w) => {
                                let _ = w.reply.send(Ok(payload));
                            }
                            None => break "unexpected answer".to_string(),
                        }
                    }
                    Ok(None) => break "end of stream".to_string(),
                    Err(WireError::Io(e)) => break e.to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            flag.store(true, std::sync::atomic::Ordering::Release);
            queue.close();
            while let Ok(w) = queue.try_recv() {
                pending.push_back(w);
            }
            for w in pending {
                let _ = w.reply.send(Err(UpstreamError::Closed {
                    addr: addr.clone(),
                    why: why.clone(),
                }));
            }
        });
        Ok(Writer {
            half,
            waiting,
            broken,
        })
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            addr: self.addr.clone(),
            why: why.to_string(),
        }
    }

    fn closed(&self, why: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Closed {
            addr: self.addr.clone(),
            why: why.to_string(),
        }
    }
}
