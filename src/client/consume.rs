//! `kafflow consume`: subscribes the caller to topics over HTTP, then reads the websocket feed
//! and prints each record of those topics as one NDJSON line on stdout.
//!
//! The subscriptions stay after the command ends (they are the user's state); the feed resumes
//! where the user's consumer group last committed, so running the command again goes on from
//! where the last run stopped.
//!
//! An `https://` server is reached over TLS (the feed as `wss://`), trusting the certificates
//! of `--ca-cert` or, without it, the public web's roots.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::Connector;

use crate::tls::{self, TlsError};

/// What `kafflow consume` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the service, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub token: String,
    pub topics: Vec<String>,
    /// `committed`, `earliest` or `latest`.
    pub from: String,
    /// The PEM certificates to trust for an `https://` server.
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("the server URL must start with http:// or https:// (got {0})")]
    BadServer(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("subscribing to {topic} was refused ({status}): {message}")]
    Refused {
        topic: String,
        status: u16,
        message: String,
    },
    #[error("the feed was refused: {0}")]
    FeedRefused(String),
    #[error("feed: {0}")]
    Feed(#[from] tungstenite::Error),
    #[error("the server closed the feed ({code}): {reason}")]
    Closed { code: u16, reason: String },
    #[error("every consumed topic was deleted ({0})")]
    TopicsDeleted(String),
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
}

/// Runs the command to its end on a runtime of its own, printing records to stdout.
pub fn run(options: Options) -> Result<(), ConsumeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ConsumeError::Runtime)?;
    let stdout = std::io::stdout();
    runtime.block_on(consume(&options, &mut stdout.lock()))
}

/// Subscribes to `options.topics`, then writes their records to `out` until the feed ends.
pub async fn consume(options: &Options, out: &mut impl Write) -> Result<(), ConsumeError> {
    let base = options.server.trim_end_matches('/');
    let ws_base = feed_base(base)?;
    let ca = options.ca_cert.as_deref();
    let http = tls::http_client(ca)?;
    let connector = Connector::Rustls(Arc::new(tls::client_config(ca)?));
    for topic in &options.topics {
        subscribe(&http, base, &options.token, topic).await?;
    }

    let url = format!("{ws_base}/api/v1/me/feed?from={}", options.from);
    let mut request = url.into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", options.token))
        .map_err(|_| ConsumeError::FeedRefused("the token is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", bearer);
    let connected =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await;
    let (mut feed, _) = match connected {
        Ok(connected) => connected,
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(ConsumeError::FeedRefused(format!(
                "{} {}",
                response.status(),
                error_message(&body)
            )));
        }
        Err(e) => return Err(e.into()),
    };

    let mut topics: BTreeSet<String> = options.topics.iter().cloned().collect();
    while let Some(message) = feed.next().await {
        match message? {
            Message::Text(text) => {
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("topic_deleted") => {
                        let gone = frame["topic"].as_str().unwrap_or_default();
                        if topics.remove(gone) {
                            eprintln!("kafflow: topic {gone} was deleted");
                            if topics.is_empty() {
                                return Err(ConsumeError::TopicsDeleted(gone.to_string()));
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        let ours = frame["topic"].as_str().is_some_and(|t| topics.contains(t));
                        if ours {
                            match writeln!(out, "{}", text.as_str()).and_then(|()| out.flush()) {
                                Ok(()) => {}
                                // `kafflow consume | head`: the reader is done, so are we.
                                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                                    return Ok(())
                                }
                                Err(e) => return Err(ConsumeError::Output(e)),
                            }
                        }
                    }
                }
            }
            Message::Close(frame) => {
                return match frame {
                    Some(f) if f.code != CloseCode::Normal => Err(ConsumeError::Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    }),
                    _ => Ok(()),
                };
            }
            _ => {}
        }
    }
    Ok(())
}

async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    topic: &str,
) -> Result<(), ConsumeError> {
    let url = format!("{base}/api/v1/me/subscriptions/{topic}");
    let response = http
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|source| ConsumeError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(ConsumeError::Refused {
        topic: topic.to_string(),
        status: status.as_u16(),
        message: error_message(&body),
    })
}

/// The feed's `ws://` or `wss://` base for the service's `http://` or `https://` one.
fn feed_base(base: &str) -> Result<String, ConsumeError> {
    if let Some(rest) = base.strip_prefix("https://") {
        return Ok(format!("wss://{rest}"));
    }
    base.strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .ok_or_else(|| ConsumeError::BadServer(base.to_string()))
}

/// The `error.message` of an error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_for_their_message() {
        assert_eq!(
            error_message(r#"{"error":{"code":"not_found","message":"topic x not found"}}"#),
            "topic x not found"
        );
        assert_eq!(error_message(" plain "), "plain");
    }

    #[test]
    fn the_feed_follows_the_service_scheme() {
        assert_eq!(feed_base("https://h:1").ok().as_deref(), Some("wss://h:1"));
        assert_eq!(feed_base("http://h:1").ok().as_deref(), Some("ws://h:1"));
        assert!(matches!(
            feed_base("tls://h:1"),
            Err(ConsumeError::BadServer(_))
        ));
    }
}
