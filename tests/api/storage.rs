//! The durable store, tested on the `herald` binary with real files: a crash
//! right after `202`, start-up faults, a full disk, and a flood.

use serde_json::{json, Value};

use crate::helpers::binary::{run_to_exit, Herald};
use crate::helpers::*;

fn id_of(answer: &Answer) -> String {
    answer.json()["id"].as_str().unwrap().to_owned()
}

/// With `DURABILITY=disk` (a sync before each answer, shared).
#[actix_web::test]
async fn a_kill_right_after_the_answers_loses_nothing_and_ids_keep_increasing() {
    let store = DataDir::new();
    let env = [
        ("JWT_SECRET", SECRET),
        ("DATA_DIR", store.path()),
        ("DURABILITY", "disk"),
    ];
    let mut herald = Herald::start(&env);
    let admin = admin_token();
    let mut ids = Vec::new();
    // Concurrent publishers share syncs; every 202 must still mean "on disk".
    for round in 0..10 {
        let bodies: Vec<Value> = (0..5)
            .map(|n| json!({"user": "alice", "event": "order", "data": {"round": round, "n": n}}))
            .collect();
        let answers =
            futures_util::future::join_all(bodies.iter().map(|body| herald.publish(&admin, body)))
                .await;
        for answer in answers {
            assert_eq!(answer.status, 202, "{answer}");
            ids.push(id_of(&answer));
        }
    }
    let batch: Vec<Value> = (0..20)
        .map(|n| json!({"user": "alice", "event": "batch", "data": n}))
        .collect();
    let answer = herald.publish(&admin, &json!(batch)).await;
    assert_eq!(answer.status, 202);
    ids.extend(
        answer.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["id"].as_str().unwrap().to_owned()),
    );
    herald.kill_hard();

    let herald = Herald::start(&env);
    let mut sorted: Vec<herald::EventId> = ids.iter().map(|id| id.parse().unwrap()).collect();
    sorted.sort();
    let first = sorted[0].to_string();
    let request = client()
        .get(herald.url("/api/events"))
        .bearer_auth(user_token("alice", &[]))
        .insert_header(("last-event-id", first.as_str()));
    let mut stream = Sse::open(request).await;
    let connected = data(&stream.next().await);
    assert_eq!(connected["recovered"], true);
    assert_eq!(
        connected["replayed"].as_u64().unwrap() as usize,
        ids.len() - 1
    );
    let mut replayed = Vec::new();
    for _ in 1..ids.len() {
        replayed.push(
            stream
                .next()
                .await
                .id
                .unwrap()
                .parse::<herald::EventId>()
                .unwrap(),
        );
    }
    assert_eq!(replayed, sorted[1..], "every event, in order, once");

    let after = herald
        .publish(&admin, &json!({"user": "alice", "event": "after"}))
        .await;
    let after: herald::EventId = id_of(&after).parse().unwrap();
    let newest = *sorted.last().unwrap();
    assert!(after > newest, "ids keep increasing");

    // An id the first process could have issued after its newest stored
    // event (as if a power loss took it) is not recovered.
    let lost = herald::EventId::new(newest.epoch, newest.seq + 1).to_string();
    let request = client()
        .get(herald.url("/api/events"))
        .bearer_auth(user_token("alice", &[]))
        .insert_header(("last-event-id", lost.as_str()));
    let mut stream = Sse::open(request).await;
    let connected = data(&stream.next().await);
    assert_eq!(connected["recovered"], false, "{connected}");
    assert_eq!(connected["replayed"], 1, "the event after the restart");
}

