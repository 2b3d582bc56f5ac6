//! The access model, proven for every route: reads the table in docs/api.md and calls every
//! route it lists (HTTP, the feed websocket, and the TCP protocol's AUTH and record lines) as
//! every persona against the real binary and broker, comparing each answer with its cell.
//! The route headings of docs/api.md must all be in the table, so a new route without a row
//! fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const API_MD: &str = include_str!("../docs/api.md");

/// The personas, as the table's columns name them.
const PERSONAS: &[&str] = &[
    "none",
    "malformed",
    "unknown",
    "revoked",
    "expired_jwt",
    "owner",
    "producer_granted",
    "producer",
    "consumer_granted",
    "consumer",
    "admin",
    "admin_own",
];

/// One row of the table: the route and, per persona, the expected answer.
struct Row {
    route: String,
    cells: BTreeMap<String, String>,
}

fn table() -> Vec<Row> {
    let start = API_MD
        .find("<!-- access-table:start -->")
        .expect("the access table's start marker in docs/api.md");
    let end = API_MD
        .find("<!-- access-table:end -->")
        .expect("the access table's end marker");
    let mut lines = API_MD[start..end]
        .lines()
        .filter(|l| l.trim_start().starts_with('|'));
    let split = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect()
    };
    let header = split(lines.next().expect("header row"));
    assert_eq!(header[0], "Route");
    assert_eq!(&header[1..], PERSONAS, "the table's persona columns");
    lines
        .skip(1) // the |---| row
        .map(|line| {
            let cells = split(line);
            assert_eq!(cells.len(), header.len(), "row {line}");
            Row {
                route: cells[0].clone(),
                cells: header[1..]
                    .iter()
                    .cloned()
                    .zip(cells[1..].iter().cloned())
                    .collect(),
            }
        })
        .collect()
}

/// Every `### \`METHOD /path\`` heading of docs/api.md, as `METHOD /path` (query dropped).
fn documented_routes() -> BTreeSet<String> {
    let methods = ["GET ", "POST ", "PUT ", "DELETE ", "PATCH "];
    API_MD
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .filter(|r| methods.iter().any(|m| r.starts_with(m)))
        .map(|r| r.split('?').next().unwrap_or(r).to_string())
        .collect()
}

/// How a persona presents itself: the Authorization header (HTTP) and the AUTH line (TCP).
#[derive(Clone)]
struct Credentials {
    header: Option<String>,
    auth_line: String,
}

fn bearer(token: &str) -> Credentials {
    Credentials {
        header: Some(format!("Bearer {token}")),
        auth_line: format!("AUTH {token}"),
    }
}

/// A token that was issued (with every role) and then revoked.
fn revoked_credentials(svc: &Service) -> Option<Credentials> {
    Some(bearer(&svc.revoked_token(
        "revoked",
        &["admin", "producer", "consumer"],
    )))
}

/// A JWT with every role, well signed by the configured identity provider, an hour past its
/// `exp`.
fn expired_jwt_credentials(idp: &TestIdp) -> Option<Credentials> {
    Some(bearer(&idp.token(
        "expired",
        &["admin", "producer", "consumer"],
        -3600,
    )))
}

struct World {
    svc: Service,
    /// Signs the JWTs; its JWKS file lives as long as the world.
    _idp: TestIdp,
    /// The persona's credentials; `None` for a skipped persona.
    who: BTreeMap<&'static str, Option<Credentials>>,
    /// The principal names behind the personas that have one.
    names: BTreeMap<&'static str, &'static str>,
    /// The shared restricted topic owned by `owner`.
    t: String,
    http: reqwest::blocking::Client,
}

/// What one cell calls.
enum Call {
    Http {
        method: &'static str,
        path: String,
        body: Option<Value>,
    },
    Feed,
    TcpAuth,
    TcpRecord(String),
}

