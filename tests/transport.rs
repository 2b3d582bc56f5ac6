//! Transport security through the real binary: TLS on the HTTP and TCP ingest listeners (with a
//! certificate made here, at run time), the command-line clients over TLS, the headers every
//! reply carries for browsers, CORS, and `[kafka.properties]` against the broker's SASL_SSL
//! listener (scripts/kafka.sh).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Certs {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "KafFlow test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Certs {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            dir,
        }
    }

    fn server_section(&self) -> String {
        format!(
            "\n[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    fn https(&self) -> reqwest::blocking::Client {
        let pem = std::fs::read(&self.ca).expect("read CA");
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("https client")
    }

    fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.ca).expect("read CA");
        let certs: Vec<_> = rustls_pemfile_certs(&pem);
        for cert in certs {
            roots.add(cert).expect("CA into the root store");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// A TLS connection to the ingest listener, as a line client.
    fn ingest(&self, addr: &str) -> TlsLines {
        let tcp = TcpStream::connect(addr).expect("connect to ingest");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(self.rustls_client(), name).expect("TLS client");
        TlsLines {
            stream: rustls::StreamOwned::new(conn, tcp),
            buffer: Vec::new(),
        }
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// The line protocol inside TLS.
struct TlsLines {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buffer: Vec<u8>,
}

impl TlsLines {
    fn send_line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write over TLS");
        self.stream.flush().expect("flush");
    }

    /// The next line, or None when the server closed the connection.
    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read over TLS: {e}"),
            }
        }
    }

    fn read_until_ok(&mut self, n: u64) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .read_line()
                .unwrap_or_else(|| panic!("closed before OK {n}: {lines:?}"));
            let done = ok_count(&line).is_some_and(|k| k >= n);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

