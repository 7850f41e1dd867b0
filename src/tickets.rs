//! Stream tickets: a short-lived, single-use stand-in for a token, so that a
//! page that cannot send a header or use a cookie never puts a real token in
//! a URL (where proxies, logs and browser history keep it).
//!
//! `POST /api/tickets` buys one with a token; `GET /api/events?ticket=…`
//! spends it, once, within `TICKET_TTL_SECS`, and the stream then has the
//! identity, channel allowance and expiry of the token that bought it. On one
//! node tickets live in memory; with Redis they live there (`SET … EX`, spent
//! with `GETDEL`), so a ticket bought on one node opens a stream on any.

use std::collections::{HashMap, VecDeque};
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
/// Unused tickets one user may hold at once. A page buys one per stream it
/// opens, and each lasts `TICKET_TTL_SECS` (30 s by default): far more than
/// any page needs, and a bound on what a user buying in a loop can hold.
pub(crate) const MAX_TICKETS_PER_USER: usize = 100;

/// Why a ticket could not be bought or spent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TicketError {
    /// Unknown, already used, expired, or forged.
    Invalid,
    /// The user holds [`MAX_TICKETS_PER_USER`] unused tickets already.
    TooMany,
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

/// One node's tickets.
#[derive(Default)]
pub(crate) struct Held {
    /// Ticket → (who, until when).
    tickets: HashMap<String, (Identity, Instant)>,
    /// (until when, ticket) in the order issued, which is the order they
    /// expire in (all last the same TTL): swept from the front, so an issue
    /// never scans the whole map. An entry whose ticket was spent is skipped.
    expiries: VecDeque<(Instant, String)>,
    /// Unused tickets per user.
    per_user: HashMap<UserId, usize>,
}

impl Held {
    /// Drops the tickets expired by `now`, oldest first.
    fn sweep(&mut self, now: Instant) {
        while let Some((until, _)) = self.expiries.front() {
            if *until > now {
                break;
            }
            let Some((_, ticket)) = self.expiries.pop_front() else {
                break;
            };
            if let Some((_, until)) = self.tickets.get(&ticket) {
                if *until <= now {
                    self.forget(&ticket);
                }
            }
        }
    }

    fn insert(&mut self, ticket: String, identity: Identity, until: Instant) {
        *self.per_user.entry(identity.user.clone()).or_default() += 1;
        self.expiries.push_back((until, ticket.clone()));
        self.tickets.insert(ticket, (identity, until));
    }

    fn forget(&mut self, ticket: &str) -> Option<(Identity, Instant)> {
        let (identity, until) = self.tickets.remove(ticket)?;
        if let Some(count) = self.per_user.get_mut(&identity.user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&identity.user);
            }
        }
        Some((identity, until))
    }
}

