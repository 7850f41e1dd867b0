//! Herald behind the nginx configuration it ships (`deploy/nginx/herald.conf`):
//! TLS and HTTP/2 to the client, two nodes on one Redis behind it.

use std::time::{Duration, Instant};

use actix_web::cookie::Cookie;
use actix_web::http::Version;
use actix_web::rt::time::timeout;
use serde_json::{json, Value};

use crate::helpers::nginx::{template, Proxied};
use crate::helpers::*;

/// How soon something that should be immediate must arrive. Far below the
/// heartbeat interval the tests set, so a buffering proxy would miss it.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A heartbeat interval no test waits for.
const SLOW_HEARTBEAT: &str = "30";

#[actix_web::test]
async fn streams_through_nginx_get_each_event_at_once_over_http2_and_http1() {
    let Some(cluster) = Proxied::start(
        &[
            ("HEARTBEAT_INTERVAL", SLOW_HEARTBEAT),
            ("SSE_RETRY_TIMEOUT", "1234"),
        ],
        &[],
    ) else {
        return;
    };
    let token = user_token("alice", &[]);
    // nginx holds back a buffered response to an HTTP/1.1 client, but (1.22)
    // not to an HTTP/2 one: both must get everything at once.
    let mut streams = Vec::new();
    for (client, version) in [
        (cluster.nginx.client(), Version::HTTP_2),
        (cluster.nginx.http1_client(), Version::HTTP_11),
    ] {
        let mut stream = cluster.open_stream(&client, &token, None).await;
        assert_eq!((stream.status, stream.version), (200, version));
        assert_eq!(
            stream.headers.get("content-type").unwrap(),
            "text/event-stream"
        );
        let connected = stream
            .next_within(PROMPTLY)
            .await
            .unwrap_or_else(|| panic!("{version:?}: `connected` arrives at once"));
        assert_eq!(connected.event, "connected");
        assert_eq!(stream.retry(), Some(1234));
        streams.push((stream, version));
    }

    let published = cluster
        .send(&json!({"user": "alice", "event": "hello", "data": 1}))
        .await;
    for (mut stream, version) in streams {
        let event = stream
            .next_within(PROMPTLY)
            .await
            .unwrap_or_else(|| panic!("{version:?}: the event arrives at once"));
        assert_eq!(
            (event.event.as_str(), event.id.as_deref(), data(&event)),
            ("hello", published["id"].as_str(), json!(1))
        );
    }
}

#[actix_web::test]
async fn metrics_are_not_served_through_nginx_but_health_is() {
    let Some(cluster) = Proxied::start(&[], &[]) else {
        return;
    };
    let client = cluster.nginx.client();
    let metrics = Answer::of(client.get(cluster.nginx.url("/metrics")).send()).await;
    assert_eq!(
        metrics.status, 403,
        "each node's metrics are scraped from the node"
    );
    let health = Answer::of(client.get(cluster.nginx.url("/healthz")).send()).await;
    assert_eq!(health.status, 200, "{health}");
}

#[actix_web::test]
async fn cookie_writes_through_nginx_need_the_origin_browsers_see() {
    let Some(cluster) = Proxied::start(&[], &[]) else {
        return;
    };
    let own = cluster.nginx.origin();
    let cases = [
        (
            Some(own.as_str()),
            202,
            "the proxy's own origin, port included",
        ),
        (Some("https://127.0.0.1"), 403, "the host without its port"),
        (Some("https://evil.example"), 403, "a foreign origin"),
        (None, 403, "no Origin"),
    ];
    // Over HTTP/2 the browser sends `:authority`, over HTTP/1.1 `Host`.
    for client in [cluster.nginx.client(), cluster.nginx.http1_client()] {
        for (origin, expected, what) in cases {
            let mut request = client
                .post(cluster.nginx.url("/api/send"))
                .cookie(Cookie::new("herald_token", admin_token()));
            if let Some(origin) = origin {
                request = request.insert_header(("origin", origin));
            }
            let answer = Answer::of(request.send_json(&json!({"event": "cookie"}))).await;
            assert_eq!(answer.status, expected, "{what}: {answer}");
        }
    }
}

