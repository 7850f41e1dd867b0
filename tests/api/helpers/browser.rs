//! A real headless Chromium for the demo page's tests, driven through
//! chromedriver by fantoccini.
//!
//! [`Browser::start`] starts a chromedriver of the test's own on a free port,
//! with a fresh Chromium profile, and opens a session; dropping the
//! [`Browser`] ends both, passed or failed. Without `chromium` and
//! `chromedriver` it returns `None` after [`skip`] (a `SKIPPED:` line, or a
//! failure under `CI=true`). Waits poll the page's DOM until a deadline;
//! nothing sleeps to wait.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fantoccini::cookies::Cookie;
pub use fantoccini::wd::WindowHandle;
use fantoccini::Locator;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Map, Value};

use super::{find_program, free_port, skip, TestServer, TIMEOUT};

/// Longest wait for the page: a cold Chromium on a busy two-core machine is slow.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a wait looks at the DOM again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CHROMIUM: &str = "/usr/bin/chromium";
/// One browser at a time: several Chromiums on two cores would make every
/// test slow and the timing-sensitive tests elsewhere flaky.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where chromedriver is, or `None` after [`skip`] when it or Chromium is
/// missing.
fn browser_programs() -> Option<PathBuf> {
    let driver = find_program("chromedriver");
    if let (Some(driver), true) = (driver, Path::new(CHROMIUM).is_file()) {
        return Some(driver);
    }
    skip(&format!(
        "chromium ({CHROMIUM}) or chromedriver is not installed \
         (Debian: apt-get install chromium chromium-driver)"
    ));
    None
}

/// The capabilities asking chromedriver for a headless Chromium on `profile`.
fn chromium_capabilities(profile: &Path, extra: &[String]) -> Map<String, Value> {
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend_from_slice(extra);
    let options = json!({ "binary": CHROMIUM, "args": args });
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

// ---------------------------------------------------------------------------
// The page, as the tests see it (built on the WebDriver commands below)
// ---------------------------------------------------------------------------

impl Browser {
    /// Starts chromedriver and a browser session, or returns `None` when the
    /// programs are missing (see [`browser_programs`]).
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// As [`start`](Self::start), with `arguments` added to Chromium's.
    pub async fn start_with(arguments: &[String]) -> Option<Self> {
        let program = browser_programs()?;
        let slot = BROWSER_SLOT.lock().await;
        let driver = Chromedriver::start(&program).await;
        Some(Self::open_session(driver, slot, arguments).await)
    }

    /// The text of the first element matching `css`; fails if there is none.
    pub async fn text(&self, css: &str) -> String {
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
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let texts = self
            .run(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
                json!([css]),
            )
            .await;
        serde_json::from_value(texts).expect("a list of strings")
    }

    pub async fn exists(&self, css: &str) -> bool {
        self.run(
            "return document.querySelector(arguments[0]) !== null;",
            json!([css]),
        )
        .await
            == Value::Bool(true)
    }

    /// Polls the text of `css` until `accept` takes it; returns that text.
    pub async fn wait_for(&self, what: &str, css: &str, accept: impl Fn(&str) -> bool) -> String {
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

    pub async fn wait_for_element(&self, css: &str) {
        self.wait_for(css, css, |_| true).await;
    }

    /// Picks the option with `value` in the select `css`, as a person would.
    pub async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// Opens the page, signs in through its form, and waits for the result.
    pub async fn sign_in(&self, server: &TestServer, user: &str, admin: bool) {
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
    pub async fn wait_until_connected(&self) {
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
pub struct Browser {
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
        arguments: &[String],
    ) -> Self {
        // chromedriver listens on loopback and speaks plain HTTP: no TLS needed.
        let client = fantoccini::ClientBuilder::new(HttpConnector::new())
            .capabilities(chromium_capabilities(&driver.profile, arguments))
            .connect(&driver.url(""))
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        Self {
            client,
            _driver: driver,
            _slot: slot,
        }
    }

    pub async fn goto(&self, url: &str) {
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
    pub async fn fill(&self, css: &str, text: &str) {
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

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    /// Sets a cookie for the page's origin, as a `Set-Cookie` from a back end would.
    pub async fn add_cookie(&self, name: &str, value: &str) {
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
    pub async fn run(&self, script: &str, args: Value) -> Value {
        let Value::Array(args) = args else {
            panic!("script arguments are a JSON array, got {args}")
        };
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resize to {width}x{height}: {e}"));
    }

    /// Writes a screenshot of the page under `tests/screenshots/`.
    pub async fn save_screenshot(&self, name: &str) {
        let png = self.screenshot().await;
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

    /// A PNG of the visible page.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"))
    }

    /// The tab the commands go to now.
    pub async fn current_tab(&self) -> WindowHandle {
        self.client
            .window()
            .await
            .unwrap_or_else(|e| panic!("the current tab: {e}"))
    }

    /// Opens a new tab of the same browser context and switches to it.
    pub async fn new_tab(&self) -> WindowHandle {
        let tab = self
            .client
            .new_window(true)
            .await
            .unwrap_or_else(|e| panic!("a new tab: {e}"))
            .handle;
        self.switch_to(&tab).await;
        tab
    }

    /// Sends the next commands to `tab`.
    pub async fn switch_to(&self, tab: &WindowHandle) {
        self.client
            .switch_to_window(tab.clone())
            .await
            .unwrap_or_else(|e| panic!("switching tabs: {e}"));
    }

    /// Closes the current tab, as a person closing it would; switch to
    /// another before the next command.
    pub async fn close_tab(&self) {
        self.client
            .close_window()
            .await
            .unwrap_or_else(|e| panic!("closing a tab: {e}"));
    }

    /// Ends the session, which closes the browser.
    pub async fn close(self) {
        // Cloned because closing consumes a client; the guards drop after.
        self.client
            .clone()
            .close()
            .await
            .unwrap_or_else(|e| panic!("closing the session: {e}"));
    }
}
