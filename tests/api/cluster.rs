//! Many nodes on one Redis: cross-node delivery, ordering, resume anywhere,
//! restarts of a node and of Redis.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::redis::{Redis, Relay};
use crate::helpers::*;

fn event_id(answer: &Value) -> herald::EventId {
    answer["id"].as_str().unwrap().parse().unwrap()
}

#[actix_web::test]
async fn events_published_on_one_node_reach_matching_streams_on_every_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, c) = (
        redis.node(&[]).await,
        redis.node(&[]).await,
        redis.node(&[]).await,
    );
    let (mut alice_b, _) = b
        .subscribe(&user_token("alice", &["news"]), "channel=news")
        .await;
    let (mut bob_c, _) = c.subscribe(&user_token("bob", &["news"]), "").await;
    let (mut carol_c, _) = c
        .subscribe(&user_token("carol", &["news"]), "channel=news")
        .await;

    a.send(json!({"event": "to-alice", "user": "alice"})).await;
    a.send(json!({"event": "on-news", "channel": "news"})).await;
    a.send(json!({"event": "to-all"})).await;

    let names =
        |frames: Vec<herald::sse::Frame>| frames.into_iter().map(|f| f.event).collect::<Vec<_>>();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(alice_b.next().await);
    }
    assert_eq!(names(got), ["to-alice", "on-news", "to-all"]);
    assert_eq!(
        bob_c.next().await.event,
        "to-all",
        "bob gets neither alice's event nor news"
    );
    assert_eq!(carol_c.next().await.event, "on-news");
    assert_eq!(carol_c.next().await.event, "to-all");
}

#[actix_web::test]
async fn recipients_count_the_publishing_nodes_own_streams() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let (_on_a, _) = a.subscribe(&user_token("alice", &[]), "").await;
    let (mut on_b, _) = b.subscribe(&user_token("alice", &[]), "").await;
    let answer = a.send(json!({"user": "alice", "event": "counted"})).await;
    assert_eq!(answer["recipients"], 1, "one stream on the publishing node");
    assert_eq!(
        on_b.next().await.event,
        "counted",
        "the other node's stream gets it too"
    );
}

#[actix_web::test]
async fn ids_are_ordered_cluster_wide_and_every_node_sees_one_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, c) = (
        redis.node(&[]).await,
        redis.node(&[]).await,
        redis.node(&[]).await,
    );
    let (mut on_a, _) = a.subscribe(&user_token("x", &[]), "").await;
    let (mut on_c, _) = c.subscribe(&user_token("y", &[]), "").await;
    let mut published = Vec::new();
    for n in 0..20 {
        let node = if n % 2 == 0 { &a } else { &b };
        published.push(event_id(&node.send(json!({"data": n})).await));
    }
    assert!(
        published.windows(2).all(|w| w[0] < w[1]),
        "ids from two nodes increase: {published:?}"
    );
    for stream in [&mut on_a, &mut on_c] {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let frame = stream.next().await;
            seen.push(frame.id.unwrap().parse::<herald::EventId>().unwrap());
        }
        assert_eq!(
            seen, published,
            "every node delivers in the one cluster order"
        );
    }
}

#[actix_web::test]
async fn resume_works_on_another_node_and_on_a_node_started_later() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let token = user_token("alice", &["news"]);
    let (mut stream, _) = a.subscribe(&token, "channel=news").await;
    a.send(json!({"user": "alice", "data": 0})).await;
    let last = stream.next().await.id.unwrap();
    drop(stream);
    for n in 1..=3 {
        b.send(json!({"channel": "news", "data": n})).await;
    }
    b.send(json!({"user": "bob", "data": "not for alice"}))
        .await;

    for resume_node in [&b, &redis.node(&[]).await] {
        let (mut resumed, connected) = resume_node.resume(&token, "channel=news", &last).await;
        assert_eq!(
            (
                connected["recovered"].as_bool(),
                connected["replayed"].as_u64()
            ),
            (Some(true), Some(3))
        );
        for n in 1..=3 {
            assert_eq!(data(&resumed.next().await), json!(n));
        }
    }
}

/// A client that had events from one node resumes on another whose reader
/// has not read them yet: it must not get them twice when they arrive there.
#[actix_web::test]
async fn a_resume_on_a_node_whose_reader_is_behind_repeats_nothing() {
    let Some(redis) = Redis::start() else { return };
    let relay = Relay::start(redis.port).await;
    let lagging = spawn(&[("REDIS_URL", relay.url().as_str())]).await;
    let b = redis.node(&[]).await;
    let token = user_token("alice", &[]);
    let (mut on_b, _) = b.subscribe(&token, "").await;
    let (mut watcher, _) = lagging.subscribe(&token, "").await;
    b.send(json!({"user": "alice", "data": 0})).await;
    assert_eq!(data(&on_b.next().await), json!(0));
    assert_eq!(
        data(&watcher.next().await),
        json!(0),
        "the node follows the flow"
    );

    relay.hold(true);
    let mut last = String::new();
    for n in 1..=3 {
        b.send(json!({"user": "alice", "data": n})).await;
        let frame = on_b.next().await;
        assert_eq!(data(&frame), json!(n));
        last = frame.id.unwrap();
    }
    let (mut resumed, connected) = lagging.resume(&token, "", &last).await;
    assert_eq!(
        (
            connected["recovered"].as_bool(),
            connected["replayed"].as_u64()
        ),
        (Some(true), Some(0)),
        "nothing after its id is in this node's history yet, and nothing is lost"
    );
    relay.hold(false);
    for n in 1..=3 {
        assert_eq!(
            data(&watcher.next().await),
            json!(n),
            "the node's reader caught up"
        );
    }
    b.send(json!({"user": "alice", "data": 4})).await;
    assert_eq!(
        data(&resumed.next().await),
        json!(4),
        "the resumed stream gets what came after its id, not 1..=3 again"
    );
}

