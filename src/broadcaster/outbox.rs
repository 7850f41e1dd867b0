//! One stream's queue, shared between the Broadcaster (which pushes) and the
//! HTTP response body (which drains), and the body itself.
//!
//! The slow-consumer policy lives here, in one place: a stream holds at most
//! `capacity` queued events. The push that would exceed it ends the stream at
//! once: the queue is dropped, the Broadcaster forgets the stream, and the
//! body ends the next time it is polled. Over HTTP/1.1 the socket is also
//! shut down: a client that stopped reading would otherwise pin the
//! connection forever, since actix stops polling a body whose socket is not
//! writable. Over HTTP/2 the socket is shared by every stream of the
//! connection, so it is left alone: the slow stream's body ends (once its
//! flow-control window lets actix poll it again, or when the client resets
//! it), and a connection that stopped reading altogether is closed by
//! actix's HTTP/2 keep-alive PING. The client reconnects with
//! `Last-Event-ID` and history gives it what it missed.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

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

/// The socket of the HTTP/1.1 connection a stream is served on, so that the
/// slow-consumer policy can end a connection that stopped reading.
///
/// Why holding a bare descriptor is sound: it is taken from the live
/// `TcpStream` when actix accepts the connection ([`ConnectionSocket::of`],
/// the only constructor, crate-private; for HTTPS, the `TcpStream` inside the
/// accepted TLS stream, which owns it), and it is handed to a stream's
/// [`Outbox`] only together with the stream's response body
/// ([`ClientStream::new`]), which takes it back out in its `Drop`. actix's
/// dispatcher drops a response body before it drops the connection's stream
/// (and with it the socket), so whenever an outbox holds a descriptor, that
/// descriptor is still this connection's and has not been reused by the
/// kernel for another file. The only thing ever done with it is `shutdown()`,
/// which does not close it. That drop order is actix-http's, not a promise
/// of its API: debug builds check it on every stream's end (see
/// `ClientStream`'s `Drop`), so the test suite catches a change.
///
/// Why only HTTP/1.1: there a connection carries one response at a time, so
/// shutting its socket down ends exactly the stream that fell behind. An
/// HTTP/2 connection carries many streams at once, and cutting it would end
/// all of them; `startup::connection_socket` records no socket for one, so
/// its streams end alone (see the module's docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionSocket(RawFd);

impl ConnectionSocket {
    /// Records the descriptor of an accepted connection (see the type's docs).
    pub(crate) fn of(connection: &impl AsRawFd) -> Self {
        Self(connection.as_raw_fd())
    }
}

struct State {
    /// Frames waiting to be written, oldest first.
    queue: VecDeque<Bytes>,
    /// How many of the queued frames are events (not heartbeats), for stats.
    queued_events: usize,
    /// How many of them are live events, pushed through the bound: what the
    /// slow-consumer policy counts. A replay is not counted (history bounds
    /// it), so a resume with a large gap is not cut by the first live event.
    live_events: usize,
    /// Woken when the queue goes from empty to non-empty.
    waker: Option<Waker>,
    ending: Option<Ending>,
    /// The connection's socket, present only while the response body is
    /// alive (see [`ConnectionSocket`] for why that makes it safe to use).
    socket: Option<ConnectionSocket>,
}

/// A stream's bounded queue.
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_events: 0,
                live_events: 0,
                waker: None,
                ending: None,
                socket: None,
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
        if state.live_events >= self.capacity {
            state.ending = Some(Ending::Overflow);
            state.queue = VecDeque::new();
            state.queued_events = 0;
            state.live_events = 0;
            if let Some(ConnectionSocket(socket)) = state.socket.take() {
                // SAFETY: a descriptor in `State::socket` belongs to this live
                // connection (see `ConnectionSocket`); shutdown() does not close it.
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
        state.live_events += 1;
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
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.lock().ending.is_none()
    }

    /// Takes every queued frame, as the response body would (for tests).
    #[cfg(test)]
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut state = self.lock();
        state.queued_events = 0;
        state.live_events = 0;
        state.queue.drain(..).collect()
    }

    /// How many frames are waiting.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

