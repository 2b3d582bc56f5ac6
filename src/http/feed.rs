//! Subscriptions and the websocket feed: authenticate, parse, send one message to the
//! subscriptions actor, render. The feed then only moves frames from the user's consumer to
//! the socket and reports each written batch back, which is what lets the consumer commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::feed_socket::{self, FeedWriter, Replies};
use super::{auth, body_up_to, json, paging, parse_body, parse_query, query, respond, App};
use crate::actors::consumer::{FeedClose, FeedEvent, FeedFormat, FeedHandle, FeedStart, Frame};
use crate::actors::subscriptions::{
    ListSubscriptions, MySubscriptions, OpenFeed, ReplaceSubscriptions, Subscribe, Unsubscribe,
};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// Most frames written to the socket before one flush.
const MAX_WRITE_BATCH: usize = 256;
/// Bytes of frames after which the pump flushes even with fewer frames: batch frames are up
/// to `MAX_BATCH_BYTES` each.
const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// How long a close frame may take to go out before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The websocket close code for a server that is going away (RFC 6455).
const GOING_AWAY: u16 = 1001;
/// The websocket close code for a feed whose token is no longer good (RFC 6455).
const POLICY_VIOLATION: u16 = 1008;
/// The subprotocol prefix that carries the token for browsers, which cannot set headers.
const BEARER_PROTOCOL: &str = "bearer.";
/// Largest message a client may send on a feed. Clients have nothing to say but pings and a
/// close, so this is far below the websocket library's default of 64 MiB.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// The connection hyper hands over after the 101 answer.
type Connection = TokioIo<Upgraded>;
/// The client's side of a feed's websocket, read by tungstenite (see `feed_socket`).
type ClientSide = WebSocketStream<Replies<Connection>>;

/// The feeds each user has open, against `limits.max_feeds_per_user`.
#[derive(Clone)]
pub(super) struct Feeds {
    open: Arc<Mutex<HashMap<String, usize>>>,
    max_per_user: usize,
    retry_after_s: u64,
}

/// One open feed of a user, given back when dropped.
struct FeedSlot {
    feeds: Feeds,
    user: String,
}

impl Feeds {
    pub(super) fn new(limits: &Limits) -> Self {
        Feeds {
            open: Arc::new(Mutex::new(HashMap::new())),
            max_per_user: limits.max_feeds_per_user,
            retry_after_s: limits.retry_after_s,
        }
    }

    fn claim(&self, user: &str) -> Result<FeedSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(user.to_string()).or_insert(0);
        if *count >= self.max_per_user {
            return Err(Error::TooMany {
                what: "open feeds of one user",
                limit: self.max_per_user as u64,
                retry_after_s: self.retry_after_s,
            });
        }
        *count += 1;
        Ok(FeedSlot {
            feeds: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut open = self
            .feeds
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct TopicsBody {
    topics: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    topics: Vec<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    topic: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MineParams {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    /// Where to start: `committed` (default), `earliest` or `latest`.
    from: Option<String>,
    /// How records are framed: `record` (default, one text frame per record), `batch` (one
    /// `{"type":"records","records":[...]}` frame per batch of at most 512 records and
    /// 256 KiB of record JSON) or `compact` (the same batches, each of one topic, as
    /// `{"type":"records","topic":"..","records":[...]}` with no `topic` in the records, and no
    /// `headers` in a record that has none).
    frames: Option<String>,
}

fn topics(topics: Vec<String>) -> Response {
    json(StatusCode::OK, &TopicsBody { topics })
}

/// The caller's subscribed topics, in name order (consumer).
#[utoipa::path(get, path = "/api/v1/me/subscriptions", operation_id = "my_subscriptions", tag = "consumers",
    params(MineParams),
    responses(
        (status = 200, description = "A page of topic names.", body = super::openapi::TopicNames),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
    ))]
async fn mine(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: MineParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let mine = app
        .subscriptions
        .send(MySubscriptions { principal, page })
        .await??;
    paging::page_body("topics", mine)
}

/// Replace the caller's topics, all or nothing.
#[utoipa::path(put, path = "/api/v1/me/subscriptions", operation_id = "replace_subscriptions", tag = "consumers",
    request_body = ReplaceBody,
    responses(
        (status = 200, description = "The new set.", body = TopicsBody),
        (status = 400, description = "`invalid_json`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`, `no_access`.", body = super::openapi::ErrorBody), (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody), (status = 409, description = "`topic_not_active`.", body = super::openapi::ErrorBody),
    ))]
