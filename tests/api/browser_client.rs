//! Herald's browser client (`/herald.js`) in a real headless Chromium: tabs of
//! one browser sharing one stream, a leader tab closing in the middle, each
//! tab on its own stream, tokens in the header only, and a token refreshed in
//! place.
//!
//! Each tab opens a page of Herald's own origin (`/healthz`: any page of the
//! origin will do) and runs [`HARNESS`] in it, which imports `/herald.js`,
//! connects, and records what the client hands the page.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::browser::{Browser, WindowHandle};
use crate::helpers::*;

/// Runs in a tab: connects with the options given (`share`, and `tokens` for
/// `getToken` mode) and records into `window.log` every `n` event's number,
/// every stream opened (`connected`), every status, every in-place token
/// refresh, and every request the client makes (URL and `Authorization`).
const HARNESS: &str = r#"
return (async (opts) => {
  const log = { ns: [], connected: [], statuses: [], refreshes: 0, tokens: 0, requests: [] };
  window.log = log;
  const realFetch = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const headers = init.headers || {};
    log.requests.push({ url: String(input), authorization: headers.Authorization || null });
    return realFetch(input, init);
  };
  const { connect } = await import('/herald.js');
  const options = { share: opts.share };
  if (opts.tokens) {
    options.getToken = async () => opts.tokens[Math.min(log.tokens++, opts.tokens.length - 1)];
  }
  const herald = connect(options);
  window.herald = herald;
  herald.on('n', (data) => log.ns.push(data.n));
  herald.on('connected', (data) => log.connected.push(data.client_id));
  herald.onStatus((status) => log.statuses.push(status));
  herald.onRefresh(() => { log.refreshes += 1; });
  return true;
})(arguments[0]);
"#;

/// What a tab's harness has seen so far.
const STATE: &str = "return { role: herald.role, status: herald.status, ns: log.ns, \
     connected: log.connected, statuses: log.statuses, refreshes: log.refreshes, \
     tokens: log.tokens, requests: log.requests, \
     resources: performance.getEntriesByType('resource').map((entry) => entry.name) };";

/// Longest wait for the tabs: four of them on a busy two-core machine are slow.
const TABS_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens Herald's origin in the current tab and starts the harness there.
async fn start_client(browser: &Browser, server: &TestServer, options: Value) {
    browser.goto(&server.url("/healthz")).await;
    let started = browser.run(HARNESS, json!([options])).await;
    assert_eq!(started, Value::Bool(true), "the harness started");
}

/// `count` tabs (the current one first), each running a client with `options`.
async fn open_tabs(
    browser: &Browser,
    server: &TestServer,
    count: usize,
    options: Value,
) -> Vec<WindowHandle> {
    let mut tabs = vec![browser.current_tab().await];
    for _ in 1..count {
        tabs.push(browser.new_tab().await);
    }
    for tab in &tabs {
        browser.switch_to(tab).await;
        start_client(browser, server, options.clone()).await;
    }
    tabs
}

async fn state_of(browser: &Browser, tab: &WindowHandle) -> Value {
    browser.switch_to(tab).await;
    browser.run(STATE, json!([])).await
}

