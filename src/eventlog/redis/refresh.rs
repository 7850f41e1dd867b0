//! A token refresh for a stream held by another node, off the event flow:
//! the asking node publishes the request on a pub/sub channel that every
//! node's [`RefreshListener`] subscribes to, and each node that heard it
//! answers on a short-lived list named in the request: `ok`,
//! `forbidden:<channel>`, or `missing`. The asker waits until the holder
//! answers or every node that heard it said `missing`; `PUBLISH` tells it
//! how many heard, so a stream that no node holds costs no wait at all, and
//! nothing ever enters the event flow.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncConnectionConfig, Client};
use serde::{Deserialize, Serialize};

use super::keys::{refresh_channel, refresh_reply};
use super::{back_off, in_time, unreachable, COMMAND_TIMEOUT, MIN_BACKOFF};
use crate::domain::{Channel, ChannelPattern, ClientId, RefreshError, TokenRefresh, UserId};
use crate::eventlog::{LocalRefresh, RefreshFailure};

/// How long a refresh waits for the nodes to answer.
const REFRESH_WAIT: Duration = Duration::from_secs(1);
/// How long an unread answer stays in Redis.
const REPLY_TTL_SECS: u64 = 10;

/// A refresh request as it travels between nodes.
#[derive(Serialize, Deserialize)]
struct Request {
    stream: uuid::Uuid,
    user: String,
    patterns: Vec<String>,
    expires_at: u64,
    valid_until: u64,
    token_id: Option<String>,
    /// The list the answers go to.
    reply: String,
}

impl Request {
    fn of(refresh: &TokenRefresh, reply: String) -> Self {
        Self {
            stream: refresh.id.0,
            user: refresh.user.to_string(),
            patterns: refresh.patterns.iter().map(ToString::to_string).collect(),
            expires_at: refresh.expires_at,
            valid_until: refresh.valid_until,
            token_id: refresh.token_id.clone(),
            reply,
        }
    }

    fn refresh(&self) -> Option<TokenRefresh> {
        Some(TokenRefresh {
            id: ClientId(self.stream),
            user: UserId::parse(&self.user).ok()?,
            patterns: self
                .patterns
                .iter()
                .map(|raw| ChannelPattern::parse(raw))
                .collect::<Result<_, _>>()
                .ok()?,
            expires_at: self.expires_at,
            valid_until: self.valid_until,
            token_id: self.token_id.clone(),
        })
    }
}

/// Asks every other node to refresh `refresh.id`.
pub(super) async fn ask(
    connection: &ConnectionManager,
    client: &Client,
    flow: &str,
    refresh: &TokenRefresh,
) -> Result<(), RefreshFailure> {
    let reply = refresh_reply(flow);
    let request = serde_json::to_string(&Request::of(refresh, reply.clone()))
        .map_err(|e| RefreshFailure::Log(crate::eventlog::LogError::Encoding(e.to_string())))?;
    let mut connection = connection.clone();
    let heard: usize = in_time(
        redis::cmd("PUBLISH")
            .arg(refresh_channel(flow))
            .arg(request)
            .query_async(&mut connection),
    )
    .await
    .map_err(RefreshFailure::Log)?;
    if heard == 0 {
        return Err(RefreshFailure::Refused(RefreshError::NotFound));
    }
    // BLPOP blocks its connection: a short-lived one of its own.
    let waited = async {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(REFRESH_WAIT + COMMAND_TIMEOUT));
        let mut own = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        let mut missing = 0;
        while missing < heard {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let answer: Option<(String, String)> = redis::cmd("BLPOP")
                .arg(&reply)
                .arg(left.as_secs_f64())
                .query_async(&mut own)
                .await?;
            match answer.map(|(_, answer)| answer).as_deref() {
                None => break,
                Some("missing") => missing += 1,
                Some(other) => return Ok(Some(other.to_owned())),
            }
        }
        Ok::<_, redis::RedisError>(None)
    };
    let answer = match tokio::time::timeout(REFRESH_WAIT + COMMAND_TIMEOUT, waited).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(RefreshFailure::Log(unreachable(e))),
        Err(_) => None,
    };
    match answer.as_deref() {
        Some("ok") => Ok(()),
        Some(other) => match other
            .strip_prefix("forbidden:")
            .and_then(|channel| Channel::parse(channel).ok())
        {
            Some(channel) => Err(RefreshFailure::Refused(RefreshError::ChannelNotAllowed(
                channel,
            ))),
            None => Err(RefreshFailure::Refused(RefreshError::NotFound)),
        },
        None => Err(RefreshFailure::Refused(RefreshError::NotFound)),
    }
}

/// Answers other nodes' refresh requests for the streams held here. Owned
/// by the task that runs it.
pub(crate) struct RefreshListener {
    pub(super) client: Client,
    pub(super) connection: ConnectionManager,
    pub(super) flow: String,
    pub(super) local: LocalRefresh,
}

impl RefreshListener {
    /// Listens until this node's Broadcaster stops (or the task is
    /// aborted), resubscribing with back-off whenever Redis fails.
    pub async fn run(self) {
        use futures_util::StreamExt;
        let mut backoff = MIN_BACKOFF;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(refresh_channel(&self.flow)).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut pubsub = match subscribed.await {
                Ok(pubsub) => pubsub,
                Err(e) => {
                    log::warn!(
                        "redis: refresh listener interrupted ({e}); retrying in {backoff:?}"
                    );
                    back_off(&mut backoff).await;
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                let Ok(request) = serde_json::from_str::<Request>(&payload) else {
                    log::warn!("redis: ignoring a refresh request Herald did not write");
                    continue;
                };
                if !self.answer(request).await {
                    log::info!("redis: the server is stopping; the refresh listener ends");
                    return;
                }
            }
            log::warn!("redis: refresh listener lost its subscription; resubscribing");
        }
    }

    /// Answers one request; false when the Broadcaster has stopped.
    async fn answer(&self, request: Request) -> bool {
        let answer = match request.refresh() {
            None => "missing".to_owned(),
            Some(refresh) => match (self.local)(refresh).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(RefreshError::ChannelNotAllowed(channel))) => format!("forbidden:{channel}"),
                Ok(Err(RefreshError::NotFound)) => "missing".to_owned(),
                Err(_) => return false,
            },
        };
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH")
            .arg(&request.reply)
            .arg(answer)
            .ignore()
            .cmd("EXPIRE")
            .arg(&request.reply)
            .arg(REPLY_TTL_SECS)
            .ignore();
        let mut connection = self.connection.clone();
        if let Err(e) = in_time(pipe.query_async::<()>(&mut connection)).await {
            // The asker then waits out its second and answers 404.
            log::warn!("redis: a refresh answer was not delivered: {e}");
        }
        true
    }
}
