//! Event ids, history and `Last-Event-ID` resume.

use std::time::Duration;

use actix_web::rt::time::timeout;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::helpers::*;

async fn next_data(stream: &mut Sse) -> Value {
    data(&stream.next().await)
}

#[actix_web::test]
async fn resume_replays_exactly_the_missed_events_in_order_then_goes_live() {
    let server = spawn(&[]).await;
    let token = user_token("alice", &[]);
    let (mut stream, _) = server.subscribe(&token, "").await;
    server.send(json!({"user": "alice", "data": 0})).await;
    let seen = stream.next().await;
    drop(stream);
    for n in 1..=3 {
        server.send(json!({"user": "alice", "data": n})).await;
    }
    let (mut resumed, connected) = server.resume(&token, "", seen.id.as_deref().unwrap()).await;
    assert_eq!(
        (
            connected["replayed"].as_u64(),
            connected["recovered"].as_bool()
        ),
        (Some(3), Some(true))
    );
    for n in 1..=3 {
        assert_eq!(next_data(&mut resumed).await, json!(n));
    }
    server.send(json!({"user": "alice", "data": 4})).await;
    assert_eq!(next_data(&mut resumed).await, json!(4));
}

#[actix_web::test]
async fn resume_also_works_with_the_last_event_id_query_parameter() {
    let server = spawn(&[]).await;
    let token = user_token("alice", &[]);
    let first = server.send(json!({"data": "a"})).await;
    server.send(json!({"data": "b"})).await;
    let query = format!("last_event_id={}", first["id"].as_str().unwrap());
    let (mut stream, connected) = server.subscribe(&token, &query).await;
    assert_eq!(
        (
            connected["replayed"].as_u64(),
            connected["recovered"].as_bool()
        ),
        (Some(1), Some(true))
    );
    assert_eq!(next_data(&mut stream).await, json!("b"));
}

#[actix_web::test]
async fn replay_holds_only_what_this_stream_may_receive_now() {
    let server = spawn(&[]).await;
    let start = server.send(json!({"event": "start"})).await;
    let batch = json!([
        {"data": "for alice", "user": "alice"},
        {"data": "for bob", "user": "bob"},
        {"data": "on news", "channel": "news"},
        {"data": "on secret", "channel": "secret"},
        {"data": "on sport", "channel": "sport"},
        {"data": "for everyone"},
    ]);
    server.send(batch).await;
    // Alice now subscribes to news and sport, but her token does not allow "secret".
    let token = user_token("alice", &["news", "sport"]);
    let (mut stream, connected) = server
        .resume(&token, "channels=news,sport", start["id"].as_str().unwrap())
        .await;
    assert_eq!(connected["replayed"], 4);
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(next_data(&mut stream).await);
    }
    assert_eq!(
        replayed,
        [
            json!("for alice"),
            json!("on news"),
            json!("on sport"),
            json!("for everyone")
        ]
    );
    assert!(stream.quiet_for(Duration::from_millis(200)).await);
}

