//! Tests that run the `herald` binary itself: start-up, the CLI, signals,
//! logs, and memory under a stuck client.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::binary::Herald;
use crate::helpers::*;

#[test]
fn a_short_secret_stops_start_up_with_a_message_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env_clear()
        .env("JWT_SECRET", "short")
        .env("PORT", "0")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECRET") && stderr.contains("32"),
        "{stderr}"
    );
}

#[test]
fn the_token_command_mints_a_token_the_server_accepts() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--sub",
            "alice",
            "--admin",
            "--channels",
            "news,team-42.*",
            "--ttl",
            "120",
        ])
        .env_clear()
        .env("JWT_SECRET", SECRET)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let config = config(&[]);
    let verifier = herald::Verifier::new(&config.jwt, None).unwrap();
    let identity = verifier
        .verify(&token, herald::TokenSource::Header)
        .unwrap();
    assert_eq!(identity.user.as_str(), "alice");
    assert!(identity.admin);
    assert_eq!(identity.channel_patterns.len(), 2);
    let ttl = identity.expires_at - now();
    assert!((100..=120).contains(&ttl), "ttl {ttl}");

    let without_secret = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "alice"])
        .env_clear()
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!without_secret.status.success());
    assert!(String::from_utf8_lossy(&without_secret.stderr).contains("JWT_SECRET"));
}

