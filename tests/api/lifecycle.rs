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

/// `POST /api/tickets` with `token` as Bearer.
async fn buy_ticket(server: &TestServer, token: &str) -> Answer {
    let request = server
        .client()
        .post(server.url("/api/tickets"))
        .bearer_auth(token);
    Answer::of(request.send()).await
}

/// `GET /api/events?ticket=…&query`, with no token at all.
async fn open_with_ticket(server: &TestServer, ticket: &str, query: &str) -> Sse {
    let url = server.url(&format!("/api/events?ticket={ticket}&{query}"));
    Sse::open(server.client().get(url)).await
}

#[actix_web::test]
async fn a_ticket_opens_one_stream_with_its_tokens_identity_and_only_once() {
    let server = spawn(&[]).await;
    let bought = buy_ticket(&server, &user_token("alice", &["team-1.*"])).await;
    assert_eq!(bought.status, 201, "{bought}");
    assert_eq!(bought.json()["expires_in"], 30);
    let ticket = bought.json()["ticket"].as_str().unwrap().to_owned();

    let mut stream = open_with_ticket(&server, &ticket, "channel=team-1.news").await;
    assert_eq!(stream.status, 200);
    let connected = data(&stream.next().await);
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["channels"], json!(["team-1.news"]));
    let sent = server
        .send(json!({"channel": "team-1.news", "event": "via-ticket"}))
        .await;
    assert_eq!(stream.next().await.id.as_deref(), sent["id"].as_str());

    let again = open_with_ticket(&server, &ticket, "").await;
    assert_eq!(again.status, 401, "a ticket is spent once");
    let forged = open_with_ticket(&server, &"0".repeat(64), "").await;
    assert_eq!(forged.status, 401);
    let other = buy_ticket(&server, &user_token("bob", &[])).await;
    let other = other.json()["ticket"].as_str().unwrap().to_owned();
    let refused = open_with_ticket(&server, &other, "channel=team-1.news").await;
    assert_eq!(
        refused.status, 403,
        "the ticket has its token's channel allowance"
    );
}

#[actix_web::test]
async fn a_late_ticket_is_refused() {
    let server = spawn(&[("TICKET_TTL_SECS", "1")]).await;
    let bought = buy_ticket(&server, &user_token("alice", &[])).await;
    let ticket = bought.json()["ticket"].as_str().unwrap().to_owned();
    // Nothing to await: a ticket's lifetime is a duration.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    let late = open_with_ticket(&server, &ticket, "").await;
    assert_eq!(late.status, 401);
}

#[actix_web::test]
async fn a_ticket_bought_on_one_node_opens_a_stream_on_another_once() {
    let Some(redis) = crate::helpers::redis::Redis::start() else {
        return;
    };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let bought = buy_ticket(&a, &user_token("alice", &[])).await;
    assert_eq!(bought.status, 201);
    let ticket = bought.json()["ticket"].as_str().unwrap().to_owned();
    let mut stream = open_with_ticket(&b, &ticket, "").await;
    assert_eq!(stream.status, 200);
    assert_eq!(data(&stream.next().await)["user"], "alice");
    assert_eq!(open_with_ticket(&a, &ticket, "").await.status, 401);
    assert_eq!(open_with_ticket(&b, &ticket, "").await.status, 401);
}

/// Buys tickets for alice until refused; answers how many were sold and
/// the refusal.
async fn buy_until_refused(server: &TestServer) -> (usize, Answer) {
    let token = user_token("alice", &[]);
    for sold in 0..1000 {
        let answer = buy_ticket(server, &token).await;
        if answer.status != 201 {
            return (sold, answer);
        }
    }
    panic!("1000 tickets sold to one user");
}

#[actix_web::test]
async fn one_user_holds_at_most_100_unused_tickets_on_one_node_and_on_redis() {
    let server = spawn(&[]).await;
    let (sold, refused) = buy_until_refused(&server).await;
    assert_eq!(sold, 100);
    assert_eq!(refused.status, 429, "{refused}");
    assert_eq!(refused.json()["error"], "too_many_connections");
    assert_eq!(
        buy_ticket(&server, &user_token("bob", &[])).await.status,
        201,
        "another user is not held back"
    );

    let Some(redis) = crate::helpers::redis::Redis::start() else {
        return;
    };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let (sold, refused) = buy_until_refused(&a).await;
    assert_eq!(sold, 100);
    assert_eq!(refused.status, 429, "{refused}");
    let on_b = buy_ticket(&b, &user_token("alice", &[])).await;
    assert_eq!(on_b.status, 429, "the cap is cluster-wide: {on_b}");
}

