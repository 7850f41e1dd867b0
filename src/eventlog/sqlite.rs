//! The embedded log of a single node: every retained event in an embedded
//! SQLite database under `DATA_DIR`, so a restart (or a crash) loses nothing
//! that was answered `202`.
//!
//! Memory stays the place events are read from (resume, `/api/history`); the
//! store is its durable copy. At start every stored event is loaded and the
//! retention rules applied again; while running, new events are appended and
//! evicted ones deleted. One thread ([`Writer`]) writes to the database and
//! commits whatever is waiting in one transaction, so concurrent publishes
//! share one commit (group commit).
//!
//! `DURABILITY` decides what a commit waits for. `process`: SQLite's WAL with
//! `synchronous=NORMAL`, so a commit is written through to the operating
//! system and waits for no disk sync; a second thread ([`Syncer`]), on its
//! own connection, checkpoints every `SYNC_INTERVAL_MS`, which syncs the WAL
//! first and so bounds what a power loss can take. `disk`: `synchronous=FULL`,
//! a commit syncs the WAL before it returns. In both modes the checkpoints
//! (copying the WAL back into the database) run on the syncer, off the path
//! of a publish. Why SQLite: see `docs/architecture.md`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::oneshot;

use super::idempotency::{Remember, Remembered};
use super::{Flow, FlowItem, LogError, Sequencer, Sink};
use crate::config::Durability;
use crate::domain::{Audience, Channel, EventId, EventName, Outgoing, Stamped, UserId};
use crate::revocations::Revocation;

/// The database file's name inside `DATA_DIR`.
const FILE_NAME: &str = "herald.db";
/// The file whose lock keeps a second process out of `DATA_DIR`.
const LOCK_FILE_NAME: &str = "herald.lock";
/// A WAL this long (4 KiB pages) after the syncer's checkpoint makes the
/// writer checkpoint once itself, so that the log starts over: under a
/// publish flood the syncer's checkpoints alone could never catch up with
/// the last frame, and the file would only grow. 4,096 pages: 16 MiB.
const WAL_RESTART_PAGES: i64 = 4096;
/// A WAL file longer than this is cut back to it when the log starts over.
const WAL_SIZE_LIMIT_BYTES: i64 = 16 * 1024 * 1024;
/// Most appends one transaction takes; more wait for the next.
const MAX_GROUP: usize = 1024;
/// Deletes wait for the next append's transaction, or at most this long
/// (they need no sync of their own: a restart applies retention again).
const DELETE_DELAY: Duration = Duration::from_secs(1);
/// ... or until this many are waiting.
const DELETE_BATCH: usize = 4096;

/// Why the store could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// `DATA_DIR` cannot be created, opened or written (at start).
    Unusable(String),
    /// The database file is damaged (at start).
    Damaged(String),
    /// The disk is full (SQLite's `SQLITE_FULL`; a file-size limit shows
    /// as a failed write instead).
    Full(String),
    /// Another failure to write.
    Failed(String),
    /// The writer has stopped: the server is stopping.
    Stopped,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unusable(why) | Self::Damaged(why) | Self::Failed(why) => f.write_str(why),
            Self::Full(why) => write!(f, "the disk is full: {why}"),
            Self::Stopped => f.write_str("the store has stopped"),
        }
    }
}

/// What the store held at start.
pub(crate) struct Loaded {
    /// Every stored event, oldest first.
    pub events: Vec<Stamped>,
    /// Where this store's history began: ids before it were never stored.
    pub floor: EventId,
    /// The newest event ever deleted from the store: what each audience lost
    /// is not stored, so a resume from before it counts as not recovered.
    pub horizon: Option<EventId>,
    /// Revocations still in force: (key, when made).
    pub revocations: Vec<(String, u64)>,
    /// Ranges of ids (both ends excluded) that an earlier process may have
    /// issued and the store does not hold: from the newest event a start
    /// found to the first id of the process that started. Only a power loss
    /// (or a kernel crash) leaves ids in one; a resume from inside one is
    /// not recovered. Filled in by [`Store::begin_epoch`].
    pub gaps: Vec<(EventId, EventId)>,
    /// The idempotency records still within their TTL, by name.
    pub idempotency: Vec<(String, Remembered)>,
}

/// The database, owned by the writer thread once the server runs.
pub(crate) struct Store {
    connection: Connection,
    path: PathBuf,
    /// The newest id ever deleted (see [`Loaded::horizon`]).
    horizon: Option<EventId>,
    /// Locked while the store is open; the lock goes with the file.
    _lock: File,
    health: Arc<Health>,
}

/// How long a statement waits for a lock the syncer holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks `DATA_DIR` for this process: a second Herald on it is refused at
/// start rather than sharing the database.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            StoreError::Unusable(format!(
                "DATA_DIR {} cannot be used: {}: {e}",
                dir.display(),
                path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unusable(format!(
            "DATA_DIR {}: another process (a second Herald?) is using this DATA_DIR",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unusable(format!(
            "DATA_DIR {} cannot be locked: {}: {e}",
            dir.display(),
            path.display()
        ))),
    }
}

fn failed(path: &Path, error: &rusqlite::Error) -> StoreError {
    let message = format!("{}: {error}", path.display());
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(message),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Damaged(format!(
            "{message}. The file is damaged: move it aside to start with an empty history, \
             or restore it from a backup"
        )),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unusable(format!(
            "{message}: another process (a second Herald?) is using this DATA_DIR"
        )),
        _ => StoreError::Failed(message),
    }
}