fn get_json(
    client: &reqwest::blocking::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    let text = reply.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn post_json(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let reply = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = reply.status().as_u16();
    (status, reply.json().unwrap_or(Value::Null))
}

/// A topic requested by alice and approved by carol over HTTPS, once active.
fn provision_over(service: &Service, client: &reqwest::blocking::Client, topic: &str) {
    let base = service.base_url();
    let (status, request) = post_json(
        client,
        &format!("{base}/api/v1/topic-requests"),
        service.token("alice"),
        &json!({ "topic": topic, "partitions": 1 }),
    );
    assert_eq!(status, 201, "create request over HTTPS: {request}");
    let id = id_of(&request);
    let (status, body) = post_json(
        client,
        &format!("{base}/api/v1/topic-requests/{id}/approve"),
        service.token("carol"),
        &json!({}),
    );
    assert_eq!(status, 200, "approve over HTTPS: {body}");
    let active = wait_until(WAIT, || {
        let (_, topic, _) = get_json(
            client,
            &format!("{base}/api/v1/topics/{topic}"),
            Some(service.token("carol")),
        );
        topic["status"] == "active"
    });
    assert!(active, "{topic} became active");
}

fn wait_ready_over(client: &reqwest::blocking::Client, base: &str) {
    let ready = wait_until(WAIT, || {
        get_json(client, &format!("{base}/readyz"), None).0 == 200
    });
    assert!(ready, "{base}/readyz answered 200");
}

#[test]
fn tls_serves_the_api_the_probes_the_console_and_ingest() {
    let certs = Certs::new();
    let service = Service::start_with_config(|text| text + &certs.server_section());
    let base = service.base_url().to_string();
    assert!(base.starts_with("https://"), "the service says {base}");
    let client = certs.https();

    // Probes, metrics and the console over TLS.
    wait_ready_over(&client, &base);
    let (status, health, _) = get_json(&client, &format!("{base}/healthz"), None);
    assert_eq!((status, &health["status"]), (200, &json!("up")));
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(service.token("carol"))
        .send()
        .expect("metrics over TLS");
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .expect("metrics text")
        .contains("kafflow_tls_handshake_failures_total"));
    let (status, page, headers) = get_json(&client, &format!("{base}/"), None);
    assert_eq!(status, 200);
    assert!(page.as_str().is_some_and(|p| p.contains("<title>KafFlow")));
    assert_eq!(headers["x-frame-options"], "DENY");
    let (status, topics, _) = get_json(
        &client,
        &format!("{base}/api/v1/topics"),
        Some(service.token("carol")),
    );
    assert_eq!(status, 200, "{topics}");

    // The same port does not speak plain HTTP.
    let plain = base.replace("https://", "http://");
    let refused = reqwest::blocking::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(10))
        .send();
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status() != 200),
        "plain HTTP on the TLS port: {refused:?}"
    );

    // A client that does not trust the certificate fails its handshake; one that stalls in
    // the middle of it holds the port; neither stops a good client.
    let stalled = TcpStream::connect(base.trim_start_matches("https://")).expect("connect");
    let untrusting = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let refused = untrusting.get(format!("{base}/healthz")).send();
    assert!(refused.is_err(), "a client without the CA: {refused:?}");
    let (status, _, _) = get_json(&client, &format!("{base}/healthz"), None);
    assert_eq!(
        status, 200,
        "a good client while another stalls its handshake"
    );
    let failures = wait_until(WAIT, || {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        metric_value(&text, "kafflow_tls_handshake_failures_total") >= 1.0
    });
    assert!(failures, "failed handshakes are counted");
    drop(stalled);

    // TCP ingest inside TLS, into Kafka.
    let topic = unique_topic("tls-ingest");
    provision_over(&service, &client, &topic);
    let mut ingest = certs.ingest(service.ingest_addr());
    ingest.send_line(&format!("AUTH {}", service.token("alice")));
    assert_eq!(ingest.read_line().as_deref(), Some("OK 0"));
    for n in 0..3 {
        ingest.send_line(&json!({ "topic": topic, "value": format!("over-tls-{n}") }).to_string());
    }
    let lines = ingest.read_until_ok(3);
    assert!(lines.iter().all(|l| l.starts_with("OK")), "{lines:?}");
    let values: Vec<String> = kafka_read_until(&topic, WAIT, |r| r.len() >= 3)
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, ["over-tls-0", "over-tls-1", "over-tls-2"]);

    // The ingest port does not take the protocol in the clear.
    let mut clear = TcpStream::connect(service.ingest_addr()).expect("connect");
    clear
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = clear.write_all(format!("AUTH {}\n", service.token("alice")).as_bytes());
    let mut reply = String::new();
    let _ = BufReader::new(&clear).read_line(&mut reply);
    assert!(
        !reply.starts_with("OK"),
        "plain AUTH on the TLS port: {reply:?}"
    );

    // No CORS headers: no origin is configured.
    let reply = client
        .get(format!("{base}/api/v1/topics"))
        .bearer_auth(service.token("carol"))
        .header("origin", "https://console.example")
        .send()
        .expect("GET with an Origin");
    assert!(reply
        .headers()
        .keys()
        .all(|name| !name.as_str().starts_with("access-control-")));
}

