//! Opening streams and delivering targeted, channel and global events.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn stream_opens_with_retry_then_connected_and_the_contract_headers() {
    let server = spawn(&[("SSE_RETRY_TIMEOUT", "1234")]).await;
    let (stream, connected) = server
        .subscribe(&user_token("alice", &["news"]), "channel=news")
        .await;
    assert_eq!(
        stream.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(stream.headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(stream.headers.get("x-accel-buffering").unwrap(), "no");
    assert!(stream.headers.get("content-encoding").is_none());
    assert_eq!(stream.retry(), Some(1234), "retry comes before connected");
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["channels"], json!(["news"]));
    assert_eq!(connected["replayed"], 0);
    assert_eq!(connected["recovered"], true);
    let client_id = connected["client_id"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(client_id).is_ok(),
        "{client_id} is a uuid"
    );
}

#[actix_web::test]
async fn streams_are_not_compressed_even_when_the_client_asks() {
    let server = spawn(&[]).await;
    let request = server
        .client()
        .get(server.url("/api/events"))
        .bearer_auth(user_token("alice", &[]))
        .insert_header(("accept-encoding", "gzip, br, deflate"));
    let mut stream = Sse::open(request).await;
    assert_eq!(stream.status, 200);
    assert!(stream.headers.get("content-encoding").is_none());
    assert_eq!(stream.next().await.event, "connected");
}

#[actix_web::test]
async fn targeted_event_does_not_reach_other_users() {
    let server = spawn(&[]).await;
    let (mut alice, _) = server.subscribe(&user_token("alice", &[]), "").await;
    let (mut bob, _) = server.subscribe(&user_token("bob", &[]), "").await;
    let answer = server
        .send(json!({"event": "update", "user": "alice", "data": {"n": 1}}))
        .await;
    assert_eq!(answer["recipients"], 1);
    let frame = alice.next().await;
    assert_eq!(frame.event, "update");
    assert_eq!(data(&frame), json!({"n": 1}));
    assert_eq!(frame.id.as_deref(), answer["id"].as_str());
    // A later global event proves bob's stream works and got nothing before it.
    server.send(json!({"event": "everyone"})).await;
    assert_eq!(bob.next().await.event, "everyone");
}

#[actix_web::test]
async fn every_stream_of_a_user_receives_its_events() {
    let server = spawn(&[]).await;
    let token = user_token("alice", &[]);
    let (mut tab1, _) = server.subscribe(&token, "").await;
    let (mut tab2, _) = server.subscribe(&token, "").await;
    let answer = server.send(json!({"user": "alice", "data": "hi"})).await;
    assert_eq!(answer["recipients"], 2);
    for tab in [&mut tab1, &mut tab2] {
        let frame = tab.next().await;
        assert_eq!(frame.event, "message", "the default event name");
        assert_eq!(data(&frame), json!("hi"));
    }
}

#[actix_web::test]
async fn channel_event_reaches_only_subscribers_of_that_channel() {
    let server = spawn(&[]).await;
    let (mut news, _) = server
        .subscribe(&user_token("alice", &["news", "sport"]), "channel=news")
        .await;
    let (mut sport, _) = server
        .subscribe(&user_token("bob", &["*"]), "channels=sport")
        .await;
    let answer = server
        .send(json!({"event": "headline", "channel": "news"}))
        .await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(news.next().await.event, "headline");
    server
        .send(json!({"event": "score", "channel": "sport"}))
        .await;
    assert_eq!(
        sport.next().await.event,
        "score",
        "sport got nothing before its own event"
    );
    assert!(news.quiet_for(Duration::from_millis(200)).await);
}

#[actix_web::test]
async fn global_event_reaches_every_stream() {
    let server = spawn(&[]).await;
    let mut streams = Vec::new();
    for user in ["a", "b", "c"] {
        streams.push(
            server
                .subscribe(&user_token(user, &["x"]), "channel=x")
                .await
                .0,
        );
    }
    let answer = server.send(json!({"event": "all", "data": [1, 2]})).await;
    assert_eq!(answer["recipients"], 3);
    for stream in &mut streams {
        let frame = stream.next().await;
        assert_eq!((frame.event.as_str(), data(&frame)), ("all", json!([1, 2])));
    }
}