/// After a burst, a queue keeps at most this many slots allocated.
const RETAINED_QUEUE_CAPACITY: usize = 16;

/// The response body of one SSE stream.
pub struct ClientStream {
    outbox: Arc<Outbox>,
    /// `retry:` and anything else to write before the queue.
    preamble: Option<Bytes>,
    done: bool,
    metrics: Arc<Metrics>,
    /// Tells the Broadcaster the stream is gone when this body is dropped.
    _on_drop: Box<dyn Send>,
}

impl ClientStream {
    /// The body of the stream fed by `outbox`, served on the connection
    /// whose socket is `socket` (`None` where it must not be cut: HTTP/2).
    pub fn new(
        outbox: Arc<Outbox>,
        socket: Option<ConnectionSocket>,
        preamble: Bytes,
        metrics: Arc<Metrics>,
        on_drop: Box<dyn Send>,
    ) -> Self {
        {
            let mut state = outbox.lock();
            if state.ending.is_none() {
                state.socket = socket;
            }
        }
        Self {
            outbox,
            preamble: Some(preamble),
            done: false,
            metrics,
            _on_drop: on_drop,
        }
    }

    /// Everything queued, as one chunk (one write), and how many events it holds.
    /// The queue keeps its allocation for the next event unless a burst grew it.
    fn take_queue(state: &mut State) -> (Option<Bytes>, usize) {
        let events = std::mem::take(&mut state.queued_events);
        state.live_events = 0;
        let bytes = match state.queue.len() {
            0 => None,
            1 => state.queue.pop_front(),
            _ => {
                let mut joined = BytesMut::with_capacity(state.queue.iter().map(Bytes::len).sum());
                for frame in state.queue.drain(..) {
                    joined.extend_from_slice(&frame);
                }
                Some(joined.freeze())
            }
        };
        if state.queue.capacity() > RETAINED_QUEUE_CAPACITY {
            state.queue = VecDeque::new();
        }
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
        let mut state = this.outbox.lock();
        if state.ending == Some(Ending::Overflow) {
            this.done = true;
            return Poll::Ready(None);
        }
        let (bytes, events) = Self::take_queue(&mut state);
        if bytes.is_none() {
            if state.ending.is_some() {
                this.done = true;
                return Poll::Ready(None);
            }
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
        Poll::Ready(bytes.map(Ok))
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let mut state = self.outbox.lock();
        // The guard on `ConnectionSocket`'s argument: actix must drop this
        // body while the connection's socket is still open. Every test that
        // ends a stream (the whole API suite, in debug builds) checks it, so
        // a change of drop order inside actix-http fails the tests.
        #[cfg(debug_assertions)]
        if let Some(ConnectionSocket(socket)) = state.socket {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let open = unsafe { libc::fcntl(socket, libc::F_GETFD) } != -1;
            debug_assert!(open, "a stream's body outlived its connection's socket");
        }
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
        let outbox = Outbox::new(2);
        let frame = Bytes::from_static(b"data: x\n\n");
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Overflowed);
        assert_eq!(outbox.queued(), 0);
        assert_eq!(outbox.push_event(&frame), Push::Closed);
        assert!(!outbox.is_open());
    }

    #[test]
    fn a_replay_does_not_count_against_the_bound_on_live_events() {
        let outbox = Outbox::new(2);
        let frame = Bytes::from_static(b"data: x\n\n");
        for _ in 0..5 {
            outbox.push_unbounded(frame.clone(), true);
        }
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Queued);
        assert_eq!(outbox.push_event(&frame), Push::Overflowed);
    }

    #[test]
    fn heartbeats_do_not_count_against_capacity_and_skip_busy_queues() {
        let outbox = Outbox::new(1);
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
