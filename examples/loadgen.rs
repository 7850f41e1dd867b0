//! `loadgen`: Herald's load generator and benchmark.
//!
//! It opens many authenticated SSE subscriptions over raw TCP sockets,
//! publishes events through `POST /api/send`, and prints one JSON report on
//! stdout: connections established and the connect rate, deliveries expected
//! and received (loss), deliveries per second, end-to-end latency, the
//! server's CPU time per delivery and resident memory per connection, and the
//! tool's own CPU use over the same windows, so a reader can tell when the
//! tool rather than the server was the limit. Progress goes to stderr.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example loadgen -- --server target/release/herald --scenario 1
//! ```
//!
//! With `--server`, the tool starts that binary for each run under
//! `taskset -c 0` (`--server-core`) with `PORT=0`, a benchmark `JWT_SECRET`
//! and `RUST_LOG=warn,herald=info` (extra settings with `--server-env KEY=VALUE`),
//! pins itself and its child processes to core 1 (`--tool-core`), and stops
//! the server at the end. Without `--server`, point it at a running server with
//! `--port` (and `--server-pid` for the CPU and memory figures); that server's
//! `JWT_SECRET` must be in the environment.
//!
//! | Scenario        | What it does |
//! |-----------------|--------------|
//! | `--scenario 1`  | 1,000 subscribers, 200 global events at 50/s: latency, server CPU per delivery |
//! | `--scenario 2`  | 10,000 subscribers, 200 global events as fast as `--publishers` (4) requests allow: throughput |
//! | `--scenario 3`  | 1,000 users with one stream each, 2,000 events each to one user, round robin |
//! | `--scenario 4`  | 10,000 idle streams (memory per connection); then, on a fresh server with `HEARTBEAT_INTERVAL=1`, 19,000 streams held for 5 s, checking every one keeps receiving heartbeats and none is dropped |
//! | `--scenario 5`  | connect rate of 10,000 streams, each with its own user and token (one JWT verification each) |
//! | `--scenario 6`  | per-user delivery: 1,000 users with one stream each, 20,000 events, one per publish request, each to one user round robin, from `--publishers` (4) keep-alive connections as fast as they go |
//! | `--scenario 7`  | 10,000 streams of one user (`u0`), all opened with one shared token allowed on every channel (`channels: ["*"]`) and no query string, on a Herald with `MAX_CONNECTIONS_PER_USER=20000` and `HEARTBEAT_INTERVAL=15`; 200 global `tick` events (`{"seq":N,"ts_us":T}`), one after another from one publisher, each request after the previous answer |
//!
//! Without `--scenario`, one custom run: for example
//! `--connections 2000 --events 100 --rate 20 --target users --heartbeat-watch 5`.
//! Every run is bounded by `--timeout` (120 s). `--scale 0.05` shrinks the
//! streams and events of every run, for a quick check (the figures then mean
//! little).
//!
//! # Against nchan
//!
//! `--against nchan` runs the same scenarios against nginx with the nchan
//! module (Debian: `apt-get install nginx-light libnginx-mod-nchan`), and
//! `--compare` runs scenarios 6 (on Herald's default durable store, and again
//! with `STORAGE=memory`), 1, 2, 7, 4a and 5 against Herald and then nchan, one
//! after the other in one invocation, and adds a Markdown table of the two
//! servers' figures side by side (`comparison_table` in the report, and last
//! on stderr):
//!
//! ```sh
//! cargo build --release && cargo build --release --example loadgen
//! target/release/examples/loadgen --against nchan --scenario 6
//! target/release/examples/loadgen --compare --server target/release/herald > compare.json
//! ```
//!
//! For each nchan run the tool writes `nginx.conf` into a fresh directory
//! (`$TMPDIR/herald-loadgen-nginx-<pid>-<time>`, its path on stderr, removed
//! after the run; the text is [`nchan::config`]) and starts
//! `taskset -c <--server-core> nginx -p <dir> -c <dir>/nginx.conf -e stderr
//! -g 'daemon off;'` (`--nginx`, `--nchan-module` choose other paths). The
//! configuration: one worker process, 21,000 worker connections and 20,000
//! files (nginx starts closing connections that wait for their request once
//! fewer than 1/16 of its connections are free, hence more connections than
//! files), `access_log off`, a free 127.0.0.1 port, keep-alive
//! connections for up to 1,000,000 requests; `/sub/<channel>` is an
//! `nchan_subscriber eventsource`, `/pub/<channel>` an `nchan_publisher`, and
//! `nchan_stub_status` answers on `/nchan_status`; nchan keeps 1,000 messages
//! per channel for 24 h (Herald's defaults), in 256 MiB of shared memory,
//! far more than any scenario stores. Streams of targeted runs (and the
//! runs without events) subscribe to their user's channel `u<index>`; those
//! of global runs to `bench` (scenario 7's too). Each event is one
//! `POST /pub/<channel>` with the same JSON data Herald's events carry, and
//! the header `X-EventSource-Event: bench` (scenario 7: `tick`), so streams
//! receive the same event name; an
//! answer of 201 or 202 counts as accepted, and its `active subscribers`
//! as the recipients. nchan sends no `connected` event: a stream counts as
//! established when its `200` response head arrives (nchan registers the
//! subscriber before it answers: an event published at once reaches it).
//! Its body is neither chunked nor sized; it runs until the connection
//! closes, which the de-chunker handles as well as chunked bodies. The
//! heartbeat watch of scenario 4b uses nchan's pings
//! (`nchan_eventsource_ping_interval`, whole seconds, with a comment line);
//! any run that sets Herald's `HEARTBEAT_INTERVAL` (4b, 7) pings nchan's
//! streams at that interval too.
//!
//! CPU and memory figures are the nginx *worker*'s, the child of the master
//! that the tool started; each run's `measured_process` says which process
//! was measured. What is not the same: nchan checks no token (Herald verifies
//! a JWT on every stream and every publish request); a stream of nchan
//! listens on one channel, while Herald's is both its user's and the
//! channel's; nchan's ids are its own (`<time>:<index>`); nchan keeps
//! messages in shared memory only, while Herald's default store writes every
//! event to SQLite (hence the `STORAGE=memory` line).
//!
//! # How it works
//!
//! The tool runs on one thread (a current-thread tokio runtime) per process.
//! Subscriptions live in child processes ("shards", the same executable
//! started with a hidden `--shard <plan>` argument), at most `--per-process`
//! connections each, because one process may hold at most 20,000 open files
//! and that limit cannot be raised. Each subscription binds its own source
//! address among 127.0.0.2 … 127.0.0.(1 + `--source-addresses`), so the
//! ephemeral ports of one address are never exhausted, writes its HTTP/1.1
//! request by hand, de-chunks the chunked body and parses SSE with
//! [`herald::sse::Parser`]. Connects are bounded to `--connect-concurrency`
//! in flight over all shards. Each connection is its own user (`u<index>`)
//! with its own token, allowed on the channel `bench` which it joins
//! (`GET /api/events?channel=bench`); in scenario 7 every connection is user
//! `u0` with one token shared by all, allowed on every channel (`*`), and
//! asks for `GET /api/events` with no query string (against nchan, see above).
//!
//! The parent process mints the admin token, starts the shards, tells them to
//! connect, publishes from `--publishers` keep-alive connections (a run may
//! fix its own number: scenario 7 uses one; each event's data carries its
//! sequence number and the Unix time it was sent, in nanoseconds as
//! `sent_ns`, or in microseconds as `ts_us` for scenario 7's `tick` events,
//! so receivers compute end-to-end latency), and merges the shards'
//! results. Against nchan, streams and publishers send no token. Parent and shards talk over pipes, one JSON line per message:
//! the parent writes `connect`, `mark` (start of a heartbeat window) and
//! `stop`; a shard answers `ready`, `connected`, `complete` (every connection
//! has all the events it expects) and `finished` (its figures).
//!
//! CPU figures are `utime + stime` from `/proc/<pid>/stat` (in clock ticks,
//! usually 10 ms) sampled at both ends of a window: the server's, and the
//! tool's own (parent and shards together). Next to them, each window reports
//! how busy the server's and the tool's cores were (`/proc/stat`): a core
//! busier than its process ran something else too (another program, or
//! interrupt work not charged to any process), which makes that run suspect.
//! On loopback the sender's CPU also pays for the receiver's TCP processing,
//! so the server's CPU per delivery includes some of the clients' kernel work.
//! Memory is the server's `VmRSS` before and after the connections are opened;
//! socket buffers live in the kernel and are not part of it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use herald::sse::{self, Frame};
use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::LocalSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

/// The channel every subscription joins; tokens allow exactly this one. Against
/// nchan, the channel global events are published to.
const CHANNEL: &str = "bench";
/// Where Debian's `libnginx-mod-nchan` installs the nchan module.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// nginx's per-worker connection limit in the configuration the tool writes.
/// Once fewer than 1/16 of its connections are free, nginx closes connections
/// still waiting for their request ("worker_connections are not enough,
/// reusing connections"): with 19,500, new streams were reset from about
/// 18,280 on. 21,000 keeps that point (about 19,690) above scenario 4b's
/// 19,000 streams, the publishers and the tool's own requests. It is above the
/// 20,000 files a process may hold (nginx warns so at start-up), which the
/// streams never reach.
const NGINX_WORKER_CONNECTIONS: usize = 21_000;
/// Open-file limit the nginx worker sets itself (`worker_rlimit_nofile`).
const NGINX_OPEN_FILES: usize = 20_000;
/// nchan's shared memory for channels and messages: far more than any
/// scenario stores (scenario 6 keeps 20,000 small messages in 1,000
/// channels), so no message is ever evicted for want of room.
const NCHAN_SHARED_MEMORY: &str = "256m";
/// Messages nchan keeps per channel, and for how long: Herald's defaults
/// (1,000 events per audience for 24 hours).
const NCHAN_BUFFER_LENGTH: usize = 1000;
const NCHAN_MESSAGE_TIMEOUT: &str = "24h";
/// Path of the `nchan_stub_status` location in the configuration the tool writes.
const NCHAN_STATUS_PATH: &str = "/nchan_status";
/// Secret for servers the tool starts itself (they only listen on loopback).
const DEFAULT_SECRET: &str = "loadgen-benchmark-secret-do-not-use-in-production";
/// Environment variable through which shards receive the signing secret,
/// so it never shows in a process list.
const SECRET_VARIABLE: &str = "LOADGEN_JWT_SECRET";
/// Token lifetime: longer than any run, so no stream ends with `token-expired`.
const TOKEN_TTL_SECS: u64 = 3600;
/// Longest one subscription may take from TCP connect to its `connected` event.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the last publish the tool waits for outstanding deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a started server may take to log the port it listens on.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped server may take to exit before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shards may take, past the run's deadline, to report and exit.
const SHARD_GRACE: Duration = Duration::from_secs(10);
/// Shared read buffer of a process: one read takes at most this much.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes handed to the SSE parser at a time. Its buffer keeps the capacity of
/// the largest piece it was fed, per connection, so pieces stay small.
const PARSER_FEED_BYTES: usize = 4 * 1024;
/// Longest HTTP response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

thread_local! {
    /// Every socket read of this thread lands here and is processed before the
    /// next await, so thousands of connections share one buffer.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER_BYTES]);
    /// The de-chunked body of the current read, shared the same way.
    static BODY_BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(READ_BUFFER_BYTES));
}

// ---------------------------------------------------------------------------
// Command line and scenarios
// ---------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Herald's load generator: SSE subscriptions, publishing, a JSON report"
)]
struct Cli {
    /// A named scenario, 1 to 7 (see the module documentation); without it, one custom run.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
    scenario: Option<u8>,
    /// The server measured: Herald, or nginx with the nchan module.
    #[arg(long, value_enum, default_value_t = Against::Herald)]
    against: Against,
    /// Run the comparison: scenarios 6, 1, 2, 7, 4a and 5 against Herald (given
    /// with --server) and nchan, one after the other, then print a Markdown table.
    #[arg(long, conflicts_with_all = ["scenario", "against", "port"], requires = "server")]
    compare: bool,
    /// Multiply the streams and events of every run by this (for instance
    /// 0.05 for a quick check of --compare or a scenario; figures then mean little).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The nginx binary started for runs against nchan.
    #[arg(long, value_name = "PATH", default_value = "nginx")]
    nginx: PathBuf,
    /// The nchan dynamic module nginx loads.
    #[arg(long, value_name = "PATH", default_value = NCHAN_MODULE)]
    nchan_module: PathBuf,
    /// Start this herald binary for each run, and stop it at the end (against
    /// nchan, the tool starts nginx itself and needs no --server).
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Port of an already running server on 127.0.0.1 (instead of --server).
    #[arg(long, conflicts_with = "server")]
    port: Option<u16>,
    /// PID of that running server, for its CPU and memory figures (against
    /// nchan: the nginx worker process).
    #[arg(long, requires = "port")]
    server_pid: Option<u32>,
    /// Core the started server is pinned to (taskset).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core the tool and its shards are pinned to.
    #[arg(long, default_value_t = 1)]
    tool_core: usize,
    /// Extra environment for the started server (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Custom run: streams to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Custom run: events to publish.
    #[arg(long, default_value_t = 0)]
    events: usize,
    /// Custom run: events per second; 0 publishes as fast as the publishers can.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Custom run: who each event is for.
    #[arg(long, value_enum, default_value_t = Target::Everyone)]
    target: Target,
    /// Custom run: seconds to watch heartbeats on every stream after connecting.
    #[arg(long)]
    heartbeat_watch: Option<f64>,
    /// The server's HEARTBEAT_INTERVAL in seconds (set on a started server; used
    /// to judge the heartbeat watch).
    #[arg(long)]
    heartbeat_interval: Option<f64>,
    /// Concurrent publish requests, each on its own keep-alive connection
    /// (scenario 7 always publishes from one).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Connection attempts in flight at once, over all shards.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Most streams one shard process holds (a process may hold 20,000 files).
    #[arg(long, default_value_t = 10_000)]
    per_process: usize,
    /// Source addresses to spread connections over: 127.0.0.2 onwards.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=250))]
    source_addresses: u8,
    /// Overall limit for each run, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Internal: run as a subscriber shard with this JSON plan.
    #[arg(long, hide = true)]
    shard: Option<String>,
}

/// `count` times `scale`, rounded, and at least 1 unless `count` is 0.
fn scaled(count: usize, scale: f64) -> usize {
    match count {
        0 => 0,
        _ => ((count as f64 * scale).round() as usize).max(1),
    }
}

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Against {
    Herald,
    /// nginx with the nchan module, one worker process.
    Nchan,
}

/// Who a published event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Target {
    /// Everyone: a global event, received by every stream.
    Everyone,
    /// One user per event, round robin over the users (one per stream).
    Users,
}

/// Who a run's streams are and what they ask Herald for (nchan's streams
/// carry no token and subscribe as [`nchan::channel`] says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Streams {
    /// Stream `i` is user `u<i>`, with its own token allowed on `bench` only,
    /// and asks for `GET /api/events?channel=bench`.
    OwnUser,
    /// Every stream is user `u0`, opened with one token shared by all and
    /// allowed on every channel (`channels: ["*"]`, no roles), and asks for
    /// `GET /api/events` with no query string.
    OneUserWildcard,
}

impl Streams {
    /// The user and the `channels` claim of stream `index`'s token.
    fn identity(self, index: usize) -> (String, &'static [&'static str]) {
        match self {
            Streams::OwnUser => (user_of(index), &[CHANNEL]),
            Streams::OneUserWildcard => (user_of(0), &["*"]),
        }
    }

    /// The path a stream requests from Herald.
    fn path(self) -> String {
        match self {
            Streams::OwnUser => format!("/api/events?channel={CHANNEL}"),
            Streams::OneUserWildcard => "/api/events".to_owned(),
        }
    }
}

/// What a run's events are called and what their data carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Payload {
    /// `bench` events with data `{"seq":N,"sent_ns":T}` (Unix nanoseconds).
    Bench,
    /// `tick` events with data `{"seq":N,"ts_us":T}` (Unix microseconds).
    Tick,
}

impl Payload {
    /// The event name published, and the only one receivers count as the run's.
    fn event_name(self) -> &'static str {
        match self {
            Payload::Bench => "bench",
            Payload::Tick => "tick",
        }
    }

    /// The data of event `seq`, sent at `now_ns` (Unix nanoseconds).
    fn stamp(self, seq: u64, now_ns: u64) -> Stamp {
        match self {
            Payload::Bench => Stamp {
                seq,
                sent_ns: Some(now_ns),
                ts_us: None,
            },
            Payload::Tick => Stamp {
                seq,
                sent_ns: None,
                ts_us: Some(now_ns / 1000),
            },
        }
    }
}

/// One run: a fresh server (when the tool starts it), N streams, M events.
#[derive(Clone, Debug)]
struct RunSpec {
    label: String,
    against: Against,
    /// Extra environment for a Herald the tool starts (`STORAGE=memory`).
    server_env: Vec<(String, String)>,
    connections: usize,
    events: usize,
    /// Events per second; `None` publishes as fast as the publishers can.
    rate: Option<f64>,
    target: Target,
    /// The server's HEARTBEAT_INTERVAL in seconds, when the run sets or knows it.
    heartbeat_interval: Option<f64>,
    /// Watch heartbeats on every stream for this long after connecting.
    heartbeat_watch: Option<Duration>,
    /// Who the streams are, and what they request.
    streams: Streams,
    /// The events' name and data.
    payload: Payload,
    /// Publishers for this run, whatever `--publishers` says; `None`: `--publishers`.
    publishers: Option<usize>,
}