/// Newline-separated names (no name can hold a line break).
fn join<T: AsRef<str>>(names: &[T]) -> String {
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("\n")
}

fn split<T>(joined: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Box<[T]>, String> {
    joined
        .split('\n')
        .filter(|name| !name.is_empty())
        .map(parse)
        .collect()
}

impl Store {
    /// Opens (or creates) the store in `dir` and reads everything in it.
    pub(crate) fn open(
        dir: &Path,
        new_floor: EventId,
        revocations_since: u64,
        idempotency_since_ms: u64,
        durability: Durability,
    ) -> Result<(Self, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unusable(format!("DATA_DIR {} cannot be created: {e}", dir.display()))
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let unusable = |error: rusqlite::Error| match failed(&path, &error) {
            StoreError::Failed(message) | StoreError::Full(message) => StoreError::Unusable(
                format!("DATA_DIR {} cannot be used: {message}", dir.display()),
            ),
            other => other,
        };
        let connection = Connection::open(&path).map_err(unusable)?;
        // The syncer's checkpoint may hold a lock for a moment.
        connection.busy_timeout(BUSY_TIMEOUT).map_err(unusable)?;
        // process: a WAL commit is written through to the OS and not synced;
        // disk: it is synced before it returns. Checkpoints are the syncer's.
        let synchronous = match durability {
            Durability::Process => "NORMAL",
            Durability::Disk => "FULL",
        };
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = {synchronous};
                 PRAGMA wal_autocheckpoint = 0;
                 PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};
                 CREATE TABLE IF NOT EXISTS events (
                     epoch INTEGER NOT NULL,
                     seq INTEGER NOT NULL,
                     name TEXT NOT NULL,
                     data TEXT NOT NULL,
                     users TEXT,
                     channels TEXT,
                     published_at INTEGER NOT NULL,
                     PRIMARY KEY (epoch, seq)
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS revocations (
                     key TEXT PRIMARY KEY,
                     at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS meta (
                     key TEXT PRIMARY KEY,
                     value INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS idempotency (
                     name TEXT PRIMARY KEY,
                     fingerprint TEXT NOT NULL,
                     answer TEXT NOT NULL,
                     at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS gaps (
                     after_epoch INTEGER NOT NULL,
                     after_seq INTEGER NOT NULL,
                     before_epoch INTEGER NOT NULL,
                     PRIMARY KEY (after_epoch, after_seq, before_epoch)
                 ) WITHOUT ROWID;"
            ))
            .map_err(unusable)?;
        let check: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(unusable)?;
        if check != "ok" {
            return Err(StoreError::Damaged(format!(
                "{} is damaged ({check}): move it aside to start with an empty history, \
                 or restore it from a backup",
                path.display()
            )));
        }
        let mut store = Self {
            connection,
            path,
            horizon: None,
            _lock: lock,
            health: Arc::default(),
        };
        let floor = store.floor(new_floor)?;
        let horizon = store.read_horizon()?;
        store.horizon = horizon;
        let events = store.load()?;
        let revocations = store.load_revocations(revocations_since)?;
        let idempotency = store.load_idempotency(idempotency_since_ms)?;
        Ok((
            store,
            Loaded {
                events,
                floor,
                horizon,
                revocations,
                gaps: Vec::new(),
                idempotency,
            },
        ))
    }

    /// Starts the epoch of this process, past every epoch an earlier start
    /// of this store began (recorded, and synced, before any id of it is
    /// given out: a clock set back after a power loss cannot make ids be
    /// issued twice) and past every stored event. Records that the ids
    /// after the newest event held and before this epoch are not held (what
    /// the last process issued after that was lost, if it issued any), and
    /// puts every gap still worth knowing in `loaded`.
    pub(crate) fn begin_epoch(&mut self, loaded: &mut Loaded) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| failed(&path, &e);
        let last_begun: Option<i64> = self
            .connection
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(fail)?;
        let after_stored = loaded.events.last().map_or(0, |newest| newest.id.epoch + 1);
        let after_begun = last_begun.map_or(0, |epoch| epoch as u64 + 1);
        let epoch = super::new_epoch(after_stored.max(after_begun));
        let held = loaded
            .events
            .last()
            .map(|newest| newest.id)
            .max(loaded.horizon)
            .unwrap_or(loaded.floor)
            .max(loaded.floor);
        let transaction = self.connection.transaction().map_err(fail)?;
        transaction
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?1)",
                [epoch as i64],
            )
            .map_err(fail)?;
        if last_begun.is_some() {
            transaction
                .execute(
                    "INSERT OR IGNORE INTO gaps (after_epoch, after_seq, before_epoch)
                     VALUES (?1, ?2, ?3)",
                    params![held.epoch as i64, held.seq as i64, epoch as i64],
                )
                .map_err(fail)?;
        }
        transaction.commit().map_err(fail)?;
        // On the disk before the first id of this epoch is given out.
        checkpoint(&self.connection).map_err(fail)?;
        loaded.gaps = self.load_gaps()?;
        Ok(epoch)
    }

    /// The recorded gaps; those that end before the horizon are deleted
    /// (a resume from them is not recovered anyway).
    fn load_gaps(&mut self) -> Result<Vec<(EventId, EventId)>, StoreError> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| failed(&path, &e);
        if let Some(horizon) = self.horizon {
            // `before` is (before_epoch, 0): at or before the horizon.
            self.connection
                .execute(
                    "DELETE FROM gaps WHERE before_epoch <= ?1",
                    [horizon.epoch as i64],
                )
                .map_err(fail)?;
        }
        let mut statement = self
            .connection
            .prepare("SELECT after_epoch, after_seq, before_epoch FROM gaps ORDER BY 1, 2")
            .map_err(fail)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    EventId::new(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64),
                    EventId::new(row.get::<_, i64>(2)? as u64, 0),
                ))
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    /// The floor recorded when the store was created, recording `new` if none.
    fn floor(&mut self, new: EventId) -> Result<EventId, StoreError> {
        let get = |connection: &Connection, key: &str| -> rusqlite::Result<Option<i64>> {
            connection
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
        };
        let epoch = get(&self.connection, "floor_epoch").map_err(|e| failed(&self.path, &e))?;
        let seq = get(&self.connection, "floor_seq").map_err(|e| failed(&self.path, &e))?;
        if let (Some(epoch), Some(seq)) = (epoch, seq) {
            return Ok(EventId::new(epoch as u64, seq as u64));
        }
        self.connection
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('floor_epoch', ?1), ('floor_seq', ?2)",
                params![new.epoch as i64, new.seq as i64],
            )
            .map_err(|e| failed(&self.path, &e))?;
        Ok(new)
    }

    /// The newest id ever deleted, if any.
    fn read_horizon(&mut self) -> Result<Option<EventId>, StoreError> {
        self.connection
            .query_row(
                "SELECT a.value, b.value FROM meta a, meta b
                 WHERE a.key = 'horizon_epoch' AND b.key = 'horizon_seq'",
                [],
                |row| {
                    Ok(EventId::new(
                        row.get::<_, i64>(0)? as u64,
                        row.get::<_, i64>(1)? as u64,
                    ))
                },
            )
            .optional()
            .map_err(|e| failed(&self.path, &e))
    }

    /// The idempotency records made at or after `since_ms`; older ones are
    /// deleted.
    fn load_idempotency(&mut self, since_ms: u64) -> Result<Vec<(String, Remembered)>, StoreError> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| failed(&path, &e);
        self.connection
            .execute("DELETE FROM idempotency WHERE at < ?1", [since_ms as i64])
            .map_err(fail)?;
        let mut statement = self
            .connection
            .prepare("SELECT name, fingerprint, answer, at FROM idempotency")
            .map_err(fail)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Remembered {
                        fingerprint: row.get(1)?,
                        answer: row.get(2)?,
                        at_ms: row.get::<_, i64>(3)? as u64,
                    },
                ))
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    /// The revocations made at or after `since`; older ones are deleted.
    fn load_revocations(&mut self, since: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| failed(&path, &e);
        self.connection
            .execute("DELETE FROM revocations WHERE at < ?1", [since as i64])
            .map_err(fail)?;
        let mut statement = self
            .connection
            .prepare("SELECT key, at FROM revocations")
            .map_err(fail)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn load(&mut self) -> Result<Vec<Stamped>, StoreError> {
        let path = self.path.clone();
        let mut statement = self
            .connection
            .prepare(
                "SELECT epoch, seq, name, data, users, channels, published_at
                 FROM events ORDER BY epoch, seq",
            )
            .map_err(|e| failed(&path, &e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    EventId::new(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64),
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, i64>(6)? as u64,
                ))
            })
            .map_err(|e| failed(&path, &e))?;
        let mut events = Vec::new();
        for row in rows {
            let (id, name, data, users, channels, published_at) =
                row.map_err(|e| failed(&path, &e))?;
            let damaged =
                |why: String| StoreError::Damaged(format!("{}: event {id}: {why}", path.display()));
            let audience = match (users, channels) {
                (None, None) => Audience::Everyone,
                (users, channels) => Audience::Targets {
                    users: split(users.as_deref().unwrap_or(""), UserId::parse).map_err(damaged)?,
                    channels: split(channels.as_deref().unwrap_or(""), Channel::parse)
                        .map_err(damaged)?,
                },
            };
            events.push(Stamped {
                id,
                event: Outgoing {
                    name: EventName::parse(&name).map_err(damaged)?,
                    data,
                    audience,
                },
                published_at,
            });
        }
        Ok(events)
    }

    /// Appends `events`, records `revocations` (key, when) and deletes
    /// `evicted` in one transaction: written through to the operating system
    /// when this returns (`DURABILITY=process`), or synced to the disk
    /// (`disk`).
    fn commit(
        &mut self,
        events: &[&Stamped],
        revocations: &[(String, u64)],
        evicted: &[EventId],
        remembered: &[&(String, Remembered)],
    ) -> Result<(), StoreError> {
        let result = self.transact(events, revocations, evicted, remembered);
        match &result {
            Ok(()) => self.health.wrote(),
            Err(error) => self.health.failed(error),
        }
        result
    }

    /// Whether a write goes through now: a failing store writes (and then
    /// deletes) [`PROBE_BYTES`], more than a publish of the default
    /// `MAX_BODY_BYTES` takes, so a disk with a little room is not taken
    /// for one with enough.
    fn probe(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let result = self
            .connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS probe (x BLOB);
                 INSERT INTO probe (x) VALUES (zeroblob({PROBE_BYTES}));
                 DELETE FROM probe;"
            ))
            .map_err(|e| failed(&path, &e));
        match &result {
            Ok(()) => self.health.wrote(),
            Err(error) => self.health.failed(error),
        }
        result
    }

    fn transact(
        &mut self,
        events: &[&Stamped],
        revocations: &[(String, u64)],
        evicted: &[EventId],
        remembered: &[&(String, Remembered)],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| failed(&path, &e);
        let transaction = self.connection.transaction().map_err(fail)?;
        {
            let mut insert = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO events
                     (epoch, seq, name, data, users, channels, published_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(fail)?;
            for stamped in events {
                let (users, channels) = match &stamped.event.audience {
                    Audience::Everyone => (None, None),
                    Audience::Targets { users, channels } => {
                        (Some(join(users)), Some(join(channels)))
                    }
                };
                insert
                    .execute(params![
                        stamped.id.epoch as i64,
                        stamped.id.seq as i64,
                        stamped.event.name.as_str(),
                        stamped.event.data,
                        users,
                        channels,
                        stamped.published_at as i64,
                    ])
                    .map_err(fail)?;
            }
            let mut revoke = transaction
                .prepare_cached("INSERT OR REPLACE INTO revocations (key, at) VALUES (?1, ?2)")
                .map_err(fail)?;
            for (key, at) in revocations {
                revoke.execute(params![key, *at as i64]).map_err(fail)?;
            }
            let mut remember = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO idempotency (name, fingerprint, answer, at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(fail)?;
            for (name, record) in remembered {
                remember
                    .execute(params![
                        name,
                        record.fingerprint,
                        record.answer,
                        record.at_ms as i64
                    ])
                    .map_err(fail)?;
            }
            let mut delete = transaction
                .prepare_cached("DELETE FROM events WHERE epoch = ?1 AND seq = ?2")
                .map_err(fail)?;
            for id in evicted {
                delete
                    .execute(params![id.epoch as i64, id.seq as i64])
                    .map_err(fail)?;
            }
            let horizon = self.horizon.max(evicted.iter().max().copied());
            if let Some(horizon) = horizon.filter(|_| horizon != self.horizon) {
                transaction
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value)
                         VALUES ('horizon_epoch', ?1), ('horizon_seq', ?2)",
                        params![horizon.epoch as i64, horizon.seq as i64],
                    )
                    .map_err(fail)?;
            }
        }
        transaction.commit().map_err(fail)?;
        self.horizon = self.horizon.max(evicted.iter().max().copied());
        Ok(())
    }
}