async fn replace(app: App, auth: Option<String>, body: Result<Bytes>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let body: ReplaceBody = parse_body(&body?)?;
    let set = app
        .subscriptions
        .send(ReplaceSubscriptions {
            principal,
            topics: body.topics,
        })
        .await??;
    Ok(topics(set))
}

/// Add a topic to the caller's set.
#[utoipa::path(post, path = "/api/v1/me/subscriptions/{topic}", tag = "consumers",
    params(("topic" = String, Path, description = "The topic.")),
    responses(
        (status = 200, description = "The new set.", body = TopicsBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`, `no_access`.", body = super::openapi::ErrorBody), (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody), (status = 409, description = "`topic_not_active`.", body = super::openapi::ErrorBody),
    ))]
async fn subscribe(app: App, topic: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let set = app
        .subscriptions
        .send(Subscribe { principal, topic })
        .await??;
    Ok(topics(set))
}

/// Remove a topic from the caller's set.
#[utoipa::path(delete, path = "/api/v1/me/subscriptions/{topic}", tag = "consumers",
    params(("topic" = String, Path, description = "The topic.")),
    responses(
        (status = 200, description = "The new set.", body = TopicsBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
    ))]
async fn unsubscribe(app: App, topic: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let set = app
        .subscriptions
        .send(Unsubscribe { principal, topic })
        .await??;
    Ok(topics(set))
}

/// Who reads what (admin), by user then topic.
#[utoipa::path(get, path = "/api/v1/subscriptions", operation_id = "list_subscriptions", tag = "consumers",
    params(ListParams),
    responses(
        (status = 200, description = "A page of subscriptions.", body = super::openapi::SubscriptionsPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
    ))]
async fn list(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: ListParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let subscriptions = app
        .subscriptions
        .send(ListSubscriptions {
            principal,
            topic: params.topic,
            page,
        })
        .await??;
    paging::page_body("subscriptions", subscriptions)
}

/// The `bearer.<token>` entry of a `Sec-WebSocket-Protocol` list.
fn bearer_protocol(protocols: Option<&str>) -> Option<&str> {
    protocols?
        .split(',')
        .map(str::trim)
        .find(|p| p.starts_with(BEARER_PROTOCOL) && p.len() > BEARER_PROTOCOL.len())
}

fn parse_start(from: Option<&str>) -> Result<FeedStart> {
    match from {
        None | Some("committed") => Ok(FeedStart::Committed),
        Some("earliest") => Ok(FeedStart::Earliest),
        Some("latest") => Ok(FeedStart::Latest),
        Some(other) => Err(Error::InvalidQuery(format!(
            "from must be latest, earliest or committed, not {other:?}"
        ))),
    }
}

fn parse_format(frames: Option<&str>) -> Result<FeedFormat> {
    match frames {
        None | Some("record") => Ok(FeedFormat::Record),
        Some("batch") => Ok(FeedFormat::Batch),
        Some("compact") => Ok(FeedFormat::Compact),
        Some(other) => Err(Error::InvalidQuery(format!(
            "frames must be record, batch or compact, not {other:?}"
        ))),
    }
}

/// The websocket feed of the caller's subscribed topics (`Upgrade: websocket`; the token may
/// come as the subprotocol `bearer.<token>`). One JSON text frame per record or notice, or with
/// `frames=batch` one `records` frame per batch of records, or with `frames=compact` one per
/// batch of one topic that names the topic once.
#[utoipa::path(get, path = "/api/v1/me/feed", tag = "consumers",
    params(FeedParams),
    responses(
        (status = 101, description = "Switching to the websocket protocol."),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 426, description = "`upgrade_required`.", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_requests`.", body = super::openapi::ErrorBody),
        (status = 503, description = "`consumer_unavailable`.", body = super::openapi::ErrorBody),
    ))]