impl RunSpec {
    fn new(label: &str, connections: usize, events: usize) -> Self {
        Self {
            label: label.to_owned(),
            against: Against::Herald,
            server_env: Vec::new(),
            connections,
            events,
            rate: None,
            target: Target::Everyone,
            heartbeat_interval: None,
            heartbeat_watch: None,
            streams: Streams::OwnUser,
            payload: Payload::Bench,
            publishers: None,
        }
    }
}

fn scenario_runs(number: u8, heartbeat_interval: Option<f64>) -> Vec<RunSpec> {
    match number {
        1 => vec![RunSpec {
            rate: Some(50.0),
            ..RunSpec::new(
                "scenario 1: 1,000 subscribers, 200 global events at 50/s",
                1_000,
                200,
            )
        }],
        2 => vec![RunSpec::new(
            "scenario 2: 10,000 subscribers, 200 global events as fast as possible",
            10_000,
            200,
        )],
        3 => vec![RunSpec {
            target: Target::Users,
            ..RunSpec::new(
                "scenario 3: 1,000 users, 2,000 events each to one user (round robin)",
                1_000,
                2_000,
            )
        }],
        // Streams that receive no event are still each their own user: against
        // nchan each subscribes to its user's channel, as a targeted run's do.
        4 => vec![
            RunSpec {
                target: Target::Users,
                ..RunSpec::new("scenario 4a: 10,000 idle streams", 10_000, 0)
            },
            RunSpec {
                target: Target::Users,
                heartbeat_interval: Some(heartbeat_interval.unwrap_or(1.0)),
                heartbeat_watch: Some(Duration::from_secs(5)),
                ..RunSpec::new(
                    "scenario 4b: 19,000 streams held with heartbeats",
                    19_000,
                    0,
                )
            },
        ],
        5 => vec![RunSpec {
            target: Target::Users,
            ..RunSpec::new(
                "scenario 5: connect rate, 10,000 streams with their own token",
                10_000,
                0,
            )
        }],
        6 => vec![RunSpec {
            target: Target::Users,
            ..RunSpec::new(
                "scenario 6: per-user delivery, 1,000 users, 20,000 events one per request (round robin)",
                1_000,
                20_000,
            )
        }],
        // 7 (the command line allows 1 to 7). The fan-out of scenario 2, but
        // every stream is one user's, on a token allowed on every channel and
        // asking for none, and one publisher sends each event after the
        // previous answer. HEARTBEAT_INTERVAL reaches the server as scenario
        // 4b's does (from `heartbeat_interval`, which also pings nchan's streams).
        _ => vec![RunSpec {
            server_env: vec![("MAX_CONNECTIONS_PER_USER".into(), "20000".into())],
            heartbeat_interval: Some(heartbeat_interval.unwrap_or(15.0)),
            streams: Streams::OneUserWildcard,
            payload: Payload::Tick,
            publishers: Some(1),
            ..RunSpec::new(
                "scenario 7: 10,000 streams of one user, 200 global events one after another",
                10_000,
                200,
            )
        }],
    }
}

/// The workloads `--compare` measures, each against Herald and nchan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Workload {
    /// Scenario 6 on Herald's default durable store.
    PerUser,
    /// Scenario 6 with `STORAGE=memory` (Herald only; compared with the same nchan run).
    PerUserMemory,
    /// Scenario 1.
    FanOut1k,
    /// Scenario 2.
    FanOut10k,
    /// Scenario 7.
    FanOut10kOneUser,
    /// Scenario 4a.
    Idle,
    /// Scenario 5.
    Connect,
}

/// The runs of `--compare`, in order: each workload on Herald, then on nchan.
fn comparison_runs() -> Vec<(Workload, RunSpec)> {
    let first = |number: u8| scenario_runs(number, None).swap_remove(0);
    let mut runs = Vec::new();
    for (workload, spec) in [
        (Workload::PerUser, first(6)),
        (Workload::PerUserMemory, first(6)),
        (Workload::FanOut1k, first(1)),
        (Workload::FanOut10k, first(2)),
        (Workload::FanOut10kOneUser, first(7)),
        (Workload::Idle, first(4)),
        (Workload::Connect, first(5)),
    ] {
        if workload == Workload::PerUserMemory {
            runs.push((
                workload,
                RunSpec {
                    label: format!("{} (Herald, STORAGE=memory)", spec.label),
                    server_env: vec![("STORAGE".into(), "memory".into())],
                    ..spec
                },
            ));
            continue;
        }
        for against in [Against::Herald, Against::Nchan] {
            runs.push((
                workload,
                RunSpec {
                    label: format!("{} ({})", spec.label, against.name()),
                    against,
                    ..spec.clone()
                },
            ));
        }
    }
    runs
}

impl Against {
    fn name(self) -> &'static str {
        match self {
            Against::Herald => "Herald",
            Against::Nchan => "nchan",
        }
    }
}

/// Where the server comes from.
#[derive(Clone)]
enum ServerTarget {
    /// A Herald started by the tool for each run.
    Spawn {
        binary: PathBuf,
        core: usize,
        env: Vec<(String, String)>,
    },
    /// nginx with nchan, started by the tool for each run with a configuration
    /// it writes.
    Nginx {
        nginx: PathBuf,
        module: PathBuf,
        core: usize,
    },
    /// Already running (for nchan, `pid` is its worker process).
    External { port: u16, pid: Option<u32> },
}

/// Settings shared by every run.
struct Options {
    /// The Herald runs use; `None` when no run is against Herald.
    herald: Option<ServerTarget>,
    /// The nchan runs use; `None` when no run is against nchan.
    nchan: Option<ServerTarget>,
    secret: String,
    publishers: usize,
    connect_concurrency: usize,
    per_process: usize,
    source_addresses: u8,
    /// The cores whose busy time each CPU window reports.
    server_core: usize,
    tool_core: usize,
    timeout: Duration,
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.shard.as_deref() {
        Some(plan) => shard::run(plan),
        None => orchestrate(&cli),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

fn orchestrate(cli: &Cli) -> Result<(), String> {
    // Pinned before any thread or child exists, so all of them inherit it.
    system::pin_to_core(cli.tool_core)?;
    let open_files = system::raise_open_file_limit()?;
    if cli.scale.is_nan() || cli.scale <= 0.0 {
        return Err(format!("--scale {} is not above 0", cli.scale));
    }
    let herald_runs = cli.compare || cli.against == Against::Herald;
    let nchan_runs = cli.compare || cli.against == Against::Nchan;
    let secret = match (&cli.server, herald_runs) {
        (None, true) => std::env::var("JWT_SECRET").map_err(|_| {
            "without --server, JWT_SECRET must hold the running server's secret".to_owned()
        })?,
        _ => DEFAULT_SECRET.to_owned(),
    };
    let nchan = match cli.port {
        _ if !nchan_runs => None,
        Some(port) if !cli.compare => Some(ServerTarget::External {
            port,
            pid: cli.server_pid,
        }),
        _ => Some(ServerTarget::Nginx {
            nginx: cli.nginx.clone(),
            module: cli.nchan_module.clone(),
            core: cli.server_core,
        }),
    };
    let herald = match (&cli.server, cli.port) {
        _ if !herald_runs => None,
        (Some(binary), _) => {
            let mut env = Vec::new();
            for pair in &cli.server_env {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--server-env {pair:?} is not KEY=VALUE"))?;
                env.push((key.to_owned(), value.to_owned()));
            }
            Some(ServerTarget::Spawn {
                binary: binary.clone(),
                core: cli.server_core,
                env,
            })
        }
        (None, Some(port)) => Some(ServerTarget::External {
            port,
            pid: cli.server_pid,
        }),
        (None, None) => return Err("give --server PATH, or --port of a running server".into()),
    };
    let options = Options {
        herald,
        nchan,
        secret,
        publishers: cli.publishers.max(1),
        connect_concurrency: cli.connect_concurrency.max(1),
        // Keep room below the limit for the shard's own files (pipes, stdio).
        per_process: cli
            .per_process
            .clamp(1, (open_files as usize).saturating_sub(256).max(1)),
        source_addresses: cli.source_addresses,
        server_core: cli.server_core,
        tool_core: cli.tool_core,
        timeout: Duration::from_secs(cli.timeout),
    };
    let runs: Vec<(Option<Workload>, RunSpec)> = match cli.scenario {
        _ if cli.compare => comparison_runs()
            .into_iter()
            .map(|(workload, spec)| (Some(workload), spec))
            .collect(),
        Some(number) => scenario_runs(number, cli.heartbeat_interval)
            .into_iter()
            .map(|spec| (None, spec))
            .collect(),
        None => vec![(
            None,
            RunSpec {
                rate: (cli.rate > 0.0).then_some(cli.rate),
                target: cli.target,
                heartbeat_interval: cli.heartbeat_interval,
                heartbeat_watch: cli.heartbeat_watch.map(Duration::from_secs_f64),
                ..RunSpec::new("custom run", cli.connections, cli.events)
            },
        )],
    };
    let runs: Vec<(Option<Workload>, RunSpec)> = runs
        .into_iter()
        .map(|(workload, spec)| {
            let against = if cli.compare {
                spec.against
            } else {
                cli.against
            };
            let mut label = match (cli.compare, against) {
                (false, Against::Nchan) => format!("{} (nchan)", spec.label),
                _ => spec.label.clone(),
            };
            if cli.scale != 1.0 {
                label.push_str(&format!(", scaled by {}", cli.scale));
            }
            (
                workload,
                RunSpec {
                    label,
                    against,
                    connections: scaled(spec.connections, cli.scale),
                    events: scaled(spec.events, cli.scale),
                    ..spec
                },
            )
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let local = LocalSet::new();
    let mut runs_done = Vec::new();
    let mut compared = Vec::new();
    let mut failures = 0;
    for (workload, spec) in &runs {
        eprintln!("loadgen: {}", spec.label);
        // On SIGINT or SIGTERM the run is dropped, which stops its server and
        // shards (their guards kill by PID), and no further run starts.
        let (outcome, interrupted) = local.block_on(&runtime, async {
            tokio::select! {
                outcome = orchestrator::run(spec, &options) => (outcome, false),
                signal = system::termination() => (Err(format!("interrupted by {signal}")), true),
            }
        });
        if let Some(workload) = workload {
            let figures = outcome.as_ref().ok().map(orchestrator::RunReport::figures);
            compared.push((*workload, spec.against, figures));
        }
        match outcome {
            Ok(report) => runs_done.push(RunOutcome::Done(Box::new(report))),
            Err(error) => {
                eprintln!("loadgen: {}: {error}", spec.label);
                failures += 1;
                runs_done.push(RunOutcome::Failed {
                    label: spec.label.clone(),
                    error,
                });
            }
        }
        if interrupted {
            break;
        }
    }
    let table = cli.compare.then(|| {
        let mut table = comparison_table(&compared);
        if cli.scale != 1.0 {
            table.push_str(&format!(
                "\nEvery run was scaled by {}: the workloads are smaller than named.\n",
                cli.scale
            ));
        }
        table
    });
    let report = Report {
        scenario: cli.scenario,
        against: (!cli.compare).then_some(cli.against),
        comparison_table: table.clone(),
        tool_core: cli.tool_core,
        tool_open_file_limit: open_files,
        connect_concurrency: options.connect_concurrency,
        publishers: options.publishers,
        runs: runs_done,
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    writeln!(io::stdout().lock(), "{text}").map_err(|e| format!("writing the report: {e}"))?;
    if let Some(table) = table {
        // Last on stderr, after the progress lines, for whoever watches the run;
        // the same text is `comparison_table` in the report.
        eprintln!("\n{table}");
    }
    match failures {
        0 => Ok(()),
        n => Err(format!("{n} run(s) failed; see \"error\" in the report")),
    }
}

/// What the tool prints on stdout.
#[derive(Serialize)]
struct Report {
    scenario: Option<u8>,
    /// The server measured; `null` with `--compare`, whose runs say it each.
    against: Option<Against>,
    /// With `--compare`: the Markdown table of Herald's and nchan's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison_table: Option<String>,
    tool_core: usize,
    tool_open_file_limit: u64,
    connect_concurrency: usize,
    publishers: usize,
    runs: Vec<RunOutcome>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum RunOutcome {
    Done(Box<orchestrator::RunReport>),
    Failed { label: String, error: String },
}

/// The figures of one run that the comparison table shows.
#[derive(Clone, Debug, Default, PartialEq)]
struct Figures {
    deliveries_per_sec: Option<f64>,
    cpu_us_per_delivery: Option<f64>,
    p99_ms: Option<f64>,
    bytes_per_connection: Option<f64>,
    connect_rate_per_sec: Option<f64>,
    /// Deliveries expected and lost (zero without events).
    expected: u64,
    lost: u64,
    /// Streams that failed to connect, or ended before the run did.
    failed_streams: usize,
    dropped_streams: usize,
}

/// One figure of a table row, taken from a run's [`Figures`].
type Pick = fn(&Figures) -> Option<f64>;

/// The Markdown table `--compare` prints: for each workload, Herald's figure,
/// nchan's, and their ratio. `runs` holds each comparison run's workload,
/// server and figures (`None` when the run failed).
fn comparison_table(runs: &[(Workload, Against, Option<Figures>)]) -> String {
    let find = |workload: Workload, against: Against| {
        // The STORAGE=memory line compares with the one nchan run of scenario 6.
        let workload = match (workload, against) {
            (Workload::PerUserMemory, Against::Nchan) => Workload::PerUser,
            _ => workload,
        };
        runs.iter()
            .find(|(w, a, _)| *w == workload && *a == against)
            .map(|(_, _, figures)| figures.as_ref())
    };
    let rows: [(Workload, &str, Pick, usize); 11] = [
        (
            Workload::PerUser,
            "per-user delivery, 1,000 users, 20,000 events: events/s",
            |f| f.deliveries_per_sec,
            0,
        ),
        (
            Workload::PerUser,
            "per-user delivery: server CPU µs/event",
            |f| f.cpu_us_per_delivery,
            2,
        ),
        (
            Workload::PerUserMemory,
            "per-user delivery, Herald `STORAGE=memory`: events/s",
            |f| f.deliveries_per_sec,
            0,
        ),
        (
            Workload::PerUserMemory,
            "per-user delivery, Herald `STORAGE=memory`: server CPU µs/event",
            |f| f.cpu_us_per_delivery,
            2,
        ),
        (
            Workload::FanOut1k,
            "fan-out, 1,000 streams, 50 events/s: server CPU µs/delivery",
            |f| f.cpu_us_per_delivery,
            2,
        ),
        (
            Workload::FanOut1k,
            "fan-out, 1,000 streams, 50 events/s: latency p99 ms",
            |f| f.p99_ms,
            2,
        ),
        (
            Workload::FanOut10k,
            "fan-out, 10,000 streams, as fast as possible: deliveries/s",
            |f| f.deliveries_per_sec,
            0,
        ),
        (
            Workload::FanOut10kOneUser,
            "fan-out, 10,000 streams of one user, 200 global events one after another: deliveries/s",
            |f| f.deliveries_per_sec,
            0,
        ),
        (
            Workload::FanOut10kOneUser,
            "fan-out, 10,000 streams of one user: server CPU µs/delivery",
            |f| f.cpu_us_per_delivery,
            2,
        ),
        (
            Workload::Idle,
            "10,000 idle streams: KiB resident per connection",
            |f| f.bytes_per_connection.map(|bytes| bytes / 1024.0),
            1,
        ),
        (
            Workload::Connect,
            "connect rate, 10,000 streams: streams/s",
            |f| f.connect_rate_per_sec,
            0,
        ),
    ];
    let mut table =
        String::from("| workload | Herald | nchan | Herald / nchan |\n| --- | --- | --- | --- |\n");
    for (workload, name, pick, decimals) in rows {
        let value = |against| match find(workload, against) {
            None => (None, "—".to_owned()),
            Some(None) => (None, "run failed".to_owned()),
            Some(Some(figures)) => match pick(figures) {
                Some(value) => (Some(value), format_figure(value, decimals)),
                None => (None, "—".to_owned()),
            },
        };
        let ((herald, herald_text), (nchan, nchan_text)) =
            (value(Against::Herald), value(Against::Nchan));
        let ratio = match herald.zip(nchan) {
            Some((herald, nchan)) if nchan != 0.0 => format!("{:.2}", herald / nchan),
            _ => "—".to_owned(),
        };
        table.push_str(&format!(
            "| {name} | {herald_text} | {nchan_text} | {ratio} |\n"
        ));
    }
    // Loss, for every run: lost of expected deliveries, and streams that
    // failed to connect or were dropped.
    let loss = |against| {
        let mut lost = 0;
        let mut expected = 0;
        let mut streams = 0;
        let mut failed_runs = 0;
        for (_, _, figures) in runs.iter().filter(|(_, a, _)| *a == against) {
            match figures {
                Some(f) => {
                    lost += f.lost;
                    expected += f.expected;
                    streams += f.failed_streams + f.dropped_streams;
                }
                None => failed_runs += 1,
            }
        }
        let mut text = format!(
            "{} of {} lost; {} stream(s) failed or dropped",
            format_figure(lost as f64, 0),
            format_figure(expected as f64, 0),
            streams
        );
        if failed_runs > 0 {
            text.push_str(&format!("; {failed_runs} run(s) failed"));
        }
        text
    };
    table.push_str(&format!(
        "| loss, all runs above | {} | {} | — |\n",
        loss(Against::Herald),
        loss(Against::Nchan)
    ));
    table
}

/// `1234567.8` with 0 decimals as `1,234,568`.
fn format_figure(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if value < 0.0 && text.chars().any(|c| c != '0' && c != '.') {
        "-"
    } else {
        ""
    };
    match fraction {
        "" => format!("{sign}{grouped}"),
        fraction => format!("{sign}{grouped}.{fraction}"),
    }
}

// ---------------------------------------------------------------------------
// Small shared pieces
// ---------------------------------------------------------------------------

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The claims Herald reads from a token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    roles: &'a [&'a str],
    channels: &'a [&'a str],
}

/// An HS256 token for `user`, allowed on `channels`; admins may publish and
/// read stats.
fn mint_token(secret: &str, user: &str, admin: bool, channels: &[&str]) -> Result<String, String> {
    let claims = Claims {
        sub: user,
        exp: unix_nanos() / 1_000_000_000 + TOKEN_TTL_SECS,
        roles: if admin { &["admin"] } else { &[] },
        channels,
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign a token: {e}"))
}

/// The user of the stream with this index in the run.
fn user_of(index: usize) -> String {
    format!("u{index}")
}

/// 127.0.0.2, 127.0.0.3, … in turn: each address has its own ephemeral ports.
fn source_address(index: usize, count: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % usize::from(count.max(1))) as u8)
}

/// How many events the stream with this index should receive.
fn expected_events(target: Target, events: usize, users: usize, index: usize) -> u64 {
    match target {
        Target::Everyone => events as u64,
        // Event `seq` goes to user `seq % users`.
        Target::Users if users == 0 => 0,
        Target::Users => (events / users + usize::from(index < events % users)) as u64,
    }
}

/// What a published event's data carries: its sequence number and when the
/// publish request was written, in one of two units (see [`Payload`]):
/// `{"seq":N,"sent_ns":T}` or `{"seq":N,"ts_us":T}`. Receivers accept either.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    seq: u64,
    /// In Unix nanoseconds (`bench` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_ns: Option<u64>,
    /// In Unix microseconds (`tick` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts_us: Option<u64>,
}

impl Stamp {
    /// When the event was sent, in Unix nanoseconds, from whichever field
    /// carries it; `None` when neither does (the data is malformed).
    fn sent_at_ns(&self) -> Option<u64> {
        self.sent_ns
            .or_else(|| self.ts_us.map(|micros| micros.saturating_mul(1000)))
    }
}

/// What a frame a stream received is to its run.
#[derive(Debug, PartialEq, Eq)]
enum Reading {
    /// One of the run's events: its sequence number, and when it was sent
    /// (Unix nanoseconds).
    Event { seq: u64, sent_ns: u64 },
    /// An event of the run's name whose data is unreadable or carries no time.
    Malformed,
    /// An event of another name (`token-expired`, …).
    Other,
}

/// Reads `frame` as an event of a run whose events are `payload`'s.
fn read_frame(payload: Payload, frame: &Frame) -> Reading {
    if frame.event != payload.event_name() {
        return Reading::Other;
    }
    serde_json::from_str::<Stamp>(&frame.data)
        .ok()
        .and_then(|stamp| {
            Some(Reading::Event {
                seq: stamp.seq,
                sent_ns: stamp.sent_at_ns()?,
            })
        })
        .unwrap_or(Reading::Malformed)
}

/// Latencies in microseconds, in log-linear buckets (under 1 % error), that
/// merge across processes.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

/// Serialized form of a [`Histogram`]: only the buckets that hold something.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HistogramData {
    buckets: Vec<(usize, u64)>,
    max: u64,
}