/// The value of an unlabelled metric in Prometheus text, 0 when absent.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_command_line_clients_speak_tls_with_a_ca_file() {
    let certs = Certs::new();
    let service = Service::start_with_config(|text| text + &certs.server_section());
    let client = certs.https();
    let base = service.base_url().to_string();
    wait_ready_over(&client, &base);
    let topic = unique_topic("tls-cli");
    provision_over(&service, &client, &topic);
    let ca = certs.ca.display().to_string();
    let ingest = format!("tls://{}", service.ingest_addr());

    // produce: tls:// with the CA, and an https:// API for the held count.
    let (status, _out, err) = run_kafflow_with_stdin(
        &[
            "produce",
            "--ingest",
            &ingest,
            "--server",
            &base,
            "--ca-cert",
            &ca,
            "--topic",
            &topic,
            "--token",
            service.token("alice"),
        ],
        b"one\ntwo\nthree\n".to_vec(),
        WAIT,
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "produce over TLS: {err}"
    );
    assert!(err.contains("3 acknowledged"), "{err}");
    assert!(err.contains("0 held"), "the held count over HTTPS: {err}");

    // Without the CA the certificate is not trusted, and the client says so.
    let (status, _, err) = run_kafflow_with_stdin(
        &[
            "produce",
            "--ingest",
            &ingest,
            "--topic",
            &topic,
            "--token",
            service.token("alice"),
        ],
        b"four\n".to_vec(),
        WAIT,
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "produce without the CA"
    );
    assert!(err.contains("TLS"), "{err}");

    // consume: https:// (and the feed as wss://) with the CA.
    let mut consume = Command::new(env!("CARGO_BIN_EXE_kafflow"))
        .args([
            "consume",
            "--server",
            &base,
            "--ca-cert",
            &ca,
            "--topic",
            &topic,
            "--from",
            "earliest",
            "--token",
            service.token("erin"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    let stdout = consume.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut values = Vec::new();
    while values.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let frame: Value = serde_json::from_str(&line).expect("NDJSON");
                values.push(frame["value"].as_str().unwrap_or_default().to_string());
            }
            Err(_) => {
                let _ = consume.kill();
                let mut err = String::new();
                if let Some(mut e) = consume.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("consume over TLS printed {values:?}; stderr: {err}");
            }
        }
    }
    let _ = consume.kill();
    let _ = consume.wait();
    values.sort();
    assert_eq!(values, ["one", "three", "two"]);
}

#[test]
fn shutdown_over_tls_answers_what_was_accepted_and_exits_cleanly() {
    let certs = Certs::new();
    let mut service = Service::start_with_config(|text| text + &certs.server_section());
    let client = certs.https();
    wait_ready_over(&client, service.base_url());
    let topic = unique_topic("tls-shutdown");
    provision_over(&service, &client, &topic);
    let mut ingest = certs.ingest(service.ingest_addr());
    ingest.send_line(&format!("AUTH {}", service.token("alice")));
    assert_eq!(ingest.read_line().as_deref(), Some("OK 0"));
    ingest.send_line(&json!({ "topic": topic, "value": "before-stop" }).to_string());
    ingest.read_until_ok(1);

    let status = service.terminate(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM with a TLS connection open: {status:?}\n{}",
        service.stderr_tail()
    );
    // The open connection was closed by the server, not left hanging.
    let mut rest = Vec::new();
    while let Some(line) = ingest.read_line() {
        rest.push(line);
    }
    assert!(rest.iter().all(|l| l.starts_with("OK")), "{rest:?}");
}

#[test]
fn tls_needs_both_files_and_usable_pem() {
    let certs = Certs::new();
    let dir = certs.dir.path();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "this is no certificate\n").expect("write junk");
    let config = write_config(dir, |text| text);
    let config = config.display().to_string();
    let data = dir.join("data").display().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--ingest-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--bootstrap-servers",
            UNREACHABLE_BROKER,
        ];
        args.extend_from_slice(extra);
        run_kafflow(&args, WAIT)
    };
    let path = |p: &Path| p.display().to_string();
    let (cert, key, junk) = (path(&certs.cert), path(&certs.key), path(&junk));
    for (extra, says) in [
        (vec!["--tls-cert", cert.as_str()], "--tls-key"),
        (
            vec!["--tls-cert", junk.as_str(), "--tls-key", key.as_str()],
            "holds no certificate",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", junk.as_str()],
            "holds no private key",
        ),
        (
            vec!["--tls-cert", key.as_str(), "--tls-key", key.as_str()],
            "holds no certificate",
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                key.as_str(),
            ],
            "cannot read TLS certificate /nonexistent/cert.pem",
        ),
    ] {
        let (status, _, err) = serve(&extra);
        assert!(
            status.is_some_and(|s| !s.success()),
            "serve {extra:?} must refuse to start: {err}"
        );
        assert!(err.contains(says), "serve {extra:?} says {says:?}: {err}");
    }
    // Half of the pair in the config file is refused the same way.
    let half = write_config(dir, |text| {
        text + &format!("\n[server]\ntls_cert = {:?}\n", cert)
    });
    let (status, _, err) = run_kafflow(
        &[
            "serve",
            "--config",
            &half.display().to_string(),
            "--data-dir",
            &data,
        ],
        WAIT,
    );
    assert!(status.is_some_and(|s| !s.success()));
    assert!(err.contains("needs its key"), "{err}");
}

