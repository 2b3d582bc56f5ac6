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
// The dashboard's charts: uPlot, vendored unchanged with its licence (ui/vendor/uplot/).
const UPLOT_JS: &str = include_str!("../../ui/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../ui/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../ui/vendor/uplot/LICENSE");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    // The files change only with the binary; no-cache keeps an upgraded server's page fresh.
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}

/// The console's page. No token: the page asks for one.
#[utoipa::path(get, path = "/", tag = "console", security(()),
    responses((status = 200, description = "The web console.", content_type = "text/html")))]
pub(super) fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// The console's script.
#[utoipa::path(get, path = "/app.js", tag = "console", security(()),
    responses((status = 200, description = "The console's script.", content_type = "text/javascript")))]
pub(super) fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// The console's style sheet.
#[utoipa::path(get, path = "/app.css", tag = "console", security(()),
    responses((status = 200, description = "The console's style sheet.", content_type = "text/css")))]
pub(super) fn style() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// The vendored files the console loads: uPlot's script, style sheet and licence.
#[utoipa::path(get, path = "/vendor/uplot/{file}", tag = "console", security(()),
    params(("file" = String, Path, description = "`uPlot.iife.min.js`, `uPlot.min.css` or `LICENSE`; another name is 404 `not_found`.")),
    responses(
        (status = 200, description = "The file."),
        (status = 404, description = "No such file: `not_found`.", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn vendor(file: String) -> Result<Response, warp::Rejection> {
    match file.as_str() {
        "uPlot.iife.min.js" => Ok(asset(UPLOT_JS, "text/javascript; charset=utf-8")),
        "uPlot.min.css" => Ok(asset(UPLOT_CSS, "text/css; charset=utf-8")),
        "LICENSE" => Ok(asset(UPLOT_LICENSE, "text/plain; charset=utf-8")),
        _ => Err(warp::reject::not_found()),
    }
}

/// `GET /`, `/app.js`, `/app.css` and the vendored files under `/vendor/`.
pub(super) fn routes() -> BoxedFilter<(Response,)> {
    let index = warp::path::end().and(warp::get()).map(index);
    let script = warp::path!("app.js").and(warp::get()).map(script);
    let style = warp::path!("app.css").and(warp::get()).map(style);
    let vendor = warp::path!("vendor" / "uplot" / String)
        .and(warp::get())
        .and_then(vendor);
    index
        .or(script)
        .unify()
        .or(style)
        .unify()
        .or(vendor)
        .unify()
        .boxed()
}
