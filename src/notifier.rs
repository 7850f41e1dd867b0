//! The `Notifier`: the one facade the routes talk to. It joins the event
//! log (where events live) and the Broadcaster (the open streams), so a
//! handler never speaks to both, nor knows which log is configured.

use std::sync::Arc;

use actix::Addr;

use crate::broadcaster::{
    Broadcaster, Connect, ConnectError, Connected, Directory, Disconnect, GetHistory, HistoryPage,
    NewStream, Refresh,
};
use crate::domain::{
    Channel, ClientId, EventId, Outgoing, Published, RefreshError, TokenRefresh, UserId,
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
}

impl Notifier {
    pub(crate) fn new(
        log: EventLog,
        broadcaster: Addr<Broadcaster>,
        directory: Arc<Directory>,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            log,
            broadcaster,
            directory,
            revocations,
        }
    }

    /// Publishes events in order; answers each one's id and how many streams
    /// on this node it reaches (counted as it is published; the fan-out
    /// follows).
    pub(crate) async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Published>, LogError> {
        let recipients: Vec<usize> = events
            .iter()
            .map(|event| self.directory.count(&event.audience))
            .collect();
        let ids = self.log.append(events).await?;
        Ok(ids
            .into_iter()
            .zip(recipients)
            .map(|(id, recipients)| Published {
                id: id.to_string(),
                recipients,
            })
            .collect())
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
