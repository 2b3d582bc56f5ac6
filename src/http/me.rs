//! `GET /me`: who the token signs in as. The console shows only the actions its user may take
//! (no approve button on one's own request, no deletion of a topic one does not own), so it
//! needs the name and the roles, not just whether a read succeeds.

use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{auth, json, respond, App};
use crate::error::Result;
use crate::identity::Role;

#[derive(Serialize, utoipa::ToSchema)]
struct Me {
    name: String,
    roles: Vec<Role>,
}

/// Who the token signs in as: the principal's name and roles.
#[utoipa::path(get, path = "/api/v1/me", tag = "consumers",
    responses(
        (status = 200, description = "The caller.", body = Me),
        (status = 401, description = "No valid token: `unauthorized`, `token_revoked`, `token_expired`, `token_not_yet_valid`, `invalid_signature`, `invalid_issuer`, `invalid_audience`, `invalid_token`.", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn me(app: App, auth: Option<String>) -> Result<Response> {
    let principal = app.authenticate(auth).await?;
    let me = Me {
        name: principal.name,
        roles: principal.roles.into_iter().collect(),
    };
    Ok(json(StatusCode::OK, &me))
}

/// `GET /me`.
pub(super) fn routes(app: App) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "me")
        .and(warp::get())
        .and(super::with_app(app))
        .and(auth())
        .then(me)
        .map(respond)
        .boxed()
}
