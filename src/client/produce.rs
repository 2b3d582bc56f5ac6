//! `kafflow produce`: streams stdin lines as record values to a topic through the TCP
//! ingest listener, and reports how many KafFlow has made durable.
//!
//! `--server tls://host:port` speaks the protocol inside TLS, trusting the certificates of
//! `--ca-cert` (or, without it, the public web's roots); `tcp://host:port` or a bare
//! `host:port` speaks it in the clear.
//!
//! Each line becomes one record whose value is the line's text. On a terminal a progress line
//! (records/s, acknowledged, held) is kept up to date on stderr; at the end a summary line is
//! printed. The exit status is non-zero when a record was refused or the connection ended
//! before every record was acknowledged.

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
    pub server: String,
    /// The HTTP API, used only to show how many records of the topic are held.
    pub api: Option<String>,
    pub token: String,
    pub topic: String,
    /// The PEM certificates to trust for `tls://` (and an `https://` API).
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the ingest address must be host:port, tcp://host:port or tls://host:port (got {0})")]
    BadServer(String),
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
    #[error("{refused} of {sent} records were refused")]
    RecordsRefused { sent: u64, refused: u64 },
    #[error("the connection ended with {acked} of {sent} records acknowledged")]
    Incomplete { sent: u64, acked: u64 },
}

/// Where the acknowledgements stand.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    acked: u64,
    refused: u64,
}

pub fn run(options: Options) -> Result<(), ProduceError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProduceError::Runtime)?;
    runtime.block_on(produce(options))
}

/// The address to connect to, and whether it speaks TLS.
fn ingest_address(server: &str) -> Result<(&str, bool), ProduceError> {
    if let Some(addr) = server.strip_prefix("tls://") {
        return Ok((addr.trim_end_matches('/'), true));
    }
    let addr = server.strip_prefix("tcp://").unwrap_or(server);
    if addr.contains("://") || addr.is_empty() {
        return Err(ProduceError::BadServer(server.to_string()));
    }
    Ok((addr.trim_end_matches('/'), false))
}

async fn produce(options: Options) -> Result<(), ProduceError> {
    let (server, secure) = ingest_address(&options.server)?;
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
                eprintln!("{line}");
            }
            let _ = progress_tx.send(progress);
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
        line_out.clear();
        let record = serde_json::json!({ "topic": options.topic, "value": value });
        serde_json::to_writer(&mut line_out, &record).map_err(std::io::Error::other)?;
        line_out.push(b'\n');
        out.write_all(&line_out).await?;
        sent += 1;
        if terminal && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            report(&options, sent, *progress_rx.borrow(), started, false).await;
        }
    }
    out.flush().await?;
    out.shutdown().await?;
    let progress = reader.await.unwrap_or_default();
    report(&options, sent, progress, started, true).await;
    if progress.refused > 0 {
        return Err(ProduceError::RecordsRefused {
            sent,
            refused: progress.refused,
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

async fn report(options: &Options, sent: u64, progress: Progress, started: Instant, done: bool) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let held = match &options.api {
        Some(api) => held_count(options, api)
            .await
            .map_or_else(|| "?".to_string(), |h| h.to_string()),
        None => "?".to_string(),
    };
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
            Err(ProduceError::BadServer(_))
        ));
    }
}
