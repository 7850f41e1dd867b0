//! One stream's queue, shared between the Broadcaster (which pushes) and the
//! HTTP response body (which drains), and the body itself.
//!
//! The slow-consumer policy lives here, in one place: a stream holds at most
//! `capacity` queued events. The push that would exceed it ends the stream at
//! once: the queue is dropped, the socket is shut down (a client that stopped
//! reading would otherwise pin the connection forever, since actix stops
//! polling a body whose socket is not writable), and the Broadcaster forgets
//! the stream. The client reconnects with `Last-Event-ID` and history gives it
//! what it missed.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::auth::unix_now;
use crate::metrics::Metrics;

/// Why a stream is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Write what is queued, then end the response (shutdown drain).
    Finish,
    /// End now; the client fell behind (slow-consumer policy).
    Overflow,
}

/// The outcome of offering bytes to a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The stream is gone or ending; forget it.
    Closed,
    /// This push ended the stream for being too far behind; forget it and count it.
    Overflowed,
}

struct State {
    /// Frames waiting to be written, oldest first.
    queue: VecDeque<Bytes>,
    /// How many of the queued frames are events (not heartbeats), for stats.
    queued_events: usize,
    /// Woken when the queue goes from empty to non-empty.
    waker: Option<Waker>,
    ending: Option<Ending>,
    /// The connection's socket, while the response body is alive. The body is
    /// dropped before actix closes the socket, so a descriptor present here is
    /// never one that has been reused for another connection.
    socket: Option<RawFd>,
}

