//! The demo page in a real headless Chromium, driven through chromedriver
//! (see `helpers/browser.rs`). Without `chromium` and `chromedriver` these
//! tests print a line starting with `SKIPPED:` and pass, unless `CI=true`,
//! where they fail.

use serde_json::{json, Value};

use crate::helpers::browser::Browser;
use crate::helpers::redis::Redis;
use crate::helpers::*;

#[actix_web::test]
async fn signing_in_shows_an_open_stream_for_that_user() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.sign_in(&server, "alice", false).await;
    browser.wait_until_connected().await;

    assert_eq!(browser.text("#who-user").await, "alice");
    assert_eq!(browser.text("#who-role").await, "user");
    assert_eq!(browser.text("#state").await, "open");
    assert_eq!(browser.text("#stream-user").await, "alice");
    assert_eq!(browser.text("#stream-channels").await, "none");
    assert!(
        !browser.exists("#send-form").await,
        "a user who is not admin gets no send form"
    );

    browser.click("#sign-out").await;
    browser.wait_for_element("#login-form").await;
    assert!(!browser.exists("#app").await, "signed out: no stream");
    browser.close().await;
}

#[actix_web::test]
async fn an_event_published_to_the_user_shows_its_name_id_and_data() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.sign_in(&server, "alice", false).await;
    browser.wait_until_connected().await;

    let answer = server
        .send(json!({
            "event": "update",
            "user": "alice",
            "data": {"text": "<b id=\"injected\">hello</b>", "count": 3},
        }))
        .await;
    let id = answer["id"].as_str().expect("the answer carries the id");
    let item = format!("#events li[data-id=\"{id}\"]");
    browser.wait_for_element(&item).await;

    assert_eq!(browser.text(&format!("{item} .event-name")).await, "update");
    assert_eq!(browser.text(&format!("{item} .event-id")).await, id);
    let shown: Value = serde_json::from_str(&browser.text(&format!("{item} .event-data")).await)
        .expect("the data is shown as JSON");
    assert_eq!(
        shown,
        json!({"text": "<b id=\"injected\">hello</b>", "count": 3})
    );
    assert!(
        !browser.exists("#injected").await,
        "event data is shown as text, never parsed as markup"
    );
    assert_eq!(browser.text("#event-count").await, "1");
    browser.close().await;
}

#[actix_web::test]
async fn the_page_lists_recent_notifications_then_goes_live_without_repeats() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut earlier = Vec::new();
    for n in 0..3 {
        let answer = server
            .send(json!({"event": "update", "user": "alice", "data": {"n": n}}))
            .await;
        earlier.push(answer["id"].as_str().unwrap().to_owned());
    }
    server
        .send(json!({"event": "update", "user": "bob", "data": "not hers"}))
        .await;
    browser.sign_in(&server, "alice", false).await;
    browser.wait_until_connected().await;

    for id in &earlier {
        let item = format!("#events li.event-earlier[data-id=\"{id}\"]");
        browser.wait_for_element(&item).await;
    }
    assert_eq!(
        browser.text("#stream-replayed").await,
        "0",
        "nothing missed"
    );
    let live = server
        .send(json!({"event": "update", "user": "alice", "data": "live"}))
        .await;
    let live = live["id"].as_str().unwrap().to_owned();
    browser
        .wait_for_element(&format!("#events li[data-id=\"{live}\"]"))
        .await;
    let mut shown: Vec<String> = browser
        .run(
            "return [...document.querySelectorAll('#events li')].map(li => li.dataset.id)",
            json!([]),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    shown.reverse();
    let mut expected = earlier.clone();
    expected.push(live);
    assert_eq!(
        shown, expected,
        "oldest to newest, each once, nothing of bob's"
    );
    browser.close().await;
}

#[actix_web::test]
async fn the_page_refreshes_its_token_in_place_and_the_stream_lives_on() {
    let server = spawn(&[
        ("DEMO_LOGIN", "true"),
        ("DEMO_TOKEN_TTL_SECS", "4"),
        ("TOKEN_EXPIRY_WARNING_SECS", "2"),
        ("JWT_LEEWAY_SECS", "0"),
    ])
    .await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let signed_in = now();
    browser.sign_in(&server, "alice", false).await;
    browser.wait_until_connected().await;
    let client_id = browser.text("#stream-client-id").await;

    // Two refreshes: the first token (4 s) is gone by the second.
    browser
        .wait_for("a second refresh", "#token-refreshes", |text| text == "2")
        .await;
    assert!(now() >= signed_in + 4, "past the first token's expiry");
    assert_eq!(browser.text("#state").await, "open");
    assert_eq!(
        browser.text("#stream-client-id").await,
        client_id,
        "the same stream, never reopened"
    );
    let answer = server
        .send(json!({"event": "update", "user": "alice", "data": "after refresh"}))
        .await;
    let id = answer["id"].as_str().unwrap();
    browser
        .wait_for_element(&format!("#events li[data-id=\"{id}\"]"))
        .await;
    assert!(!browser.exists("#expired:not([hidden])").await);
    browser.close().await;
}

