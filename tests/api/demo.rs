//! The demo page's routes over plain HTTP: the page without sign-in, and
//! `/demo/login` and `/demo/logout`. The page itself runs in a browser in
//! `browser.rs`.

use actix_web::cookie::{time, SameSite};
use herald::DEMO_TOKEN_TTL_SECS;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn demo_login_answers_a_json_404_when_it_is_off() {
    let server = spawn(&[("DEMO_LOGIN", "false")]).await;
    for path in ["/demo/login", "/demo/logout"] {
        let answer = server
            .post_form(path, &[("user", "alice"), ("admin", "on")], None)
            .await;
        assert_eq!(answer.status, 404, "{path}");
        assert!(answer.cookie("herald_token").is_none(), "{path}");
        let body = answer.json();
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
}

#[actix_web::test]
async fn without_demo_login_the_page_says_how_to_get_a_token() {
    let server = spawn(&[("DEMO_LOGIN", "false")]).await;
    let answer = server.get("/").await;
    assert_eq!(answer.status, 200);
    let page = answer.text();
    assert!(page.contains(r#"id="how-to-token""#), "{page}");
    assert!(page.contains("herald_token"), "names the cookie");
    assert!(!page.contains("/demo/login"), "no sign-in form");
}

#[actix_web::test]
async fn demo_login_sets_an_http_only_strict_cookie_for_the_token_lifetime() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let answer = server
        .demo_login(&[("user", " dave "), ("admin", "on")])
        .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some("/"));
    let cookie = answer.cookie("herald_token").expect("the auth cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(SameSite::Strict));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(
        cookie.max_age(),
        Some(time::Duration::seconds(DEMO_TOKEN_TTL_SECS as i64))
    );

    // The token is for the trimmed name, is an admin's, and opens a stream.
    let token = cookie.value().to_owned();
    let (_stream, connected) = server.subscribe(&token, "channel=anything").await;
    assert_eq!(connected["user"], "dave");
    let published = server
        .publish(&token, &json!({"event": "ok", "user": "dave"}))
        .await;
    assert_eq!(published.status, 202, "an admin may publish");

    // Signing out clears the cookie.
    let answer = server.demo_logout().await;
    assert_eq!(answer.status, 303);
    let cleared = answer.cookie("herald_token").expect("a removal cookie");
    assert_eq!(cleared.value(), "");
    assert_eq!(cleared.max_age(), Some(time::Duration::ZERO));
}

#[actix_web::test]
async fn demo_login_refuses_a_bad_user_name_or_another_origin() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let too_long = "x".repeat(257);
    for (user, status, code) in [
        ("", 400, "bad_request"),
        ("   ", 400, "bad_request"),
        ("line\nbreak", 400, "bad_request"),
        (too_long.as_str(), 400, "bad_request"),
    ] {
        let answer = server.demo_login(&[("user", user)]).await;
        assert_eq!(answer.status, status, "{user:?}");
        assert!(answer.cookie("herald_token").is_none(), "{user:?}");
        let body = answer.json();
        assert_eq!(body["error"], code, "{user:?}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("user"),
            "{user:?}: {body}"
        );
    }

    // Another site may not sign a visitor in as someone of its choosing.
    let answer = server
        .post_form(
            "/demo/login",
            &[("user", "alice")],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(answer.cookie("herald_token").is_none());
    assert_eq!(answer.json()["error"], "forbidden");
}
