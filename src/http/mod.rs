//! The HTTP facade: authenticate, parse, send one actor message, render the reply.
//! No governance rule lives here; errors become statuses in `error` alone.

mod access;
mod audit;
mod browser;
mod error;
mod feed;
mod feed_socket;
mod me;
mod messages;
mod openapi;
mod paging;
mod records;
pub mod server;
mod tokens;
mod ui;

pub use browser::Cors;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::Addr;
use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::actors::access::AuditScopeOf;
use crate::actors::approval::{
    Approval, Approve, GetPolicy, Reject, RequestDeletion, RequestTopic, Withdraw,
};
use crate::actors::event_store::{EventStore, LogWritable, QueryAudit, VerifyChain};
use crate::actors::listener::Listener;
use crate::actors::provisioner::{BrokerReachable, Provisioner};
use crate::actors::publisher::{Publisher, SpoolHealth, TopicCounts};
use crate::actors::registry::Topic;
use crate::actors::registry::{
    GetRequest, ListRequests, Registry, RequestFilter, RequestKind, RequestStatus, TopicsPage,
};
use crate::actors::subscriptions::Subscriptions;
use crate::actors::tokens::Tokens;
use crate::actors::watcher::Watcher;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::events::AuditQuery;
use crate::identity::{Door, Identity, Principal, SignedIn};

const DEFAULT_AUDIT_LIMIT: usize = 100;
const MAX_AUDIT_LIMIT: usize = 1000;

/// What the handlers talk to, shared by every call: a handler gets an `App`, one reference
/// count, not a copy of the dozen addresses inside.
pub type App = Arc<AppState>;

/// The actors and views behind `App`.
pub struct AppState {
    pub identity: Identity,
    pub tokens: Addr<Tokens>,
    pub registry: Addr<Registry>,
    pub approval: Addr<Approval>,
    pub event_store: Addr<EventStore>,
    pub provisioner: Addr<Provisioner>,
    pub subscriptions: Addr<Subscriptions>,
    pub listener: Addr<Listener>,
    pub publisher: Addr<Publisher>,
    pub watcher: Addr<Watcher>,
    /// The registry's committed topics and the publisher's counts, read without a message:
    /// `GET /topics/{name}` is the most frequent read.
    pub topics: crate::actors::governed_view::GovernedView,
    pub counts: crate::actors::publisher::CountsView,
    pub record_browser: Addr<crate::actors::record_browser::RecordBrowser>,
    /// Open feeds close with 1001 when it fires, and hold a guard until they have.
    pub shutdown: crate::shutdown::Shutdown,
    pub feeds_done: crate::shutdown::Guard,
    pub limits: Limits,
}

impl AppState {
    /// The caller of an `Authorization` header value.
    async fn authenticate(&self, header: Option<String>) -> Result<Principal> {
        Ok(self.sign_in(header).await?.principal)
    }

    /// The caller and the kind of token it signed in with (a feed watches it for revocation).
    async fn sign_in(&self, header: Option<String>) -> Result<SignedIn> {
        let header = header.ok_or(Error::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthorized)?;
        self.identity.sign_in(token.trim()).await
    }
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub(super) fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(|e| error::render_error(&e))
}

pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    // An empty body stands for `{}`, so that `curl -X POST` works on bodiless actions.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Error::InvalidJson(e.to_string()))
}

pub(super) fn parse_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::InvalidId(format!("{id:?} is not a UUID")))
}

