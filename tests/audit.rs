//! The audit trail's reading options: newest first with a cursor that runs downwards, the
//! filters by actor, kind and time, the NDJSON export that streams the same events, and
//! `GET /me`, which tells a client who its token is.

mod common;

use common::{id_of, unique_topic, Service};
use serde_json::{json, Value};

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {e}")))
        .collect()
}

/// Every page of `/api/v1/audit?{query}`, `limit` events a page, following `next`.
fn walk(svc: &Service, who: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..1000 {
        let mut path = format!("/api/v1/audit?{query}&limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, page) = svc.get(who, &path);
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["events"].as_array().expect("events").clone();
        assert!(got.len() <= limit, "{path}: {page}");
        events.extend(got);
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return events,
        }
    }
    panic!("the walk of {query} does not end");
}

/// `GET /api/v1/audit/export?{query}` as `who`: status, content type, and the parsed lines.
fn export(svc: &Service, who: &str, query: &str) -> (u16, String, Vec<Value>) {
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/audit/export?{query}", svc.base_url()))
        .header("Authorization", format!("Bearer {}", svc.token(who)))
        .send()
        .expect("export");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().expect("export body");
    if status != 200 {
        return (
            status,
            content_type,
            vec![serde_json::from_str(&text).unwrap_or(json!(text))],
        );
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    (status, content_type, lines)
}

#[test]
fn the_trail_reads_newest_first_filters_and_exports() {
    let svc = Service::start();
    // Seven events of three actors: five requests, two of them rejected by carol.
    let mut rejected = Vec::new();
    for (i, who) in ["alice", "bob", "alice", "bob", "alice"].iter().enumerate() {
        let topic = unique_topic("audit-order");
        let request = svc.create_request(who, json!({"topic": topic, "partitions": 1}));
        if i % 2 == 1 {
            let path = format!("/api/v1/topic-requests/{}/reject", id_of(&request));
            let (status, reply) = svc.post("carol", &path, &json!({"reason": "not now"}));
            assert_eq!(status, 200, "{reply}");
            rejected.push(topic);
        }
    }

    // Newest first, two a page: the same events as oldest first, in the reverse order.
    let oldest_first = walk(&svc, "carol", "order=asc", 2);
    let newest_first = walk(&svc, "carol", "order=desc", 2);
    assert!(oldest_first.len() >= 7, "{oldest_first:?}");
    let mut reversed = seqs(&oldest_first);
    reversed.reverse();
    assert_eq!(seqs(&newest_first), reversed);
    assert_eq!(seqs(&walk(&svc, "carol", "", 3)), seqs(&oldest_first));
    let (status, reply) = svc.get("carol", "/api/v1/audit?order=sideways");
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_query");

    // Filters: by actor, by kind, and a time window, each also newest first.
    let bob = walk(&svc, "carol", "actor=bob&order=desc", 1);
    assert_eq!(bob.len(), 2, "{bob:?}");
    assert!(bob.iter().all(|e| e["actor"] == "bob"), "{bob:?}");
    assert!(seqs(&bob)[0] > seqs(&bob)[1]);
    let rejections = walk(&svc, "carol", "kind=request_rejected&order=desc", 10);
    let topics: Vec<&str> = rejections
        .iter()
        .filter_map(|e| e["topic"].as_str())
        .collect();
    assert_eq!(topics, vec![rejected[1].as_str(), rejected[0].as_str()]);
    let since = oldest_first[2]["at"].as_str().expect("at").to_string();
    let until = oldest_first[5]["at"].as_str().expect("at").to_string();
    let window = walk(
        &svc,
        "carol",
        &format!(
            "since={}&until={}",
            urlencoding(&since),
            urlencoding(&until)
        ),
        100,
    );
    assert!(
        window
            .iter()
            .all(|e| e["at"].as_str() >= Some(since.as_str())
                && e["at"].as_str() < Some(until.as_str())),
        "{window:?}"
    );
    assert!(seqs(&window).contains(&seqs(&oldest_first)[2]));
    assert!(!seqs(&window).contains(&seqs(&oldest_first)[5]));

    // The export streams the same events, one JSON object a line, in the order asked for.
    let (status, content_type, lines) = export(&svc, "carol", "order=desc");
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(seqs(&lines), reversed);
    assert_eq!(lines[0], newest_first[0]);
    let (_, _, lines) = export(&svc, "carol", "kind=request_rejected");
    assert_eq!(seqs(&lines), {
        let mut s = seqs(&rejections);
        s.reverse();
        s
    });
    let (status, _, reply) = export(&svc, "carol", "limit=5");
    assert_eq!(status, 400, "{reply:?}");
    assert_eq!(reply[0]["error"]["code"], "invalid_query");
    // A reader outside the scope exports only what it may read: erin caused nothing here.
    let (status, _, lines) = export(&svc, "erin", "");
    assert_eq!((status, lines.len()), (200, 0), "{lines:?}");
    // bob reads his own requests' events and nothing of alice's.
    let (_, _, lines) = export(&svc, "bob", "order=desc");
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|e| e["actor"] != "alice"), "{lines:?}");

    // Who a token is, for clients that show only what their user may do.
    assert_eq!(
        svc.get("alice", "/api/v1/me"),
        (200, json!({"name": "alice", "roles": ["producer"]}))
    );
    assert_eq!(
        svc.get("carol", "/api/v1/me"),
        (200, json!({"name": "carol", "roles": ["admin"]}))
    );
    let (status, _) = svc.get_anon("/api/v1/me");
    assert_eq!(status, 401);

    // The dashboard charts deliveries beside ingest and publish.
    let metrics = reqwest::blocking::get(format!("{}/metrics", svc.base_url()))
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        metrics.contains("kafflow_delivered_records_total"),
        "{metrics}"
    );
}

/// Percent-encodes what an RFC 3339 time holds that a query string does not take as is.
fn urlencoding(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
