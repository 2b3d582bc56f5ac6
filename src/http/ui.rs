//! The web console: static files from `ui/`, compiled into the binary so KafFlow serves its own
//! page with no separate server and nothing fetched at run time. The page only calls the public
//! API under `/api/v1`, with the token the user pasted.

use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::Response;
use warp::{Filter, Reply};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    // The files change only with the binary; no-cache keeps an upgraded server's page fresh.
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}

/// `GET /`, `/app.js` and `/app.css`.
pub(super) fn routes() -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let script = warp::path!("app.js")
        .and(warp::get())
        .map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let style = warp::path!("app.css")
        .and(warp::get())
        .map(|| asset(APP_CSS, "text/css; charset=utf-8"));
    index.or(script).unify().or(style).unify().boxed()
}