async fn open_feed(
    app: App,
    feeds: Feeds,
    auth: Option<String>,
    protocols: Option<String>,
    query: String,
    handshake: Option<Handshake>,
) -> Result<Response> {
    let protocol = bearer_protocol(protocols.as_deref()).map(str::to_string);
    let auth = match (&auth, &protocol) {
        (None, Some(p)) => Some(format!("Bearer {}", &p[BEARER_PROTOCOL.len()..])),
        _ => auth,
    };
    let signed = app.sign_in(auth).await?;
    let principal = signed.principal;
    let params: FeedParams = parse_query(&query)?;
    let from = parse_start(params.from.as_deref())?;
    let format = parse_format(params.frames.as_deref())?;
    let handshake = handshake.ok_or(Error::UpgradeRequired)?;
    let slot = feeds.claim(&principal.name)?;
    let feed = app
        .subscriptions
        .send(OpenFeed {
            principal,
            from,
            format,
        })
        .await??;
    let shutdown = app.shutdown.clone();
    let guard = app.feeds_done.clone();
    let identity = app.identity.clone();
    let credential = signed.credential;
    let Handshake { accept, upgrade } = handshake;
    tokio::spawn(async move {
        // hyper hands the connection over once the 101 below has gone out.
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "Feed upgrade failed.");
                return;
            }
        };
        let (replies, writer) = feed_socket::split(TokioIo::new(upgraded));
        let client = WebSocketStream::from_raw_socket(replies, Role::Server, Some(config())).await;
        pump(client, writer, feed, shutdown, identity.revoked(credential)).await;
        drop(slot);
        drop(guard);
    });
    let mut reply =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let headers = reply.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    // A browser drops a connection whose server does not pick one of its subprotocols.
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok(reply)
}

/// A request's valid websocket opening handshake (RFC 6455 4.2.1), the checks warp's `ws()`
/// makes. The feed does its own upgrade so that it can write its frames itself, from the
/// buffers every feed shares (`feed_socket`): warp's `Message::text` would copy each into a
/// `String` per feed, and tungstenite each into its write buffer.
struct Handshake {
    /// `Sec-WebSocket-Accept` for the client's key.
    accept: HeaderValue,
    /// The connection, once hyper has sent the 101 answer.
    upgrade: OnUpgrade,
}

impl Handshake {
    /// None when the request does not ask for a websocket (the route answers 426).
    fn of(headers: &HeaderMap, upgrade: Option<OnUpgrade>) -> Option<Handshake> {
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        let websocket = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let version_13 = headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
        if !(connection_upgrade && websocket && version_13) {
            return None;
        }
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()?;
        Some(Handshake {
            accept,
            upgrade: upgrade?,
        })
    }
}

/// The feed's websocket settings: clients may send only small messages.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Writes frames to the socket until either side ends the feed, the service shuts down
/// (close code 1001, going away), or the feed's token is revoked (1008). Dropping `feed` at
/// the end detaches it from the consumer.
async fn pump(
    client: ClientSide,
    mut sink: FeedWriter<Connection>,
    mut feed: FeedHandle,
    mut shutdown: Shutdown,
    revoked: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(revoked);
    let (gone, mut client_gone) = oneshot::channel();
    // The client's side is read by a task of its own, woken only when the client sends
    // something: polling it on every turn of the loop below would clear the socket's large
    // read buffer once per batch written.
    let _reader = AbortOnDrop(tokio::spawn(read_client(client, gone)));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                return close_with(sink, GOING_AWAY, "KafFlow is shutting down").await;
            }
            _ = &mut revoked => {
                let reason = "token_revoked: the token of this feed was revoked";
                return close_with(sink, POLICY_VIOLATION, reason).await;
            }
            // A pong to send, between two writes of frames.
            _ = sink.replies() => {
                if sink.send_replies().await.is_err() {
                    return;
                }
            }
            event = feed.next() => match event {
                FeedEvent::Closed(reason) => return close(sink, &reason).await,
                FeedEvent::Frame(first) => {
                    let mut bytes = first.text().len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_WRITE_BATCH && bytes < MAX_WRITE_BYTES {
                        match feed.try_next() {
                            Some(frame) => {
                                bytes += frame.text().len();
                                batch.push(frame);
                            }
                            None => break,
                        }
                    }
                    // A socket that stays full blocks the write; a close order must still win.
                    let written = tokio::select! {
                        written = write(&mut sink, &batch) => written,
                        reason = feed.closed() => return close(sink, &reason).await,
                    };
                    if written.is_err() {
                        return;
                    }
                    feed.written(&batch);
                }
            },
            end = &mut client_gone => {
                match end.unwrap_or(ClientEnd::Gone) {
                    // Send the reply to the client's close that the reader has written.
                    ClientEnd::Closed => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.finish()).await;
                    }
                    ClientEnd::TooLarge => {
                        let reason = format!(
                            "message too big: a client may send at most {MAX_CLIENT_MESSAGE} bytes"
                        );
                        return close_with(sink, 1009, reason).await;
                    }
                    ClientEnd::Broken => {
                        return close_with(sink, 1002, "protocol error").await;
                    }
                    ClientEnd::Gone => {}
                }
                return;
            }
        }
    }
}

