//! Per-audience retention, seen through resume and `GET /api/history`, on
//! one node and on several sharing Redis.

use std::time::Instant;

use serde_json::{json, Value};

use crate::helpers::redis::Redis;
use crate::helpers::*;

/// `GET /api/history?query` with `token`.
async fn history(server: &TestServer, token: &str, query: &str) -> Answer {
    let request = server
        .client()
        .get(server.url(&format!("/api/history?{query}")))
        .bearer_auth(token);
    Answer::of(request.send()).await
}

/// Every event `/api/history` lists for `token`, newest first, paging with
/// `before` in pages of `limit`.
async fn whole_history(server: &TestServer, token: &str, limit: usize) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    loop {
        let query = match events.last() {
            Some(oldest) => format!("limit={limit}&before={}", oldest["id"].as_str().unwrap()),
            None => format!("limit={limit}"),
        };
        let answer = history(server, token, &query).await;
        assert_eq!(answer.status, 200, "{answer}");
        let page = answer.into_json();
        let listed = page["events"].as_array().unwrap();
        assert!(listed.len() <= limit);
        events.extend(listed.iter().cloned());
        if page["more"] == false {
            return events;
        }
        assert_eq!(
            listed.len(),
            limit,
            "a page short of its limit has more: false"
        );
    }
}

fn id_of(answer: &Value) -> String {
    answer["id"].as_str().unwrap().to_owned()
}

/// Publishes `count` broadcast events in batches of 1000.
async fn broadcast(server: &TestServer, count: usize) {
    for start in (0..count).step_by(1000) {
        let batch: Vec<Value> = (start..(start + 1000).min(count))
            .map(|n| json!({"event": "busy", "data": n}))
            .collect();
        server.send(json!(batch)).await;
    }
}

