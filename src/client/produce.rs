//! `kafflow produce`: streams stdin lines as record values to a topic through the TCP
//! ingest listener, and reports how many KafFlow has made durable.
//!
//! `--ingest tls://host:port` speaks the protocol inside TLS, trusting the certificates of
//! `--ca-cert` (or, without it, the public web's roots); `tcp://host:port` or a bare
//! `host:port` speaks it in the clear. `--server` is the HTTP API, as for every other command:
//! it shows the held count and, with `--request`, files the topic's create request first.
//!
//! Each line becomes one record. With `--format raw` (the default) its value is the line's
//! bytes as they are (sent as a JSON string, which the server turns back into exactly those
//! bytes); with `--format json` the line is a JSON value, sent as written. `--key-separator`
//! takes the key from the start of the line (kcat's `-K`), `--key-field` from a field of a JSON
//! object. A line that cannot be a record (not UTF-8, not JSON, no key field) is refused here,
//! and sent as a blank line so that the server's line numbers still match stdin's (line k of
//! stdin is line k + 1 of the connection, after `AUTH`). On a terminal a progress line
//! (records/s, acknowledged, held) is kept up to date on stderr; at the end a summary line is
//! printed. A refusal that would repeat for every record (unknown or closed topic, no access)
//! stops the sending at once. The exit status is non-zero when a record was refused or the
//! connection ended before every record was acknowledged.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
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
    /// How a line becomes a record.
    pub shape: Shape,
}

/// How each stdin line becomes a record.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub format: Format,
    /// The JSON object field that holds the key (`--format json` only).
    pub key_field: Option<String>,
    /// What separates the key from the value (kcat's `-K`); a line without it has no key.
    pub key_separator: Option<String>,
}

/// What a stdin line is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The line's bytes are the value, as they are.
    #[default]
    Raw,
    /// The line is one JSON value, sent as written.
    Json,
}

/// What one stdin line turned into.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A record line of the TCP protocol, without its newline.
    Record(Vec<u8>),
    /// Nothing to send (a blank line of JSON input).
    Blank,
}