/// `POST /api/revoke` as admin with `body`./// `POST /api/revoke` as admin with `body`.
async fn revoke(server: &TestServer, body: serde_json::Value) -> Answer {
    server
        .publish_to("/api/revoke", &admin_token(), &body)
        .await
}

/// A token for `sub` issued now (`iat`), with `jti` if given.
fn issued_now(sub: &str, jti: Option<&str>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3600, "iat": now()});
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    token(claims)
}

#[actix_web::test]
async fn revoking_a_user_ends_her_streams_and_refuses_her_older_tokens() {
    let server = spawn(&[]).await;
    let old = token(json!({"sub": "alice", "exp": now() + 3600, "iat": now() - 10}));
    let (mut first, _) = server.subscribe(&old, "").await;
    let (mut second, _) = server.subscribe(&old, "").await;
    let (mut bob, _) = server.subscribe(&user_token("bob", &[]), "").await;

    let answer = revoke(&server, json!({"user": "alice"})).await;
    assert_eq!(answer.status, 202, "{answer}");
    for stream in [&mut first, &mut second] {
        let names = stream.names_until_end().await;
        assert_eq!(names, ["revoked"]);
    }
    let refused = server.get_events(&old, "").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "token_revoked");
    let fresh = issued_now("alice", None);
    assert_eq!(
        server.get_events(&fresh, "").await.status,
        200,
        "issued after"
    );

    server
        .send(json!({"user": "bob", "event": "unaffected"}))
        .await;
    assert_eq!(bob.next().await.event, "unaffected");
}

#[actix_web::test]
async fn revoking_a_token_ends_only_its_streams() {
    let server = spawn(&[]).await;
    let leaked = issued_now("alice", Some("leaked-1"));
    let other = issued_now("alice", Some("laptop-2"));
    let (mut on_leaked, _) = server.subscribe(&leaked, "").await;
    let (mut on_other, _) = server.subscribe(&other, "").await;
    assert_eq!(
        revoke(&server, json!({"jti": "leaked-1"})).await.status,
        202
    );
    let names = on_leaked.names_until_end().await;
    assert_eq!(names, ["revoked"]);
    assert_eq!(
        server.get_events(&leaked, "").await.json()["error"],
        "token_revoked"
    );
    server
        .send(json!({"user": "alice", "event": "still"}))
        .await;
    assert_eq!(on_other.next().await.event, "still");

    for bad in [
        json!({}),
        json!({"user": "a", "jti": "b"}),
        json!({"user": ""}),
    ] {
        assert_eq!(revoke(&server, bad.clone()).await.status, 400, "{bad}");
    }
    let not_admin = server
        .publish_to(
            "/api/revoke",
            &user_token("alice", &[]),
            &json!({"user": "bob"}),
        )
        .await;
    assert_eq!(not_admin.status, 403);
}

#[actix_web::test]
async fn with_redis_a_revocation_reaches_every_node_and_outlives_them() {
    let Some(redis) = crate::helpers::redis::Redis::start() else {
        return;
    };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let old = token(json!({"sub": "alice", "exp": now() + 3600, "iat": now() - 10}));
    let (mut on_a, _) = a.subscribe(&old, "").await;
    let (mut on_b, _) = b.subscribe(&old, "").await;
    let started = std::time::Instant::now();
    assert_eq!(revoke(&a, json!({"user": "alice"})).await.status, 202);
    for stream in [&mut on_a, &mut on_b] {
        let names = stream.names_until_end().await;
        assert_eq!(names, ["revoked"]);
    }
    println!(
        "both streams ended {:?} after the revocation",
        started.elapsed()
    );
    assert_eq!(
        b.get_events(&old, "").await.json()["error"],
        "token_revoked"
    );
    let c = redis.node(&[]).await;
    assert_eq!(
        c.get_events(&old, "").await.json()["error"],
        "token_revoked",
        "a node started later knows it"
    );
    assert_eq!(
        c.get_events(&issued_now("alice", None), "").await.status,
        200
    );
}

