//! Identity through the real binary: tokens issued and revoked as events (over HTTP and with
//! `kafflow token`), revocation that reaches an open feed and an open TCP connection at once,
//! JWT single sign-on with keys and a JWKS made here, and the per-address count of failed
//! sign-ins.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Runs `kafflow token ARGS` against `svc` with `token`; returns (success, stdout, stderr).
fn token_cli(svc: &Service, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["token", "--server", svc.base_url(), "--token", token];
    all.extend_from_slice(args);
    let (status, out, err) = run_kafflow(&all, WAIT);
    (status.is_some_and(|s| s.success()), out, err)
}

#[test]
fn issued_tokens_sign_in_and_revocation_ends_calls_feeds_and_connections_at_once() {
    // Beside the config's principals and issued tokens, JWTs from a JWKS file.
    let idp = TestIdp::new();
    let svc = Service::start_with_config(|text| text + &idp.config);
    let jwt = idp.token("jo", &["consumer"], 600);
    assert_eq!(
        svc.send_as(&jwt, "GET", "/api/v1/me/subscriptions", None).0,
        200
    );
    let expired = idp.token("jo", &["consumer"], -3600);
    let reply = svc.send_as(&expired, "GET", "/api/v1/me/subscriptions", None);
    assert_error(&reply, 401, "token_expired", "an expired JWT");
    let admin = svc.token("carol").to_string();

    // Issue with the CLI: the secret alone on the last line.
    let (ok, out, err) = token_cli(
        &svc,
        &admin,
        &[
            "create",
            "--name",
            "loader",
            "--role",
            "producer",
            "--role",
            "consumer",
            "--expires-in-days",
            "30",
        ],
    );
    assert!(ok, "token create failed: {err}");
    let secret = out.lines().last().expect("a last line").to_string();
    assert!(secret.starts_with("kft_") && !secret.contains(' '), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .to_string();

    // A non-admin cannot: one readable line, non-zero exit.
    let (ok, _, err) = token_cli(
        &svc,
        svc.token("bob"),
        &["create", "--name", "x", "--role", "admin"],
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("403 forbidden"), "{err}");

    // The list shows it, without its secret or hash.
    let list = Value::Array(svc.list_all("carol", "/api/v1/tokens", "tokens"));
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone();
    assert_eq!(entry["name"], "loader");
    assert_eq!(entry["roles"], json!(["producer", "consumer"]));
    assert_eq!(entry["status"], "active");
    assert_eq!(entry["issued_by"], "carol");
    assert!(entry["expires_at"].is_string());
    assert!(!list.to_string().contains(&secret[4..]));
    assert!(entry.get("token").is_none() && entry.get("sha256").is_none());
    let (_, out, _) = token_cli(&svc, &admin, &["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("loader") && l.contains("active")),
        "{out}"
    );
    // The event log has the hash, never the secret.
    let issued = svc.audit("kind=token_issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["data"]["sha256"], sha256_hex(&secret));
    assert!(!serde_json::to_string(&issued)
        .expect("json")
        .contains(&secret));

    // Refusals of the issue route.
    let (status, body) = svc.post(
        "bob",
        "/api/v1/tokens",
        &json!({"name": "y", "roles": ["producer"]}),
    );
    assert_error(
        &(status, body),
        403,
        "forbidden",
        "a producer issues a token",
    );
    let reply = svc.post(
        "carol",
        "/api/v1/tokens",
        &json!({"name": "alice", "roles": ["admin"]}),
    );
    assert_error(&reply, 409, "name_taken", "a config principal's name");
    let reply = svc.post(
        "carol",
        "/api/v1/tokens",
        &json!({"name": "z", "roles": []}),
    );
    assert_error(&reply, 400, "invalid_token_request", "no roles");
    let reply = svc.post(
        "carol",
        "/api/v1/tokens",
        &json!({"name": "z", "roles": ["producer"], "expires_in_days": 0}),
    );
    assert_error(&reply, 400, "invalid_token_request", "zero days");

    // The token signs in everywhere.
    let (status, _) = svc.send_as(&secret, "GET", "/api/v1/topics", None);
    assert_eq!(status, 200);
    let mut feed = svc.feed(&secret, "");
    assert_eq!(feed.next(WAIT)["type"], "subscriptions");
    let mut ingest = IngestClient::connect(svc.ingest_addr());
    ingest.send_line(&format!("AUTH {secret}"));
    assert_eq!(ingest.read_line(WAIT).as_deref(), Some("OK 0"));

    // Revoke with the CLI.
    let (ok, out, err) = token_cli(&svc, &admin, &["revoke", &id]);
    assert!(ok, "revoke failed: {err}");
    assert_eq!(out.trim(), format!("revoked {id}"));

    // The next HTTP call is refused, with the code that says why.
    let reply = svc.send_as(&secret, "GET", "/api/v1/topics", None);
    assert_error(&reply, 401, "token_revoked", "a revoked token over HTTP");
    // The open feed is closed with 1008 and a reason.
    match feed.read(WAIT) {
        FeedRead::Closed(code, reason) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.starts_with("token_revoked"), "{reason}");
        }
        other => panic!("expected the feed to close, got {other:?}"),
    }
    // The open TCP connection gets its ERR line and is closed.
    let line = ingest
        .read_line(WAIT)
        .expect("an ERR line before the close");
    assert!(line.starts_with("ERR 0 token_revoked"), "{line}");
    assert_eq!(ingest.read_line(WAIT), None, "the connection is closed");
    // A new connection with it is refused on AUTH.
    let mut again = IngestClient::connect(svc.ingest_addr());
    again.send_line(&format!("AUTH {secret}"));
    let line = again.read_line(WAIT).expect("a reply");
    assert!(line.starts_with("ERR 1 token_revoked"), "{line}");
    let refused = svc.try_feed(&[("authorization", &format!("Bearer {secret}"))], "");
    assert!(
        matches!(&refused, Err((401, body)) if error_code(body) == "token_revoked"),
        "{:?}",
        refused.err()
    );

    // Other tokens are untouched.
    let list = Value::Array(svc.list_all("carol", "/api/v1/tokens", "tokens"));
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["id"] == id.as_str()))
        .expect("still listed")
        .clone();
    assert_eq!(entry["status"], "revoked");
    assert_eq!(entry["revoked_by"], "carol");
    let again = svc.send(
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        Some(&admin),
        None,
    );
    assert_error(&again, 409, "already_revoked", "a second revocation");
    let unknown = svc.send(
        "DELETE",
        "/api/v1/tokens/0190aa4e-7f2a-7b5e-9f00-000000000000",
        Some(&admin),
        None,
    );
    assert_error(&unknown, 404, "not_found", "an unknown token");
    assert_eq!(svc.audit("kind=token_revoked").len(), 1);
}

