//! The browser client, `clients/js/`: its own tests under Node's test
//! runner, and the copy Herald serves at `GET /herald.js`.

use std::process::{Command, Stdio};

use crate::helpers::*;

#[test]
fn the_browser_clients_own_tests_pass_under_node() {
    let Some(node) = find_program("node") else {
        skip("node is not installed (Debian: apt-get install nodejs)");
        return;
    };
    // A broken client can hang a test: node's own per-test limit, and ours.
    let mut child = Command::new(node)
        .args(["--test", "--test-timeout=30000", "test/"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("node can be waited for").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("node --test did not finish within 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("node's output");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = report
        .lines()
        .find_map(|line| line.strip_prefix("# pass "))
        .and_then(|count| count.trim().parse::<u32>().ok())
        .expect("node reports how many tests passed");
    assert!(passed >= 10, "only {passed} client tests ran:\n{report}");
}

#[actix_web::test]
async fn herald_serves_the_client_as_a_cacheable_module() {
    let server = spawn(&[]).await;
    let answer = server.get("/herald.js").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/herald.js"))
            .unwrap();
    assert_eq!(
        answer.text(),
        shipped,
        "the same file as clients/js/herald.js"
    );
    let etag = answer.header("etag").expect("an ETag").to_owned();
    let again = Answer::of(
        server
            .client()
            .get(server.url("/herald.js"))
            .insert_header(("if-none-match", etag.as_str()))
            .send(),
    )
    .await;
    assert_eq!(again.status, 304, "revalidated by its ETag");
}