/// The headers every reply carries, whatever its route or status.
fn assert_browser_headers(what: &str, headers: &reqwest::header::HeaderMap) {
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("style-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
}

#[test]
fn every_reply_carries_the_browser_headers_and_cors_is_for_listed_origins_only() {
    let listed = "https://console.example:8443";
    let service = Service::start_with_config(|text| {
        text + &format!("\n[server]\ncors_origins = [{listed:?}]\n")
    });
    let http = reqwest::blocking::Client::new();
    let base = service.base_url();
    let carol = service.token("carol");
    for (what, path, token) in [
        ("the console", "/", None),
        ("its script", "/app.js", None),
        ("its style", "/app.css", None),
        ("an API read", "/api/v1/topics", Some(carol)),
        ("a 401", "/api/v1/topics", None),
        ("a 404", "/no/such/route", None),
        ("a probe", "/healthz", None),
    ] {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = request.send().expect(what);
        assert_browser_headers(what, reply.headers());
    }

    // The page runs no inline script or style: the policy would block it.
    let page = http
        .get(format!("{base}/"))
        .send()
        .expect("page")
        .text()
        .expect("html");
    let lower = page.to_ascii_lowercase();
    assert!(!lower.contains("<script>"), "inline script in the page");
    assert!(!lower.contains("<style"), "inline style in the page");
    assert!(!lower.contains(" style="), "a style attribute in the page");
    assert!(
        !regex_like_handler(&lower),
        "an inline event handler in the page"
    );
    assert!(lower.contains("<script src=\"/app.js\"></script>"));

    // A listed origin: its preflight is answered, and its replies are marked readable.
    let preflight = |origin: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{base}/api/v1/topic-requests"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .expect("preflight")
    };
    let reply = preflight(listed);
    assert_eq!(reply.status(), 204);
    assert_eq!(reply.headers()["access-control-allow-origin"], listed);
    let methods = reply.headers()["access-control-allow-methods"]
        .to_str()
        .expect("methods");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = reply.headers()["access-control-allow-headers"]
        .to_str()
        .expect("headers");
    assert!(allowed.contains("authorization"), "{allowed}");
    let read = http
        .get(format!("{base}/api/v1/topics"))
        .bearer_auth(carol)
        .header("origin", listed)
        .send()
        .expect("GET from the listed origin");
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["access-control-allow-origin"], listed);

    // Any other origin gets no CORS header at all, on the preflight or on the call.
    let other = "https://evil.example";
    let no_cors = |headers: &reqwest::header::HeaderMap| {
        headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-"))
    };
    let reply = preflight(other);
    assert_ne!(reply.status(), 204);
    assert!(no_cors(reply.headers()), "{:?}", reply.headers());
    let read = http
        .get(format!("{base}/api/v1/topics"))
        .bearer_auth(carol)
        .header("origin", other)
        .send()
        .expect("GET from another origin");
    assert!(no_cors(read.headers()), "{:?}", read.headers());
}

/// `on<letters>=` inside a tag: an inline event handler.
fn regex_like_handler(html: &str) -> bool {
    html.split('<').skip(1).any(|tag| {
        let tag = tag.split('>').next().unwrap_or_default();
        tag.split_whitespace().skip(1).any(|attr| {
            attr.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic())
                })
        })
    })
}

