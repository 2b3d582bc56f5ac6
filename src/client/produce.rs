//! `kafflow produce`: streams stdin lines as record values to a topic through the TCP
//! ingest listener, and reports how many KafFlow has made durable.
//!
//! Each line becomes one record whose value is the line's text. On a terminal a progress line
//! (records/s, acknowledged, held) is kept up to date on stderr; at the end a summary line is
//! printed. The exit status is non-zero when a record was refused or the connection ended
//! before every record was acknowledged.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// What `kafflow produce` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The TCP ingest listener, `host:port` or `tcp://host:port`.
    pub server: String,
    /// The HTTP API, used only to show how many records of the topic are held.
    pub api: Option<String>,
    pub token: String,
    pub topic: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
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

async fn produce(options: Options) -> Result<(), ProduceError> {
    let server = options
        .server
        .strip_prefix("tcp://")
        .unwrap_or(&options.server)
        .to_string();
    let stream = TcpStream::connect(&server)
        .await
        .map_err(|source| ProduceError::Connect {
            server: server.clone(),
            source,
        })?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
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
        Some(api) => held_count(api, &options.token, &options.topic)
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

async fn held_count(api: &str, token: &str, topic: &str) -> Option<u64> {
    let url = format!("{}/api/v1/topics/{topic}", api.trim_end_matches('/'));
    let reply = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = reply.json().await.ok()?;
    body["held"].as_u64()
}
