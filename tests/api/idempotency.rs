//! `Idempotency-Key` on `POST /api/send`: a repeat publishes nothing and
//! answers the first answer again; another body with the key is refused.

use serde_json::{json, Value};

use crate::helpers::binary::Herald;
use crate::helpers::*;

/// `POST /api/send` with `body`, under `key` when given, as `token`'s publisher.
async fn send(server: &TestServer, token: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut request = server
        .client()
        .post(server.url("/api/send"))
        .bearer_auth(token);
    if let Some(key) = key {
        request = request.insert_header(("idempotency-key", key));
    }
    Answer::of(request.send_json(body)).await
}

fn replayed(answer: &Answer) -> bool {
    answer
        .headers
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

/// The names of the next `count` events on `stream` after `connected`.
async fn names(stream: &mut Sse, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    while names.len() < count {
        let frame = stream.next().await;
        if frame.event != "connected" {
            names.push(frame.event);
        }
    }
    names
}

async fn a_repeat_publishes_nothing_and_answers_the_first_answer_again(storage: &str) {
    let server = spawn(&[("STORAGE", storage)]).await;
    let (mut stream, _) = server.subscribe(&user_token("alice", &[]), "").await;
    let admin = admin_token();
    let body = json!({"user": "alice", "event": "order", "data": {"n": 1}});
    let first = send(&server, &admin, Some("order-1"), &body).await;
    assert_eq!(first.status, 202, "{first}");
    assert!(!replayed(&first));

    // The same events, spaced and ordered differently, are the same body.
    let again = json!({"data": {"n": 1}, "event": "order", "user": "alice"});
    let repeat = send(&server, &admin, Some("order-1"), &again).await;
    assert_eq!(repeat.status, 202, "{repeat}");
    assert!(replayed(&repeat), "{:?}", repeat.headers);
    assert_eq!(repeat.body, first.body, "the first answer, to the byte");

    let conflict = send(
        &server,
        &admin,
        Some("order-1"),
        &json!({"user": "alice", "event": "order", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(conflict.status, 422, "{conflict}");
    assert_eq!(conflict.json()["error"], "idempotency_conflict");

    // Keys are the publisher's own: another publisher's same key is new.
    let other = token(json!({"sub": "other-backend", "exp": now() + 3600, "roles": ["admin"]}));
    let theirs = send(&server, &other, Some("order-1"), &body).await;
    assert_eq!(theirs.status, 202);
    assert!(!replayed(&theirs));
    assert_ne!(theirs.json()["id"], first.json()["id"]);

    let plain = send(
        &server,
        &admin,
        None,
        &json!({"user": "alice", "event": "last"}),
    )
    .await;
    assert_eq!(plain.status, 202);
    assert_eq!(
        names(&mut stream, 3).await,
        ["order", "order", "last"],
        "the repeat and the conflict published nothing"
    );
    assert_eq!(server.stats().await["events_published"], 3);
}

#[actix_web::test]
async fn a_repeat_publishes_nothing_and_answers_the_first_answer_again_in_memory() {
    a_repeat_publishes_nothing_and_answers_the_first_answer_again("memory").await;
}

#[actix_web::test]
async fn a_repeat_publishes_nothing_and_answers_the_first_answer_again_on_disk() {
    a_repeat_publishes_nothing_and_answers_the_first_answer_again("disk").await;
}

#[actix_web::test]
async fn a_batch_is_replayed_whole_and_bad_keys_are_refused() {
    let server = spawn(&[]).await;
    let admin = admin_token();
    let batch = json!([{"event": "a"}, {"event": "b", "user": "alice"}]);
    let first = send(&server, &admin, Some("batch-7"), &batch).await;
    assert_eq!(first.status, 202, "{first}");
    assert_eq!(first.json()["events"].as_array().unwrap().len(), 2);
    let repeat = send(&server, &admin, Some("batch-7"), &batch).await;
    assert!(replayed(&repeat));
    assert_eq!(repeat.body, first.body);

    let long = "k".repeat(129);
    for bad in ["", "has space", "naïve", long.as_str()] {
        let request = server
            .client()
            .post(server.url("/api/send"))
            .bearer_auth(&admin)
            .insert_header(("idempotency-key", bad));
        let answer = Answer::of(request.send_json(&json!({"event": "x"}))).await;
        assert_eq!(answer.status, 400, "key {bad:?}: {answer}");
        assert_eq!(answer.json()["error"], "bad_request");
    }
    assert_eq!(
        send(
            &server,
            &admin,
            Some(&"k".repeat(128)),
            &json!({"event": "x"})
        )
        .await
        .status,
        202,
        "128 characters is the most"
    );
    assert_eq!(server.stats().await["events_published"], 3);
}

#[actix_web::test]
async fn concurrent_repeats_of_one_key_publish_once() {
    for storage in ["memory", "disk"] {
        let server = spawn(&[("STORAGE", storage)]).await;
        let (mut stream, _) = server.subscribe(&user_token("alice", &[]), "").await;
        let admin = admin_token();
        let body = json!({"user": "alice", "event": "once"});
        let answers = futures_util::future::join_all(
            (0..20).map(|_| send(&server, &admin, Some("same"), &body)),
        )
        .await;
        let first: Vec<&Answer> = answers.iter().filter(|a| !replayed(a)).collect();
        assert_eq!(
            first.len(),
            1,
            "{storage}: one publish, the others replayed"
        );
        for answer in &answers {
            assert_eq!(answer.status, 202, "{answer}");
            assert_eq!(answer.body, first[0].body);
        }
        send(
            &server,
            &admin,
            None,
            &json!({"user": "alice", "event": "after"}),
        )
        .await;
        assert_eq!(names(&mut stream, 2).await, ["once", "after"], "{storage}");
    }
}

#[actix_web::test]
async fn a_key_survives_a_kill_and_a_restart_with_the_disk_store() {
    let store = DataDir::new();
    let env = [("JWT_SECRET", SECRET), ("DATA_DIR", store.path())];
    let mut herald = Herald::start(&env);
    let admin = admin_token();
    let body = json!({"user": "alice", "event": "paid", "data": {"order": 42}});
    let publish = |herald: &Herald, body: &Value| {
        let request = client()
            .post(herald.url("/api/send"))
            .bearer_auth(admin_token())
            .insert_header(("idempotency-key", "payment-42"));
        Answer::of(request.send_json(body))
    };
    let first = publish(&herald, &body).await;
    assert_eq!(first.status, 202, "{first}");
    herald.kill_hard();

    let herald = Herald::start(&env);
    let repeat = publish(&herald, &body).await;
    assert_eq!(repeat.status, 202, "{repeat}");
    assert!(replayed(&repeat), "the key was kept through kill -9");
    assert_eq!(repeat.body, first.body);
    let conflict = publish(&herald, &json!({"user": "alice", "event": "paid"})).await;
    assert_eq!(conflict.status, 422, "{conflict}");
    let stats = herald.stats().await;
    assert_eq!(
        stats["events_published"], 0,
        "nothing published after the restart: {stats}"
    );
    drop(admin);
}

#[actix_web::test]
async fn a_key_is_one_publish_across_nodes_on_redis() {
    let Some(redis) = crate::helpers::redis::Redis::start() else {
        return;
    };
    let (a, b) = (redis.node(&[]).await, redis.node(&[]).await);
    let (mut on_b, _) = b.subscribe(&user_token("alice", &[]), "").await;
    let admin = admin_token();
    let body = json!({"user": "alice", "event": "shipped", "data": {"parcel": 9}});
    let first = send(&a, &admin, Some("ship-9"), &body).await;
    assert_eq!(first.status, 202, "{first}");
    assert!(!replayed(&first));

    // A retry that a load balancer sends to the other node.
    let repeat = send(&b, &admin, Some("ship-9"), &body).await;
    assert_eq!(repeat.status, 202, "{repeat}");
    assert!(replayed(&repeat), "node b knows node a's key");
    assert_eq!(
        repeat.body, first.body,
        "the first node's answer, to the byte"
    );
    let conflict = send(&b, &admin, Some("ship-9"), &json!({"user": "alice"})).await;
    assert_eq!(conflict.status, 422, "{conflict}");
    assert_eq!(conflict.json()["error"], "idempotency_conflict");

    // The same key at once on both nodes: one publish.
    let both = json!({"user": "alice", "event": "raced"});
    let (x, y) = futures_util::future::join(
        send(&a, &admin, Some("race"), &both),
        send(&b, &admin, Some("race"), &both),
    )
    .await;
    assert_eq!((x.status, y.status), (202, 202));
    assert_eq!(
        u8::from(replayed(&x)) + u8::from(replayed(&y)),
        1,
        "one of the two is a replay"
    );
    assert_eq!(x.body, y.body);

    a.send(json!({"user": "alice", "event": "last"})).await;
    assert_eq!(names(&mut on_b, 3).await, ["shipped", "raced", "last"]);
}
