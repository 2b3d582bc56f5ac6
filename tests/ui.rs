//! The web console end to end: the real binary, the real broker and Debian's headless Chromium,
//! driven over the DevTools protocol (a plain websocket). Each step acts through the page the
//! way a person would (fill a field, press a button) and waits for what the page shows.
//!
//! Skipped, with a message, when `/usr/bin/chromium` is missing (`make ui-deps` installs it).
//! Screenshots go to `target/ui-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{id_of, unique_topic, Service};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page may take to show what a step expects.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A topic turns active after the provisioner reaches Kafka; leave it room on a busy broker.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium of our own, killed (by its handle) when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Page,
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("kafflow-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");

        // Chromium prints the browser's DevTools address on stderr; keep draining it afterwards.
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::new();
        let browser_url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match line.split_once("DevTools listening on ") {
                    Some((_, url)) => break url.trim().to_string(),
                    None => seen.push(line),
                },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("chromium printed no DevTools address ({e}); stderr: {seen:#?}");
                }
            }
        };
        thread::spawn(move || for _ in rx {});

        // ws://127.0.0.1:PORT/devtools/browser/ID: make a tab there and talk to it directly.
        let host = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("devtools host")
            .to_string();
        let mut browser = Page::connect(&browser_url);
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let page = Page::connect(&format!("ws://{host}/devtools/page/{target_id}"));
        Browser {
            child,
            _profile: profile,
            page,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One DevTools connection: commands out, replies matched by id, events ignored.
struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    fn connect(url: &str) -> Page {
        let (socket, _) = tungstenite::connect(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        Page { socket, next_id: 0 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let frame = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("devtools json");
            if reply["id"] != json!(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its JSON value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(details) = result.get("exceptionDetails") {
            panic!("page script failed: {expression}\n{details}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `condition` (a JS expression) until it is truthy; panics with `what` and the
    /// page's message boxes if it never is.
    fn wait_for(&mut self, what: &str, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(&format!("!!({condition})"));
            if value == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let shown = self.eval(
                    "JSON.stringify({error: document.getElementById('error').textContent, \
                     notice: document.getElementById('notice').textContent})",
                );
                panic!("{what}: not seen within {timeout:?}; page shows {shown}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            "page loaded",
            "document.readyState === 'complete' && document.getElementById('sign-in')",
            STEP_TIMEOUT,
        );
    }

    fn fill(&mut self, selector: &str, value: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({sel}); e.value = {val}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            sel = json!(selector),
            val = json!(value)
        );
        assert_eq!(self.eval(&script), json!(true), "fill {selector}");
    }

    fn click(&mut self, selector: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
             e.click(); return true; }})()",
            sel = json!(selector)
        );
        assert_eq!(
            self.eval(&script),
            json!(true),
            "no element {selector} to click"
        );
    }

    fn text(&mut self, selector: &str) -> String {
        let script = format!(
            "(document.querySelector({sel}) || {{}}).textContent || ''",
            sel = json!(selector)
        );
        self.eval(&script).as_str().unwrap_or_default().to_string()
    }

    /// Clears the message boxes so the next wait sees only what the next action shows.
    fn clear_messages(&mut self) {
        self.eval(
            "['error','notice'].forEach(id => { const e = document.getElementById(id); \
             e.hidden = true; e.textContent = ''; })",
        );
    }

    fn wait_notice(&mut self, what: &str, contains: &str) {
        let condition = format!(
            "!document.getElementById('notice').hidden && \
             document.getElementById('notice').textContent.includes({})",
            json!(contains)
        );
        self.wait_for(what, &condition, STEP_TIMEOUT);
    }

    fn wait_error(&mut self, what: &str, contains: &str) {
        let condition = format!(
            "!document.getElementById('error').hidden && \
             document.getElementById('error').textContent.includes({})",
            json!(contains)
        );
        self.wait_for(what, &condition, STEP_TIMEOUT);
    }

    fn sign_in(&mut self, token: &str) {
        if self.eval("!document.getElementById('app').hidden") == json!(true) {
            self.click("#sign-out");
        }
        self.fill("#token", token);
        self.click("#sign-in-form button[type=submit]");
        self.wait_for(
            "signed in",
            "!document.getElementById('app').hidden",
            STEP_TIMEOUT,
        );
    }

    fn tab(&mut self, name: &str) {
        self.click(&format!("#tabs button[data-tab='{name}']"));
    }

    fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    fn screenshot(&mut self, dir: &Path, name: &str) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Requests `topic` from the Produce tab as whoever is signed in.
fn request_topic_in_page(page: &mut Page, topic: &str, reason: &str) {
    page.tab("produce");
    // The policy's limits (the test config allows 1 to 12 partitions) are on the form.
    page.wait_for(
        "policy limits",
        "document.querySelector('#policy').textContent.includes('partitions 1 to 12')",
        STEP_TIMEOUT,
    );
    page.clear_messages();
    page.fill("#request-form [name=topic]", topic);
    page.fill("#request-form [name=partitions]", "2");
    page.fill("#request-form [name=reason]", reason);
    page.click("#request-form button[type=submit]");
    page.wait_notice(&format!("request for {topic} accepted"), "Requested");
}

fn card(topic: &str) -> String {
    format!("#pending [data-topic='{topic}']")
}

#[test]
fn console_walkthrough() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} is missing; `make ui-deps` installs Debian's chromium");
        return;
    }
    let shots = screenshot_dir();
    let service = Service::start();
    let mut browser = Browser::launch();
    let page = &mut browser.page;
    let approved = unique_topic("ui-approved");
    let declined = unique_topic("ui-declined");
    let own = unique_topic("ui-own");

    for (path, content_type) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let response = reqwest::blocking::get(format!("{}{path}", service.base_url()))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "GET {path}");
        let served = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default();
        assert!(served.starts_with(content_type), "GET {path}: {served}");
    }

    page.open(&format!("{}/", service.base_url()));
    page.screenshot(&shots, "01-sign-in");

    // A bad token is refused with words, not silence.
    page.fill("#token", "not-a-token");
    page.click("#sign-in-form button[type=submit]");
    page.wait_error("bad token refused", "not accepted");

    // alice asks for two topics and sends a record that is held while the first is pending.
    page.sign_in(service.token("alice"));
    request_topic_in_page(page, &approved, "ui walkthrough");
    request_topic_in_page(page, &declined, "to be declined");
    page.fill("#records-form [name=topic]", &approved);
    page.fill("#records-form [name=key]", "k-held");
    page.fill("#records-form [name=value]", r#"{"held": true}"#);
    // The publisher hears of a new request a moment after it is filed; send until it holds.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        page.clear_messages();
        page.click("#records-form button[type=submit]");
        page.wait_for(
            "record reply",
            "!document.getElementById('notice').hidden || !document.getElementById('error').hidden",
            STEP_TIMEOUT,
        );
        if page.text("#notice").contains("1 held") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "record never held: {}",
            page.text("#error")
        );
        thread::sleep(Duration::from_millis(300));
    }
    page.fill("#held-form [name=topic]", &approved);
    page.click("#held-form button[type=submit]");
    page.wait_for(
        "held record listed",
        "document.querySelector('#held').textContent.includes('k-held')",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "02-produce");

    // carol approves the first request from the queue, which shows who asked and why.
    page.sign_in(service.token("carol"));
    assert!(
        page.text("#who") == "Signed in as carol · roles: admin",
        "{}",
        page.text("#who")
    );
    page.tab("requests");
    page.wait_for(
        "alice's request in the queue",
        &format!("document.querySelector(\"{}\")", card(&approved)),
        STEP_TIMEOUT,
    );
    assert!(page
        .text(&format!("{} .requester", card(&approved)))
        .contains("alice"));
    page.screenshot(&shots, "03-requests");
    // A screen shows only where the server has its routes: a 404 of the router hides it.
    for (tab, route) in [
        ("access", "/api/v1/access-requests"),
        ("tokens", "/api/v1/tokens"),
    ] {
        let (status, _) = service.get("carol", route);
        let hidden = page.eval(&format!(
            "document.querySelector(\"#tabs button[data-tab='{tab}']\").hidden"
        ));
        assert_eq!(
            hidden,
            json!(status == 404),
            "the {tab} tab when {route} answers {status}"
        );
    }
    page.fill(&format!("{} .note", card(&approved)), "fine by me");
    page.click(&format!("{} button.approve", card(&approved)));
    page.wait_notice("approval confirmed", "approved");

    // The topic turns active on the Topics tab by itself: the marker proves no reload happened.
    page.eval("window.__noReload = true");
    page.tab("topics");
    page.wait_for(
        "topic listed",
        &format!("document.querySelector(\"#topics tr[data-topic='{approved}']\")"),
        STEP_TIMEOUT,
    );
    page.wait_for(
        "topic turned active without reload",
        &format!(
            "window.__noReload && \
             document.querySelector(\"#topics tr[data-topic='{approved}'][data-status='active']\")"
        ),
        ACTIVE_TIMEOUT,
    );
    page.screenshot(&shots, "04-topics");

    // A rejection without a reason is refused with a readable message; with one it goes through.
    page.tab("requests");
    page.wait_for(
        "second request in the queue",
        &format!("document.querySelector(\"{}\")", card(&declined)),
        STEP_TIMEOUT,
    );
    page.clear_messages();
    page.click(&format!("{} button.reject", card(&declined)));
    page.wait_error("reject without reason refused", "A reason is required");
    assert_eq!(
        service
            .get("carol", "/api/v1/topic-requests?status=rejected")
            .1,
        json!({"requests": [], "next": null}),
        "nothing was rejected without a reason"
    );
    page.fill(&format!("{} .reason", card(&declined)), "not needed");
    page.click(&format!("{} button.reject", card(&declined)));
    page.wait_notice("rejection confirmed", "rejected");
    page.wait_for(
        "rejected request among the decided",
        "document.querySelector(\"#decided tr[data-status='rejected']\")",
        STEP_TIMEOUT,
    );

    // carol is not offered a decision on her own request: only its withdrawal, and why.
    request_topic_in_page(page, &own, "mine");
    page.tab("requests");
    page.wait_for(
        "own request in the queue",
        &format!("document.querySelector(\"{}\")", card(&own)),
        STEP_TIMEOUT,
    );
    for button in ["approve", "reject"] {
        assert_eq!(
            page.eval(&format!(
                "!!document.querySelector(\"{} button.{button}\")",
                card(&own)
            )),
            json!(false),
            "no {button} button on one's own request"
        );
    }
    assert!(page
        .text(&format!("{} .hint", card(&own)))
        .contains("another admin decides it"));
    assert_eq!(
        page.eval(&format!(
            "!!document.querySelector(\"{} button.withdraw\")",
            card(&own)
        )),
        json!(true)
    );
    page.screenshot(&shots, "05-self-approval");

    page.tab("audit");
    page.wait_for(
        "audit events",
        "document.querySelector('#audit details.event')",
        STEP_TIMEOUT,
    );
    // The result of `kafflow audit verify` stands at the top of the trail.
    page.wait_for(
        "hash chain status",
        "document.querySelector('#chain').textContent.startsWith('Hash chain intact')",
        STEP_TIMEOUT,
    );
    page.eval("document.querySelector('#audit details.event').open = true");
    page.screenshot(&shots, "06-audit");

    page.tab("drift");
    page.wait_for(
        "drift report",
        "document.querySelector('#drift h3')",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "07-drift");

    // carol issues a token on the Tokens screen: shown once, it signs in; revoked from the
    // list, it no longer does.
    page.tab("tokens");
    page.fill("#token-form input[name=name]", "console-loader");
    page.click("#token-form input[name=role][value=producer]");
    page.click("#token-form button[type=submit]");
    page.wait_notice("token issued", "Issued a token for console-loader");
    let secret = page.text("#new-token-value");
    let (status, body) = service.send("GET", "/api/v1/topics", Some(&secret), None);
    assert_eq!(status, 200, "the token the console showed signs in: {body}");
    let tokens = Value::Array(service.list_all("carol", "/api/v1/tokens", "tokens"));
    let id = tokens
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == "console-loader"))
        .and_then(|t| t["id"].as_str())
        .expect("the issued token is listed")
        .to_string();
    page.click("#new-token-done");
    page.click(&format!("#tokens tr[data-token='{id}'] button.revoke"));
    page.wait_for(
        "token shown revoked",
        &format!(
            "document.querySelector(\"#tokens tr[data-token='{id}'][data-status='revoked']\")"
        ),
        STEP_TIMEOUT,
    );
    let (status, body) = service.send("GET", "/api/v1/topics", Some(&secret), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    page.screenshot(&shots, "07b-tokens");

    // erin subscribes with a checkbox and sees a produced record arrive over the websocket.
    page.sign_in(service.token("erin"));
    assert_eq!(
        page.eval("document.querySelector(\"#tabs button[data-tab='produce']\").hidden"),
        json!(true),
        "a consumer is not offered the Produce tab"
    );
    page.tab("consume");
    let checkbox = format!("#subscriptions input[data-topic='{approved}']");
    page.wait_for(
        "active topic offered",
        &format!("document.querySelector(\"{checkbox}\")"),
        STEP_TIMEOUT,
    );
    page.click(&checkbox);
    page.click("#save-subscriptions");
    page.wait_notice("subscription saved", &approved);
    page.wait_for(
        "feed live",
        "document.getElementById('feed-state').textContent === 'live'",
        STEP_TIMEOUT,
    );
    // The feed starts at `latest`, and the new topic's end is found a moment after the
    // subscription: send until the record is shown.
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let (status, reply) = service.produce(
            "alice",
            &approved,
            "",
            &json!([{"key": "k-live", "value": {"hello": "from the ui test"}}]),
        );
        assert_eq!(status, 202, "produce: {reply}");
        let shown = page
            .eval("document.querySelector('#messages').textContent.includes('from the ui test')");
        if shown == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "produced record never shown live"
        );
        thread::sleep(Duration::from_millis(1500));
    }
    // The record written to erin's feed is counted as delivered (the dashboard charts it).
    let deadline = Instant::now() + STEP_TIMEOUT;
    while service.metric("kafflow_delivered_records_total") < 1.0 {
        assert!(Instant::now() < deadline, "the delivery was not counted");
        thread::sleep(Duration::from_millis(100));
    }
    page.screenshot(&shots, "08-consume");

    // Phone width: nothing wider than the screen.
    page.viewport(375, 800, true);
    page.wait_for(
        "fits 375 px",
        "document.documentElement.scrollWidth <= 376",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "09-consume-375");
    page.tab("topics");
    page.wait_for(
        "topics at 375 px",
        &format!("document.querySelector(\"#topics tr[data-topic='{approved}']\")"),
        STEP_TIMEOUT,
    );
    page.wait_for(
        "topics fit 375 px",
        "document.documentElement.scrollWidth <= 376",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "10-topics-375");

    // Access: erin asks to read alice's restricted topic on the Access screen, alice approves
    // it on hers, and erin may then subscribe.
    page.viewport(1280, 800, false);
    let restricted = unique_topic("ui-restricted");
    let create = service.create_request(
        "alice",
        json!({"topic": restricted, "partitions": 1, "visibility": "restricted"}),
    );
    service.approve("carol", &id_of(&create));
    service.wait_topic_status(&restricted, "active", ACTIVE_TIMEOUT);
    let subscribe = format!("/api/v1/me/subscriptions/{restricted}");
    let (status, body) = service.post("erin", &subscribe, &json!({}));
    assert_eq!(status, 403, "no grant yet: {body}");
    page.sign_in(service.token("erin"));
    page.tab("access");
    page.fill("#access-form input[name=topic]", &restricted);
    page.fill("#access-form input[name=reason]", "dashboards");
    page.click("#access-form button[type=submit]");
    page.wait_notice("access asked", &restricted);
    page.sign_in(service.token("alice"));
    page.tab("access");
    let card = format!("#access-pending article[data-topic='{restricted}']");
    page.wait_for(
        "erin's request on the owner's screen",
        &format!("document.querySelector(\"{card}\")"),
        STEP_TIMEOUT,
    );
    page.click(&format!("{card} button.approve"));
    page.wait_notice("access approved", "approved");
    page.wait_for(
        "grant listed",
        &format!("document.querySelector(\"#grants tr[data-topic='{restricted}']\")"),
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "11-access");
    let (status, body) = service.post("erin", &subscribe, &json!({}));
    assert_eq!(status, 200, "granted: {body}");
}

