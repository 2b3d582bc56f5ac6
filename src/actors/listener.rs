//! The listener: takes records in from producers, over HTTP (`IngestRecords`) and over the
//! TCP line protocol, validates them and hands them to the publisher. It never waits on Kafka
//! or on an approval to accept a record: the publisher holds what cannot go yet.
//!
//! TCP protocol: the client sends `AUTH <token>`, then one JSON record per line
//! (`{"topic", "key"?, "value", "headers"?}`). The server answers `OK 0` to a good AUTH,
//! `OK <n>` whenever the first n accepted records of the connection are durable (at least
//! every 100 ms while records flow), and `ERR <line> <code> <message>` for a line it refuses,
//! without closing the connection. Lines are numbered from 1, the AUTH line included.
//! A connection past `limits.max_tcp_connections` (or, after AUTH, past
//! `limits.max_tcp_connections_per_principal`) gets one `ERR <line> too_many_requests ...`
//! line and is closed.
//!
//! With `[server] tls_cert` and `tls_key` the listener speaks the same protocol inside TLS
//! only. Each handshake runs in its connection's task, bounded by `HANDSHAKE_TIMEOUT`, so a
//! client that stalls or fails it holds up nobody else.
//!
//! On shutdown the TCP listener stops accepting, each connection stops reading, answers every
//! line it has read (its final `OK n`, or `ERR`s) and closes; the shutdown waits for that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::approval::{Approval, RequestTopic};
use super::governed_view::GovernedView;
use super::publisher::{Publish, Publisher, Receipt};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::identity::{Door, Identity, Principal, Refusal, Role, SignedIn};
use crate::record::{Record, RecordIn, RecordLimits};
use crate::shutdown::{Guard, Shutdown};

/// Records gathered from one connection before they are handed on together.
const TCP_BATCH: usize = 2000;
/// Batches of one connection waiting for durability before the reader stops reading.
const TCP_IN_FLIGHT: usize = 64;
const OK_EVERY: Duration = Duration::from_millis(100);
/// How long a refused connection's input is read and dropped after its `ERR` line, so that
/// closing with unread input does not reset the connection before the client reads the line.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// Replies of one connection waiting for the socket before its reader stops reading.
const REPLY_QUEUE: usize = 4096;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Records posted over HTTP for one topic, already checked (`checked_records`): the
/// per-record work is done by the caller, off the actors' thread.
#[derive(Message)]
#[rtype(result = "Result<Accepted>")]
pub struct IngestRecords {
    pub principal: Principal,
    pub topic: String,
    pub records: Vec<Record>,
    /// File a create request (policy defaults) when the topic is unknown.
    pub request: bool,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: u64,
    pub published: u64,
    pub held: u64,
}

/// The TCP ingest socket, and its TLS acceptor when the listener speaks TLS.
pub struct IngestSocket {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

pub struct Listener {
    publisher: Addr<Publisher>,
    approval: Addr<Approval>,
    identity: Identity,
    /// Asked whether a producer may send to a topic, without a message to the registry.
    topics: GovernedView,
    limits: Limits,
    tcp: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
    guard: Option<Guard>,
    /// The facade runtime, where the TCP connections are served.
    tasks: tokio::runtime::Handle,
}

impl Listener {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        publisher: Addr<Publisher>,
        approval: Addr<Approval>,
        identity: Identity,
        topics: GovernedView,
        limits: Limits,
        socket: IngestSocket,
        shutdown: Shutdown,
        guard: Guard,
        tasks: tokio::runtime::Handle,
    ) -> Self {
        Listener {
            publisher,
            approval,
            identity,
            topics,
            limits,
            tcp: Some(socket.tcp),
            tls: socket.tls,
            shutdown,
            guard: Some(guard),
            tasks,
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let (Some(tcp), Some(guard)) = (self.tcp.take(), self.guard.take()) else {
            return;
        };
        let ingest = Ingest {
            publisher: self.publisher.clone(),
            identity: self.identity.clone(),
            topics: self.topics.clone(),
            record_limits: RecordLimits::from(&self.limits),
            connections: Arc::new(Connections::new(&self.limits)),
            tls: self.tls.clone(),
            shutdown: self.shutdown.clone(),
            _guard: guard,
        };
        // Parsing lines is the CPU-heavy part of ingest: it runs on the facade runtime's
        // workers, beside the actors, and hands whole batches to the publisher. A connection's
        // reader, its acknowledging task and its reply writer are tasks of their own, so they
        // run on different workers while the reader parses.
        let listener = match tcp.into_std() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "TCP ingest listener unusable; TCP ingest is off.");
                return;
            }
        };
        self.tasks.spawn(ingest.accept_loop(listener));
    }
}

