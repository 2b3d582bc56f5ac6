//! Routes of the access model: access and ownership requests, and grants. Each decodes the
//! call and sends one message to the registry, which checks who may do it.

use bytes::Bytes;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth, body_up_to, json, paging, parse_body, parse_id, parse_query, query, respond, Action, App,
    ApproveBody, EmptyBody, ReasonBody,
};
use crate::actors::access::{
    AccessCommand, AccessFilter, AccessStatus, GetAccessRequest, ListAccessRequests, ListGrants,
    RevokeGrant,
};
use crate::actors::registry::Decision;
use crate::error::{Error, Result};
use crate::events::Access;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    topic: String,
    access: Access,
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OwnershipBody {
    to: String,
    reason: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct GrantParams {
    topic: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A trimmed text, `None` when blank.
fn text(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Ask for a `produce` or `consume` grant on a topic.
#[utoipa::path(post, path = "/api/v1/access-requests", tag = "access",
    request_body = AccessBody,
    responses(
        (status = 201, description = "The access request, `pending`.", body = crate::actors::access::AccessRequest),
        (status = 400, description = "`invalid_json`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`topic_not_active`, `already_granted`, `request_pending`.", body = super::openapi::ErrorBody),
    ))]
async fn file_access(app: App, auth: Option<String>, body: Result<Bytes>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let b: AccessBody = parse_body(&body?)?;
    let request = app
        .registry
        .send(AccessCommand::File {
            principal,
            topic: b.topic,
            access: b.access,
            reason: text(b.reason),
        })
        .await??;
    Ok(json(StatusCode::CREATED, &request))
}

/// Hand a topic over to another principal (its owner or an admin).
#[utoipa::path(post, path = "/api/v1/topics/{name}/ownership-requests", tag = "access",
    params(("name" = String, Path, description = "The topic.")),
    request_body = OwnershipBody,
    responses(
        (status = 201, description = "An `ownership` access request, `pending`.", body = crate::actors::access::AccessRequest),
        (status = 400, description = "`invalid_json`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`not_owner`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`topic_not_active`, `already_granted`, `request_pending`.", body = super::openapi::ErrorBody),
    ))]
async fn file_ownership(
    app: App,
    topic: String,
    auth: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let b: OwnershipBody = parse_body(&body?)?;
    let request = app
        .registry
        .send(AccessCommand::FileOwnership {
            principal,
            topic,
            to: b.to,
            reason: text(b.reason),
        })
        .await??;
    Ok(json(StatusCode::CREATED, &request))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AccessListParams {
    status: Option<AccessStatus>,
    access: Option<Access>,
    topic: Option<String>,
    requested_by: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// List access requests, oldest first, one page at a time.
#[utoipa::path(get, path = "/api/v1/access-requests", tag = "access",
    params(AccessListParams),
    responses(
        (status = 200, description = "A page of access requests.", body = super::openapi::AccessRequestsPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
    ))]
async fn list_access(app: App, auth: Option<String>, query: String) -> Result<Response> {
    app.authenticate(auth).await?;
    let params: AccessListParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let filter = AccessFilter {
        status: params.status,
        access: params.access,
        topic: params.topic,
        requested_by: params.requested_by,
    };
    let requests = app.registry.send(ListAccessRequests(filter, page)).await?;
    paging::page_body("requests", requests)
}

/// One access request.
#[utoipa::path(get, path = "/api/v1/access-requests/{id}", tag = "access",
    params(("id" = uuid::Uuid, Path, description = "The access request's id.")),
    responses(
        (status = 200, description = "The access request.", body = crate::actors::access::AccessRequest),
        (status = 400, description = "`invalid_id`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
    ))]
async fn get_access(app: App, id: String, auth: Option<String>) -> Result<Response> {
    app.authenticate(auth).await?;
    let request = app
        .registry
        .send(GetAccessRequest(parse_id(&id)?))
        .await??;
    Ok(json(StatusCode::OK, &request))
}

