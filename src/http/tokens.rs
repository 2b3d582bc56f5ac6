//! The issued tokens: authenticate, parse, send one message to the tokens actor, render.

use bytes::Bytes;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{
    auth, body_up_to, json, paging, parse_body, parse_id, parse_query, query, respond, App,
};
use crate::actors::tokens::{IssueToken, ListTokens, RevokeToken};
use crate::error::Result;
use crate::identity::Role;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    name: String,
    roles: Vec<Role>,
    expires_in_days: Option<i64>,
}

/// Issue a token (admin); its secret is shown this once.
#[utoipa::path(post, path = "/api/v1/tokens", operation_id = "issue_token", tag = "tokens",
    request_body = IssueBody,
    responses(
        (status = 201, description = "The token, with its secret `token`.", body = crate::actors::tokens::Issued),
        (status = 400, description = "`invalid_json`, `invalid_token_request`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`name_taken`.", body = super::openapi::ErrorBody),
        (status = 500, description = "`internal_error`, `store_error`.", body = super::openapi::ErrorBody),
        (status = 507, description = "`storage_full`.", body = super::openapi::ErrorBody),
    ))]
async fn issue(app: App, auth: Option<String>, body: Result<Bytes>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let body: IssueBody = parse_body(&body?)?;
    let issued = app
        .tokens
        .send(IssueToken {
            principal,
            name: body.name,
            roles: body.roles,
            expires_in_days: body.expires_in_days,
        })
        .await??;
    Ok(json(StatusCode::CREATED, &issued))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// The issued tokens, oldest first, without their secrets (admin).
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "list_tokens", tag = "tokens",
    params(ListParams),
    responses(
        (status = 200, description = "A page of tokens.", body = super::openapi::TokensPage),
        (status = 400, description = "`invalid_query`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
    ))]
async fn list(app: App, auth: Option<String>, query: String) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let params: ListParams = parse_query(&query)?;
    let page = paging::page_of(params.after, params.limit)?;
    let tokens = app.tokens.send(ListTokens { principal, page }).await??;
    paging::page_body("tokens", tokens)
}

/// Revoke a token (admin): refused from then on, its feeds and TCP connections closed.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", operation_id = "revoke_token", tag = "tokens",
    params(("id" = uuid::Uuid, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "The token, now `revoked`.", body = crate::actors::tokens::TokenView),
        (status = 400, description = "`invalid_id`.", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
        (status = 403, description = "`forbidden`.", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`.", body = super::openapi::ErrorBody),
        (status = 409, description = "`already_revoked`.", body = super::openapi::ErrorBody),
    ))]
async fn revoke(app: App, id: String, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let id = parse_id(&id)?;
    let token = app.tokens.send(RevokeToken { principal, id }).await??;
    Ok(json(StatusCode::OK, &token))
}

/// `POST /tokens`, `GET /tokens`, `DELETE /tokens/{id}`.
pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    let max_body = app.limits.max_body_bytes;
    let with_app = super::with_app(app);
    let tokens = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("tokens"));
    let create = tokens
        .and(warp::path::end())
        .and(warp::post())
        .and(with_app.clone())
        .and(auth())
        .and(body_up_to(max_body))
        .then(issue)
        .map(respond)
        .boxed();
    let get = tokens
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and(auth())
        .and(query())
        .then(list)
        .map(respond)
        .boxed();
    let delete = tokens
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_app)
        .and(auth())
        .then(|id, app, auth| revoke(app, id, auth))
        .map(respond)
        .boxed();
    create.or(get).unify().or(delete).unify().boxed()
}
