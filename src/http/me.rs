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

#[derive(Serialize)]
struct Me {
    name: String,
    roles: Vec<Role>,
}

async fn me(app: App, auth: Option<String>) -> Result<Response> {
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