impl World {
    fn http(&self, persona: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let creds = self.who[persona].as_ref().expect("persona not skipped");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.svc.base_url()));
        if path.starts_with("/healthz")
            || path.starts_with("/readyz")
            || path.starts_with("/metrics")
        {
            request = self.http.get(format!("{}{path}", self.svc.base_url()));
        }
        if let Some(h) = &creds.header {
            request = request.header("Authorization", h);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(body).expect("json"));
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}\nstderr tail:\n{}", self.svc.stderr_tail()));
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// As the setup principal `who` (a persona with a token), expecting `status`.
    fn must(&self, persona: &str, method: &str, path: &str, body: Value, status: u16) -> Value {
        let (got, reply) = self.http(persona, method, path, Some(&body));
        assert_eq!(
            got,
            status,
            "setup {method} {path} as {persona}: {reply}\nstderr tail:\n{}",
            self.svc.stderr_tail()
        );
        reply
    }

    /// A create request by `persona` for a fresh restricted topic; (topic, request id).
    fn asked_topic(&self, persona: &str) -> (String, String) {
        let topic = unique_topic("acl");
        let reply = self.must(
            persona,
            "POST",
            "/topic-requests",
            json!({"topic": topic, "partitions": 1, "visibility": "restricted"}),
            201,
        );
        (topic, id_of(&reply))
    }

    /// A fresh restricted topic of `owner`, approved by carol; active when `wait`.
    fn live_topic(&self, wait: bool) -> String {
        let (topic, id) = self.asked_topic("owner");
        self.svc.approve("carol", &id);
        if wait {
            self.svc
                .wait_topic_status(&topic, "active", Duration::from_secs(60));
        }
        topic
    }

    /// A pending access request: `consumer` asks to read a topic `owner` asked for, or, for
    /// `admin_own`, the admin asks to send to it.
    fn access_request(&self, admin_own: bool) -> String {
        let (topic, _) = self.asked_topic("owner");
        let (who, access) = if admin_own {
            ("admin", "produce")
        } else {
            ("consumer", "consume")
        };
        let reply = self.must(
            who,
            "POST",
            "/access-requests",
            json!({"topic": topic, "access": access}),
            201,
        );
        id_of(&reply)
    }

    /// A `consume` grant of `consumer` on a topic `owner` asked for.
    fn grant(&self) -> String {
        let id = self.access_request(false);
        self.must(
            "owner",
            "POST",
            &format!("/access-requests/{id}/approve"),
            json!({}),
            200,
        );
        id
    }

    /// A token issued by the admin; its id.
    fn issued_token(&self) -> String {
        let issued = self.must(
            "admin",
            "POST",
            "/tokens",
            json!({"name": unique_topic("acl-token"), "roles": ["producer"]}),
            201,
        );
        id_of(&issued)
    }
}