#[test]
fn the_token_command_refuses_a_ttl_too_large_for_exp_with_a_message_and_no_panic() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "alice", "--ttl", &u64::MAX.to_string()])
        .env_clear()
        .env("JWT_SECRET", SECRET)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a plain failure; {stderr}");
    assert!(output.stdout.is_empty(), "no token is printed");
    assert!(
        stderr.contains("ttl") && stderr.contains("too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[actix_web::test]
async fn without_a_secret_the_server_starts_and_logs_a_working_admin_token() {
    let herald = Herald::start(&[]);
    let deadline = Instant::now() + TIMEOUT;
    while !herald.log().contains("demo page") {
        assert!(
            Instant::now() < deadline,
            "start-up log incomplete:\n{}",
            herald.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let log = herald.log();
    let token = log
        .split("admin token (24 h): ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin token in the log:\n{log}"))
        .to_owned();
    assert!(log.contains("curl"), "a curl example is logged");
    let accepted = herald.publish(&token, &json!({"event": "hi"})).await;
    assert_eq!(accepted.status, 202, "{accepted}");
    let refused = herald.publish(&admin_token(), &json!({})).await;
    assert_eq!(
        refused.status, 401,
        "the random secret is not the test secret"
    );
}

#[actix_web::test]
async fn access_logs_never_contain_a_token() {
    access_logs_redact_tokens_and_tickets("plain").await;
}

/// `LOG_FORMAT=json`: every line one JSON object with `ts`, `level`,
/// `target` and `msg`; access lines with `method`, `path`, `status`,
/// `duration_ms` and `peer`; tokens and tickets redacted there too.
#[actix_web::test]
async fn json_logs_are_one_object_per_line_with_access_fields_and_no_token() {
    let log = access_logs_redact_tokens_and_tickets("json").await;
    let mut access = Vec::new();
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["ts", "level", "target", "msg"] {
            assert!(value[field].is_string(), "{field} missing: {line}");
        }
        if value.get("method").is_some() {
            access.push(value);
        }
    }
    let stream = access
        .iter()
        .find(|line| line["path"] == "/api/events?token=[redacted]&x=1")
        .unwrap_or_else(|| panic!("no access line for the stream:\n{log}"));
    assert_eq!(stream["method"], "GET");
    assert_eq!(stream["status"], 200);
    assert!(stream["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        stream["peer"].as_str().unwrap().starts_with("127.0.0.1"),
        "{stream}"
    );
    let missing = access.iter().find(|line| line["status"] == 404).unwrap();
    assert_eq!(missing["path"], "/nope?token=[redacted]");
}

/// Makes requests with a token and a ticket in the URL under `format`,
/// waits for their access lines, checks neither reached the log; answers it.
async fn access_logs_redact_tokens_and_tickets(format: &str) -> String {
    let herald = Herald::start(&[("JWT_SECRET", SECRET), ("LOG_FORMAT", format)]);
    let token = user_token("alice", &[]);
    let mut stream =
        Sse::open(client().get(herald.url(&format!("/api/events?token={token}&x=1")))).await;
    assert_eq!(stream.next().await.event, "connected");
    drop(stream);
    let not_found = Answer::of(
        client()
            .get(herald.url(&format!("/nope?token={token}")))
            .send(),
    )
    .await;
    assert_eq!(not_found.status, 404);
    let bought = Answer::of(
        client()
            .post(herald.url("/api/tickets"))
            .bearer_auth(&token)
            .send(),
    )
    .await;
    let ticket = bought.json()["ticket"].as_str().unwrap().to_owned();
    let mut stream =
        Sse::open(client().get(herald.url(&format!("/api/events?ticket={ticket}&y=2")))).await;
    assert_eq!(stream.next().await.event, "connected");
    drop(stream);
    // Every request is logged (a stream's once it has ended), each with its
    // token or ticket redacted.
    let deadline = Instant::now() + TIMEOUT;
    while ![
        "/api/events?token=[redacted]&x=1",
        "/nope?token=[redacted]",
        "/api/events?ticket=[redacted]&y=2",
    ]
    .iter()
    .all(|line| herald.log().contains(line))
    {
        assert!(
            Instant::now() < deadline,
            "no access log lines:\n{}",
            herald.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !herald.log().contains(signature) && !herald.log().contains(&ticket),
        "a token or ticket reached the log:\n{}",
        herald.log()
    );
    herald.log()
}

/// Seconds past the drain window after which the server cuts what is left
/// (`SHUTDOWN_GRACE_SECS` in `startup.rs`): a stream that ends only then was
/// not drained.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long past the drain window a drained stream may take to be seen
/// ending here (the drain's last slice, a busy machine): well short of the cut.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);
const _: () = assert!(DRAIN_MARGIN.as_millis() * 2 < SHUTDOWN_GRACE.as_millis());

#[actix_web::test]
async fn sigterm_ends_thousands_of_streams_cleanly_within_the_drain_window_and_exits_before_the_cut(
) {
    sigterm_drains_every_stream(2, 2000, Duration::from_secs(1)).await;
}

#[actix_web::test]
async fn sigterm_with_four_workers_ends_every_stream_cleanly_within_the_drain_window() {
    sigterm_drains_every_stream(4, 80, Duration::from_secs(2)).await;
}

/// Opens `count` streams on a `herald` with `workers` HTTP workers and a
/// drain window of `drain` (whole seconds), sends it SIGTERM, and checks the
/// drain: the server ends every stream cleanly, each within the window (plus
/// [`DRAIN_MARGIN`], well before the cut at window plus [`SHUTDOWN_GRACE`]),
/// spread over the window rather than all at once, and the process then
/// exits with status 0, before the cut.
async fn sigterm_drains_every_stream(workers: usize, count: usize, drain: Duration) {
    raise_open_files();
    let workers_setting = workers.to_string();
    let drain_setting = drain.as_secs().to_string();
    let mut herald = Herald::start(&[
        ("JWT_SECRET", SECRET),
        ("WORKERS", &workers_setting),
        ("SHUTDOWN_DRAIN_SECS", &drain_setting),
    ]);
    let mut streams = Vec::with_capacity(count);
    for index in 0..count {
        let token = user_token(&format!("user-{index}"), &[]);
        // Read off the socket: only the last chunk counts as the server's end.
        let stream = Sse::over_http1(herald.port, "/api/events", &token).await;
        assert_eq!(stream.status, 200);
        streams.push(stream);
    }
    herald
        .wait_for("all streams open", |stats| stats["connections"] == count)
        .await;

    let signalled = Instant::now();
    herald.terminate();
    // Every stream read at once, so each end is seen when it comes.
    let ends = futures_util::future::join_all(streams.iter_mut().map(|stream| async move {
        let frames = stream.until_end().await;
        let (end, at) = stream.end().expect("until_end returns once the body ended");
        (frames, end.clone(), at.duration_since(signalled))
    }))
    .await;
    let (exited_after_last, clean_exit) = herald.wait_exit(drain + SHUTDOWN_GRACE + TIMEOUT);
    let exited = signalled.elapsed();

    let not_connected = ends
        .iter()
        .filter(|(frames, _, _)| frames.first().map(|f| f.event.as_str()) != Some("connected"))
        .count();
    assert_eq!(
        not_connected, 0,
        "streams that did not begin with `connected`"
    );
    let mut times: Vec<Duration> = ends.iter().map(|(_, _, after)| *after).collect();
    times.sort();
    let (first, last) = (times[0], times[count - 1]);
    println!(
        "WORKERS={workers}: {count} streams ended from {first:?} to {last:?} after SIGTERM \
         (median {:?}; window {drain:?}, cut at {:?}); process gone after {exited:?} \
         ({exited_after_last:?} after the last stream)",
        times[count / 2],
        drain + SHUTDOWN_GRACE
    );
    let errors: Vec<(&End, Duration)> = ends
        .iter()
        .filter(|(_, end, _)| *end != End::Clean)
        .map(|(_, end, after)| (end, *after))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {count} streams were cut, not ended by the server (how, and when after \
         SIGTERM: {errors:?}); log without the streams' access lines:\n{}",
        errors.len(),
        herald
            .log()
            .lines()
            .filter(|line| !line.contains("\"GET /api/events"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let late = times.iter().filter(|t| **t > drain + DRAIN_MARGIN).count();
    assert_eq!(
        late, 0,
        "{late} of {count} streams ended past the window plus {DRAIN_MARGIN:?} (the last at \
         {last:?}), so not by the drain"
    );
    // The drain closes a slice every 50 ms over the window: the ends spread
    // over it, not in one burst.
    assert!(
        last - first >= drain / 2,
        "the streams ended within {:?} of each other, not spread over the {drain:?} window",
        last - first
    );
    let burst = Duration::from_millis(100);
    let most_in_a_burst = (0..count)
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < burst)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most_in_a_burst <= count / 2,
        "{most_in_a_burst} of {count} streams ended within {burst:?} of each other"
    );
    assert!(clean_exit, "exit status 0; log:\n{}", herald.log());
    // A stopping actix worker looks at its connections once a second and
    // stops at the first look that finds none left (the cut is the look at
    // window plus grace): after streams that all ended within the window
    // plus the margin, it exits a whole second or more before the cut.
    assert!(
        exited < drain + SHUTDOWN_GRACE - Duration::from_millis(500),
        "exited {exited:?} after SIGTERM, as late as the cut at {:?}",
        drain + SHUTDOWN_GRACE
    );
}

#[actix_web::test]
async fn a_stream_of_a_killed_server_ends_in_an_error_not_cleanly() {
    // What the drain tests tell apart: a body the server ended, and one cut.
    let mut herald = Herald::start(&[("JWT_SECRET", SECRET)]);
    let token = user_token("alice", &[]);
    let mut stream = Sse::over_http1(herald.port, "/api/events", &token).await;
    assert_eq!(stream.next().await.event, "connected");
    herald.kill_hard();
    stream.until_end().await;
    let (end, _) = stream.end().expect("the stream has ended");
    assert!(matches!(end, End::Error(_)), "{end:?}");
}

/// Reads an HTTP/1.1 chunked response to EOF; returns the body (a cut-off
/// last chunk is kept as far as it arrived).
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let mut rest = &raw[head_end..];
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        let take = size.min(rest.len());
        body.extend_from_slice(&rest[..take]);
        rest = &rest[(take + 2).min(rest.len())..];
    }
    body
}

#[actix_web::test]
async fn stuck_clients_are_cut_off_counted_and_recover_everything_from_history() {
    const STUCK: usize = 3;
    const EVENTS: usize = 2000;
    const PAD: usize = 8 * 1024;
    // Smaller than CLIENT_BUFFER: one batch alone must not cut a stream that
    // reads (the fan-out of one publish happens before any of it is written).
    const BATCH: usize = 50;
    let herald = Herald::start(&[
        ("JWT_SECRET", SECRET),
        ("CLIENT_BUFFER", "64"),
        ("MAX_BODY_BYTES", "2000000"),
        // Every event stays retained, so each stuck client recovers all it missed.
        ("HISTORY_PER_AUDIENCE", "5000"),
    ]);
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", herald.port).parse().unwrap();
    let token = user_token("slow", &[]);
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut connection = socket.connect(address).await.unwrap();
        let request = format!(
            "GET /api/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        connection.write_all(request.as_bytes()).await.unwrap();
        stuck.push(connection);
    }
    herald
        .wait_for("stuck streams registered", |stats| {
            stats["connections"] == STUCK
        })
        .await;
    let resident_before = herald.resident_bytes();

    let pad = "x".repeat(PAD);
    for start in (0..EVENTS).step_by(BATCH) {
        let batch: Vec<Value> = (start..start + BATCH)
            .map(|n| json!({"user": "slow", "data": {"n": n, "pad": pad}}))
            .collect();
        let answer = herald.publish(&admin_token(), &json!(batch)).await;
        assert_eq!(answer.status, 202);
    }
    let stats = herald
        .wait_for("stuck streams cut off", |stats| {
            stats["slow_client_disconnects"] == STUCK
        })
        .await;
    assert_eq!(stats["connections"], 0);
    let resident_after = herald.resident_bytes();
    let published = (EVENTS * PAD) as u64;
    let growth = resident_after.saturating_sub(resident_before);
    println!(
        "published {} MiB to {STUCK} stuck clients; server RSS {} -> {} MiB (+{} MiB)",
        published >> 20,
        resident_before >> 20,
        resident_after >> 20,
        growth >> 20
    );
    // History keeps one copy of each event; a stuck client must add no copy of its own.
    assert!(
        growth < published * 3 / 2 + (24 << 20),
        "memory grew by {growth} bytes"
    );

    for mut connection in stuck {
        let mut raw = Vec::new();
        actix_web::rt::time::timeout(TIMEOUT, connection.read_to_end(&mut raw))
            .await
            .expect("the server closed the stuck connection")
            .ok();
        let mut parser = herald::sse::Parser::new();
        let frames = parser.feed(&dechunk(&raw));
        assert_eq!(frames[0].event, "connected");
        let mut seen: Vec<u64> = frames[1..]
            .iter()
            .map(|f| data(f)["n"].as_u64().unwrap())
            .collect();
        assert!(seen.len() < EVENTS, "the client was cut off before the end");
        let last_id = frames.last().unwrap().id.clone();

        let mut request = client().get(herald.url("/api/events")).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.insert_header(("last-event-id", id.as_str()));
        }
        let mut resumed = Sse::open(request).await;
        let connected = data(&resumed.next().await);
        assert_eq!(connected["recovered"], last_id.is_some());
        assert_eq!(
            connected["replayed"].as_u64().unwrap() as usize,
            EVENTS - seen.len()
        );
        while seen.len() < EVENTS {
            seen.push(data(&resumed.next().await)["n"].as_u64().unwrap());
        }
        assert_eq!(
            seen,
            (0..EVENTS as u64).collect::<Vec<_>>(),
            "everything, once, in order"
        );
    }
}

#[test]
fn a_port_already_in_use_stops_start_up_with_a_message_and_no_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().unwrap().port().to_string();
    let data = DataDir::new();
    let (ok, log) = crate::helpers::binary::run_to_exit(&[
        ("HOST", "127.0.0.1"),
        ("PORT", port.as_str()),
        ("DATA_DIR", data.path()),
    ]);
    assert!(!ok, "start-up must fail; log:\n{log}");
    assert!(
        log.contains("cannot start") && log.contains("in use"),
        "the reason is given; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic; log:\n{log}");
}

#[test]
fn a_redis_url_that_is_not_one_stops_start_up_with_a_message_and_no_panic() {
    let data = DataDir::new();
    let (ok, log) = crate::helpers::binary::run_to_exit(&[
        ("REDIS_URL", "nonsense://somewhere"),
        ("DATA_DIR", data.path()),
    ]);
    assert!(!ok, "start-up must fail; log:\n{log}");
    assert!(
        log.contains("REDIS_URL") && log.contains("nonsense://somewhere"),
        "the setting is named; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic; log:\n{log}");
}