/// Most bytes of a refused body read and dropped before the 413 goes out.
const DRAIN_BYTES: u64 = 4 * 1024 * 1024;
/// Longest a refused body is read for before the 413 goes out.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the body, refusing it as soon as it passes `limit` (with or without Content-Length).
async fn read_body(
    mut stream: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Bytes> {
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| Error::InvalidJson(format!("cannot read body: {e}")))?;
        if body.len() as u64 + chunk.remaining() as u64 > limit {
            drain(&mut stream).await;
            return Err(Error::PayloadTooLarge(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// Reads and drops the rest of a refused body, up to `DRAIN_BYTES` and `DRAIN_TIME`. The
/// connection closes after a 413 whose body was not read; were the client still sending, the
/// unread bytes would make the kernel reset the connection, and a reset can reach the client
/// before it has read the 413, which it then never sees (what servers call a lingering close).
async fn drain(stream: &mut (impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin)) {
    let mut dropped = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            dropped += chunk.remaining() as u64;
            if dropped > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

pub(super) fn body_up_to(
    limit: u64,
) -> impl Filter<Extract = (Result<Bytes>,), Error = warp::Rejection> + Clone {
    warp::body::stream().then(move |s| async move { read_body(Box::pin(s), limit).await })
}

/// The raw query string (empty when there is none); parsed by the handler after it has
/// authenticated the caller, so a bad token is a 401 whatever the query.
pub(super) fn query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone
{
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

pub(crate) fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T> {
    serde_urlencoded::from_str(query).map_err(|e| Error::InvalidQuery(e.to_string()))
}

pub(super) fn auth() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequestBody {
    topic: String,
    partitions: Option<i64>,
    replication_factor: Option<i64>,
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
    reason: Option<String>,
    visibility: Option<crate::events::Visibility>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    pub(super) note: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    pub(super) reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmptyBody {}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    topic: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
    request_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
    order: Option<AuditOrder>,
}

/// The listing order of the audit trail: by `seq`, oldest (`asc`, the default) or newest first.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuditOrder {
    Asc,
    Desc,
}

pub(super) fn parse_time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| Error::InvalidQuery(format!("{name} is not RFC 3339: {e}")))
        })
        .transpose()
}

impl AuditParams {
    pub(crate) fn into_query(self) -> Result<AuditQuery> {
        let limit = self.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
        if limit == 0 || limit > MAX_AUDIT_LIMIT {
            return Err(Error::InvalidQuery(format!(
                "limit must be between 1 and {MAX_AUDIT_LIMIT}"
            )));
        }
        let request_id = self
            .request_id
            .map(|id| {
                Uuid::parse_str(&id)
                    .map_err(|_| Error::InvalidQuery(format!("request_id {id:?} is not a UUID")))
            })
            .transpose()?;
        Ok(AuditQuery {
            topic: self.topic,
            actor: self.actor,
            kind: self.kind,
            request_id,
            since: parse_time("since", self.since)?,
            until: parse_time("until", self.until)?,
            after: self.after,
            limit,
            descending: self.order == Some(AuditOrder::Desc),
            scope: None,
        })
    }
}

/// Ask for a topic.
#[utoipa::path(post, path = "/api/v1/topic-requests", tag = "topic requests",
    request_body = CreateRequestBody,
    responses(
        (status = 201, description = "The request, `pending`.", body = crate::actors::registry::TopicRequest),
        (status = 400, description = "`invalid_json`, `invalid_topic_name`, `invalid_partitions`, `invalid_replication_factor`, `invalid_config`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = openapi::ErrorBody),
        (status = 409, description = "`topic_exists`, `request_pending`.", body = openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = openapi::ErrorBody),
    ))]
