//! HTTPS and HTTP/2: certificates made by a test CA, HTTP/1.1 and HTTP/2
//! clients (Node's `http2` for many streams on one connection), the
//! certificate reload on SIGHUP, and start-up with unusable files.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::helpers::binary::{run_to_exit, Herald};
use crate::helpers::browser::Browser;
use crate::helpers::node::NodeScript;
use crate::helpers::tls::{handshake, https_client, TestCa, TlsFiles};
use crate::helpers::*;

/// Starts an in-process server serving `files`, with a client that trusts `ca`.
async fn spawn_tls(ca: &TestCa, files: &TlsFiles, pairs: &[(&str, &str)]) -> TestServer {
    let mut settings = files.env().to_vec();
    settings.extend_from_slice(pairs);
    spawn_with_client(config(&settings), https_client(ca)).await
}

/// A script's input: where the server is, the CA to trust, an admin token.
fn script_input(port: u16, ca: &TestCa, rest: Value) -> Value {
    let mut input = json!({
        "url": format!("https://127.0.0.1:{port}"),
        "ca": ca.pem,
        "admin": admin_token(),
        "timeoutMs": TIMEOUT.as_millis() as u64,
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(rest.as_object().unwrap().clone());
    input
}

#[actix_web::test]
async fn an_http2_connection_carries_120_streams_each_gets_every_event_once_in_order_and_the_drain_ends_each(
) {
    // The drain window, in whole seconds: the server cuts what is left at
    // the window plus 3 s of grace (`SHUTDOWN_GRACE_SECS`).
    const DRAIN: Duration = Duration::from_secs(1);
    const CUT: Duration = Duration::from_secs(DRAIN.as_secs() + 3);
    // How late past the window a drained stream may be seen ending: well
    // before the cut.
    const MARGIN: Duration = Duration::from_secs(1);
    const _: () = assert!(DRAIN.as_millis() + MARGIN.as_millis() < CUT.as_millis());
    let ca = TestCa::new("Herald test CA");
    let files = TlsFiles::new(&ca.issue());
    let drain_setting = DRAIN.as_secs().to_string();
    let server = spawn_tls(
        &ca,
        &files,
        &[
            ("HEARTBEAT_INTERVAL", "0.3"),
            ("SHUTDOWN_DRAIN_SECS", &drain_setting),
        ],
    )
    .await;
    // More than the 100 streams a browser opens on one connection by default.
    let tokens: Vec<String> = (0..120)
        .map(|n| user_token(&format!("user-{n}"), &["room"]))
        .collect();
    let events = 20;
    let input = script_input(
        server.port,
        &ca,
        json!({
            "tokens": tokens,
            "channel": "room",
            "events": events,
            "resumeToken": user_token("late", &["room"]),
        }),
    );
    let Some(mut script) = NodeScript::start("h2-streams.mjs", &input) else {
        return;
    };
    let ready = script.next(TIMEOUT * 2).await;
    assert_eq!(ready["ready"]["streams"], 120, "{ready}");
    assert_eq!(
        server.stats().await["connections"],
        121,
        "120 streams and the resumed one, on one connection"
    );

    let stopping = Instant::now();
    let stopping_at = SystemTime::now();
    server.stop().await;
    let stopped_in = stopping.elapsed();
    let summary = script.next(TIMEOUT).await["summary"].clone();
    assert_eq!(summary["alpn"], "h2", "{summary}");
    assert_eq!(summary["connected"], 120, "{summary}");
    assert_eq!(summary["publishStatuses"], json!([202]), "{summary}");
    assert_eq!(
        summary["inOrderOnce"], 120,
        "every stream got each of the {events} events once, in order: {summary}"
    );
    let expected: Vec<u64> = (events / 2 + 1..events).collect();
    assert_eq!(summary["resumed"], json!(expected), "{summary}");
    assert!(summary["heartbeatsMin"].as_u64() >= Some(1), "{summary}");
    assert_eq!(
        summary["endedCleanly"], 121,
        "the drain ends every stream (an END_STREAM each, no reset): {summary}"
    );
    // When each stream ended, after the stop began (the script's clock is
    // this machine's wall clock, in ms).
    let stopped_at_ms = stopping_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut ended_after: Vec<Duration> = summary["endedAt"]
        .as_array()
        .expect("endedAt in the summary")
        .iter()
        .map(|at| {
            let at = at.as_u64().expect("every stream ended");
            Duration::from_millis(at.saturating_sub(stopped_at_ms))
        })
        .collect();
    ended_after.sort();
    let (first, last) = (ended_after[0], ended_after[ended_after.len() - 1]);
    println!(
        "121 HTTP/2 streams ended from {first:?} to {last:?} after the stop began (window \
         {DRAIN:?}, cut at {CUT:?}); the server stopped after {stopped_in:?}"
    );
    // Each stream is ended by the drain, within the window (plus a margin
    // well before the cut), and they end spread over it rather than together
    // as the connection closes.
    assert!(
        last <= DRAIN + MARGIN,
        "the last stream ended {last:?} after the stop began; the window is {DRAIN:?}, the cut \
         at {CUT:?}"
    );
    assert!(
        last - first >= DRAIN / 2,
        "the streams ended within {:?} of each other, not spread over the window",
        last - first
    );
    // The script closes the connection once every stream has ended; a
    // stopping actix worker looks at its connections once a second, so the
    // server stops at the first look after that, a second or more before the
    // look that cuts.
    assert!(
        stopped_in < CUT - Duration::from_millis(500),
        "the server took {stopped_in:?} to stop, as long as the cut at {CUT:?}"
    );
}

#[actix_web::test]
async fn an_http1_client_works_over_tls_and_alpn_offers_h2_first() {
    let ca = TestCa::new("Herald test CA");
    let certificate = ca.issue();
    let files = TlsFiles::new(&certificate);
    let server = spawn_tls(&ca, &files, &[]).await;

    // The helpers' client offers only http/1.1, as an older client would.
    let token = user_token("alice", &[]);
    let (mut stream, connected) = server.subscribe(&token, "").await;
    assert!(connected["client_id"].is_string(), "{connected}");
    let sent = server
        .send(json!({"user": "alice", "event": "hello", "data": {"over": "tls"}}))
        .await;
    let event = stream.next().await;
    assert_eq!(event.event, "hello");
    assert_eq!(event.id.as_deref(), sent["id"].as_str());
    assert_eq!(data(&event), json!({"over": "tls"}));

    let port = server.port;
    let both = handshake(port, &ca.pem, &["h2", "http/1.1"]).await;
    let older = handshake(port, &ca.pem, &["http/1.1"]).await;
    assert_eq!(both.alpn.as_deref(), Some("h2"));
    assert_eq!(older.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(both.certificate, certificate.der);

    let plain = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP is not served on the TLS port");
}

/// Environment variables for a server, as name and value.
type Settings<'a> = &'a [(&'a str, &'a str)];

#[test]
fn unusable_certificate_files_stop_start_up_naming_the_file() {
    let ca = TestCa::new("Herald test CA");
    let files = TlsFiles::new(&ca.issue());
    let other = ca.issue();
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let missing = files.path("missing.pem");
    let garbage = files.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let wrong_key = files.path("wrong-key.pem");
    std::fs::write(&wrong_key, &other.key_pem).unwrap();
    let (missing, garbage, wrong_key) = (
        missing.to_str().unwrap(),
        garbage.to_str().unwrap(),
        wrong_key.to_str().unwrap(),
    );
    // The settings, and what the message must name.
    let cases: [(Settings, &[&str]); 5] = [
        (&[("TLS_CERT_FILE", cert)], &["TLS_KEY_FILE", "go together"]),
        (
            &[("TLS_CERT_FILE", missing), ("TLS_KEY_FILE", key)],
            &[missing, "cannot read"],
        ),
        (
            &[("TLS_CERT_FILE", garbage), ("TLS_KEY_FILE", key)],
            &[garbage, "no certificate"],
        ),
        (
            &[("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", cert)],
            &[cert, "no private key"],
        ),
        (
            &[("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", wrong_key)],
            &[wrong_key, cert, "is not the key of the certificate"],
        ),
    ];
    for (env, expected) in cases {
        let (ok, log) = run_to_exit(env);
        assert!(!ok, "{env:?} started");
        for text in expected {
            assert!(log.contains(text), "{env:?}: no {text:?} in:\n{log}");
        }
    }
}

#[actix_web::test]
async fn sighup_swaps_in_a_renewed_certificate_and_open_streams_carry_on() {
    let ca = TestCa::new("Herald test CA");
    let first = ca.issue();
    let files = TlsFiles::new(&first);
    let mut env = files.env().to_vec();
    env.push(("JWT_SECRET", SECRET));
    let mut herald = Herald::start(&env);
    let port = herald.port;
    let client = https_client(&ca);
    let served = || async {
        handshake(port, &ca.pem, &["h2", "http/1.1"])
            .await
            .certificate
    };
    assert_eq!(served().await, first.der);

    let token = user_token("alice", &[]);
    let mut stream = Sse::open(client.get(herald.url("/api/events")).bearer_auth(&token)).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.next().await.event, "connected");

    let renewed = ca.issue();
    files.write(&renewed);
    herald.signal(libc::SIGHUP);
    let log = herald.wait_for_log("certificate reloaded").await;
    assert!(log.contains(files.cert.to_str().unwrap()), "{log}");
    assert_eq!(
        served().await,
        renewed.der,
        "new connections get the new certificate"
    );

    let publish = |event: &'static str| {
        let request = client
            .post(herald.url("/api/send"))
            .bearer_auth(admin_token());
        Answer::of(request.send_json(&json!({"user": "alice", "event": event, "data": {}})))
    };
    assert_eq!(publish("after-reload").await.status, 202);
    assert_eq!(
        stream.next().await.event,
        "after-reload",
        "the stream opened before the reload still receives"
    );

    // A renewal gone wrong: the key no longer fits. The old pair stays.
    std::fs::write(&files.key, ca.issue().key_pem).unwrap();
    herald.signal(libc::SIGHUP);
    let log = herald.wait_for_log("reload failed").await;
    assert!(log.contains("is not the key of the certificate"), "{log}");
    assert_eq!(served().await, renewed.der);
    assert_eq!(publish("after-failed-reload").await.status, 202);
    assert_eq!(stream.next().await.event, "after-failed-reload");
    assert!(herald.is_running());
}

#[actix_web::test]
async fn sighup_without_tls_is_logged_and_ignored() {
    let mut herald = Herald::start(&[("JWT_SECRET", SECRET)]);
    herald.signal(libc::SIGHUP);
    herald.wait_for_log("SIGHUP ignored").await;
    assert!(herald.is_running(), "SIGHUP did not end the process");
    let health = Answer::of(client().get(herald.url("/healthz")).send()).await;
    assert_eq!(health.status, 200);
}

#[actix_web::test]
async fn over_http2_a_stream_that_stops_reading_is_ended_alone() {
    let ca = TestCa::new("Herald test CA");
    let files = TlsFiles::new(&ca.issue());
    let server = spawn_tls(
        &ca,
        &files,
        &[("CLIENT_BUFFER", "4"), ("MAX_CONNECTIONS_PER_USER", "2")],
    )
    .await;
    let input = script_input(
        server.port,
        &ca,
        json!({
            "token": user_token("alice", &[]),
            "windowBytes": 4096,
            "eventBytes": 2000,
            "maxEvents": 100,
        }),
    );
    let Some(mut script) = NodeScript::start("h2-slow-stream.mjs", &input) else {
        return;
    };
    let summary = script.next(TIMEOUT * 2).await["summary"].clone();
    assert_eq!(summary["alpn"], "h2", "{summary}");
    assert_eq!(
        summary["thirdStatus"], 429,
        "the per-user limit counts streams on one connection: {summary}"
    );
    let published = summary["published"].as_u64().unwrap();
    assert!(
        published < 100,
        "the stalled stream was never cut: {summary}"
    );
    assert_eq!(
        summary["afterCut"],
        json!({"connections": 1, "slowClientDisconnects": 1}),
        "only the stalled stream was ended: {summary}"
    );
    let all: Vec<u64> = (0..=published).collect();
    assert_eq!(summary["reader"]["ticks"], json!(all), "{summary}");
    assert_eq!(summary["reader"]["ended"], false, "{summary}");
    assert_eq!(summary["replacementStatus"], 200, "{summary}");
    assert_eq!(
        summary["replacement"]["ticks"],
        json!([published]),
        "{summary}"
    );
    // The stalled stream got what was in flight, in order, then its end.
    assert_eq!(summary["stalled"]["ended"], true, "{summary}");
    let stalled = summary["stalled"]["ticks"].as_array().unwrap();
    assert!(stalled.len() < published as usize, "{summary}");
    let prefix: Vec<u64> = (0..stalled.len() as u64).collect();
    assert_eq!(summary["stalled"]["ticks"], json!(prefix), "{summary}");
}

#[actix_web::test]
async fn over_tls_http1_a_stream_that_stops_reading_has_its_connection_cut() {
    let ca = TestCa::new("Herald test CA");
    let files = TlsFiles::new(&ca.issue());
    let server = spawn_tls(
        &ca,
        &files,
        &[("CLIENT_BUFFER", "4"), ("MAX_BODY_BYTES", "1000000")],
    )
    .await;
    let token = user_token("slow", &[]);
    // A small receive buffer, so that a client that stops reading blocks
    // the server's writes soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let socket = socket.connect(address).await.unwrap().into_std().unwrap();
    socket.set_nonblocking(false).unwrap();
    let ca_pem = ca.pem.clone();
    let mut connection = actix_web::rt::task::spawn_blocking(move || {
        let mut connection = RawTls::over(socket, &ca_pem);
        connection.send(&format!(
            "GET /api/events HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\r\n"
        ));
        connection.read_until(b"event: connected");
        connection
    })
    .await
    .unwrap();

    // The client reads nothing more; publish until the server cuts it.
    let padding = "x".repeat(16 * 1024);
    let mut rounds = 0;
    while server.stats().await["slow_client_disconnects"] == 0 {
        rounds += 1;
        assert!(rounds <= 200, "the stream was never cut");
        let batch: Vec<Value> = (0..20)
            .map(|n| json!({"user": "slow", "event": "tick", "data": {"n": n, "padding": padding}}))
            .collect();
        server.send(json!(batch)).await;
    }
    assert_eq!(server.stats().await["connections"], 0);

    // Reading again: what the kernel had buffered, then the cut, not the
    // end of a response.
    let (ending, took, read) = actix_web::rt::task::spawn_blocking(move || {
        let started = Instant::now();
        let ending = connection.read_to_end();
        (ending, started.elapsed(), connection.read)
    })
    .await
    .unwrap();
    let tail = String::from_utf8_lossy(&read[read.len().saturating_sub(100)..]).into_owned();
    assert!(
        !read.ends_with(b"0\r\n\r\n"),
        "the response was ended normally, not cut: {ending:?} after {took:?}: {tail:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the connection stayed open {took:?}"
    );
    assert!(
        matches!(
            ending.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "the socket was cut: {ending:?}"
    );
}

/// An HTTP/1.1 connection over TLS written and read byte for byte (blocking).
struct RawTls {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    read: Vec<u8>,
}

impl RawTls {
    fn over(socket: std::net::TcpStream, ca_pem: &str) -> Self {
        let config = crate::helpers::tls::client_config(ca_pem, &["http/1.1"]);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self {
            tls: rustls::StreamOwned::new(connection, socket),
            read: Vec::new(),
        }
    }

    fn send(&mut self, text: &str) {
        use std::io::Write;
        self.tls.write_all(text.as_bytes()).unwrap();
        self.tls.flush().unwrap();
    }

    fn read_until(&mut self, needle: &[u8]) {
        use std::io::Read;
        let mut buffer = [0u8; 4096];
        while !self.read.windows(needle.len()).any(|w| w == needle) {
            let n = self.tls.read(&mut buffer).expect("the stream answers");
            assert!(n > 0, "the connection ended before {needle:?}");
            self.read.extend_from_slice(&buffer[..n]);
        }
    }

    /// Reads until the connection ends; returns how it ended (a clean
    /// close_notify counts as `UnexpectedEof` too: Herald never sends one
    /// on a stream it cuts).
    fn read_to_end(&mut self) -> std::io::Error {
        use std::io::Read;
        let mut buffer = [0u8; 4096];
        loop {
            match self.tls.read(&mut buffer) {
                Ok(0) => return std::io::ErrorKind::UnexpectedEof.into(),
                Ok(n) => self.read.extend_from_slice(&buffer[..n]),
                Err(e) => return e,
            }
        }
    }
}

/// Opens `count` streams from the current page (Herald's own client, each on
/// its own stream) and records each one's status and the `n` events it got.
const TWELVE_STREAMS: &str = r#"
return (async (count) => {
  const { connect } = await import('/herald.js');
  window.streams = [];
  for (let i = 0; i < count; i++) {
    const stream = { status: 'connecting', got: [] };
    const herald = connect({ share: false });
    herald.onStatus((status) => { stream.status = status; });
    herald.on('n', (data) => stream.got.push(data.n));
    window.streams.push(stream);
  }
  return true;
})(arguments[0]);
"#;

/// Opens twelve streams in a page of `server`'s origin, signed in by cookie,
/// then publishes an event `n` = 1 to the user once `open` streams are open
/// and every one of those has it. Returns each stream's status and events.
async fn twelve_streams(browser: &Browser, server: &TestServer, open: usize) -> Vec<Value> {
    browser.goto(&server.url("/healthz")).await;
    browser
        .add_cookie("herald_token", &user_token("tab", &[]))
        .await;
    browser.goto(&server.url("/healthz")).await;
    assert_eq!(browser.run(TWELVE_STREAMS, json!([12])).await, json!(true));
    server.wait_for_connections(open as u64).await;
    server
        .send(json!({"user": "tab", "event": "n", "data": {"n": 1}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let streams = browser.run("return window.streams;", json!([])).await;
        let streams = streams.as_array().expect("the streams").clone();
        let delivered = streams.iter().filter(|s| s["got"] == json!([1])).count();
        if delivered >= open {
            return streams;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {open} streams got the event: {streams:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn chromium_holds_twelve_streams_to_one_origin_over_http2_where_http1_stalls_at_six() {
    let ca = TestCa::new("Herald browser test CA");
    let certificate = ca.issue();
    let files = TlsFiles::new(&certificate);
    // The chain as a certificate authority's customer serves it: the server's
    // certificate, then the authority's, which Chromium is told to trust.
    std::fs::write(&files.cert, format!("{}{}", certificate.cert_pem, ca.pem)).unwrap();
    let Some(browser) = Browser::start_with(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        ca.spki_sha256
    )])
    .await
    else {
        return;
    };

    // HTTPS: HTTP/2, one connection, twelve streams, all delivering.
    let https = spawn_tls(&ca, &files, &[]).await;
    let streams = twelve_streams(&browser, &https, 12).await;
    assert!(
        streams.iter().all(|s| s["status"] == "open"),
        "all twelve open: {streams:?}"
    );
    let protocol = browser
        .run(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
            json!([]),
        )
        .await;
    assert_eq!(protocol, json!("h2"), "the page came over HTTP/2");

    // Plain HTTP/1.1: six connections per origin, so six streams; the other
    // six wait for a connection that never comes free.
    let plain = spawn(&[]).await;
    let streams = twelve_streams(&browser, &plain, 6).await;
    let open = streams.iter().filter(|s| s["status"] == "open").count();
    let waiting: Vec<&Value> = streams
        .iter()
        .filter(|s| s["status"] == "connecting" && s["got"] == json!([]))
        .collect();
    assert_eq!(open, 6, "six streams over HTTP/1.1: {streams:?}");
    assert_eq!(waiting.len(), 6, "six stalled: {streams:?}");
    assert_eq!(
        plain.stats().await["connections"],
        6,
        "the server saw six streams"
    );
    browser.close().await;
}