#[actix_web::test]
async fn the_access_log_has_the_address_nginx_saw_not_one_the_client_claims() {
    let Some(cluster) = Proxied::start(&[], &[]) else {
        return;
    };
    let request = cluster
        .nginx
        .client()
        .get(cluster.nginx.url("/healthz?forged"))
        .insert_header(("x-forwarded-for", "203.0.113.9"))
        .insert_header(("forwarded", "for=198.51.100.7;proto=http"));
    assert_eq!(Answer::of(request.send()).await.status, 200);
    // The access-log line is written once the answer is; wait for it.
    let deadline = Instant::now() + TIMEOUT;
    let line = loop {
        let logs = cluster
            .nodes
            .iter()
            .map(|node| node.log())
            .collect::<String>();
        if let Some(line) = logs
            .lines()
            .find(|line| line.contains("GET /healthz?forged"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access-log line:\n{logs}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains("] 127.0.0.1 \"GET /healthz?forged\" 200"),
        "{line}"
    );
}

#[actix_web::test]
async fn heartbeats_keep_an_idle_stream_open_past_nginxs_read_timeout() {
    let Some(cluster) = Proxied::start(
        &[("HEARTBEAT_INTERVAL", "0.25")],
        &[("proxy_read_timeout 60s;", "proxy_read_timeout 1s;")],
    ) else {
        return;
    };
    let client = cluster.nginx.client();
    let token = user_token("alice", &[]);
    let mut stream = cluster.open_stream(&client, &token, None).await;
    assert_eq!(stream.next().await.event, "connected");
    // Twelve heartbeats take three read timeouts; a cut stream panics here.
    stream.wait_for_heartbeats(12).await;
    cluster
        .send(&json!({"user": "alice", "event": "still-here"}))
        .await;
    assert_eq!(stream.next().await.event, "still-here");
}

#[actix_web::test]
async fn nginx_cuts_a_stream_that_is_quiet_for_longer_than_its_read_timeout() {
    // Why the heartbeat must be shorter than the proxy's read timeout.
    let Some(cluster) = Proxied::start(
        &[("HEARTBEAT_INTERVAL", SLOW_HEARTBEAT)],
        &[("proxy_read_timeout 60s;", "proxy_read_timeout 1s;")],
    ) else {
        return;
    };
    let client = cluster.nginx.client();
    let mut stream = cluster
        .open_stream(&client, &user_token("alice", &[]), None)
        .await;
    assert_eq!(stream.next().await.event, "connected");
    let opened = Instant::now();
    assert!(stream.until_end().await.is_empty());
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "cut by the read timeout, not sooner: {:?}",
        opened.elapsed()
    );
}

#[test]
fn the_shipped_read_timeout_outlasts_several_default_heartbeats() {
    let template = template();
    let timeout = template
        .lines()
        .find_map(|line| line.trim().strip_prefix("proxy_read_timeout "))
        .expect("the template sets proxy_read_timeout");
    let timeout = nginx_seconds(timeout.trim_end_matches(';').trim());
    let heartbeat = config(&[]).heartbeat_interval;
    assert!(
        timeout >= 3 * heartbeat,
        "proxy_read_timeout {timeout:?} must allow for a few late heartbeats ({heartbeat:?} apart)"
    );
}

/// An nginx time such as `60s`, `5m` or `1h`.
fn nginx_seconds(value: &str) -> Duration {
    let (number, unit) = value.split_at(value.len() - 1);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a time nginx reads: {value}"));
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("a unit this test knows: {value}"),
    };
    Duration::from_secs(number * unit)
}

/// What one simulated browser tab got: every event, and how its stream went.
struct Followed {
    events: Vec<Value>,
    /// How many times it opened a stream again after one ended.
    reconnects: usize,
    /// `recovered` of each resume's `connected` event.
    resumes_recovered: Vec<bool>,
}

