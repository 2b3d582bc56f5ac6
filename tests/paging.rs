//! Every list route pages with a cursor: walked two items at a time while new items are
//! inserted between the pages, each item that was there at the start is seen exactly once and
//! no item twice; a limit out of range or a cursor the route did not give is 400.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{id_of, unique_topic, Service};
use serde_json::{json, Value};

/// Walks `path` as `who`, `limit` items a page, following `next`, and calls `between` after
/// each page. Returns every item in the order seen.
fn walk(
    svc: &Service,
    who: &str,
    path: &str,
    field: &str,
    mut between: impl FnMut(usize),
) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for page_no in 0.. {
        let target = match &after {
            Some(after) => format!("{path}{sep}limit=2&after={after}"),
            None => format!("{path}{sep}limit=2"),
        };
        let (status, page) = svc.get(who, &target);
        assert_eq!(status, 200, "GET {target}: {page}");
        let got = page[field].as_array().unwrap_or_else(|| panic!("{page}"));
        assert!(got.len() <= 2, "a page longer than its limit: {page}");
        items.extend(got.iter().cloned());
        between(page_no);
        // The audit and the new routes give a string; `/held` gives the id of its last record.
        after = match &page["next"] {
            Value::String(next) => Some(next.clone()),
            Value::Number(next) => Some(next.to_string()),
            Value::Null => return items,
            other => panic!("next is neither a cursor nor null: {other}"),
        };
        assert!(page_no < 1000, "the walk does not end");
    }
    unreachable!()
}

/// Asserts that every key of `before` is in `seen` exactly once, and no key twice.
fn each_once(route: &str, before: &[String], seen: &[Value], key: impl Fn(&Value) -> String) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for item in seen {
        *counts.entry(key(item)).or_default() += 1;
    }
    for k in before {
        assert_eq!(
            counts.get(k),
            Some(&1),
            "{route}: {k} seen {:?} times",
            counts.get(k)
        );
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{route}: seen twice: {twice:?}");
}

