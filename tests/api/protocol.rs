//! Requests that never reach a handler: actix-http's HTTP/1 parser answers
//! them itself, with a status, an empty body and `Connection: close`.
//! docs/api.md lists each one ("Before a request reaches Herald"); these
//! tests keep that list true.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Writes `request` on a fresh socket (all at once, or only its start when
/// `complete` is false) and reads the answer head.
async fn raw(server: &TestServer, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    // The server may answer and close before it has read everything.
    let _ = socket.write_all(request).await;
    let mut answer = Vec::new();
    let read = actix_web::rt::time::timeout(Duration::from_secs(15), async {
        loop {
            match socket.read_buf(&mut answer).await {
                Ok(0) | Err(_) => break,
                Ok(_) if answer.windows(4).any(|w| w == b"\r\n\r\n") => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

fn assert_bare(answer: &str, status: &str) {
    assert!(
        answer.starts_with(&format!("http/1.1 {status}")),
        "{answer}"
    );
    assert!(answer.contains("content-length: 0"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

#[actix_web::test]
async fn unparsable_requests_get_a_bare_400_431_or_408_as_documented() {
    let server = spawn(&[]).await;
    let long_url = format!(
        "GET /healthz?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(80_000)
    );
    assert_bare(&raw(&server, long_url.as_bytes()).await, "400");
    assert_bare(
        &raw(&server, b"GET /api/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "400",
    );
    assert_bare(&raw(&server, b"\x00\x01\x02garbage\r\n\r\n").await, "400");
    let overflow =
        b"POST /api/send HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n";
    assert_bare(&raw(&server, overflow).await, "400");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(140_000)
    );
    assert_bare(&raw(&server, big.as_bytes()).await, "431");
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_bare(&raw(&server, many.as_bytes()).await, "431");
    // A head that never ends: answered after the 5 s request timeout.
    assert_bare(&raw(&server, b"GET /healthz HTTP/1.1\r\n").await, "408");
    // And the server is still fine.
    let health = Answer::of(server.client().get(server.url("/healthz")).send()).await;
    assert_eq!(health.status, 200);
}
