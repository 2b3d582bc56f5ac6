//! Routes of the producer pipeline: record ingest, held records, drift and metrics.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth, body_up_to, json, parse_query, query, respond, App};
use crate::actors::listener::{checked_records, IngestRecords};
use crate::actors::publisher::{DiscardHeld, ListHeld};
use crate::actors::registry::GetTopic;
use crate::actors::watcher::GetDrift;
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::record::RecordIn;
use crate::spool::HeldState;

const DEFAULT_HELD_LIMIT: usize = 1000;
const MAX_HELD_LIMIT: usize = 100_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct IngestParams {
    #[serde(default)]
    request: bool,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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

/// A JSON array of records, or one record per line for NDJSON; more than `max_records` is
/// refused before any record is parsed.
pub(crate) fn parse_records(
    body: &[u8],
    ndjson: bool,
    max_records: usize,
) -> Result<Vec<RecordIn>> {
    let bad = |index, e: serde_json::Error| Error::BadRecord {
        index,
        reason: e.to_string(),
    };
    let too_many = || Error::TooLarge {
        what: "records per call",
        limit: max_records as u64,
    };
    if ndjson {
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        if lines.len() > max_records {
            return Err(too_many());
        }
        return lines
            .into_iter()
            .enumerate()
            .map(|(index, line)| serde_json::from_slice(line).map_err(|e| bad(index, e)))
            .collect();
    }
    // Split the array first without building the records, so a count past the limit costs
    // nothing more.
    let values: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidJson(format!("expected a JSON array of records: {e}")))?;
    if values.len() > max_records {
        return Err(too_many());
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, v)| serde_json::from_str(v.get()).map_err(|e| bad(index, e)))
        .collect()
}

/// Send records to a topic: a JSON array, or NDJSON with `Content-Type: application/x-ndjson`.
/// A JSON string value goes to Kafka as its text; any other value as its JSON.
#[utoipa::path(post, path = "/api/v1/topics/{name}/records", tag = "records",
    params(("name" = String, Path, description = "The topic."), IngestParams),
    request_body = Vec<crate::record::RecordIn>,
    responses(
        (status = 202, description = "Every record is durable: in Kafka or in the spool.", body = crate::actors::listener::Accepted),
        (status = 400, description = "`invalid_query`, `invalid_json`, `invalid_record`, `invalid_topic_name`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`, `no_access`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`unknown_topic`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`topic_closed`, `request_pending`, `topic_exists`.", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = super::openapi::ErrorBody),
        (status = 429, description = "`spool_full`.", body = super::openapi::ErrorBody),
        (status = 500, description = "`spool_error`.", body = super::openapi::ErrorBody),
        (status = 507, description = "`storage_full`.", body = super::openapi::ErrorBody),
    ))]
async fn ingest(
    app: App,
    topic: String,
    auth: Option<String>,
    query: String,
    content_type: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: IngestParams = parse_query(&query)?;
    let records = parse_records(
        &body?,
        is_ndjson(content_type.as_deref()),
        app.limits.max_records_per_call,
    )?;
    let records = checked_records(&principal, &topic, records, &app.limits)?;
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

/// List or export (`format=ndjson`) held or dead records of a topic, oldest first.
#[utoipa::path(get, path = "/api/v1/held", tag = "records",
    params(HeldParams),
    responses(
        (status = 200, description = "A page of records, or NDJSON lines with `format=ndjson`.", body = HeldPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 500, description = "`spool_error`.", body = super::openapi::ErrorBody),
    ))]
async fn list_held(
    app: App,
    auth: Option<String>,
    query: String,
    accept: Option<String>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: HeldParams = parse_query(&query)?;
    let limit = params.limit.unwrap_or(DEFAULT_HELD_LIMIT);
    if limit == 0 || limit > MAX_HELD_LIMIT {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_HELD_LIMIT}"
        )));
    }
    // The publisher decides who sees what; it needs to know whose topic this is.
    let owner = app
        .registry
        .send(GetTopic(params.topic.clone()))
        .await?
        .ok()
        .map(|t| t.owner);
    let records = app
        .publisher
        .send(ListHeld {
            principal,
            owner,
            topic: params.topic,
            state: params.state,
            after: params.after,
            limit,
        })
        .await??;
    let ndjson = params.format.as_deref() == Some("ndjson") || is_ndjson(accept.as_deref());
    if !ndjson {
        let next = (records.len() == limit).then(|| records.last().map(|r| r.id));
        let page = HeldPage {
            records,
            next: next.flatten(),
        };
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

/// Discard a topic's dead records (admin; `state=dead`).
#[utoipa::path(delete, path = "/api/v1/held", tag = "records",
    params(HeldParams),
    responses(
        (status = 200, description = "How many were discarded.", body = Discarded),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 500, description = "`spool_error`, `store_error`.", body = super::openapi::ErrorBody),
        (status = 507, description = "`storage_full`.", body = super::openapi::ErrorBody),
    ))]