#[actix_web::test]
async fn a_user_offline_while_thirty_thousand_broadcasts_go_by_still_gets_her_own_events() {
    let server = spawn(&[]).await;
    let alice = user_token("alice", &[]);
    // She saw this one, then closed her laptop.
    let seen = id_of(&server.send(json!({"event": "hello"})).await);
    let mut personal = Vec::new();
    for n in 0..3 {
        personal.push(id_of(
            &server
                .send(json!({"user": "alice", "event": "personal", "data": {"n": n}}))
                .await,
        ));
        broadcast(&server, 10_000).await;
    }

    let (mut stream, connected) = server.resume(&alice, "", &seen).await;
    assert_eq!(
        connected["recovered"], false,
        "broadcasts she would have received were evicted"
    );
    let replayed = connected["replayed"].as_u64().unwrap() as usize;
    assert_eq!(
        replayed,
        3 + 1000,
        "her own three and the newest broadcasts"
    );
    let mut ids: Vec<herald::EventId> = Vec::new();
    let mut own = Vec::new();
    for _ in 0..replayed {
        let frame = stream.next().await;
        let id = frame.id.clone().expect("replayed events carry ids");
        if frame.event == "personal" {
            own.push(id.clone());
        }
        ids.push(id.parse().unwrap());
    }
    assert_eq!(own, personal, "each personal event once, in order");
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in id order");

    let listed = whole_history(&server, &alice, 500).await;
    assert_eq!(listed.len(), 1003);
    let mut own: Vec<String> = listed
        .iter()
        .filter(|event| event["event"] == "personal")
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    own.reverse();
    assert_eq!(own, personal, "history lists them too, newest first");
    let listed_ids: Vec<herald::EventId> = listed
        .iter()
        .map(|event| event["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(listed_ids.windows(2).all(|pair| pair[0] > pair[1]));
}

#[actix_web::test]
async fn history_lists_the_callers_audience_with_data_and_time() {
    let server = spawn(&[]).await;
    let before = now();
    server
        .send(json!({"user": "alice", "event": "invoice", "data": {"total": 42, "lines": ["a", "b"]}}))
        .await;
    server
        .send(json!({"user": "bob", "event": "secret", "data": 1}))
        .await;
    server
        .send(json!({"channel": "news", "event": "headline", "data": "hi"}))
        .await;
    server
        .send(json!({"channel": "sport", "event": "score", "data": "3-1"}))
        .await;
    server
        .send(json!({"event": "everyone", "data": null}))
        .await;

    let alice = user_token("alice", &["news", "sport"]);
    let answer = history(&server, &alice, "channel=news").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let page = answer.into_json();
    let names: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["everyone", "headline", "invoice"], "newest first");
    assert_eq!(page["more"], false);
    let invoice = &page["events"][2];
    assert_eq!(invoice["data"], json!({"total": 42, "lines": ["a", "b"]}));
    let published_at = invoice["published_at"].as_str().unwrap();
    assert!(
        published_at.len() == 24 && published_at.ends_with('Z'),
        "RFC 3339 in UTC: {published_at}"
    );
    assert!(published_at[..4].parse::<u64>().unwrap() >= 1970 + before / 31_557_600);
}

#[actix_web::test]
async fn history_refuses_bad_paging_and_channels_outside_the_token() {
    let server = spawn(&[]).await;
    let alice = user_token("alice", &["news"]);
    for (query, status, code) in [
        ("limit=0", 400, "bad_request"),
        ("limit=501", 400, "bad_request"),
        ("limit=many", 400, "bad_request"),
        ("before=yesterday", 400, "bad_request"),
        ("channel=sport", 403, "forbidden"),
        ("channel=bad%20name", 400, "bad_request"),
    ] {
        let answer = history(&server, &alice, query).await;
        assert_eq!(answer.status, status, "{query}: {answer}");
        assert_eq!(answer.json()["error"], code, "{query}");
    }
    let anonymous = Answer::of(server.client().get(server.url("/api/history")).send()).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(history(&server, &alice, "limit=500").await.status, 200);
}

#[actix_web::test]
async fn a_page_then_its_stream_from_the_newest_id_misses_and_repeats_nothing() {
    let server = spawn(&[]).await;
    let alice = user_token("alice", &[]);
    for n in 0..5 {
        server.send(json!({"user": "alice", "data": n})).await;
    }
    let page = history(&server, &alice, "limit=3").await.into_json();
    let newest = page["events"][0]["id"].as_str().unwrap().to_owned();
    // Published while the page renders.
    let between = id_of(
        &server
            .send(json!({"user": "alice", "data": "between"}))
            .await,
    );

    let (mut stream, connected) = server
        .subscribe(&alice, &format!("last_event_id={newest}"))
        .await;
    assert_eq!(connected["recovered"], true);
    assert_eq!(connected["replayed"], 1);
    assert_eq!(stream.next().await.id.as_deref(), Some(between.as_str()));
    let live = id_of(&server.send(json!({"user": "alice", "data": "live"})).await);
    assert_eq!(stream.next().await.id.as_deref(), Some(live.as_str()));
}

#[actix_web::test]
async fn events_older_than_the_ttl_leave_replay_and_history_and_resume_says_so() {
    let server = spawn(&[("HISTORY_TTL_SECS", "1")]).await;
    let alice = user_token("alice", &[]);
    let first = id_of(&server.send(json!({"user": "alice", "data": 1})).await);
    let second = id_of(&server.send(json!({"user": "alice", "data": 2})).await);
    assert_eq!(
        history(&server, &alice, "").await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The TTL is a duration: wait for the server to apply it, with a deadline.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let page = history(&server, &alice, "").await.into_json();
        if page["events"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "events outlived the TTL: {page}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, connected) = server.resume(&alice, "", &first).await;
    assert_eq!(connected["replayed"], 0);
    assert_eq!(
        connected["recovered"], false,
        "the second event expired unseen"
    );
    let (_, connected) = server.resume(&alice, "", &second).await;
    assert_eq!(
        connected["recovered"], true,
        "nothing after the newest was lost"
    );
}

#[actix_web::test]
async fn a_batch_to_several_targets_is_retained_once_for_each_reader() {
    let server = spawn(&[]).await;
    let seen = id_of(&server.send(json!({"event": "start"})).await);
    server
        .send(json!({"users": ["alice", "bob"], "channel": "news", "event": "shared"}))
        .await;
    // The 202 comes once the event is in the log; the Broadcaster keeps
    // it in history a moment later, on its own thread.
    let deadline = Instant::now() + TIMEOUT;
    let mut stats = server.stats().await;
    while stats["history_len"] != 2 && Instant::now() < deadline {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = server.stats().await;
    }
    assert_eq!(stats["history_len"], 2, "stored once, listed three times");

    let alice = user_token("alice", &["news"]);
    let (mut stream, connected) = server.resume(&alice, "channel=news", &seen).await;
    assert_eq!(connected["replayed"], 1, "once, though it matches two ways");
    assert_eq!(connected["recovered"], true);
    assert_eq!(stream.next().await.event, "shared");
    let listed = whole_history(&server, &user_token("bob", &[]), 10).await;
    let names: Vec<&str> = listed
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shared", "start"]);
}

/// Entries in the Redis stream `key`.
async fn stream_length(redis: &Redis, key: &str) -> u64 {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[actix_web::test]
async fn with_redis_the_offline_user_gets_her_events_on_any_node_even_one_started_later() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let alice = user_token("alice", &[]);
    // Tells when B has read everything from the shared flow.
    let (mut watcher, _) = b.subscribe(&user_token("watcher", &[]), "").await;
    let seen = id_of(&a.send(json!({"event": "hello"})).await);
    let mut personal = Vec::new();
    for n in 0..3 {
        personal.push(id_of(
            &a.send(json!({"user": "alice", "event": "personal", "data": {"n": n}}))
                .await,
        ));
        broadcast(&a, 10_000).await;
    }
    let marker = id_of(&a.send(json!({"user": "watcher", "event": "marker"})).await);
    while watcher.next().await.id.as_deref() != Some(marker.as_str()) {}
    // B heard all of it live; C starts now and knows only what Redis kept.
    let c = redis.node(&[]).await;
    for node in [&b, &c] {
        let (mut stream, connected) = node.resume(&alice, "", &seen).await;
        assert_eq!(connected["recovered"], false, "broadcasts were evicted");
        let replayed = connected["replayed"].as_u64().unwrap() as usize;
        assert_eq!(replayed, 1003, "her own three and the newest broadcasts");
        let mut own = Vec::new();
        for _ in 0..replayed {
            let frame = stream.next().await;
            if frame.event == "personal" {
                own.push(frame.id.unwrap());
            }
        }
        assert_eq!(own, personal, "each once, in order");
        let listed = whole_history(node, &alice, 500).await;
        assert_eq!(listed.len(), 1003);

        let (_, connected) = node.resume(&alice, "", &personal[2]).await;
        assert_eq!(connected["replayed"], 1000);
        assert_eq!(
            connected["recovered"], false,
            "broadcasts after her last event were evicted too"
        );
    }
    // Nothing lost after the newest event: recovered on the late node too,
    // once it has read that event.
    let (mut on_c, _) = c.subscribe(&alice, "").await;
    let newest = id_of(&a.send(json!({"user": "alice", "event": "last"})).await);
    assert_eq!(on_c.next().await.id.as_deref(), Some(newest.as_str()));
    let (_, connected) = c.resume(&alice, "", &newest).await;
    assert_eq!(connected["recovered"], true);

    // Redis keeps what the limits allow, per audience.
    assert_eq!(stream_length(&redis, "herald:events:everyone").await, 1000);
    assert_eq!(stream_length(&redis, "herald:events:u:alice").await, 4);
    assert!(stream_length(&redis, "herald:events").await <= 12_000);
    assert_eq!(stream_length(&redis, "herald:events:u:watcher").await, 1);
}

#[actix_web::test]
async fn with_redis_a_restarted_node_resumes_a_quiet_user_exactly() {
    let Some(redis) = Redis::start() else { return };
    let a = redis.node(&[("HISTORY_PER_AUDIENCE", "5")]).await;
    let alice = user_token("alice", &[]);
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(id_of(&a.send(json!({"user": "alice", "data": n})).await));
    }
    a.stop().await;
    let restarted = redis.node(&[("HISTORY_PER_AUDIENCE", "5")]).await;
    let (mut stream, connected) = restarted.resume(&alice, "", &ids[2]).await;
    assert_eq!(connected["recovered"], true, "only 0 to 2 were trimmed");
    assert_eq!(connected["replayed"], 5);
    for id in &ids[3..] {
        assert_eq!(stream.next().await.id.as_deref(), Some(id.as_str()));
    }
    let (_, connected) = restarted.resume(&alice, "", &ids[1]).await;
    assert_eq!(connected["recovered"], false, "event 2 was trimmed");
}
