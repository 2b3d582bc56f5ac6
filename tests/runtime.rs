//! The facades on a multi-threaded runtime: calls served on several worker threads at once each
//! get their own answer, and a SIGTERM while calls are in flight on every worker still answers
//! each accepted call (and what was answered is in the log after a restart).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use common::{id_of, unique_topic, wait_until, Service};
use serde_json::{json, Value};

const CALLERS: usize = 32;

fn with_workers(n: usize) -> impl FnOnce(String) -> String {
    move |text| format!("{text}\n[server]\nworker_threads = {n}\n")
}

/// A client of its own per caller thread, so the calls come over many connections at once.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn call(request: reqwest::blocking::RequestBuilder) -> reqwest::Result<(u16, Value)> {
    let response = request.send()?;
    let status = response.status().as_u16();
    let body = response.json().unwrap_or(Value::Null);
    Ok((status, body))
}

#[test]
fn parallel_calls_on_four_workers_each_get_their_own_answer() {
    let svc = Service::start_with_config(with_workers(4));
    let prefix = unique_topic("par");
    let base = svc.base_url().to_string();
    let (alice, carol) = (
        svc.token("alice").to_string(),
        svc.token("carol").to_string(),
    );

    // Every caller files a request for a topic of its own, then reads it back by id and by the
    // list, interleaved with anonymous health checks, all at the same time.
    let filed: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for n in 0..CALLERS {
            let (base, alice, carol, prefix, filed) = (&base, &alice, &carol, &prefix, &filed);
            s.spawn(move || {
                let http = client();
                let topic = format!("{prefix}-{n}");
                let (status, reply) = call(
                    http.post(format!("{base}/api/v1/topic-requests"))
                        .bearer_auth(alice)
                        .json(&json!({ "topic": topic, "partitions": 1, "reason": "parallel" })),
                )
                .expect("file a request");
                assert_eq!(status, 201, "file {topic}: {reply}");
                assert_eq!(reply["topic"], topic.as_str(), "{reply}");
                let id = id_of(&reply);
                for _ in 0..20 {
                    let (status, read) = call(
                        http.get(format!("{base}/api/v1/topic-requests/{id}"))
                            .bearer_auth(carol),
                    )
                    .expect("read the request");
                    assert_eq!(status, 200, "{read}");
                    assert_eq!(read["id"], id.as_str(), "{read}");
                    assert_eq!(read["topic"], topic.as_str(), "{read}");
                    let (status, health) =
                        call(http.get(format!("{base}/healthz"))).expect("healthz");
                    assert_eq!((status, &health["status"]), (200, &json!("up")));
                }
                filed.lock().expect("lock").push((id, topic));
            });
        }
    });

    let filed = filed.into_inner().expect("lock");
    assert_eq!(filed.len(), CALLERS);
    let ids: BTreeSet<&str> = filed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), CALLERS, "every call got an id of its own");
    for (id, topic) in &filed {
        let request = svc.request(id);
        assert_eq!(request["topic"], topic.as_str());
        assert_eq!(request["status"], "pending");
    }
}

#[test]
fn sigterm_with_calls_in_flight_on_every_worker_answers_them_and_keeps_what_was_answered() {
    let mut svc = Service::start_with_config(with_workers(2));
    let prefix = unique_topic("drain");
    let base = svc.base_url().to_string();
    let alice = svc.token("alice").to_string();
    let stop = AtomicBool::new(false);
    let answered: Mutex<Vec<(u16, Value)>> = Mutex::new(Vec::new());

    let status = thread::scope(|s| {
        for n in 0..CALLERS {
            let (base, alice, prefix, stop, answered) = (&base, &alice, &prefix, &stop, &answered);
            s.spawn(move || {
                let http = client();
                let mut i = 0;
                // Until the service goes away: a refused or reset connection is a call it did
                // not accept.
                while !stop.load(Ordering::SeqCst) {
                    let topic = format!("{prefix}-{n}-{i}");
                    i += 1;
                    let sent = call(
                        http.post(format!("{base}/api/v1/topic-requests"))
                            .bearer_auth(alice)
                            .json(&json!({ "topic": topic, "partitions": 1, "reason": "drain" })),
                    );
                    match sent {
                        Ok(reply) => answered.lock().expect("lock").push(reply),
                        Err(_) => break,
                    }
                }
            });
        }
        assert!(
            wait_until(Duration::from_secs(60), || answered
                .lock()
                .expect("lock")
                .len()
                >= 200),
            "the calls never got going"
        );
        let status = svc.terminate(Duration::from_secs(30));
        stop.store(true, Ordering::SeqCst);
        status
    });
    let tail = svc.stderr_tail();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must end in exit 0, got {status:?}\n{tail}"
    );

    // Every call that was answered was answered in full: created, and durable.
    let answered = answered.into_inner().expect("lock");
    for (status, reply) in &answered {
        assert_eq!(*status, 201, "{reply}");
    }
    svc.restart();
    for (_, reply) in &answered {
        let request = svc.request(&id_of(reply));
        assert_eq!(request["topic"], reply["topic"]);
    }
}