/// The identity provider of a test: an RSA and an EC key pair, and a JWKS served over HTTP
/// whose keys can be changed while the service runs.
struct Idp {
    rsa_pem: Vec<u8>,
    ec_pem: Vec<u8>,
    other_rsa_pem: Vec<u8>,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

fn rsa_key() -> (Vec<u8>, Value) {
    let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa key");
    let pem = rsa.private_key_to_pem().expect("pem");
    let jwk = json!({"kty": "RSA", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    (pem, jwk)
}

fn ec_key() -> (Vec<u8>, Value) {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("P-256");
    let key = EcKey::generate(&group).expect("ec key");
    let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
    let mut ctx = BigNumContext::new().expect("ctx");
    key.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .expect("coordinates");
    let pem = openssl::pkey::PKey::from_ec_key(key)
        .expect("pkey")
        .private_key_to_pem_pkcs8()
        .expect("pkcs8");
    let jwk = json!({
        "kty": "EC", "crv": "P-256",
        "x": b64(&x.to_vec_padded(32).expect("x")),
        "y": b64(&y.to_vec_padded(32).expect("y")),
    });
    (pem, jwk)
}

fn with_kid(mut jwk: Value, kid: &str) -> Value {
    jwk["kid"] = json!(kid);
    jwk
}

impl Idp {
    fn start() -> Idp {
        let (rsa_pem, rsa_jwk) = rsa_key();
        let (ec_pem, ec_jwk) = ec_key();
        let (other_rsa_pem, _) = rsa_key();
        let jwks = Arc::new(Mutex::new(json!({"keys": [
            with_kid(rsa_jwk, "r1"),
            with_kid(ec_jwk, "e1"),
        ]})));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind jwks");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let (served, count) = (jwks.clone(), fetches.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().expect("jwks").to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Idp {
            rsa_pem,
            ec_pem,
            other_rsa_pem,
            jwks,
            fetches,
            url,
        }
    }

    fn config(&self) -> String {
        format!(
            "\n[auth.jwt]\njwks_url = \"{}\"\nissuer = \"https://idp.test/realms/kafka\"\naudience = \"kafflow\"\nname_claim = \"preferred_username\"\nroles_claim = \"realm_access.roles\"\n[auth.jwt.role_map]\n\"kafka-producers\" = \"producer\"\n",
            self.url
        )
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(name: &str, roles: &[&str]) -> Value {
    json!({
        "iss": "https://idp.test/realms/kafka",
        "aud": ["account", "kafflow"],
        "preferred_username": name,
        "realm_access": {"roles": roles},
        "iat": now(),
        "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, kid: &str, pem: &[u8], claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .expect("encoding key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

#[test]
fn jwts_sign_in_on_http_the_feed_and_tcp_and_each_refusal_has_its_code() {
    let idp = Idp::start();
    let svc = Service::start_with_config(|text| text + &idp.config());
    let topics = "/api/v1/topics";

    let rs = sign(
        Algorithm::RS256,
        "r1",
        &idp.rsa_pem,
        &claims("ann", &["consumer"]),
    );
    assert_eq!(svc.send_as(&rs, "GET", topics, None).0, 200);
    let es = sign(
        Algorithm::ES256,
        "e1",
        &idp.ec_pem,
        &claims("eve", &["kafka-producers"]),
    );
    assert_eq!(svc.send_as(&es, "GET", topics, None).0, 200);
    // Roles come from the claim, through the role map: ann is a consumer, eve a producer.
    let (status, mine) = svc.send_as(&rs, "GET", "/api/v1/me/subscriptions", None);
    assert_eq!((status, mine), (200, json!({"topics": [], "next": null})));
    let reply = svc.send_as(&es, "GET", "/api/v1/me/subscriptions", None);
    assert_error(
        &reply,
        403,
        "forbidden",
        "a producer's JWT on a consumer route",
    );
    let reply = svc.send_as(&rs, "GET", "/api/v1/tokens", None);
    assert_error(
        &reply,
        403,
        "forbidden",
        "a consumer's JWT on an admin route",
    );
    let admin = sign(
        Algorithm::RS256,
        "r1",
        &idp.rsa_pem,
        &claims("ida", &["admin"]),
    );
    assert_eq!(svc.send_as(&admin, "GET", "/api/v1/tokens", None).0, 200);

    // The websocket takes a JWT, as a header or as the browser's subprotocol.
    let mut feed = svc.feed(&rs, "");
    assert_eq!(feed.next(WAIT)["type"], "subscriptions");
    feed.close();
    let protocol = format!("bearer.{rs}");
    let mut feed = svc
        .try_feed(&[("sec-websocket-protocol", &protocol)], "")
        .unwrap_or_else(|(s, b)| panic!("feed refused: {s} {b}"));
    assert_eq!(feed.next(WAIT)["type"], "subscriptions");
    feed.close();

    // TCP AUTH takes a JWT too.
    let mut ingest = IngestClient::connect(svc.ingest_addr());
    ingest.send_line(&format!("AUTH {es}"));
    assert_eq!(ingest.read_line(WAIT).as_deref(), Some("OK 0"));

    // Each refusal says why.
    let refused = |token: &str, code: &str, what: &str| {
        let reply = svc.send_as(token, "GET", topics, None);
        assert_error(&reply, 401, code, what);
    };
    let forged = sign(
        Algorithm::RS256,
        "r1",
        &idp.other_rsa_pem,
        &claims("ann", &["admin"]),
    );
    refused(&forged, "invalid_signature", "signed by another key");
    let mut wrong_iss = claims("ann", &["consumer"]);
    wrong_iss["iss"] = json!("https://evil.test");
    refused(
        &sign(Algorithm::RS256, "r1", &idp.rsa_pem, &wrong_iss),
        "invalid_issuer",
        "issuer",
    );
    let mut wrong_aud = claims("ann", &["consumer"]);
    wrong_aud["aud"] = json!("someone-else");
    refused(
        &sign(Algorithm::ES256, "e1", &idp.ec_pem, &wrong_aud),
        "invalid_audience",
        "audience",
    );
    let mut expired = claims("ann", &["consumer"]);
    expired["exp"] = json!(now() - 3600);
    let expired = sign(Algorithm::RS256, "r1", &idp.rsa_pem, &expired);
    refused(&expired, "token_expired", "expired");
    let mut early = claims("ann", &["consumer"]);
    early["nbf"] = json!(now() + 3600);
    refused(
        &sign(Algorithm::RS256, "r1", &idp.rsa_pem, &early),
        "token_not_yet_valid",
        "nbf",
    );
    let hmac = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("ann", &["admin"]),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("hs256");
    refused(&hmac, "invalid_token", "a shared-secret algorithm");
    let mut nameless = claims("ann", &["consumer"]);
    nameless
        .as_object_mut()
        .expect("object")
        .remove("preferred_username");
    refused(
        &sign(Algorithm::RS256, "r1", &idp.rsa_pem, &nameless),
        "invalid_token",
        "no name",
    );
    let reply = svc.send_as(
        &sign(
            Algorithm::RS256,
            "r1",
            &idp.rsa_pem,
            &claims("ann", &["offline_access"]),
        ),
        "GET",
        topics,
        None,
    );
    assert_error(&reply, 403, "forbidden", "a JWT without a KafFlow role");
    // The feed and TCP refuse with the same codes.
    let feed = svc.try_feed(&[("authorization", &format!("Bearer {expired}"))], "");
    assert!(
        matches!(&feed, Err((401, body)) if error_code(body) == "token_expired"),
        "{:?}",
        feed.err()
    );
    let mut ingest = IngestClient::connect(svc.ingest_addr());
    ingest.send_line(&format!("AUTH {forged}"));
    let line = ingest.read_line(WAIT).expect("a reply");
    assert!(line.starts_with("ERR 1 invalid_signature"), "{line}");

    // A new key at the IdP: the unknown kid makes KafFlow read the JWKS again.
    let (new_pem, new_jwk) = rsa_key();
    let fetched_before = idp.fetches.load(Ordering::SeqCst);
    idp.jwks.lock().expect("jwks")["keys"]
        .as_array_mut()
        .expect("keys")
        .push(with_kid(new_jwk, "r2"));
    let rotated = sign(
        Algorithm::RS256,
        "r2",
        &new_pem,
        &claims("ann", &["consumer"]),
    );
    assert_eq!(svc.send_as(&rotated, "GET", topics, None).0, 200);
    assert!(idp.fetches.load(Ordering::SeqCst) > fetched_before);
    // A kid the IdP does not have either is a bad signature, after (at most) one more read.
    let unknown = sign(
        Algorithm::RS256,
        "nope",
        &new_pem,
        &claims("ann", &["consumer"]),
    );
    refused(&unknown, "invalid_signature", "an unknown kid");
}

#[test]
fn failed_sign_ins_refuse_the_address_for_a_minute_over_http_and_tcp() {
    let svc = Service::start_with_config(|text| {
        text.replace(
            "max_failures_per_minute = 100000",
            "max_failures_per_minute = 5",
        )
    });
    let good = svc.token("carol").to_string();
    for i in 0..5 {
        let reply = svc.send_as(&format!("wrong-{i}"), "GET", "/api/v1/topics", None);
        assert_error(&reply, 401, "unauthorized", "a wrong token");
    }
    // The address is refused now, even with a good token: a correct guess gets nothing.
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/topics", svc.base_url()))
        .bearer_auth(&good)
        .send()
        .expect("send");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().expect("json");
    assert_eq!(error_code(&body), "too_many_requests");
    let mut ingest = IngestClient::connect(svc.ingest_addr());
    ingest.send_line(&format!("AUTH {good}"));
    let line = ingest.read_line(WAIT).expect("a reply");
    assert!(line.starts_with("ERR 1 too_many_requests"), "{line}");
    // Calls without a token are not sign-ins: they get their 401, and the probes answer.
    assert_error(
        &svc.get_anon("/api/v1/topics"),
        401,
        "unauthorized",
        "no token",
    );
    assert_eq!(svc.get_anon("/healthz").0, 200);
    assert!(svc.metric("kafflow_signin_failures_total") >= 5.0);
    assert!(svc.metric("kafflow_signin_refused_total") >= 2.0);
    // Never an event per attempt.
    let (status, _) = svc.get_anon("/readyz");
    assert!(status == 200 || status == 503);
    let (_, out, _) = audit_verify(svc.data_dir());
    assert!(out.starts_with("ok: 0 events"), "{out}");
}