impl Shape {
    /// One stdin line (without its line end) as a record line for `topic`, or why it cannot
    /// be one.
    fn record_line(&self, topic: &str, line: &[u8]) -> Result<Line, String> {
        let (key, rest) = match self.key_separator.as_deref().map(str::as_bytes) {
            Some(sep) if !sep.is_empty() => match find(line, sep) {
                Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
                None => (None, line),
            },
            _ => (None, line),
        };
        let mut key = key
            .map(|k| {
                std::str::from_utf8(k)
                    .map(str::to_string)
                    .map_err(|_| "its key is not UTF-8 text".to_string())
            })
            .transpose()?;
        let value = match self.format {
            Format::Raw => {
                let text = std::str::from_utf8(rest).map_err(|_| {
                    "it is not UTF-8 text, and the ingest protocol carries text".to_string()
                })?;
                serde_json::to_string(text).map_err(|e| e.to_string())?
            }
            Format::Json => {
                let text = std::str::from_utf8(rest)
                    .map_err(|_| "it is not JSON (not UTF-8)".to_string())?;
                if text.trim().is_empty() && key.is_none() {
                    return Ok(Line::Blank);
                }
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(|e| format!("it is not JSON: {e}"))?;
                if let Some(field) = &self.key_field {
                    key = key_of(text, field)?;
                }
                // As written, so Kafka gets the line's JSON byte for byte.
                raw.get().to_string()
            }
        };
        let mut out = Vec::with_capacity(value.len() + topic.len() + 32);
        out.extend_from_slice(b"{\"topic\":");
        out.extend_from_slice(
            serde_json::to_string(topic)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        );
        if let Some(key) = key {
            out.extend_from_slice(b",\"key\":");
            out.extend_from_slice(
                serde_json::to_string(&key)
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(value.as_bytes());
        out.push(b'}');
        Ok(Line::Record(out))
    }
}

/// The key in `field` of a JSON object line: a string as its text, another value as its JSON,
/// `null` as no key.
fn key_of(text: &str, field: &str) -> Result<Option<String>, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|_| format!("it is not a JSON object, so it has no field {field:?}"))?;
    match object.get(field) {
        None => Err(format!("it has no field {field:?} for the key")),
        Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Ok(Some(other.to_string())),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut sent = 0u64;
    // Lines refused here, before the server saw them.
    let mut refused_here = 0u64;
    let mut line_no = 0u64;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        line_no += 1;
        if progress_rx.borrow().stop.is_some() {
            // Every further record would be refused the same way.
            break;
        }
        // The line end is not part of the value: `\n`, or `\r\n` as the server reads it.
        let end =
            line.len() - usize::from(line.ends_with(b"\n")) - usize::from(line.ends_with(b"\r\n"));
        match options.shape.record_line(&options.topic, &line[..end]) {
            Ok(Line::Record(record)) => {
                out.write_all(&record).await?;
                sent += 1;
            }
            Ok(Line::Blank) => {}
            Err(why) => {
                refused_here += 1;
                if refused_here <= ERR_LINES_SHOWN {
                    // As the server would word it; +1 for the AUTH line.
                    eprintln!("ERR {} invalid_record {why}", line_no + 1);
                }
            }
        }
        // Every line goes out, blank when it is no record, so the server counts lines as stdin does.
        out.write_all(b"\n").await?;
        if terminal && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            let progress = progress_rx.borrow().clone();
            report(&options, sent, &progress, started, false).await;
        }
    }
    out.flush().await?;
    out.shutdown().await?;
    let mut progress = reader.await.unwrap_or_default();
    progress.refused += refused_here;
    let refused = progress.refused;
    let reason = progress.stop.clone();
    report(&options, sent + refused_here, &progress, started, true).await;
    if refused > 0 {
        return Err(ProduceError::RecordsRefused {
            sent: sent + refused_here,
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

    fn line(shape: &Shape, text: &str) -> Result<String, String> {
        match shape.record_line("t", text.as_bytes())? {
            Line::Record(r) => Ok(String::from_utf8(r).expect("utf-8")),
            Line::Blank => Ok(String::new()),
        }
    }

    #[test]
    fn a_raw_line_is_a_string_of_its_bytes() {
        let raw = Shape::default();
        assert_eq!(
            line(&raw, "1").as_deref(),
            Ok(r#"{"topic":"t","value":"1"}"#)
        );
        assert_eq!(
            line(&raw, r#" {"a": 1} "#).as_deref(),
            Ok(r#"{"topic":"t","value":" {\"a\": 1} "}"#)
        );
        assert_eq!(line(&raw, "").as_deref(), Ok(r#"{"topic":"t","value":""}"#));
        assert!(raw.record_line("t", b"\xff").is_err());
        let keyed = Shape {
            key_separator: Some("::".into()),
            ..Shape::default()
        };
        assert_eq!(
            line(&keyed, "k1::v::w").as_deref(),
            Ok(r#"{"topic":"t","key":"k1","value":"v::w"}"#)
        );
        assert_eq!(
            line(&keyed, "v").as_deref(),
            Ok(r#"{"topic":"t","value":"v"}"#)
        );
    }

    #[test]
    fn a_json_line_is_sent_as_written() {
        let json = Shape {
            format: Format::Json,
            ..Shape::default()
        };
        assert_eq!(
            line(&json, r#"{"b": 2,  "a": [1, 2]}"#).as_deref(),
            Ok(r#"{"topic":"t","value":{"b": 2,  "a": [1, 2]}}"#)
        );
        assert_eq!(line(&json, "  ").as_deref(), Ok(""));
        assert!(line(&json, "not json").is_err());
        // No injection of fields through a line that is more than one value.
        assert!(line(&json, r#"1,"key":"x""#).is_err());
        let by_field = Shape {
            format: Format::Json,
            key_field: Some("id".into()),
            ..Shape::default()
        };
        assert_eq!(
            line(&by_field, r#"{"id":"o-1","n":1}"#).as_deref(),
            Ok(r#"{"topic":"t","key":"o-1","value":{"id":"o-1","n":1}}"#)
        );
        assert_eq!(
            line(&by_field, r#"{"id":7}"#).as_deref(),
            Ok(r#"{"topic":"t","key":"7","value":{"id":7}}"#)
        );
        assert!(line(&by_field, r#"{"n":1}"#).is_err());
        assert!(line(&by_field, "[1]").is_err());
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
