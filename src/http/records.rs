//! Routes of the producer pipeline: record ingest, held records, drift and metrics.

use bytes::Bytes;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth, body_up_to, json, parse_query, query, respond, App};
use crate::actors::listener::IngestRecords;
use crate::actors::publisher::{DiscardHeld, ListHeld};
use crate::actors::watcher::GetDrift;
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::record::RecordIn;
use crate::spool::HeldState;

/// Largest ingest body: room for a few thousand ordinary records per call.
const MAX_RECORDS_BODY: u64 = 16 * 1024 * 1024;
const DEFAULT_HELD_LIMIT: usize = 1000;
const MAX_HELD_LIMIT: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestParams {
    #[serde(default)]
    request: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldParams {
    topic: String,
    #[serde(default = "held")]
    state: HeldState,
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
    format: Option<String>,
}

fn held() -> HeldState {
    HeldState::Held
}

fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| t.starts_with("application/x-ndjson"))
}

/// A JSON array of records, or one record per line for NDJSON.
fn parse_records(body: &Bytes, ndjson: bool) -> Result<Vec<RecordIn>> {
    let bad = |index, e: serde_json::Error| Error::BadRecord {
        index,
        reason: e.to_string(),
    };
    if ndjson {
        return body
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .enumerate()
            .map(|(index, line)| serde_json::from_slice(line).map_err(|e| bad(index, e)))
            .collect();
    }
    let values: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidJson(format!("expected a JSON array of records: {e}")))?;
    values
        .into_iter()
        .enumerate()
        .map(|(index, v)| serde_json::from_value(v).map_err(|e| bad(index, e)))
        .collect()
}

async fn ingest(
    app: App,
    topic: String,
    auth: Option<String>,
    query: String,
    content_type: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let params: IngestParams = parse_query(&query)?;
    let records = parse_records(&body?, is_ndjson(content_type.as_deref()))?;
    let accepted = app
        .listener
        .send(IngestRecords {
            principal,
            topic,
            records,
            request: params.request,
        })
        .await??;
    Ok(json(StatusCode::ACCEPTED, &accepted))
}

async fn list_held(
    app: App,
    auth: Option<String>,
    query: String,
    accept: Option<String>,
) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let params: HeldParams = parse_query(&query)?;
    let limit = params.limit.unwrap_or(DEFAULT_HELD_LIMIT);
    if limit == 0 || limit > MAX_HELD_LIMIT {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_HELD_LIMIT}"
        )));
    }
    let records = app
        .publisher
        .send(ListHeld {
            principal,
            topic: params.topic,
            state: params.state,
            after: params.after,
            limit,
        })
        .await??;
    let ndjson = params.format.as_deref() == Some("ndjson") || is_ndjson(accept.as_deref());
    if !ndjson {
        let next = (records.len() == limit).then(|| records.last().map(|r| r.id));
        let page = serde_json::json!({ "records": records, "next": next.flatten() });
        return Ok(json(StatusCode::OK, &page));
    }
    let mut out = String::new();
    for record in &records {
        out.push_str(
            &serde_json::to_string(record).map_err(|e| Error::InvalidJson(e.to_string()))?,
        );
        out.push('\n');
    }
    Ok(warp::reply::with_header(out, "content-type", "application/x-ndjson").into_response())
}

async fn discard_held(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth)?;
    let params: HeldParams = parse_query(&query)?;
    let discarded = app
        .publisher
        .send(DiscardHeld {
            principal,
            topic: params.topic,
            state: params.state,
        })
        .await??;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "discarded": discarded }),
    ))
}

async fn drift(app: App, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth)?;
    let report: crate::actors::watcher::DriftReport = app.watcher.send(GetDrift).await?;
    Ok(json(StatusCode::OK, &report))
}

pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let with_app = warp::any().map(move || app.clone());
    let api = warp::path("api").and(warp::path("v1"));

    let ingest = api
        .and(warp::path("topics"))
        .and(warp::path::param::<String>())
        .and(warp::path("records"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .and(warp::header::optional::<String>("content-type"))
        .and(body_up_to(MAX_RECORDS_BODY))
        .then(|topic, app, auth, query, content_type, body| {
            ingest(app, topic, auth, query, content_type, body)
        })
        .map(respond);
    let held = api.and(warp::path("held")).and(warp::path::end());
    let list = held
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .and(warp::header::optional::<String>("accept"))
        .then(list_held)
        .map(respond);
    let discard = held
        .and(warp::delete())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(discard_held)
        .map(respond);
    let drift = api
        .and(warp::path("drift"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .and(auth())
        .then(drift)
        .map(respond);
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            METRICS.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    ingest
        .or(list)
        .unify()
        .or(discard)
        .unify()
        .or(drift)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}