async fn create_request(app: App, auth: Option<String>, body: Result<Bytes>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let body: CreateRequestBody = parse_body(&body?)?;
    let request = app
        .approval
        .send(RequestTopic {
            principal,
            topic: body.topic,
            partitions: body.partitions,
            replication_factor: body.replication_factor,
            config: body.config,
            reason: body.reason,
            visibility: body.visibility,
            validate_only: false,
        })
        .await??;
    Ok(json(StatusCode::CREATED, &request))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RequestListParams {
    status: Option<RequestStatus>,
    kind: Option<RequestKind>,
    topic: Option<String>,
    requested_by: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// List requests, oldest first, one page at a time.
#[utoipa::path(get, path = "/api/v1/topic-requests", tag = "topic requests",
    params(RequestListParams),
    responses(
        (status = 200, description = "A page of requests.", body = openapi::RequestsPage),
        (status = 400, description = "`invalid_query`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
    ))]
async fn list_requests(app: App, auth: Option<String>, query: String) -> Result<Response> {
    app.authenticate(auth).await?;
    let params: RequestListParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let filter = RequestFilter {
        status: params.status,
        kind: params.kind,
        topic: params.topic,
        requested_by: params.requested_by,
    };
    let requests = app.registry.send(ListRequests(filter, page)).await??;
    paging::page_body("requests", requests)
}

/// One request.
#[utoipa::path(get, path = "/api/v1/topic-requests/{id}", tag = "topic requests",
    params(("id" = uuid::Uuid, Path, description = "The request's id.")),
    responses(
        (status = 200, description = "The request.", body = crate::actors::registry::TopicRequest),
        (status = 400, description = "`invalid_id`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = openapi::ErrorBody),
    ))]
async fn get_request(app: App, id: String, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth).await?;
    let request = app.registry.send(GetRequest(parse_id(&id)?)).await??;
    Ok(json(StatusCode::OK, &request))
}

/// The actions of `POST /topic-requests/{id}/{action}` and `/access-requests/{id}/{action}`.
#[derive(Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Action {
    Approve,
    Reject,
    Withdraw,
}

impl Action {
    /// Any other name is an unknown route, after the caller is authenticated.
    pub(super) fn parse(name: &str) -> Result<Action> {
        match name {
            "approve" => Ok(Action::Approve),
            "reject" => Ok(Action::Reject),
            "withdraw" => Ok(Action::Withdraw),
            other => Err(Error::NotFound(format!("action {other}"))),
        }
    }
}

/// Decide a request (`approve` with an optional note, `reject` with a reason; admins, not the
/// requester) or `withdraw` it (its requester).
#[utoipa::path(post, path = "/api/v1/topic-requests/{id}/{action}", tag = "topic requests",
    params(
        ("id" = uuid::Uuid, Path, description = "The request's id."),
        ("action" = Action, Path, description = "Another name is 404 `not_found`."),
    ),
    request_body(content = Option<ReasonBody>, description = "`approve`: `{\"note\"?}`; `reject`: `{\"reason\"}`; `withdraw`: empty or `{}`."),
    responses(
        (status = 200, description = "The request, now `approved`, `rejected` or `withdrawn`.", body = crate::actors::registry::TopicRequest),
        (status = 400, description = "`invalid_id`, `invalid_json`, `reason_required`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 403, description = "`forbidden`, `self_approval`, `not_requester`.", body = openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = openapi::ErrorBody),
        (status = 409, description = "`not_pending`.", body = openapi::ErrorBody),
    ))]
async fn act_on_request(
    app: App,
    id: String,
    action: String,
    auth: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let id = parse_id(&id)?;
    let body = body?;
    let request = match Action::parse(&action)? {
        Action::Approve => {
            let b: ApproveBody = parse_body(&body)?;
            app.approval
                .send(Approve {
                    principal,
                    id,
                    note: b.note,
                })
                .await??
        }
        Action::Reject => {
            let b: ReasonBody = parse_body(&body)?;
            app.approval
                .send(Reject {
                    principal,
                    id,
                    reason: b.reason,
                })
                .await??
        }
        Action::Withdraw => {
            let _: EmptyBody = parse_body(&body)?;
            app.approval.send(Withdraw { principal, id }).await??
        }
    };
    Ok(json(StatusCode::OK, &request))
}

/// A topic as the registry knows it, with the publisher's counts of its records.
#[derive(Serialize, utoipa::ToSchema)]
struct TopicView {
    #[serde(flatten)]
    topic: Topic,
    held: u64,
    dead: u64,
    published: u64,
}