#[actix_web::test]
async fn a_node_restarted_mid_stream_loses_nothing_for_clients_that_resume() {
    let Some(redis) = Redis::start() else { return };
    let steady = redis.node(&[]).await;
    let restarting = redis.node(&[("SHUTDOWN_DRAIN_SECS", "0.2")]).await;
    let token = user_token("alice", &[]);
    let (mut stream, _) = restarting.subscribe(&token, "").await;
    let mut received = Vec::new();
    let mut last_id = None;
    for n in 0..10 {
        steady.send(json!({"user": "alice", "data": n})).await;
    }
    for _ in 0..10 {
        let frame = stream.next().await;
        received.push(data(&frame));
        last_id = frame.id;
    }
    // The node goes down; its stream ends; more events are published meanwhile.
    restarting.stop().await;
    assert!(stream.until_end().await.is_empty());
    for n in 10..20 {
        steady.send(json!({"user": "alice", "data": n})).await;
    }
    let replacement = redis.node(&[]).await;
    let (mut resumed, connected) = replacement.resume(&token, "", &last_id.unwrap()).await;
    assert_eq!(connected["recovered"], true);
    for _ in 10..20 {
        received.push(data(&resumed.next().await));
    }
    steady.send(json!({"user": "alice", "data": 20})).await;
    received.push(data(&resumed.next().await));
    assert_eq!(received, (0..=20).map(|n| json!(n)).collect::<Vec<_>>());
}

#[actix_web::test]
async fn when_redis_goes_away_publish_fails_streams_stay_and_delivery_resumes_after() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = redis.node(&[("HEARTBEAT_INTERVAL", "0.2")]).await;
    let b = redis.node(&[("HEARTBEAT_INTERVAL", "0.2")]).await;
    let (mut stream, _) = b.subscribe(&user_token("alice", &[]), "").await;
    a.send(json!({"user": "alice", "data": "before"})).await;
    assert_eq!(data(&stream.next().await), json!("before"));

    redis.kill();
    let refused = a
        .publish(&admin_token(), &json!({"user": "alice", "data": "refused"}))
        .await;
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(a.get("/healthz").await.status, 503);
    stream.wait_for_heartbeats(3).await;
    assert_eq!(b.stats().await["connections"], 1, "the stream stays open");

    redis.restart();
    let deadline = Instant::now() + TIMEOUT;
    let accepted = loop {
        let answer = a
            .publish(&admin_token(), &json!({"user": "alice", "data": "after"}))
            .await;
        if answer.status == 202 {
            break answer.into_json();
        }
        assert_eq!(answer.status, 503, "{answer}");
        assert!(Instant::now() < deadline, "publishing never recovered");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    let frame = stream.next().await;
    assert_eq!(
        data(&frame),
        json!("after"),
        "the refused event was never accepted, so never sent"
    );
    assert_eq!(frame.id.as_deref(), accepted["id"].as_str());
    assert_eq!(a.get("/healthz").await.status, 200);
}

#[actix_web::test]
async fn events_accepted_just_before_redis_dies_are_delivered_after_it_returns() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = redis.node(&[]).await;
    let (mut stream, _) = a.subscribe(&user_token("alice", &[]), "").await;
    let mut accepted = Vec::new();
    for n in 0..50 {
        accepted.push(event_id(&a.send(json!({"user": "alice", "data": n})).await));
    }
    redis.restart();
    let last = a
        .send_when_possible(json!({"user": "alice", "data": 50}))
        .await;
    accepted.push(event_id(&last));
    for (n, id) in accepted.iter().enumerate() {
        let frame = stream.next().await;
        assert_eq!(data(&frame), json!(n), "in order, none lost or repeated");
        assert_eq!(
            frame.id,
            Some(id.to_string()),
            "with the id it was accepted with"
        );
    }
}

impl TestServer {
    /// Publishes, retrying while the event store is unavailable.
    async fn send_when_possible(&self, body: Value) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let answer = self.publish(&admin_token(), &body).await;
            if answer.status == 202 {
                return answer.into_json();
            }
            assert!(
                answer.status == 503 && Instant::now() < deadline,
                "publish: {answer}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[actix_web::test]
async fn a_node_on_an_emptied_redis_does_not_take_an_earlier_id_for_one_it_has_not_read() {
    let Some(redis) = Redis::start() else { return };
    let token = user_token("alice", &[]);
    let earlier = {
        let a = redis.node(&[]).await;
        let first = a.send(json!({"user": "alice", "event": "one"})).await;
        a.send(json!({"user": "alice", "event": "two"})).await;
        a.stop().await;
        first["id"].as_str().unwrap().to_owned()
    };
    // The flow and every audience's history are gone (a flushed or replaced
    // Redis): the event after `earlier` is lost, and a fresh node must say so
    // although `earlier` is only milliseconds old.
    let Some(empty) = Redis::start() else { return };
    drop(redis);
    let b = empty.node(&[]).await;
    let (_, connected) = b.resume(&token, "", &earlier).await;
    assert_eq!(connected["recovered"], false, "{connected}");
    assert_eq!(connected["replayed"], 0);
}
