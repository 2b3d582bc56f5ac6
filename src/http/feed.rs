//! Subscriptions and the websocket feed: authenticate, parse, send one message to the
//! subscriptions actor, render. The feed then only moves frames from the user's consumer to
//! the socket and reports each written batch back, which is what lets the consumer commit.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth, body, json, parse_body, parse_query, query, respond, App};
use crate::actors::consumer::{FeedClose, FeedEvent, FeedHandle, FeedStart, Frame};
use crate::actors::subscriptions::{
    ListSubscriptions, MySubscriptions, OpenFeed, ReplaceSubscriptions, Subscribe, Subscription,
    Unsubscribe,
};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// Most frames written to the socket before one flush.
const MAX_WRITE_BATCH: usize = 256;
/// How long a close frame may take to go out before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The websocket close code for a server that is going away (RFC 6455).
const GOING_AWAY: u16 = 1001;
/// The subprotocol prefix that carries the token for browsers, which cannot set headers.
const BEARER_PROTOCOL: &str = "bearer.";

#[derive(Serialize)]
struct TopicsBody {
    topics: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    topics: Vec<String>,
}

#[derive(Serialize)]
struct SubscriptionsBody {
    subscriptions: Vec<Subscription>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    from: Option<String>,
}

fn topics(topics: Vec<String>) -> Response {
    json(StatusCode::OK, &TopicsBody { topics })
}

async fn mine(app: App, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    Ok(topics(
        app.subscriptions
            .send(MySubscriptions { principal })
            .await??,
    ))
}

async fn replace(app: App, auth: Option<String>, body: Result<Bytes>) -> Result<Response> {
    let principal = app.authenticate(auth)?;
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

async fn subscribe(app: App, topic: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let set = app
        .subscriptions
        .send(Subscribe { principal, topic })
        .await??;
    Ok(topics(set))
}

async fn unsubscribe(app: App, topic: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let set = app
        .subscriptions
        .send(Unsubscribe { principal, topic })
        .await??;
    Ok(topics(set))
}

async fn list(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let params: ListParams = parse_query(&query)?;
    let subscriptions = app
        .subscriptions
        .send(ListSubscriptions {
            principal,
            topic: params.topic,
        })
        .await??;
    Ok(json(StatusCode::OK, &SubscriptionsBody { subscriptions }))
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

async fn open_feed(
    app: App,
    auth: Option<String>,
    protocols: Option<String>,
    query: String,
    ws: Option<Ws>,
) -> Result<Response> {
    let protocol = bearer_protocol(protocols.as_deref()).map(str::to_string);
    let auth = match (&auth, &protocol) {
        (None, Some(p)) => Some(format!("Bearer {}", &p[BEARER_PROTOCOL.len()..])),
        _ => auth,
    };
    let principal = app.authenticate(auth)?;
    let params: FeedParams = parse_query(&query)?;
    let from = parse_start(params.from.as_deref())?;
    let ws = ws.ok_or(Error::UpgradeRequired)?;
    let feed = app
        .subscriptions
        .send(OpenFeed { principal, from })
        .await??;
    let shutdown = app.shutdown.clone();
    let guard = app.feeds_done.clone();
    let reply = ws.on_upgrade(move |socket| async move {
        pump(socket, feed, shutdown).await;
        drop(guard);
    });
    Ok(match protocol {
        // A browser drops a connection whose server does not pick one of its subprotocols.
        Some(p) => warp::reply::with_header(reply, "sec-websocket-protocol", p).into_response(),
        None => reply.into_response(),
    })
}

/// Writes frames to the socket until either side ends the feed, or the service shuts down
/// (close code 1001, going away). Dropping `feed` at the end detaches it from the consumer.
async fn pump(socket: WebSocket, mut feed: FeedHandle, mut shutdown: Shutdown) {
    let (mut sink, incoming) = socket.split();
    let (gone, mut client_gone) = oneshot::channel();
    // The client's side is read by a task of its own, woken only when the client sends
    // something: polling it on every turn of the loop below would clear the socket's large
    // read buffer once per batch written.
    let _reader = AbortOnDrop(tokio::spawn(read_client(incoming, gone)));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => {
                let frame = Message::close_with(GOING_AWAY, "KafFlow is shutting down");
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                return;
            }
            event = feed.next() => match event {
                FeedEvent::Closed(reason) => return close(sink, &reason).await,
                FeedEvent::Frame(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_WRITE_BATCH {
                        match feed.try_next() {
                            Some(frame) => batch.push(frame),
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
            closed = &mut client_gone => {
                if closed.unwrap_or(false) {
                    // Send the reply to the client's close that the socket has queued.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                }
                return;
            }
        }
    }
}

/// Reads what the client sends until it goes; tells `gone` whether it closed cleanly. Pings
/// are answered by the socket itself and anything else is ignored.
async fn read_client(mut incoming: SplitStream<WebSocket>, gone: oneshot::Sender<bool>) {
    let closed = loop {
        match incoming.next().await {
            Some(Ok(m)) if !m.is_close() => {}
            Some(Ok(_)) => break true,
            _ => break false,
        }
    };
    let _ = gone.send(closed);
}

/// Stops the client reader when the feed ends first.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &[Frame],
) -> std::result::Result<(), warp::Error> {
    for frame in batch {
        sink.feed(Message::text(frame.text())).await?;
    }
    sink.flush().await
}

async fn close(mut sink: SplitSink<WebSocket, Message>, reason: &FeedClose) {
    let frame = Message::close_with(reason.code(), reason.reason());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// The subscription and feed routes.
pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let with_app = warp::any().map(move || app.clone());
    let me = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("me"));
    let mine_path = me.and(warp::path("subscriptions"));

    let get_mine = mine_path
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(mine)
        .map(respond);
    let put_mine = mine_path
        .and(warp::path::end())
        .and(warp::put())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(replace)
        .map(respond);
    let post_one = mine_path
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .then(|topic, app, auth| subscribe(app, topic, auth))
        .map(respond);
    let delete_one = mine_path
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_app.clone())
        .and(auth())
        .then(|topic, app, auth| unsubscribe(app, topic, auth))
        .map(respond);
    let admin_list = warp::path!("api" / "v1" / "subscriptions")
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list)
        .map(respond);
    let upgrade = warp::ws().map(Some).or(warp::any().map(|| None)).unify();
    let feed = me
        .and(warp::path("feed"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .and(auth())
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(query())
        .and(upgrade)
        .then(open_feed)
        .map(respond);

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
}
