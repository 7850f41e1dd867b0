//! Publishing: who may, and what bad input gets.

use actix_web::cookie::Cookie;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn bad_publish_requests_get_the_contract_status_and_code() {
    let server = spawn(&[("MAX_BODY_BYTES", "1024"), ("MAX_BATCH", "3")]).await;
    let (mut watcher, _) = server
        .subscribe(&user_token("alice", &["*"]), "channel=news")
        .await;
    let admin = admin_token();
    let json_post = || {
        server
            .client()
            .post(server.url("/api/send"))
            .bearer_auth(&admin)
            .insert_header(("content-type", "application/json"))
    };
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(2000));
    let cases: Vec<(&str, awc::ClientRequest, String, u16, &str)> = vec![
        (
            "no token",
            server
                .client()
                .post(server.url("/api/send"))
                .insert_header(("content-type", "application/json")),
            "{}".into(),
            401,
            "missing_token",
        ),
        (
            "not admin",
            server
                .client()
                .post(server.url("/api/send"))
                .bearer_auth(user_token("alice", &[]))
                .insert_header(("content-type", "application/json")),
            "{}".into(),
            403,
            "forbidden",
        ),
        (
            "token in query",
            server
                .client()
                .post(server.url(&format!("/api/send?token={admin}")))
                .insert_header(("content-type", "application/json")),
            "{}".into(),
            401,
            "missing_token",
        ),
        (
            "no content type",
            server
                .client()
                .post(server.url("/api/send"))
                .bearer_auth(&admin),
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "text/plain",
            server
                .client()
                .post(server.url("/api/send"))
                .bearer_auth(&admin)
                .insert_header(("content-type", "text/plain")),
            "{}".into(),
            415,
            "unsupported_media_type",
        ),
        ("too large", json_post(), big, 413, "payload_too_large"),
        (
            "malformed JSON",
            json_post(),
            "{\"event\":".into(),
            400,
            "bad_request",
        ),
        (
            "not an object",
            json_post(),
            "\"hello\"".into(),
            400,
            "bad_request",
        ),
        (
            "CRLF in event name",
            json_post(),
            r#"{"event":"a\r\nid: 1"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "NUL in event name",
            json_post(),
            r#"{"event":"a\u0000"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "long event name",
            json_post(),
            format!(r#"{{"event":"{}"}}"#, "e".repeat(65)),
            400,
            "bad_request",
        ),
        (
            "bad channel",
            json_post(),
            r#"{"channel":"a\nb"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "bad user",
            json_post(),
            r#"{"user":"a\u0000b"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "empty targets",
            json_post(),
            r#"{"users":[],"channels":[]}"#.into(),
            400,
            "bad_request",
        ),
        (
            "unknown field",
            json_post(),
            r#"{"chanel":"news"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "batch too big",
            json_post(),
            "[{},{},{},{}]".into(),
            400,
            "bad_request",
        ),
        ("empty batch", json_post(), "[]".into(), 400, "bad_request"),
        (
            "one bad item",
            json_post(),
            r#"[{"channel":"news"},{"event":"bad name"}]"#.into(),
            400,
            "bad_request",
        ),
    ];
    for (case, request, body, status, code) in cases {
        let answer = Answer::of(request.send_body(body)).await;
        assert_eq!(answer.status, status, "{case}: {answer}");
        assert_eq!(answer.json()["error"], code, "{case}: {answer}");
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }
    assert_eq!(
        server.stats().await["events_published"],
        0,
        "no bad request published anything"
    );
    server
        .send(json!({"event": "good", "channel": "news"}))
        .await;
    assert_eq!(
        watcher.next().await.event,
        "good",
        "the first event the watcher sees is the good one"
    );
}

#[actix_web::test]
async fn a_cookie_alone_publishes_only_from_a_trusted_origin() {
    let server = spawn(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]).await;
    let cookie = Cookie::new("herald_token", admin_token());
    let post = |origin: Option<&str>| {
        let mut request = server
            .client()
            .post(server.url("/api/send"))
            .cookie(cookie.clone())
            .insert_header(("content-type", "application/json"));
        if let Some(origin) = origin {
            request = request.insert_header(("origin", origin));
        }
        request
    };
    let own = format!("http://127.0.0.1:{}", server.port);
    for (origin, status) in [
        (Some("https://evil.example"), 403),
        (None, 403),
        (Some("null"), 403),
        (Some(own.as_str()), 202),
        (Some("https://app.example"), 202),
    ] {
        let answer = Answer::of(post(origin).send_body("{}")).await;
        assert_eq!(answer.status, status, "origin {origin:?}: {answer}");
    }
    // A Bearer header needs no Origin: it cannot be sent cross-site by a browser on its own.
    let request = server
        .client()
        .post(server.url("/api/send"))
        .bearer_auth(admin_token())
        .insert_header(("origin", "https://evil.example"))
        .insert_header(("content-type", "application/json"));
    let answer = Answer::of(request.send_body("{}")).await;
    assert_eq!(answer.status, 202, "{answer}");
}

#[actix_web::test]
async fn content_type_with_a_charset_is_accepted() {
    let server = spawn(&[]).await;
    let request = server
        .client()
        .post(server.url("/api/send"))
        .bearer_auth(admin_token())
        .insert_header(("content-type", "application/json; charset=utf-8"));
    let answer = Answer::of(request.send_body(r#"{"event":"ok"}"#)).await;
    assert_eq!(answer.status, 202, "{answer}");
    assert!(answer.json()["id"].is_string());
    assert_eq!(answer.json()["recipients"], 0);
}
