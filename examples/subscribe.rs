//! A small Herald subscriber: prints every event, and when the connection
//! drops, reconnects the way a browser's `EventSource` does: after the
//! server's `retry:` delay, sending `Last-Event-ID` so that the events it
//! missed are replayed first.
//!
//! ```sh
//! export JWT_SECRET=$(openssl rand -hex 32)   # the server's secret too
//! ALICE=$(cargo run -q -- token --sub alice --channels news)
//! cargo run --example subscribe -- --token "$ALICE" --channel news
//! ```

use std::time::Duration;

use actix_web::rt::time::{sleep, timeout};
use futures_util::StreamExt;
use herald::sse::{Frame, Parser};
use serde_json::Value;

/// Subscribe to a Herald event stream and print each event.
#[derive(clap::Parser)]
struct Args {
    /// The token to subscribe with (`herald token --sub alice --channels news`).
    #[arg(long)]
    token: String,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    url: String,
    /// A channel to join; repeat for several.
    #[arg(long = "channel")]
    channels: Vec<String>,
}

/// The wait before reconnecting until the server has sent `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// A stream silent for this long is dead even if the socket looks open. The
/// server sends a heartbeat every 15 seconds by default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// What survives from one connection to the next.
struct Resume {
    /// The id of the last event seen, sent back as `Last-Event-ID`.
    last_event_id: Option<String>,
    /// How long to wait before reconnecting, as the server asked.
    retry: Duration,
}

/// Why a stream ended.
enum End {
    /// The connection dropped or the server ended it: reconnect.
    Dropped(String),
    /// Reconnecting cannot help: a refused token, a forbidden channel, expiry.
    Fatal(String),
}

#[actix_web::main]
async fn main() {
    let args: Args = clap::Parser::parse();
    let mut url = format!("{}/api/events", args.url.trim_end_matches('/'));
    if !args.channels.is_empty() {
        // Channel names only use characters that are safe in a query string.
        url = format!("{url}?channels={}", args.channels.join(","));
    }
    let client = awc::Client::default();
    let mut resume = Resume {
        last_event_id: None,
        retry: DEFAULT_RETRY,
    };
    loop {
        match listen(&client, &url, &args.token, &mut resume).await {
            End::Dropped(why) => {
                eprintln!("stream dropped: {why}; reconnecting in {:?}", resume.retry);
                sleep(resume.retry).await;
            }
            End::Fatal(why) => {
                eprintln!("{why}");
                std::process::exit(1);
            }
        }
    }
}

/// Opens one stream and prints its events until it ends.
async fn listen(client: &awc::Client, url: &str, token: &str, resume: &mut Resume) -> End {
    let mut request = client.get(url).bearer_auth(token);
    if let Some(id) = &resume.last_event_id {
        request = request.insert_header(("Last-Event-ID", id.as_str()));
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return End::Dropped(format!("cannot connect: {e}")),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.body().await.unwrap_or_default();
        let why = format!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        // Too many connections or a server error may pass; a 4xx will not.
        return if status.as_u16() == 429 || status.is_server_error() {
            End::Dropped(why)
        } else {
            End::Fatal(why)
        };
    }

    // A fresh parser per connection: a line cut off by the drop must not
    // run into the first line of the next stream.
    let mut parser = Parser::new();
    loop {
        let chunk = match timeout(IDLE_TIMEOUT, response.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => return End::Dropped(e.to_string()),
            Ok(None) => return End::Dropped("the server ended the stream".into()),
            Err(_) => return End::Dropped(format!("nothing received for {IDLE_TIMEOUT:?}")),
        };
        let frames = parser.feed(&chunk);
        if let Some(millis) = parser.retry {
            resume.retry = Duration::from_millis(millis);
        }
        for frame in frames {
            if let Some(end) = show(frame, resume) {
                return end;
            }
        }
    }
}

/// Prints one event and remembers its id; says when the stream must end.
fn show(frame: Frame, resume: &mut Resume) -> Option<End> {
    match frame.event.as_str() {
        "connected" => {
            let info: Value = serde_json::from_str(&frame.data).unwrap_or_default();
            println!(
                "connected as {} on {}: replayed {}, recovered {}",
                info["user"].as_str().unwrap_or("?"),
                info["channels"],
                info["replayed"],
                info["recovered"]
            );
            if info["recovered"] == false {
                println!(
                    "  history no longer reaches the last event seen: some may have been missed"
                );
            }
        }
        "token-expired" => {
            return Some(End::Fatal(
                "the token expired: start again with a fresh one".into(),
            ))
        }
        name => println!(
            "{name} id={} {}",
            frame.id.as_deref().unwrap_or("-"),
            frame.data
        ),
    }
    if frame.id.is_some() {
        resume.last_event_id = frame.id;
    }
    None
}