/// Values below this are exact; above, each power of two has this many buckets.
const SUB_BUCKETS: u64 = 128;
const SUB_BUCKET_BITS: u32 = 7;

impl Histogram {
    fn bucket_of(value: u64) -> usize {
        if value < SUB_BUCKETS {
            return value as usize;
        }
        let shift = 63 - value.leading_zeros() - SUB_BUCKET_BITS;
        let mantissa = value >> shift;
        (SUB_BUCKETS + u64::from(shift) * SUB_BUCKETS + mantissa - SUB_BUCKETS) as usize
    }

    /// The largest value that falls in bucket `index`.
    fn bucket_high(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let shift = (index - SUB_BUCKETS) / SUB_BUCKETS;
        let mantissa = (index - SUB_BUCKETS) % SUB_BUCKETS + SUB_BUCKETS;
        ((mantissa + 1) << shift) - 1
    }

    fn record(&mut self, value: u64) {
        let bucket = Self::bucket_of(value);
        if bucket >= self.buckets.len() {
            self.buckets.resize(bucket + 1, 0);
        }
        self.buckets[bucket] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    /// The value at quantile `q` (0..=1), rounded up to its bucket's top.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::bucket_high(index).min(self.max);
            }
        }
        self.max
    }

    fn to_data(&self) -> HistogramData {
        HistogramData {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(index, count)| (index, *count))
                .collect(),
            max: self.max,
        }
    }

    fn merge(&mut self, data: &HistogramData) {
        for &(index, count) in &data.buckets {
            if index >= self.buckets.len() {
                self.buckets.resize(index + 1, 0);
            }
            self.buckets[index] += count;
            self.count += count;
        }
        self.max = self.max.max(data.max);
    }
}

/// Rounds for the report: figures with three significant decimals are plenty.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

// ---------------------------------------------------------------------------
// The process: affinity, limits, /proc figures
// ---------------------------------------------------------------------------

mod system {
    use std::fs;

    /// Pins the calling thread, and every thread and process it starts later, to `core`.
    pub fn pin_to_core(core: usize) -> Result<(), String> {
        // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks `core`
        // against the set's size, and sched_setaffinity only reads the set.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if result != 0 {
            return Err(format!(
                "cannot pin the tool to core {core}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Raises the soft open-file limit to the hard one; returns the limit now in force.
    pub fn raise_open_file_limit() -> Result<u64, String> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: both calls only read or write the rlimit struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
            }
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(limit.rlim_cur)
    }

    /// Resolves on SIGINT or SIGTERM with the signal's name; never, if the
    /// handlers cannot be installed (the run's timeout still ends it).
    pub async fn termination() -> &'static str {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            _ => std::future::pending().await,
        }
    }

    /// Clock ticks per second, the unit of /proc CPU times.
    pub fn ticks_per_second() -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as f64
        } else {
            100.0
        }
    }

    /// User plus system CPU time of a process (all its threads), in clock ticks.
    /// `pid` may be `self`.
    pub fn cpu_ticks(pid: &str) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after it do not.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // After the name come field 3 (state) onwards: utime is field 14, stime 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Busy and total clock ticks of one core since boot, from /proc/stat.
    pub fn core_ticks(core: usize) -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let prefix = format!("cpu{core} ");
        let line = stat.lines().find(|line| line.starts_with(&prefix))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Some((total - idle, total))
    }

    /// The processes whose parent is `pid` (an nginx master's workers).
    pub fn children(pid: u32) -> Vec<u32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&child| {
                fs::read_to_string(format!("/proc/{child}/stat"))
                    .ok()
                    .and_then(|stat| parent_of(&stat))
                    == Some(pid)
            })
            .collect()
    }

    /// The parent PID in the text of `/proc/<pid>/stat`.
    pub fn parent_of(stat: &str) -> Option<u32> {
        // After the name come field 3 (state), then field 4 (ppid).
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Resident memory of a process, in KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 by hand: reads, writes, response heads, chunked bodies
// ---------------------------------------------------------------------------

mod wire {
    use super::*;

    /// Waits until `stream` is readable, reads once into the thread's shared
    /// buffer and hands the bytes to `use_bytes` (empty at end of stream).
    pub async fn read_with<R>(
        stream: &TcpStream,
        use_bytes: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let mut use_bytes = Some(use_bytes);
        loop {
            stream.readable().await?;
            let outcome = READ_BUFFER.with(|buffer| {
                let mut buffer = buffer.borrow_mut();
                match stream.try_read(&mut buffer) {
                    Ok(read) => Ok(use_bytes.take().map(|use_bytes| use_bytes(&buffer[..read]))),
                    // Readiness was stale; wait again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
            if let Some(result) = outcome {
                return Ok(result);
            }
        }
    }

    pub async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What the tool needs from a response head.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Head {
        pub status: u16,
        pub content_length: Option<usize>,
        pub chunked: bool,
        /// `Connection: close`: the server closes the connection after this response.
        pub close: bool,
    }

    pub fn parse_head(head: &[u8]) -> Result<Head, String> {
        let text = std::str::from_utf8(head).map_err(|_| "the response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut parsed = Head {
            status,
            content_length: None,
            chunked: false,
            close: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                parsed.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                parsed.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                parsed.close = value.eq_ignore_ascii_case("close");
            }
        }
        Ok(parsed)
    }

    /// Reads a response head; returns it and the body bytes read past it.
    pub async fn read_head(stream: &TcpStream) -> Result<(Head, Vec<u8>), String> {
        let mut received = Vec::new();
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse_head(&received[..end])?;
                return Ok((head, received.split_off(end + 4)));
            }
            if received.len() > MAX_HEAD_BYTES {
                return Err("the response head is too long".into());
            }
            let read = read_with(stream, |bytes| {
                received.extend_from_slice(bytes);
                bytes.len()
            })
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
            if read == 0 {
                return Err("the server closed the connection before answering".into());
            }
        }
    }

    /// Reads the rest of a body framed by Content-Length or chunked encoding.
    pub async fn read_body(
        stream: &TcpStream,
        head: &Head,
        already: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if head.chunked {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            let mut done = decoder.decode(&already, &mut body)?;
            while !done {
                done = read_with(stream, |bytes| {
                    if bytes.is_empty() {
                        return Err("the connection closed inside a chunked body".to_owned());
                    }
                    decoder.decode(bytes, &mut body)
                })
                .await
                .map_err(|e| format!("reading the body: {e}"))??;
            }
            return Ok(body);
        }
        let length = head
            .content_length
            .ok_or("the response has neither Content-Length nor chunked encoding")?;
        let mut body = already;
        while body.len() < length {
            let read = read_with(stream, |bytes| {
                body.extend_from_slice(bytes);
                bytes.len()
            })
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
            if read == 0 {
                return Err("the connection closed inside the body".into());
            }
        }
        body.truncate(length);
        Ok(body)
    }

    /// Where a chunked decoder is in the body.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum ChunkState {
        /// Reading a hexadecimal size line (extensions after `;` are skipped).
        Size {
            value: usize,
            digits: u8,
            extension: bool,
        },
        /// Inside a chunk's data.
        Data {
            remaining: usize,
        },
        /// The CR, then the LF, that close a chunk's data.
        DataCr,
        DataLf,
        /// After the last (empty) chunk: trailer lines until a blank one.
        Trailer {
            line_empty: bool,
        },
        /// The body has ended.
        Done,
    }

    const SIZE_START: ChunkState = ChunkState::Size {
        value: 0,
        digits: 0,
        extension: false,
    };

    /// Incremental decoder of HTTP/1.1 chunked transfer encoding.
    #[derive(Debug)]
    pub struct ChunkedDecoder {
        state: ChunkState,
    }

    impl Default for ChunkedDecoder {
        fn default() -> Self {
            Self { state: SIZE_START }
        }
    }

    impl ChunkedDecoder {
        /// Appends the data carried by `input` to `out`; true once the body has ended.
        pub fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
            while !input.is_empty() && self.state != ChunkState::Done {
                if let ChunkState::Data { remaining } = self.state {
                    let take = remaining.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = match remaining - take {
                        0 => ChunkState::DataCr,
                        remaining => ChunkState::Data { remaining },
                    };
                } else {
                    self.state = Self::step(self.state, input[0])?;
                    input = &input[1..];
                }
            }
            Ok(self.state == ChunkState::Done)
        }

        fn step(state: ChunkState, byte: u8) -> Result<ChunkState, String> {
            use ChunkState::*;
            Ok(match state {
                Size {
                    value,
                    digits,
                    extension,
                } => match byte {
                    b'\n' if digits == 0 => return Err("a chunk size line is empty".into()),
                    b'\n' if value == 0 => Trailer { line_empty: true },
                    b'\n' => Data { remaining: value },
                    b'\r' => state,
                    b';' => Size {
                        value,
                        digits,
                        extension: true,
                    },
                    _ if extension => state,
                    _ => {
                        let digit = char::from(byte)
                            .to_digit(16)
                            .ok_or_else(|| format!("bad byte {byte:#04x} in a chunk size"))?;
                        if digits >= 12 {
                            return Err("a chunk size is too large".into());
                        }
                        Size {
                            value: value * 16 + digit as usize,
                            digits: digits + 1,
                            extension,
                        }
                    }
                },
                DataCr if byte == b'\r' => DataLf,
                DataLf if byte == b'\n' => SIZE_START,
                DataCr | DataLf => return Err("a chunk does not end with CRLF".into()),
                Trailer { line_empty } => match byte {
                    b'\r' => state,
                    b'\n' if line_empty => Done,
                    b'\n' => Trailer { line_empty: true },
                    _ => Trailer { line_empty: false },
                },
                // `decode` handles data itself and stops at the end.
                Data { .. } | Done => state,
            })
        }
    }

    /// How a streamed response body is framed: Herald chunks its SSE streams;
    /// nchan's may come chunked, with a length, or (HTTP/1.1 without either)
    /// running until the connection closes.
    #[derive(Debug)]
    pub enum BodyDecoder {
        Chunked(ChunkedDecoder),
        Length { remaining: usize },
        UntilClose,
    }

    impl BodyDecoder {
        pub fn for_head(head: &Head) -> Self {
            match (head.chunked, head.content_length) {
                (true, _) => Self::Chunked(ChunkedDecoder::default()),
                (false, Some(length)) => Self::Length { remaining: length },
                (false, None) => Self::UntilClose,
            }
        }

        /// Appends the body bytes in `input` to `out`; true once the body has
        /// ended (never for a body that runs until the connection closes).
        pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
            match self {
                Self::Chunked(decoder) => decoder.decode(input, out),
                Self::Length { remaining } => {
                    let take = (*remaining).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    *remaining -= take;
                    Ok(*remaining == 0)
                }
                Self::UntilClose => {
                    out.extend_from_slice(input);
                    Ok(false)
                }
            }
        }
    }

    /// A response to a request on an [`HttpConnection`].
    pub struct Response {
        pub status: u16,
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body, shortened for an error message.
        pub fn excerpt(&self) -> String {
            String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
        }
    }

    /// A keep-alive HTTP/1.1 client connection to the server, one request at a
    /// time; opened again when the server answered with `Connection: close`.
    pub struct HttpConnection {
        stream: Option<TcpStream>,
        address: SocketAddr,
        host: String,
    }

    impl HttpConnection {
        pub async fn open(port: u16) -> Result<Self, String> {
            let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let mut connection = Self {
                stream: None,
                address,
                host: address.to_string(),
            };
            connection.stream = Some(connection.connect().await?);
            Ok(connection)
        }

        async fn connect(&self) -> Result<TcpStream, String> {
            let stream = TcpStream::connect(self.address)
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.address))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            Ok(stream)
        }

        /// Sends one request with these extra header lines (`Name: value`) and
        /// a body of the given content type, and reads its whole response.
        pub async fn request(
            &mut self,
            method: &str,
            path: &str,
            headers: &[String],
            body: Option<(&str, &[u8])>,
        ) -> Result<Response, String> {
            let stream = match self.stream.take() {
                Some(stream) => stream,
                None => self.connect().await?,
            };
            let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
            for header in headers {
                request.push_str(header);
                request.push_str("\r\n");
            }
            if let Some((content_type, body)) = body {
                request.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    body.len()
                ));
            }
            request.push_str("\r\n");
            let mut bytes = request.into_bytes();
            bytes.extend_from_slice(body.map_or(&[][..], |(_, body)| body));
            write_all(&stream, &bytes)
                .await
                .map_err(|e| format!("sending {method} {path}: {e}"))?;
            let (head, rest) = read_head(&stream).await?;
            let body = read_body(&stream, &head, rest).await?;
            if !head.close {
                self.stream = Some(stream);
            }
            Ok(Response {
                status: head.status,
                body,
            })
        }
    }

    /// The header that authenticates a request to Herald.
    pub fn bearer(token: &str) -> String {
        format!("Authorization: Bearer {token}")
    }

    /// `GET /api/stats` on a fresh connection (a kept one may have timed out).
    pub async fn server_stats(port: u16, admin_token: &str) -> Result<Value, String> {
        let mut connection = HttpConnection::open(port).await?;
        let response = connection
            .request("GET", "/api/stats", &[bearer(admin_token)], None)
            .await?;
        if response.status != 200 {
            return Err(format!(
                "GET /api/stats answered {}: {}",
                response.status,
                response.excerpt()
            ));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("GET /api/stats: {e}"))
    }
}