/// What a cell calls for `route` as `persona`; `fresh` when the call is expected to change
/// state, so that it gets a subject of its own.
fn subject(w: &World, shared: &Shared, route: &str, persona: &str, fresh: bool) -> Call {
    let own = persona == "admin_own";
    let t = w.t.clone();
    let http =
        |method: &'static str, path: String, body: Option<Value>| Call::Http { method, path, body };
    let topic_request = |for_admin: bool| -> String {
        let by = if for_admin { "admin" } else { "owner" };
        if fresh {
            w.asked_topic(by).1
        } else if for_admin {
            shared.admin_request.clone()
        } else {
            shared.owner_request.clone()
        }
    };
    let access = |for_admin: bool| -> String {
        if fresh {
            w.access_request(for_admin)
        } else if for_admin {
            shared.admin_access.clone()
        } else {
            shared.consumer_access.clone()
        }
    };
    match route {
        "POST /topic-requests" => http(
            "POST",
            "/topic-requests".into(),
            Some(json!({"topic": unique_topic("acl-new"), "partitions": 1})),
        ),
        "GET /topic-requests" => http("GET", "/topic-requests".into(), None),
        "GET /topic-requests/{id}" => http(
            "GET",
            format!("/topic-requests/{}", shared.owner_request),
            None,
        ),
        "POST /topic-requests/{id}/approve" => http(
            "POST",
            format!("/topic-requests/{}/approve", topic_request(own)),
            Some(json!({})),
        ),
        "POST /topic-requests/{id}/reject" => http(
            "POST",
            format!("/topic-requests/{}/reject", topic_request(own)),
            Some(json!({"reason": "not now"})),
        ),
        "POST /topic-requests/{id}/withdraw" => http(
            "POST",
            format!("/topic-requests/{}/withdraw", topic_request(own)),
            Some(json!({})),
        ),
        "GET /topics" => http("GET", "/topics".into(), None),
        "GET /topics/{name}" => http("GET", format!("/topics/{t}"), None),
        "GET /topics/{name}/messages" => http("GET", format!("/topics/{t}/messages"), None),
        "GET /topics/{name}/partitions" => http("GET", format!("/topics/{t}/partitions"), None),
        "POST /topics/{name}/deletion-requests" => {
            let topic = if fresh { w.live_topic(true) } else { t };
            http(
                "POST",
                format!("/topics/{topic}/deletion-requests"),
                Some(json!({"reason": "done"})),
            )
        }
        "POST /topics/{name}/ownership-requests" => {
            let topic = if fresh { w.live_topic(false) } else { t };
            http(
                "POST",
                format!("/topics/{topic}/ownership-requests"),
                Some(json!({"to": w.names["producer_granted"], "reason": "handover"})),
            )
        }
        "POST /topics/{name}/records" => http(
            "POST",
            format!("/topics/{t}/records"),
            Some(json!([{"key": "k", "value": {"from": persona}}])),
        ),
        "POST /access-requests" => {
            let topic = if fresh { w.asked_topic("owner").0 } else { t };
            let access = if persona.starts_with("consumer") {
                "consume"
            } else {
                "produce"
            };
            http(
                "POST",
                "/access-requests".into(),
                Some(json!({"topic": topic, "access": access, "reason": "work"})),
            )
        }
        "GET /access-requests" => http("GET", "/access-requests".into(), None),
        "GET /access-requests/{id}" => http(
            "GET",
            format!("/access-requests/{}", shared.consumer_access),
            None,
        ),
        "POST /access-requests/{id}/approve" => http(
            "POST",
            format!("/access-requests/{}/approve", access(own)),
            Some(json!({})),
        ),
        "POST /access-requests/{id}/reject" => http(
            "POST",
            format!("/access-requests/{}/reject", access(own)),
            Some(json!({"reason": "no"})),
        ),
        "POST /access-requests/{id}/withdraw" => http(
            "POST",
            format!("/access-requests/{}/withdraw", access(own)),
            Some(json!({})),
        ),
        "GET /grants" => http("GET", format!("/grants?topic={t}"), None),
        "DELETE /grants/{id}" => {
            let id = if fresh {
                w.grant()
            } else {
                shared.grant.clone()
            };
            http("DELETE", format!("/grants/{id}"), None)
        }
        "GET /held" => http("GET", format!("/held?topic={t}"), None),
        "DELETE /held" => http("DELETE", format!("/held?topic={t}&state=dead"), None),
        "GET /drift" => http("GET", "/drift".into(), None),
        "GET /audit" => http("GET", "/audit".into(), None),
        "GET /audit/verify" => http("GET", "/audit/verify".into(), None),
        "GET /audit/export" => http("GET", "/audit/export?order=desc".into(), None),
        "GET /me" => http("GET", "/me".into(), None),
        "GET /policy" => http("GET", "/policy".into(), None),
        "GET /me/subscriptions" => http("GET", "/me/subscriptions".into(), None),
        "PUT /me/subscriptions" => http(
            "PUT",
            "/me/subscriptions".into(),
            Some(json!({"topics": [t]})),
        ),
        "POST /me/subscriptions/{topic}" => {
            http("POST", format!("/me/subscriptions/{t}"), Some(json!({})))
        }
        "DELETE /me/subscriptions/{topic}" => {
            if w.who[persona].is_some() && w.names.contains_key(persona) {
                // Subscribed first where the persona may; a refusal here is fine.
                let _ = w.http(persona, "POST", &format!("/me/subscriptions/{t}"), None);
            }
            http("DELETE", format!("/me/subscriptions/{t}"), None)
        }
        "GET /subscriptions" => http("GET", format!("/subscriptions?topic={t}"), None),
        "POST /tokens" => http(
            "POST",
            "/tokens".into(),
            Some(json!({"name": unique_topic("acl-token"), "roles": ["consumer"]})),
        ),
        "GET /tokens" => http("GET", "/tokens".into(), None),
        "DELETE /tokens/{id}" => {
            let id = if fresh {
                w.issued_token()
            } else {
                shared.token.clone()
            };
            http("DELETE", format!("/tokens/{id}"), None)
        }
        "GET /me/feed" => Call::Feed,
        "GET /openapi.json" => http("GET", "/openapi.json".into(), None),
        "GET /healthz" => http("GET", "/healthz".into(), None),
        "GET /readyz" => http("GET", "/readyz".into(), None),
        "GET /metrics" => http("GET", "/metrics".into(), None),
        "TCP AUTH" => Call::TcpAuth,
        "TCP record" => Call::TcpRecord(t),
        other => panic!("the test has no subject for route {other}: add one"),
    }
}

/// Pending requests and a grant that calls expected to fail may share.
struct Shared {
    owner_request: String,
    admin_request: String,
    consumer_access: String,
    admin_access: String,
    grant: String,
    /// A live issued token.
    token: String,
}

