//! A stream over its token's life: the expiry warning and refresh in place.

use serde_json::json;

use crate::helpers::*;

/// `POST /api/streams/{client_id}/token` with `token` as Bearer.
async fn refresh(server: &TestServer, client_id: &str, token: &str) -> Answer {
    let request = server
        .client()
        .post(server.url(&format!("/api/streams/{client_id}/token")))
        .bearer_auth(token);
    Answer::of(request.send()).await
}

#[actix_web::test]
async fn a_warned_stream_refreshed_in_place_outlives_its_first_token() {
    let server = spawn(&[("JWT_LEEWAY_SECS", "0"), ("HEARTBEAT_INTERVAL", "0.5")]).await;
    let exp = now() + 2;
    let first = token(json!({"sub": "alice", "exp": exp, "channels": ["news"]}));
    let (mut stream, connected) = server.subscribe(&first, "channel=news").await;
    let client_id = connected["client_id"].as_str().unwrap().to_owned();
    let warning = stream.next().await;
    assert_eq!(warning.event, "token-expiring", "opened inside the window");
    assert_eq!(data(&warning), json!({"expires_at": exp}));

    let fresh = user_token("alice", &["news", "sport"]);
    let answer = refresh(&server, &client_id, &fresh).await;
    assert_eq!(answer.status, 204, "{answer}");

    // Past the first token's exp (awaiting heartbeats, not sleeping) the
    // stream is still open and still receives.
    let mut heartbeats = 0;
    while now() <= exp + 1 {
        heartbeats += 1;
        stream.wait_for_heartbeats(heartbeats).await;
    }
    let sent = server
        .send(json!({"channel": "news", "event": "still-here"}))
        .await;
    let frame = stream.next().await;
    assert_eq!(frame.event, "still-here");
    assert_eq!(frame.id.as_deref(), sent["id"].as_str());
}

#[actix_web::test]
async fn a_refresh_is_refused_for_another_user_a_narrower_token_or_an_unknown_stream() {
    let server = spawn(&[]).await;
    let (_stream, connected) = server
        .subscribe(&user_token("alice", &["news"]), "channel=news")
        .await;
    let client_id = connected["client_id"].as_str().unwrap();
    for (case, id, token, status, code) in [
        (
            "another user",
            client_id,
            user_token("bob", &["news"]),
            404,
            "not_found",
        ),
        (
            "narrower channels",
            client_id,
            user_token("alice", &["sport"]),
            403,
            "forbidden",
        ),
        (
            "unknown stream",
            "3f0c9a52-6b1e-4c3d-8e2f-9a7b6c5d4e3f",
            user_token("alice", &["news"]),
            404,
            "not_found",
        ),
        (
            "not a stream id",
            "nope",
            user_token("alice", &["news"]),
            404,
            "not_found",
        ),
    ] {
        let answer = refresh(&server, id, &token).await;
        assert_eq!(answer.status, status, "{case}: {answer}");
        assert_eq!(answer.json()["error"], code, "{case}");
    }
    let in_query = Answer::of(
        server
            .client()
            .post(server.url(&format!(
                "/api/streams/{client_id}/token?token={}",
                user_token("alice", &["news"])
            )))
            .send(),
    )
    .await;
    assert_eq!(
        in_query.status, 401,
        "a write never takes a token from the URL"
    );
    let wide = user_token("alice", &["*"]);
    assert_eq!(refresh(&server, client_id, &wide).await.status, 204);
}