#[actix_web::test]
async fn a_stream_matching_several_targets_gets_the_event_once_and_is_counted_once() {
    let server = spawn(&[]).await;
    let (mut alice, _) = server
        .subscribe(&user_token("alice", &["a", "b"]), "channels=a,b")
        .await;
    let answer = server
        .send(json!({"event": "once", "user": "alice", "users": ["alice"], "channels": ["a", "b"]}))
        .await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(alice.next().await.event, "once");
    server.send(json!({"event": "next"})).await;
    assert_eq!(
        alice.next().await.event,
        "next",
        "no second copy came first"
    );
}

#[actix_web::test]
async fn a_batch_is_published_in_order_with_increasing_ids() {
    let server = spawn(&[]).await;
    let (mut stream, _) = server
        .subscribe(&user_token("alice", &["n"]), "channel=n")
        .await;
    let answer = server
        .send(json!([
            {"event": "one", "user": "alice"},
            {"event": "two", "channel": "n"},
            {"event": "three"},
            {"event": "nobody", "user": "bob"},
        ]))
        .await;
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    let recipients: Vec<u64> = events
        .iter()
        .map(|e| e["recipients"].as_u64().unwrap())
        .collect();
    assert_eq!(recipients, [1, 1, 1, 0]);
    let ids: Vec<herald::EventId> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids increase: {ids:?}"
    );
    for (name, id) in ["one", "two", "three"].iter().zip(&ids) {
        let frame = stream.next().await;
        assert_eq!(&frame.event, name);
        assert_eq!(frame.id, Some(id.to_string()));
    }
}

#[actix_web::test]
async fn data_with_line_breaks_arrives_as_one_event() {
    let server = spawn(&[]).await;
    let (mut stream, _) = server.subscribe(&user_token("alice", &[]), "").await;
    let text = "line one\nline two\r\nid: 666\n\nevent: injected";
    server
        .send(json!({"event": "note", "data": {"text": text}}))
        .await;
    let frame = stream.next().await;
    assert_eq!(frame.event, "note");
    assert_eq!(data(&frame)["text"], text);
    server.send(json!({"event": "after"})).await;
    assert_eq!(
        stream.next().await.event,
        "after",
        "nothing was split off the first event"
    );
}

#[actix_web::test]
async fn unknown_paths_get_a_json_404() {
    let server = spawn(&[]).await;
    let answer = server.get("/nope").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "not_found");
}

#[actix_web::test]
async fn stats_metrics_and_health_report_what_is_open() {
    let server = spawn(&[]).await;
    let (_a, _) = server
        .subscribe(&user_token("alice", &["news"]), "channel=news")
        .await;
    let (mut b, _) = server
        .subscribe(&user_token("bob", &["news"]), "channel=news")
        .await;
    server.send(json!({"channel": "news"})).await;
    b.next().await;
    let stats = server.stats().await;
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["users"], 2);
    assert_eq!(stats["channels"]["news"], 2);
    assert_eq!(stats["events_published"], 1);
    assert!(stats["events_delivered"].as_u64().unwrap() >= 1);
    assert_eq!(stats["slow_client_disconnects"], 0);
    assert!(stats["uptime_secs"].is_u64());

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for line in [
        "herald_connections 2",
        "herald_users 2",
        "herald_events_published_total 1",
        "herald_channel_subscribers{channel=\"news\"} 2",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), &json!({"status": "ok"}));
}

#[actix_web::test]
async fn stats_need_an_admin_token() {
    let server = spawn(&[]).await;
    let anonymous = server.get_stats(None).await;
    assert_eq!(anonymous.status, 401);
    let user = server.get_stats(Some(&user_token("alice", &[]))).await;
    assert_eq!(user.status, 403);
    assert_eq!(user.json()["error"], "forbidden");
}