/// The seqs of the audit rows on the page, top to bottom.
fn audit_seqs(page: &mut Page) -> Vec<u64> {
    let seqs = page.eval(
        "[...document.querySelectorAll('#audit details.event')].map(e => Number(e.dataset.seq))",
    );
    serde_json::from_value(seqs).expect("seqs")
}

fn exists(page: &mut Page, selector: &str) -> bool {
    page.eval(&format!("!!document.querySelector({})", json!(selector))) == json!(true)
}

/// Sends one record to `topic` as `who` until it is held: the publisher hears of a new request
/// a moment after it is filed.
fn hold_one(service: &Service, who: &str, topic: &str) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let (status, reply) = service.produce(who, topic, "", &json!([{"value": "to be held"}]));
        if status == 202 && reply["held"] == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "never held: {status} {reply}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn console_actions_audit_and_dashboard() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} is missing; `make ui-deps` installs Debian's chromium");
        return;
    }
    let shots = screenshot_dir();
    let service = Service::start();
    let mut browser = Browser::launch();
    let page = &mut browser.page;

    // The chart library is served from the binary, with its licence.
    for (path, content_type) in [
        ("/vendor/uplot/uPlot.iife.min.js", "text/javascript"),
        ("/vendor/uplot/uPlot.min.css", "text/css"),
        ("/vendor/uplot/LICENSE", "text/plain"),
    ] {
        let response = reqwest::blocking::get(format!("{}{path}", service.base_url()))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "GET {path}");
        let served = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(served.starts_with(content_type), "GET {path}: {served}");
    }

    // Downloads land beside the screenshots, so the export's file can be read back.
    let downloads = shots.join("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads dir");
    let audit_file = downloads.join("kafflow-audit.ndjson");
    let _ = std::fs::remove_file(&audit_file);
    page.call(
        "Page.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.display().to_string()}),
    );

    let retained = unique_topic("ui-retained");
    let withdrawn = unique_topic("ui-withdrawn");
    let declined = unique_topic("ui-declined");
    let first_send = unique_topic("ui-first-send");
    let bobs = unique_topic("ui-bobs");

    // Setup through the API: a topic of bob's, active; a request of alice's with a held
    // record, rejected with a reason (the record turns dead); one to withdraw.
    let bob_request = service.create_request("bob", json!({"topic": bobs, "partitions": 1}));
    service.approve("carol", &id_of(&bob_request));
    let declined_request =
        service.create_request("alice", json!({"topic": declined, "partitions": 1}));
    hold_one(&service, "alice", &declined);
    let (status, reply) = service.post(
        "carol",
        &format!("/api/v1/topic-requests/{}/reject", id_of(&declined_request)),
        &json!({"reason": "use the shared orders topic"}),
    );
    assert_eq!(status, 200, "{reply}");
    let withdraw_request =
        service.create_request("alice", json!({"topic": withdrawn, "partitions": 1}));

    page.open(&format!("{}/", service.base_url()));
    page.sign_in(service.token("alice"));

    // The dashboard is the first screen: nothing waits for alice's decision, one request of
    // hers waits for an admin's, and the rates chart is drawn.
    page.wait_for(
        "dashboard pending counts",
        "document.querySelector('#dash-pending .stat-value[data-count=\"0\"]') && \
         document.querySelector('#dash-mine .stat-value[data-count=\"1\"]')",
        STEP_TIMEOUT,
    );
    page.wait_for(
        "rates chart",
        "document.querySelector('#dash-rates canvas')",
        STEP_TIMEOUT,
    );

    // The request form takes a replication factor and configs; the request carries them.
    page.tab("produce");
    page.wait_for(
        "policy limits",
        "document.querySelector('#policy').textContent.includes('replication factor up to')",
        STEP_TIMEOUT,
    );
    page.clear_messages();
    page.fill("#request-form [name=topic]", &retained);
    page.fill("#request-form [name=partitions]", "1");
    page.fill("#request-form [name=replication_factor]", "1");
    page.fill("#request-form [name=retention_hours]", "2");
    page.fill("#request-form [name=cleanup_policy]", "compact");
    page.fill(
        "#request-form [name=config_more]",
        "max.message.bytes=65536",
    );
    page.click("#request-form button[type=submit]");
    page.wait_notice("request with configs filed", "Requested");
    let mine = service.list_all(
        "alice",
        "/api/v1/topic-requests?requested_by=alice",
        "requests",
    );
    let filed = mine
        .iter()
        .find(|r| r["topic"] == retained.as_str())
        .expect("the form's request");
    assert_eq!(
        (filed["replication_factor"].clone(), filed["config"].clone()),
        (
            json!(1),
            json!({"retention.ms": "7200000", "cleanup.policy": "compact", "max.message.bytes": "65536"})
        ),
        "{filed}"
    );

    // A first send to an unknown topic offers to ask for it; the record is then held.
    page.clear_messages();
    page.fill("#records-form [name=topic]", &first_send);
    page.fill("#records-form [name=value]", r#"{"first": true}"#);
    page.click("#records-form button[type=submit]");
    page.wait_error("unknown topic explained", "does not know that topic");
    page.wait_for(
        "request offered",
        "document.querySelector('#records-offer button.request-topic')",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "12-first-send-offer");
    page.click("#records-offer button.request-topic");
    page.wait_notice("topic requested on first send", "1 record held");
    assert_eq!(
        service.held_records("alice", &first_send, "held").len(),
        1,
        "the first send's record is held"
    );

    // alice withdraws her own request and reads why another was rejected.
    page.tab("requests");
    let withdraw = format!("#mine article[data-topic='{withdrawn}'] button.withdraw");
    page.wait_for(
        "own pending request with withdraw",
        &format!("document.querySelector(\"{withdraw}\")"),
        STEP_TIMEOUT,
    );
    assert!(
        !exists(
            page,
            &format!("#pending article[data-topic='{withdrawn}'] button.approve")
        ),
        "a producer is offered no approval"
    );
    page.clear_messages();
    page.click(&withdraw);
    page.wait_notice("withdrawn", "withdrawn");
    page.wait_for(
        "shown withdrawn",
        &format!(
            "document.querySelector(\"#mine article[data-topic='{withdrawn}'][data-status='withdrawn']\")"
        ),
        STEP_TIMEOUT,
    );
    assert_eq!(
        service.request(&id_of(&withdraw_request))["status"],
        "withdrawn"
    );
    let decision = format!("#mine article[data-topic='{declined}'] .decision");
    assert!(
        page.text(&decision).contains("use the shared orders topic")
            && page.text(&decision).contains("carol"),
        "{}",
        page.text(&decision)
    );
    page.screenshot(&shots, "13-my-requests");

    // Topics: no deletion or handover on bob's topic; both on alice's own once active.
    service.approve("carol", &id_of(filed));
    service.wait_topic_status(&retained, "active", ACTIVE_TIMEOUT);
    service.wait_topic_status(&bobs, "active", ACTIVE_TIMEOUT);
    page.tab("topics");
    page.wait_for(
        "own topic with its deletion control",
        &format!("document.querySelector(\"#topics tr[data-topic='{retained}'] button.danger\")"),
        ACTIVE_TIMEOUT,
    );
    page.wait_for(
        "bob's topic listed",
        &format!("document.querySelector(\"#topics tr[data-topic='{bobs}']\")"),
        STEP_TIMEOUT,
    );
    for control in ["button.danger", "button.handover"] {
        assert!(
            !exists(page, &format!("#topics tr[data-topic='{bobs}'] {control}")),
            "alice is offered {control} on bob's topic"
        );
    }
    page.screenshot(&shots, "14-topics-owner");

    // carol: the dashboard counts the requests that wait for her, and the held records of
    // the pending topic with their age.
    page.sign_in(service.token("carol"));
    // An access request of erin's to alice's topic waits for carol too (and for alice).
    let (status, reply) = service.post(
        "erin",
        "/api/v1/access-requests",
        &json!({"topic": retained, "access": "consume"}),
    );
    assert_eq!(status, 201, "{reply}");
    let others = |path: &str, field: &str| {
        service
            .list_all("carol", path, field)
            .iter()
            .filter(|r| r["requested_by"] != "carol")
            .count()
    };
    let waiting = others("/api/v1/topic-requests?status=pending", "requests")
        + others("/api/v1/access-requests?status=pending", "requests");
    assert_eq!(waiting, 2, "the first send's topic and erin's access");
    page.wait_for(
        "admin's pending count",
        &format!("document.querySelector('#dash-pending .stat-value[data-count=\"{waiting}\"]')"),
        STEP_TIMEOUT,
    );
    page.wait_for(
        "held for the pending topic",
        &format!(
            "document.querySelector(\"#dash-held-list tr[data-topic='{first_send}']\") && \
             document.querySelector(\"#dash-held-list tr[data-topic='{first_send}']\").textContent.includes('1')"
        ),
        STEP_TIMEOUT,
    );
    page.wait_for(
        "rates chart for the admin",
        "document.querySelector('#dash-rates canvas')",
        STEP_TIMEOUT,
    );
    // Records sent now show as an ingest rate above zero within a poll or two.
    let (status, reply) = service.produce(
        "alice",
        &retained,
        "",
        &json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}]),
    );
    assert_eq!(status, 202, "{reply}");
    page.wait_for(
        "ingest rate charted",
        "rates.samples[0].some((v) => v > 0) && rates.samples[1].some((v) => v > 0)",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "15-dashboard");
    page.sign_in(service.token("alice"));
    page.wait_for(
        "erin's access request waits for the topic's owner",
        &format!(
            "document.querySelector('#dash-pending .stat-value[data-count=\"1\"]') && \
             document.querySelector('#dash-pending-list').textContent.includes('consume access to {retained}')"
        ),
        STEP_TIMEOUT,
    );
    page.sign_in(service.token("carol"));

    // Audit: newest first by default, the order switches, a kind filters, an event opens to
    // its JSON, and the export answers.
    page.tab("audit");
    page.wait_for(
        "audit rows",
        "document.querySelectorAll('#audit details.event').length > 2",
        STEP_TIMEOUT,
    );
    let seqs = audit_seqs(page);
    assert!(seqs[0] > seqs[seqs.len() - 1], "newest first: {seqs:?}");
    page.fill("#audit-form [name=order]", "asc");
    page.click("#audit-form button[type=submit]");
    page.wait_for(
        "oldest first",
        "(() => { const r = document.querySelectorAll('#audit details.event'); \
         return r.length > 2 && Number(r[0].dataset.seq) < Number(r[r.length - 1].dataset.seq); })()",
        STEP_TIMEOUT,
    );
    assert_eq!(audit_seqs(page)[0], 1, "oldest first starts at seq 1");
    page.fill("#audit-form [name=order]", "desc");
    page.fill("#audit-form [name=kind]", "request_withdrawn");
    page.click("#audit-form button[type=submit]");
    page.wait_for(
        "kind filter",
        "(() => { const r = [...document.querySelectorAll('#audit details.event')]; \
         return r.length > 0 && r.every(e => e.querySelector('summary').textContent.includes('request_withdrawn')); })()",
        STEP_TIMEOUT,
    );
    page.eval("document.querySelector('#audit details.event').open = true");
    assert!(page
        .text("#audit details.event pre")
        .contains(&format!("\"topic\": \"{withdrawn}\"")));
    page.clear_messages();
    page.click("#audit-export");
    page.wait_notice("audit exported", "Exported 1 audit events");
    let deadline = Instant::now() + STEP_TIMEOUT;
    let saved = loop {
        if let Ok(text) = std::fs::read_to_string(&audit_file) {
            if !text.is_empty() {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "the export was not saved");
        thread::sleep(Duration::from_millis(100));
    };
    let line: Value = serde_json::from_str(saved.trim()).expect("one NDJSON line");
    assert_eq!(
        (line["kind"].as_str(), line["topic"].as_str()),
        (Some("request_withdrawn"), Some(withdrawn.as_str()))
    );
    page.screenshot(&shots, "16-audit-filtered");

    // Dead letters: an admin exports and then discards them (asked twice).
    page.tab("produce");
    page.fill("#held-form [name=topic]", &declined);
    page.fill("#held-form [name=state]", "dead");
    page.click("#held-form button[type=submit]");
    page.wait_for(
        "dead record listed",
        "document.querySelector('#held tr[data-held]')",
        STEP_TIMEOUT,
    );
    page.clear_messages();
    page.click("#held button.held-export");
    page.wait_notice("dead letters exported", "Exported 1 dead records");
    page.click("#held button.held-discard");
    page.screenshot(&shots, "17-discard-confirm");
    page.clear_messages();
    page.click("#held button.held-discard-confirm");
    page.wait_notice("dead letters discarded", "Discarded 1 dead records");
    assert!(service.held_records("carol", &declined, "dead").is_empty());

    // Keyboard: the tabs are buttons; Enter on a focused one switches the screen.
    page.eval("document.querySelector(\"#tabs button[data-tab='dashboard']\").focus()");
    page.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"}),
    );
    page.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
    );
    page.wait_for(
        "dashboard by keyboard",
        "!document.getElementById('tab-dashboard').hidden",
        STEP_TIMEOUT,
    );

    // Phone width: the dashboard and the audit fit 375 px.
    page.viewport(375, 800, true);
    page.wait_for(
        "dashboard fits 375 px",
        "document.documentElement.scrollWidth <= 376 && document.querySelector('#dash-rates canvas')",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "18-dashboard-375");
    page.tab("audit");
    page.wait_for(
        "audit fits 375 px",
        "document.querySelector('#audit details.event') && document.documentElement.scrollWidth <= 376",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "19-audit-375");
}

