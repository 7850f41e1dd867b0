//! The `Notifier`: the one facade the routes talk to. It joins the event
//! log (where events live) and the Broadcaster (the open streams), so a
//! handler never speaks to both, nor knows which log is configured.

use std::sync::Arc;

use actix::Addr;

use crate::broadcaster::{
    Broadcaster, Connect, ConnectError, Connected, Directory, Disconnect, GetHistory, HistoryPage,
    NewStream, Refresh,
};
use crate::clock;
use crate::domain::{Channel, ClientId, EventId, Outgoing, RefreshError, TokenRefresh, UserId};
use crate::eventlog::idempotency::{
    self, Appended, Begin, Idempotency, IdempotencyKey, Remember, Remembered,
};
use crate::eventlog::{EventLog, LogError, RefreshFailure};
use crate::metrics::Snapshot;
use crate::revocations::{Revocation, Revocations};

pub(crate) struct Notifier {
    log: EventLog,
    broadcaster: Addr<Broadcaster>,
    /// The Broadcaster's index of open streams, read without it.
    directory: Arc<Directory>,
    /// The revocations in force, checked on every request.
    revocations: Arc<Revocations>,
    /// What each `Idempotency-Key` was first answered.
    idempotency: Idempotency,
}

/// A publish's answer: the `202`'s JSON body, and whether it is the first
/// answer to an earlier publish with the same key.
#[derive(Debug)]
pub(crate) struct Answer {
    pub body: String,
    pub replayed: bool,
}

/// Why a publish was not accepted.
#[derive(Debug)]
pub(crate) enum PublishError {
    Log(LogError),
    /// The key was used before with another body.
    KeyReused,
    /// The first publish with the key did not finish within [`IN_FLIGHT_WAIT`].
    InFlight,
}

impl From<LogError> for PublishError {
    fn from(error: LogError) -> Self {
        Self::Log(error)
    }
}