/// Reads events from `url` as `EventSource` would: when the stream ends,
/// waits `retry:` and opens it again with `Last-Event-ID`. Returns once the
/// event named `last` has arrived.
async fn follow(client: awc::Client, url: String, token: String) -> Followed {
    let mut followed = Followed {
        events: Vec::new(),
        reconnects: 0,
        resumes_recovered: Vec::new(),
    };
    let mut last_id: Option<String> = None;
    loop {
        let mut request = client.get(&url).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.insert_header(("last-event-id", id.as_str()));
        }
        let mut stream = Sse::open(request).await;
        if stream.status != 200 {
            let status = stream.status;
            panic!("stream refused with {status}: {}", stream.body_text().await);
        }
        loop {
            let Some(frame) = stream.next_within(TIMEOUT).await else {
                assert!(stream.is_over(), "the stream went quiet without ending");
                break;
            };
            if frame.event == "connected" {
                if last_id.is_some() {
                    followed
                        .resumes_recovered
                        .push(data(&frame)["recovered"].as_bool().unwrap());
                }
                continue;
            }
            last_id = frame.id.clone();
            followed.events.push(data(&frame));
            if frame.event == "last" {
                return followed;
            }
        }
        // Ended: by the node's drain, or at once by a node that is stopping.
        followed.reconnects += 1;
        assert!(followed.reconnects < 20, "reconnected too often");
        let retry = Duration::from_millis(stream.retry().unwrap_or(5000));
        actix_web::rt::time::sleep(retry).await;
    }
}

#[actix_web::test]
async fn a_node_stopped_with_sigterm_hands_its_streams_to_the_other_node_losing_nothing() {
    let Some(mut cluster) = Proxied::start(
        &[
            ("SHUTDOWN_DRAIN_SECS", "0.5"),
            ("SSE_RETRY_TIMEOUT", "100"),
            ("HEARTBEAT_INTERVAL", SLOW_HEARTBEAT),
        ],
        &[],
    ) else {
        return;
    };
    // Four browser tabs, each on its own connection to nginx.
    const TABS: u64 = 4;
    let tabs: Vec<_> = (0..TABS)
        .map(|_| {
            actix_web::rt::spawn(follow(
                cluster.nginx.client(),
                cluster.nginx.url("/api/events"),
                user_token("alice", &[]),
            ))
        })
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    let before = loop {
        let counts = cluster.connections().await;
        if counts.iter().sum::<u64>() == TABS {
            break counts;
        }
        assert!(Instant::now() < deadline, "streams open: {counts:?}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        before.iter().all(|&count| count > 0),
        "nginx spreads the streams over both nodes: {before:?}"
    );
    let mut published = 0;
    for _ in 0..5 {
        cluster
            .send(&json!({"user": "alice", "data": published}))
            .await;
        published += 1;
    }

    // The first node stops; until it has exited, events keep coming, published
    // on the other node directly.
    let [stopping, staying] = &mut cluster.nodes;
    stopping.terminate();
    let deadline = Instant::now() + TIMEOUT;
    let exited_cleanly = loop {
        if let Some(clean) = stopping.exited() {
            break clean;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        let answer = staying
            .publish(&admin_token(), &json!({"user": "alice", "data": published}))
            .await;
        assert_eq!(answer.status, 202, "{answer}; log:\n{}", staying.log());
        published += 1;
        // Events spread over the drain, not a burst before it.
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exited_cleanly, "SIGTERM ends the node with status 0");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let on_staying = staying.stats().await["connections"].as_u64().unwrap();
        if on_staying == TABS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every tab is on the node left: {on_staying}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }

    // Publishing through nginx finds the node that is left.
    for _ in 0..4 {
        cluster
            .send(&json!({"user": "alice", "data": published}))
            .await;
        published += 1;
    }
    cluster
        .send(&json!({"user": "alice", "event": "last", "data": published}))
        .await;
    published += 1;

    let expected: Vec<Value> = (0..published).map(|n| json!(n)).collect();
    let mut moved = 0;
    for tab in tabs {
        let followed = timeout(TIMEOUT, tab)
            .await
            .expect("every tab gets the last event")
            .expect("the tab's task did not panic");
        assert_eq!(
            followed.events, expected,
            "every event once, in order, whichever node the tab was on"
        );
        assert!(
            followed
                .resumes_recovered
                .iter()
                .all(|&recovered| recovered),
            "each resume reached back to the tab's last id"
        );
        if followed.reconnects > 0 {
            moved += 1;
        }
    }
    assert!(
        moved >= before[0],
        "the stopped node's {} stream(s) moved; {moved} tab(s) reconnected",
        before[0]
    );
}