#[actix_web::test]
async fn an_event_for_another_user_is_not_shown() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.sign_in(&server, "alice", false).await;
    browser.wait_until_connected().await;

    // Published in this order, so a wrongly delivered event for bob would
    // arrive before alice's and be on the page by the time hers is.
    let for_bob = server
        .send(json!({"event": "update", "user": "bob", "data": "for bob"}))
        .await;
    let for_alice = server
        .send(json!({"event": "update", "user": "alice", "data": "for alice"}))
        .await;
    let alice_id = for_alice["id"].as_str().expect("an id");
    browser
        .wait_for_element(&format!("#events li[data-id=\"{alice_id}\"]"))
        .await;

    let shown = browser
        .run(
            "return [...document.querySelectorAll('#events li')].map(li => li.dataset.id);",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!([alice_id]), "bob's event {for_bob} leaked");
    browser.close().await;
}

#[actix_web::test]
async fn an_admin_sends_an_event_from_the_form_and_sees_it_arrive() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.sign_in(&server, "ops", true).await;
    browser.wait_until_connected().await;
    assert_eq!(browser.text("#who-role").await, "admin");

    // A name the page has never seen: the client hands every name on.
    browser.fill("#send-event", "deploy.finished").await;
    browser.fill("#send-data", r#"{"version": 42}"#).await;
    browser.select("#send-target-kind", "user").await;
    browser.fill("#send-target", "ops").await;
    browser.click("#send").await;

    let result = browser
        .wait_for("the send answer", "#send-result", |text| {
            text.starts_with("202")
        })
        .await;
    let answer: Value = serde_json::from_str(result.split_once('\n').expect("status line").1)
        .expect("the answer is JSON");
    let id = answer["id"].as_str().expect("the answer carries the id");
    let item = format!("#events li[data-id=\"{id}\"]");
    browser.wait_for_element(&item).await;
    assert_eq!(
        browser.text(&format!("{item} .event-name")).await,
        "deploy.finished"
    );
    let shown: Value = serde_json::from_str(&browser.text(&format!("{item} .event-data")).await)
        .expect("JSON data");
    assert_eq!(shown, json!({"version": 42}));

    // A refusal is shown too, with the server's error.
    browser.fill("#send-data", "{not json").await;
    browser.click("#send").await;
    browser
        .wait_for("the JSON error", "#send-result", |text| {
            text.contains("not valid JSON")
        })
        .await;
    browser.close().await;
}

#[actix_web::test]
async fn joining_a_channel_shows_its_events_without_losing_or_repeating_any() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.resize(1280, 900).await;
    browser.sign_in(&server, "carol", false).await;
    browser.wait_until_connected().await;
    let first = server
        .send(json!({"event": "notification", "user": "carol", "data": {"text": "Welcome, Carol"}}))
        .await;
    browser
        .wait_for_element(&format!(
            "#events li[data-id=\"{}\"]",
            first["id"].as_str().expect("an id")
        ))
        .await;
    let first_client = browser.text("#stream-client-id").await;

    // Published while the page is not on the channel: nobody receives it live.
    let headline = server
        .send(json!({"event": "news", "channel": "news", "data": {"title": "Herald ships a demo page"}}))
        .await;
    assert_eq!(headline["recipients"], 0);

    browser.fill("#join-channels", "news, team-42.chat").await;
    browser.click("#join").await;
    browser
        .wait_for("the joined channels", "#stream-channels", |text| {
            text == "news, team-42.chat"
        })
        .await;
    assert_ne!(
        browser.text("#stream-client-id").await,
        first_client,
        "joining opens a new stream"
    );
    assert_eq!(browser.text("#state").await, "open");
    // The new stream resumed after the last event the page saw: the headline
    // is replayed (nothing lost), the welcome is not (nothing repeated).
    assert_eq!(browser.text("#stream-replayed").await, "1");
    let id = headline["id"].as_str().expect("an id");
    let item = format!("#events li[data-id=\"{id}\"]");
    browser.wait_for_element(&item).await;
    assert_eq!(browser.text(&format!("{item} .event-name")).await, "news");

    server
        .send(
            json!({"event": "alert", "data": {"text": "Maintenance at 22:00 UTC", "minutes": 15}}),
        )
        .await;
    server
        .send(json!({"event": "message", "channel": "team-42.chat", "data": {"from": "dave", "text": "<script>alert(1)</script>"}}))
        .await;
    browser
        .wait_for("four events", "#event-count", |text| text == "4")
        .await;
    assert_eq!(
        browser.texts("#events li .event-name").await,
        ["message", "alert", "news", "notification"],
        "newest first, each once"
    );

    browser.save_screenshot("demo-page.png").await;
    browser.resize(390, 844).await;
    browser.save_screenshot("demo-page-phone.png").await;
    browser.close().await;
}

