//! Browsing a topic's records and partitions: authenticate, parse, send one message to the
//! record browser, render.

use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{auth, json, paging, parse_query, parse_time, query, respond, App};
use crate::actors::record_browser::{Bounds, Browse, DescribePartitions, StartFrom};
use crate::error::{Error, Result};
use crate::paging::Page;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BrowseParams {
    partition: Option<i32>,
    offset: Option<i64>,
    /// RFC 3339, or milliseconds since the epoch.
    timestamp: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn start_from(params: &BrowseParams) -> Result<StartFrom> {
    let cursor: Option<Bounds> = paging::cursor(params.after.clone())?;
    let timestamp = params
        .timestamp
        .as_ref()
        .map(|t| match t.parse::<i64>() {
            Ok(ms) => Ok(ms),
            Err(_) => parse_time("timestamp", Some(t.clone()))
                .map(|time| time.map_or(0, |time| time.timestamp_millis())),
        })
        .transpose()?;
    match (cursor, params.offset, timestamp) {
        (Some(bounds), _, _) => Ok(StartFrom::Cursor(bounds)),
        (None, Some(_), Some(_)) => Err(Error::InvalidQuery(
            "give offset or timestamp, not both".to_string(),
        )),
        (None, Some(offset), None) if offset < 0 => Err(Error::InvalidQuery(format!(
            "offset must be 0 or more, not {offset}"
        ))),
        (None, Some(offset), None) => Ok(StartFrom::Offset(offset)),
        (None, None, Some(ms)) => Ok(StartFrom::Timestamp(ms)),
        (None, None, None) => Ok(StartFrom::Latest),
    }
}

/// A topic's records from Kafka, newest first, one page at a time (consumer or admin, with the
/// right to read the topic).
#[utoipa::path(get, path = "/api/v1/topics/{name}/messages", tag = "topics",
    params(("name" = String, Path, description = "The topic."), BrowseParams),
    responses(
        (status = 200, description = "A page of records.", body = super::openapi::MessagesPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`, `no_access`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`topic_not_active`.", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_requests`.", body = super::openapi::ErrorBody),
        (status = 503, description = "`kafka_unavailable`.", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn browse(
    app: App,
    topic: String,
    auth: Option<String>,
    query: String,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: BrowseParams = parse_query(&query)?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let Some(p) = params.partition.filter(|p| *p < 0) {
        return Err(Error::InvalidQuery(format!(
            "partition must be 0 or more, not {p}"
        )));
    }
    let from = start_from(&params)?;
    let page = app
        .record_browser
        .send(Browse {
            principal,
            topic,
            partition: params.partition,
            from,
            limit,
        })
        .await??;
    paging::page_body(
        "records",
        Page {
            items: page.records,
            next: page.next,
        },
    )
}

/// A topic's partitions (leader, replicas, in-sync replicas, watermarks) and, for an admin,
/// its subscribers' positions and lag.
#[utoipa::path(get, path = "/api/v1/topics/{name}/partitions", tag = "topics",
    params(("name" = String, Path, description = "The topic.")),
    responses(
        (status = 200, description = "The partitions.", body = crate::actors::record_browser::TopicPartitions),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`topic_not_active`.", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_requests`.", body = super::openapi::ErrorBody),
        (status = 503, description = "`kafka_unavailable`.", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn partitions(app: App, topic: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let described = app
        .record_browser
        .send(DescribePartitions { principal, topic })
        .await??;
    Ok(json(StatusCode::OK, &described))
}

pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let with_app = super::with_app(app);
    let topic = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("topics"))
        .and(warp::path::param::<String>());
    let messages = topic
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(|name, app, auth, query| browse(app, name, auth, query))
        .map(respond)
        .boxed();
    let partitions = topic
        .and(warp::path("partitions"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .and(auth())
        .then(|name, app, auth| partitions(app, name, auth))
        .map(respond)
        .boxed();
    messages.or(partitions).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Result<StartFrom> {
        start_from(&parse_query::<BrowseParams>(query)?)
    }

    #[test]
    fn a_page_starts_at_the_end_an_offset_a_time_or_a_cursor() {
        assert_eq!(params("").ok(), Some(StartFrom::Latest));
        assert_eq!(params("offset=7").ok(), Some(StartFrom::Offset(7)));
        assert_eq!(
            params("timestamp=1000").ok(),
            Some(StartFrom::Timestamp(1000))
        );
        assert_eq!(
            params("timestamp=1970-01-01T00:00:01Z").ok(),
            Some(StartFrom::Timestamp(1000))
        );
        for bad in [
            "offset=1&timestamp=2",
            "offset=-1",
            "timestamp=yesterday",
            "after=%%",
        ] {
            assert!(matches!(params(bad), Err(Error::InvalidQuery(_))), "{bad}");
        }
    }
}