/// How long a repeat waits for the first publish with its key.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Notifier {
    pub(crate) fn new(
        log: EventLog,
        broadcaster: Addr<Broadcaster>,
        directory: Arc<Directory>,
        revocations: Arc<Revocations>,
        idempotency_ttl: std::time::Duration,
    ) -> Self {
        Self {
            log,
            broadcaster,
            directory,
            revocations,
            idempotency: Idempotency::new(idempotency_ttl.as_millis() as u64),
        }
    }

    /// Publishes events in order; answers the `202`'s JSON body (each one's
    /// id and how many streams on this node it is addressed to; `batch`:
    /// as `{"events": [...]}`). With `key`, a repeat of an earlier publish
    /// publishes nothing and answers that publish's body again.
    pub(crate) async fn publish(
        &self,
        events: Vec<Outgoing>,
        batch: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Answer, PublishError> {
        let Some(key) = key else {
            let (ids, recipients) = self.append(events).await?;
            return Ok(Answer {
                body: idempotency::answer(&ids, &recipients, batch),
                replayed: false,
            });
        };
        let mut events = Some(events);
        loop {
            let now_ms = clock::unix_now_ms();
            match self.idempotency.begin(&key, now_ms) {
                Begin::Replay(body) => {
                    return Ok(Answer {
                        body,
                        replayed: true,
                    })
                }
                Begin::Conflict => return Err(PublishError::KeyReused),
                Begin::Wait(mut first) => {
                    match tokio::time::timeout(IN_FLIGHT_WAIT, first.changed()).await {
                        // Answered: the next turn replays it.
                        Ok(Ok(())) => continue,
                        // The first publish failed: this one may go ahead.
                        Ok(Err(_)) => continue,
                        Err(_) => return Err(PublishError::InFlight),
                    }
                }
                Begin::Fresh(claim) => {
                    let events = events.take().unwrap_or_default();
                    let remember = Remember {
                        name: key.name(),
                        fingerprint: key.fingerprint.clone(),
                        recipients: events
                            .iter()
                            .map(|event| self.directory.count(&event.audience))
                            .collect(),
                        batch,
                        at_ms: now_ms,
                    };
                    return match self.log.append(events, Some(&remember)).await? {
                        Appended::New(ids) => {
                            let body = idempotency::answer(&ids, &remember.recipients, batch);
                            claim.finish(key.fingerprint.clone(), body.clone(), now_ms);
                            Ok(Answer {
                                body,
                                replayed: false,
                            })
                        }
                        // Another node published with the key first; the
                        // shared record stays the one that counts.
                        Appended::Remembered(first) if first.fingerprint == key.fingerprint => {
                            Ok(Answer {
                                body: first.answer,
                                replayed: true,
                            })
                        }
                        Appended::Remembered(_) => Err(PublishError::KeyReused),
                    };
                }
            }
        }
    }

    /// Counts each event's recipients and appends the events; answers
    /// their ids and recipients.
    async fn append(&self, events: Vec<Outgoing>) -> Result<(Vec<EventId>, Vec<usize>), LogError> {
        let recipients: Vec<usize> = events
            .iter()
            .map(|event| self.directory.count(&event.audience))
            .collect();
        match self.log.append(events, None).await? {
            Appended::New(ids) => Ok((ids, recipients)),
            // Only an append with a key can find one.
            Appended::Remembered(_) => Err(LogError::Encoding(
                "the log answered a record to a publish without a key".into(),
            )),
        }
    }

    /// Idempotency records a durable store kept, in force again at start.
    pub(crate) fn restore_idempotency(&self, records: Vec<(String, Remembered)>) {
        self.idempotency.restore(records, clock::unix_now_ms());
    }

    /// Revokes a user or a token: in force on this node at once (no stream
    /// with a matching token opens from here on), then recorded by the log,
    /// which ends the covered streams (on every node).
    pub(crate) async fn revoke(&self, revocation: Revocation, at: u64) -> Result<(), LogError> {
        self.revocations.prune(at);
        self.revocations.record(revocation.clone(), at);
        self.log.revoke(revocation, at).await
    }

    /// Gives a stream a fresh token, on whichever node holds it.
    pub(crate) async fn refresh(&self, refresh: TokenRefresh) -> Result<(), RefreshFailure> {
        match self.broadcaster.send(Refresh(refresh.clone())).await {
            Ok(Err(RefreshError::NotFound)) => self.log.refresh_elsewhere(refresh).await,
            Ok(result) => result.map_err(RefreshFailure::Refused),
            Err(_) => Err(RefreshFailure::Log(LogError::Stopped)),
        }
    }

    /// Registers a stream. The [`Registration`] unregisters it when dropped:
    /// make it before asking, so an abandoned request leaves nothing behind.
    pub(crate) fn registration(&self, id: ClientId) -> Registration {
        Registration {
            id,
            broadcaster: self.broadcaster.clone(),
        }
    }

    pub(crate) async fn subscribe(&self, stream: NewStream) -> Result<Connected, ConnectError> {
        self.broadcaster
            .send(Connect(stream))
            .await
            .unwrap_or(Err(ConnectError::ShuttingDown))
    }

    /// A page of the retained events a stream of `user` on `channels` would
    /// have received, newest first.
    pub(crate) async fn history(
        &self,
        user: UserId,
        channels: Vec<Channel>,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, LogError> {
        self.broadcaster
            .send(GetHistory {
                user,
                channels,
                before,
                limit,
            })
            .await
            .map_err(|_| LogError::Stopped)
    }

    /// What is open now, read without the Broadcaster (see [`Directory`]).
    pub(crate) fn snapshot(&self, max_channels: Option<usize>) -> Snapshot {
        self.directory.snapshot(max_channels)
    }

    /// Whether events can be published now.
    pub(crate) async fn healthy(&self) -> Result<(), LogError> {
        if !self.broadcaster.connected() {
            return Err(LogError::Stopped);
        }
        self.log.healthy().await
    }
}

/// Sends `Disconnect` when a stream's body is dropped, whatever the reason.
pub(crate) struct Registration {
    id: ClientId,
    broadcaster: Addr<Broadcaster>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // do_send only fails when the actor has stopped, and then the maps are gone too.
        self.broadcaster.do_send(Disconnect { id: self.id });
    }
}