/// Stops the page's node and returns its port once the page has seen its
/// stream go down (reconnecting).
async fn stop_page_node(browser: &Browser, node: TestServer) -> String {
    let port = node.port.to_string();
    node.stop().await;
    browser
        .wait_for("the reconnecting state", "#state", |state| state != "open")
        .await;
    port
}

/// Starts a node on `port` with `pairs`.
async fn start_on(port: &str, pairs: &[(&str, &str)]) -> TestServer {
    let mut pairs = pairs.to_vec();
    pairs.push(("PORT", port));
    spawn(&pairs).await
}

#[actix_web::test]
async fn after_its_node_restarts_the_page_shows_events_sent_through_the_other_node_exactly_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let url = redis.url();
    let pairs = [
        ("DEMO_LOGIN", "true"),
        ("REDIS_URL", url.as_str()),
        ("SSE_RETRY_TIMEOUT", "200"),
        ("SHUTDOWN_DRAIN_SECS", "0.1"),
    ];
    let page_node = spawn(&pairs).await;
    let other_node = spawn(&pairs).await;
    browser.sign_in(&page_node, "erin", false).await;
    browser.wait_until_connected().await;
    let before = other_node
        .send(json!({"event": "update", "user": "erin", "data": "before"}))
        .await;
    browser
        .wait_for_element(&format!(
            "#events li[data-id=\"{}\"]",
            before["id"].as_str().unwrap()
        ))
        .await;

    let port = stop_page_node(&browser, page_node).await;
    let mut meanwhile = Vec::new();
    for n in 0..3 {
        let answer = other_node
            .send(json!({"event": "update", "user": "erin", "data": n}))
            .await;
        meanwhile.push(answer["id"].as_str().unwrap().to_owned());
    }
    let page_node = start_on(&port, &pairs).await;
    browser
        .wait_for("the stream open again", "#state", |state| state == "open")
        .await;
    browser
        .wait_for("four events", "#event-count", |count| count == "4")
        .await;
    for id in &meanwhile {
        let shown = browser.run(
            "return document.querySelectorAll(`#events li[data-id=\"${arguments[0]}\"]`).length;",
            json!([id]),
        );
        assert_eq!(shown.await, json!(1), "event {id} shown exactly once");
    }
    assert_eq!(browser.text("#stream-replayed").await, "3");
    assert_eq!(
        browser
            .run(
                "return document.getElementById('missed').hidden;",
                json!([])
            )
            .await,
        json!(true),
        "with Redis nothing was missed"
    );
    drop(page_node);
    browser.close().await;
}

#[actix_web::test]
async fn after_an_in_memory_restart_the_page_says_events_may_have_been_missed() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let pairs = [
        ("DEMO_LOGIN", "true"),
        ("SSE_RETRY_TIMEOUT", "200"),
        ("SHUTDOWN_DRAIN_SECS", "0.1"),
    ];
    let server = spawn(&pairs).await;
    browser.sign_in(&server, "frank", false).await;
    browser.wait_until_connected().await;
    let first = server
        .send(json!({"event": "update", "user": "frank", "data": 1}))
        .await;
    browser
        .wait_for_element(&format!(
            "#events li[data-id=\"{}\"]",
            first["id"].as_str().unwrap()
        ))
        .await;
    let port = stop_page_node(&browser, server).await;
    let server = start_on(&port, &pairs).await;
    browser
        .wait_for("the stream open again", "#state", |state| state == "open")
        .await;
    browser.wait_for_element("#missed:not([hidden])").await;
    assert!(browser
        .text("#missed")
        .await
        .contains("may have been missed"));
    drop(server);
    browser.close().await;
}

#[actix_web::test]
async fn an_expired_token_closes_the_stream_and_says_so() {
    // Without the demo sign-in the page cannot refresh a token itself.
    let server = spawn(&[("DEMO_LOGIN", "false")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    // A short-lived token in the cookie, as a back end would set it.
    // (The leeway of JWT_LEEWAY_SECS lets a slow page still sign in with it.)
    let short_lived = token(json!({"sub": "erin", "exp": now() + 3}));
    browser.goto(&server.url("/")).await;
    browser.add_cookie("herald_token", &short_lived).await;
    browser.goto(&server.url("/")).await;
    // Not "open": on a slow machine the token may already have expired.
    browser
        .wait_for("the connected event", "#stream-user", |text| text == "erin")
        .await;

    browser
        .wait_for("the closed state", "#state", |text| text == "closed")
        .await;
    let notice_shown = browser
        .run(
            "return !document.getElementById('expired').hidden;",
            json!([]),
        )
        .await;
    assert_eq!(notice_shown, Value::Bool(true), "the page says why");
    browser.close().await;
}

#[actix_web::test]
async fn a_user_name_with_markup_is_shown_as_text() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let name = r#"<img id="injected" src="x">"#;
    browser.sign_in(&server, name, false).await;
    browser.wait_until_connected().await;
    assert_eq!(browser.text("#who-user").await, name);
    assert_eq!(browser.text("#stream-user").await, name);
    assert!(!browser.exists("#injected").await);
    browser.close().await;
}