fn str_of(field: &'static str) -> impl Fn(&Value) -> String {
    move |v| v[field].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_list_route_pages_with_a_cursor_that_inserts_do_not_shift() {
    let svc = Service::start();
    let prefix = unique_topic("paging");
    let name = |n: usize| format!("{prefix}-{n:02}");

    // topic-requests: five filed, one more filed after each page.
    let requested: Vec<String> = (0..5)
        .map(|n| svc.request_topic("alice", &name(n), 1))
        .collect();
    let mut extra = 5;
    let seen = walk(&svc, "carol", "/api/v1/topic-requests", "requests", |_| {
        svc.request_topic("alice", &name(extra), 1);
        extra += 1;
    });
    each_once("topic-requests", &requested, &seen, str_of("id"));
    assert!(
        seen.len() > requested.len(),
        "requests filed during the walk come at its end"
    );
    // A filter pages too.
    let pending = walk(
        &svc,
        "carol",
        "/api/v1/topic-requests?status=pending",
        "requests",
        |_| {},
    );
    assert!(
        pending.iter().all(|r| r["status"] == "pending"),
        "{pending:?}"
    );
    assert_eq!(pending.len(), extra);

    // Records for a pending topic are held: `/held` pages by record id.
    let held_topic = name(extra - 1);
    let (status, reply) = svc.post(
        "alice",
        &format!("/api/v1/topics/{held_topic}/records"),
        &json!([{"value": 1}, {"value": 2}, {"value": 3}, {"value": 4}, {"value": 5}]),
    );
    assert_eq!(status, 202, "{reply}");
    let held = walk(
        &svc,
        "alice",
        &format!("/api/v1/held?topic={held_topic}"),
        "records",
        |_| {},
    );
    let ids: Vec<u64> = held.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids.len(), 5, "{held:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // topics: a topic appears on approval; four approved, one more after each page, some
    // sorting before the cursor and some after.
    for id in &requested[..4] {
        svc.approve("carol", id);
    }
    let before: Vec<String> = (0..4).map(name).collect();
    let mut next_request = 4;
    let all_requests = svc.list_all("carol", "/api/v1/topic-requests?status=pending", "requests");
    let seen = walk(&svc, "bob", "/api/v1/topics", "topics", |_| {
        if let Some(r) = all_requests.get(next_request - 4) {
            svc.approve("carol", &id_of(r));
            next_request += 1;
        }
    });
    each_once("topics", &before, &seen, str_of("name"));
    for t in &seen {
        assert!(
            t.get("held").is_some(),
            "a listed topic keeps its counts: {t}"
        );
    }

    // Access requests and grants: bob asks to produce to alice's topics, carol approves.
    for n in 0..4 {
        svc.wait_topic_status(&name(n), "active", Duration::from_secs(60));
    }
    let granted: Vec<String> = (0..3)
        .map(|n| svc.grant("bob", &name(n), "produce"))
        .collect();
    let mut more = 3;
    let seen = walk(&svc, "carol", "/api/v1/access-requests", "requests", |_| {
        if more < 4 {
            svc.grant("bob", &name(more), "produce");
            more += 1;
        }
    });
    each_once("access-requests", &granted, &seen, str_of("id"));
    let seen = walk(&svc, "carol", "/api/v1/grants", "grants", |_| {});
    each_once("grants", &granted, &seen, str_of("id"));
    let seen = walk(
        &svc,
        "bob",
        &format!("/api/v1/grants?topic={}", name(1)),
        "grants",
        |_| {},
    );
    assert_eq!(seen.len(), 1, "{seen:?}");

    // Subscriptions: erin reads three topics, and one more after the first page.
    for n in 0..3 {
        let (status, body) = svc.post(
            "erin",
            &format!("/api/v1/me/subscriptions/{}", name(n)),
            &json!({}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let before: Vec<String> = (0..3).map(name).collect();
    let mut subscribed_more = false;
    let seen = walk(&svc, "erin", "/api/v1/me/subscriptions", "topics", |_| {
        if !subscribed_more {
            let path = format!("/api/v1/me/subscriptions/{}", name(3));
            assert_eq!(svc.post("erin", &path, &json!({})).0, 200);
            subscribed_more = true;
        }
    });
    let names: Vec<Value> = seen.iter().map(|t| json!({ "name": t })).collect();
    each_once("me/subscriptions", &before, &names, str_of("name"));
    let seen = walk(
        &svc,
        "carol",
        "/api/v1/subscriptions",
        "subscriptions",
        |_| {},
    );
    assert_eq!(seen.len(), 4, "{seen:?}");
    each_once("subscriptions", &before, &seen, str_of("topic"));

    // Tokens: three issued, one more after each page.
    let issued: Vec<String> = (0..3)
        .map(|n| svc.issue_token(&format!("loader-{n}"), &["producer"]).0)
        .collect();
    let mut n = 3;
    let seen = walk(&svc, "carol", "/api/v1/tokens", "tokens", |_| {
        svc.issue_token(&format!("loader-{n}"), &["producer"]);
        n += 1;
    });
    each_once("tokens", &issued, &seen, str_of("id"));

    // The default page is 100 and says where to go on.
    let (status, page) = svc.get("carol", "/api/v1/topic-requests");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");
    let (_, page) = svc.get("carol", "/api/v1/topic-requests?limit=1");
    assert!(page["next"].is_string(), "{page}");
}

#[test]
fn a_bad_limit_or_cursor_is_invalid_query_on_every_list_route() {
    let svc = Service::start();
    let routes = [
        ("carol", "/api/v1/topic-requests"),
        ("carol", "/api/v1/topics"),
        ("carol", "/api/v1/access-requests"),
        ("carol", "/api/v1/grants"),
        ("carol", "/api/v1/tokens"),
        ("carol", "/api/v1/subscriptions"),
        ("erin", "/api/v1/me/subscriptions"),
        ("carol", "/api/v1/audit"),
    ];
    for (who, path) in routes {
        for query in [
            "limit=0",
            "limit=1001",
            "limit=two",
            "after=%25%25",
            "after=bm90LWEta2V5",
        ] {
            if path.ends_with("/audit") && query.starts_with("after=") {
                // The audit's cursor is a seq: a number, checked as one below.
                continue;
            }
            let target = format!("{path}?{query}");
            let (status, body) = svc.get(who, &target);
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some("invalid_query")),
                "{target}: {body}"
            );
        }
        let (status, body) = svc.get(who, &format!("{path}?limit=1000"));
        assert_eq!(status, 200, "{path}?limit=1000: {body}");
    }
    let (status, _) = svc.get("carol", "/api/v1/audit?after=x");
    assert_eq!(status, 400);
}