/// The Messages screen, a topic's detail and where the live feed starts, as a consumer and an
/// admin would use them; at desktop and at phone width.
#[test]
fn console_messages_topic_detail_and_feed_start() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} is missing; `make ui-deps` installs Debian's chromium");
        return;
    }
    let shots = screenshot_dir();
    let service = Service::start();
    let topic = unique_topic("ui-browse");
    service.provision(&topic, 2);
    let old: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("old-{i}"), "value": {"old": i}}))
        .chain([json!({"key": "order-7", "value": {"order": 7, "items": ["tea", "cake"]}})])
        .collect();
    let (status, reply) = service.produce("alice", &topic, "", &Value::Array(old));
    assert_eq!(status, 202, "produce: {reply}");
    assert_eq!(reply["published"], 6, "{reply}");

    let mut browser = Browser::launch();
    let page = &mut browser.page;
    page.open(&format!("{}/", service.base_url()));

    // erin browses the topic: newest first, the key and the value pretty-printed.
    page.sign_in(service.token("erin"));
    page.tab("messages");
    page.wait_for(
        "topic offered",
        &format!("document.querySelector(\"#browse-form option[value='{topic}']\")"),
        STEP_TIMEOUT,
    );
    // Every control has its label, so a screen reader names it and a keyboard reaches it.
    assert_eq!(
        page.eval(
            "[...document.querySelectorAll('#browse-form input, #browse-form select, #feed-start')]\
             .every(e => e.closest('label'))"
        ),
        json!(true),
        "labelled controls"
    );
    page.fill("#browse-form [name=topic]", &topic);
    page.click("#browse-form button[type=submit]");
    page.wait_for(
        "records listed",
        "document.querySelectorAll('#browse-records li.record').length === 6",
        STEP_TIMEOUT,
    );
    assert_eq!(
        page.text("#browse-records li.record:first-child .key"),
        "order-7",
        "the newest record first"
    );
    let value = page.text("#browse-records li.record:first-child pre.value");
    // Pretty-printed: one member per line, indented; and the same value.
    assert!(
        value.contains("\n  \"order\": 7") && value.contains("\n    \"tea\",\n"),
        "the value as pretty JSON: {value}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&value).ok(),
        Some(json!({"order": 7, "items": ["tea", "cake"]}))
    );
    page.screenshot(&shots, "12-messages");

    // Paging: two at a time, older records on the next page.
    page.fill("#browse-form [name=limit]", "20");
    page.eval(
        "document.querySelector('#browse-form [name=limit]').innerHTML += '<option>2</option>'",
    );
    page.fill("#browse-form [name=limit]", "2");
    page.click("#browse-form button[type=submit]");
    page.wait_for(
        "a page of two",
        "document.querySelectorAll('#browse-records li.record').length === 2 && \
         !document.getElementById('browse-older').hidden",
        STEP_TIMEOUT,
    );
    page.click("#browse-older");
    page.wait_for(
        "the next page",
        "!document.getElementById('browse-newest').hidden && \
         !document.querySelector('#browse-records').textContent.includes('order-7')",
        STEP_TIMEOUT,
    );

    // Consume from `latest` (the default): the old records stay out, a new one comes in.
    // What the sign-in drew goes first, so the wait below sees this visit's checkboxes.
    page.eval("document.getElementById('subscriptions').replaceChildren()");
    page.tab("consume");
    assert_eq!(
        page.eval("document.getElementById('feed-start').value"),
        json!("latest")
    );
    let checkbox = format!("#subscriptions input[data-topic='{topic}']");
    page.wait_for(
        "topic offered for subscription",
        &format!("document.querySelector(\"{checkbox}\")"),
        STEP_TIMEOUT,
    );
    page.click(&checkbox);
    page.click("#save-subscriptions");
    page.wait_notice("subscription saved", &topic);
    page.wait_for(
        "feed live",
        "document.getElementById('feed-state').textContent === 'live'",
        STEP_TIMEOUT,
    );
    // The topic's end is found a moment after the subscription: send until one is shown.
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    let mut n = 0;
    loop {
        n += 1;
        let (status, reply) = service.produce(
            "alice",
            &topic,
            "",
            &json!([{"key": "fresh", "value": {"fresh": n}}]),
        );
        assert_eq!(status, 202, "produce: {reply}");
        let shown = page.eval("document.querySelector('#messages').textContent.includes('fresh')");
        if shown == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new record shown on the Consume page"
        );
        thread::sleep(Duration::from_millis(1500));
    }
    let shown = page.text("#messages");
    assert!(
        !shown.contains("order-7") && !shown.contains("old-"),
        "records from before the feed opened are not shown: {shown}"
    );
    page.screenshot(&shots, "13-consume-latest");
    // The page keeps the last 500 frames and says so.
    let kept = page.eval(
        "for (let i = 0; i < 510; i++) showFrame({topic: 'cap', partition: 0, offset: i, \
         key: null, value: {n: i}}); document.querySelectorAll('#messages li').length",
    );
    assert_eq!(kept, json!(500), "frames kept");
    assert!(
        page.text("#feed-cap").contains("last 500"),
        "{}",
        page.text("#feed-cap")
    );

    // carol opens the topic's detail from the list: partitions with their high watermark,
    // erin's position, the grants, the audit history.
    page.sign_in(service.token("carol"));
    page.tab("topics");
    let link = format!("#topics button[data-open-topic='{topic}']");
    page.wait_for(
        "topic name is a button",
        &format!("document.querySelector(\"{link}\")"),
        STEP_TIMEOUT,
    );
    // A real button: focusable, and Enter or Space opens the detail.
    page.eval(&format!("document.querySelector(\"{link}\").focus()"));
    assert_eq!(
        page.eval(&format!(
            "document.activeElement === document.querySelector(\"{link}\")"
        )),
        json!(true),
        "the topic's name takes the focus"
    );
    page.call(
        "Emulation.setFocusEmulationEnabled",
        json!({"enabled": true}),
    );
    page.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
               "text": "\r"}),
    );
    page.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
    );
    page.wait_for(
        "partitions with high watermarks",
        "document.querySelectorAll('#topic-partitions tr[data-partition]').length === 2",
        STEP_TIMEOUT,
    );
    let published = 6 + n;
    page.wait_for(
        "high watermarks add up",
        &format!(
            "[...document.querySelectorAll('#topic-partitions tr[data-partition]')]\
             .reduce((s, r) => s + Number(r.dataset.high), 0) === {published}"
        ),
        STEP_TIMEOUT,
    );
    page.wait_for(
        "erin's position",
        "document.querySelector(\"#topic-positions tr[data-user='erin']\")",
        STEP_TIMEOUT,
    );
    page.wait_for(
        "audit history",
        "document.querySelector('#topic-audit details.event')",
        STEP_TIMEOUT,
    );
    assert!(
        page.text("#topic-access").contains("alice (owner)"),
        "{}",
        page.text("#topic-access")
    );
    page.screenshot(&shots, "14-topic-detail");

    // Phone width: the detail and the Messages screen fit 375 px.
    page.viewport(375, 800, true);
    page.wait_for(
        "topic detail fits 375 px",
        "document.documentElement.scrollWidth <= 376",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "15-topic-detail-375");
    page.click("#topic-browse");
    page.wait_for(
        "messages from the detail",
        "document.querySelectorAll('#browse-records li.record').length > 0",
        STEP_TIMEOUT,
    );
    page.wait_for(
        "messages fit 375 px",
        "document.documentElement.scrollWidth <= 376",
        STEP_TIMEOUT,
    );
    page.screenshot(&shots, "16-messages-375");
}