async fn discard_held(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: HeldParams = parse_query(&query)?;
    let discarded = app
        .publisher
        .send(DiscardHeld {
            principal,
            topic: params.topic,
            state: params.state,
        })
        .await??;
    Ok(json(StatusCode::OK, &Discarded { discarded }))
}

/// A page of held records; `next` is the id to pass as `after`.
#[derive(Serialize, utoipa::ToSchema)]
struct HeldPage {
    records: Vec<crate::spool::HeldRecordOut>,
    next: Option<i64>,
}

/// `DELETE /held`.
#[derive(Serialize, utoipa::ToSchema)]
struct Discarded {
    discarded: u64,
}

/// What Kafka has that KafFlow does not, and the other way round.
#[utoipa::path(get, path = "/api/v1/drift", tag = "records",
    responses(
        (status = 200, description = "The last comparison with Kafka.", body = crate::actors::watcher::DriftReport),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
    ))]
async fn drift(app: App, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth).await?;
    let report: crate::actors::watcher::DriftReport = app.watcher.send(GetDrift).await?;
    Ok(json(StatusCode::OK, &report))
}

/// The Prometheus metrics. No token.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "The Prometheus text format.", content_type = "text/plain")))]
fn metrics() -> Response {
    warp::reply::with_header(
        METRICS.render(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}

pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let max_body = app.limits.max_ingest_body_bytes;
    let with_app = super::with_app(app);
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
        .and(body_up_to(max_body))
        .then(|topic, app, auth, query, content_type, body| {
            ingest(app, topic, auth, query, content_type, body)
        })
        .map(respond)
        .boxed();
    let held = api.and(warp::path("held")).and(warp::path::end());
    let list = held
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .and(warp::header::optional::<String>("accept"))
        .then(list_held)
        .map(respond)
        .boxed();
    let discard = held
        .and(warp::delete())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(discard_held)
        .map(respond)
        .boxed();
    let drift = api
        .and(warp::path("drift"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .and(auth())
        .then(drift)
        .map(respond)
        .boxed();
    let metrics = warp::path!("metrics").and(warp::get()).map(metrics);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::strategies::{damaged, deep_nesting, json_value, record_like};
    use proptest::prelude::*;

    const MAX: usize = 50;

    /// A parse either fails with a 4xx error or returns at most `MAX` records.
    fn check(body: &[u8], ndjson: bool) -> std::result::Result<(), TestCaseError> {
        match parse_records(body, ndjson, MAX) {
            Ok(records) => prop_assert!(records.len() <= MAX),
            Err(e) => prop_assert!(
                matches!(
                    e,
                    Error::InvalidJson(_) | Error::BadRecord { .. } | Error::TooLarge { .. }
                ),
                "unexpected error {e:?}"
            ),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_bytes_are_refused_or_parsed(body in proptest::collection::vec(any::<u8>(), 0..512), ndjson: bool) {
            check(&body, ndjson)?;
        }

        #[test]
        fn damaged_record_arrays_are_refused_or_parsed(
            body in proptest::collection::vec(record_like(), 0..8)
                .prop_flat_map(|records| damaged(serde_json::to_vec(&records).unwrap_or_default())),
        ) {
            check(&body, false)?;
        }

        #[test]
        fn damaged_ndjson_is_refused_or_parsed(
            body in proptest::collection::vec(record_like(), 0..8)
                .prop_flat_map(|records| {
                    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
                    damaged(lines.join("\n").into_bytes())
                }),
        ) {
            check(&body, true)?;
        }

        #[test]
        fn any_json_is_refused_or_parsed(value in json_value(), ndjson: bool) {
            check(value.to_string().as_bytes(), ndjson)?;
        }

        #[test]
        fn deep_nesting_is_refused(body in deep_nesting(), ndjson: bool) {
            check(&body, ndjson)?;
        }

        #[test]
        fn more_records_than_the_limit_are_refused(n in (MAX + 1)..(4 * MAX), ndjson: bool) {
            let body = if ndjson {
                "{\"value\":1}\n".repeat(n)
            } else {
                format!("[{}{{\"value\":1}}]", "{\"value\":1},".repeat(n - 1))
            };
            let refused = matches!(
                parse_records(body.as_bytes(), ndjson, MAX),
                Err(Error::TooLarge { .. })
            );
            prop_assert!(refused);
        }
    }

    #[test]
    fn a_hundred_thousand_nested_arrays_are_a_json_error() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for ndjson in [false, true] {
            let parsed = parse_records(body.as_bytes(), ndjson, MAX);
            assert!(
                matches!(parsed, Err(Error::InvalidJson(_) | Error::BadRecord { .. })),
                "{parsed:?}"
            );
        }
    }
}