/// A stream's bounded queue.
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize, socket: Option<RawFd>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_events: 0,
                waker: None,
                ending: None,
                socket,
            }),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated
        // in a way that matters; keep serving rather than poisoning every push.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an event frame, applying the slow-consumer policy.
    pub fn push_event(&self, frame: &Bytes) -> Push {
        let mut state = self.lock();
        if state.ending.is_some() {
            return Push::Closed;
        }
        if state.queued_events >= self.capacity {
            state.ending = Some(Ending::Overflow);
            state.queue = VecDeque::new();
            state.queued_events = 0;
            if let Some(socket) = state.socket.take() {
                // SAFETY: `socket` is the live connection's descriptor (see `State::socket`),
                // and shutdown() does not close or invalidate it.
                unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
            }
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Push::Overflowed;
        }
        state.queued_events += 1;
        Self::enqueue(state, frame.clone());
        Push::Queued
    }

    /// Queues frames that bypass the bound: the `connected` event and the
    /// replay, which history already bounds.
    pub fn push_unbounded(&self, frame: Bytes, is_event: bool) {
        let mut state = self.lock();
        if state.ending.is_none() {
            state.queued_events += usize::from(is_event);
            Self::enqueue(state, frame);
        }
    }

    /// Queues a heartbeat unless data is already waiting (which serves the same purpose).
    pub fn push_heartbeat(&self, frame: &Bytes) -> Push {
        let state = self.lock();
        if state.ending.is_some() {
            return Push::Closed;
        }
        if state.queue.is_empty() {
            Self::enqueue(state, frame.clone());
        }
        Push::Queued
    }

    fn enqueue(mut state: MutexGuard<'_, State>, frame: Bytes) {
        state.queue.push_back(frame);
        if state.queue.len() == 1 {
            if let Some(waker) = state.waker.take() {
                drop(state);
                waker.wake();
            }
        }
    }

    /// Ends the stream after what is queued has been written.
    pub fn finish(&self) {
        let mut state = self.lock();
        if state.ending.is_none() {
            state.ending = Some(Ending::Finish);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the stream is still being served.
    pub fn is_open(&self) -> bool {
        self.lock().ending.is_none()
    }

    /// How many frames are waiting (for tests and stats).
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

/// What the body sends when the token expires, before it ends.
fn token_expired_frame() -> Bytes {
    crate::sse::event(
        None,
        "token-expired",
        r#"{"reason":"the token has expired; reconnect with a new one"}"#,
    )
}

/// The response body of one SSE stream.
pub struct ClientStream {
    outbox: Arc<Outbox>,
    /// `retry:` and anything else to write before the queue.
    preamble: Option<Bytes>,
    /// Fires at the token's `exp`.
    expiry: Pin<Box<Sleep>>,
    expires_at: u64,
    done: bool,
    metrics: Arc<Metrics>,
    /// Tells the Broadcaster the stream is gone when this body is dropped.
    _on_drop: Box<dyn Send>,
}

/// Longest single timer; a longer wait re-arms when it fires.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

fn until(expires_at: u64) -> Instant {
    let now = unix_now();
    Instant::now() + Duration::from_secs(expires_at.saturating_sub(now)).min(MAX_TIMER)
}

impl ClientStream {
    pub fn new(
        outbox: Arc<Outbox>,
        preamble: Bytes,
        expires_at: u64,
        metrics: Arc<Metrics>,
        on_drop: Box<dyn Send>,
    ) -> Self {
        Self {
            outbox,
            preamble: Some(preamble),
            expiry: Box::pin(tokio::time::sleep_until(until(expires_at))),
            expires_at,
            done: false,
            metrics,
            _on_drop: on_drop,
        }
    }

    fn take_queue(state: &mut State) -> (Option<Bytes>, usize) {
        let events = std::mem::take(&mut state.queued_events);
        let frames = std::mem::take(&mut state.queue);
        let bytes = match frames.len() {
            0 => None,
            1 => frames.into_iter().next(),
            _ => {
                // Several frames waiting: one chunk, one write.
                let mut joined = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for frame in &frames {
                    joined.extend_from_slice(frame);
                }
                Some(joined.freeze())
            }
        };
        (bytes, events)
    }
}

impl Stream for ClientStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(preamble) = this.preamble.take() {
            return Poll::Ready(Some(Ok(preamble)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut expired = false;
        if this.expiry.as_mut().poll(cx).is_ready() {
            if unix_now() >= this.expires_at {
                expired = true;
            } else {
                let deadline = until(this.expires_at);
                this.expiry.as_mut().reset(deadline);
                let _ = this.expiry.as_mut().poll(cx); // registers the waker; cannot be ready yet
            }
        }

        let mut state = this.outbox.lock();
        if state.ending == Some(Ending::Overflow) {
            this.done = true;
            return Poll::Ready(None);
        }
        if expired {
            state.ending.get_or_insert(Ending::Finish);
        }
        let (bytes, events) = Self::take_queue(&mut state);
        let ending = state.ending;
        if bytes.is_none() && ending.is_none() {
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        drop(state);
        if events > 0 {
            this.metrics
                .events_delivered
                .fetch_add(events as u64, Ordering::Relaxed);
        }
        if expired {
            this.done = true;
            let mut out = BytesMut::new();
            if let Some(bytes) = bytes {
                out.extend_from_slice(&bytes);
            }
            out.extend_from_slice(&token_expired_frame());
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        match bytes {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let mut state = self.outbox.lock();
        state.socket = None;
        state.ending.get_or_insert(Ending::Finish);
        state.queue = VecDeque::new();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_beyond_capacity_ends_the_stream_and_frees_the_queue() {
        let outbox = Outbox::new(2, None);
        let frame = Bytes::from_static(b"data: x\n\n");
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Overflowed);
        assert_eq!(outbox.queued(), 0);
        assert_eq!(outbox.push_event(&frame), Push::Closed);
        assert!(!outbox.is_open());
    }

    #[test]
    fn heartbeats_do_not_count_against_capacity_and_skip_busy_queues() {
        let outbox = Outbox::new(1, None);
        let beat = Bytes::from_static(crate::sse::HEARTBEAT);
        assert_eq!(outbox.push_heartbeat(&beat), Push::Queued);
        assert_eq!(outbox.push_heartbeat(&beat), Push::Queued);
        assert_eq!(
            outbox.queued(),
            1,
            "a second heartbeat is not queued behind the first"
        );
        assert_eq!(outbox.push_event(&Bytes::from_static(b"e")), Push::Queued);
    }
}