use wire::{BodyDecoder, HttpConnection};

// ---------------------------------------------------------------------------
// nchan: nginx's configuration, its process, its answers
// ---------------------------------------------------------------------------

mod nchan {
    use super::*;

    /// The channel stream `index` subscribes to: its user's (`u<index>`, as
    /// Herald's users are) when events go to users, `bench` otherwise.
    pub fn channel(target: Target, index: usize) -> String {
        match target {
            Target::Users => user_of(index),
            Target::Everyone => CHANNEL.to_owned(),
        }
    }

    /// What the configuration depends on.
    pub struct Settings<'a> {
        pub module: &'a Path,
        /// The run's own directory: pid file and temporary files go there.
        pub dir: &'a Path,
        pub port: u16,
        /// Seconds between pings on every stream (`nchan_eventsource_ping_interval`);
        /// `None`: no pings (nchan's default).
        pub ping_interval: Option<u64>,
    }

    /// nginx's configuration for one run: one worker, the nchan module, a
    /// subscriber location `/sub/<channel>`, a publisher location
    /// `/pub/<channel>`, and `nchan_stub_status` for the report.
    pub fn config(settings: &Settings) -> String {
        let dir = settings.dir.display();
        let ping = match settings.ping_interval {
            // Each ping then carries a comment line, which the tool counts as a
            // heartbeat as it does Herald's; its `event: ping` has no data, so
            // it is no event to an EventSource (or to the tool).
            Some(seconds) => format!(
                "\n            nchan_eventsource_ping_interval {seconds};\
                 \n            nchan_eventsource_ping_comment \"heartbeat\";"
            ),
            None => String::new(),
        };
        format!(
            r#"# Written by Herald's load tool (examples/loadgen.rs) for one run.
load_module {module};
worker_processes 1;
worker_rlimit_nofile {open_files};
pid {dir}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    nchan_shared_memory_size {shared_memory};
    nchan_message_buffer_length {buffer_length};
    nchan_message_timeout {message_timeout};

    server {{
        listen 127.0.0.1:{port};

        location ~ ^/sub/(\w+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;{ping}
        }}

        location ~ ^/pub/(\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}

        location = {status_path} {{
            nchan_stub_status;
        }}
    }}
}}
"#,
            module = settings.module.display(),
            open_files = NGINX_OPEN_FILES,
            worker_connections = NGINX_WORKER_CONNECTIONS,
            shared_memory = NCHAN_SHARED_MEMORY,
            buffer_length = NCHAN_BUFFER_LENGTH,
            message_timeout = NCHAN_MESSAGE_TIMEOUT,
            port = settings.port,
            status_path = NCHAN_STATUS_PATH,
        )
    }

    /// `nchan_stub_status`'s `name: value` lines.
    pub fn parse_status(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .filter(|(name, _)| !name.is_empty())
            .collect()
    }

    /// The subscribers a publish reached, from the publisher's plain-text
    /// answer (`active subscribers: N`).
    pub fn subscribers_in_answer(body: &[u8]) -> Option<u64> {
        String::from_utf8_lossy(body)
            .lines()
            .find_map(|line| line.strip_prefix("active subscribers:"))?
            .trim()
            .parse()
            .ok()
    }

    /// `GET /nchan_status` on a fresh connection.
    pub async fn status(port: u16) -> Result<BTreeMap<String, String>, String> {
        let mut connection = HttpConnection::open(port).await?;
        let response = connection
            .request("GET", NCHAN_STATUS_PATH, &[], None)
            .await?;
        if response.status != 200 {
            return Err(format!(
                "GET {NCHAN_STATUS_PATH} answered {}: {}",
                response.status,
                response.excerpt()
            ));
        }
        Ok(parse_status(&String::from_utf8_lossy(&response.body)))
    }

    /// A free port on 127.0.0.1 at the moment of asking.
    fn free_port() -> Result<u16, String> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        listener
            .local_addr()
            .map(|address| address.port())
            .map_err(|e| format!("cannot find a free port: {e}"))
    }

    /// nginx started by the tool in the foreground, with its configuration in
    /// a fresh directory; stopped (by PID) and the directory removed when dropped.
    pub struct NginxProcess {
        child: Child,
        pub port: u16,
        /// The worker process: the one that serves, and the one measured.
        pub worker: u32,
        dir: PathBuf,
    }

    impl NginxProcess {
        pub fn start(
            nginx: &Path,
            module: &Path,
            core: usize,
            ping_interval: Option<u64>,
        ) -> Result<Self, String> {
            let dir = std::env::temp_dir().join(format!(
                "herald-loadgen-nginx-{}-{}",
                std::process::id(),
                unix_nanos()
            ));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let port = free_port()?;
            let config_path = dir.join("nginx.conf");
            let config = config(&Settings {
                module,
                dir: &dir,
                port,
                ping_interval,
            });
            std::fs::write(&config_path, config)
                .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
            let mut command = Command::new("taskset");
            command
                .arg("-c")
                .arg(core.to_string())
                .arg(nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&config_path)
                // Messages before the configuration is read go to stderr too.
                .arg("-e")
                .arg("stderr")
                .arg("-g")
                .arg("daemon off;")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start taskset {}: {e}", nginx.display()))?;
            if let Some(stderr) = child.stderr.take() {
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        eprintln!("  nginx | {line}");
                    }
                });
            }
            let mut process = Self {
                child,
                port,
                worker: 0,
                dir,
            };
            eprintln!(
                "loadgen: nginx configuration in {}",
                process.dir.join("nginx.conf").display()
            );
            // Ready once the master listens and has started its one worker.
            let until = std::time::Instant::now() + SERVER_START_TIMEOUT;
            while std::time::Instant::now() < until {
                if let Ok(Some(status)) = process.child.try_wait() {
                    return Err(format!(
                        "taskset {} exited before listening ({status}); see its log above",
                        nginx.display()
                    ));
                }
                // `taskset` execs nginx, so the child is the master.
                let workers = system::children(process.child.id());
                let listening = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok();
                if let ([worker], true) = (workers.as_slice(), listening) {
                    process.worker = *worker;
                    return Ok(process);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!(
                "{} did not start its worker and listen within {SERVER_START_TIMEOUT:?}",
                nginx.display()
            ))
        }

        pub fn master(&self) -> u32 {
            self.child.id()
        }

        /// SIGTERM to the master (nginx's fast shutdown), then SIGKILL if it
        /// has not exited in time; the worker exits with it.
        pub fn stop(&mut self) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // SAFETY: kill() with a PID we started and have not reaped yet.
            unsafe { libc::kill(self.master() as libc::pid_t, libc::SIGTERM) };
            let until = std::time::Instant::now() + SERVER_STOP_TIMEOUT;
            while std::time::Instant::now() < until {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // The worker, if it is still the master's child (so not reaped, and its
            // PID not reused).
            if self.worker != 0 && system::children(self.master()).contains(&self.worker) {
                // SAFETY: kill() with the PID of our child's live child.
                unsafe { libc::kill(self.worker as libc::pid_t, libc::SIGKILL) };
            }
            // Errors mean it has exited after all.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for NginxProcess {
        fn drop(&mut self) {
            self.stop();
            // Best effort: a leftover temporary directory harms nothing.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Messages between the parent and its shards
// ---------------------------------------------------------------------------

/// What a shard is asked to do, passed as its `--shard` argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardPlan {
    /// This shard's number, 0 onwards.
    index: usize,
    /// The server: what to request, and when a stream counts as established.
    against: Against,
    /// Run-wide index of this shard's first stream (its user is `u<index>`).
    first_connection: usize,
    /// Streams this shard opens.
    connections: usize,
    port: u16,
    /// What the run publishes, from which each stream's expected count follows.
    events: usize,
    target: Target,
    /// Who the streams are and what they request (Herald).
    streams: Streams,
    /// The event name counted, and the data it carries.
    payload: Payload,
    /// Streams in the whole run: the round robin of targeted events goes over them.
    users: usize,
    /// This shard's share of the connection attempts in flight.
    connect_concurrency: usize,
    source_addresses: u8,
    /// The core the shard pins itself to.
    core: usize,
    /// The shard stops by itself after this long.
    timeout_secs: f64,
}

/// How a shard's connection attempts went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ConnectReport {
    /// Attempts that have ended, and how many of those were established
    /// (Herald: `connected` received; nchan: a `200` response head).
    attempted: usize,
    established: usize,
    /// Failures by kind.
    errors: BTreeMap<String, usize>,
    first_error: Option<String>,
    /// When the first attempt started and the last one ended, in Unix nanoseconds.
    started_ns: u64,
    finished_ns: u64,
    /// From TCP connect to establishment, in microseconds.
    latency: HistogramData,
}

/// Heartbeats each stream received since `mark`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HeartbeatReport {
    /// (heartbeats received in the window, streams that received that many).
    /// Pairs rather than a map: JSON keys are strings, which an internally
    /// tagged message cannot read back as numbers.
    per_connection: Vec<(u64, usize)>,
    /// Streams that ended during the window.
    dropped: usize,
}

/// A shard's figures at the end of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ShardResult {
    /// Events the established streams should have received.
    deliveries_expected: u64,
    /// Events received, counting at most the expected number per stream.
    deliveries_received: u64,
    /// Events received beyond a stream's expected number (duplicates).
    extra_deliveries: u64,
    /// Events that arrived with a sequence number not above the previous one.
    out_of_order: u64,
    /// Events of the run's name (`bench`, `tick`) whose data could not be read.
    malformed: u64,
    /// Events with another name (`token-expired`, …).
    other_events: u64,
    /// Publish-to-receive latency in microseconds.
    latency: HistogramData,
    /// When the last event arrived, in Unix nanoseconds.
    last_delivery_ns: u64,
    /// Streams that ended, and why.
    dropped: usize,
    drop_reasons: BTreeMap<String, usize>,
    heartbeats: Option<HeartbeatReport>,
}

/// One line a shard writes on its stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ShardMessage {
    /// Tokens are minted; waiting for `connect`.
    Ready,
    /// Every connection attempt has ended.
    Connected(ConnectReport),
    /// Every established stream received all the events it expects.
    Complete,
    /// The final figures; the shard exits next.
    Finished(ShardResult),
}

// ---------------------------------------------------------------------------
// The subscriber side: one shard process
// ---------------------------------------------------------------------------

mod shard {
    use super::*;

    /// One stream as its shard tracks it; lives until the shard exits.
    #[derive(Default)]
    struct StreamState {
        /// The run's events (named as its [`Payload`] says) this stream
        /// should receive.
        expected: u64,
        /// The run's events it has received.
        received: u64,
        /// Sequence number of the last one, to spot reordering and repeats.
        last_seq: Option<u64>,
        /// Heartbeat comments seen so far, and at the start of the heartbeat window.
        heartbeats: u64,
        heartbeats_at_mark: u64,
        /// Whether it was established (see [`open`]); only such streams count.
        established: bool,
    }

    /// Running totals of a shard.
    #[derive(Default)]
    struct Totals {
        /// Connection attempts so far; sent to the parent once all have ended.
        connect: ConnectReport,
        connect_latency: Histogram,
        /// Established streams that expect at least one event, and how many
        /// of those have received all of theirs.
        awaiting: usize,
        completed: usize,
        /// Delivery figures so far; completed from the streams at the end.
        result: ShardResult,
        latency: Histogram,
        /// Streams dropped before the heartbeat window began.
        dropped_at_mark: usize,
    }

    /// Everything a shard's tasks share (they all run on one thread).
    struct Shard {
        plan: ShardPlan,
        /// 127.0.0.1 and the server's port.
        server: SocketAddr,
        /// Indexed by the stream's position in this shard.
        streams: RefCell<Vec<StreamState>>,
        totals: RefCell<Totals>,
        /// Bounds connection attempts in flight.
        connect_slots: Semaphore,
        /// Woken when an attempt ends or a stream completes; the controller re-checks.
        progress: Notify,
    }

    /// Why a connection attempt failed: a kind to count by, and the detail.
    struct Failure {
        kind: String,
        detail: String,
    }

    impl Failure {
        fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
            Self {
                kind: kind.into(),
                detail: detail.into(),
            }
        }

