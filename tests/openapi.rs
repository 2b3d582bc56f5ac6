//! `GET /api/v1/openapi.json` from the real binary: an OpenAPI 3.1 document that names every
//! route the server answers (each route of docs/api.md, each file the console's page loads,
//! each method the server takes on each path) and no route it does not, and whose error codes
//! are all codes the server can return.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `(method, path)` of every route heading of docs/api.md (`### \`GET /topics/{name}\`: ...`),
/// with the `/api/v1` prefix for the API's routes and without query strings.
fn documented_routes() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let heading = regex::Regex::new(r"(?m)^### `(GET|POST|PUT|DELETE|PATCH) (/[^`? ]*)").unwrap();
    heading
        .captures_iter(&doc)
        .map(|c| {
            let path = &c[2];
            let path = if ["/healthz", "/readyz", "/metrics"].contains(&path) {
                path.to_string()
            } else {
                format!("/api/v1{path}")
            };
            (c[1].to_lowercase(), path)
        })
        .collect()
}

/// Whether a concrete or templated path matches a templated path of the document.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
}

/// Every code the server can put in an error body, read from the code that maps them: the
/// domain errors' `code()` (src/error.rs), the token refusals' (src/identity.rs), and warp's
/// rejections (src/http/error.rs).
fn server_codes() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let arm = regex::Regex::new(r#"=> "([a-z_]+)""#).unwrap();
    let rejection = regex::Regex::new(r#"StatusCode::[A-Z_]+,\s*"([a-z_]+)""#).unwrap();
    let mut codes = BTreeSet::new();
    for file in ["src/error.rs", "src/identity.rs"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        // Only the arms of `fn code`, the table of codes.
        for part in text.split("fn code(&self) -> &'static str").skip(1) {
            let body = part.split("\n    }\n").next().unwrap_or_default();
            codes.extend(arm.captures_iter(body).map(|c| c[1].to_string()));
        }
    }
    let text = std::fs::read_to_string(format!("{root}/src/http/error.rs")).expect("error.rs");
    codes.extend(rejection.captures_iter(&text).map(|c| c[1].to_string()));
    codes
}

/// A request path for a templated one: a UUID for ids, a name for the rest.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{id}" => "0190aa4e-7f2a-7b5e-9f00-000000000000",
            "{action}" => "approve",
            "{file}" => "LICENSE",
            s if s.starts_with('{') => "openapi-no-such-topic",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A route that no handler took: warp's 404 or 405.
fn unrouted(status: u16, body: &Value) -> bool {
    status == 405 || (status == 404 && body["error"]["message"] == "no such route")
}

#[test]
fn the_openapi_document_names_every_route_and_only_real_error_codes() {
    let svc = Service::start();
    // No token needed.
    let (status, doc) = svc.get_anon("/api/v1/openapi.json");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0", "OpenAPI 3.1");
    assert!(doc["info"]["title"].is_string(), "{}", doc["info"]);
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "{}",
        doc["components"]
    );
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for shape in [
        "TopicRequest",
        "Topic",
        "AccessRequest",
        "Grant",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(shape), "schema {shape}");
    }
    let paths = doc["paths"].as_object().expect("paths");
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|item| {
            METHODS
                .iter()
                .filter_map(|m| item[*m]["operationId"].as_str())
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operationIds are unique: {ids:?}");

    // Every documented route is in the document.
    let documented = documented_routes();
    assert!(documented.len() >= 35, "routes parsed: {documented:?}");
    for (method, path) in &documented {
        let found = paths
            .iter()
            .any(|(template, item)| matches(template, path) && item[method].is_object());
        assert!(
            found,
            "{method} {path} is documented but not in openapi.json"
        );
    }

    // Every file the console's page loads is in the document, and served.
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/index.html"))
        .expect("ui/index.html");
    let link = regex::Regex::new(r#"(?:src|href)="(/[^"]*)""#).unwrap();
    for file in link.captures_iter(&page).map(|c| c[1].to_string()) {
        let found = paths
            .iter()
            .any(|(template, item)| matches(template, &file) && item["get"].is_object());
        assert!(found, "the console loads {file}, which openapi.json lacks");
        let (status, _) = svc.get_anon(&file);
        assert_eq!(status, 200, "{file}");
    }

    // Every operation of the document is answered by the server (no routing 404 or 405), and
    // every other method on its paths is not: the server takes no route the document lacks.
    for (template, item) in paths {
        let path = concrete(template);
        for method in METHODS {
            let (status, body) = svc.send(&method.to_uppercase(), &path, None, None);
            if item[method].is_object() {
                assert!(
                    !unrouted(status, &body),
                    "{method} {template} is in openapi.json but not answered: {status} {body}"
                );
                // Only the document itself and the probes answer without a token.
                let open = item[method]["security"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
                });
                if !open {
                    assert_eq!(status, 401, "{method} {template} without a token: {body}");
                }
            } else {
                assert!(
                    unrouted(status, &body),
                    "{method} {template} is answered ({status} {body}) but not in openapi.json"
                );
            }
        }
    }

    // Every error code the document names is one the server can return.
    let real = server_codes();
    assert!(
        real.contains("self_approval") && real.contains("token_expired"),
        "{real:?}"
    );
    let code = regex::Regex::new(r"`([a-z_]+)`").unwrap();
    let mut named = BTreeSet::new();
    for (template, item) in paths {
        for method in METHODS {
            let Some(responses) = item[method]["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let error = response["content"]["application/json"]["schema"]["$ref"]
                    == "#/components/schemas/ErrorBody";
                if !error {
                    assert!(
                        status.as_str() < "400" || template == "/readyz",
                        "{method} {template} {status} is not an error body"
                    );
                    continue;
                }
                let description = response["description"].as_str().unwrap_or_default();
                let codes: Vec<String> = code
                    .captures_iter(description)
                    .map(|c| c[1].to_string())
                    .collect();
                assert!(
                    !codes.is_empty(),
                    "{method} {template} {status} names no code"
                );
                for c in codes {
                    assert!(
                        real.contains(&c),
                        "{method} {template} {status} names `{c}`, which the server never returns"
                    );
                    named.insert(c);
                }
            }
        }
    }
    assert!(named.len() >= 30, "codes named: {named:?}");
}
