//! What browsers are told: the security headers on every reply, and CORS only for the origins
//! that `[server] cors_origins` names.
//!
//! The console is served by KafFlow itself, so it never needs CORS. With no origins listed, no
//! reply carries an `Access-Control-*` header and a browser keeps every other site's pages
//! from reading KafFlow's answers. A listed origin gets its preflight answered and its
//! replies marked readable; any other origin is answered as if CORS did not exist.

use std::collections::HashSet;
use std::sync::Arc;

use warp::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Scripts, styles and connections only from KafFlow itself; no inline script or style, no
/// plugins, never inside a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const ALLOWED_METHODS: &str = "GET, POST, PUT, DELETE";
const ALLOWED_HEADERS: &str = "authorization, content-type";
const EXPOSED_HEADERS: &str = "retry-after";
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// The origins that may call the API from their pages (lower case, as browsers send them).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Arc<HashSet<String>>,
}

impl Cors {
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            origins: Arc::new(origins.iter().map(|o| o.to_ascii_lowercase()).collect()),
        }
    }

    /// The request's `Origin`, if it is one of ours.
    fn allowed(&self, origin: Option<&str>) -> Option<HeaderValue> {
        if self.origins.is_empty() {
            return None;
        }
        let origin = origin?;
        if !self.origins.contains(&origin.to_ascii_lowercase()) {
            return None;
        }
        HeaderValue::from_str(origin).ok()
    }
}

/// The request's `Origin` header, looked up without copying the other headers (every reply
/// passes through `decorate`, which needs nothing else of the request).
/// An `Origin` that is not visible ASCII is no origin of ours: taken as none.
pub fn origin() -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone
{
    optional_header("origin")
}

/// A header as text, `None` when missing or not visible ASCII; never a rejection.
pub(super) fn optional_header(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>(name)
        .or(warp::any().map(|| None))
        .unify()
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &'static str) {
    headers.insert(name, HeaderValue::from_static(value));
}

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin:
/// 204 with what it may send. Anything else is not a preflight of ours and goes on to the
/// routes (an unlisted origin's preflight gets the route's own answer, without CORS headers).
pub fn preflight(
    cors: Cors,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    // Not `warp::options()`: its refusal of other methods is a 405 that would outrank the
    // 404 of a path no route has.
    warp::method()
        .and(origin())
        .and(optional_header("access-control-request-method"))
        .and_then(
            move |method: warp::http::Method, origin: Option<String>, asked: Option<String>| {
                let allowed = cors
                    .allowed(origin.as_deref())
                    .filter(|_| method == warp::http::Method::OPTIONS);
                async move {
                    match allowed {
                        Some(origin) if asked.is_some() => {
                            let mut response = StatusCode::NO_CONTENT.into_response();
                            let h = response.headers_mut();
                            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                            set(h, header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
                            set(h, header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS);
                            set(h, header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE_S);
                            Ok(response)
                        }
                        _ => Err(warp::reject::not_found()),
                    }
                }
            },
        )
}

/// Adds the security headers to a reply, and the CORS headers when the request came from a
/// listed origin.
pub fn decorate(cors: &Cors, origin: Option<&str>, mut response: Response) -> Response {
    let allowed = cors.allowed(origin);
    let h = response.headers_mut();
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if !cors.origins.is_empty() {
        // The answer depends on the origin: caches must not hand one origin's to another.
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if let Some(origin) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        set(h, header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_origin_is_named_in_a_reply() {
        let cors = Cors::new(&["https://console.example".to_string()]);
        let listed = decorate(&cors, Some("https://console.example"), Response::default());
        assert_eq!(
            listed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://console.example"
        );
        let other = decorate(&cors, Some("https://evil.example"), Response::default());
        assert!(!other
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(other.headers()[header::X_FRAME_OPTIONS], "DENY");
    }

    #[test]
    fn no_origins_listed_means_no_cors_headers_at_all() {
        let reply = decorate(
            &Cors::default(),
            Some("https://console.example"),
            Response::default(),
        );
        assert!(!reply
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")));
        assert!(!reply.headers().contains_key(header::VARY));
        assert_eq!(
            reply.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }
}