/// A topic with its counts, read from the publisher's view of them.
fn topic_view(app: &App, topic: Topic) -> TopicView {
    let c = TopicCounts::from(app.counts.topic(&topic.name));
    TopicView {
        topic,
        held: c.held,
        dead: c.dead,
        published: c.published,
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// List topics in name order, one page at a time.
#[utoipa::path(get, path = "/api/v1/topics", tag = "topics",
    params(PageParams),
    responses(
        (status = 200, description = "A page of topics.", body = openapi::TopicsPage),
        (status = 400, description = "`invalid_query`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
    ))]
async fn list_topics(app: App, auth: Option<String>, query: String) -> Result<Response> {
    app.authenticate(auth).await?;
    let params: PageParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let topics = app.registry.send(TopicsPage(page)).await?;
    // The counts of this page's topics only.
    paging::page_body("topics", topics.map(|t| topic_view(&app, t)))
}

/// One topic, with its held, dead and published counts.
#[utoipa::path(get, path = "/api/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "The topic.")),
    responses(
        (status = 200, description = "The topic.", body = TopicView),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = openapi::ErrorBody),
    ))]
async fn get_topic(app: App, name: String, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth).await?;
    let topic = app.topics.topic(&name)?;
    Ok(json(StatusCode::OK, &topic_view(&app, topic)))
}

/// Ask for a topic's deletion (its owner or an admin).
#[utoipa::path(post, path = "/api/v1/topics/{name}/deletion-requests", tag = "topics",
    params(("name" = String, Path, description = "The topic.")),
    request_body = ReasonBody,
    responses(
        (status = 201, description = "A `delete` request, `pending`.", body = crate::actors::registry::TopicRequest),
        (status = 400, description = "`invalid_json`, `reason_required`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 403, description = "`not_owner`.", body = openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = openapi::ErrorBody),
        (status = 409, description = "`topic_not_active`, `request_pending`.", body = openapi::ErrorBody),
    ))]
async fn request_deletion(
    app: App,
    name: String,
    auth: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let b: ReasonBody = parse_body(&body?)?;
    let request = app
        .approval
        .send(RequestDeletion {
            principal,
            topic: name,
            reason: b.reason,
            validate_only: false,
        })
        .await??;
    Ok(json(StatusCode::CREATED, &request))
}

/// The audit trail in `seq` order, within the caller's scope.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events.", body = crate::events::AuditPage),
        (status = 400, description = "`invalid_query`.", body = openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 500, description = "`store_error`.", body = openapi::ErrorBody),
    ))]
async fn audit(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: AuditParams = parse_query(&query)?;
    let mut query = params.into_query()?;
    query.scope = app.registry.send(AuditScopeOf(principal)).await?;
    let page = app.event_store.send(QueryAudit(query)).await??;
    Ok(json(StatusCode::OK, &page))
}

/// The state of the hash chain (admin).
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The check; a broken chain is `ok: false`, not an error.", body = crate::actors::event_store::ChainCheck),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = openapi::ErrorBody),
        (status = 500, description = "`store_error`.", body = openapi::ErrorBody),
    ))]
async fn verify_chain(app: App, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let check = app.event_store.send(VerifyChain(principal)).await??;
    Ok(json(StatusCode::OK, &check))
}

/// The limits a topic request must keep.
#[utoipa::path(get, path = "/api/v1/policy", tag = "topic requests",
    responses(
        (status = 200, description = "The policy.", body = crate::actors::approval::PolicyView),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = openapi::ErrorBody),
    ))]
async fn policy(app: App, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth).await?;
    let policy = app.approval.send(GetPolicy).await?;
    Ok(json(StatusCode::OK, &policy))
}

/// The process serves HTTP. No token.
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "`{\"status\": \"up\"}`.", body = Health)))]
fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "up" })
}

/// Whether the broker is reachable and the spool and the event log can write. No token.
#[utoipa::path(get, path = "/readyz", tag = "meta", security(()),
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; its reasons say why.", body = Readiness),
    ))]