/// How the client's side of a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEnd {
    /// It sent a close frame.
    Closed,
    /// The connection ended or failed without a close.
    Gone,
    /// It sent a message larger than `MAX_CLIENT_MESSAGE`.
    TooLarge,
    /// It sent something that is not the websocket protocol.
    Broken,
}

/// What one read from the client means: None to read on, or how its side ended. Pings are
/// answered by the socket itself and data messages are ignored.
fn client_end<E>(read: Option<std::result::Result<&Message, &E>>) -> Option<ClientEnd>
where
    E: std::error::Error + 'static,
{
    match read {
        Some(Ok(message)) if message.is_close() => Some(ClientEnd::Closed),
        Some(Ok(_)) => None,
        None => Some(ClientEnd::Gone),
        Some(Err(e)) => {
            let cause = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .find_map(|e| e.downcast_ref::<WsError>());
            Some(match cause {
                Some(WsError::Capacity(_)) => ClientEnd::TooLarge,
                Some(WsError::Protocol(_) | WsError::Utf8(_)) => ClientEnd::Broken,
                _ => ClientEnd::Gone,
            })
        }
    }
}

/// Reads what the client sends until it goes; tells `gone` how. tungstenite answers pings and
/// a close itself, through the feed's writer (`feed_socket::Replies`).
async fn read_client(mut client: ClientSide, gone: oneshot::Sender<ClientEnd>) {
    let end = loop {
        let read = client.next().await;
        if let Some(end) = client_end(read.as_ref().map(|r| r.as_ref())) {
            break end;
        }
    };
    if end == ClientEnd::Closed {
        // tungstenite writes its reply to a close on the next read or flush.
        let _ = client.flush().await;
    }
    let _ = gone.send(end);
}

/// Stops the client reader when the feed ends first.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes `batch`, each frame's text the buffer shared with every other feed that writes it.
async fn write(sink: &mut FeedWriter<Connection>, batch: &[Frame]) -> std::io::Result<()> {
    sink.text_frames(batch.iter().map(|f| f.text().clone().into()))
        .await
}

async fn close(sink: FeedWriter<Connection>, reason: &FeedClose) {
    close_with(sink, reason.code(), reason.reason()).await
}

async fn close_with(
    mut sink: FeedWriter<Connection>,
    code: u16,
    reason: impl Into<std::borrow::Cow<'static, str>>,
) {
    let reason = reason.into();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close(code, &reason)).await;
}

