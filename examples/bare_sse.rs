//! `bare_sse`: the least an actix-web server can hold per Server-Sent Events
//! stream, to measure Herald's memory per connection against.
//!
//! It answers `GET /api/events` (any query, no token checked) with the
//! `retry:` line and a `connected` event, as Herald does, then keeps the
//! stream open and sends nothing more: no Broadcaster, no queue, no user. It
//! runs with the HTTP settings Herald's server uses, so the difference
//! between the two in the load tool's idle-stream run is what Herald itself
//! keeps per stream.
//!
//! ```sh
//! cargo build --release --example bare_sse --example loadgen
//! target/release/examples/loadgen --server target/release/examples/bare_sse --connections 10000
//! ```
//!
//! It prints the line the load tool waits for (`Herald listening on
//! http://127.0.0.1:<port>`), listens on `PORT` (0 by default), and answers
//! `GET /api/stats` with no figures.

use std::convert::Infallible;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

const FIRST_FRAME: &[u8] = b"retry: 5000\n\nevent: connected\ndata: {}\n\n";

async fn events() -> HttpResponse {
    let first = stream::once(async { Ok::<_, Infallible>(Bytes::from_static(FIRST_FRAME)) });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(first.chain(stream::pending()))
}

fn main() -> std::io::Result<()> {
    // As Herald does: the soft open-file limit raised to the hard one.
    herald::raise_open_file_limit();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(0);
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/api/events", web::get().to(events))
                // The load tool reads the stats before a run; there are none.
                .route(
                    "/api/stats",
                    web::get().to(|| async { HttpResponse::Ok().json(()) }),
                )
        })
        .max_connections(100_000)
        .backlog(4096)
        .tcp_nodelay(true)
        .h1_allow_half_closed(false)
        .bind(("127.0.0.1", port))?;
        let port = server.addrs()[0].port();
        eprintln!("bare_sse: Herald listening on http://127.0.0.1:{port}");
        server.run().await
    })
}
