//! `GET /audit/export`: the whole matching trail as NDJSON, streamed page by page from the log
//! so that a large trail never sits in memory, neither here nor in a client that saves it.

use bytes::Bytes;
use tracing::warn;
use warp::filters::BoxedFilter;
use warp::http::header::CONTENT_TYPE;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth, parse_query, query, respond, App, AuditParams};
use crate::actors::access::AuditScopeOf;
use crate::actors::event_store::QueryAudit;
use crate::error::{Error, Result};

/// Events read from the log per step of the stream.
const EXPORT_PAGE: usize = 1000;
/// Pages serialized ahead of the client: a slow reader holds the log reads back.
const PAGES_AHEAD: usize = 2;

type Chunk = std::result::Result<Bytes, std::io::Error>;

/// The whole matching trail as NDJSON, one audit entry a line, in the chosen order.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "One audit entry per line (`application/x-ndjson`).", body = crate::events::AuditEntry, content_type = "application/x-ndjson"),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 500, description = "`store_error`.", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn export(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: AuditParams = parse_query(&query)?;
    if params.limit.is_some() {
        return Err(Error::InvalidQuery(
            "an export takes no limit: it streams every matching event".into(),
        ));
    }
    let mut query = params.into_query()?;
    query.limit = EXPORT_PAGE;
    query.scope = app.registry.send(AuditScopeOf(principal)).await?;
    // The first page is read before the answer starts, so a failing log is a status, not a
    // body cut short.
    let first = app.event_store.send(QueryAudit(query.clone())).await??;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(PAGES_AHEAD);
    let store = app.event_store.clone();
    tokio::spawn(async move {
        let mut page = first;
        loop {
            let mut lines = Vec::new();
            for event in &page.events {
                // An entry is plain data; writing it to a Vec cannot fail.
                if serde_json::to_writer(&mut lines, event).is_ok() {
                    lines.push(b'\n');
                }
            }
            if !lines.is_empty() && tx.send(Ok(Bytes::from(lines))).await.is_err() {
                return; // the client went away
            }
            let Some(next) = page.next else { return };
            query.after = Some(next);
            let error = match store.send(QueryAudit(query.clone())).await {
                Ok(Ok(read)) => {
                    page = read;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            warn!(%error, after = next, "Audit export stopped.");
            // An error chunk aborts the body, so the client sees a broken transfer rather
            // than a complete-looking file that lacks its tail.
            let _ = tx.send(Err(std::io::Error::other(error))).await;
            return;
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = warp::reply::stream(body).into_response();
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// `GET /audit/export`.
pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "audit" / "export")
        .and(warp::get())
        .and(super::with_app(app))
        .and(auth())
        .and(query())
        .then(export)
        .map(respond)
        .boxed()
}