/// Where tickets are kept.
pub(crate) enum Tickets {
    /// One node: in memory.
    Memory(Mutex<Held>),
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
        Self::Memory(Mutex::new(Held::default()))
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
            Self::Memory(held) => {
                let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                held.sweep(now);
                if held.per_user.get(&identity.user).copied().unwrap_or(0) >= MAX_TICKETS_PER_USER {
                    return Err(TicketError::TooMany);
                }
                held.insert(ticket.clone(), identity.clone(), now + ttl);
            }
            Self::Redis { connection, prefix } => {
                let value = serde_json::to_string(&Bearer::of(identity))
                    .map_err(|e| TicketError::Unavailable(e.to_string()))?;
                let mut command = redis::cmd("EVAL");
                command
                    .arg(ISSUE_SCRIPT)
                    .arg(2)
                    .arg(format!("{prefix}:ticket:{ticket}"))
                    .arg(user_tickets_key(prefix, &identity.user))
                    .arg(value)
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(crate::clock::unix_now_ms())
                    .arg(MAX_TICKETS_PER_USER)
                    .arg(&ticket);
                let issued: i64 = in_time(connection, command).await?;
                if issued == 0 {
                    return Err(TicketError::TooMany);
                }
            }
        }
        Ok(ticket)
    }

    /// The identity a ticket stands for, without spending it: a request is
    /// checked with it first, so a refused request (400, 401, 403) leaves
    /// the ticket usable.
    pub(crate) async fn peek(&self, ticket: &str) -> Result<Identity, TicketError> {
        if !well_formed(ticket) {
            return Err(TicketError::Invalid);
        }
        match self {
            Self::Memory(held) => {
                let held = held.lock().unwrap_or_else(|p| p.into_inner());
                match held.tickets.get(ticket) {
                    Some((identity, until)) if *until > Instant::now() => Ok(Identity {
                        source: TokenSource::Ticket,
                        ..identity.clone()
                    }),
                    _ => Err(TicketError::Invalid),
                }
            }
            Self::Redis { connection, prefix } => {
                let mut command = redis::cmd("GET");
                command.arg(format!("{prefix}:ticket:{ticket}"));
                let stored: Option<String> = in_time(connection, command).await?;
                stored
                    .and_then(|json| serde_json::from_str::<Bearer>(&json).ok())
                    .and_then(Bearer::identity)
                    .ok_or(TicketError::Invalid)
            }
        }
    }

    /// Spends a ticket: the identity it stands for, once, and what
    /// [`Tickets::give_back`] needs should the stream still be refused.
    pub(crate) async fn redeem(&self, ticket: &str) -> Result<Spent, TicketError> {
        if !well_formed(ticket) {
            return Err(TicketError::Invalid);
        }
        match self {
            Self::Memory(held) => {
                let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                match held.forget(ticket) {
                    Some((identity, until)) if until > Instant::now() => Ok(Spent {
                        ticket: ticket.to_owned(),
                        identity: Identity {
                            source: TokenSource::Ticket,
                            ..identity
                        },
                        left: until.saturating_duration_since(Instant::now()),
                    }),
                    _ => Err(TicketError::Invalid),
                }
            }
            Self::Redis { connection, prefix } => {
                let mut command = redis::cmd("EVAL");
                command
                    .arg(SPEND_SCRIPT)
                    .arg(1)
                    .arg(format!("{prefix}:ticket:{ticket}"));
                let stored: Option<(String, i64)> = in_time(connection, command).await?;
                let (json, left_ms) = stored.ok_or(TicketError::Invalid)?;
                let identity = serde_json::from_str::<Bearer>(&json)
                    .ok()
                    .and_then(Bearer::identity)
                    .ok_or(TicketError::Invalid)?;
                Ok(Spent {
                    ticket: ticket.to_owned(),
                    identity,
                    left: Duration::from_millis(left_ms.max(1) as u64),
                })
            }
        }
    }

    /// Makes a spent ticket usable again for the rest of its time, when the
    /// stream it was spent on was refused after all (too many streams). A
    /// failure to put it back is only logged: the client buys a new one.
    pub(crate) async fn give_back(&self, spent: Spent) {
        match self {
            Self::Memory(held) => {
                let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                held.insert(spent.ticket, spent.identity, Instant::now() + spent.left);
            }
            Self::Redis { connection, prefix } => {
                let Ok(value) = serde_json::to_string(&Bearer::of(&spent.identity)) else {
                    return;
                };
                let mut command = redis::cmd("SET");
                command
                    .arg(format!("{prefix}:ticket:{}", spent.ticket))
                    .arg(value)
                    .arg("PX")
                    .arg(spent.left.as_millis().max(1) as u64)
                    .arg("NX");
                if let Err(e) = in_time::<Option<String>>(connection, command).await {
                    log::warn!("tickets: a refused stream's ticket could not be given back: {e:?}");
                }
            }
        }
    }
}

/// A ticket just spent: who it stood for, and how long it had left.
pub(crate) struct Spent {
    ticket: String,
    pub identity: Identity,
    left: Duration,
}

/// The sorted set of a user's unused tickets in Redis (ticket → expiry ms).
fn user_tickets_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:tickets:{}", user.as_str())
}

/// Issues a ticket unless its user holds `ARGV[4]` unused ones already:
/// KEYS: the ticket, the user's set. ARGV: the bearer, TTL ms, now ms, the
/// cap, the ticket. Answers 1 when issued, 0 when the cap was reached. The
/// set forgets expired tickets first, and expires with the last of them.
const ISSUE_SCRIPT: &str = r"
local ttl, now, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= cap then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
";

