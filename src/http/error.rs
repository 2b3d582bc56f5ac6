//! The one place where domain errors and warp rejections become HTTP statuses.

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::error::Error;

pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::Unauthorized | Error::TokenRefused(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_)
        | Error::SelfApproval
        | Error::NotRequester
        | Error::NotOwner(_)
        | Error::NoAccess(_)
        | Error::GroupNotAllowed { .. } => StatusCode::FORBIDDEN,
        Error::InvalidTopicName(_)
        | Error::InvalidPartitions(_)
        | Error::InvalidReplicationFactor(_)
        | Error::InvalidConfig(_)
        | Error::ReasonRequired
        | Error::InvalidJson(_)
        | Error::InvalidId(_)
        | Error::InvalidRecord(_)
        | Error::BadRecord { .. }
        | Error::InvalidQuery(_)
        | Error::InvalidTokenRequest(_) => StatusCode::BAD_REQUEST,
        Error::PayloadTooLarge(_) | Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::NotFound(_) | Error::UnknownTopic(_) => StatusCode::NOT_FOUND,
        Error::SpoolFull(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Error::TopicExists(_)
        | Error::AlreadyGranted(_)
        | Error::RequestPending { .. }
        | Error::NotPending(_)
        | Error::TopicNotActive { .. }
        | Error::TopicClosed { .. }
        | Error::NameTaken(_)
        | Error::AlreadyRevoked(_) => StatusCode::CONFLICT,
        Error::Store(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Error::Unavailable | Error::ConsumerUnavailable(_) | Error::KafkaRead(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        Error::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}

pub fn error_reply(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

pub fn render_error(error: &Error) -> Response {
    let status = status_of(error);
    if status.is_server_error() {
        tracing::error!(%error, "Request failed.");
    }
    let mut reply = error_reply(status, error.code(), &error.to_string());
    if let Error::TooMany { retry_after_s, .. } = error {
        reply.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            warp::http::HeaderValue::from(*retry_after_s),
        );
    }
    reply
}

/// A domain error raised by a filter before any handler ran (a limit of the facade).
#[derive(Debug)]
pub struct Refused(pub Error);

impl warp::reject::Reject for Refused {}

/// The request's headers are larger than `limits.max_request_header_bytes`.
#[derive(Debug)]
pub struct HeadersTooLarge(pub usize);

impl warp::reject::Reject for HeadersTooLarge {}

/// Turns warp's own rejections (no route, wrong method, body too large, ...) into JSON errors.
/// Every rejection comes out as a JSON error with a code, and none as a 5xx: a rejection is
/// always about the request.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    use warp::reject;
    let reply = if let Some(Refused(e)) = rejection.find::<Refused>() {
        render_error(e)
    } else if let Some(HeadersTooLarge(limit)) = rejection.find::<HeadersTooLarge>() {
        error_reply(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!("the request headers are larger than {limit} bytes"),
        )
    } else if rejection.is_not_found() {
        error_reply(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        error_reply(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string())
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        error_reply(StatusCode::BAD_REQUEST, "invalid_header", &e.to_string())
    } else if let Some(e) = rejection.find::<reject::MissingHeader>() {
        error_reply(StatusCode::BAD_REQUEST, "invalid_header", &e.to_string())
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if rejection.find::<reject::LengthRequired>().is_some() {
        error_reply(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a content-length header is required",
        )
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        error_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the content-type is not supported",
        )
    } else {
        tracing::warn!(?rejection, "Unhandled rejection.");
        error_reply(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be handled",
        )
    };
    Ok(reply)
}