/// The subscription and feed routes.
pub(super) fn routes(app: App, feeds: Feeds) -> BoxedFilter<(Response,)> {
    let max_body = app.limits.max_body_bytes;
    let body = move || body_up_to(max_body);
    let with_app = super::with_app(app);
    let me = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("me"));
    let mine_path = me.and(warp::path("subscriptions"));

    let get_mine = mine_path
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(mine)
        .map(respond)
        .boxed();
    let put_mine = mine_path
        .and(warp::path::end())
        .and(warp::put())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(replace)
        .map(respond)
        .boxed();
    let post_one = mine_path
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .then(|topic, app, auth| subscribe(app, topic, auth))
        .map(respond)
        .boxed();
    let delete_one = mine_path
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_app.clone())
        .and(auth())
        .then(|topic, app, auth| unsubscribe(app, topic, auth))
        .map(respond)
        .boxed();
    let admin_list = warp::path!("api" / "v1" / "subscriptions")
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list)
        .map(respond)
        .boxed();
    let upgrade = warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .map(|headers: HeaderMap, upgrade| Handshake::of(&headers, upgrade));
    let feed = me
        .and(warp::path("feed"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .and(warp::any().map(move || feeds.clone()))
        .and(auth())
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(query())
        .and(upgrade)
        .then(open_feed)
        .map(respond)
        .boxed();

    get_mine
        .or(put_mine)
        .unify()
        .or(post_one)
        .unify()
        .or(delete_one)
        .unify()
        .or(admin_list)
        .unify()
        .or(feed)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            ".{0,64}".prop_map(Message::text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|b| Message::Ping(b.into())),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|b| Message::Pong(b.into())),
            (any::<u16>(), ".{0,32}").prop_map(|(code, reason)| Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))),
            Just(Message::Close(None)),
        ]
    }

    /// Feeds `bytes` to a server-side websocket configured as the feed's, as if a client sent
    /// them; returns how the client's side ended.
    fn server_reads(bytes: Vec<u8>) -> ClientEnd {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let mut socket =
                WebSocketStream::from_raw_socket(server, Role::Server, Some(config())).await;
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = client.write_all(&bytes).await;
                let _ = client.shutdown().await;
                // Keep the client's end open until the server has read everything.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
            });
            loop {
                let read = socket.next().await;
                let end = match &read {
                    Some(Ok(m)) if m.is_close() => Some(ClientEnd::Closed),
                    Some(Ok(_)) => None,
                    None => Some(ClientEnd::Gone),
                    Some(Err(e)) => {
                        client_end::<tokio_tungstenite::tungstenite::Error>(Some(Err(e)))
                    }
                };
                if let Some(end) = end {
                    return end;
                }
            }
        })
    }

    /// One masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    proptest! {
        #[test]
        fn only_a_close_frame_ends_a_feed_cleanly(message in message()) {
            let end = client_end::<std::io::Error>(Some(Ok(&message)));
            prop_assert_eq!(end, message.is_close().then_some(ClientEnd::Closed));
        }

        #[test]
        fn any_bytes_from_a_client_end_the_feed_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            server_reads(bytes);
        }

        #[test]
        fn any_frames_from_a_client_end_the_feed_without_a_panic(
            frames in proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200)),
                0..6,
            ),
        ) {
            let bytes: Vec<u8> = frames
                .iter()
                .flat_map(|(opcode, payload)| frame(opcode & 0x0f, payload))
                .collect();
            server_reads(bytes);
        }
    }

    #[test]
    fn a_client_message_past_the_limit_is_too_large() {
        let big = frame(0x2, &vec![7u8; MAX_CLIENT_MESSAGE + 1]);
        assert_eq!(server_reads(big), ClientEnd::TooLarge);
        let fine = [frame(0x2, &[7u8; 1000]), frame(0x8, &[0x03, 0xe8])].concat();
        assert_eq!(server_reads(fine), ClientEnd::Closed);
        let reserved_opcode = frame(0x3, b"x");
        assert_eq!(server_reads(reserved_opcode), ClientEnd::Broken);
    }

    #[test]
    fn the_handshake_makes_the_checks_of_warp_and_answers_the_key() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                let name = header::HeaderName::from_bytes(name.as_bytes()).expect("name");
                map.append(name, HeaderValue::from_str(value).expect("value"));
            }
            map
        };
        let upgrade = || Some(hyper::upgrade::on(warp::http::Request::new(())));
        let handshake = Handshake::of(&headers(&good), upgrade()).expect("a websocket request");
        // The example of RFC 6455, section 1.3.
        assert_eq!(handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for left_out in 0..good.len() {
            let mut pairs = good.to_vec();
            pairs.remove(left_out);
            assert!(Handshake::of(&headers(&pairs), upgrade()).is_none());
        }
        let mut old = good.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert!(Handshake::of(&headers(&old), upgrade()).is_none());
        let mut plain = good.to_vec();
        plain[1] = ("upgrade", "h2c");
        assert!(Handshake::of(&headers(&plain), upgrade()).is_none());
        // No connection to take over (HTTP/2): no upgrade either.
        assert!(Handshake::of(&headers(&good), None).is_none());
    }

    #[test]
    fn token_may_come_as_a_subprotocol() {
        assert_eq!(
            bearer_protocol(Some("chat, bearer.abc123")),
            Some("bearer.abc123")
        );
        assert_eq!(bearer_protocol(Some("bearer.")), None);
        assert_eq!(bearer_protocol(None), None);
    }

    #[test]
    fn start_positions_are_named() {
        assert_eq!(parse_start(None).ok(), Some(FeedStart::Committed));
        assert_eq!(parse_start(Some("latest")).ok(), Some(FeedStart::Latest));
        assert!(matches!(
            parse_start(Some("yesterday")),
            Err(Error::InvalidQuery(_))
        ));
    }

    #[test]
    fn frame_formats_are_named() {
        assert_eq!(parse_format(None).ok(), Some(FeedFormat::Record));
        assert_eq!(parse_format(Some("record")).ok(), Some(FeedFormat::Record));
        assert_eq!(parse_format(Some("batch")).ok(), Some(FeedFormat::Batch));
        assert_eq!(
            parse_format(Some("compact")).ok(),
            Some(FeedFormat::Compact)
        );
        assert!(matches!(
            parse_format(Some("v2")),
            Err(Error::InvalidQuery(_))
        ));
    }
}