#[actix_web::test]
async fn with_redis_a_refresh_reaches_the_node_that_holds_the_stream() {
    let Some(redis) = crate::helpers::redis::Redis::start() else {
        return;
    };
    let settings = [("JWT_LEEWAY_SECS", "0"), ("HEARTBEAT_INTERVAL", "0.5")];
    let (a, b) = (redis.node(&settings).await, redis.node(&settings).await);
    let exp = now() + 2;
    let first = token(json!({"sub": "alice", "exp": exp, "channels": ["news"]}));
    let (mut stream, connected) = b.subscribe(&first, "channel=news").await;
    let client_id = connected["client_id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next().await.event, "token-expiring");

    let narrower = refresh(&a, &client_id, &user_token("alice", &["sport"])).await;
    assert_eq!(narrower.status, 403, "{narrower}");
    let foreign = refresh(&a, &client_id, &user_token("bob", &["news"])).await;
    assert_eq!(foreign.status, 404, "{foreign}");
    let answer = refresh(&a, &client_id, &user_token("alice", &["news"])).await;
    assert_eq!(answer.status, 204, "{answer}");

    let mut heartbeats = 0;
    while now() <= exp + 1 {
        heartbeats += 1;
        stream.wait_for_heartbeats(heartbeats).await;
    }
    let sent = a
        .send(json!({"channel": "news", "event": "still-here"}))
        .await;
    let frame = stream.next().await;
    assert_eq!(frame.event, "still-here");
    assert_eq!(frame.id.as_deref(), sent["id"].as_str());
}

#[actix_web::test]
async fn after_a_refresh_a_stream_answers_to_the_token_it_holds_now() {
    for storage in ["memory", "disk"] {
        let server = spawn(&[("STORAGE", storage)]).await;
        let first = issued_now("alice", Some("first-a"));
        let (mut stream, connected) = server.subscribe(&first, "").await;
        let client_id = connected["client_id"].as_str().unwrap().to_owned();
        let second = issued_now("alice", Some("second-b"));
        assert_eq!(refresh(&server, &client_id, &second).await.status, 204);

        // The token it was opened with is no longer the one it holds.
        assert_eq!(revoke(&server, json!({"jti": "first-a"})).await.status, 202);
        server
            .send(json!({"user": "alice", "event": "still-open"}))
            .await;
        assert_eq!(stream.next().await.event, "still-open", "{storage}");

        assert_eq!(
            revoke(&server, json!({"jti": "second-b"})).await.status,
            202
        );
        let names = stream.names_until_end().await;
        assert_eq!(names, ["revoked"], "{storage}");
    }
}

#[actix_web::test]
async fn no_stream_opened_while_a_revocation_is_made_outlives_it() {
    for storage in ["memory", "disk"] {
        let server = spawn(&[("STORAGE", storage), ("MAX_CONNECTIONS_PER_USER", "100")]).await;
        let leaked = issued_now("mallory", Some("leaked"));
        // Reconnects racing the revocation: each either is refused or ends.
        let racing: Vec<_> = (0..30)
            .map(|_| {
                let request = server
                    .client()
                    .get(server.url("/api/events"))
                    .bearer_auth(&leaked);
                actix_web::rt::spawn(async move { Sse::open(request).await })
            })
            .collect();
        let answer = revoke(&server, json!({"jti": "leaked"})).await;
        assert_eq!(answer.status, 202, "{answer}");
        for stream in racing {
            let mut stream = stream.await.unwrap();
            if stream.status == 200 {
                let names = stream.names_until_end().await;
                assert_eq!(
                    names.last().map(String::as_str),
                    Some("revoked"),
                    "{storage}: {names:?}"
                );
            } else {
                assert_eq!(stream.status, 401, "{storage}");
            }
        }
        // And once answered, none opens at all.
        let after = server.get_events(&leaked, "").await;
        assert_eq!(after.json()["error"], "token_revoked", "{storage}");
    }
}

#[actix_web::test]
async fn a_ticket_refused_for_the_request_or_the_limits_is_not_spent() {
    let server = spawn(&[("MAX_CONNECTIONS_PER_USER", "1")]).await;
    let token = user_token("alice", &["news"]);
    let bought = buy_ticket(&server, &token).await;
    let ticket = bought.json()["ticket"].as_str().unwrap().to_owned();

    let forbidden = open_with_ticket(&server, &ticket, "channel=secret").await;
    assert_eq!(forbidden.status, 403);
    let malformed = open_with_ticket(&server, &ticket, "channel=no%20spaces").await;
    assert_eq!(malformed.status, 400);

    // Alice's one stream is open: the ticket's stream is refused, not spent.
    let (held, _) = server.subscribe(&token, "").await;
    let over = open_with_ticket(&server, &ticket, "channel=news").await;
    assert_eq!(over.status, 429);
    drop(held);
    server.wait_for_connections(0).await;

    let mut opened = open_with_ticket(&server, &ticket, "channel=news").await;
    assert_eq!(
        opened.status, 200,
        "the ticket was kept through three refusals"
    );
    assert_eq!(opened.next().await.event, "connected");
    let again = open_with_ticket(&server, &ticket, "channel=news").await;
    assert_eq!(again.status, 401, "and is spent once");
}
