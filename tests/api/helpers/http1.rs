//! An event stream requested over a bare TCP socket as HTTP/1.1 and its
//! chunked body decoded here, so that how it ended is known exactly.
//!
//! awc reports a connection closed in the middle of a chunked body as the
//! end of the body, just as it reports the last (zero-length) chunk; a test
//! that must tell a stream the server ended from one that was cut reads it
//! with [`Sse::over_http1`] instead.

use std::collections::VecDeque;
use std::str::FromStr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::rt::time::timeout;
use awc::error::PayloadError;
use bytes::Bytes;
use herald::sse::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Sse, TIMEOUT};

impl Sse {
    /// `GET path` on `127.0.0.1:port` with `token` as Bearer, over a socket
    /// of its own. Its [`end`](Sse::end) is [`End::Clean`](super::End::Clean)
    /// only once the last chunk has arrived; a connection closed before it
    /// is an [`End::Error`](super::End::Error).
    pub async fn over_http1(port: u16, path: &str, token: &str) -> Sse {
        let opened = timeout(TIMEOUT, async {
            let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            );
            socket.write_all(request.as_bytes()).await?;
            let mut buffer = Vec::new();
            loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = buffer.split_off(end + 4);
                    return Ok::<_, std::io::Error>((socket, buffer, rest));
                }
                if socket.read_buf(&mut buffer).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer head within {TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("the stream request failed: {e}"));
        let (socket, head, rest) = opened;
        let (status, headers) = parse_head(&head);
        let chunked = headers
            .get("transfer-encoding")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
        assert!(
            chunked,
            "a chunked body; the answer head was:\n{}",
            String::from_utf8_lossy(&head)
        );
        let body = Chunked {
            socket,
            buffer: rest,
            finished: false,
        };
        let body = futures_util::stream::unfold(body, |mut body| async move {
            body.next().await.map(|item| (item, body))
        });
        Sse {
            status,
            version: actix_web::http::Version::HTTP_11,
            headers,
            body: Box::pin(body),
            parser: Parser::new(),
            pending: VecDeque::new(),
            end: None,
        }
    }
}

/// The status and headers of an HTTP/1.1 answer head.
fn parse_head(head: &[u8]) -> (u16, HeaderMap) {
    let text = std::str::from_utf8(head).expect("an answer head in ASCII");
    let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("not a header: {line:?}"));
        headers.append(
            HeaderName::from_str(name.trim()).expect("a header name"),
            HeaderValue::from_str(value.trim()).expect("a header value"),
        );
    }
    (status, headers)
}

/// A chunked body read off its socket, chunk by chunk.
struct Chunked {
    socket: TcpStream,
    /// Read and not yet decoded.
    buffer: Vec<u8>,
    /// The last chunk has arrived, or reading failed: nothing more comes.
    finished: bool,
}

impl Chunked {
    /// The next chunk's data; `None` after the last chunk; an error for a
    /// connection that ends (or fails) before it, or a malformed chunk.
    async fn next(&mut self) -> Option<Result<Bytes, PayloadError>> {
        if self.finished {
            return None;
        }
        loop {
            match self.decode() {
                Decoded::Data(data) => return Some(Ok(data)),
                Decoded::Last => {
                    self.finished = true;
                    return None;
                }
                Decoded::Malformed(why) => {
                    self.finished = true;
                    return Some(Err(PayloadError::Io(std::io::Error::other(why))));
                }
                Decoded::NeedMore => {}
            }
            match self.socket.read_buf(&mut self.buffer).await {
                Ok(0) => {
                    self.finished = true;
                    return Some(Err(PayloadError::Incomplete(None)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(PayloadError::Io(e)));
                }
            }
        }
    }

    /// Takes one whole chunk off the buffer, if it holds one.
    fn decode(&mut self) -> Decoded {
        let Some(line_end) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
            return Decoded::NeedMore;
        };
        let size_text = String::from_utf8_lossy(&self.buffer[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Decoded::Malformed(format!("not a chunk size: {size_text:?}"));
        };
        let data_start = line_end + 2;
        if size == 0 {
            // The last chunk, then (no trailers) an empty line.
            return match self.buffer.get(data_start..data_start + 2) {
                None => Decoded::NeedMore,
                Some(b"\r\n") => Decoded::Last,
                Some(_) => Decoded::Malformed("trailers after the last chunk".into()),
            };
        }
        let data_end = data_start + size;
        match self.buffer.get(data_end..data_end + 2) {
            None => Decoded::NeedMore,
            Some(b"\r\n") => {
                let data = Bytes::copy_from_slice(&self.buffer[data_start..data_end]);
                self.buffer.drain(..data_end + 2);
                Decoded::Data(data)
            }
            Some(_) => Decoded::Malformed("a chunk not followed by CRLF".into()),
        }
    }
}

/// What the buffer held.
enum Decoded {
    Data(Bytes),
    Last,
    NeedMore,
    Malformed(String),
}
