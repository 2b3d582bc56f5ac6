//! The listener: takes records in from producers, over HTTP (`IngestRecords`) and over the
//! TCP line protocol, validates them and hands them to the publisher. It never waits on Kafka
//! or on an approval to accept a record: the publisher holds what cannot go yet.
//!
//! TCP protocol: the client sends `AUTH <token>`, then one JSON record per line
//! (`{"topic", "key"?, "value", "headers"?}`). The server answers `OK 0` to a good AUTH,
//! `OK <n>` whenever the first n accepted records of the connection are durable (at least
//! every 100 ms while records flow), and `ERR <line> <code> <message>` for a line it refuses,
//! without closing the connection. Lines are numbered from 1, the AUTH line included.
//!
//! On shutdown the TCP listener stops accepting, each connection stops reading, answers every
//! line it has read (its final `OK n`, or `ERR`s) and closes; the shutdown waits for that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::approval::{Approval, RequestTopic};
use super::publisher::{Publish, Publisher, Receipt};
use crate::error::{Error, Result};
use crate::identity::{Directory, Principal, Role};
use crate::record::{Record, RecordIn};
use crate::shutdown::{Guard, Shutdown};

/// Records gathered from one connection before they are handed on together.
const TCP_BATCH: usize = 2000;
/// Batches of one connection waiting for durability before the reader stops reading.
const TCP_IN_FLIGHT: usize = 64;
const OK_EVERY: Duration = Duration::from_millis(100);

/// Records posted over HTTP for one topic.
#[derive(Message)]
#[rtype(result = "Result<Accepted>")]
pub struct IngestRecords {
    pub principal: Principal,
    pub topic: String,
    pub records: Vec<RecordIn>,
    /// File a create request (policy defaults) when the topic is unknown.
    pub request: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Accepted {
    pub accepted: u64,
    pub published: u64,
    pub held: u64,
}

pub struct Listener {
    publisher: Addr<Publisher>,
    approval: Addr<Approval>,
    principals: Arc<Directory>,
    max_record_bytes: usize,
    tcp: Option<TcpListener>,
    shutdown: Shutdown,
    guard: Option<Guard>,
}

impl Listener {
    pub fn new(
        publisher: Addr<Publisher>,
        approval: Addr<Approval>,
        principals: Arc<Directory>,
        max_record_bytes: usize,
        tcp: TcpListener,
        shutdown: Shutdown,
        guard: Guard,
    ) -> Self {
        Listener {
            publisher,
            approval,
            principals,
            max_record_bytes,
            tcp: Some(tcp),
            shutdown,
            guard: Some(guard),
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
            principals: self.principals.clone(),
            max_record_bytes: self.max_record_bytes,
            shutdown: self.shutdown.clone(),
            _guard: guard,
        };
        // Parsing lines is the CPU-heavy part of ingest: it runs on a thread of its own, beside
        // the actors, and hands whole batches to the publisher.
        let listener = match tcp.into_std() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "TCP ingest listener unusable; TCP ingest is off.");
                return;
            }
        };
        let started = std::thread::Builder::new()
            .name("tcp-ingest".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(ingest.accept_loop(listener)),
                    Err(e) => {
                        tracing::error!(error = %e, "TCP ingest runtime failed; TCP ingest is off.")
                    }
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "TCP ingest thread failed; TCP ingest is off.");
        }
    }
}

fn require_producer(principal: &Principal) -> Result<()> {
    principal.require_any(&[Role::Producer])
}

impl Handler<IngestRecords> for Listener {
    type Result = ResponseFuture<Result<Accepted>>;