#[actix_web::test]
async fn unknown_or_evicted_ids_resume_with_recovered_false() {
    let server = spawn(&[("HISTORY_PER_AUDIENCE", "3")]).await;
    let token = user_token("alice", &[]);
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            server.send(json!({"data": n})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let newest: herald::EventId = ids[5].parse().unwrap();
    let future = herald::EventId::new(newest.epoch + 1, 1).to_string();
    let cases = [
        ("retained", ids[3].clone(), true, 2),
        ("evicted", ids[0].clone(), false, 3),
        ("garbage", "garbage".to_owned(), false, 0),
        ("injection attempt", "1-1\nevent: x".to_owned(), false, 0),
        ("from a later epoch", future, false, 0),
        ("far too long", "9".repeat(100), false, 0),
    ];
    for (case, id, recovered, replayed) in cases {
        let request = server
            .client()
            .get(server.url(&format!("/api/events?last_event_id={}", urlencode(&id))))
            .bearer_auth(&token);
        let mut stream = Sse::open(request).await;
        assert_eq!(stream.status, 200, "{case}");
        let connected = data(&stream.next().await);
        assert_eq!(connected["recovered"], recovered, "{case}");
        assert_eq!(connected["replayed"], replayed, "{case}");
        // The replay is the newest events (data 0 to 5), oldest first.
        for n in 6 - replayed..6 {
            let frame = stream.next().await;
            assert!(frame.id.is_some(), "{case}");
            assert_eq!(data(&frame), json!(n), "{case}");
        }
    }
}

#[actix_web::test]
async fn an_id_from_before_a_restart_is_unknown_but_events_since_are_replayed() {
    let token = user_token("alice", &[]);
    let before = spawn(&[]).await;
    for n in 0..3 {
        before.send(json!({"data": n})).await;
    }
    let old_id = before.send(json!({"data": "last before restart"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    before.stop().await;

    let after = spawn(&[]).await;
    let since = after.send(json!({"data": "after restart"})).await;
    assert!(
        since["id"]
            .as_str()
            .unwrap()
            .parse::<herald::EventId>()
            .unwrap()
            > old_id.parse().unwrap(),
        "ids keep increasing across a restart"
    );
    let (mut stream, connected) = after.resume(&token, "", &old_id).await;
    assert_eq!(
        connected["recovered"], false,
        "the old process's history is gone"
    );
    assert_eq!(connected["replayed"], 1);
    assert_eq!(next_data(&mut stream).await, json!("after restart"));
}

/// How far the publisher in the test below has got.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// Publish requests sent.
    requested: u64,
    /// Publish requests answered 202: those events are in history.
    accepted: u64,
}

#[actix_web::test]
async fn a_client_dropping_and_resuming_at_random_moments_gets_every_event_once_in_order() {
    let server = spawn(&[]).await;
    const TOTAL: u64 = 300;
    let seed = now();
    println!("random seed {seed}");
    let mut random = seed | 1;
    let mut next_random = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let token = user_token("alice", &[]);
    // The first stream is open before anything is published.
    let (mut stream, _) = server.subscribe(&token, "").await;
    let (progress, mut watch_progress) = watch::channel(Progress::default());
    let url = server.url("/api/send");
    let publisher = actix_web::rt::spawn(async move {
        let client = client();
        let mut ids = Vec::new();
        for n in 0..TOTAL {
            progress.send_modify(|p| p.requested += 1);
            let request = client.post(&url).bearer_auth(admin_token());
            let answer = Answer::of(request.send_json(&json!({"user": "alice", "data": n}))).await;
            assert_eq!(answer.status, 202, "{answer}");
            ids.push(answer.json()["id"].as_str().unwrap().to_owned());
            progress.send_modify(|p| p.accepted += 1);
        }
        ids
    });
    // Every event received, over all the streams, and its id.
    let mut received: Vec<(u64, String)> = Vec::new();
    let (mut resumes, mut replayed_in_all) = (0, 0);
    loop {
        let take = next_random() % 25 + 1;
        for _ in 0..take {
            let frame = stream.next().await;
            let id = frame.id.clone().expect("an event has an id");
            received.push((data(&frame).as_u64().unwrap(), id));
            if received.len() as u64 == TOTAL {
                break;
            }
        }
        if received.len() as u64 == TOTAL {
            break;
        }
        drop(stream);
        // Resume only once an event this client has not received has been
        // accepted, so that every resume has something to replay.
        let seen = received.len() as u64;
        let accepted = timeout(TIMEOUT, watch_progress.wait_for(|p| p.accepted > seen))
            .await
            .expect("the publisher went on")
            .expect("the publisher did not fail")
            .accepted;
        let (_, last_id) = received.last().unwrap();
        let (resumed, connected) = server.resume(&token, "", last_id).await;
        stream = resumed;
        let requested = watch_progress.borrow().requested;
        assert_eq!(connected["recovered"], true, "history covers the gap");
        // The replay is what the server held after the last event received
        // when it registered the stream: at least every event accepted before
        // the request, at most every event requested before `connected`
        // arrived. That the stream then delivers exactly these, and then the
        // live ones, is checked with everything received below.
        let replayed = connected["replayed"].as_u64().unwrap();
        assert!(
            (accepted - seen..=requested - seen).contains(&replayed),
            "resuming after {seen} events, {replayed} were replayed, though {accepted} \
             had been accepted before and {requested} requested"
        );
        resumes += 1;
        replayed_in_all += replayed;
    }
    let published = publisher.await.unwrap();
    println!("{resumes} resumes replayed {replayed_in_all} events");
    let (numbers, ids): (Vec<u64>, Vec<String>) = received.into_iter().unzip();
    assert_eq!(
        numbers,
        (0..TOTAL).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(ids, published, "each with the id it was published with");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
