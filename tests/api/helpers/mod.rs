//! Starts a real Herald on a random port and talks HTTP to it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use actix_web::rt::time::timeout;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald::Config;
use herald::sse::{Frame, Parser};
use herald::{Application, Shutdown};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret every test server uses.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// Longest wait for anything the server should do promptly.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn now() -> u64 {
    herald::unix_now()
}

/// Test settings: a known secret, port 0, overridden by `pairs`.
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = [
        ("JWT_SECRET", SECRET),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("WORKERS", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in pairs {
        map.insert(key.to_string(), value.to_string());
    }
    Config::from_lookup(|name| map.get(name).cloned()).expect("test config is valid")
}

/// A token signed with [`SECRET`] carrying exactly `claims`.
pub fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn user_token(sub: &str, channels: &[&str]) -> String {
    token(json!({ "sub": sub, "exp": now() + 3600, "channels": channels }))
}

pub fn admin_token() -> String {
    token(json!({ "sub": "publisher", "exp": now() + 3600, "roles": ["admin"] }))
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(TIMEOUT)
        .finish()
}

pub struct TestServer {
    pub port: u16,
    shutdown: Shutdown,
    client: awc::Client,
}

/// Starts a server with [`config`]`(pairs)`.
pub async fn spawn(pairs: &[(&str, &str)]) -> TestServer {
    spawn_with(config(pairs)).await
}

pub async fn spawn_with(config: Config) -> TestServer {
    raise_open_files();
    let app = Application::build(config).await.expect("the server starts");
    let port = app.port();
    let shutdown = app.shutdown_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestServer {
        port,
        shutdown,
        client: client(),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn client(&self) -> &awc::Client {
        &self.client
    }

    /// Stops the server the way a signal does.
    pub async fn stop(&self) {
        timeout(TIMEOUT, self.shutdown.run())
            .await
            .expect("the server stops in time");
    }

    /// Opens a stream with a Bearer token and reads its `connected` event.
    pub async fn subscribe(&self, token: &str, query: &str) -> (Sse, Value) {
        let request = self
            .client
            .get(self.url(&format!("/api/events?{query}")))
            .bearer_auth(token);
        let mut stream = Sse::open(request).await;
        if stream.status != 200 {
            let status = stream.status;
            panic!("stream refused with {status}: {}", stream.body_text().await);
        }
        let connected = stream.next().await;
        assert_eq!(connected.event, "connected");
        assert_eq!(connected.id, None, "connected carries no id");
        (stream, serde_json::from_str(&connected.data).unwrap())
    }

    /// Sends `body` as JSON; returns the status and the JSON answer.
    pub async fn publish(&self, token: &str, body: &Value) -> (u16, Value) {
        let mut response = self
            .client
            .post(self.url("/api/send"))
            .bearer_auth(token)
            .send_json(body)
            .await
            .expect("publish request");
        let status = response.status().as_u16();
        let answer = response
            .json::<Value>()
            .limit(1 << 20)
            .await
            .unwrap_or(Value::Null);
        (status, answer)
    }

    /// Publishes as admin and expects 202.
    pub async fn send(&self, body: Value) -> Value {
        let (status, answer) = self.publish(&admin_token(), &body).await;
        assert_eq!(status, 202, "publish refused: {answer}");
        answer
    }

    pub async fn stats(&self) -> Value {
        let mut response = self
            .client
            .get(self.url("/api/stats"))
            .bearer_auth(admin_token())
            .send()
            .await
            .expect("stats request");
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    }

    /// Waits until the server reports `connections` open streams.
    pub async fn wait_for_connections(&self, connections: u64) {
        let waited = timeout(TIMEOUT, async {
            loop {
                if self.stats().await["connections"] == connections {
                    return;
                }
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "connections never became {connections}: {}",
            self.stats().await
        );
    }
}

type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// One SSE response, read frame by frame with timeouts.
pub struct Sse {
    pub status: u16,
    pub headers: actix_web::http::header::HeaderMap,
    body: BodyStream,
    parser: Parser,
    pending: VecDeque<Frame>,
    ended: bool,
}

impl Sse {
    pub async fn open(request: awc::ClientRequest) -> Self {
        let response = request.send().await.expect("stream request");
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Box::pin(response),
            parser: Parser::new(),
            pending: VecDeque::new(),
            ended: false,
        }
    }

    /// The whole body as text (for error responses).
    pub async fn body_text(&mut self) -> String {
        let mut text = Vec::new();
        while let Ok(Some(Ok(chunk))) = timeout(TIMEOUT, self.body.next()).await {
            text.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Reads until a frame arrives, the stream ends, or `wait` passes.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
                Ok(Some(Err(_)) | None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// The next frame; fails the test if none arrives in time.
    pub async fn next(&mut self) -> Frame {
        match self.next_within(TIMEOUT).await {
            Some(frame) => frame,
            None => panic!("no event within {TIMEOUT:?} (stream ended: {})", self.ended),
        }
    }

    /// Reads frames until the stream ends; fails if it does not end in time.
    pub async fn until_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !self.ended || !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(frame) => frames.push(frame),
                None if self.ended => break,
                None => panic!("the stream did not end within {TIMEOUT:?}; got {frames:?}"),
            }
        }
        frames
    }

    /// True if no event arrives within `wait` (heartbeats do not count).
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        self.next_within(wait).await.is_none()
    }

    /// Waits until `count` comment lines (heartbeats) have been read.
    pub async fn wait_for_heartbeats(&mut self, count: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.parser.comments < count {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
                _ => panic!("only {} heartbeats arrived", self.parser.comments),
            }
        }
    }

    pub fn retry(&self) -> Option<u64> {
        self.parser.retry
    }
}

/// The parsed data of a frame.
pub fn data(frame: &Frame) -> Value {
    serde_json::from_str(&frame.data).unwrap_or_else(|e| panic!("{frame:?}: {e}"))
}

/// Lets this test process hold thousands of sockets.
pub fn raise_open_files() {
    // Failing leaves the limit as it was; the test then reports what failed.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}
