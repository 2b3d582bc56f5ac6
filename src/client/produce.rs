//! `kafflow produce`: streams stdin lines as record values to a topic through the TCP
//! ingest listener, and reports how many KafFlow has made durable.
//!
//! `--ingest tls://host:port` speaks the protocol inside TLS, trusting the certificates of
//! `--ca-cert` (or, without it, the public web's roots); `tcp://host:port` or a bare
//! `host:port` speaks it in the clear. `--server` is the HTTP API, as for every other command:
//! it shows the held count and, with `--request`, files the topic's create request first.
//!
//! Each line becomes one record whose value is the line's text. On a terminal a progress line
//! (records/s, acknowledged, held) is kept up to date on stderr; at the end a summary line is
//! printed. A refusal that would repeat for every record (unknown or closed topic, no access)
//! stops the sending at once. The exit status is non-zero when a record was refused or the
//! connection ended before every record was acknowledged.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use crate::tls::{self, TlsError};

/// What `kafflow produce` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The TCP ingest listener, `host:port`, `tcp://host:port` or `tls://host:port`.
    pub ingest: String,
    /// The HTTP API (`http://` or `https://`): the held count, and `--request`.
    pub server: String,
    pub token: String,
    pub topic: String,
    /// File a create request (the policy's defaults) first if the topic is unknown.
    pub request: bool,
    /// The PEM certificates to trust for `tls://` (and an `https://` API).
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--ingest is the TCP ingest listener and wants HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT (got {0}); the HTTP API is --server")]
    BadIngest(String),
    #[error("--server is the HTTP API and wants http://HOST:PORT or https://HOST:PORT (got {0}); the TCP ingest listener is --ingest")]
    BadServer(String),
    #[error("cannot file the topic request: {0}")]
    Request(String),
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("TLS with {server} failed: {source}")]
    Handshake {
        server: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication refused: {0}")]
    Refused(String),
    #[error("{refused} of {sent} records were refused{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    RecordsRefused {
        sent: u64,
        refused: u64,
        /// The refusal that stopped the sending, if one did.
        reason: Option<String>,
    },
    #[error("the connection ended with {acked} of {sent} records acknowledged")]
    Incomplete { sent: u64, acked: u64 },
}

/// Where the acknowledgements stand.
#[derive(Debug, Default, Clone)]
struct Progress {
    acked: u64,
    refused: u64,
    /// The first refusal that will repeat for every record: sending stops.
    stop: Option<String>,
}

/// Error codes that refuse the topic or the caller, not one record: every later record
/// would get the same.
const REPEATING: &[&str] = &[
    "unknown_topic",
    "topic_closed",
    "topic_not_active",
    "forbidden",
    "no_access",
    "unauthorized",
    "token_revoked",
    "token_expired",
];

/// How many `ERR` lines of single records are printed; the rest are only counted.
const ERR_LINES_SHOWN: u64 = 10;

/// `ERR <line> <code> <message>` as (code, message).
fn refusal(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.splitn(4, ' ');
    let (_, _, code) = (parts.next()?, parts.next()?, parts.next()?);
    Some((code, parts.next().unwrap_or("")))
}

pub fn run(options: Options) -> Result<(), ProduceError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProduceError::Runtime)?;
    runtime.block_on(produce(options))
}

/// The address to connect to, and whether it speaks TLS.
fn ingest_address(ingest: &str) -> Result<(&str, bool), ProduceError> {
    if let Some(addr) = ingest.strip_prefix("tls://") {
        return Ok((addr.trim_end_matches('/'), true));
    }
    let addr = ingest.strip_prefix("tcp://").unwrap_or(ingest);
    if addr.contains("://") || addr.is_empty() {
        return Err(ProduceError::BadIngest(ingest.to_string()));
    }
    Ok((addr.trim_end_matches('/'), false))
}

/// The HTTP API's base URL, refused unless it is one.
fn api_url(server: &str) -> Result<&str, ProduceError> {
    if server.starts_with("http://") || server.starts_with("https://") {
        Ok(server.trim_end_matches('/'))
    } else {
        Err(ProduceError::BadServer(server.to_string()))
    }
}

/// `--request`: files the topic's create request with the policy's defaults unless KafFlow
/// knows the topic already (active, or its request pending).
async fn request_topic(options: &Options, api: &str) -> Result<(), ProduceError> {
    let client = tls::http_client(options.ca_cert.as_deref())?;
    let failed = |e: reqwest::Error| ProduceError::Request(format!("{api}: {e}"));
    let known = client
        .get(format!("{api}/api/v1/topics/{}", options.topic))
        .bearer_auth(&options.token)
        .send()
        .await
        .map_err(failed)?;
    if known.status().is_success() {
        return Ok(());
    }
    let filed = client
        .post(format!("{api}/api/v1/topic-requests"))
        .bearer_auth(&options.token)
        .json(&serde_json::json!({
            "topic": options.topic,
            "reason": "requested by kafflow produce --request",
        }))
        .send()
        .await
        .map_err(failed)?;
    let status = filed.status();
    let body: serde_json::Value = filed.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ProduceError::Request(format!(
            "{} {}",
            body["error"]["code"].as_str().unwrap_or(status.as_str()),
            body["error"]["message"].as_str().unwrap_or("")
        )));
    }
    eprintln!(
        "filed request {} for {}: its records are held until an admin approves it",
        body["id"].as_str().unwrap_or("?"),
        options.topic
    );
    Ok(())
}