        fn io(stage: &str, error: io::Error) -> Self {
            Self::new(
                format!("{stage}: {:?}", error.kind()),
                format!("{stage}: {error}"),
            )
        }
    }

    /// Frames completed by one read, and whether the stream ended with it.
    struct Batch {
        frames: Vec<Frame>,
        ended: Option<&'static str>,
    }

    /// An open SSE response being read.
    struct Subscription {
        stream: TcpStream,
        body: BodyDecoder,
        parser: sse::Parser,
    }

    impl Subscription {
        async fn next_batch(&mut self) -> Result<Batch, String> {
            let (body, parser) = (&mut self.body, &mut self.parser);
            wire::read_with(&self.stream, |bytes| {
                if bytes.is_empty() {
                    return Ok(Batch {
                        frames: Vec::new(),
                        ended: Some("the server closed the connection"),
                    });
                }
                feed(body, parser, bytes)
            })
            .await
            .map_err(|e| format!("read: {:?}", e.kind()))?
        }
    }

    /// De-chunks `bytes` (if the body is chunked) and parses the SSE they carry.
    fn feed(
        decoder: &mut BodyDecoder,
        parser: &mut sse::Parser,
        bytes: &[u8],
    ) -> Result<Batch, String> {
        BODY_BUFFER.with(|body| {
            let mut body = body.borrow_mut();
            body.clear();
            let done = decoder.decode(bytes, &mut body)?;
            let mut frames = Vec::new();
            for piece in body.chunks(PARSER_FEED_BYTES) {
                frames.extend(parser.feed(piece));
            }
            Ok(Batch {
                frames,
                ended: done.then_some("the server ended the stream"),
            })
        })
    }

    /// Runs a shard: the child side of the pipe protocol.
    pub fn run(plan_json: &str) -> Result<(), String> {
        let plan: ShardPlan =
            serde_json::from_str(plan_json).map_err(|e| format!("bad shard plan: {e}"))?;
        system::pin_to_core(plan.core)?;
        system::raise_open_file_limit()?;
        let secret = std::env::var(SECRET_VARIABLE)
            .map_err(|_| format!("a shard needs {SECRET_VARIABLE}"))?;
        let tokens = tokens(&plan, &secret)?;

        // Commands arrive on stdin; a thread turns its lines into messages.
        // End of input (the parent is gone) reads as `stop`.
        let (commands_in, commands) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if commands_in.send(line.trim().to_owned()).is_err() {
                    break;
                }
            }
        });

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let shard = Rc::new(Shard {
            server: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.port),
            streams: RefCell::new(
                (0..plan.connections)
                    .map(|local| StreamState {
                        expected: expected_events(
                            plan.target,
                            plan.events,
                            plan.users,
                            plan.first_connection + local,
                        ),
                        ..StreamState::default()
                    })
                    .collect(),
            ),
            totals: RefCell::default(),
            connect_slots: Semaphore::new(plan.connect_concurrency.max(1)),
            progress: Notify::new(),
            plan,
        });
        LocalSet::new().block_on(&runtime, control(shard, tokens, commands))
    }

    /// The token of each of the plan's streams. nchan checks no token: its
    /// streams send none. Streams of one user share one token, minted once.
    pub(crate) fn tokens(plan: &ShardPlan, secret: &str) -> Result<Vec<Rc<str>>, String> {
        let mint = |index: usize| {
            let (user, channels) = plan.streams.identity(index);
            mint_token(secret, &user, false, channels).map(Rc::from)
        };
        match (plan.against, plan.streams) {
            (Against::Nchan, _) => Ok(vec![Rc::from(""); plan.connections]),
            (Against::Herald, Streams::OneUserWildcard) => {
                Ok(vec![mint(plan.first_connection)?; plan.connections])
            }
            (Against::Herald, Streams::OwnUser) => (0..plan.connections)
                .map(|local| mint(plan.first_connection + local))
                .collect(),
        }
    }

    /// The request that opens stream `index` (run-wide) on `server`.
    pub(crate) fn stream_request(
        plan: &ShardPlan,
        index: usize,
        server: SocketAddr,
        token: &str,
    ) -> String {
        match plan.against {
            Against::Herald => format!(
                "GET {} HTTP/1.1\r\nHost: {server}\r\n\
                 Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
                plan.streams.path(),
            ),
            Against::Nchan => format!(
                "GET /sub/{} HTTP/1.1\r\nHost: {server}\r\nAccept: text/event-stream\r\n\r\n",
                nchan::channel(plan.target, index),
            ),
        }
    }

    fn emit(message: &ShardMessage) -> Result<(), String> {
        let line = serde_json::to_string(message).map_err(|e| e.to_string())?;
        writeln!(io::stdout().lock(), "{line}").map_err(|e| format!("writing to the parent: {e}"))
    }

    async fn control(
        shard: Rc<Shard>,
        tokens: Vec<Rc<str>>,
        mut commands: mpsc::UnboundedReceiver<String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs_f64(shard.plan.timeout_secs);
        emit(&ShardMessage::Ready)?;
        loop {
            tokio::select! {
                command = commands.recv() => match command.as_deref() {
                    Some("connect") => break,
                    Some(_) => {}
                    None => return Ok(()),
                },
                _ = sleep_until(deadline) => return Err("no `connect` before the timeout".into()),
            }
        }

        shard.totals.borrow_mut().connect.started_ns = unix_nanos();
        for (local, token) in tokens.into_iter().enumerate() {
            tokio::task::spawn_local(subscribe(shard.clone(), local, token));
        }
        while shard.totals.borrow().connect.attempted < shard.plan.connections {
            tokio::select! {
                _ = shard.progress.notified() => {}
                _ = sleep_until(deadline) => break,
            }
        }
        let report = {
            let totals = shard.totals.borrow();
            ConnectReport {
                latency: totals.connect_latency.to_data(),
                ..totals.connect.clone()
            }
        };
        emit(&ShardMessage::Connected(report))?;

        let mut complete_sent = false;
        loop {
            if !complete_sent && shard.is_complete() {
                emit(&ShardMessage::Complete)?;
                complete_sent = true;
            }
            tokio::select! {
                command = commands.recv() => match command.as_deref() {
                    Some("mark") => shard.mark(),
                    Some("stop") | None => break,
                    Some(_) => {}
                },
                _ = shard.progress.notified(), if !complete_sent => {}
                _ = sleep_until(deadline) => break,
            }
        }
        emit(&ShardMessage::Finished(shard.finish()))
    }

    /// One stream, from its connection attempt to its end.
    async fn subscribe(shard: Rc<Shard>, local: usize, token: Rc<str>) {
        let opened = match shard.connect_slots.acquire().await {
            Ok(_slot) => {
                let began = Instant::now();
                timeout(CONNECT_TIMEOUT, open(&shard, local, &token))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::new(
                            "timeout",
                            "not established within the connect timeout",
                        ))
                    })
                    .map(|opened| (opened, began.elapsed()))
            }
            // The semaphore is never closed.
            Err(_) => Err(Failure::new("internal", "connect slots closed")),
        };
        let (mut subscription, first_frames) = match opened {
            Ok(((subscription, frames), took)) => {
                shard.established(local, took);
                (subscription, frames)
            }
            Err(failure) => {
                shard.failed(failure);
                return;
            }
        };
        shard.received(local, &first_frames, subscription.parser.comments);
        loop {
            match subscription.next_batch().await {
                Ok(batch) => {
                    shard.received(local, &batch.frames, subscription.parser.comments);
                    if let Some(reason) = batch.ended {
                        shard.dropped(reason);
                        return;
                    }
                }
                Err(reason) => {
                    shard.dropped(&reason);
                    return;
                }
            }
        }
    }

    /// Connects, subscribes, and reads until the stream is established: for
    /// Herald, its `connected` event; for nchan, which sends no such event, a
    /// `200` response head (nchan registers the subscriber before answering).
    /// Returns the stream and any frames that came after that point in the
    /// same read.
    async fn open(
        shard: &Shard,
        local: usize,
        token: &str,
    ) -> Result<(Subscription, Vec<Frame>), Failure> {
        let plan = &shard.plan;
        let source = source_address(plan.first_connection + local, plan.source_addresses);
        let socket = TcpSocket::new_v4().map_err(|e| Failure::io("socket", e))?;
        // A source port in TIME_WAIT from an earlier run may be reused.
        socket
            .set_reuseaddr(true)
            .map_err(|e| Failure::io("SO_REUSEADDR", e))?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .map_err(|e| Failure::io("bind", e))?;
        let stream = socket
            .connect(shard.server)
            .await
            .map_err(|e| Failure::io("connect", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::io("TCP_NODELAY", e))?;
        let request = stream_request(plan, plan.first_connection + local, shard.server, token);
        wire::write_all(&stream, request.as_bytes())
            .await
            .map_err(|e| Failure::io("write", e))?;
        let (head, rest) = wire::read_head(&stream)
            .await
            .map_err(|e| Failure::new("response", e))?;
        if head.status != 200 {
            // The error body names the reason (429 too_many_connections, 401 …).
            let body = timeout(
                Duration::from_secs(2),
                wire::read_body(&stream, &head, rest),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
            return Err(Failure::new(
                format!("HTTP {}", head.status),
                format!(
                    "HTTP {}: {}",
                    head.status,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            ));
        }
        let mut subscription = Subscription {
            stream,
            body: BodyDecoder::for_head(&head),
            parser: sse::Parser::new(),
        };
        let mut batch = feed(&mut subscription.body, &mut subscription.parser, &rest)
            .map_err(|e| Failure::new("response", e))?;
        if plan.against == Against::Nchan {
            if let Some(reason) = batch.ended {
                return Err(Failure::new("ended at once", reason));
            }
            return Ok((subscription, batch.frames));
        }
        loop {
            if let Some(at) = batch.frames.iter().position(|f| f.event == "connected") {
                let after = batch.frames.split_off(at + 1);
                return Ok((subscription, after));
            }
            if let Some(reason) = batch.ended {
                return Err(Failure::new("ended before `connected`", reason));
            }
            batch = subscription
                .next_batch()
                .await
                .map_err(|e| Failure::new("response", e))?;
        }
    }

    impl Shard {
        fn attempt_ended(totals: &mut Totals) {
            totals.connect.attempted += 1;
            totals.connect.finished_ns = unix_nanos();
        }

        fn established(&self, local: usize, took: Duration) {
            let mut streams = self.streams.borrow_mut();
            let stream = &mut streams[local];
            stream.established = true;
            let mut totals = self.totals.borrow_mut();
            totals.connect.established += 1;
            totals.connect_latency.record(took.as_micros() as u64);
            if stream.expected > 0 {
                totals.awaiting += 1;
            }
            Self::attempt_ended(&mut totals);
            self.progress.notify_one();
        }

        fn failed(&self, failure: Failure) {
            let mut totals = self.totals.borrow_mut();
            *totals.connect.errors.entry(failure.kind).or_default() += 1;
            totals.connect.first_error.get_or_insert(failure.detail);
            Self::attempt_ended(&mut totals);
            self.progress.notify_one();
        }

        /// Records the frames of one read on stream `local`.
        fn received(&self, local: usize, frames: &[Frame], heartbeats: u64) {
            let mut streams = self.streams.borrow_mut();
            let stream = &mut streams[local];
            stream.heartbeats = heartbeats;
            if frames.is_empty() {
                return;
            }
            let now = unix_nanos();
            let mut totals = self.totals.borrow_mut();
            for frame in frames {
                let (seq, sent_ns) = match read_frame(self.plan.payload, frame) {
                    Reading::Event { seq, sent_ns } => (seq, sent_ns),
                    Reading::Malformed => {
                        totals.result.malformed += 1;
                        continue;
                    }
                    Reading::Other => {
                        totals.result.other_events += 1;
                        continue;
                    }
                };
                if stream.last_seq.is_some_and(|last| seq <= last) {
                    totals.result.out_of_order += 1;
                }
                stream.last_seq = Some(seq);
                stream.received += 1;
                if stream.received == stream.expected {
                    totals.completed += 1;
                    self.progress.notify_one();
                }
                totals.latency.record(now.saturating_sub(sent_ns) / 1000);
                totals.result.last_delivery_ns = now;
            }
        }

        fn dropped(&self, reason: &str) {
            let mut totals = self.totals.borrow_mut();
            totals.result.dropped += 1;
            *totals
                .result
                .drop_reasons
                .entry(reason.to_owned())
                .or_default() += 1;
        }

        fn is_complete(&self) -> bool {
            let totals = self.totals.borrow();
            totals.awaiting > 0
                && totals.completed == totals.awaiting
                && totals.connect.attempted == self.plan.connections
        }

        /// Starts a heartbeat window.
        fn mark(&self) {
            for stream in self.streams.borrow_mut().iter_mut() {
                stream.heartbeats_at_mark = stream.heartbeats;
            }
            let mut totals = self.totals.borrow_mut();
            totals.dropped_at_mark = totals.result.dropped;
            totals.result.heartbeats = Some(HeartbeatReport::default());
        }

        fn finish(&self) -> ShardResult {
            let streams = self.streams.borrow();
            let mut totals = self.totals.borrow_mut();
            let mut result = totals.result.clone();
            let mut heartbeat_counts: BTreeMap<u64, usize> = BTreeMap::new();
            for stream in streams.iter().filter(|stream| stream.established) {
                result.deliveries_expected += stream.expected;
                result.deliveries_received += stream.received.min(stream.expected);
                result.extra_deliveries += stream.received.saturating_sub(stream.expected);
                *heartbeat_counts
                    .entry(stream.heartbeats - stream.heartbeats_at_mark)
                    .or_default() += 1;
            }
            if let Some(heartbeats) = &mut result.heartbeats {
                heartbeats.per_connection = heartbeat_counts.into_iter().collect();
                heartbeats.dropped = result.dropped - totals.dropped_at_mark;
            }
            result.latency = totals.latency.to_data();
            totals.result = ShardResult::default();
            result
        }
    }
}

// ---------------------------------------------------------------------------
// The parent side: server, shards, publishing, the report
// ---------------------------------------------------------------------------

mod orchestrator {
    use super::*;

    /// A server started by the tool; stopped (by PID) when dropped.
    struct ServerProcess {
        child: Child,
        port: u16,
        /// A fresh store directory for this run (the default disk store),
        /// removed when the server is; a run never loads an earlier one's events.
        data_dir: PathBuf,
    }

    impl ServerProcess {
        fn start(
            binary: &Path,
            core: usize,
            secret: &str,
            env: &[(String, String)],
        ) -> Result<Self, String> {
            let data_dir = std::env::temp_dir().join(format!(
                "herald-loadgen-data-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let mut command = Command::new("taskset");
            command
                .arg("-c")
                .arg(core.to_string())
                .arg(binary)
                .env("DATA_DIR", &data_dir)
                .env("JWT_SECRET", secret)
                .env("HOST", "127.0.0.1")
                .env("PORT", "0")
                .env("RUST_LOG", "warn,herald=info")
                .env("SHUTDOWN_DRAIN_SECS", "0.5")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (key, value) in env {
                command.env(key, value);
            }
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start taskset {}: {e}", binary.display()))?;
            let Some(stderr) = child.stderr.take() else {
                return Err("the server's stderr is not piped".into());
            };
            // The log is read to its end, so the server never blocks on a full
            // pipe; the line with the port is passed back, the rest echoed.
            let (port_in, port_out) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  herald | {line}");
                    if let Some(at) = line.find("Herald listening on http://") {
                        let port = line[at..].rsplit(':').next().and_then(|p| p.parse().ok());
                        if let Some(port) = port {
                            // The receiver is gone once start-up timed out; nothing to do.
                            let _ = port_in.send(port);
                        }
                    }
                }
            });
            let until = std::time::Instant::now() + SERVER_START_TIMEOUT;
            let mut server = Self {
                child,
                port: 0,
                data_dir,
            };
            while std::time::Instant::now() < until {
                if let Ok(port) = port_out.recv_timeout(Duration::from_millis(100)) {
                    server.port = port;
                    return Ok(server);
                }
                // A server that cannot start (bad path, bad setting) exits at once.
                if let Ok(Some(status)) = server.child.try_wait() {
                    return Err(format!(
                        "taskset {} exited before listening ({status}); see its log above",
                        binary.display()
                    ));
                }
            }
            server.stop();
            Err(format!(
                "{} did not report a port within {SERVER_START_TIMEOUT:?}",
                binary.display()
            ))
        }

        fn pid(&self) -> u32 {
            // `taskset` execs the server, so the child's PID is the server's.
            self.child.id()
        }

        /// SIGTERM, then SIGKILL if it has not exited in time. It blocks the
        /// thread, which is fine: it runs at the end of a run, with no
        /// measurement left in progress.
        fn stop(&mut self) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            // SAFETY: kill() with a PID we started and have not reaped yet.
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
            let until = std::time::Instant::now() + SERVER_STOP_TIMEOUT;
            while std::time::Instant::now() < until {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Errors mean it has exited after all.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            self.stop();
            // Best effort: a leftover temporary directory harms nothing.
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// What the parent knows of one shard.
    #[derive(Default)]
    struct ShardState {
        ready: bool,
        connected: Option<ConnectReport>,
        complete: bool,
        finished: Option<ShardResult>,
        /// Its stdout closed (it exited or crashed).
        exited: bool,
    }

    enum Incoming {
        Message(ShardMessage),
        Garbled(String),
        Exited,
    }

    struct ShardProcess {
        child: Child,
        stdin: Option<ChildStdin>,
        state: ShardState,
    }

    /// The running shard processes; killed (by PID) when dropped.
    struct Shards {
        processes: Vec<ShardProcess>,
        incoming: mpsc::UnboundedReceiver<(usize, Incoming)>,
    }

    impl Shards {
        fn spawn(plans: &[ShardPlan], secret: &str) -> Result<Self, String> {
            let executable =
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
            let (incoming_in, incoming) = mpsc::unbounded_channel();
            let mut shards = Self {
                processes: Vec::new(),
                incoming,
            };
            for plan in plans {
                let plan_json = serde_json::to_string(plan).map_err(|e| e.to_string())?;
                let mut child = Command::new(&executable)
                    .arg("--shard")
                    .arg(plan_json)
                    .env(SECRET_VARIABLE, secret)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("cannot start shard {}: {e}", plan.index))?;
                let stdin = child.stdin.take();
                let stdout = child.stdout.take();
                shards.processes.push(ShardProcess {
                    child,
                    stdin,
                    state: ShardState::default(),
                });
                let Some(stdout) = stdout else {
                    return Err("a shard's stdout is not piped".into());
                };
                let index = plan.index;
                let sender = incoming_in.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let incoming = match serde_json::from_str(&line) {
                            Ok(message) => Incoming::Message(message),
                            Err(_) => Incoming::Garbled(line),
                        };
                        if sender.send((index, incoming)).is_err() {
                            return;
                        }
                    }
                    // The parent may have stopped listening; then nobody cares.
                    let _ = sender.send((index, Incoming::Exited));
                });
            }
            Ok(shards)
        }

        fn pids(&self) -> Vec<u32> {
            self.processes.iter().map(|p| p.child.id()).collect()
        }

        fn send_all(&mut self, command: &str) -> Result<(), String> {
            for (index, process) in self.processes.iter_mut().enumerate() {
                if let Some(stdin) = &mut process.stdin {
                    writeln!(stdin, "{command}")
                        .and_then(|()| stdin.flush())
                        .map_err(|e| format!("telling shard {index} to {command}: {e}"))?;
                }
            }
            Ok(())
        }

        /// Waits until every shard satisfies `done`. Ok(false) at the deadline;
        /// an error when a shard exits first.
        async fn wait(
            &mut self,
            deadline: Instant,
            what: &str,
            done: impl Fn(&ShardState) -> bool,
        ) -> Result<bool, String> {
            loop {
                if self.processes.iter().all(|p| done(&p.state)) {
                    return Ok(true);
                }
                if let Some(index) = self
                    .processes
                    .iter()
                    .position(|p| p.state.exited && !done(&p.state))
                {
                    return Err(format!("shard {index} exited before {what}"));
                }
                let (index, incoming) = match timeout_at(deadline, self.incoming.recv()).await {
                    Err(_) => return Ok(false),
                    Ok(None) => return Err("every shard reader has stopped".into()),
                    Ok(Some(received)) => received,
                };
                let state = &mut self.processes[index].state;
                match incoming {
                    Incoming::Message(ShardMessage::Ready) => state.ready = true,
                    Incoming::Message(ShardMessage::Connected(report)) => {
                        state.connected = Some(report)
                    }
                    Incoming::Message(ShardMessage::Complete) => state.complete = true,
                    Incoming::Message(ShardMessage::Finished(result)) => {
                        state.finished = Some(result)
                    }
                    Incoming::Garbled(line) => eprintln!("loadgen: shard {index} said {line:?}"),
                    Incoming::Exited => state.exited = true,
                }
            }
        }

        /// Waits up to `grace` for the shards to exit, then kills the rest.
        fn reap(&mut self, grace: Duration) {
            for process in &mut self.processes {
                // Closing stdin reads as `stop` to a shard still running.
                process.stdin = None;
            }
            let until = std::time::Instant::now() + grace;
            for process in &mut self.processes {
                while std::time::Instant::now() < until
                    && matches!(process.child.try_wait(), Ok(None))
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(process.child.try_wait(), Ok(None)) {
                    // Errors mean it has exited after all.
                    let _ = process.child.kill();
                }
                let _ = process.child.wait();
            }
        }
    }

    impl Drop for Shards {
        fn drop(&mut self) {
            self.reap(Duration::ZERO);
        }
    }

    /// CPU times at one moment: the server's, the tool's (parent and shards),
    /// and how busy the two cores were, whoever ran on them.
    #[derive(Clone, Copy)]
    struct CpuSample {
        at: Instant,
        server_ticks: Option<u64>,
        tool_ticks: u64,
        server_core: Option<(u64, u64)>,
        tool_core: Option<(u64, u64)>,
    }

    /// What a [`CpuSample`] is taken of.
    struct Sampled<'a> {
        server_pid: Option<u32>,
        shard_pids: &'a [u32],
        server_core: usize,
        tool_core: usize,
    }

    impl Sampled<'_> {
        fn sample(&self) -> CpuSample {
            let tool_ticks = system::cpu_ticks("self").unwrap_or(0)
                + self
                    .shard_pids
                    .iter()
                    .filter_map(|pid| system::cpu_ticks(&pid.to_string()))
                    .sum::<u64>();
            CpuSample {
                at: Instant::now(),
                server_ticks: self
                    .server_pid
                    .and_then(|pid| system::cpu_ticks(&pid.to_string())),
                tool_ticks,
                server_core: system::core_ticks(self.server_core),
                tool_core: system::core_ticks(self.tool_core),
            }
        }
    }

    /// CPU used between two samples. A process fraction near 1.0 means it had
    /// its whole core: the tool's figure tells whether the tool, rather than
    /// the server, was the limit. A core busier than its process shows other
    /// work on that core (other programs, or interrupts and network softirqs,
    /// which are not charged to any process).
    #[derive(Clone, Debug, Serialize)]
    struct CpuWindow {
        wall_secs: f64,
        server_cpu_secs: Option<f64>,
        server_cpu_fraction: Option<f64>,
        server_core_busy_fraction: Option<f64>,
        tool_cpu_secs: f64,
        tool_cpu_fraction: f64,
        tool_core_busy_fraction: Option<f64>,
    }

    impl CpuWindow {
        fn between(start: CpuSample, end: CpuSample) -> Self {
            let ticks = system::ticks_per_second();
            let wall_secs = (end.at - start.at).as_secs_f64();
            let fraction = |seconds: f64| {
                if wall_secs > 0.0 {
                    round(seconds / wall_secs, 3)
                } else {
                    0.0
                }
            };
            let busy = |start: Option<(u64, u64)>, end: Option<(u64, u64)>| {
                let ((busy_a, total_a), (busy_b, total_b)) = start.zip(end)?;
                let total = total_b.saturating_sub(total_a);
                (total > 0).then(|| round(busy_b.saturating_sub(busy_a) as f64 / total as f64, 3))
            };
            let server_cpu_secs = start
                .server_ticks
                .zip(end.server_ticks)
                .map(|(a, b)| b.saturating_sub(a) as f64 / ticks);
            let tool_cpu_secs = end.tool_ticks.saturating_sub(start.tool_ticks) as f64 / ticks;
            Self {
                wall_secs: round(wall_secs, 3),
                server_cpu_secs: server_cpu_secs.map(|s| round(s, 3)),
                server_cpu_fraction: server_cpu_secs.map(fraction),
                server_core_busy_fraction: busy(start.server_core, end.server_core),
                tool_cpu_secs: round(tool_cpu_secs, 3),
                tool_cpu_fraction: fraction(tool_cpu_secs),
                tool_core_busy_fraction: busy(start.tool_core, end.tool_core),
            }
        }

        /// Server CPU microseconds per unit of work done in the window.
        fn server_us_per(&self, work: u64) -> Option<f64> {
            let seconds = self.server_cpu_secs?;
            (work > 0).then(|| round(seconds * 1e6 / work as f64, 2))
        }
    }

    /// p50, p99 and max of a latency histogram, in milliseconds.
    #[derive(Clone, Debug, Serialize)]
    struct Latency {
        samples: u64,
        p50_ms: f64,
        p99_ms: f64,
        max_ms: f64,
    }

    impl From<&Histogram> for Latency {
        fn from(histogram: &Histogram) -> Self {
            let ms = |micros: u64| round(micros as f64 / 1000.0, 3);
            Self {
                samples: histogram.count,
                p50_ms: ms(histogram.quantile(0.50)),
                p99_ms: ms(histogram.quantile(0.99)),
                max_ms: ms(histogram.max),
            }
        }
    }

    /// One run's figures, printed in this order.
    #[derive(Debug, Serialize)]
    pub struct RunReport {
        label: String,
        against: Against,
        /// The process whose CPU time and resident memory the figures are:
        /// Herald, or nchan's nginx worker.
        measured_process: String,
        server_pid: Option<u32>,
        server_port: u16,
        /// Subscriber processes the streams were spread over.
        shards: usize,
        connections: ConnectionsReport,
        memory: MemoryReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        publish: Option<PublishReport>,
        #[serde(skip_serializing_if = "Option::is_none")]
        delivery: Option<DeliveryReport>,
        #[serde(skip_serializing_if = "Option::is_none")]
        heartbeats: Option<HeartbeatSummary>,
        /// Established streams that ended before the run did, and why.
        dropped_streams: usize,
        drop_reasons: BTreeMap<String, usize>,
        /// `/api/stats` before the streams opened and before they were closed.
        server_stats_before: ServerStats,
        server_stats_after: ServerStats,
    }

    impl RunReport {
        /// The figures the comparison table shows.
        pub fn figures(&self) -> Figures {
            let delivery = self.delivery.as_ref();
            Figures {
                deliveries_per_sec: delivery.and_then(|d| d.deliveries_per_sec),
                cpu_us_per_delivery: delivery.and_then(|d| d.server_cpu_us_per_delivery),
                p99_ms: delivery.map(|d| d.latency.p99_ms),
                bytes_per_connection: self.memory.bytes_per_connection,
                connect_rate_per_sec: self.connections.connect_rate_per_sec,
                expected: delivery.map_or(0, |d| d.expected),
                lost: delivery.map_or(0, |d| d.lost),
                failed_streams: self.connections.failed,
                dropped_streams: self.dropped_streams,
            }
        }
    }

    #[derive(Debug, Serialize)]
    struct ConnectionsReport {
        requested: usize,
        established: usize,
        failed: usize,
        /// Failed attempts by kind (`HTTP 429`, `connect: …`, `timeout`).
        errors: BTreeMap<String, usize>,
        first_error: Option<String>,
        /// From the first attempt's start to the last attempt's end, over all shards.
        connect_secs: f64,
        /// Streams established (their `connected` event received) per second.
        connect_rate_per_sec: Option<f64>,
        /// From TCP connect to the `connected` event, per stream.
        connect_latency: Latency,
        server_cpu_us_per_connection: Option<f64>,
        cpu: CpuWindow,
    }

    #[derive(Debug, Serialize)]
    struct MemoryReport {
        /// The server's VmRSS before the streams opened, and once all had.
        server_rss_before_kib: Option<u64>,
        server_rss_after_kib: Option<u64>,
        /// The difference per established stream (user space only: socket
        /// buffers are kernel memory).
        bytes_per_connection: Option<f64>,
    }

    #[derive(Debug, Serialize)]
    struct PublishReport {
        events: usize,
        target: Target,
        /// `null`: as fast as the publishers could.
        rate_per_sec_asked: Option<f64>,
        /// Concurrent requests, each on its own keep-alive connection.
        publishers: usize,
        accepted: usize,
        failed: usize,
        first_error: Option<String>,
        /// Sum of the recipients the accepted answers report (Herald:
        /// `recipients`; nchan: `active subscribers`).
        recipients_reported: u64,
        publish_secs: f64,
        publish_rate_per_sec: f64,
        /// Round trip of one publish request.
        request_latency: Latency,
    }

    #[derive(Debug, Serialize)]
    struct DeliveryReport {
        /// Every established stream received all it should before the drain timeout.
        complete: bool,
        expected: u64,
        received: u64,
        lost: u64,
        loss_fraction: Option<f64>,
        duplicates: u64,
        out_of_order: u64,
        malformed: u64,
        other_events: u64,
        /// From the first publish request to the last delivery.
        window_secs: f64,
        deliveries_per_sec: Option<f64>,
        /// From the publish request being written to the event being read.
        latency: Latency,
        server_cpu_us_per_delivery: Option<f64>,
        /// From the first publish request until every stream had all its events.
        cpu: CpuWindow,
    }

    #[derive(Debug, Serialize)]
    struct HeartbeatSummary {
        interval_secs: Option<f64>,
        streams_watched: usize,
        /// A window of W seconds holds at least floor(W / interval) − 1
        /// heartbeats whatever its phase; a stream with fewer stopped hearing them.
        expected_at_least: Option<u64>,
        streams_below_expected: Option<usize>,
        min_per_stream: Option<u64>,
        max_per_stream: Option<u64>,
        /// Heartbeats received in the window → streams that received that many.
        per_stream: BTreeMap<u64, usize>,
        dropped_during_watch: usize,
        total_received: u64,
        server_cpu_us_per_heartbeat: Option<f64>,
        cpu: CpuWindow,
    }

    /// The `/api/stats` figures the report shows.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct HeraldStats {
        connections: Option<u64>,
        events_published: Option<u64>,
        events_delivered: Option<u64>,
        slow_client_disconnects: Option<u64>,
        connections_opened: Option<u64>,
        connections_refused: Option<u64>,
    }

    /// The server's own counters: Herald's `/api/stats`, or nchan's
    /// `nchan_stub_status` lines (`subscribers`, `total published messages`,
    /// `shared memory used` …).
    #[derive(Debug, Serialize)]
    #[serde(untagged)]
    enum ServerStats {
        Herald(HeraldStats),
        Nchan(BTreeMap<String, String>),
        Error { error: String },
    }

    impl ServerStats {
        async fn fetch(against: Against, port: u16, admin_token: &str) -> Self {
            let fetched = match against {
                Against::Herald => wire::server_stats(port, admin_token)
                    .await
                    .and_then(|stats| {
                        serde_json::from_value(stats)
                            .map_err(|e| format!("unexpected /api/stats: {e}"))
                    })
                    .map(Self::Herald),
                Against::Nchan => nchan::status(port).await.map(Self::Nchan),
            };
            fetched.unwrap_or_else(|error| Self::Error { error })
        }
    }

    /// The shards of a run: streams split evenly, at most `per_process` each.
    pub(crate) fn plans(spec: &RunSpec, options: &Options, port: u16) -> Vec<ShardPlan> {
        let count = spec.connections.div_ceil(options.per_process).max(1);
        let concurrency = options.connect_concurrency.div_ceil(count);
        let mut first = 0;
        (0..count)
            .map(|index| {
                let connections =
                    spec.connections / count + usize::from(index < spec.connections % count);
                let plan = ShardPlan {
                    index,
                    against: spec.against,
                    first_connection: first,
                    connections,
                    port,
                    events: spec.events,
                    target: spec.target,
                    streams: spec.streams,
                    payload: spec.payload,
                    users: spec.connections,
                    connect_concurrency: concurrency,
                    source_addresses: options.source_addresses,
                    core: options.tool_core,
                    timeout_secs: (options.timeout + SHARD_GRACE).as_secs_f64(),
                };
                first += connections;
                plan
            })
            .collect()
    }

    /// A server the tool started for one run; stopped when dropped.
    enum Started {
        Herald(ServerProcess),
        Nginx(nchan::NginxProcess),
    }

    impl Started {
        fn stop(&mut self) {
            match self {
                Started::Herald(server) => server.stop(),
                Started::Nginx(server) => server.stop(),
            }
        }
    }

    /// The environment of a Herald started for `spec`: `base` (`--server-env`),
    /// then the run's own `server_env`, then its HEARTBEAT_INTERVAL; a later
    /// setting of the same name wins.
    pub(crate) fn herald_env(base: &[(String, String)], spec: &RunSpec) -> Vec<(String, String)> {
        let mut env = base.to_vec();
        env.extend(spec.server_env.iter().cloned());
        if let Some(interval) = spec.heartbeat_interval {
            env.push(("HEARTBEAT_INTERVAL".into(), interval.to_string()));
        }
        env
    }

    /// One run, start to end.
    pub async fn run(spec: &RunSpec, options: &Options) -> Result<RunReport, String> {
        let deadline = Instant::now() + options.timeout;
        let target = match spec.against {
            Against::Herald => options.herald.as_ref(),
            Against::Nchan => options.nchan.as_ref(),
        }
        .ok_or_else(|| format!("no {} server to run against", spec.against.name()))?;
        let (mut server, port, server_pid, measured) = match target {
            ServerTarget::Spawn { binary, core, env } => {
                let env = herald_env(env, spec);
                let server = ServerProcess::start(binary, *core, &options.secret, &env)?;
                let (port, pid) = (server.port, server.pid());
                let measured = format!("herald (pid {pid})");
                (Some(Started::Herald(server)), port, Some(pid), measured)
            }
            ServerTarget::Nginx {
                nginx,
                module,
                core,
            } => {
                // nchan pings every whole second at most.
                let ping = spec
                    .heartbeat_interval
                    .map(|interval| interval.ceil().max(1.0) as u64);
                let server = nchan::NginxProcess::start(nginx, module, *core, ping)?;
                let (port, worker) = (server.port, server.worker);
                let measured = format!(
                    "nginx worker process (pid {worker}; master {})",
                    server.master()
                );
                (Some(Started::Nginx(server)), port, Some(worker), measured)
            }
            ServerTarget::External { port, pid } => {
                let measured = match (spec.against, pid) {
                    (_, None) => "none (no --server-pid)".to_owned(),
                    (Against::Herald, Some(pid)) => format!("herald (pid {pid})"),
                    (Against::Nchan, Some(pid)) => format!("nginx worker (pid {pid})"),
                };
                (None, *port, *pid, measured)
            }
        };
        let admin = mint_token(&options.secret, "loadgen-admin", true, &[CHANNEL])?;
        // Checks the admin token (Herald) and warms the server up before
        // anything is measured.
        match spec.against {
            Against::Herald => {
                wire::server_stats(port, &admin).await?;
            }
            Against::Nchan => {
                nchan::status(port).await?;
            }
        }
        let server_stats_before = ServerStats::fetch(spec.against, port, &admin).await;
        let rss_before = server_pid.and_then(system::rss_kib);

        let plans = plans(spec, options, port);
        eprintln!(
            "loadgen: server pid {} port {port}; {} stream(s) over {} shard process(es)",
            server_pid.map_or("?".into(), |pid| pid.to_string()),
            spec.connections,
            plans.len()
        );
        let mut shards = Shards::spawn(&plans, &options.secret)?;
        let shard_pids = shards.pids();
        let sampled = Sampled {
            server_pid,
            shard_pids: &shard_pids,
            server_core: options.server_core,
            tool_core: options.tool_core,
        };
        let sample = || sampled.sample();
        if !shards.wait(deadline, "ready", |s| s.ready).await? {
            return Err("the shards were not ready before the timeout".into());
        }

        // Connect.
        let before = sample();
        shards.send_all("connect")?;
        if !shards
            .wait(deadline, "connecting", |s| s.connected.is_some())
            .await?
        {
            return Err("connection attempts did not end before the timeout".into());
        }
        let cpu = CpuWindow::between(before, sample());
        let rss_after = server_pid.and_then(system::rss_kib);
        let connect_reports: Vec<&ConnectReport> = shards
            .processes
            .iter()
            .filter_map(|p| p.state.connected.as_ref())
            .collect();
        let connections = summarize_connects(spec, &connect_reports, cpu);
        eprintln!(
            "loadgen: {} of {} streams established in {} s",
            connections.established, spec.connections, connections.connect_secs
        );
        let established = connections.established;
        let memory = MemoryReport {
            server_rss_before_kib: rss_before,
            server_rss_after_kib: rss_after,
            bytes_per_connection: rss_before.zip(rss_after).and_then(|(before, after)| {
                (established > 0).then(|| {
                    round(
                        (after as f64 - before as f64) * 1024.0 / established as f64,
                        0,
                    )
                })
            }),
        };

        // Publish, and wait for the deliveries.
        let mut publishing = None;
        if spec.events > 0 {
            let publishers = spec.publishers.unwrap_or(options.publishers).max(1);
            eprintln!(
                "loadgen: publishing {} events from {publishers} publisher(s)",
                spec.events
            );
            let start = sample();
            let published = publish(port, &admin, spec, publishers, deadline).await;
            let published_at = Instant::now();
            let drain_deadline = deadline.min(published_at + DRAIN_TIMEOUT);
            let complete = shards
                .wait(drain_deadline, "completing", |s| s.complete)
                .await?;
            let cpu = CpuWindow::between(start, sample());
            eprintln!(
                "loadgen: deliveries {}",
                if complete {
                    "complete"
                } else {
                    "incomplete at the drain timeout"
                }
            );
            let publish_secs = (published_at - start.at).as_secs_f64();
            let report = PublishReport {
                events: spec.events,
                target: spec.target,
                rate_per_sec_asked: spec.rate,
                publishers: publishers.min(spec.events),
                accepted: published.accepted,
                failed: published.failed,
                first_error: published.first_error.clone(),
                recipients_reported: published.recipients,
                publish_secs: round(publish_secs, 3),
                publish_rate_per_sec: round(published.accepted as f64 / publish_secs.max(1e-9), 1),
                request_latency: Latency::from(&published.request_latency),
            };
            publishing = Some((report, complete, cpu, published.started_ns));
        }

        // Watch heartbeats.
        let mut heartbeat_cpu = None;
        if let Some(watch) = spec.heartbeat_watch {
            eprintln!("loadgen: watching heartbeats for {watch:?}");
            let start = sample();
            shards.send_all("mark")?;
            sleep_until((Instant::now() + watch).min(deadline)).await;
            heartbeat_cpu = Some(CpuWindow::between(start, sample()));
        }

        // Read the server's counters while every stream is still open.
        let server_stats_after = ServerStats::fetch(spec.against, port, &admin).await;
        shards.send_all("stop")?;
        if !shards
            .wait(deadline + SHARD_GRACE, "reporting", |s| {
                s.finished.is_some()
            })
            .await?
        {
            return Err("the shards did not report before the timeout".into());
        }
        let results: Vec<ShardResult> = shards
            .processes
            .iter()
            .filter_map(|p| p.state.finished.clone())
            .collect();
        shards.reap(SHARD_GRACE);
        if let Some(server) = &mut server {
            server.stop();
        }

        let mut drop_reasons: BTreeMap<String, usize> = BTreeMap::new();
        for result in &results {
            for (reason, count) in &result.drop_reasons {
                *drop_reasons.entry(reason.clone()).or_default() += count;
            }
        }
        let (publish, delivery) = match publishing {
            Some((report, complete, cpu, started_ns)) => (
                Some(report),
                Some(summarize_deliveries(&results, complete, cpu, started_ns)),
            ),
            None => (None, None),
        };
        Ok(RunReport {
            label: spec.label.clone(),
            against: spec.against,
            measured_process: measured,
            server_pid,
            server_port: port,
            shards: plans.len(),
            connections,
            memory,
            publish,
            delivery,
            heartbeats: heartbeat_cpu.map(|cpu| summarize_heartbeats(spec, &results, cpu)),
            dropped_streams: results.iter().map(|r| r.dropped).sum(),
            drop_reasons,
            server_stats_before,
            server_stats_after,
        })
    }

    fn summarize_connects(
        spec: &RunSpec,
        reports: &[&ConnectReport],
        cpu: CpuWindow,
    ) -> ConnectionsReport {
        let established: usize = reports.iter().map(|r| r.established).sum();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let mut latency = Histogram::default();
        for report in reports {
            for (kind, count) in &report.errors {
                *errors.entry(kind.clone()).or_default() += count;
            }
            latency.merge(&report.latency);
        }
        let started = reports.iter().map(|r| r.started_ns).min().unwrap_or(0);
        let finished = reports.iter().map(|r| r.finished_ns).max().unwrap_or(0);
        let connect_secs = finished.saturating_sub(started) as f64 / 1e9;
        ConnectionsReport {
            requested: spec.connections,
            established,
            failed: spec.connections - established,
            errors,
            first_error: reports.iter().find_map(|r| r.first_error.clone()),
            connect_secs: round(connect_secs, 3),
            connect_rate_per_sec: (connect_secs > 0.0)
                .then(|| round(established as f64 / connect_secs, 0)),
            connect_latency: Latency::from(&latency),
            server_cpu_us_per_connection: cpu.server_us_per(established as u64),
            cpu,
        }
    }

    fn summarize_deliveries(
        results: &[ShardResult],
        complete: bool,
        cpu: CpuWindow,
        publish_started_ns: u64,
    ) -> DeliveryReport {
        let sum = |field: fn(&ShardResult) -> u64| results.iter().map(field).sum::<u64>();
        let expected = sum(|r| r.deliveries_expected);
        let received = sum(|r| r.deliveries_received);
        let mut latency = Histogram::default();
        for result in results {
            latency.merge(&result.latency);
        }
        let last_delivery = results
            .iter()
            .map(|r| r.last_delivery_ns)
            .max()
            .unwrap_or(0);
        let window_secs = last_delivery.saturating_sub(publish_started_ns) as f64 / 1e9;
        DeliveryReport {
            complete,
            expected,
            received,
            lost: expected - received,
            loss_fraction: (expected > 0)
                .then(|| round((expected - received) as f64 / expected as f64, 6)),
            duplicates: sum(|r| r.extra_deliveries),
            out_of_order: sum(|r| r.out_of_order),
            malformed: sum(|r| r.malformed),
            other_events: sum(|r| r.other_events),
            window_secs: round(window_secs, 3),
            deliveries_per_sec: (window_secs > 0.0)
                .then(|| round(received as f64 / window_secs, 0)),
            latency: Latency::from(&latency),
            server_cpu_us_per_delivery: cpu.server_us_per(received),
            cpu,
        }
    }

    fn summarize_heartbeats(
        spec: &RunSpec,
        results: &[ShardResult],
        cpu: CpuWindow,
    ) -> HeartbeatSummary {
        let mut per_stream: BTreeMap<u64, usize> = BTreeMap::new();
        let mut dropped = 0;
        for heartbeats in results.iter().filter_map(|r| r.heartbeats.as_ref()) {
            dropped += heartbeats.dropped;
            for (beats, streams) in &heartbeats.per_connection {
                *per_stream.entry(*beats).or_default() += streams;
            }
        }
        let total_received: u64 = per_stream
            .iter()
            .map(|(beats, streams)| beats * *streams as u64)
            .sum();
        let expected_at_least = spec
            .heartbeat_interval
            .map(|interval| ((cpu.wall_secs / interval).floor() as u64).saturating_sub(1));
        HeartbeatSummary {
            interval_secs: spec.heartbeat_interval,
            streams_watched: per_stream.values().sum(),
            expected_at_least,
            streams_below_expected: expected_at_least
                .map(|least| per_stream.range(..least).map(|(_, streams)| streams).sum()),
            min_per_stream: per_stream.keys().next().copied(),
            max_per_stream: per_stream.keys().next_back().copied(),
            dropped_during_watch: dropped,
            total_received,
            server_cpu_us_per_heartbeat: cpu.server_us_per(total_received),
            per_stream,
            cpu,
        }
    }

    /// What the publishers did.
    #[derive(Default)]
    struct Published {
        accepted: usize,
        failed: usize,
        first_error: Option<String>,
        recipients: u64,
        request_latency: Histogram,
        started_ns: u64,
    }

    impl Published {
        fn fail(&mut self, error: String) {
            self.failed += 1;
            self.first_error.get_or_insert(error);
        }
    }

    /// Publishes `spec.events` events from `publishers` keep-alive connections,
    /// at `spec.rate` per second or as fast as they can.
    async fn publish(
        port: u16,
        admin: &str,
        spec: &RunSpec,
        publishers: usize,
        deadline: Instant,
    ) -> Published {
        let next = Rc::new(Cell::new(0));
        let published = Rc::new(RefCell::new(Published {
            started_ns: unix_nanos(),
            ..Published::default()
        }));
        let started = Instant::now();
        let tasks: Vec<_> = (0..publishers.min(spec.events))
            .map(|_| {
                tokio::task::spawn_local(publisher(
                    port,
                    admin.to_owned(),
                    spec.clone(),
                    next.clone(),
                    published.clone(),
                    started,
                    deadline,
                ))
            })
            .collect();
        for task in tasks {
            if task.await.is_err() {
                published
                    .borrow_mut()
                    .fail("a publisher task panicked".into());
            }
        }
        published.take()
    }

    async fn publisher(
        port: u16,
        admin: String,
        spec: RunSpec,
        next: Rc<Cell<usize>>,
        published: Rc<RefCell<Published>>,
        started: Instant,
        deadline: Instant,
    ) {
        let mut connection = match HttpConnection::open(port).await {
            Ok(connection) => connection,
            Err(error) => return published.borrow_mut().fail(error),
        };
        loop {
            let seq = next.get();
            if seq >= spec.events {
                return;
            }
            next.set(seq + 1);
            if let Some(rate) = spec.rate {
                sleep_until(started + Duration::from_secs_f64(seq as f64 / rate)).await;
            }
            let request = PublishRequest::new(seq, &spec, &admin);
            let sent = Instant::now();
            let outcome = timeout_at(
                deadline,
                connection.request(
                    "POST",
                    &request.path,
                    &request.headers,
                    Some((request.content_type, &request.body)),
                ),
            )
            .await;
            // Whether the connection must be replaced (its state is unknown
            // after an error); decided before awaiting again.
            let reconnect = {
                let mut record = published.borrow_mut();
                match outcome {
                    Ok(Ok(response)) if accepted(spec.against, response.status) => {
                        record.accepted += 1;
                        record
                            .request_latency
                            .record(sent.elapsed().as_micros() as u64);
                        match recipients(spec.against, &response.body) {
                            Ok(recipients) => record.recipients += recipients,
                            Err(e) => record.fail(e),
                        }
                        false
                    }
                    Ok(Ok(response)) => {
                        record.fail(format!(
                            "POST {} answered {}: {}",
                            request.path,
                            response.status,
                            response.excerpt()
                        ));
                        false
                    }
                    Ok(Err(error)) => {
                        record.fail(error);
                        true
                    }
                    Err(_) => {
                        return record.fail("the run's timeout passed while publishing".into());
                    }
                }
            };
            if reconnect {
                match HttpConnection::open(port).await {
                    Ok(fresh) => connection = fresh,
                    Err(error) => return published.borrow_mut().fail(error),
                }
            }
        }
    }

    /// The part of a 202 answer the tool checks.
    #[derive(Deserialize)]
    struct Accepted {
        recipients: u64,
    }

    /// Whether a publish was taken: Herald answers 202; nchan 201 when the
    /// channel has subscribers and 202 when the message was only stored.
    pub(crate) fn accepted(against: Against, status: u16) -> bool {
        match against {
            Against::Herald => status == 202,
            Against::Nchan => status == 201 || status == 202,
        }
    }

    /// The recipients an accepted publish reports: Herald's `recipients`,
    /// nchan's `active subscribers`.
    pub(crate) fn recipients(against: Against, body: &[u8]) -> Result<u64, String> {
        match against {
            Against::Herald => serde_json::from_slice::<Accepted>(body)
                .map(|accepted| accepted.recipients)
                .map_err(|e| format!("the 202 answer is unreadable: {e}")),
            Against::Nchan => nchan::subscribers_in_answer(body).ok_or_else(|| {
                format!(
                    "the nchan answer names no active subscribers: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            }),
        }
    }

    /// One publish request: one event, for everyone or for one user.
    pub(crate) struct PublishRequest {
        pub path: String,
        pub headers: Vec<String>,
        pub content_type: &'static str,
        pub body: Vec<u8>,
    }

    /// The body of `POST /api/send`, its fields in this order.
    #[derive(Serialize)]
    struct SendBody<'a> {
        event: &'a str,
        data: &'a Stamp,
        /// The one user a targeted event is for; absent for a global event.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    }

    impl PublishRequest {
        /// Herald: `POST /api/send` with the admin token and
        /// `{"event":"bench","data":{"seq":…,"sent_ns":…}}` (scenario 7:
        /// `{"event":"tick","data":{"seq":…,"ts_us":…}}`), and `"user"` when
        /// targeted. nchan: `POST /pub/<channel>` (`bench`, or the user's),
        /// the same data as the body, and the event name in
        /// `X-EventSource-Event`, so streams receive the same `event:` as from
        /// Herald. The data's time is now, as the request is about to be written.
        pub fn new(seq: usize, spec: &RunSpec, admin: &str) -> Self {
            Self::at(seq, spec, admin, unix_nanos())
        }

        /// The request for event `seq` sent at `now_ns` (Unix nanoseconds).
        pub fn at(seq: usize, spec: &RunSpec, admin: &str, now_ns: u64) -> Self {
            let data = spec.payload.stamp(seq as u64, now_ns);
            let event = spec.payload.event_name();
            let user = seq % spec.connections.max(1);
            match spec.against {
                Against::Herald => Self {
                    path: "/api/send".into(),
                    headers: vec![wire::bearer(admin)],
                    content_type: "application/json",
                    body: serde_json::to_vec(&SendBody {
                        event,
                        data: &data,
                        user: (spec.target == Target::Users).then(|| user_of(user)),
                    })
                    .expect("a publish body always serializes"),
                },
                Against::Nchan => Self {
                    path: format!("/pub/{}", nchan::channel(spec.target, user)),
                    headers: vec![format!("X-EventSource-Event: {event}")],
                    content_type: "application/json",
                    body: serde_json::to_vec(&data).expect("a stamp always serializes"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::orchestrator::{accepted, herald_env, plans, recipients, PublishRequest};
    use super::wire::{parse_head, BodyDecoder, ChunkedDecoder, Head};
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_bodies_decode_chunked_with_a_length_or_until_close() {
        let head = |raw: &[u8]| parse_head(raw).unwrap();
        // nchan's eventsource answer: neither chunked nor a length.
        let mut until_close = BodyDecoder::for_head(&head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: keep-alive",
        ));
        let mut body = Vec::new();
        assert!(!until_close.decode(b": hi\n\n", &mut body).unwrap());
        assert!(!until_close.decode(b"0\r\n\r\n", &mut body).unwrap());
        assert_eq!(body, b": hi\n\n0\r\n\r\n");

        let mut length = BodyDecoder::for_head(&head(b"HTTP/1.1 200 OK\r\nContent-Length: 6"));
        let mut body = Vec::new();
        assert!(!length.decode(b"abc", &mut body).unwrap());
        assert!(length.decode(b"defXYZ", &mut body).unwrap());
        assert_eq!(body, b"abcdef");

        let mut chunked =
            BodyDecoder::for_head(&head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"));
        let mut body = Vec::new();
        assert!(!chunked.decode(b"3\r\n: x\r\n", &mut body).unwrap());
        assert!(chunked.decode(b"0\r\n\r\n", &mut body).unwrap());
        assert_eq!(body, b": x");
    }

    #[test]
    fn connection_close_is_read_from_the_head() {
        assert!(
            parse_head(b"HTTP/1.1 201 Created\r\nConnection: close")
                .unwrap()
                .close
        );
        assert!(
            !parse_head(b"HTTP/1.1 201 Created\r\nConnection: keep-alive")
                .unwrap()
                .close
        );
    }

    #[test]
    fn the_nginx_configuration_has_every_setting_the_comparison_relies_on() {
        let dir = Path::new("/tmp/run-dir");
        let module = Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so");
        let config = nchan::config(&nchan::Settings {
            module,
            dir,
            port: 41234,
            ping_interval: None,
        });
        for line in [
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;",
            "worker_processes 1;",
            "worker_rlimit_nofile 20000;",
            "worker_connections 21000;",
            "pid /tmp/run-dir/nginx.pid;",
            "access_log off;",
            "keepalive_requests 1000000;",
            "client_body_temp_path /tmp/run-dir/client_body;",
            "nchan_shared_memory_size 256m;",
            "nchan_message_buffer_length 1000;",
            "nchan_message_timeout 24h;",
            "listen 127.0.0.1:41234;",
            "location ~ ^/sub/(\\w+)$ {",
            "nchan_subscriber eventsource;",
            "location ~ ^/pub/(\\w+)$ {",
            "nchan_publisher;",
            "location = /nchan_status {",
            "nchan_stub_status;",
        ] {
            assert!(
                config.lines().any(|l| l.trim() == line),
                "{line:?} missing from\n{config}"
            );
        }
        assert_eq!(config.matches("nchan_channel_id $1;").count(), 2);
        assert!(!config.contains("ping"));
        // Braces balance: no placeholder was left unescaped.
        assert_eq!(config.matches('{').count(), config.matches('}').count());

        let config = nchan::config(&nchan::Settings {
            module,
            dir,
            port: 41234,
            ping_interval: Some(1),
        });
        assert!(config.contains("nchan_eventsource_ping_interval 1;"));
        assert!(config.contains("nchan_eventsource_ping_comment \"heartbeat\";"));
    }

    #[test]
    fn nchan_answers_are_read() {
        let status = nchan::parse_status(
            "total published messages: 200\nstored messages: 200\nshared memory used: 116K\n\
             subscribers: 50\nnchan version: 1.3.6\n",
        );
        assert_eq!(status["subscribers"], "50");
        assert_eq!(status["shared memory used"], "116K");
        assert_eq!(status["nchan version"], "1.3.6");
        assert_eq!(status.len(), 5);

        let answer = b"queued messages: 2\nlast requested: 0 sec. ago\nactive subscribers: 17\n\
                       last message id: 1796171947:1";
        assert_eq!(nchan::subscribers_in_answer(answer), Some(17));
        assert_eq!(nchan::subscribers_in_answer(b"queued messages: 1"), None);
        assert_eq!(recipients(Against::Nchan, answer), Ok(17));
        assert!(recipients(Against::Nchan, b"oops").is_err());
        assert_eq!(
            recipients(Against::Herald, br#"{"recipients":3,"id":"x"}"#),
            Ok(3)
        );

        assert!(accepted(Against::Nchan, 201) && accepted(Against::Nchan, 202));
        assert!(!accepted(Against::Nchan, 403) && !accepted(Against::Herald, 201));
        assert!(accepted(Against::Herald, 202));
    }

    #[test]
    fn publish_requests_fit_each_server() {
        let spec = RunSpec {
            target: Target::Users,
            against: Against::Nchan,
            ..RunSpec::new("test", 10, 100)
        };
        let request = PublishRequest::new(13, &spec, "token");
        assert_eq!(request.path, "/pub/u3");
        assert_eq!(request.headers, ["X-EventSource-Event: bench"]);
        let stamp: Stamp = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(stamp.seq, 13);
        assert!(stamp.sent_ns.is_some_and(|ns| ns > 0));
        assert_eq!(stamp.ts_us, None);

        let everyone = RunSpec {
            target: Target::Everyone,
            ..spec.clone()
        };
        assert_eq!(PublishRequest::new(13, &everyone, "t").path, "/pub/bench");

        let herald = RunSpec {
            against: Against::Herald,
            ..spec
        };
        let request = PublishRequest::new(13, &herald, "token");
        assert_eq!(request.path, "/api/send");
        assert_eq!(request.headers, ["Authorization: Bearer token"]);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["user"], "u3");
        assert_eq!(body["event"], "bench");
        assert_eq!(body["data"]["seq"], 13);

        // Streams subscribe where their events are published.
        assert_eq!(nchan::channel(Target::Users, 3), "u3");
        assert_eq!(nchan::channel(Target::Everyone, 3), "bench");
    }

    #[test]
    fn parent_pids_are_read_from_proc_stat() {
        let stat = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194624 0 0 0 0 1 2";
        assert_eq!(system::parent_of(stat), Some(4241));
        assert_eq!(system::parent_of("garbage"), None);
        // This process is its parent's child.
        let me = std::process::id();
        let parent = system::parent_of(&std::fs::read_to_string("/proc/self/stat").unwrap());
        assert!(system::children(parent.unwrap()).contains(&me));
    }

    #[test]
    fn the_comparison_runs_each_workload_on_both_servers() {
        let runs = comparison_runs();
        let summary: Vec<(Workload, Against, usize, usize)> = runs
            .iter()
            .map(|(w, spec)| (*w, spec.against, spec.connections, spec.events))
            .collect();
        use Against::{Herald, Nchan};
        use Workload::*;
        assert_eq!(
            summary,
            [
                (PerUser, Herald, 1_000, 20_000),
                (PerUser, Nchan, 1_000, 20_000),
                (PerUserMemory, Herald, 1_000, 20_000),
                (FanOut1k, Herald, 1_000, 200),
                (FanOut1k, Nchan, 1_000, 200),
                (FanOut10k, Herald, 10_000, 200),
                (FanOut10k, Nchan, 10_000, 200),
                (FanOut10kOneUser, Herald, 10_000, 200),
                (FanOut10kOneUser, Nchan, 10_000, 200),
                (Idle, Herald, 10_000, 0),
                (Idle, Nchan, 10_000, 0),
                (Connect, Herald, 10_000, 0),
                (Connect, Nchan, 10_000, 0),
            ]
        );
        assert_eq!(runs[2].1.server_env, [("STORAGE".into(), "memory".into())]);
        assert!(runs
            .iter()
            .all(|(w, spec)| matches!(w, PerUserMemory | FanOut10kOneUser)
                || spec.server_env.is_empty()));
        // Scenario 7's runs keep its own settings on both servers.
        for (_, spec) in runs.iter().filter(|(w, _)| *w == FanOut10kOneUser) {
            assert_eq!(
                spec.server_env,
                [("MAX_CONNECTIONS_PER_USER".into(), "20000".into())]
            );
            assert_eq!(spec.heartbeat_interval, Some(15.0));
            assert_eq!(spec.publishers, Some(1));
            assert_eq!(spec.streams, Streams::OneUserWildcard);
            assert_eq!(spec.payload, Payload::Tick);
            assert_eq!(spec.target, Target::Everyone);
            assert_eq!(spec.rate, None);
        }
        assert!(runs
            .iter()
            .filter(|(w, _)| *w != FanOut10kOneUser)
            .all(|(_, spec)| spec.streams == Streams::OwnUser
                && spec.payload == Payload::Bench
                && spec.publishers.is_none()));
        assert_eq!(runs[0].1.target, Target::Users);
        assert_eq!(runs[3].1.rate, Some(50.0));
        assert_eq!(runs[5].1.rate, None);
    }

    #[test]
    fn the_comparison_table_sets_figures_side_by_side() {
        let figures = |rate: f64, cpu: f64| Figures {
            deliveries_per_sec: Some(rate),
            cpu_us_per_delivery: Some(cpu),
            p99_ms: Some(4.0),
            bytes_per_connection: Some(12_288.0),
            connect_rate_per_sec: Some(12_800.0),
            expected: 20_000,
            lost: 0,
            failed_streams: 0,
            dropped_streams: 0,
        };
        let runs = [
            (
                Workload::PerUser,
                Against::Herald,
                Some(figures(15_000.0, 60.0)),
            ),
            (
                Workload::PerUser,
                Against::Nchan,
                Some(figures(30_000.0, 30.0)),
            ),
            (
                Workload::PerUserMemory,
                Against::Herald,
                Some(figures(20_000.0, 45.0)),
            ),
            (Workload::FanOut1k, Against::Herald, None),
            (
                Workload::FanOut1k,
                Against::Nchan,
                Some(Figures {
                    lost: 5,
                    ..figures(1.0, 2.0)
                }),
            ),
        ];
        let table = comparison_table(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| workload | Herald | nchan | Herald / nchan |");
        assert_eq!(lines[1], "| --- | --- | --- | --- |");
        assert_eq!(
            lines[2],
            "| per-user delivery, 1,000 users, 20,000 events: events/s | 15,000 | 30,000 | 0.50 |"
        );
        assert_eq!(
            lines[3],
            "| per-user delivery: server CPU µs/event | 60.00 | 30.00 | 2.00 |"
        );
        // The memory line is compared with the same nchan run.
        assert!(
            lines[4].ends_with("| 20,000 | 30,000 | 0.67 |"),
            "{}",
            lines[4]
        );
        assert!(
            lines[6].ends_with("| run failed | 2.00 | — |"),
            "{}",
            lines[6]
        );
        // Workloads not run show a dash.
        assert!(lines[8].ends_with("| — | — | — |"), "{}", lines[8]);
        assert_eq!(
            lines.last().unwrap(),
            &"| loss, all runs above | 0 of 40,000 lost; 0 stream(s) failed or dropped; \
              1 run(s) failed | 5 of 40,000 lost; 0 stream(s) failed or dropped | — |"
        );
        // Scenario 7's rows follow scenario 2's; not run, they show dashes.
        assert!(
            lines[9].starts_with("| fan-out, 10,000 streams of one user, 200 global events")
                && lines[9].ends_with("| — | — | — |"),
            "{}",
            lines[9]
        );
        assert!(lines[10].contains("one user: server CPU µs/delivery"));
        assert_eq!(lines.len(), 2 + 11 + 1);
    }

    /// Scenario 7's one run, as `--scenario 7` gives it.
    fn scenario_7() -> RunSpec {
        let mut runs = scenario_runs(7, None);
        assert_eq!(runs.len(), 1);
        runs.remove(0)
    }

    fn options() -> Options {
        Options {
            herald: None,
            nchan: None,
            secret: "test-secret".into(),
            publishers: 4,
            connect_concurrency: 256,
            per_process: 10_000,
            source_addresses: 64,
            server_core: 0,
            tool_core: 1,
            timeout: Duration::from_secs(120),
        }
    }

    #[test]
    fn scenario_7_is_one_users_fan_out_from_one_publisher() {
        let spec = scenario_7();
        assert!(spec
            .label
            .starts_with("scenario 7: 10,000 streams of one user"));
        assert_eq!((spec.connections, spec.events), (10_000, 200));
        assert_eq!((spec.target, spec.rate), (Target::Everyone, None));
        assert_eq!(spec.publishers, Some(1));
        assert_eq!(spec.heartbeat_watch, None);
        // The started Herald's environment: --server-env first, then the run's.
        let base = [("RUST_LOG".to_owned(), "debug".to_owned())];
        let env = herald_env(&base, &spec);
        assert_eq!(
            env,
            [
                ("RUST_LOG".into(), "debug".into()),
                ("MAX_CONNECTIONS_PER_USER".into(), "20000".into()),
                ("HEARTBEAT_INTERVAL".into(), "15".into()),
            ]
        );
        // --heartbeat-interval sets it, as for scenario 4b.
        assert_eq!(scenario_runs(7, Some(2.5))[0].heartbeat_interval, Some(2.5));
        // Scenario 2 keeps its own shape.
        let two = scenario_runs(2, None).remove(0);
        assert_eq!(
            (two.streams, two.payload, two.publishers),
            (Streams::OwnUser, Payload::Bench, None)
        );
        assert!(herald_env(&[], &two).is_empty());
    }

    #[test]
    fn scenario_7_publishes_tick_with_ts_us() {
        let now_ns = 1_765_000_000_123_456_789;
        let herald = scenario_7();
        let request = PublishRequest::at(41, &herald, "admin-token", now_ns);
        assert_eq!(request.path, "/api/send");
        assert_eq!(request.headers, ["Authorization: Bearer admin-token"]);
        assert_eq!(request.content_type, "application/json");
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            r#"{"event":"tick","data":{"seq":41,"ts_us":1765000000123456}}"#
        );

        let nchan = RunSpec {
            against: Against::Nchan,
            ..herald
        };
        let request = PublishRequest::at(41, &nchan, "admin-token", now_ns);
        assert_eq!(request.path, "/pub/bench");
        assert_eq!(request.headers, ["X-EventSource-Event: tick"]);
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            r#"{"seq":41,"ts_us":1765000000123456}"#
        );

        // The `now` variant stamps the current time, in microseconds.
        let before = unix_nanos() / 1000;
        let body: Value =
            serde_json::from_slice(&PublishRequest::new(0, &scenario_7(), "t").body).unwrap();
        let ts_us = body["data"]["ts_us"].as_u64().unwrap();
        assert!(ts_us >= before && ts_us <= unix_nanos() / 1000);
        assert!(body["data"].get("sent_ns").is_none() && body.get("user").is_none());

        // Scenario 2's body has its `bench` shape.
        let two = scenario_runs(2, None).remove(0);
        assert_eq!(
            String::from_utf8(PublishRequest::at(5, &two, "t", 7_000).body).unwrap(),
            r#"{"event":"bench","data":{"seq":5,"sent_ns":7000}}"#
        );
    }

    #[test]
    fn scenario_7_streams_share_one_wildcard_token_and_ask_for_no_channel() {
        let server: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        let options = Options {
            per_process: 4,
            ..options()
        };
        let spec = RunSpec {
            connections: 10,
            ..scenario_7()
        };
        let shard_plans = plans(&spec, &options, 4100);
        assert_eq!(shard_plans.len(), 3);
        let plan = &shard_plans[1];
        assert_eq!(
            (plan.streams, plan.payload, plan.target),
            (Streams::OneUserWildcard, Payload::Tick, Target::Everyone)
        );
        // The plan survives its trip to the shard as JSON.
        let plan: ShardPlan = serde_json::from_str(&serde_json::to_string(plan).unwrap()).unwrap();
        assert_eq!(plan.streams, Streams::OneUserWildcard);
        assert_eq!(plan.payload, Payload::Tick);

        let request = shard::stream_request(&plan, plan.first_connection, server, "tok");
        assert_eq!(
            request,
            "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:4100\r\n\
             Authorization: Bearer tok\r\nAccept: text/event-stream\r\n\r\n"
        );

        let tokens = shard::tokens(&plan, &options.secret).unwrap();
        assert_eq!(tokens.len(), plan.connections);
        assert!(tokens.iter().all(|token| Rc::ptr_eq(token, &tokens[0])));
        let claims = claims_of(&tokens[0], &options.secret);
        assert_eq!(claims["sub"], "u0");
        assert_eq!(claims["channels"], json!(["*"]));
        assert_eq!(claims["roles"], json!([]));

        // Against nchan, the streams of a global run subscribe to `bench`
        // and carry no token.
        let nchan_plan = ShardPlan {
            against: Against::Nchan,
            ..plan.clone()
        };
        assert!(shard::stream_request(&nchan_plan, 5, server, "")
            .starts_with("GET /sub/bench HTTP/1.1\r\n"));
        assert!(shard::tokens(&nchan_plan, &options.secret)
            .unwrap()
            .iter()
            .all(|token| token.is_empty()));
    }

    #[test]
    fn other_runs_open_one_user_per_stream_on_bench() {
        let server: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        let spec = RunSpec::new("test", 3, 10);
        let plan = plans(&spec, &options(), 4100).remove(0);
        assert!(shard::stream_request(&plan, 2, server, "tok")
            .starts_with("GET /api/events?channel=bench HTTP/1.1\r\n"));
        let tokens = shard::tokens(&plan, "test-secret").unwrap();
        for (index, token) in tokens.iter().enumerate() {
            let claims = claims_of(token, "test-secret");
            assert_eq!(claims["sub"], user_of(index));
            assert_eq!(claims["channels"], json!(["bench"]));
        }
    }

    /// The claims of a token the tool minted, its signature checked.
    fn claims_of(token: &str, secret: &str) -> Value {
        use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
        decode::<Value>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims
    }

    #[test]
    fn stamps_are_read_in_nanoseconds_or_microseconds() {
        let frame = |event: &str, data: &str| Frame {
            id: None,
            event: event.into(),
            data: data.into(),
        };
        // Both shapes parse; `ts_us` reads as nanoseconds.
        let nanos: Stamp = serde_json::from_str(r#"{"seq":3,"sent_ns":1500}"#).unwrap();
        assert_eq!((nanos.seq, nanos.sent_at_ns()), (3, Some(1500)));
        let micros: Stamp = serde_json::from_str(r#"{"seq":4,"ts_us":1500}"#).unwrap();
        assert_eq!((micros.seq, micros.sent_at_ns()), (4, Some(1_500_000)));
        let neither: Stamp = serde_json::from_str(r#"{"seq":5}"#).unwrap();
        assert_eq!(neither.sent_at_ns(), None);

        assert_eq!(
            read_frame(Payload::Tick, &frame("tick", r#"{"seq":7,"ts_us":2}"#)),
            Reading::Event {
                seq: 7,
                sent_ns: 2_000
            }
        );
        assert_eq!(
            read_frame(Payload::Bench, &frame("bench", r#"{"seq":7,"sent_ns":2}"#)),
            Reading::Event { seq: 7, sent_ns: 2 }
        );
        // Either unit is accepted whatever the run's event name.
        assert_eq!(
            read_frame(Payload::Bench, &frame("bench", r#"{"seq":1,"ts_us":2}"#)),
            Reading::Event {
                seq: 1,
                sent_ns: 2_000
            }
        );
        // Each run counts only its own event name.
        assert_eq!(
            read_frame(Payload::Tick, &frame("bench", r#"{"seq":7,"sent_ns":2}"#)),
            Reading::Other
        );
        assert_eq!(
            read_frame(Payload::Bench, &frame("tick", r#"{"seq":7,"ts_us":2}"#)),
            Reading::Other
        );
        for data in [r#"{"seq":7}"#, "not json", r#"{"ts_us":2}"#] {
            assert_eq!(
                read_frame(Payload::Tick, &frame("tick", data)),
                Reading::Malformed,
                "{data}"
            );
        }
    }

    #[test]
    fn figures_are_grouped_by_thousands() {
        assert_eq!(format_figure(1_234_567.8, 0), "1,234,568");
        assert_eq!(format_figure(999.0, 0), "999");
        assert_eq!(format_figure(1000.0, 2), "1,000.00");
        assert_eq!(format_figure(12.345, 1), "12.3");
        assert_eq!(format_figure(-1500.0, 0), "-1,500");
        assert_eq!(format_figure(0.0, 0), "0");
    }

    #[test]
    fn scaling_keeps_at_least_one() {
        assert_eq!(scaled(10_000, 0.05), 500);
        assert_eq!(scaled(200, 0.001), 1);
        assert_eq!(scaled(0, 0.5), 0);
        assert_eq!(scaled(1_000, 1.0), 1_000);
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_split() {
        let wire = b"d\r\nretry: 5000\n\n\r\n5;ext=1\r\n:\n\nab\r\n0\r\nX-Trailer: y\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            let first = decoder.decode(&wire[..split], &mut body).unwrap();
            let done = decoder.decode(&wire[split..], &mut body).unwrap();
            assert!(!first || split == wire.len());
            assert!(done, "split at {split}");
            assert_eq!(body, b"retry: 5000\n\n:\n\nab", "split at {split}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [&b"zz\r\n"[..], b"\r\n", b"2\r\nabX", b"fffffffffffff\r\n"] {
            let mut body = Vec::new();
            assert!(
                ChunkedDecoder::default().decode(wire, &mut body).is_err(),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn response_heads_give_status_and_framing() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked",
        )
        .unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                content_length: None,
                chunked: true,
                close: false
            }
        );
        let head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 42").unwrap();
        assert_eq!((head.status, head.content_length), (429, Some(42)));
        assert!(parse_head(b"garbage").is_err());
    }

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let mut histogram = Histogram::default();
        for value in 1..=100_000 {
            histogram.record(value);
        }
        for (q, exact) in [(0.5, 50_000.0), (0.99, 99_000.0)] {
            let got = histogram.quantile(q) as f64;
            assert!((got - exact).abs() / exact < 0.01, "q {q}: {got}");
        }
        assert_eq!(histogram.quantile(1.0), 100_000);
        let mut merged = Histogram::default();
        merged.merge(&histogram.to_data());
        merged.merge(&histogram.to_data());
        assert_eq!(merged.count, 200_000);
        assert_eq!(merged.quantile(0.5), histogram.quantile(0.5));
    }

    #[test]
    fn round_robin_expectations_add_up() {
        let total: u64 = (0..1000)
            .map(|index| expected_events(Target::Users, 2_500, 1000, index))
            .sum();
        assert_eq!(total, 2_500);
        assert_eq!(expected_events(Target::Users, 2_500, 1000, 499), 3);
        assert_eq!(expected_events(Target::Users, 2_500, 1000, 500), 2);
        assert_eq!(expected_events(Target::Everyone, 200, 1000, 7), 200);
    }
}
