//! The demo page in a real headless Chromium, driven through chromedriver,
//! and its sign-in endpoints over plain HTTP.
//!
//! Each browser test starts its own chromedriver on a free port with a fresh
//! profile, and a guard ends both when the test ends, passed or failed.
//! Without `chromium` and `chromedriver` the browser tests print a line
//! starting with `SKIPPED:` and pass, unless `CI=true`, where they fail.
//! Waits poll the page's DOM until a deadline; nothing sleeps to wait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::cookie::{time, SameSite};
use fantoccini::cookies::Cookie;
use fantoccini::Locator;
use herald::DEMO_TOKEN_TTL_SECS;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Map, Value};

use crate::helpers::redis::Redis;
use crate::helpers::*;

/// Longest wait for the page: a cold Chromium on a busy two-core machine is slow.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a wait looks at the DOM again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CHROMIUM: &str = "/usr/bin/chromium";
/// One browser at a time: several Chromiums on two cores would make every
/// test slow and the timing-sensitive tests elsewhere flaky.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn signing_in_shows_an_open_stream_for_that_user() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start("signing_in_shows_an_open_stream_for_that_user").await
    else {
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
    let Some(browser) =
        Browser::start("an_event_published_to_the_user_shows_its_name_id_and_data").await
    else {
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
async fn an_event_for_another_user_is_not_shown() {
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start("an_event_for_another_user_is_not_shown").await else {
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
    let Some(browser) =
        Browser::start("an_admin_sends_an_event_from_the_form_and_sees_it_arrive").await
    else {
        return;
    };
    browser.sign_in(&server, "ops", true).await;
    browser.wait_until_connected().await;
    assert_eq!(browser.text("#who-role").await, "admin");

    // A name nobody watches yet: the form must add it, or EventSource would
    // drop the event unseen.
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
    assert!(browser
        .texts("#watched li")
        .await
        .contains(&"deploy.finished".to_owned()));

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
    let Some(browser) =
        Browser::start("joining_a_channel_shows_its_events_without_losing_or_repeating_any").await
    else {
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

    save_screenshot(&browser, "demo-page.png").await;
    browser.resize(390, 844).await;
    save_screenshot(&browser, "demo-page-phone.png").await;
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
    let Some(browser) = Browser::start(
        "after_its_node_restarts_the_page_shows_events_sent_through_the_other_node_exactly_once",
    )
    .await
    else {
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
    let Some(browser) =
        Browser::start("after_an_in_memory_restart_the_page_says_events_may_have_been_missed")
            .await
    else {
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
    let server = spawn(&[("DEMO_LOGIN", "true")]).await;
    let Some(browser) = Browser::start("an_expired_token_closes_the_stream_and_says_so").await
    else {
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
    let Some(browser) = Browser::start("a_user_name_with_markup_is_shown_as_text").await else {
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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Writes a screenshot of the page under `tests/screenshots/`.
async fn save_screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    // The README's screenshots are refreshed only on request
    // (`UPDATE_SCREENSHOTS=1 cargo test --test api browser`), so a test run
    // leaves the tree clean.
    let directory = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&directory).expect("the screenshot directory can be made");
    std::fs::write(directory.join(name), png).expect("the screenshot can be written");
}

/// Where `name` is on `PATH`, if anywhere.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|directory| directory.join(name))
        .find(|path| path.is_file())
}

/// Where chromedriver is, or `None` after printing `SKIPPED:` when it or
/// Chromium is missing. Under `CI=true` a missing program fails the test.
fn browser_programs(test: &str) -> Option<PathBuf> {
    let driver = find_program("chromedriver");
    if let (Some(driver), true) = (driver, Path::new(CHROMIUM).is_file()) {
        return Some(driver);
    }
    let message = format!(
        "{test}: chromium ({CHROMIUM}) or chromedriver is not installed \
         (Debian: apt-get install chromium chromium-driver)"
    );
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{message}");
    }
    // Straight to stderr: the harness swallows a passing test's `eprintln!`,
    // and a skip must be seen. If stderr is gone there is nowhere to report.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {message}; set CI=true to make this a failure"
    );
    None
}

/// The capabilities asking chromedriver for a headless Chromium on `profile`.
fn chromium_capabilities(profile: &Path) -> Map<String, Value> {
    let options = json!({
        "binary": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    Map::from_iter([("goog:chromeOptions".to_owned(), options)])
}

// ---------------------------------------------------------------------------
// chromedriver, one per test
// ---------------------------------------------------------------------------

/// A chromedriver process and the Chromium profile it was given. Dropping it
/// ends both, so a failed test leaves no browser behind.
struct Chromedriver {
    child: Child,
    port: u16,
    /// The fresh `--user-data-dir`; it also names this test's browser processes.
    profile: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it is ready.
    async fn start(program: &Path) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "herald-chromium-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover directory from an earlier run would not be a fresh profile.
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("a profile directory can be made");
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            port,
            profile,
        };
        driver.wait_until_ready().await;
        driver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Polls `/status` until chromedriver reports `ready: true`.
    async fn wait_until_ready(&self) {
        let http = awc::Client::builder().timeout(TIMEOUT).finish();
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(mut response) = http.get(self.url("/status")).send().await {
                if let Ok(status) = response.json::<Value>().await {
                    if status["value"]["ready"] == true {
                        return;
                    }
                }
            }
            actix_web::rt::time::sleep(POLL_INTERVAL).await;
        }
        panic!("chromedriver did not become ready on port {}", self.port);
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The session is normally closed already; after a panic the browser
        // may still run. Its processes carry this test's unique profile path,
        // so they are found by it and ended by PID, and nothing else is.
        for pid in processes_mentioning(&self.profile.to_string_lossy()) {
            // SAFETY: kill(2) with a PID read from /proc has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Fails only if it already exited; either way it is gone after this.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Best effort: a leftover temp directory harms nothing.
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// PIDs of processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .collect()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------
// The page, as the tests see it (built on the WebDriver commands below)
// ---------------------------------------------------------------------------

impl Browser {
    /// Starts chromedriver and a browser session, or returns `None` when the
    /// programs are missing (see [`browser_programs`]).
    async fn start(test: &str) -> Option<Self> {
        let program = browser_programs(test)?;
        let slot = BROWSER_SLOT.lock().await;
        let driver = Chromedriver::start(&program).await;
        Some(Self::open_session(driver, slot).await)
    }

    /// The text of the first element matching `css`; fails if there is none.
    async fn text(&self, css: &str) -> String {
        match self.text_or_null(css).await {
            Value::String(text) => text,
            other => panic!("{css}: no such element ({other})"),
        }
    }

    async fn text_or_null(&self, css: &str) -> Value {
        self.run(
            "const e = document.querySelector(arguments[0]); return e && e.textContent;",
            json!([css]),
        )
        .await
    }

    /// The texts of every element matching `css`, in document order.
    async fn texts(&self, css: &str) -> Vec<String> {
        let texts = self
            .run(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
                json!([css]),
            )
            .await;
        serde_json::from_value(texts).expect("a list of strings")
    }

    async fn exists(&self, css: &str) -> bool {
        self.run(
            "return document.querySelector(arguments[0]) !== null;",
            json!([css]),
        )
        .await
            == Value::Bool(true)
    }

    /// Polls the text of `css` until `accept` takes it; returns that text.
    async fn wait_for(&self, what: &str, css: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            last = self.text_or_null(css).await;
            if let Value::String(text) = &last {
                if accept(text) {
                    return text.clone();
                }
            }
            actix_web::rt::time::sleep(POLL_INTERVAL).await;
        }
        let page = self.run("return document.body.innerText;", json!([])).await;
        panic!(
            "{what} did not appear in {css} within {PAGE_TIMEOUT:?} (last seen: {last}); page:\n{}",
            page.as_str().unwrap_or_default()
        );
    }

    async fn wait_for_element(&self, css: &str) {
        self.wait_for(css, css, |_| true).await;
    }

    /// Picks the option with `value` in the select `css`, as a person would.
    async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// Opens the page, signs in through its form, and waits for the result.
    async fn sign_in(&self, server: &TestServer, user: &str, admin: bool) {
        self.goto(&server.url("/")).await;
        self.fill("#login-user", user).await;
        if admin {
            self.click("#login-admin").await;
        }
        self.click("#sign-in").await;
        self.wait_for_element("#who-user").await;
    }

    /// Waits until the stream is open and its `connected` event has arrived,
    /// so the server knows the stream and a publish will reach it.
    async fn wait_until_connected(&self) {
        self.wait_for("the connected event", "#stream-client-id", |text| {
            text != "—"
        })
        .await;
        self.wait_for("the open state", "#state", |text| text == "open")
            .await;
    }
}

// ---------------------------------------------------------------------------
// WebDriver commands
// ---------------------------------------------------------------------------

/// A headless Chromium session, driven through chromedriver by fantoccini.
struct Browser {
    client: fantoccini::Client,
    /// Fields drop in order: chromedriver and the browser end first...
    _driver: Chromedriver,
    /// ...and only then may the next test start one.
    _slot: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    async fn open_session(
        driver: Chromedriver,
        slot: tokio::sync::MutexGuard<'static, ()>,
    ) -> Self {
        // chromedriver listens on loopback and speaks plain HTTP: no TLS needed.
        let client = fantoccini::ClientBuilder::new(HttpConnector::new())
            .capabilities(chromium_capabilities(&driver.profile))
            .connect(&driver.url(""))
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        Self {
            client,
            _driver: driver,
            _slot: slot,
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Replaces the value of the input `css` by typing `text`.
    async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    /// Sets a cookie for the page's origin, as a `Set-Cookie` from a back end would.
    async fn add_cookie(&self, name: &str, value: &str) {
        // Spelled out: without a domain chromedriver refuses the cookie, and
        // without SameSite fantoccini asks for `None`, which needs `Secure`.
        let cookie = Cookie::parse(format!(
            "{name}={value}; Domain=127.0.0.1; Path=/; HttpOnly; SameSite=Strict"
        ))
        .expect("a well-formed cookie");
        self.client
            .add_cookie(cookie)
            .await
            .unwrap_or_else(|e| panic!("cookie {name}: {e}"));
    }

    /// Runs `script` in the page with `args` (a JSON array); returns its result.
    async fn run(&self, script: &str, args: Value) -> Value {
        let Value::Array(args) = args else {
            panic!("script arguments are a JSON array, got {args}")
        };
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resize to {width}x{height}: {e}"));
    }

    /// A PNG of the visible page.
    async fn screenshot(&self) -> Vec<u8> {
        self.client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"))
    }

    /// Ends the session, which closes the browser.
    async fn close(self) {
        // Cloned because closing consumes a client; the guards drop after.
        self.client
            .clone()
            .close()
            .await
            .unwrap_or_else(|e| panic!("closing the session: {e}"));
    }
}