/// Decide an access request (`approve`, `reject`: the topic's owner or an admin, never the
/// requester) or `withdraw` it (its requester).
#[utoipa::path(post, path = "/api/v1/access-requests/{id}/{action}", tag = "access",
    params(
        ("id" = uuid::Uuid, Path, description = "The access request's id."),
        ("action" = super::Action, Path, description = "Another name is 404 `not_found`."),
    ),
    request_body(content = Option<super::ReasonBody>, description = "`approve`: `{\"note\"?}`; `reject`: `{\"reason\"}`; `withdraw`: empty or `{}`."),
    responses(
        (status = 200, description = "The access request, decided or withdrawn.", body = crate::actors::access::AccessRequest),
        (status = 400, description = "`invalid_id`, `invalid_json`, `reason_required`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`self_approval`, `not_owner`, `not_requester`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`not_pending`.", body = super::openapi::ErrorBody),
    ))]
async fn act_on_access(
    app: App,
    id: String,
    action: String,
    auth: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let id = parse_id(&id)?;
    let body = body?;
    let command = match Action::parse(&action)? {
        Action::Approve => {
            let b: ApproveBody = parse_body(&body)?;
            AccessCommand::Decide {
                principal,
                id,
                decision: Decision::Approve { note: text(b.note) },
            }
        }
        Action::Reject => {
            let b: ReasonBody = parse_body(&body)?;
            let reason = text(b.reason).ok_or(Error::ReasonRequired)?;
            AccessCommand::Decide {
                principal,
                id,
                decision: Decision::Reject { reason },
            }
        }
        Action::Withdraw => {
            let _: EmptyBody = parse_body(&body)?;
            AccessCommand::Withdraw { principal, id }
        }
    };
    let request = app.registry.send(command).await??;
    Ok(json(StatusCode::OK, &request))
}

/// Who holds which grant: an admin sees all, an owner its topics', anyone else their own.
#[utoipa::path(get, path = "/api/v1/grants", tag = "access",
    params(GrantParams),
    responses(
        (status = 200, description = "A page of grants.", body = super::openapi::GrantsPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
    ))]
async fn list_grants(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: GrantParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let grants = app
        .registry
        .send(ListGrants {
            principal,
            topic: params.topic,
            page,
        })
        .await?;
    paging::page_body("grants", grants)
}

/// Revoke a grant (the topic's owner or an admin).
#[utoipa::path(delete, path = "/api/v1/grants/{id}", tag = "access",
    params(("id" = uuid::Uuid, Path, description = "The grant's id.")),
    request_body(content = Option<super::ReasonBody>, description = "Optional `{\"reason\"?}`."),
    responses(
        (status = 200, description = "The revoked grant.", body = crate::actors::access::Grant),
        (status = 400, description = "`invalid_id`, `invalid_json`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`not_owner`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
    ))]
async fn revoke_grant(
    app: App,
    id: String,
    auth: Option<String>,
    body: Result<Bytes>,
) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let id = parse_id(&id)?;
    let b: ReasonBody = parse_body(&body?)?;
    let grant = app
        .registry
        .send(RevokeGrant {
            principal,
            id,
            reason: text(b.reason),
        })
        .await??;
    Ok(json(StatusCode::OK, &grant))
}

/// `/access-requests`, `/topics/{name}/ownership-requests` and `/grants`.
pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let limit = app.limits.max_body_bytes;
    let body = move || body_up_to(limit);
    let with_app = super::with_app(app);
    let api = warp::path("api").and(warp::path("v1"));

    let requests = api.and(warp::path("access-requests"));
    let file = requests
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(file_access)
        .map(respond)
        .boxed();
    let list = requests
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list_access)
        .map(respond)
        .boxed();
    let get = requests
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .then(|id, app, auth| get_access(app, id, auth))
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
        .then(|id, action, app, auth, body| act_on_access(app, id, action, auth, body))
        .map(respond)
        .boxed();
    let ownership = api
        .and(warp::path("topics"))
        .and(warp::path::param::<String>())
        .and(warp::path("ownership-requests"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(|topic, app, auth, body| file_ownership(app, topic, auth, body))
        .map(respond)
        .boxed();
    let grants = api.and(warp::path("grants"));
    let grant_list = grants
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list_grants)
        .map(respond)
        .boxed();
    let revoke = grants
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_app.clone())
        .and(auth())
        .and(body())
        .then(|id, app, auth, body| revoke_grant(app, id, auth, body))
        .map(respond)
        .boxed();
    file.or(list)
        .unify()
        .or(get)
        .unify()
        .or(act)
        .unify()
        .or(ownership)
        .unify()
        .or(grant_list)
        .unify()
        .or(revoke)
        .unify()
        .map(|r: Response| r.into_response())
        .boxed()
}