/// What the writer thread is asked to do.
enum Command {
    /// Write these events, or record this revocation (made at the given
    /// Unix second); answer once it is committed (or not).
    Append {
        entry: Entry,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delete these events with the next transaction.
    Delete(Vec<EventId>),
}

/// One append, events or a revocation.
enum Entry {
    /// Events, and the idempotency record made with them, if any.
    Events(Vec<Stamped>, Option<(String, Remembered)>),
    Revoke(Revocation, u64),
}

/// What the writer has put on disk, in log order, for the Broadcaster to
/// deliver and carry out.
pub(crate) type OnCommitted = Box<dyn Fn(Vec<FlowItem>) + Send>;

/// Where the writer answers an append.
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// The handle to the writer thread. The thread ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct Writer {
    commands: mpsc::Sender<Command>,
}

/// Whether the store can write, shared by whoever commits and `/healthz`,
/// and the rate limit of the log lines its failures write.
#[derive(Default)]
pub(crate) struct Health {
    failing: AtomicBool,
    /// When a failure was last logged (Unix ms), and how many since were not.
    logged_at_ms: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

/// What a failing store's health probe writes.
const PROBE_BYTES: usize = 256 * 1024;

/// A failing store logs at most one line per this many milliseconds.
const FAILURE_LOG_INTERVAL_MS: u64 = 10_000;

impl Health {
    fn failed(&self, error: &StoreError) {
        let first = !self.failing.swap(true, Ordering::AcqRel);
        let now = crate::clock::unix_now_ms();
        let last = self.logged_at_ms.load(Ordering::Acquire);
        if first || now.saturating_sub(last) >= FAILURE_LOG_INTERVAL_MS {
            self.logged_at_ms.store(now, Ordering::Release);
            let unlogged = self.unlogged.swap(0, Ordering::AcqRel);
            if unlogged > 0 {
                log::error!("store: {error} ({unlogged} more failed writes since the last line)");
            } else {
                log::error!("store: {error}");
            }
        } else {
            self.unlogged.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn wrote(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            self.unlogged.store(0, Ordering::Release);
            log::info!("store: writing again");
        }
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// What the writer and the syncer tell each other.
#[derive(Default)]
struct SyncState {
    /// Set by the writer after a commit; the syncer takes it.
    written: AtomicBool,
    /// Set by the syncer when the WAL has grown long: the writer checkpoints
    /// once itself, so that its next commit starts the log over.
    start_over: AtomicBool,
}

impl Writer {
    /// Moves `store` to its own thread, and starts the syncer beside it.
    /// `on_committed` is called on the writer's thread with every group of
    /// appended events once they are committed, in order, before their
    /// publishers are answered.
    pub(crate) fn spawn(
        mut store: Store,
        on_committed: OnCommitted,
        sync_interval: Duration,
    ) -> std::io::Result<Self> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let state = Arc::new(SyncState::default());
        let (stop_syncer, stopped) = mpsc::channel::<()>();
        let syncer = Syncer {
            path: store.path.clone(),
            interval: sync_interval,
            state: state.clone(),
            inline: None,
        }
        .spawn(stopped)?;
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || {
                store.write(&inbox, &on_committed, &state);
                // The syncer checkpoints once more and closes first; the
                // store's connection, the last, then removes the WAL.
                drop(stop_syncer);
                let _ = syncer.join();
                drop(store);
            })?;
        Ok(Self { commands })
    }

    /// Queues an entry to write; the answer comes through `reply`.
    fn append(&self, entry: Entry, reply: Reply) -> Result<(), StoreError> {
        self.commands
            .send(Command::Append { entry, reply })
            .map_err(|_| StoreError::Stopped)
    }

    /// Queues evicted events to delete with the next transaction.
    pub(crate) fn delete(&self, ids: Vec<EventId>) {
        if !ids.is_empty() {
            // Fails only when the thread is gone, and then so is the server.
            let _ = self.commands.send(Command::Delete(ids));
        }
    }
}

impl Store {
    /// The writer's loop, until every [`Writer`] handle is gone.
    fn write(
        &mut self,
        inbox: &mpsc::Receiver<Command>,
        on_committed: &OnCommitted,
        state: &SyncState,
    ) {
        let mut evicted: Vec<EventId> = Vec::new();
        // When the oldest waiting delete arrived.
        let mut waiting_since: Option<Instant> = None;
        loop {
            if state.start_over.swap(false, Ordering::AcqRel) {
                self.checkpoint_for_start_over();
            }
            let first = match waiting_since {
                None => inbox.recv().ok(),
                Some(since) => {
                    let left = DELETE_DELAY.saturating_sub(since.elapsed());
                    // A timeout (or the last handle gone) writes the deletes.
                    inbox.recv_timeout(left).ok()
                }
            };
            let Some(first) = first else {
                // Idle with deletes waiting (or stopping): write them now.
                if evicted.is_empty() {
                    return;
                }
                if let Err(error) = self.commit(&[], &[], &evicted, &[]) {
                    // Not retried: rows left behind are evicted again when
                    // a restart applies retention.
                    log::warn!("store: deleting evicted events: {error}");
                }
                state.written.store(true, Ordering::Release);
                evicted.clear();
                waiting_since = None;
                continue;
            };
            let mut appends: Vec<(Entry, Reply)> = Vec::new();
            let mut next = Some(first);
            // Whatever queued up during the last commit shares this one.
            while let Some(command) = next.take() {
                match command {
                    Command::Append { entry, reply } => appends.push((entry, reply)),
                    Command::Delete(ids) => evicted.extend(ids),
                }
                if appends.len() < MAX_GROUP {
                    next = inbox.try_recv().ok();
                }
            }
            if !evicted.is_empty() {
                waiting_since.get_or_insert_with(Instant::now);
            }
            let deletes_due = evicted.len() >= DELETE_BATCH
                || waiting_since.is_some_and(|since| since.elapsed() >= DELETE_DELAY);
            if appends.is_empty() && !deletes_due {
                continue;
            }
            let mut events: Vec<&Stamped> = Vec::new();
            let mut revoked: Vec<(String, u64)> = Vec::new();
            let mut remembered: Vec<&(String, Remembered)> = Vec::new();
            for (entry, _) in &appends {
                match entry {
                    Entry::Events(group, record) => {
                        events.extend(group);
                        remembered.extend(record);
                    }
                    Entry::Revoke(revocation, at) => revoked.push((revocation.key(), *at)),
                }
            }
            match self.commit(&events, &revoked, &evicted, &remembered) {
                Ok(()) => {
                    state.written.store(true, Ordering::Release);
                    evicted.clear();
                    waiting_since = None;
                    let mut items = Vec::with_capacity(events.len() + revoked.len());
                    let mut replies = Vec::with_capacity(appends.len());
                    for (entry, reply) in appends {
                        match entry {
                            Entry::Events(group, _) => {
                                items.extend(group.into_iter().map(FlowItem::Event))
                            }
                            Entry::Revoke(revocation, _) => {
                                items.push(FlowItem::Revoke(revocation))
                            }
                        }
                        replies.push(reply);
                    }
                    on_committed(items);
                    for reply in replies {
                        // A publisher that went away needs no answer.
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(error) => {
                    // Logged by the store, at most once per 10 s.
                    for (_, reply) in appends {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Checkpoints on the writer's own connection, which nobody else is
    /// writing with: it catches up with the last frame, and the next commit
    /// starts the WAL over (cut back to its size limit). The syncer has
    /// copied nearly everything already; this pays its syncs once per
    /// [`WAL_RESTART_PAGES`] written.
    fn checkpoint_for_start_over(&mut self) {
        if let Err(error) = checkpoint(&self.connection) {
            log::warn!("store: checkpoint: {}", failed(&self.path, &error));
        }
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: copies what the WAL holds back into the
/// database, after syncing the WAL, without waiting for the writer. Answers
/// the WAL's length in pages.
fn checkpoint(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

/// The thread that puts what the writer committed on the disk: every
/// `interval` after a commit, a checkpoint on its own connection (which
/// syncs the WAL, then the database file). In `DURABILITY=process` mode the
/// only sync of the WAL besides SQLite's own when the log starts over.
struct Syncer {
    path: PathBuf,
    interval: Duration,
    state: Arc<SyncState>,
    /// With `DURABILITY=process`, the store publishers commit to: the syncer
    /// writes the deletes waiting there before each checkpoint.
    inline: Option<Arc<Mutex<Inline>>>,
}

impl Syncer {
    /// Starts the thread; it checkpoints a last time and ends when `stop`'s
    /// sender is dropped.
    fn spawn(self, stop: mpsc::Receiver<()>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("herald-sync".into())
            .spawn(move || self.run(&stop))
    }

    fn run(&self, stop: &mpsc::Receiver<()>) {
        let connection = match Connection::open(&self.path).and_then(|connection| {
            connection.busy_timeout(BUSY_TIMEOUT)?;
            // NORMAL: a checkpoint syncs the WAL before and the database after.
            connection.execute_batch("PRAGMA synchronous = NORMAL;")?;
            Ok(connection)
        }) {
            Ok(connection) => connection,
            Err(error) => {
                log::error!(
                    "store: the syncer cannot open the database, so nothing is synced \
                     until a restart: {}",
                    failed(&self.path, &error)
                );
                return;
            }
        };
        // One warning per failure streak, not one per interval.
        let mut failing = false;
        loop {
            let stopping = !matches!(
                stop.recv_timeout(self.interval),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if let Some(inline) = &self.inline {
                lock(inline).write_deletes();
            }
            if self.state.written.swap(false, Ordering::AcqRel) || stopping {
                match checkpoint(&connection) {
                    Ok(pages) => {
                        if failing {
                            log::info!("store: syncing again");
                            failing = false;
                        }
                        if pages >= WAL_RESTART_PAGES {
                            self.state.start_over.store(true, Ordering::Release);
                        }
                    }
                    Err(error) => {
                        if !failing {
                            log::warn!("store: sync: {}", failed(&self.path, &error));
                            failing = true;
                        }
                        // Tried again at the next interval.
                        self.state.written.store(true, Ordering::Release);
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// `DURABILITY=process`: the store that publishers commit to themselves,
/// each under the sequencer's order lock. A commit waits for no sync, so
/// handing it to a thread would only add two thread switches to every
/// publish, and make its answer wait behind whatever that thread's wake-up
/// queues behind on the worker (a fan-out's thousands of streams).
struct Inline {
    store: Store,
    /// Evicted ids waiting to be deleted: with the next commit, or by the
    /// syncer within `SYNC_INTERVAL_MS`.
    evicted: Vec<EventId>,
    state: Arc<SyncState>,
}

impl Inline {
    /// Commits `events` and `revoked`, with the deletes waiting.
    fn commit(
        &mut self,
        events: &[&Stamped],
        revoked: &[(String, u64)],
        remembered: &[&(String, Remembered)],
    ) -> Result<(), StoreError> {
        if self.state.start_over.swap(false, Ordering::AcqRel) {
            self.store.checkpoint_for_start_over();
        }
        match self
            .store
            .commit(events, revoked, &self.evicted, remembered)
        {
            Ok(()) => {
                self.evicted.clear();
                self.state.written.store(true, Ordering::Release);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn write_deletes(&mut self) {
        if self.evicted.is_empty() {
            return;
        }
        if let Err(error) = self.commit(&[], &[], &[]) {
            // Not retried: rows left behind are evicted again when a
            // restart applies retention.
            log::warn!("store: deleting evicted events: {error}");
            self.evicted.clear();
        }
    }
}

fn lock(inline: &Mutex<Inline>) -> std::sync::MutexGuard<'_, Inline> {
    // A panic while committing leaves the store as SQLite left it: usable.
    inline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How appends reach the database (see `DURABILITY`).
enum Committer {
    /// `process`: the publisher commits, then hands the events to the sink.
    Inline {
        store: Arc<Mutex<Inline>>,
        sink: Sink,
        /// Dropped with the log: the syncer then deletes, checkpoints and ends.
        _stop_syncer: mpsc::Sender<()>,
    },
    /// `disk`: the writer thread, whose group commit shares one sync.
    Thread(Writer),
}

/// The embedded store as the node's event log: ids from this process's own
/// sequence, each append committed (by its publisher, or by the writer
/// thread with `DURABILITY=disk`) and handed to the sink once committed,
/// before its publisher is answered.
pub(crate) struct SqliteLog {
    sequencer: Arc<Sequencer>,
    committer: Committer,
    health: Arc<Health>,
}

impl SqliteLog {
    /// Starts committing to `store`; what it commits goes to `sink`. Its
    /// syncer runs every `sync_interval` after a commit.
    pub(crate) fn start(
        store: Store,
        sequencer: Arc<Sequencer>,
        sink: Sink,
        durability: Durability,
        sync_interval: Duration,
    ) -> std::io::Result<Self> {
        let health = store.health.clone();
        let committer = match durability {
            Durability::Process => {
                let state = Arc::new(SyncState::default());
                let path = store.path.clone();
                let inline = Arc::new(Mutex::new(Inline {
                    store,
                    evicted: Vec::new(),
                    state: state.clone(),
                }));
                let (stop_syncer, stopped) = mpsc::channel::<()>();
                Syncer {
                    path,
                    interval: sync_interval,
                    state,
                    inline: Some(inline.clone()),
                }
                .spawn(stopped)?;
                Committer::Inline {
                    store: inline,
                    sink,
                    _stop_syncer: stop_syncer,
                }
            }
            Durability::Disk => Committer::Thread(Writer::spawn(
                store,
                Box::new(move |items| {
                    // A stopped sink means the server is stopping: nobody is
                    // left to deliver to, and what was written is kept for
                    // the next start.
                    let _ = sink(Flow::Items {
                        items,
                        position: None,
                    });
                }),
                sync_interval,
            )?),
        };
        Ok(Self {
            sequencer,
            committer,
            health,
        })
    }

    /// Appends `events`, and with `remember` the idempotency record of the
    /// answer, in the same transaction.
    pub(crate) async fn append(
        &self,
        events: Vec<Outgoing>,
        remember: Option<&Remember>,
    ) -> Result<Vec<EventId>, LogError> {
        match &self.committer {
            Committer::Inline { store, sink, .. } => self.sequencer.stamp(events, |stamped| {
                let ids: Vec<EventId> = stamped.iter().map(|event| event.id).collect();
                let record = remember.map(|remember| remember.record(&ids));
                lock(store).commit(
                    &stamped.iter().collect::<Vec<_>>(),
                    &[],
                    &record.iter().collect::<Vec<_>>(),
                )?;
                // Stopped: the server is stopping; what was written is kept.
                let _ = sink(Flow::Items {
                    items: stamped.into_iter().map(FlowItem::Event).collect(),
                    position: None,
                });
                Ok(ids)
            }),
            Committer::Thread(writer) => {
                let (reply, answer) = oneshot::channel();
                let ids = self.sequencer.stamp(events, |stamped| {
                    let ids: Vec<EventId> = stamped.iter().map(|event| event.id).collect();
                    let record = remember.map(|remember| remember.record(&ids));
                    writer
                        .append(Entry::Events(stamped, record), reply)
                        .map(|()| ids)
                })?;
                Self::stored(answer).await?;
                Ok(ids)
            }
        }
    }

    /// Records the revocation; its streams end once it is committed, after
    /// every event appended before it.
    pub(crate) async fn revoke(&self, revocation: Revocation, at: u64) -> Result<(), LogError> {
        match &self.committer {
            Committer::Inline { store, sink, .. } => self.sequencer.in_order(|| {
                lock(store).commit(&[], &[(revocation.key(), at)], &[])?;
                let _ = sink(Flow::Items {
                    items: vec![FlowItem::Revoke(revocation)],
                    position: None,
                });
                Ok(())
            }),
            Committer::Thread(writer) => {
                let (reply, answer) = oneshot::channel();
                self.sequencer
                    .in_order(|| writer.append(Entry::Revoke(revocation, at), reply))?;
                Self::stored(answer).await
            }
        }
    }

    async fn stored(answer: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), LogError> {
        match answer.await {
            Ok(result) => result.map_err(LogError::from),
            // The writer dropped the question: the server is stopping.
            Err(_) => Err(LogError::Stopped),
        }
    }

    /// A handle that deletes what retention drops, for the Broadcaster.
    pub(crate) fn evictor(&self) -> Box<dyn Fn(Vec<EventId>) + Send + 'static> {
        match &self.committer {
            Committer::Inline { store, .. } => {
                let store = store.clone();
                Box::new(move |ids| lock(&store).evicted.extend(ids))
            }
            Committer::Thread(writer) => {
                let writer = writer.clone();
                Box::new(move |ids| writer.delete(ids))
            }
        }
    }

    /// `Ok` unless the last write failed. A failing store tries a write
    /// (`process`: at once; `disk`: the writer's next commit decides), so
    /// a disk that has room again is healthy again without a restart.
    pub(crate) fn healthy(&self) -> Result<(), LogError> {
        if !self.health.is_failing() {
            return Ok(());
        }
        if let Committer::Inline { store, .. } = &self.committer {
            if lock(store).store.probe().is_ok() {
                return Ok(());
            }
        }
        Err(LogError::NotWritten(
            "the disk store cannot write (is its disk full?)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "herald-store-{name}-{}-{}",
                std::process::id(),
                crate::clock::unix_now_ms()
            ));
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            // Best effort: a leftover temporary directory harms nothing.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn stamped(seq: u64, audience: Audience) -> Stamped {
        Stamped {
            id: EventId::new(9, seq),
            event: Outgoing {
                name: EventName::parse("note").unwrap(),
                data: format!(r#"{{"seq":{seq}}}"#),
                audience,
            },
            published_at: 1_000 + seq,
        }
    }

    #[test]
    fn what_was_committed_is_loaded_again_in_order_with_its_audience() {
        let scratch = Scratch::new("reload");
        let targets = Audience::Targets {
            users: vec![UserId::parse("Zoë Ω").unwrap()].into(),
            channels: vec![Channel::parse("team-1/a:b").unwrap()].into(),
        };
        let channel_only = Audience::Targets {
            users: Vec::new().into(),
            channels: vec![Channel::parse("news").unwrap()].into(),
        };
        {
            let (mut store, loaded) =
                Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process).unwrap();
            assert!(loaded.events.is_empty());
            let events = [
                stamped(1, Audience::Everyone),
                stamped(2, targets.clone()),
                stamped(3, channel_only.clone()),
                stamped(4, Audience::Everyone),
            ];
            store
                .commit(&events.iter().collect::<Vec<_>>(), &[], &[], &[])
                .unwrap();
            store
                .commit(&[], &[("u:alice".into(), 50)], &[EventId::new(9, 4)], &[])
                .unwrap();
        }
        let (_, loaded) =
            Store::open(&scratch.0, EventId::new(77, 0), 0, 0, Durability::Process).unwrap();
        assert_eq!(loaded.floor, EventId::new(9, 0), "the first floor is kept");
        assert_eq!(loaded.revocations, [("u:alice".to_owned(), 50)]);
        assert_eq!(
            loaded.horizon,
            Some(EventId::new(9, 4)),
            "what was deleted counts as lost after a restart"
        );
        let ids: Vec<u64> = loaded.events.iter().map(|e| e.id.seq).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(loaded.events[0].event.audience, Audience::Everyone);
        assert_eq!(loaded.events[1].event.audience, targets);
        assert_eq!(loaded.events[2].event.audience, channel_only);
        assert_eq!(loaded.events[1].event.data, r#"{"seq":2}"#);
        assert_eq!(loaded.events[1].published_at, 1_002);
    }

    #[test]
    fn a_second_process_on_the_same_directory_is_refused() {
        let scratch = Scratch::new("locked");
        let (_first, _) =
            Store::open(&scratch.0, EventId::new(1, 0), 0, 0, Durability::Process).unwrap();
        match Store::open(&scratch.0, EventId::new(1, 0), 0, 0, Durability::Process) {
            Err(StoreError::Unusable(message)) => {
                assert!(message.contains("another process"), "{message}")
            }
            other => panic!(
                "expected the directory to be refused, got {:?}",
                other.err()
            ),
        }
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named() {
        let scratch = Scratch::new("file");
        std::fs::write(&scratch.0, b"not a directory").unwrap();
        let error = Store::open(
            &scratch.0.join("sub"),
            EventId::new(1, 0),
            0,
            0,
            Durability::Process,
        )
        .err()
        .expect("a path under a file cannot be a directory");
        assert!(
            matches!(&error, StoreError::Unusable(m) if m.contains("DATA_DIR") && m.contains("sub")),
            "{error:?}"
        );
        let _ = std::fs::remove_file(&scratch.0);
    }

    #[test]
    fn a_damaged_file_is_reported_not_read_past() {
        let scratch = Scratch::new("damaged");
        {
            let (mut store, _) =
                Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process).unwrap();
            let events: Vec<Stamped> = (1..=2000)
                .map(|seq| stamped(seq, Audience::Everyone))
                .collect();
            store
                .commit(&events.iter().collect::<Vec<_>>(), &[], &[], &[])
                .unwrap();
            store
                .connection
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let path = scratch.0.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle..middle + 4096] {
            *byte = 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();
        match Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process) {
            Err(StoreError::Damaged(message)) => {
                assert!(message.contains("herald.db"), "{message}");
                assert!(message.contains("move it aside"), "{message}");
            }
            Err(other) => panic!("expected damage to be reported, got {other:?}"),
            Ok((_, loaded)) => panic!("a damaged file was read as {} events", loaded.events.len()),
        }
    }

    #[test]
    fn each_start_begins_past_every_earlier_epoch_and_records_the_gap() {
        let scratch = Scratch::new("epochs");
        let first = {
            let (mut store, mut loaded) =
                Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process).unwrap();
            let epoch = store.begin_epoch(&mut loaded).unwrap();
            assert!(loaded.gaps.is_empty(), "a new store has lost nothing");
            let events: Vec<Stamped> = (1..=3)
                .map(|seq| Stamped {
                    id: EventId::new(epoch, seq),
                    ..stamped(seq, Audience::Everyone)
                })
                .collect();
            store
                .commit(&events.iter().collect::<Vec<_>>(), &[], &[], &[])
                .unwrap();
            epoch
        };
        let second = {
            let (mut store, mut loaded) =
                Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process).unwrap();
            let epoch = store.begin_epoch(&mut loaded).unwrap();
            assert!(epoch > first);
            assert_eq!(
                loaded.gaps,
                [(EventId::new(first, 3), EventId::new(epoch, 0))],
                "what the first process issued after its third event is not held"
            );
            // A clock set far forward once, then back: the recorded epoch wins.
            store
                .connection
                .execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
                    [(epoch + 10_000_000) as i64],
                )
                .unwrap();
            epoch
        };
        let (mut store, mut loaded) =
            Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Disk).unwrap();
        let third = store.begin_epoch(&mut loaded).unwrap();
        assert!(third > second + 10_000_000, "ids are never issued twice");
        assert_eq!(loaded.gaps.len(), 2);
    }

    #[test]
    fn the_syncer_checkpoints_what_the_writer_committed() {
        let scratch = Scratch::new("syncer");
        let (store, _) =
            Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process).unwrap();
        let database = scratch.0.join(FILE_NAME);
        let before = std::fs::metadata(&database).unwrap().len();
        let (delivered, delivered_rx) = mpsc::channel();
        let writer = Writer::spawn(
            store,
            Box::new(move |items| {
                let _ = delivered.send(items.len());
            }),
            Duration::from_millis(20),
        )
        .unwrap();
        let (reply, answer) = oneshot::channel();
        let events: Vec<Stamped> = (1..=200)
            .map(|seq| stamped(seq, Audience::Everyone))
            .collect();
        writer.append(Entry::Events(events, None), reply).unwrap();
        assert_eq!(answer.blocking_recv().unwrap(), Ok(()));
        assert_eq!(
            delivered_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            200
        );
        // The commit went to the WAL; only a checkpoint copies it into the
        // database file, and only the syncer checkpoints.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&database).unwrap().len() <= before {
            assert!(
                Instant::now() < deadline,
                "the database file never grew: no checkpoint ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(writer);
        // Once the writer is gone the lock is free and everything is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let loaded = loop {
            match Store::open(&scratch.0, EventId::new(9, 0), 0, 0, Durability::Process) {
                Ok((_, loaded)) => break loaded,
                Err(error) => {
                    assert!(Instant::now() < deadline, "still locked: {error}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        assert_eq!(loaded.events.len(), 200);
        assert!(
            !scratch.0.join(format!("{FILE_NAME}-wal")).exists()
                || std::fs::metadata(scratch.0.join(format!("{FILE_NAME}-wal")))
                    .unwrap()
                    .len()
                    == 0,
            "a clean stop leaves no WAL to replay"
        );
    }
}