/// `DURABILITY=process` (the default) answers once the event is written
/// through to the operating system, without a sync: a `kill -9` in the
/// middle of a flood of concurrent publishes must still lose nothing answered.
#[actix_web::test]
async fn a_kill_dash_nine_under_a_publish_flood_loses_nothing_that_was_answered() {
    const PUBLISHERS: usize = 8;
    const KILL_AFTER: usize = 3000;
    let store = DataDir::new();
    let env = [
        ("JWT_SECRET", SECRET),
        ("DATA_DIR", store.path()),
        ("HISTORY_PER_AUDIENCE", "1000000"),
    ];
    let mut herald = Herald::start(&env);
    let url = herald.url("/api/send");
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel::<herald::EventId>();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|publisher| {
            let (url, answered, admin) = (url.clone(), answered.clone(), admin_token());
            actix_web::rt::spawn(async move {
                let client = client();
                for n in 0.. {
                    let body = json!({"user": "alice", "event": "flood",
                                      "data": {"publisher": publisher, "n": n}});
                    // Once the server is killed every request fails: done.
                    let request = client.post(&url).bearer_auth(&admin);
                    let Ok(mut response) = request.send_json(&body).await else {
                        return;
                    };
                    if response.status() != 202 {
                        return;
                    }
                    let Ok(answer) = response.json::<Value>().await else {
                        return;
                    };
                    let id = answer["id"].as_str().unwrap().parse().unwrap();
                    if answered.send(id).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(answered);
    let mut ids = Vec::new();
    while ids.len() < KILL_AFTER {
        let id = tokio::time::timeout(TIMEOUT, answers.recv())
            .await
            .expect("the flood goes on")
            .expect("publishers are running");
        ids.push(id);
    }
    // In the middle of the flood: requests are in flight on every publisher.
    herald.kill_hard();
    for publisher in publishers {
        tokio::time::timeout(TIMEOUT, publisher)
            .await
            .expect("a publisher ends once the server is gone")
            .unwrap();
    }
    while let Ok(id) = answers.try_recv() {
        ids.push(id);
    }
    ids.sort();

    let herald = Herald::start(&env);
    let first = ids[0].to_string();
    let request = client()
        .get(herald.url("/api/events"))
        .bearer_auth(user_token("alice", &[]))
        .insert_header(("last-event-id", first.as_str()));
    let mut stream = Sse::open(request).await;
    let connected = data(&stream.next().await);
    assert_eq!(connected["recovered"], true, "{connected}");
    let replayed = connected["replayed"].as_u64().unwrap() as usize;
    // Some events may have been written whose answer the kill cut off.
    assert!(replayed >= ids.len() - 1, "{replayed} of {}", ids.len());
    let mut stored = std::collections::BTreeSet::new();
    for _ in 0..replayed {
        let event = stream.next().await;
        stored.insert(event.id.unwrap().parse::<herald::EventId>().unwrap());
    }
    let lost: Vec<_> = ids[1..].iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered events were lost after kill -9, first {:?}",
        lost.len(),
        ids.len(),
        lost.first()
    );
    println!(
        "kill -9 after {} answered events ({} stored): none lost",
        ids.len(),
        stored.len() + 1
    );
}

#[test]
fn a_data_dir_that_cannot_be_created_stops_start_up_naming_it() {
    let data = DataDir::new();
    std::fs::write(&data.0, b"a file, not a directory").unwrap();
    let inside = data.0.join("store");
    let (ok, log) = run_to_exit(&[("DATA_DIR", inside.to_str().unwrap())]);
    assert!(!ok, "herald started on an unusable DATA_DIR");
    assert!(log.contains("DATA_DIR"), "{log}");
    assert!(log.contains(inside.to_str().unwrap()), "{log}");
    let _ = std::fs::remove_file(&data.0);
}

#[actix_web::test]
async fn a_damaged_store_stops_start_up_with_a_clear_message() {
    let data = DataDir::new();
    let mut herald = Herald::start(&[
        ("JWT_SECRET", SECRET),
        ("DATA_DIR", data.path()),
        ("MAX_BODY_BYTES", "2000000"),
    ]);
    // Enough that the write-ahead log is checkpointed into the file itself.
    let pad = "x".repeat(1000);
    for round in 0..8 {
        let batch: Vec<Value> = (0..1000)
            .map(|n| json!({"user": format!("user-{round}-{n}"), "data": {"pad": pad}}))
            .collect();
        assert_eq!(
            herald.publish(&admin_token(), &json!(batch)).await.status,
            202
        );
    }
    // A clean stop checkpoints the write-ahead log into the file.
    herald.terminate();
    assert!(herald.wait_exit(TIMEOUT).1, "{}", herald.log());
    drop(herald);

    let file = data.0.join("herald.db");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 1 << 20, "the events reached the file");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 8192].fill(0xA5);
    std::fs::write(&file, bytes).unwrap();
    let (ok, log) = run_to_exit(&[("DATA_DIR", data.path())]);
    assert!(!ok, "herald started on a damaged store");
    assert!(log.contains("damaged"), "{log}");
    assert!(log.contains("herald.db"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[actix_web::test]
async fn a_full_disk_answers_503_and_open_streams_stay_open() {
    // A file-size limit stands in for a full disk: writes past it fail.
    // Only the soft limit: lifting it later stands for freeing space.
    const LIMIT: u64 = 2 << 20;
    let herald = Herald::launch(
        &[("JWT_SECRET", SECRET), ("HEARTBEAT_INTERVAL", "0.3")],
        &["prlimit", &format!("--fsize={LIMIT}:unlimited")],
    );
    let request = client()
        .get(herald.url("/api/events"))
        .bearer_auth(user_token("alice", &[]));
    let mut stream = Sse::open(request).await;
    assert_eq!(stream.next().await.event, "connected");

    let pad = "x".repeat(60_000);
    let mut refused = None;
    for n in 0..200 {
        let answer = herald
            .publish(
                &admin_token(),
                &json!({"user": "bob", "data": {"n": n, "pad": pad}}),
            )
            .await;
        if answer.status != 202 {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("publishing fails once the file cannot grow");
    assert_eq!(refused.status, 503, "{refused}");
    assert_eq!(refused.json()["error"], "unavailable");
    let health = Answer::of(client().get(herald.url("/healthz")).send()).await;
    assert_eq!(
        health.status, 503,
        "a node that cannot store is not healthy: {health}"
    );
    assert_eq!(health.json()["status"], "unavailable");

    // More refusals do not flood the log: one line per 10 s at most.
    for n in 0..20 {
        let answer = herald
            .publish(
                &admin_token(),
                &json!({"user": "bob", "data": {"again": n, "pad": pad}}),
            )
            .await;
        assert_eq!(answer.status, 503, "{answer}");
    }
    let log = herald.log();
    let errors = log.lines().filter(|line| line.contains("ERROR")).count();
    assert!(
        errors <= 2,
        "{errors} error lines for 21 refused publishes:\n{log}"
    );

    stream.wait_for_heartbeats(2).await;
    let stats = herald.stats().await;
    assert_eq!(stats["connections"], 1, "the stream is still open");

    // Room again (the limit lifted, as freeing disk space would): healthy
    // and publishing without a restart.
    let lifted = std::process::Command::new("prlimit")
        .args(["--pid", &herald.pid().to_string(), "--fsize=unlimited"])
        .status()
        .expect("prlimit runs");
    assert!(lifted.success());
    let health = Answer::of(client().get(herald.url("/healthz")).send()).await;
    assert_eq!(health.status, 200, "{health}");
    let answer = herald
        .publish(&admin_token(), &json!({"user": "bob", "event": "back"}))
        .await;
    assert_eq!(answer.status, 202, "{answer}");
    assert!(
        herald.log().contains("store: writing again"),
        "{}",
        herald.log()
    );
    assert!(!herald.log().contains("panicked"), "{}", herald.log());
}

#[actix_web::test]
async fn a_flood_of_a_million_events_keeps_memory_and_the_store_within_their_limits() {
    const EVENTS: usize = 1_000_000;
    const BATCH: usize = 1000;
    const MAX_BYTES: u64 = 8 << 20;
    let data = DataDir::new();
    let herald = Herald::start(&[
        ("JWT_SECRET", SECRET),
        ("DATA_DIR", data.path()),
        ("HISTORY_MAX_BYTES", &MAX_BYTES.to_string()),
        ("MAX_BODY_BYTES", "1000000"),
    ]);
    let admin = admin_token();
    let publish_range = |start: usize| {
        let batch: Vec<Value> = (start..start + BATCH)
            .map(|n| json!({"user": format!("user-{}", n % 5000), "data": n}))
            .collect();
        json!(batch)
    };
    // Warm up, so the baseline includes the server's steady-state buffers.
    for start in (0..50 * BATCH).step_by(BATCH) {
        assert_eq!(
            herald.publish(&admin, &publish_range(start)).await.status,
            202
        );
    }
    let resident_before = herald.resident_bytes();
    for start in (50 * BATCH..EVENTS).step_by(BATCH) {
        let answer = herald.publish(&admin, &publish_range(start)).await;
        assert_eq!(answer.status, 202, "{answer}");
    }
    let stats = herald.stats().await;
    let retained_bytes = stats["history_bytes"].as_u64().unwrap();
    assert!(retained_bytes <= MAX_BYTES, "{stats}");
    assert!(stats["history_len"].as_u64().unwrap() > 10_000, "{stats}");
    let growth = herald.resident_bytes().saturating_sub(resident_before);
    println!(
        "{EVENTS} events: {} retained in {} KiB; RSS grew {} KiB after the warm-up",
        stats["history_len"],
        retained_bytes >> 10,
        growth >> 10
    );
    assert!(
        growth < 2 * MAX_BYTES,
        "memory grew by {growth} bytes past a warmed-up server"
    );

    // The store holds what memory holds, plus deletes not yet written.
    let on_disk: u64 = std::fs::read_dir(&data.0)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    println!("store files: {} KiB", on_disk >> 10);
    assert!(
        on_disk < 4 * MAX_BYTES + (8 << 20),
        "the store holds {on_disk} bytes"
    );
}

#[actix_web::test]
async fn a_revocation_survives_a_restart() {
    let store = DataDir::new();
    let env = [("JWT_SECRET", SECRET), ("DATA_DIR", store.path())];
    let mut herald = Herald::start(&env);
    let old = token(json!({"sub": "alice", "exp": now() + 3600, "iat": now() - 10}));
    let request = client()
        .post(herald.url("/api/revoke"))
        .bearer_auth(admin_token());
    let answer = Answer::of(request.send_json(&json!({"user": "alice"}))).await;
    assert_eq!(answer.status, 202, "{answer}");
    herald.kill_hard();

    let herald = Herald::start(&env);
    let request = client().get(herald.url("/api/events")).bearer_auth(&old);
    let refused = Answer::of(request.send()).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "token_revoked");
}
