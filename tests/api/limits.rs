//! Connection limits, heartbeats, pruning and token expiry.

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn streams_beyond_the_per_user_limit_get_429() {
    let server = spawn(&[("MAX_CONNECTIONS_PER_USER", "2")]).await;
    let alice = user_token("alice", &[]);
    let (_one, _) = server.subscribe(&alice, "").await;
    let (_two, _) = server.subscribe(&alice, "").await;
    let refused = server.get_events(&alice, "").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "too_many_connections");
    let (_bob, _) = server.subscribe(&user_token("bob", &[]), "").await;
    assert_eq!(server.stats().await["connections_refused"], 1);
}

#[actix_web::test]
async fn streams_beyond_the_server_limit_get_429_until_one_closes() {
    let server = spawn(&[("MAX_CONNECTIONS", "2")]).await;
    let (one, _) = server.subscribe(&user_token("a", &[]), "").await;
    let (_two, _) = server.subscribe(&user_token("b", &[]), "").await;
    let refused = server.get_events(&user_token("c", &[]), "").await;
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (429, Some("too_many_connections"))
    );
    drop(one);
    server.wait_for_connections(1).await;
    let (_three, _) = server.subscribe(&user_token("c", &[]), "").await;
}

#[actix_web::test]
async fn too_many_channels_on_one_stream_is_a_bad_request() {
    let server = spawn(&[("MAX_CHANNELS_PER_CONNECTION", "3")]).await;
    let token = user_token("alice", &["*"]);
    let three = server.get_events(&token, "channels=a,b,c").await;
    assert_eq!(three.status, 200);
    let four = server
        .get_events(&token, "channels=a,b&channel=c&channel=d")
        .await;
    assert_eq!(
        (four.status, four.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
    let bad_name = server.get_events(&token, "channel=bad%20name").await;
    assert_eq!(
        (bad_name.status, bad_name.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
}

#[actix_web::test]
async fn heartbeats_reach_every_stream() {
    let server = spawn(&[("HEARTBEAT_INTERVAL", "0.1")]).await;
    let (mut a, _) = server.subscribe(&user_token("a", &[]), "").await;
    let (mut b, _) = server.subscribe(&user_token("b", &[]), "").await;
    a.wait_for_heartbeats(3).await;
    b.wait_for_heartbeats(3).await;
}

#[actix_web::test]
async fn a_client_that_disconnects_leaves_the_maps_and_the_stats() {
    let server = spawn(&[("HEARTBEAT_INTERVAL", "0.2")]).await;
    let (gone, _) = server
        .subscribe(&user_token("alice", &["news"]), "channel=news")
        .await;
    let (_stays, _) = server
        .subscribe(&user_token("bob", &["news"]), "channel=news")
        .await;
    server.wait_for_connections(2).await;
    drop(gone);
    server.wait_for_connections(1).await;
    let stats = server.stats().await;
    assert_eq!(stats["users"], 1);
    assert_eq!(stats["channels"]["news"], 1);
    let answer = server.send(json!({"channel": "news"})).await;
    assert_eq!(answer["recipients"], 1);
}

#[actix_web::test]
async fn an_expiring_token_ends_its_stream_with_token_expired() {
    let server = spawn(&[("JWT_LEEWAY_SECS", "0")]).await;
    let short = token(json!({"sub": "alice", "exp": now() + 2}));
    let (mut stream, _) = server.subscribe(&short, "").await;
    let (mut lasting, _) = server.subscribe(&user_token("alice", &[]), "").await;
    let frames = stream.until_end().await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    // Opened inside the warning window: warned at once, then ended.
    assert_eq!(names, ["token-expiring", "token-expired"]);
    server.wait_for_connections(1).await;
    server
        .send(json!({"user": "alice", "event": "still"}))
        .await;
    assert_eq!(
        lasting.next().await.event,
        "still",
        "the other stream of the user lives on"
    );
}

#[actix_web::test]
async fn a_thousand_streams_are_held_and_served() {
    let server = spawn(&[]).await;
    let shared = user_token("many", &["load"]);
    let mut opened = Vec::new();
    for index in 0..1000 {
        // Half the streams share one user, which the per-user limit caps.
        let token = if index % 2 == 0 {
            shared.clone()
        } else {
            user_token(&format!("user-{index}"), &["load"])
        };
        let request = server
            .client()
            .get(server.url("/api/events?channel=load"))
            .bearer_auth(token);
        opened.push(Sse::open(request).await);
    }
    let ok = opened.iter().filter(|s| s.status == 200).count();
    let refused = opened.iter().filter(|s| s.status == 429).count();
    assert_eq!((ok, refused), (500 + 16, 500 - 16));
    let answer = server
        .send(json!({"channel": "load", "event": "fan"}))
        .await;
    assert_eq!(answer["recipients"], ok);
    for stream in opened.iter_mut().filter(|s| s.status == 200) {
        assert_eq!(stream.next().await.event, "connected");
        assert_eq!(stream.next().await.event, "fan");
    }
}
