//! Stream tickets: a short-lived, single-use stand-in for a token, so that a
//! page that cannot send a header or use a cookie never puts a real token in
//! a URL (where proxies, logs and browser history keep it).
//!
//! `POST /api/tickets` buys one with a token; `GET /api/events?ticket=…`
//! spends it, once, within `TICKET_TTL_SECS`, and the stream then has the
//! identity, channel allowance and expiry of the token that bought it. On one
//! node tickets live in memory; with Redis they live there (`SET … EX`, spent
//! with `GETDEL`), so a ticket bought on one node opens a stream on any.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::auth::{Identity, TokenSource};
use crate::domain::{ChannelPattern, UserId};

/// Random bytes in a ticket (written as hex).
const TICKET_BYTES: usize = 32;
/// How long a Redis command for a ticket may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Tickets held in memory before expired ones are swept out.
const SWEEP_AT: usize = 1024;

/// Why a ticket could not be bought or spent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TicketError {
    /// Unknown, already used, expired, or forged.
    Invalid,
    /// The shared store is unreachable.
    Unavailable(String),
}

/// What a ticket stands for: the identity of the token that bought it.
#[derive(Serialize, Deserialize)]
struct Bearer {
    sub: String,
    admin: bool,
    channels: Vec<String>,
    exp: u64,
    valid_until: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

impl Bearer {
    fn of(identity: &Identity) -> Self {
        Self {
            sub: identity.user.to_string(),
            admin: identity.admin,
            channels: identity
                .channel_patterns
                .iter()
                .map(ChannelPattern::to_string)
                .collect(),
            exp: identity.expires_at,
            valid_until: identity.valid_until,
            iat: identity.issued_at,
            jti: identity.token_id.clone(),
        }
    }

    fn identity(self) -> Option<Identity> {
        Some(Identity {
            user: UserId::parse(&self.sub).ok()?,
            admin: self.admin,
            channel_patterns: self
                .channels
                .iter()
                .map(|raw| ChannelPattern::parse(raw))
                .collect::<Result<_, _>>()
                .ok()?,
            expires_at: self.exp,
            valid_until: self.valid_until,
            issued_at: self.iat,
            token_id: self.jti,
            source: TokenSource::Ticket,
        })
    }
}

/// Where tickets are kept.
pub(crate) enum Tickets {
    /// One node: ticket → (who, until when).
    Memory(Mutex<HashMap<String, (Identity, Instant)>>),
    /// Many nodes: `<prefix>:ticket:<ticket>` keys in Redis.
    Redis {
        connection: ConnectionManager,
        prefix: String,
    },
}

/// A new random ticket.
fn new_ticket() -> Result<String, TicketError> {
    let mut bytes = [0u8; TICKET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| TicketError::Unavailable(format!("no random source: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `ticket` is shaped like one this server issues (so a forged one
/// never reaches Redis as an arbitrary key).
fn well_formed(ticket: &str) -> bool {
    ticket.len() == 2 * TICKET_BYTES && ticket.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Tickets {
    pub(crate) fn in_memory() -> Self {
        Self::Memory(Mutex::new(HashMap::new()))
    }

    pub(crate) fn in_redis(connection: ConnectionManager, prefix: &str) -> Self {
        Self::Redis {
            connection,
            prefix: prefix.to_owned(),
        }
    }

    /// Issues a ticket for `identity`, valid for `ttl`.
    pub(crate) async fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, TicketError> {
        let ticket = new_ticket()?;
        match self {
            Self::Memory(tickets) => {
                let mut tickets = tickets.lock().unwrap_or_else(|p| p.into_inner());
                if tickets.len() >= SWEEP_AT {
                    let now = Instant::now();
                    tickets.retain(|_, (_, until)| *until > now);
                }
                tickets.insert(ticket.clone(), (identity.clone(), Instant::now() + ttl));
            }
            Self::Redis { connection, prefix } => {
                let value = serde_json::to_string(&Bearer::of(identity))
                    .map_err(|e| TicketError::Unavailable(e.to_string()))?;
                let mut connection = connection.clone();
                let mut command = redis::cmd("SET");
                command
                    .arg(format!("{prefix}:ticket:{ticket}"))
                    .arg(value)
                    .arg("EX")
                    .arg(ttl.as_secs().max(1));
                let sent = command.query_async::<()>(&mut connection);
                match tokio::time::timeout(REDIS_TIMEOUT, sent).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(TicketError::Unavailable(e.to_string())),
                    Err(_) => return Err(TicketError::Unavailable("Redis timed out".into())),
                }
            }
        }
        Ok(ticket)
    }

    /// Spends a ticket: the identity it stands for, once.
    pub(crate) async fn redeem(&self, ticket: &str) -> Result<Identity, TicketError> {
        if !well_formed(ticket) {
            return Err(TicketError::Invalid);
        }
        match self {
            Self::Memory(tickets) => {
                let mut tickets = tickets.lock().unwrap_or_else(|p| p.into_inner());
                match tickets.remove(ticket) {
                    Some((identity, until)) if until > Instant::now() => Ok(Identity {
                        source: TokenSource::Ticket,
                        ..identity
                    }),
                    _ => Err(TicketError::Invalid),
                }
            }
            Self::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                let mut command = redis::cmd("GETDEL");
                command.arg(format!("{prefix}:ticket:{ticket}"));
                let sent = command.query_async::<Option<String>>(&mut connection);
                let stored = match tokio::time::timeout(REDIS_TIMEOUT, sent).await {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(e)) => return Err(TicketError::Unavailable(e.to_string())),
                    Err(_) => return Err(TicketError::Unavailable("Redis timed out".into())),
                };
                stored
                    .and_then(|json| serde_json::from_str::<Bearer>(&json).ok())
                    .and_then(Bearer::identity)
                    .ok_or(TicketError::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user: UserId::parse("alice").unwrap(),
            admin: false,
            channel_patterns: vec![ChannelPattern::parse("team-1.*").unwrap()],
            expires_at: 2_000_000_000,
            valid_until: 2_000_000_005,
            issued_at: Some(1_999_999_000),
            token_id: Some("t-1".into()),
            source: TokenSource::Header,
        }
    }

    #[actix_web::test]
    async fn a_ticket_is_spent_once_and_stands_for_its_token() {
        let tickets = Tickets::in_memory();
        let ticket = tickets
            .issue(&alice(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(well_formed(&ticket));
        let identity = tickets.redeem(&ticket).await.unwrap();
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.valid_until, 2_000_000_005);
        assert_eq!(identity.source, TokenSource::Ticket);
        assert_eq!(
            tickets.redeem(&ticket).await.err(),
            Some(TicketError::Invalid)
        );
    }

    #[actix_web::test]
    async fn late_and_forged_tickets_are_invalid() {
        let tickets = Tickets::in_memory();
        let late = tickets.issue(&alice(), Duration::ZERO).await.unwrap();
        assert_eq!(
            tickets.redeem(&late).await.err(),
            Some(TicketError::Invalid)
        );
        let forged = "a".repeat(2 * TICKET_BYTES);
        assert_eq!(
            tickets.redeem(&forged).await.err(),
            Some(TicketError::Invalid)
        );
        assert_eq!(tickets.redeem("x*").await.err(), Some(TicketError::Invalid));
    }

    #[test]
    fn a_bearer_round_trips_its_channel_patterns() {
        let bearer = Bearer::of(&alice());
        assert_eq!(bearer.channels, ["team-1.*"]);
        let identity = bearer.identity().unwrap();
        assert_eq!(identity.channel_patterns, alice().channel_patterns);
    }
}