async fn ready(app: App) -> Result<Response> {
    let broker = app.provisioner.send(BrokerReachable).await?;
    let reachable = broker.is_ok();
    let broker_error = broker.err().flatten();
    let spool = app.publisher.send(SpoolHealth).await?;
    let log_writable = app.event_store.send(LogWritable).await?;
    let storage_full = spool.storage_full || !log_writable;
    let mut reasons = Vec::new();
    if !reachable {
        reasons.push("broker_unreachable");
    }
    if spool.storage_full {
        reasons.push("spool_storage_full");
    }
    if !log_writable {
        reasons.push("log_storage_full");
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        reasons,
        replayed: true,
        broker_reachable: reachable,
        broker_error,
        storage_full,
        storage_error: spool.error,
    };
    Ok(json(status, &body))
}

/// What `/readyz` answers, ready or not.
#[derive(Serialize, utoipa::ToSchema)]
struct Readiness {
    ready: bool,
    /// `broker_unreachable`, `spool_storage_full`, `log_storage_full`.
    reasons: Vec<&'static str>,
    replayed: bool,
    broker_reachable: bool,
    broker_error: Option<String>,
    storage_full: bool,
    storage_error: Option<String>,
}

/// What `/healthz` answers.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// Refuses a request whose headers are larger than `limit` bytes (names and values).
fn headers_within(limit: usize) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: warp::http::HeaderMap| async move {
            let size: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if size > limit {
                Err(warp::reject::custom(error::HeadersTooLarge(limit)))
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// A place among the requests handled at once, held until the reply is built; 429 when full.
fn admit(
    permits: Arc<tokio::sync::Semaphore>,
    limits: &Limits,
) -> impl Filter<Extract = (tokio::sync::OwnedSemaphorePermit,), Error = warp::Rejection> + Clone {
    let limit = limits.max_concurrent_http_requests as u64;
    let retry_after_s = limits.retry_after_s;
    warp::any().and_then(move || {
        let permit = permits.clone().try_acquire_owned();
        async move {
            permit.map_err(|_| {
                warp::reject::custom(error::Refused(Error::TooMany {
                    what: "HTTP requests in progress",
                    limit,
                    retry_after_s,
                }))
            })
        }
    })
}

/// The address of a call that carries a token (a bearer header, or the feed's `bearer.`
/// subprotocol), refused with 429 while that address is blocked for failed sign-ins. A call
/// without a token is neither counted nor refused: it gets its 401.
fn sign_in_address(
    identity: Identity,
) -> impl Filter<Extract = (Option<std::net::IpAddr>,), Error = warp::Rejection> + Clone {
    server::client_addr()
        .and(
            warp::header::optional::<warp::http::HeaderValue>("authorization")
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(browser::optional_header("sec-websocket-protocol"))
        .and_then(
            move |peer: Option<std::net::SocketAddr>,
                  authorization: Option<warp::http::HeaderValue>,
                  protocols: Option<String>| {
                // The feed reads its `bearer.` subprotocol from the first such header too.
                let carries_token =
                    authorization.is_some() || protocols.is_some_and(|p| p.contains("bearer."));
                let address = peer.map(|p| p.ip()).filter(|_| carries_token);
                let admitted = match address {
                    Some(ip) => identity
                        .failures()
                        .admit(ip, Door::Http)
                        .map(|()| address)
                        .map_err(|e| warp::reject::custom(error::Refused(e))),
                    None => Ok(None),
                };
                futures_util::future::ready(admitted)
            },
        )
}

/// The app, handed to a route's handler: one reference count per call (warp's `and` clones
/// the rest of a route's chain before its path is matched, and the handler gets its own).
pub(super) fn with_app(
    app: App,
) -> impl Filter<Extract = (App,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || App::clone(&app))
}

/// Every route, with warp's own rejections rendered as JSON errors, and every reply with the
/// headers browsers are told (`browser`).
pub fn routes(app: App, cors: Cors) -> BoxedFilter<(Response,)> {
    let limits = app.limits.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(
        limits.max_concurrent_http_requests,
    ));
    // Every route is boxed before it is joined with `or`: warp's `Or` clones its second
    // filter for every request it sees, and an unboxed route clones its whole chain (an `App`
    // is a dozen reference counts); a boxed one is one count. Unboxed, that was most of the
    // CPU of `GET /healthz` with several worker threads bouncing those counts between cores.
    let body = || body_up_to(limits.max_body_bytes);
    let with_app = with_app(app.clone());
    let api = warp::path("api").and(warp::path("v1"));

    let healthz = warp::path!("healthz").and(warp::get()).map(healthz);
    // The API's description needs no token, like the probes.
    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(openapi::document)
        .boxed();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_app.clone())
        .then(ready)
        .map(respond)
        .boxed();

    let requests = api.and(warp::path("topic-requests"));
    let create = requests
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(create_request)
        .map(respond)
        .boxed();
    let list = requests
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list_requests)
        .map(respond)
        .boxed();
    let get = requests
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(|id, app, auth| get_request(app, id, auth))
        .map(respond)
        .boxed();
    let act = requests
        .and(warp::path::param::<String>())
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(|id, action, app, auth, body| act_on_request(app, id, action, auth, body))
        .map(respond)
        .boxed();

    let topics = api.and(warp::path("topics"));
    let topic_list = topics
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list_topics)
        .map(respond)
        .boxed();
    let topic_get = topics
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(|name, app, auth| get_topic(app, name, auth))
        .map(respond)
        .boxed();
    let deletion = topics
        .and(warp::path::param::<String>())
        .and(warp::path("deletion-requests"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(|name, app, auth, body| request_deletion(app, name, auth, body))
        .map(respond)
        .boxed();

    let audit = api
        .and(warp::path("audit"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(audit)
        .map(respond)
        .boxed();
    let verify = api
        .and(warp::path("audit"))
        .and(warp::path("verify"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(verify_chain)
        .map(respond)
        .boxed();
    let policy = api
        .and(warp::path("policy"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(policy)
        .map(respond)
        .boxed();

    let gated = create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(act)
        .unify()
        .or(topic_list)
        .unify()
        .or(topic_get)
        .unify()
        .or(deletion)
        .unify()
        .or(audit)
        .unify()
        .or(verify)
        .unify()
        .or(policy)
        .unify()
        // Boxed halfway: every unboxed `or` level multiplies the type checker's work.
        .boxed()
        .or(access::routes(app.clone()))
        .unify()
        .or(feed::routes(app.clone(), feed::Feeds::new(&limits)))
        .unify()
        .or(records::routes(app.clone()))
        .unify()
        .or(tokens::routes(app.clone()))
        .unify()
        .or(audit::routes(app.clone()))
        .unify()
        .or(me::routes(app.clone()))
        .unify()
        .or(messages::routes(app.clone()))
        .unify()
        .or(ui::routes())
        .unify()
        .boxed();
    // The probes answer even when every place is taken. Every 401 of a call with a token is
    // a failed sign-in of its address.
    let identity = app.identity.clone();
    let gated = admit(permits, &limits)
        .and(sign_in_address(identity.clone()))
        .and(gated)
        .map(
            move |permit, address: Option<std::net::IpAddr>, reply: Response| {
                drop(permit);
                if let Some(ip) = address.filter(|_| reply.status() == StatusCode::UNAUTHORIZED) {
                    identity.failures().failed(ip, Door::Http);
                }
                reply
            },
        )
        .boxed();
    let answered = headers_within(limits.max_request_header_bytes)
        .and(
            healthz
                .or(readyz)
                .unify()
                .or(openapi)
                .unify()
                .or(browser::preflight(cors.clone()).boxed())
                .unify()
                .or(gated)
                .unify(),
        )
        .recover(error::recover)
        .unify();
    browser::origin()
        .and(answered)
        .map(move |origin: Option<String>, reply: Response| {
            browser::decorate(&cors, origin.as_deref(), reply)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::approval::check_topic_name;
    use crate::config::Policy;
    use proptest::prelude::*;

    fn policy() -> Policy {
        let policy = Policy::default();
        Policy {
            name_regex: regex::Regex::new(&policy.topic_name_pattern).ok(),
            ..policy
        }
    }

    /// A query value as a client might write it, escaped or not, well-formed or not.
    fn query_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._-]{0,12}",
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u128>().prop_map(|n| n.to_string()),
            Just("2024-01-02T03:04:05Z".to_string()),
            Just("2024-13-45T99:00:00Z".to_string()),
            Just("0190aa4e-7f2a-7b5e-9f00-000000000000".to_string()),
            Just("%zz".to_string()),
            Just("%ff%fe".to_string()),
            Just("%00".to_string()),
            Just("a+b%20c".to_string()),
            ".{0,16}",
        ]
    }

    fn query_string() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("topic"),
            Just("actor"),
            Just("kind"),
            Just("request_id"),
            Just("since"),
            Just("until"),
            Just("after"),
            Just("limit"),
            Just("order"),
            Just("status"),
            Just("requested_by"),
            Just(""),
            Just("junk"),
        ];
        prop_oneof![
            proptest::collection::vec((key, query_value(), any::<bool>()), 0..8).prop_map(
                |pairs| {
                    pairs
                        .into_iter()
                        .map(|(k, v, with_eq)| {
                            if with_eq {
                                format!("{k}={v}")
                            } else {
                                k.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("&")
                }
            ),
            ".{0,64}",
        ]
    }

    proptest! {
        #[test]
        fn a_topic_name_passes_only_within_kafkas_rules(
            name in prop_oneof![".{0,20}", "[a-zA-Z0-9._-]{0,300}", "__[a-z]{0,5}", "\\.{1,3}"],
        ) {
            if check_topic_name(&policy(), &name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= 249);
                prop_assert!(name != "." && name != "..");
                prop_assert!(!name.starts_with("__"));
                prop_assert!(name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
            }
        }

        #[test]
        fn an_audit_query_is_a_page_request_or_invalid(query in query_string()) {
            let parsed = parse_query::<AuditParams>(&query).and_then(AuditParams::into_query);
            match parsed {
                Ok(q) => prop_assert!((1..=MAX_AUDIT_LIMIT).contains(&q.limit)),
                Err(e) => prop_assert_eq!(e.code(), "invalid_query"),
            }
        }

        #[test]
        fn a_request_filter_query_is_a_filter_or_invalid(query in query_string()) {
            if let Err(e) = parse_query::<RequestFilter>(&query) {
                prop_assert_eq!(e.code(), "invalid_query");
            }
        }

        #[test]
        fn any_body_is_parsed_or_invalid_json(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256),
                crate::record::strategies::json_value().prop_map(|v| v.to_string().into_bytes()),
                crate::record::strategies::deep_nesting(),
            ],
        ) {
            let body = Bytes::from(body);
            for parsed in [
                parse_body::<CreateRequestBody>(&body).map(|_| ()),
                parse_body::<ApproveBody>(&body).map(|_| ()),
                parse_body::<ReasonBody>(&body).map(|_| ()),
                parse_body::<EmptyBody>(&body).map(|_| ()),
            ] {
                if let Err(e) = parsed {
                    prop_assert_eq!(e.code(), "invalid_json");
                }
            }
        }
    }

    #[test]
    fn ten_thousand_query_parameters_are_one_invalid_query() {
        let many = vec!["limit=1"; 10_000].join("&");
        assert!(matches!(
            parse_query::<AuditParams>(&many),
            Err(Error::InvalidQuery(_))
        ));
        let junk: Vec<String> = (0..10_000).map(|i| format!("p{i}=1")).collect();
        assert!(matches!(
            parse_query::<AuditParams>(&junk.join("&")),
            Err(Error::InvalidQuery(_))
        ));
    }
}