async fn produce(options: Options) -> Result<(), ProduceError> {
    let api = api_url(&options.server)?.to_string();
    let (server, secure) = ingest_address(&options.ingest)?;
    let server = server.to_string();
    // Check the CA file before connecting, so a bad path is named as such.
    let connector = if secure {
        Some(tls::connector(options.ca_cert.as_deref(), &server)?)
    } else {
        None
    };
    let stream = TcpStream::connect(&server)
        .await
        .map_err(|source| ProduceError::Connect {
            server: server.clone(),
            source,
        })?;
    stream.set_nodelay(true)?;
    if options.request {
        request_topic(&options, &api).await?;
    }
    match connector {
        None => produce_over(stream, &options).await,
        Some((connector, name)) => {
            let stream = connector.connect(name, stream).await.map_err(|source| {
                ProduceError::Handshake {
                    server: server.clone(),
                    source,
                }
            })?;
            produce_over(stream, &options).await
        }
    }
}

async fn produce_over(
    stream: impl AsyncRead + AsyncWrite + Send + 'static,
    options: &Options,
) -> Result<(), ProduceError> {
    let options = options.clone();
    let (read, write) = tokio::io::split(stream);
    let mut replies = BufReader::new(read).lines();
    let mut out = BufWriter::with_capacity(256 * 1024, write);
    out.write_all(format!("AUTH {}\n", options.token).as_bytes())
        .await?;
    out.flush().await?;
    match replies.next_line().await? {
        Some(line) if line.starts_with("OK") => {}
        Some(line) => return Err(ProduceError::Refused(line)),
        None => return Err(ProduceError::Refused("connection closed".into())),
    }

    let (progress_tx, progress_rx) = tokio::sync::watch::channel(Progress::default());
    let reader = tokio::spawn(async move {
        let mut progress = Progress::default();
        while let Ok(Some(line)) = replies.next_line().await {
            if let Some(n) = line.strip_prefix("OK ") {
                progress.acked = n.trim().parse().unwrap_or(progress.acked);
            } else if line.starts_with("ERR ") {
                progress.refused += 1;
                match refusal(&line) {
                    Some((code, message)) if REPEATING.contains(&code) => {
                        let hint = if code == "unknown_topic" {
                            " (kafflow produce --request files a topic request)"
                        } else {
                            ""
                        };
                        progress
                            .stop
                            .get_or_insert_with(|| format!("{code} {message}{hint}"));
                    }
                    _ if progress.refused <= ERR_LINES_SHOWN => eprintln!("{line}"),
                    _ if progress.refused == ERR_LINES_SHOWN + 1 => {
                        eprintln!("(more refused lines are counted, not shown)")
                    }
                    _ => {}
                }
            }
            let _ = progress_tx.send(progress.clone());
        }
        progress
    });

    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut sent = 0u64;
    let mut line_out = Vec::with_capacity(256);
    while let Some(value) = stdin.next_line().await? {
        if progress_rx.borrow().stop.is_some() {
            // Every further record would be refused the same way.
            break;
        }
        line_out.clear();
        let record = serde_json::json!({ "topic": options.topic, "value": value });
        serde_json::to_writer(&mut line_out, &record).map_err(std::io::Error::other)?;
        line_out.push(b'\n');
        out.write_all(&line_out).await?;
        sent += 1;
        if terminal && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            let progress = progress_rx.borrow().clone();
            report(&options, sent, &progress, started, false).await;
        }
    }
    out.flush().await?;
    out.shutdown().await?;
    let progress = reader.await.unwrap_or_default();
    let refused = progress.refused;
    let reason = progress.stop.clone();
    report(&options, sent, &progress, started, true).await;
    if refused > 0 {
        return Err(ProduceError::RecordsRefused {
            sent,
            refused,
            reason,
        });
    }
    if progress.acked < sent {
        return Err(ProduceError::Incomplete {
            sent,
            acked: progress.acked,
        });
    }
    Ok(())
}

async fn report(options: &Options, sent: u64, progress: &Progress, started: Instant, done: bool) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let held = held_count(options, &options.server)
        .await
        .map_or_else(|| "?".to_string(), |h| h.to_string());
    let line = format!(
        "{sent} sent, {} acknowledged, {held} held, {} refused, {:.0} records/s",
        progress.acked,
        progress.refused,
        sent as f64 / secs
    );
    let mut err = std::io::stderr();
    if done {
        let _ = writeln!(err, "\r{line}");
    } else {
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }
}

async fn held_count(options: &Options, api: &str) -> Option<u64> {
    let (token, topic) = (&options.token, &options.topic);
    let url = format!("{}/api/v1/topics/{topic}", api.trim_end_matches('/'));
    let reply = tls::http_client(options.ca_cert.as_deref())
        .ok()?
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = reply.json().await.ok()?;
    body["held"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_address_names_its_transport() {
        assert_eq!(ingest_address("tls://h:1").ok(), Some(("h:1", true)));
        assert_eq!(ingest_address("tcp://h:1").ok(), Some(("h:1", false)));
        assert_eq!(ingest_address("h:1").ok(), Some(("h:1", false)));
        assert!(matches!(
            ingest_address("https://h:1"),
            Err(ProduceError::BadIngest(_))
        ));
    }

    #[test]
    fn the_server_is_the_http_api() {
        assert_eq!(api_url("http://h:1/").ok(), Some("http://h:1"));
        assert_eq!(api_url("https://h:1").ok(), Some("https://h:1"));
        assert!(matches!(
            api_url("tcp://h:1"),
            Err(ProduceError::BadServer(_))
        ));
        assert!(matches!(api_url("h:1"), Err(ProduceError::BadServer(_))));
    }

    #[test]
    fn refusals_are_read_from_err_lines() {
        assert_eq!(
            refusal("ERR 3 unknown_topic no such topic: x"),
            Some(("unknown_topic", "no such topic: x"))
        );
        assert_eq!(
            refusal("ERR 3 invalid_record"),
            Some(("invalid_record", ""))
        );
        assert_eq!(refusal("ERR"), None);
    }
}