    fn handle(&mut self, msg: IngestRecords, _: &mut Context<Self>) -> Self::Result {
        let max = self.max_record_bytes;
        let checked = require_producer(&msg.principal).and_then(|_| {
            if msg.records.is_empty() {
                return Err(Error::InvalidRecord("the call has no records".into()));
            }
            msg.records
                .into_iter()
                .enumerate()
                .map(|(index, r)| {
                    if r.topic.as_ref().is_some_and(|t| t != &msg.topic) {
                        return Err(Error::BadRecord {
                            index,
                            reason: "its topic differs from the topic in the path".into(),
                        });
                    }
                    r.into_record(max).map_err(|e| Error::BadRecord {
                        index,
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<Record>>>()
        });
        let publisher = self.publisher.clone();
        let approval = self.approval.clone();
        Box::pin(async move {
            let records = checked?;
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
    principals: Arc<Directory>,
    max_record_bytes: usize,
    shutdown: Shutdown,
    /// Held (never read) by the accept loop and every connection until its last line is
    /// answered.
    _guard: Guard,
}

/// One group of records handed to the publisher, with the line numbers they came from.
struct Group {
    lines: Vec<u64>,
    reply: actix::dev::Request<Publisher, Publish>,
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
    /// runtime that runs this ends when it returns).
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
                    let ingest = self.clone();
                    connections.spawn(async move {
                        if let Err(e) = ingest.connection(stream).await {
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

    async fn connection(self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::with_capacity(256 * 1024, read);
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Reply>();
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

        let max_line = self.max_record_bytes * 2 + 64 * 1024;
        let mut line = Vec::with_capacity(1024);
        let mut shutdown = self.shutdown.clone();
        let first = tokio::select! {
            read = read_line(&mut reader, &mut line, max_line) => read?,
            _ = shutdown.recv() => LineRead::Eof,
        };
        let principal = match first {
            LineRead::Line => self.authenticate(&line),
            LineRead::Eof => return Ok(()),
            LineRead::TooLong => Err(Error::InvalidRecord("line too long".into())),
        };
        let principal = match principal {
            Ok(p) => p,
            Err(e) => {
                let _ = reply_tx.send(Reply::Err {
                    line: 1,
                    code: e.code(),
                    message: e.to_string(),
                });
                drop(reply_tx);
                let _ = writer.await;
                return Ok(());
            }
        };
        let _ = reply_tx.send(Reply::Ok(0));

        let (batch_tx, batch_rx) = mpsc::channel::<Vec<Group>>(TCP_IN_FLIGHT);
        let acks = tokio::spawn(acknowledge(batch_rx, reply_tx.clone()));
        let mut line_no = 1u64;
        let mut batch = Batch::default();
        loop {
            // At shutdown, a line not read whole is not accepted: the client's last `OK n`
            // says which lines are durable.
            let read = tokio::select! {
                read = read_line(&mut reader, &mut line, max_line) => read?,
                _ = shutdown.recv() => LineRead::Eof,
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
                    let _ = reply_tx.send(Reply::Err {
                        line: line_no,
                        code: e.code(),
                        message: e.to_string(),
                    });
                }
            }
            // Hand on what we have when the batch is full or the socket has nothing more now.
            if batch.len >= TCP_BATCH || (!batch.is_empty() && reader.buffer().is_empty()) {
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
        drop(reply_tx);
        let _ = writer.await;
        Ok(())
    }

    fn authenticate(&self, line: &[u8]) -> Result<Principal> {
        let text = std::str::from_utf8(line).map_err(|_| Error::Unauthorized)?;
        let token = text
            .trim()
            .strip_prefix("AUTH ")
            .ok_or(Error::Unauthorized)?;
        let principal = self.principals.authenticate(token.trim())?;
        require_producer(&principal)?;
        Ok(principal)
    }

    /// Parses a record line into `batch`; a blank line is skipped.
    fn parse_into(&self, line: &[u8], line_no: u64, batch: &mut Batch) -> Result<()> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
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
        let value = if raw.starts_with('"') {
            serde_json::from_str::<String>(raw)
                .map_err(|e| Error::InvalidRecord(e.to_string()))?
                .into_bytes()
        } else {
            raw.as_bytes().to_vec()
        };
        let record = Record {
            key: parsed.key,
            value,
            headers: parsed.headers,
        };
        if record.size() > self.max_record_bytes as u64 {
            return Err(Error::InvalidRecord(format!(
                "record is {} bytes (key, value and headers), more than the limit of {}",
                record.size(),
                self.max_record_bytes
            )));
        }
        batch.push(&topic, line_no, record);
        Ok(())
    }

    /// Sends the batch to the publisher, one message per topic, in order.
    fn hand_on(&self, principal: &Principal, batch: Batch) -> Vec<Group> {
        batch
            .by_topic
            .into_iter()
            .map(|(topic, lines, records)| Group {
                lines,
                reply: self.publisher.send(Publish {
                    producer: principal.name.clone(),
                    topic,
                    records,
                    requested: false,
                }),
            })
            .collect()
    }
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
async fn acknowledge(
    mut batches: mpsc::Receiver<Vec<Group>>,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let mut durable = 0u64;
    let mut reported = 0u64;
    let mut last_ok = Instant::now();
    while let Some(groups) = batches.recv().await {
        for group in groups {
            match group.reply.await {
                Ok(Ok(receipt)) => durable += receipt.published + receipt.held,
                Ok(Err(e)) => report_lines(&replies, &group.lines, &e),
                Err(e) => report_lines(&replies, &group.lines, &Error::from(e)),
            }
        }
        if durable != reported && (batches.is_empty() || last_ok.elapsed() >= OK_EVERY) {
            let _ = replies.send(Reply::Ok(durable));
            reported = durable;
            last_ok = Instant::now();
        }
    }
    if durable != reported {
        let _ = replies.send(Reply::Ok(durable));
    }
}

fn report_lines(replies: &mpsc::UnboundedSender<Reply>, lines: &[u64], error: &Error) {
    for &line in lines {
        let _ = replies.send(Reply::Err {
            line,
            code: error.code(),
            message: error.to_string(),
        });
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
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
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