/// The SASL_SSL listener's client settings, as `scripts/kafka.sh sasl` prints them.
fn sasl_settings() -> Vec<(String, String)> {
    let out = Command::new("bash")
        .args(["scripts/kafka.sh", "sasl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka.sh sasl");
    assert!(
        out.status.success(),
        "scripts/kafka.sh sasl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sasl_config(settings: &[(String, String)], password: &str) -> String {
    let mut text = String::from("\n[kafka.properties]\n");
    for (key, value) in settings.iter().filter(|(k, _)| k != "bootstrap") {
        let value = if key == "sasl.password" {
            password
        } else {
            value
        };
        text.push_str(&format!("{key:?} = {value:?}\n"));
    }
    text
}

#[test]
fn kafka_properties_reach_the_brokers_sasl_ssl_listener() {
    let settings = sasl_settings();
    let setting = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("scripts/kafka.sh sasl names {key}"))
    };
    let bootstrap = setting("bootstrap");
    assert!(
        TcpStream::connect(&bootstrap).is_ok(),
        "the broker has no SASL_SSL listener on {bootstrap}: it was started by an older \
         scripts/kafka.sh. Restart it with `make kafka-down kafka-up` (its data is kept)."
    );
    let ca = setting("ssl.ca.location");
    assert!(Path::new(&ca).is_file(), "the listener's CA {ca} exists");

    // The right password: a topic is provisioned and records flow through the listener.
    let service = Service::start_at(&bootstrap, |text| {
        text + &sasl_config(&settings, &setting("sasl.password"))
    });
    service.wait_ready(WAIT);
    let topic = unique_topic("sasl");
    service.provision(&topic, 1);
    let (status, body) = service.produce(
        "alice",
        &topic,
        "",
        &json!([{ "value": "through-sasl-1" }, { "value": "through-sasl-2" }]),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["published"], 2, "sent straight to Kafka: {body}");
    // Read back through the plaintext listener of the same broker.
    let values: Vec<String> = kafka_read_until(&topic, WAIT, |r| r.len() >= 2)
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, ["through-sasl-1", "through-sasl-2"]);

    // A wrong password is reported by /readyz with the broker's reason; calls still answer.
    let refused = Service::start_at(&bootstrap, |text| {
        text + &sasl_config(&settings, "not-the-password")
    });
    let mut last = Value::Null;
    let reported = wait_until(WAIT, || {
        let (status, body) = refused.get_anon("/readyz");
        last = body.clone();
        let error = body["broker_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        status == 503 && error.contains("authentication")
    });
    assert!(
        reported,
        "readyz reports the refused login: {last}\n{}",
        refused.stderr_tail()
    );
    assert_eq!(last["broker_reachable"], false, "{last}");
    assert_eq!(last["reasons"], json!(["broker_unreachable"]), "{last}");
    let (status, _) = refused.get("carol", "/api/v1/topics");
    assert_eq!(
        status, 200,
        "the API answers while the broker refuses the login"
    );
}

#[test]
fn the_gateway_speaks_sasl_ssl_when_tls_is_configured() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let certs = Certs::new();
    let service = Service::start_gateway_at(&bootstrap(), |text| text + &certs.server_section());
    let sasl = |protocol: &str| {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", service.gateway_addr())
            .set("security.protocol", protocol)
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", "alice")
            .set("sasl.password", service.token("alice"))
            .set("ssl.ca.location", certs.ca.display().to_string());
        config
    };
    let tls: BaseConsumer = sasl("SASL_SSL").create().expect("SASL_SSL client");
    let metadata = tls
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata over SASL_SSL");
    assert!(!metadata.brokers().is_empty());
    for broker in metadata.brokers() {
        assert_eq!(broker.host(), "127.0.0.1");
        // The broker's own port is TLS-wrapped by the gateway too: another connection works.
        let port = broker.port();
        assert_ne!(
            port.to_string(),
            bootstrap().rsplit(':').next().unwrap_or_default()
        );
    }
    let plain: BaseConsumer = sasl("SASL_PLAINTEXT").create().expect("plain client");
    assert!(
        plain.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "the TLS gateway refuses a client that does not speak TLS"
    );
}