fn require_producer(principal: &Principal) -> Result<()> {
    principal.require_any(&[Role::Producer])
}

/// The records of an HTTP call as the publisher takes them, or why the call is refused: the
/// role, the number of records, then each record (its topic, its size). CPU work per record:
/// the HTTP facade runs it on its own threads before it sends `IngestRecords`.
pub fn checked_records(
    principal: &Principal,
    topic: &str,
    records: Vec<RecordIn>,
    limits: &Limits,
) -> Result<Vec<Record>> {
    require_producer(principal)?;
    if records.is_empty() {
        return Err(Error::InvalidRecord("the call has no records".into()));
    }
    if records.len() > limits.max_records_per_call {
        return Err(Error::TooLarge {
            what: "records per call",
            limit: limits.max_records_per_call as u64,
        });
    }
    let record_limits = RecordLimits::from(limits);
    records
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            if r.topic.as_ref().is_some_and(|t| t != topic) {
                return Err(Error::BadRecord {
                    index,
                    reason: "its topic differs from the topic in the path".into(),
                });
            }
            r.into_record(record_limits).map_err(|e| Error::BadRecord {
                index,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Whether `principal` may send records to `topic` now: the answer of the registry's
/// `MayProduce` (committed state, so a revocation that was answered is seen), read from the
/// governed view without a message. A topic that takes no records (unknown, closed) passes:
/// the publisher gives the reason, after `?request=true` has had its chance.
fn may_produce(topics: &GovernedView, principal: &Principal, topic: &str) -> Result<()> {
    match topics.may_produce(principal, topic) {
        Ok(_) | Err(Error::UnknownTopic(_) | Error::TopicClosed { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Handler<IngestRecords> for Listener {
    type Result = ResponseFuture<Result<Accepted>>;

    fn handle(&mut self, msg: IngestRecords, _: &mut Context<Self>) -> Self::Result {
        let allowed = may_produce(&self.topics, &msg.principal, &msg.topic);
        let publisher = self.publisher.clone();
        let approval = self.approval.clone();
        Box::pin(async move {
            allowed?;
            let records = msg.records;
            let accepted = records.len() as u64;
            let publish = |records, requested| Publish {
                producer: msg.principal.name.clone(),
                topic: msg.topic.clone(),
                records,
                requested,
            };
            // Keep a copy only when the records may have to be sent again after a request.
            let retry = msg.request.then(|| records.clone());
            let receipt: Receipt = match (publisher.send(publish(records, false)).await?, retry) {
                (Err(Error::UnknownTopic(_)), Some(records)) => {
                    approval
                        .send(RequestTopic {
                            principal: msg.principal.clone(),
                            topic: msg.topic.clone(),
                            partitions: None,
                            replication_factor: None,
                            config: Default::default(),
                            reason: Some("requested on first produce".into()),
                            visibility: None,
                            validate_only: false,
                        })
                        .await??;
                    publisher.send(publish(records, true)).await??
                }
                (other, _) => other?,
            };
            Ok(Accepted {
                accepted,
                published: receipt.published,
                held: receipt.held,
            })
        })
    }
}

/// What every TCP connection needs.
#[derive(Clone)]
struct Ingest {
    publisher: Addr<Publisher>,
    identity: Identity,
    /// Asked for every batch whether its producer may send to the topic.
    topics: GovernedView,
    record_limits: RecordLimits,
    connections: Arc<Connections>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
    /// Held (never read) by the accept loop and every connection until its last line is
    /// answered.
    _guard: Guard,
}

/// The open TCP connections, in total and per principal, against their limits.
struct Connections {
    total: AtomicUsize,
    by_principal: Mutex<HashMap<String, usize>>,
    max_total: usize,
    max_per_principal: usize,
    retry_after_s: u64,
}

/// One place of `Connections`, given back when dropped.
struct Slot {
    connections: Arc<Connections>,
    principal: Option<String>,
}

impl Connections {
    fn new(limits: &Limits) -> Self {
        Connections {
            total: AtomicUsize::new(0),
            by_principal: Mutex::new(HashMap::new()),
            max_total: limits.max_tcp_connections,
            max_per_principal: limits.max_tcp_connections_per_principal,
            retry_after_s: limits.retry_after_s,
        }
    }

    /// A place among all connections, or `TooMany`.
    fn open(self: &Arc<Self>) -> Result<Slot> {
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Slot {
                connections: self.clone(),
                principal: None,
            }),
            Err(_) => Err(Error::TooMany {
                what: "TCP ingest connections",
                limit: self.max_total as u64,
                retry_after_s: self.retry_after_s,
            }),
        }
    }

    /// Counts the connection against `principal` too, or refuses it.
    fn claim(&self, slot: &mut Slot, principal: &str) -> Result<()> {
        let mut by_principal = self
            .by_principal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = by_principal.entry(principal.to_string()).or_insert(0);
        if *open >= self.max_per_principal {
            return Err(Error::TooMany {
                what: "TCP ingest connections of one principal",
                limit: self.max_per_principal as u64,
                retry_after_s: self.retry_after_s,
            });
        }
        *open += 1;
        slot.principal = Some(principal.to_string());
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(principal) = self.principal.take() {
            let mut by_principal = self
                .connections
                .by_principal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(open) = by_principal.get_mut(&principal) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    by_principal.remove(&principal);
                }
            }
        }
    }
}

/// A connection as the client speaks it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The connection inside TLS when the listener has it; `None` when the handshake failed, took
/// longer than `HANDSHAKE_TIMEOUT` or was cut short by shutdown.
async fn handshake(
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    mut shutdown: Shutdown,
) -> Option<Transport> {
    let Some(acceptor) = tls else {
        return Some(Transport::Plain(stream));
    };
    let peer = stream.peer_addr().ok();
    let done = tokio::select! {
        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => done,
        _ = shutdown.recv() => return None,
    };
    match done {
        Ok(Ok(stream)) => Some(Transport::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed on ingest.");
            crate::metrics::METRICS.tls_handshake_failures.inc();
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake timed out on ingest.");
            crate::metrics::METRICS.tls_handshake_failures.inc();
            None
        }
    }
}

/// Writes one `ERR` line and closes, reading and dropping what the client still sends for a
/// moment so the line is not lost to a reset.
async fn refuse(mut stream: impl AsyncRead + AsyncWrite + Unpin, line: u64, error: &Error) {
    let reply = Reply::Err {
        line,
        code: error.code(),
        message: refusal_message(error),
    };
    if stream.write_all(reply.render().as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// An error's text, with when to try again for a limit (TCP has no `Retry-After`).
fn refusal_message(error: &Error) -> String {
    match error {
        Error::TooMany { retry_after_s, .. } => {
            format!("{error}; retry after {retry_after_s} s")
        }
        other => other.to_string(),
    }
}

/// One group of records handed to the publisher, with the line numbers they came from.
struct Group {
    lines: Vec<u64>,
    reply: Handed,
}

/// A group sent to the publisher, or refused before it.
enum Handed {
    Sent(actix::dev::Request<Publisher, Publish>),
    Refused(Error),
}

enum Reply {
    Ok(u64),
    Err {
        line: u64,
        code: &'static str,
        message: String,
    },
}

impl Reply {
    fn render(&self) -> String {
        match self {
            Reply::Ok(n) => format!("OK {n}\n"),
            Reply::Err {
                line,
                code,
                message,
            } => format!("ERR {line} {code} {}\n", message.replace('\n', " ")),
        }
    }
}

impl Ingest {
    /// Accepts connections until shutdown, then waits for every connection to finish (the
    /// shutdown guard it holds is given back when it returns).
    async fn accept_loop(self, listener: std::net::TcpListener) {
        let tcp = match TcpListener::from_std(listener) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::error!(error = %e, "TCP ingest listener unusable; TCP ingest is off.");
                return;
            }
        };
        let mut shutdown = self.shutdown.clone();
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = shutdown.recv() => break,
            };
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = match self.connections.open() {
                        Ok(slot) => slot,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "Ingest connection refused.");
                            let (tls, shutdown) = (self.tls.clone(), self.shutdown.clone());
                            tokio::spawn(async move {
                                if let Some(stream) = handshake(tls, stream, shutdown).await {
                                    match stream {
                                        Transport::Plain(s) => refuse(s, 0, &e).await,
                                        Transport::Tls(s) => refuse(s, 0, &e).await,
                                    }
                                }
                            });
                            continue;
                        }
                    };
                    let ingest = self.clone();
                    connections.spawn(async move {
                        let shutdown = ingest.shutdown.clone();
                        let ended = match handshake(ingest.tls.clone(), stream, shutdown).await {
                            None => return,
                            Some(Transport::Plain(s)) => ingest.connection(s, slot, peer).await,
                            Some(Transport::Tls(s)) => ingest.connection(s, slot, peer).await,
                        };
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "Ingest connection ended.");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Ingest accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(tcp);
        tracing::info!(
            open = connections.len(),
            "TCP ingest stopped accepting; finishing open connections."
        );
        while connections.join_next().await.is_some() {}
    }

    async fn connection(
        self,
        stream: impl AsyncRead + AsyncWrite + Send + 'static,
        mut slot: Slot,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = BufReader::with_capacity(256 * 1024, read);
        // Bounded: a client that sends lines without reading its replies is slowed down
        // (the reader waits here) instead of growing a queue of replies.
        let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
        let writer = tokio::spawn(async move {
            let mut out = Vec::with_capacity(4096);
            while let Some(reply) = reply_rx.recv().await {
                out.extend_from_slice(reply.render().as_bytes());
                while let Ok(more) = reply_rx.try_recv() {
                    out.extend_from_slice(more.render().as_bytes());
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            let _ = write.shutdown().await;
        });

        let max_line = max_line(self.record_limits);
        let mut line = Vec::with_capacity(1024);
        let mut shutdown = self.shutdown.clone();
        let first = tokio::select! {
            read = read_line(&mut reader, &mut line, max_line) => read?,
            _ = shutdown.recv() => LineRead::Eof,
        };
        let signed = match first {
            LineRead::Line => self.sign_in(&line, peer).await,
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => Err(Error::InvalidRecord("line too long".into())),
        };
        let signed = signed.and_then(|s| {
            self.connections.claim(&mut slot, &s.principal.name)?;
            Ok(s)
        });
        let (principal, credential) = match signed {
            Ok(s) => (s.principal, s.credential),
            Err(e) => {
                let _ = reply_tx
                    .send(Reply::Err {
                        line: 1,
                        code: e.code(),
                        message: refusal_message(&e),
                    })
                    .await;
                drop(reply_tx);
                let _ = writer.await;
                // Drop what the client sent after AUTH for a moment, so the close that
                // follows does not reset the connection before it reads the ERR line.
                linger(&mut reader).await;
                return Ok(());
            }
        };
        let _ = reply_tx.send(Reply::Ok(0)).await;

        let (batch_tx, batch_rx) = mpsc::channel::<Vec<Group>>(TCP_IN_FLIGHT);
        let acks = tokio::spawn(acknowledge(batch_rx, reply_tx.clone()));
        let mut line_no = 1u64;
        let mut batch = Batch::default();
        let revoked = self.identity.revoked(credential);
        tokio::pin!(revoked);
        let mut ended_by_revocation = false;
        loop {
            // At shutdown or revocation, a line not read whole is not accepted: the client's
            // last `OK n` says which lines are durable.
            let read = tokio::select! {
                read = read_line(&mut reader, &mut line, max_line) => read?,
                _ = shutdown.recv() => LineRead::Eof,
                _ = &mut revoked => {
                    ended_by_revocation = true;
                    LineRead::Eof
                }
            };
            if matches!(read, LineRead::Eof) {
                break;
            }
            line_no += 1;
            let parsed = match read {
                LineRead::TooLong => Err(Error::InvalidRecord(format!(
                    "line is longer than {max_line} bytes"
                ))),
                _ => self.parse_into(&line, line_no, &mut batch),
            };
            match parsed {
                Ok(()) => {}
                Err(e) => {
                    let _ = reply_tx
                        .send(Reply::Err {
                            line: line_no,
                            code: e.code(),
                            message: e.to_string(),
                        })
                        .await;
                }
            }
            // Hand on what we have when the batch is full or the socket has nothing more now:
            // a busy connection gives the publisher whole batches, a quiet one every line at once.
            if batch.len >= TCP_BATCH || (!batch.is_empty() && !more_now(&mut reader)) {
                let groups = self.hand_on(&principal, std::mem::take(&mut batch));
                if batch_tx.send(groups).await.is_err() {
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let groups = self.hand_on(&principal, batch);
            let _ = batch_tx.send(groups).await;
        }
        drop(batch_tx);
        let _ = acks.await;
        if ended_by_revocation {
            tracing::info!(%peer, principal = %principal.name, "Ingest connection closed: its token was revoked.");
            let e = Error::TokenRefused(Refusal::Revoked);
            let _ = reply_tx
                .send(Reply::Err {
                    line: 0,
                    code: e.code(),
                    message: e.to_string(),
                })
                .await;
        }
        drop(reply_tx);
        let _ = writer.await;
        if ended_by_revocation {
            // As for a refused AUTH: drop what the client still sends for a moment, so the
            // close does not reset the connection before it reads the ERR line.
            linger(&mut reader).await;
        }
        Ok(())
    }

    /// Signs the `AUTH` line's token in, counting a failure against the client's address.
    async fn sign_in(&self, line: &[u8], peer: std::net::SocketAddr) -> Result<SignedIn> {
        let failures = self.identity.failures();
        failures.admit(peer.ip(), Door::Tcp)?;
        let signed = match auth_token(line) {
            Ok(token) => self.identity.sign_in(token).await,
            Err(e) => Err(e),
        };
        match signed {
            Ok(signed) => {
                require_producer(&signed.principal)?;
                Ok(signed)
            }
            Err(e) => {
                if crate::identity::is_sign_in_failure(&e) {
                    failures.failed(peer.ip(), Door::Tcp);
                }
                Err(e)
            }
        }
    }

    /// Parses a record line into `batch`; a blank line is skipped.
    fn parse_into(&self, line: &[u8], line_no: u64, batch: &mut Batch) -> Result<()> {
        let Some((topic, record)) = parse_line(line, self.record_limits)? else {
            return Ok(());
        };
        batch.push(&topic, line_no, record);
        Ok(())
    }

    /// Sends the batch to the publisher, one message per topic, in order, once the governed
    /// view says the producer may send to the topic (asked per batch, so a revoked grant
    /// refuses the lines read after it). Nothing is awaited here: the reader goes on parsing
    /// while the publisher works, and `acknowledge` waits for durability.
    fn hand_on(&self, principal: &Principal, batch: Batch) -> Vec<Group> {
        batch
            .by_topic
            .into_iter()
            .map(|(topic, lines, records)| {
                let reply = match may_produce(&self.topics, principal, &topic) {
                    Ok(()) => Handed::Sent(self.publisher.send(Publish {
                        producer: principal.name.clone(),
                        topic,
                        records,
                        requested: false,
                    })),
                    Err(e) => Handed::Refused(e),
                };
                Group { lines, reply }
            })
            .collect()
    }
}

/// Whether the connection has more input at once: buffered, or readable from the socket
/// without waiting (looked at once, never awaited). An error is left to the next read.
fn more_now(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> bool {
    use futures_util::FutureExt;
    matches!(reader.fill_buf().now_or_never(), Some(Ok(buf)) if !buf.is_empty())
}

/// Reads and drops what the client sends, for at most `REFUSAL_LINGER` or until it closes.
async fn linger(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The token of an `AUTH <token>` line.
pub(crate) fn auth_token(line: &[u8]) -> Result<&str> {
    let text = std::str::from_utf8(line).map_err(|_| Error::Unauthorized)?;
    let token = text
        .trim()
        .strip_prefix("AUTH ")
        .ok_or(Error::Unauthorized)?;
    Ok(token.trim())
}

/// The longest line read whole: room for a record of the largest size, escaped.
fn max_line(limits: RecordLimits) -> usize {
    limits.max_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// A record line as (topic, record); None for a blank line. The topic is borrowed from the
/// line: a batch names each topic once, not once per record.
pub(crate) fn parse_line(
    line: &[u8],
    limits: RecordLimits,
) -> Result<Option<(std::borrow::Cow<'_, str>, Record)>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Borrowed parse: the topic and a non-string value are taken from the line as they
    // stand, without building a JSON tree per record.
    let parsed: LineIn<'_> =
        serde_json::from_slice(line).map_err(|e| Error::InvalidRecord(e.to_string()))?;
    let topic = parsed
        .topic
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::InvalidRecord("missing \"topic\"".into()))?;
    let raw = parsed.value.get();
    let text = raw.starts_with('"');
    let value = match text_value(raw) {
        Some(Ok(text)) => text,
        Some(Err(e)) => return Err(Error::InvalidRecord(e.to_string())),
        None => raw.as_bytes().to_vec(),
    };
    let mut record = Record {
        key: parsed.key.map(String::into_bytes),
        value: Some(value),
        headers: crate::record::json_headers(parsed.headers),
        partition: None,
        timestamp: None,
    };
    record.check(limits)?;
    if text {
        crate::record::mark_text(&mut record);
    }
    Ok(Some((topic, record)))
}

/// The text of a JSON string value (`raw` as the parser took it from the line), or `None` for
/// any other JSON value. A string without a backslash is its bytes between the quotes (the
/// parser has checked it is a valid string), so most values are copied once and not parsed a
/// second time; only one with escapes goes through the string parser.
fn text_value(raw: &str) -> Option<serde_json::Result<Vec<u8>>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Ok(inner.as_bytes().to_vec()));
    }
    Some(serde_json::from_str::<String>(raw).map(String::into_bytes))
}

/// A TCP record line, parsed without copying what it need not.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    key: Option<String>,
    #[serde(borrow)]
    value: &'a serde_json::value::RawValue,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Records of one connection gathered for the publisher, grouped by topic in arrival order.
#[derive(Default)]
struct Batch {
    by_topic: Vec<(String, Vec<u64>, Vec<Record>)>,
    len: usize,
}

impl Batch {
    fn push(&mut self, topic: &str, line: u64, record: Record) {
        self.len += 1;
        match self.by_topic.iter_mut().find(|(t, _, _)| t == topic) {
            Some((_, lines, records)) => {
                lines.push(line);
                records.push(record);
            }
            None => self
                .by_topic
                .push((topic.to_string(), vec![line], vec![record])),
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Waits for batches in order and reports: cumulative `OK`s, an `ERR` per refused line.
async fn acknowledge(mut batches: mpsc::Receiver<Vec<Group>>, replies: mpsc::Sender<Reply>) {
    let mut durable = 0u64;
    let mut reported = 0u64;
    let mut last_ok = Instant::now();
    while let Some(groups) = batches.recv().await {
        for group in groups {
            let reply = match group.reply {
                Handed::Sent(reply) => reply.await,
                Handed::Refused(e) => Ok(Err(e)),
            };
            match reply {
                Ok(Ok(receipt)) => durable += receipt.published + receipt.held,
                Ok(Err(e)) => report_lines(&replies, &group.lines, &e).await,
                Err(e) => report_lines(&replies, &group.lines, &Error::from(e)).await,
            }
        }
        if durable != reported && (batches.is_empty() || last_ok.elapsed() >= OK_EVERY) {
            let _ = replies.send(Reply::Ok(durable)).await;
            reported = durable;
            last_ok = Instant::now();
        }
    }
    if durable != reported {
        let _ = replies.send(Reply::Ok(durable)).await;
    }
}

async fn report_lines(replies: &mpsc::Sender<Reply>, lines: &[u64], error: &Error) {
    for &line in lines {
        let _ = replies
            .send(Reply::Err {
                line,
                code: error.code(),
                message: error.to_string(),
            })
            .await;
    }
}

enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one line (without its newline) into `line`, never buffering more than `max` bytes:
/// the rest of a longer line is skipped.
async fn read_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    let n = (&mut *reader)
        .take(max as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    if n == 0 {
        return Ok(LineRead::Eof);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        return Ok(LineRead::Line);
    }
    if line.len() <= max {
        // The stream ended without a final newline.
        return Ok(LineRead::Line);
    }
    // Skip to the end of this line.
    let mut skipped = Vec::new();
    loop {
        skipped.clear();
        let n = (&mut *reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut skipped)
            .await?;
        if n == 0 || skipped.last() == Some(&b'\n') {
            return Ok(LineRead::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::strategies::{damaged, deep_nesting, json_value, record_like};
    use proptest::prelude::*;

    const LIMITS: RecordLimits = RecordLimits {
        max_bytes: 200,
        max_headers: 3,
    };

    fn check_line(line: &[u8]) -> std::result::Result<(), TestCaseError> {
        match parse_line(line, LIMITS) {
            Ok(Some((topic, mut record))) => {
                prop_assert!(!topic.is_empty());
                // The limits hold for what the producer sent, without KafFlow's text mark.
                let mark = (
                    crate::record::CONTENT_TYPE.to_string(),
                    Some(crate::record::TEXT_PLAIN.as_bytes().to_vec()),
                );
                if record.headers.last() == Some(&mark) {
                    record.headers.pop();
                }
                prop_assert!(record.size() <= LIMITS.max_bytes as u64);
                prop_assert!(record.headers.len() <= LIMITS.max_headers);
            }
            Ok(None) => prop_assert!(line.iter().all(u8::is_ascii_whitespace)),
            Err(e) => prop_assert_eq!(e.code(), "invalid_record"),
        }
        Ok(())
    }

    fn directory() -> crate::identity::Directory {
        let principal = |name: &str, role| Principal {
            name: name.into(),
            roles: [role].into(),
        };
        crate::identity::Directory::new([
            (
                crate::identity::token_sha256("producer-token"),
                principal("p", Role::Producer),
            ),
            (
                crate::identity::token_sha256("consumer-token"),
                principal("c", Role::Consumer),
            ),
        ])
    }

    /// Runs `read_line` over `input` until the end, through a buffer of `capacity` bytes.
    fn read_all_lines(input: &[u8], capacity: usize, max: usize) -> Vec<Option<Vec<u8>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut reader = BufReader::with_capacity(capacity, input);
            let mut line = Vec::new();
            let mut out = Vec::new();
            loop {
                match read_line(&mut reader, &mut line, max).await.expect("read") {
                    LineRead::Line => out.push(Some(line.clone())),
                    LineRead::TooLong => out.push(None),
                    LineRead::Eof => return out,
                }
            }
        })
    }

    proptest! {
        #[test]
        fn any_line_is_refused_or_parsed(line in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_line(&line)?;
        }

        #[test]
        fn damaged_record_lines_are_refused_or_parsed(
            line in record_like().prop_flat_map(|r| damaged(r.to_string().into_bytes())),
        ) {
            check_line(&line)?;
        }

        #[test]
        fn any_json_line_is_refused_or_parsed(value in json_value()) {
            check_line(value.to_string().as_bytes())?;
        }

        #[test]
        fn a_string_value_reads_as_the_parser_reads_it(text in any::<String>()) {
            let raw = serde_json::to_string(&text).expect("a string encodes");
            let read = text_value(&raw).expect("a string").expect("valid");
            prop_assert_eq!(read, text.into_bytes());
        }

        #[test]
        fn deeply_nested_lines_are_refused(line in deep_nesting()) {
            check_line(&line)?;
        }

        #[test]
        fn only_a_producer_token_authenticates(
            line in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "(AUTH|auth|AUTH )?[ \t]{0,2}(producer-token|consumer-token|.{0,20})[ \t\r]{0,2}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            let directory = directory();
            let signed = auth_token(&line)
                .and_then(|token| directory.authenticate(token))
                .and_then(|p| require_producer(&p).map(|()| p));
            match signed {
                Ok(principal) => {
                    prop_assert_eq!(principal.name, "p");
                    let text = String::from_utf8_lossy(&line);
                    let token = text.trim().strip_prefix("AUTH ").map(str::trim);
                    prop_assert_eq!(token, Some("producer-token"));
                }
                Err(e) => prop_assert!(matches!(e, Error::Unauthorized | Error::Forbidden(_))),
            }
        }

        #[test]
        fn lines_are_read_whole_or_reported_too_long(
            segments in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'x'), Just(b'\r'), Just(b'{')], 0..40),
                0..8,
            ),
            final_newline: bool,
            capacity in 1usize..16,
            max in 1usize..32,
        ) {
            let mut input = segments.join(&b'\n');
            if final_newline && !segments.is_empty() {
                input.push(b'\n');
            }
            let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
            let pieces: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
            let last = pieces.len() - 1;
            for (i, piece) in pieces.into_iter().enumerate() {
                // The piece after the last newline is a line only if it has bytes.
                if i == last && piece.is_empty() {
                    break;
                }
                if piece.len() > max {
                    expected.push(None);
                    continue;
                }
                let mut line = piece.to_vec();
                if i != last && line.last() == Some(&b'\r') {
                    line.pop();
                }
                expected.push(Some(line));
            }
            prop_assert_eq!(read_all_lines(&input, capacity, max), expected);
        }
    }

    #[test]
    fn headers_past_the_limit_are_refused_on_a_line() {
        let line = br#"{"topic":"t","value":1,"headers":{"a":"1","b":"2","c":"3","d":"4"}}"#;
        let refused = parse_line(line, LIMITS);
        assert!(
            matches!(&refused, Err(Error::InvalidRecord(m)) if m.contains("4 headers")),
            "{refused:?}"
        );
    }

    #[test]
    fn connections_are_counted_in_total_and_per_principal() {
        let limits = Limits {
            max_tcp_connections: 3,
            max_tcp_connections_per_principal: 2,
            ..Limits::default()
        };
        let connections = Arc::new(Connections::new(&limits));
        let mut a1 = connections.open().expect("first");
        let mut a2 = connections.open().expect("second");
        let mut a3 = connections.open().expect("third");
        assert!(matches!(
            connections.open(),
            Err(Error::TooMany { limit: 3, .. })
        ));
        connections.claim(&mut a1, "alice").expect("alice 1");
        connections.claim(&mut a2, "alice").expect("alice 2");
        assert!(matches!(
            connections.claim(&mut a3, "alice"),
            Err(Error::TooMany { limit: 2, .. })
        ));
        connections.claim(&mut a3, "bob").expect("bob 1");
        drop(a1);
        let mut a4 = connections.open().expect("a place was given back");
        connections
            .claim(&mut a4, "alice")
            .expect("alice has a place again");
    }
}