/// Calls `call` as `persona`; the answer in the table's notation.
fn answer(w: &World, persona: &str, call: Call) -> String {
    let creds = w.who[persona].clone().expect("persona not skipped");
    let http_answer = |status: u16, body: &Value| {
        if status < 400 {
            status.to_string()
        } else {
            format!("{status} {}", error_code(body))
        }
    };
    match call {
        Call::Http { method, path, body } => {
            let (status, reply) = w.http(persona, method, &path, body.as_ref());
            http_answer(status, &reply)
        }
        Call::Feed => {
            let headers: Vec<(&str, &str)> = creds
                .header
                .as_deref()
                .map(|h| vec![("authorization", h)])
                .unwrap_or_default();
            match w.svc.try_feed(&headers, "from=latest") {
                Ok(feed) => {
                    feed.close();
                    "101".into()
                }
                Err((status, body)) => http_answer(status, &body),
            }
        }
        Call::TcpAuth | Call::TcpRecord(_) => {
            let mut tcp = IngestClient::connect(w.svc.ingest_addr());
            tcp.send_line(&creds.auth_line);
            let first = tcp
                .read_line(Duration::from_secs(30))
                .unwrap_or_else(|| "closed".into());
            let tcp_answer = |line: &str| -> String {
                let mut parts = line.split_whitespace();
                match parts.next() {
                    Some("OK") => "OK".into(),
                    Some("ERR") => format!("ERR {}", parts.nth(1).unwrap_or("?")),
                    _ => format!("unexpected {line:?}"),
                }
            };
            let Call::TcpRecord(topic) = call else {
                return tcp_answer(&first);
            };
            if !first.starts_with("OK") {
                return tcp_answer(&first);
            }
            let record = json!({"topic": topic, "value": {"from": persona}});
            tcp.send_line(&record.to_string());
            tcp.finish_sending();
            let lines = tcp.read_until(Duration::from_secs(60), |l| {
                l.starts_with("ERR 2 ") || l == "OK 1"
            });
            tcp_answer(lines.last().map(String::as_str).unwrap_or("none"))
        }
    }
}

fn setup() -> World {
    let frank = ExtraPrincipal::new("frank", &["producer"]);
    let gina = ExtraPrincipal::new("gina", &["consumer"]);
    let root = ExtraPrincipal::new("root", &["admin", "producer", "consumer"]);
    let extra = format!("{}{}{}", frank.config, gina.config, root.config);
    let idp = TestIdp::new();
    let svc = Service::start_with_config(|text| text + &extra + &idp.config);
    svc.wait_ready(Duration::from_secs(60));
    let names = BTreeMap::from([
        ("owner", "alice"),
        ("producer_granted", "bob"),
        ("producer", "frank"),
        ("consumer_granted", "erin"),
        ("consumer", "gina"),
        ("admin", "root"),
        ("admin_own", "root"),
    ]);
    let mut who: BTreeMap<&'static str, Option<Credentials>> = BTreeMap::new();
    who.insert(
        "none",
        Some(Credentials {
            header: None,
            auth_line: "AUTH".into(),
        }),
    );
    who.insert(
        "malformed",
        Some(Credentials {
            header: Some("Basic eDp5".into()),
            auth_line: "HELLO there".into(),
        }),
    );
    who.insert("unknown", Some(bearer("never-issued-token-0123456789")));
    who.insert("revoked", revoked_credentials(&svc));
    who.insert("expired_jwt", expired_jwt_credentials(&idp));
    for (persona, name) in &names {
        let token = match *name {
            "frank" => frank.token.clone(),
            "gina" => gina.token.clone(),
            "root" => root.token.clone(),
            known => svc.token(known).to_string(),
        };
        who.insert(*persona, Some(bearer(&token)));
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let mut w = World {
        svc,
        _idp: idp,
        who,
        names,
        t: String::new(),
        http,
    };
    // T: restricted, owned by alice; bob may send to it, erin may read it.
    w.t = w.live_topic(true);
    let t = w.t.clone();
    for (persona, access) in [
        ("producer_granted", "produce"),
        ("consumer_granted", "consume"),
    ] {
        let request = w.must(
            persona,
            "POST",
            "/access-requests",
            json!({"topic": t, "access": access}),
            201,
        );
        w.must(
            "owner",
            "POST",
            &format!("/access-requests/{}/approve", id_of(&request)),
            json!({"note": "ok"}),
            200,
        );
    }
    w
}

#[test]
fn every_route_answers_every_persona_as_the_table_says() {
    let rows = table();
    let in_table: BTreeSet<String> = rows
        .iter()
        .map(|r| r.route.clone())
        .filter(|r| !r.starts_with("TCP "))
        .collect();
    let documented = documented_routes();
    let missing: Vec<_> = documented.difference(&in_table).collect();
    assert!(
        missing.is_empty(),
        "routes of docs/api.md without a row in the access table: {missing:?}"
    );
    let unknown: Vec<_> = in_table.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "rows of the access table that docs/api.md does not document: {unknown:?}"
    );

    let w = setup();
    let shared = Shared {
        owner_request: w.asked_topic("owner").1,
        admin_request: w.asked_topic("admin").1,
        consumer_access: w.access_request(false),
        admin_access: w.access_request(true),
        grant: w.grant(),
        token: w.issued_token(),
    };
    let mut wrong = Vec::new();
    let mut skipped = BTreeSet::new();
    let mut checked = 0;
    for row in &rows {
        for persona in PERSONAS {
            if w.who[persona].is_none() {
                skipped.insert(*persona);
                continue;
            }
            let expected = &row.cells[*persona];
            let changes = !row.route.starts_with("GET ")
                && !row.route.starts_with("TCP ")
                && row.route != "POST /topics/{name}/records"
                && expected.starts_with('2');
            let call = subject(&w, &shared, &row.route, persona, changes);
            let got = answer(&w, persona, call);
            checked += 1;
            if &got != expected {
                wrong.push(format!(
                    "{} as {persona}: expected {expected}, got {got}",
                    row.route
                ));
            }
        }
    }
    if !skipped.is_empty() {
        eprintln!("access table: skipped the personas {skipped:?} (no such credentials here)");
    }
    assert!(checked > 300, "only {checked} cells checked");
    assert!(
        wrong.is_empty(),
        "{} of {checked} cells differ from docs/api.md:\n{}\nstderr tail:\n{}",
        wrong.len(),
        wrong.join("\n"),
        w.svc.stderr_tail()
    );
}