/// Polls every tab until `accept` takes its state; returns the states.
async fn wait_for_tabs(
    browser: &Browser,
    tabs: &[WindowHandle],
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + TABS_TIMEOUT;
    loop {
        let mut states = Vec::new();
        for tab in tabs {
            states.push(state_of(browser, tab).await);
        }
        if states.iter().all(&accept) {
            return states;
        }
        let brief: Vec<Value> = states
            .iter()
            .map(|s| json!({"role": s["role"], "status": s["status"], "events": s["ns"].as_array().map(Vec::len)}))
            .collect();
        assert!(
            Instant::now() < deadline,
            "{what}: not within {TABS_TIMEOUT:?}; tabs: {brief:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts a tab's state once it has received at least `count` events.
fn has_events(count: usize) -> impl Fn(&Value) -> bool {
    move |state| state["ns"].as_array().is_some_and(|ns| ns.len() >= count)
}

/// Waits until every tab has `count` events, then checks that each got
/// exactly events 0 to `count - 1`, in order, once. Returns the states.
async fn every_tab_gets(browser: &Browser, tabs: &[WindowHandle], count: u64) -> Vec<Value> {
    let what = format!("{count} events in every tab");
    let states = wait_for_tabs(browser, tabs, &what, has_events(count as usize)).await;
    let expected: Vec<u64> = (0..count).collect();
    for (i, state) in states.iter().enumerate() {
        assert_eq!(
            numbers(state),
            expected,
            "tab {i}: every event, in order, once"
        );
    }
    states
}

fn numbers(state: &Value) -> Vec<u64> {
    state["ns"]
        .as_array()
        .expect("a list of numbers")
        .iter()
        .map(|n| n.as_u64().expect("a number"))
        .collect()
}

/// Publishes events `n` in `range` to `user`, one request each, in order.
async fn publish_numbers(server: &TestServer, user: &str, range: std::ops::Range<u64>) {
    for n in range {
        server
            .send(json!({"user": user, "event": "n", "data": {"n": n}}))
            .await;
    }
}

/// Signs the browser in with a token cookie, as an app's back end would.
async fn sign_in_with_cookie(browser: &Browser, server: &TestServer, user: &str) {
    browser.goto(&server.url("/healthz")).await;
    browser
        .add_cookie("herald_token", &user_token(user, &[]))
        .await;
}

fn stream_count(stats: &Value) -> u64 {
    stats["connections"].as_u64().expect("connections in stats")
}

#[actix_web::test]
async fn four_tabs_share_one_stream_and_each_receives_all_300_events_in_order_once() {
    let server = spawn(&[]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    sign_in_with_cookie(&browser, &server, "ann").await;
    let tabs = open_tabs(&browser, &server, 4, json!({})).await;
    let states = wait_for_tabs(&browser, &tabs, "every tab open", |s| s["status"] == "open").await;
    let roles: Vec<&str> = states.iter().map(|s| s["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles.iter().filter(|role| **role == "leader").count(),
        1,
        "one leader: {roles:?}"
    );
    assert_eq!(roles.iter().filter(|role| **role == "follower").count(), 3);
    let stats = server.stats().await;
    assert_eq!(stream_count(&stats), 1, "one stream for four tabs: {stats}");

    publish_numbers(&server, "ann", 0..300).await;
    every_tab_gets(&browser, &tabs, 300).await;
    assert_eq!(stream_count(&server.stats().await), 1, "still one stream");
    browser.close().await;
}

#[actix_web::test]
async fn when_the_leader_tab_closes_another_leads_within_two_seconds_and_no_tab_misses_or_repeats_an_event(
) {
    let server = spawn(&[]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    sign_in_with_cookie(&browser, &server, "bo").await;
    let tabs = open_tabs(&browser, &server, 4, json!({})).await;
    wait_for_tabs(&browser, &tabs, "every tab open", |s| s["status"] == "open").await;
    publish_numbers(&server, "bo", 0..150).await;
    let states = wait_for_tabs(&browser, &tabs, "the first 150 events", has_events(150)).await;
    let leader = states
        .iter()
        .position(|s| s["role"] == "leader")
        .expect("a leader tab");
    let first_stream = states[leader]["connected"][0].clone();

    // The leader's tab goes away while events keep coming.
    browser.switch_to(&tabs[leader]).await;
    browser.close_tab().await;
    let closed_at = Instant::now();
    let rest: Vec<WindowHandle> = tabs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, tab)| tab.clone())
        .collect();
    // Another tab leads, on a stream of its own, within two seconds, while
    // the rest of the events are published.
    let deadline = closed_at + Duration::from_secs(2);
    let takeover = async {
        loop {
            for tab in &rest {
                let state = state_of(&browser, tab).await;
                let streams = state["connected"].as_array().unwrap();
                if state["role"] == "leader"
                    && state["status"] == "open"
                    && streams.last() != Some(&first_stream)
                {
                    return (tab.clone(), closed_at.elapsed());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no tab took over within two seconds of the leader closing"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((new_leader, took), ()) = tokio::join!(takeover, publish_numbers(&server, "bo", 150..300));

    let states = every_tab_gets(&browser, &rest, 300).await;
    let leaders = states.iter().filter(|s| s["role"] == "leader").count();
    assert_eq!(leaders, 1, "one leader after the takeover");
    browser.switch_to(&new_leader).await;
    server.wait_for_connections(1).await;
    eprintln!("takeover after the leader closed: {took:?}");
    browser.close().await;
}

#[actix_web::test]
async fn with_sharing_off_each_of_four_tabs_holds_its_own_stream() {
    let server = spawn(&[]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    sign_in_with_cookie(&browser, &server, "cy").await;
    let tabs = open_tabs(&browser, &server, 4, json!({"share": false})).await;
    let states = wait_for_tabs(&browser, &tabs, "every tab open", |s| s["status"] == "open").await;
    assert!(states.iter().all(|s| s["role"] == "alone"));
    server.wait_for_connections(4).await;
    let streams: std::collections::HashSet<String> = states
        .iter()
        .map(|s| s["connected"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streams.len(), 4, "four different streams");

    publish_numbers(&server, "cy", 0..20).await;
    every_tab_gets(&browser, &tabs, 20).await;
    browser.close().await;
}

#[actix_web::test]
async fn with_get_token_the_token_goes_in_the_header_and_never_in_a_url() {
    let server = spawn(&[]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let token = user_token("dee", &[]);
    // No cookie in this browser: only the header can carry the token.
    browser.goto(&server.url("/healthz")).await;
    start_client(&browser, &server, json!({"tokens": [token]})).await;
    let tab = browser.current_tab().await;
    wait_for_tabs(
        &browser,
        std::slice::from_ref(&tab),
        "the stream open",
        |s| s["status"] == "open",
    )
    .await;
    publish_numbers(&server, "dee", 0..3).await;
    let state = wait_for_tabs(
        &browser,
        std::slice::from_ref(&tab),
        "3 events",
        has_events(3),
    )
    .await
    .remove(0);
    assert_eq!(numbers(&state), [0, 1, 2], "the stream is dee's");
    assert_eq!(state["tokens"], 1, "getToken was asked once");

    let requests = state["requests"].as_array().unwrap();
    assert!(
        requests
            .iter()
            .any(|r| r["url"].as_str().unwrap().contains("/api/events")),
        "the client's requests were seen: {requests:?}"
    );
    for request in requests {
        assert_eq!(
            request["authorization"],
            json!(format!("Bearer {token}")),
            "the header carries the token: {request}"
        );
    }
    let cookies = browser.run("return document.cookie;", json!([])).await;
    assert_eq!(cookies, json!(""), "no cookie could have carried it");
    let urls: Vec<&str> = requests
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .chain(
            state["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap()),
        )
        .collect();
    for url in urls {
        assert!(
            !url.contains(&token) && !url.contains("token="),
            "a token in a URL: {url}"
        );
    }
    browser.close().await;
}

#[actix_web::test]
async fn on_token_expiring_the_client_refreshes_in_place_and_the_stream_never_closes() {
    // The first token expires inside the warning window, so the warning comes
    // at once; no leeway, so without a refresh the stream would end at its exp.
    // The second token lasts an hour, well outside the window.
    let server = spawn(&[
        ("TOKEN_EXPIRY_WARNING_SECS", "60"),
        ("JWT_LEEWAY_SECS", "0"),
    ])
    .await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let expires = now() + 4;
    let short = token(json!({"sub": "eve", "exp": expires}));
    let long = user_token("eve", &[]);
    browser.goto(&server.url("/healthz")).await;
    start_client(&browser, &server, json!({"tokens": [short, long]})).await;
    let tab = browser.current_tab().await;
    let state = wait_for_tabs(&browser, std::slice::from_ref(&tab), "a refresh", |s| {
        s["refreshes"].as_u64() >= Some(1)
    })
    .await
    .remove(0);
    assert_eq!(state["tokens"], 2, "a second token was asked for");
    let refresh = state["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["url"].as_str().unwrap().contains("/token"))
        .expect("the refresh request")
        .clone();
    assert_eq!(refresh["authorization"], json!(format!("Bearer {long}")));

    // Past the first token's expiry the same stream still delivers.
    while now() <= expires {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    publish_numbers(&server, "eve", 0..2).await;
    let state = wait_for_tabs(
        &browser,
        std::slice::from_ref(&tab),
        "2 events",
        has_events(2),
    )
    .await
    .remove(0);
    assert_eq!(numbers(&state), [0, 1]);
    assert_eq!(
        state["connected"].as_array().unwrap().len(),
        1,
        "one stream, never reopened: {state}"
    );
    assert_eq!(
        state["statuses"],
        json!(["open"]),
        "never closed or reconnecting"
    );
    browser.close().await;
}

// ---------------------------------------------------------------------------
// React: a page of an app on its own origin, with useHerald
// ---------------------------------------------------------------------------

/// The files the app's origin serves, by path: the page and its script
/// (`tests/fixtures/react/`), the client as an app would install it
/// (`clients/js/`), and React's own browser builds from the npm registry.
fn app_file(path: &str) -> Option<(&'static str, std::path::PathBuf)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/react");
    let node_modules = root.join("clients/js/node_modules");
    let js = "text/javascript; charset=utf-8";
    Some(match path {
        "/" => ("text/html; charset=utf-8", fixtures.join("index.html")),
        "/app.js" => (js, fixtures.join("app.js")),
        "/vendor/react-module.js" => (js, fixtures.join("react-module.js")),
        "/vendor/react.js" => (js, node_modules.join("react/umd/react.development.js")),
        "/vendor/react-dom.js" => (
            js,
            node_modules.join("react-dom/umd/react-dom.development.js"),
        ),
        "/client/herald.js" => (js, root.join("clients/js/herald.js")),
        "/client/react.js" => (js, root.join("clients/js/react.js")),
        _ => return None,
    })
}

/// Serves the app's origin on a free port; `/token` answers `token`, as the
/// app's back end would hand its page a token. Returns the origin.
async fn serve_app(token: String) -> String {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    let server = HttpServer::new(move || {
        let token = token.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let token = token.clone();
            async move {
                if req.path() == "/token" {
                    return HttpResponse::Ok().content_type("text/plain").body(token);
                }
                match app_file(req.path()) {
                    Some((content_type, file)) => match std::fs::read(&file) {
                        Ok(body) => HttpResponse::Ok().content_type(content_type).body(body),
                        Err(e) => HttpResponse::InternalServerError()
                            .body(format!("{}: {e}", file.display())),
                    },
                    None => HttpResponse::NotFound().finish(),
                }
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("the app's origin binds");
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}

#[actix_web::test]
async fn a_react_page_with_use_herald_renders_the_events_as_they_arrive() {
    let react = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/js/node_modules/react-dom/umd/react-dom.development.js"
    );
    if !std::path::Path::new(react).is_file() {
        skip("React is not installed for the client's tests (cd clients/js && npm ci)");
        return;
    }
    let app = serve_app(user_token("fay", &[])).await;
    let server = spawn(&[("CORS_ALLOWED_ORIGINS", app.as_str())]).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser
        .goto(&format!("{app}/?herald={}", server.url("")))
        .await;
    browser
        .wait_for("the open status", "#status", |status| status == "open")
        .await;
    for text in ["first", "second", "third"] {
        server
            .send(json!({"user": "fay", "event": "note", "data": {"text": text}}))
            .await;
    }
    // An event of a type the hook was not asked for is not rendered.
    server
        .send(json!({"user": "fay", "event": "other", "data": {"text": "hidden"}}))
        .await;
    server
        .send(json!({"user": "fay", "event": "note", "data": {"text": "fourth"}}))
        .await;
    browser
        .wait_for("the fourth note", "#notes li:nth-child(4)", |text| {
            text == "fourth"
        })
        .await;
    assert_eq!(
        browser.texts("#notes li").await,
        ["first", "second", "third", "fourth"],
        "every note, in order, once; no other type"
    );
    browser.close().await;
}