/// Reads a ticket, its milliseconds left, and deletes it, atomically.
const SPEND_SCRIPT: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then return nil end
local left = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {value, left}
";

/// Runs a ticket command within `REDIS_TIMEOUT`.
async fn in_time<T: redis::FromRedisValue>(
    connection: &ConnectionManager,
    command: redis::Cmd,
) -> Result<T, TicketError> {
    let mut connection = connection.clone();
    match tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<T>(&mut connection)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(TicketError::Unavailable(e.to_string())),
        Err(_) => Err(TicketError::Unavailable("Redis timed out".into())),
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
        let peeked = tickets.peek(&ticket).await.unwrap();
        assert_eq!(peeked.user.as_str(), "alice", "a look does not spend it");
        let identity = tickets.redeem(&ticket).await.unwrap().identity;
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.valid_until, 2_000_000_005);
        assert_eq!(identity.source, TokenSource::Ticket);
        assert!(matches!(
            tickets.redeem(&ticket).await,
            Err(TicketError::Invalid)
        ));
        assert!(matches!(
            tickets.peek(&ticket).await,
            Err(TicketError::Invalid)
        ));
    }

    #[actix_web::test]
    async fn a_ticket_given_back_can_be_spent_again() {
        let tickets = Tickets::in_memory();
        let ticket = tickets
            .issue(&alice(), Duration::from_secs(30))
            .await
            .unwrap();
        let spent = tickets.redeem(&ticket).await.unwrap();
        tickets.give_back(spent).await;
        assert!(tickets.redeem(&ticket).await.is_ok());
    }

    #[actix_web::test]
    async fn late_and_forged_tickets_are_invalid() {
        let tickets = Tickets::in_memory();
        let late = tickets.issue(&alice(), Duration::ZERO).await.unwrap();
        let forged = "a".repeat(2 * TICKET_BYTES);
        for ticket in [late.as_str(), forged.as_str(), "x*"] {
            assert!(matches!(
                tickets.redeem(ticket).await,
                Err(TicketError::Invalid)
            ));
            assert!(matches!(
                tickets.peek(ticket).await,
                Err(TicketError::Invalid)
            ));
        }
    }

    #[actix_web::test]
    async fn a_user_holds_at_most_the_cap_and_spending_or_expiry_frees_room() {
        let tickets = Tickets::in_memory();
        let ttl = Duration::from_secs(30);
        let mut bought = Vec::new();
        for _ in 0..MAX_TICKETS_PER_USER {
            bought.push(tickets.issue(&alice(), ttl).await.unwrap());
        }
        assert_eq!(
            tickets.issue(&alice(), ttl).await,
            Err(TicketError::TooMany)
        );
        let bob = Identity {
            user: UserId::parse("bob").unwrap(),
            ..alice()
        };
        assert!(
            tickets.issue(&bob, ttl).await.is_ok(),
            "the cap is per user"
        );
        tickets.redeem(&bought[0]).await.unwrap();
        assert!(
            tickets.issue(&alice(), ttl).await.is_ok(),
            "a spent one frees room"
        );

        // Expired tickets leave without a scan: the sweep stops at the first
        // live one.
        let short = Tickets::in_memory();
        for _ in 0..MAX_TICKETS_PER_USER {
            short.issue(&alice(), Duration::ZERO).await.unwrap();
        }
        assert!(
            short.issue(&alice(), ttl).await.is_ok(),
            "expired ones do not count"
        );
        let Tickets::Memory(held) = &short else {
            unreachable!()
        };
        let held = held.lock().unwrap();
        assert_eq!((held.tickets.len(), held.expiries.len()), (1, 1));
        assert_eq!(held.per_user.get(&alice().user), Some(&1));
    }

    #[test]
    fn a_bearer_round_trips_its_channel_patterns() {
        let bearer = Bearer::of(&alice());
        assert_eq!(bearer.channels, ["team-1.*"]);
        let identity = bearer.identity().unwrap();
        assert_eq!(identity.channel_patterns, alice().channel_patterns);
    }
}