#[actix_web::test]
async fn a_wrong_method_on_a_known_path_gets_a_json_405() {
    let server = spawn(&[]).await;
    for (method, path) in [
        ("GET", "/api/send"),
        ("POST", "/api/events"),
        ("DELETE", "/api/stats"),
        ("POST", "/healthz"),
    ] {
        let request = server
            .client()
            .request(method.parse().unwrap(), server.url(path));
        let answer = Answer::of(request.send()).await;
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(
            answer.json()["error"],
            "method_not_allowed",
            "{method} {path}"
        );
    }
}

#[actix_web::test]
async fn events_from_many_concurrent_publishers_all_arrive_once_in_id_order() {
    let server = spawn(&[]).await;
    let (mut stream, _) = server.subscribe(&user_token("alice", &[]), "").await;
    const PUBLISHERS: usize = 20;
    const EACH: usize = 20;
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let url = server.url("/api/send");
        tasks.push(actix_web::rt::spawn(async move {
            let client = client();
            let mut ids = Vec::new();
            for n in 0..EACH {
                let request = client.post(&url).bearer_auth(admin_token());
                let answer = Answer::of(request.send_json(&json!({"data": [publisher, n]}))).await;
                assert_eq!(answer.status, 202);
                ids.push(answer.json()["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    let mut received = Vec::new();
    for _ in 0..PUBLISHERS * EACH {
        received.push(stream.next().await.id.unwrap());
    }
    let parse = |id: &String| id.parse::<herald::EventId>().unwrap();
    assert!(
        received.windows(2).all(|w| parse(&w[0]) < parse(&w[1])),
        "delivered in id order"
    );
    accepted.sort_by_key(parse);
    assert_eq!(received, accepted, "every accepted event, once");
    assert_eq!(server.stats().await["events_published"], PUBLISHERS * EACH);
}

#[actix_web::test]
async fn only_allowed_origins_get_cors_headers_with_credentials() {
    let server = spawn(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]).await;
    let preflight = |origin: &str| {
        server
            .client()
            .request(actix_web::http::Method::OPTIONS, server.url("/api/events"))
            .insert_header(("origin", origin.to_owned()))
            .insert_header(("access-control-request-method", "GET"))
            .insert_header(("access-control-request-headers", "last-event-id"))
    };
    let allowed = Answer::of(preflight("https://app.example").send()).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        allowed.header("access-control-allow-credentials"),
        Some("true")
    );
    let other = Answer::of(preflight("https://evil.example").send()).await;
    assert!(other.header("access-control-allow-origin").is_none());

    let request = server
        .client()
        .get(server.url("/api/events"))
        .bearer_auth(user_token("alice", &[]))
        .insert_header(("origin", "https://app.example"));
    let mut stream = Sse::open(request).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    assert_eq!(stream.next().await.event, "connected");
}

/// Reads from `socket` into `buffer` until it holds `text`.
async fn read_until(socket: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>, text: &str) {
    use tokio::io::AsyncReadExt;
    actix_web::rt::time::timeout(TIMEOUT, async {
        while !String::from_utf8_lossy(buffer).contains(text) {
            assert_ne!(socket.read_buf(buffer).await.unwrap(), 0, "closed early");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{text:?} never came: {}", String::from_utf8_lossy(buffer)));
}

/// HTTP/1.0 has no chunked encoding: the stream's body must come as plain
/// bytes until the connection closes, with no chunk-size lines among the
/// events.
#[actix_web::test]
async fn an_http_1_0_client_gets_a_body_without_chunk_framing() {
    use tokio::io::AsyncWriteExt;
    let server = spawn(&[]).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let request = format!(
        "GET /api/events HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        user_token("alice", &[])
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    read_until(&mut socket, &mut buffer, "event: connected").await;
    server
        .publish(&admin_token(), &json!({"user": "alice", "event": "hello"}))
        .await;
    read_until(&mut socket, &mut buffer, "event: hello").await;
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        body.starts_with("retry:"),
        "the body starts with the events: {body:?}"
    );
    for line in body.lines() {
        assert!(
            line.is_empty() || line.starts_with(':') || line.contains(':'),
            "a chunk-size line in the event stream: {line:?} in {body:?}"
        );
    }
}
