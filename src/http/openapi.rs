//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API, derived from the code.
//!
//! Each handler carries its `#[utoipa::path]` (method, path, parameters, body, replies and the
//! error codes it can answer with) beside its code, and the shapes derive `ToSchema` where
//! they are defined, so the document changes with them. `ApiDoc` only lists the handlers.
//! Reading it needs no token: it describes the API, not its data.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::actors::access::{AccessRequest, Grant};
use crate::actors::registry::TopicRequest;
use crate::actors::subscriptions::Subscription;
use crate::actors::tokens::TokenView;

/// Every error reply: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// Stable; clients match on it. Each route lists the codes it can answer with.
    code: String,
    /// For people; may change.
    message: String,
}

// The pages of the list routes, as `paging::page_body` writes them (the list under its own
// name, and `next`): that function names the list at run time, so its shapes are spelled out.

/// A page of `GET /topic-requests`: pass `next` as `after`.
#[derive(Serialize, ToSchema)]
pub(super) struct RequestsPage {
    requests: Vec<TopicRequest>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AccessRequestsPage {
    requests: Vec<AccessRequest>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TopicsPage {
    topics: Vec<super::TopicView>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct MessagesPage {
    records: Vec<crate::actors::record_browser::BrowsedRecord>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct GrantsPage {
    grants: Vec<Grant>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokensPage {
    tokens: Vec<TokenView>,
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct SubscriptionsPage {
    subscriptions: Vec<Subscription>,
    next: Option<String>,
}

/// The caller's subscribed topics; the changes answer with the whole set and no `next`.
#[derive(Serialize, ToSchema)]
pub(super) struct TopicNames {
    topics: Vec<String>,
    next: Option<String>,
}

/// The bearer scheme of every route that needs a token.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KafFlow",
        description = "A governed gateway for Apache Kafka: topic requests, approvals, access, \
                       producing and consuming records, and the audit trail. The contract in \
                       prose is docs/api.md. Every route under /api/v1 takes \
                       `Authorization: Bearer <token>`, except this document."
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    paths(
        super::create_request,
        super::list_requests,
        super::get_request,
        super::act_on_request,
        super::list_topics,
        super::get_topic,
        super::request_deletion,
        super::messages::browse,
        super::messages::partitions,
        super::audit,
        super::audit::export,
        super::verify_chain,
        super::policy,
        super::healthz,
        super::ready,
        super::access::file_access,
        super::access::list_access,
        super::access::get_access,
        super::access::act_on_access,
        super::access::file_ownership,
        super::access::list_grants,
        super::access::revoke_grant,
        super::records::ingest,
        super::records::list_held,
        super::records::discard_held,
        super::records::drift,
        super::records::metrics,
        super::tokens::issue,
        super::tokens::list,
        super::tokens::revoke,
        super::me::me,
        super::feed::mine,
        super::feed::replace,
        super::feed::subscribe,
        super::feed::unsubscribe,
        super::feed::list,
        super::feed::open_feed,
        super::ui::index,
        super::ui::script,
        super::ui::style,
        super::ui::vendor,
        document,
    )
)]
struct ApiDoc;

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API. No token needed."))
)]
pub(super) fn document() -> Response {
    let mut reply =
        warp::reply::with_status(document_json().to_string(), StatusCode::OK).into_response();
    reply.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/api/v1/topic-requests"]["post"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