#[test]
fn the_audit_trail_is_scoped_and_its_check_cached_per_log_head() {
    let svc = Service::start();
    let mine = unique_topic("scope-alice");
    let theirs = unique_topic("scope-bob");
    let id = svc.request_topic("alice", &mine, 1);
    svc.request_topic("bob", &theirs, 1);
    let topics_seen = |who: &str| -> BTreeSet<String> {
        let (status, page) = svc.get(who, "/api/v1/audit?limit=1000");
        assert_eq!(status, 200, "{page}");
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["topic"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(topics_seen("alice"), BTreeSet::from([mine.clone()]));
    assert_eq!(topics_seen("bob"), BTreeSet::from([theirs.clone()]));
    assert!(
        topics_seen("erin").is_empty(),
        "a consumer with no grant sees nothing"
    );
    assert_eq!(
        topics_seen("carol"),
        BTreeSet::from([mine.clone(), theirs.clone()])
    );
    // A grant opens the topic's trail to its holder; filters narrow within the scope only.
    svc.grant("erin", &mine, "consume");
    assert_eq!(topics_seen("erin"), BTreeSet::from([mine.clone()]));
    let (status, page) = svc.get("bob", &format!("/api/v1/audit?request_id={id}"));
    assert_eq!(
        (status, page["events"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    // The chain check: admin only, and computed once per log head.
    assert_error(
        &svc.get("alice", "/api/v1/audit/verify"),
        403,
        "forbidden",
        "a producer checks the chain",
    );
    let runs = || svc.metric("kafflow_audit_verify_runs_total");
    let (status, first) = svc.get("carol", "/api/v1/audit/verify");
    assert_eq!(
        (status, first["ok"].as_bool(), first["cached"].as_bool()),
        (200, Some(true), Some(false)),
        "{first}"
    );
    assert_eq!(runs(), 1.0);
    let (_, second) = svc.get("carol", "/api/v1/audit/verify");
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(
        (second["events"].clone(), second["head"].clone()),
        (first["events"].clone(), first["head"].clone())
    );
    assert_eq!(runs(), 1.0, "the second call re-hashed the log");
    // An append moves the head: the next call checks again, and counts the new event.
    svc.request_topic("alice", &unique_topic("scope-more"), 1);
    let (_, third) = svc.get("carol", "/api/v1/audit/verify");
    assert_eq!(third["cached"], false, "{third}");
    assert_eq!(
        third["events"].as_u64(),
        first["events"].as_u64().map(|n| n + 1)
    );
    assert_eq!(runs(), 2.0);
}
