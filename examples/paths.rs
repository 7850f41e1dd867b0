//! `paths`: instruction counts of Herald's hot paths, for the CI guard.
//!
//! Each path runs the real `herald` binary under `valgrind --tool=callgrind
//! --fair-sched=yes` (round-robin threads: a smaller spread than valgrind's
//! default lock, which `--fair-sched no` selects), sets up its streams over
//! plain HTTP/1.1, zeroes callgrind's counters (`callgrind_control --zero`),
//! runs the measured phase, waits until every stream has received every event
//! it should, dumps the counters (`callgrind_control --dump`) and reads the
//! instructions executed (`Ir`) by the whole server process in that window:
//! the HTTP workers, the Broadcaster's thread and the socket writes (their
//! user-space side; the kernel's work is not counted). Instruction counts do
//! not depend on the machine's speed, so a committed baseline can be checked
//! on any machine; `.ci/instructions` does that (see docs/performance.md,
//! "The instruction-count guard").
//!
//! ```sh
//! cargo build --release --bin herald --example paths
//! target/release/examples/paths                       # every path once
//! target/release/examples/paths --path fanout --runs 3
//! target/release/examples/paths --baseline benches/instructions.json --margin 20
//! ```
//!
//! | Path       | Set-up | Measured | Unit |
//! |------------|--------|----------|------|
//! | `fanout`   | 500 streams of user `u0`, one token `channels: ["*"]` | 50 global `tick` events, one request each on one keep-alive connection, each after the previous 202 | delivery (25,000) |
//! | `targeted` | 500 users, one stream each, own token | 1,000 events, each to one user (`u<i>`, round robin), one request each, sequential on one keep-alive connection | delivery (1,000) |
//! | `connect`  | 16 warm-up streams | 500 streams connecting, each with its own token (own user), 32 in flight, until each has its `connected` event | connect (500) |
//!
//! Before zeroing, `fanout` and `targeted` publish one global `warmup` event
//! on the publisher's connection and wait until every stream has it, so the
//! measured phase starts on a connection and streams that have all been used
//! once. The server runs with `WORKERS=1` whatever the machine's cores (the
//! worker count changes the cost, and the project's benchmarks run one
//! worker), `STORAGE=memory`, `HEARTBEAT_INTERVAL=600` (no heartbeat in the
//! window), `RUST_LOG=warn,herald=info`, a fixed secret, in a fresh directory
//! (also its `DATA_DIR`) with a cleared environment, so neither the caller's
//! environment nor a `.env` file changes what is measured.
//!
//! The report: a table on stderr, one JSON object on stdout. With `--runs N`
//! every path runs N times (interleaved) and the report gives each run, the
//! median and the spread ((max − min) / median). With `--baseline FILE` the
//! medians are compared against a baseline written by `--write-baseline FILE`;
//! the tool exits 1 when a path costs more than `--margin` percent above its
//! baseline.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use herald::sse;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::{timeout_at, Instant};

/// The server's signing secret (it listens on loopback only).
const SECRET: &str = "herald-instruction-guard-secret-not-for-production";
/// Token lifetime: far longer than any run.
const TOKEN_TTL_SECS: u64 = 3600;
/// Streams of `fanout` and `targeted`; connects of `connect`.
const STREAMS: usize = 500;
/// Global events published in `fanout`.
const FANOUT_EVENTS: usize = 50;
/// Events published in `targeted`, one user each, round robin.
const TARGETED_EVENTS: usize = 1000;
/// Connection attempts in flight at once (set-up and `connect`).
const CONNECT_CONCURRENCY: usize = 32;
/// Streams `connect` opens before zeroing, so first-use costs stay out.
const CONNECT_WARMUP: usize = 16;
/// Name of the event each path's streams count.
const TICK: &str = "tick";
const NOTE: &str = "note";
/// Name of the global event sent before zeroing.
const WARMUP: &str = "warmup";
/// Longest HTTP response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Server log lines kept for error messages.
const LOG_LINES_KEPT: usize = 60;
/// The line a started server logs once it listens.
const LISTENING: &str = "Herald listening on http://127.0.0.1:";

#[derive(Parser, Debug)]
#[command(
    name = "paths",
    about = "Instruction counts (callgrind Ir) of Herald's hot paths, whole server process"
)]
struct Cli {
    /// The herald binary, run under valgrind for each path.
    #[arg(long, value_name = "PATH", default_value = "target/release/herald")]
    server: PathBuf,
    /// Path to measure (repeatable); all of them when not given.
    #[arg(long = "path", value_enum)]
    paths: Vec<PathName>,
    /// Runs of each path (interleaved); the report gives the median and the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Run valgrind with `--fair-sched=yes` (`yes`, round-robin threads: the
    /// smaller spread) or with its default lock (`no`).
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    fair_sched: YesNo,
    /// Extra valgrind option (repeatable), for instance `--separate-threads=yes`
    /// (one dump file per thread; the tool adds them up). It may change the count.
    #[arg(
        long = "valgrind-arg",
        value_name = "OPTION",
        allow_hyphen_values = true
    )]
    valgrind_args: Vec<String>,
    /// The valgrind binary.
    #[arg(long, value_name = "PATH", default_value = "valgrind")]
    valgrind: PathBuf,
    /// The callgrind_control script.
    #[arg(long, value_name = "PATH", default_value = "callgrind_control")]
    callgrind_control: PathBuf,
    /// Extra server environment, `KEY=VALUE` (repeatable; it changes the cost).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Limit for each step (start, set-up, measured phase, dump), in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Keep each run's directory (its callgrind files) and print where.
    #[arg(long)]
    keep: bool,
    /// Compare the medians against this baseline; exit 1 on a regression.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Percent above its baseline a path may cost before the comparison fails
    /// (and below it before it suggests updating the baseline).
    #[arg(long, default_value_t = 20.0)]
    margin: f64,
    /// Write the medians as a new baseline to this file.
    #[arg(long, value_name = "FILE")]
    write_baseline: Option<PathBuf>,
    /// The compiler that built the server (`rustc --version`), for the baseline
    /// and the comparison's warning when it differs.
    #[arg(long, value_name = "VERSION")]
    rustc: Option<String>,
    /// The commit measured, for the baseline.
    #[arg(long, value_name = "COMMIT")]
    commit: Option<String>,
    /// How the baseline was produced (the command), for the baseline.
    #[arg(long, value_name = "TEXT")]
    produced_by: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum YesNo {
    Yes,
    No,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum PathName {
    Fanout,
    Targeted,
    Connect,
}

impl PathName {
    const ALL: [PathName; 3] = [PathName::Fanout, PathName::Targeted, PathName::Connect];

    fn name(self) -> &'static str {
        match self {
            PathName::Fanout => "fanout",
            PathName::Targeted => "targeted",
            PathName::Connect => "connect",
        }
    }

    /// What one unit of the path is.
    fn unit(self) -> &'static str {
        match self {
            PathName::Fanout | PathName::Targeted => "delivery",
            PathName::Connect => "connect",
        }
    }

    /// Units in the measured phase.
    fn units(self) -> u64 {
        match self {
            PathName::Fanout => (STREAMS * FANOUT_EVENTS) as u64,
            PathName::Targeted => TARGETED_EVENTS as u64,
            PathName::Connect => STREAMS as u64,
        }
    }

    fn describe(self) -> String {
        match self {
            PathName::Fanout => format!(
                "{STREAMS} streams of u0 (one token, channels [\"*\"]); {FANOUT_EVENTS} global \
                 events, sequential on one keep-alive connection"
            ),
            PathName::Targeted => format!(
                "{STREAMS} users, one stream each; {TARGETED_EVENTS} events to one user each, \
                 round robin, sequential on one keep-alive connection"
            ),
            PathName::Connect => format!(
                "{STREAMS} streams connecting, own token each, {CONNECT_CONCURRENCY} in flight"
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("paths: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let server = std::fs::canonicalize(&cli.server)
        .map_err(|e| format!("the server binary {}: {e}", cli.server.display()))?;
    let mut paths = if cli.paths.is_empty() {
        PathName::ALL.to_vec()
    } else {
        cli.paths.clone()
    };
    paths.sort();
    paths.dedup();
    let valgrind_version = command_output(Command::new(&cli.valgrind).arg("--version"))
        .map_err(|e| format!("{} --version: {e}", cli.valgrind.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let mut results: BTreeMap<PathName, Vec<RunResult>> = BTreeMap::new();
    let started = std::time::Instant::now();
    for round in 1..=cli.runs {
        for &path in &paths {
            eprintln!(
                "paths: {} run {round}/{}: {}",
                path.name(),
                cli.runs,
                path.describe()
            );
            let result = LocalSet::new().block_on(&runtime, measure(cli, &server, path))?;
            eprintln!(
                "paths: {} run {round}: {} Ir, {:.0} Ir/{}; {} body chunks per stream; \
                 measured phase {:.2} s, run {:.1} s",
                path.name(),
                group(result.ir),
                result.ir_per_unit,
                path.unit(),
                result.chunks_per_stream,
                result.measured_s,
                result.wall_s
            );
            results.entry(path).or_default().push(result);
        }
    }
    let summaries: Vec<Summary> = results
        .iter()
        .map(|(&path, runs)| Summary::of(path, runs))
        .collect();
    eprintln!();
    eprint!("{}", summary_table(&summaries, cli.runs));

    let mut report = json!({
        "tool": "paths",
        "server": server.display().to_string(),
        "valgrind": valgrind_version,
        "valgrind_options": valgrind_options(cli, Path::new("<dir>")),
        "server_env": server_env(cli, Path::new("<dir>")).into_iter().collect::<BTreeMap<_, _>>(),
        "runs": cli.runs,
        "wall_s": round(started.elapsed().as_secs_f64(), 1),
        "paths": summaries.iter().map(|s| (s.path.name().to_owned(), s.to_json())).collect::<serde_json::Map<_, _>>(),
    });
    let mut code = ExitCode::SUCCESS;
    if let Some(file) = &cli.baseline {
        let (comparison, failed) = compare(cli, file, &summaries)?;
        report["comparison"] = comparison;
        if failed {
            code = ExitCode::FAILURE;
        }
    }
    if let Some(file) = &cli.write_baseline {
        write_baseline(cli, file, &valgrind_version, &summaries)?;
        eprintln!("paths: wrote the baseline {}", file.display());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(code)
}

// ---------------------------------------------------------------------------
// One measured run
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
struct RunResult {
    ir: u64,
    ir_per_unit: f64,
    /// Body chunks (the server's socket writes) per stream in the measured
    /// phase: 50 ticks in fewer than 50 chunks were coalesced.
    chunks_per_stream: f64,
    /// Callgrind files the dump was read from (one per thread with
    /// `--separate-threads=yes`, else one).
    dump_files: usize,
    /// Wall time of the whole run (start to stop), seconds.
    wall_s: f64,
    /// Wall time of the measured phase, seconds.
    measured_s: f64,
}

async fn measure(cli: &Cli, server_binary: &Path, path: PathName) -> Result<RunResult, String> {
    let began = std::time::Instant::now();
    let step = Duration::from_secs(cli.timeout);
    let dir = fresh_dir(path)?;
    let mut server = Server::start(cli, server_binary, &dir, step)?;
    let outcome = drive(cli, &server, path, step).await;
    server.stop();
    let outcome = outcome.map(|measured| RunResult {
        ir: measured.ir,
        ir_per_unit: round(measured.ir as f64 / path.units() as f64, 1),
        chunks_per_stream: round(measured.chunks as f64 / STREAMS as f64, 2),
        dump_files: measured.files,
        wall_s: round(began.elapsed().as_secs_f64(), 1),
        measured_s: round(measured.seconds, 2),
    });
    match (&outcome, cli.keep) {
        (Err(_), _) | (_, true) => eprintln!("paths: the run's files are in {}", dir.display()),
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    outcome.map_err(|e| format!("{}: {e}\n{}", path.name(), server.log_tail()))
}

/// What a measured phase gave.
struct Measured {
    ir: u64,
    /// Callgrind files the dump was read from.
    files: usize,
    seconds: f64,
    /// Body chunks the streams received in it.
    chunks: u64,
}

/// Sets up, zeroes, runs the measured phase, dumps.
/// Closes every stream before it returns.
async fn drive(
    cli: &Cli,
    server: &Server,
    path: PathName,
    step: Duration,
) -> Result<Measured, String> {
    let mut tasks = Vec::new();
    let outcome = drive_streams(cli, server, path, step, &mut tasks).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        // Cancelled: the task, and its socket, are dropped.
        let _ = task.await;
    }
    outcome
}

async fn drive_streams(
    cli: &Cli,
    server: &Server,
    path: PathName,
    step: Duration,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Measured, String> {
    let port = server.port;
    let streams: Streams = Rc::default();
    let slots = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let open = |token: Rc<str>, expect: Expect| {
        tokio::task::spawn_local(subscribe(
            port,
            token,
            expect,
            streams.clone(),
            slots.clone(),
        ))
    };

    // Set-up.
    let mut publisher = None;
    match path {
        PathName::Fanout => {
            // One token for all, like the browser tabs of one user.
            let token: Rc<str> = mint("u0", false, &["*"])?.into();
            let expect = Expect {
                event: TICK,
                count: FANOUT_EVENTS as u64,
            };
            for _ in 0..STREAMS {
                tasks.push(open(token.clone(), expect));
            }
        }
        PathName::Targeted => {
            for index in 0..STREAMS {
                let token: Rc<str> = mint(&format!("u{index}"), false, &[])?.into();
                let expect = Expect {
                    event: NOTE,
                    count: expected_targeted(index) as u64,
                };
                tasks.push(open(token, expect));
            }
        }
        PathName::Connect => {
            for index in 0..CONNECT_WARMUP {
                let token: Rc<str> = mint(&format!("w{index}"), false, &[])?.into();
                tasks.push(open(token, Expect::NOTHING));
            }
        }
    }
    let deadline = Instant::now() + step;
    let opened = match path {
        PathName::Connect => CONNECT_WARMUP,
        _ => STREAMS,
    };
    streams
        .wait(deadline, "every stream's `connected` event", |s| {
            s.connected.get() == opened
        })
        .await?;
    if path != PathName::Connect {
        let admin = mint("publisher", true, &[])?;
        let mut connection = HttpConnection::open(port, &admin).await?;
        connection
            .publish(&json!({"event": WARMUP, "data": {"seq": 0}}), deadline)
            .await?;
        streams
            .wait(deadline, "every stream's warm-up event", |s| {
                s.warmed.get() == STREAMS
            })
            .await?;
        publisher = Some(connection);
    }

    // Tokens of the measured connects are minted before zeroing.
    let connect_tokens: Vec<Rc<str>> = match path {
        PathName::Connect => (0..STREAMS)
            .map(|index| mint(&format!("u{index}"), false, &[]).map(Rc::from))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };

    // The measured phase.
    callgrind_control(cli, server, "--zero")?;
    streams.measuring.set(true);
    let measured = Instant::now();
    let deadline = measured + step;
    match path {
        PathName::Fanout => {
            let connection = publisher.as_mut().expect("set up");
            for seq in 1..=FANOUT_EVENTS {
                connection
                    .publish(&json!({"event": TICK, "data": {"seq": seq}}), deadline)
                    .await?;
            }
            streams
                .wait(deadline, "every tick on every stream", |s| {
                    s.complete.get() == STREAMS
                })
                .await?;
        }
        PathName::Targeted => {
            let connection = publisher.as_mut().expect("set up");
            for seq in 0..TARGETED_EVENTS {
                let user = format!("u{}", seq % STREAMS);
                connection
                    .publish(
                        &json!({"event": NOTE, "user": user, "data": {"seq": seq}}),
                        deadline,
                    )
                    .await?;
            }
            streams
                .wait(deadline, "every note on its stream", |s| {
                    s.complete.get() == STREAMS
                })
                .await?;
        }
        PathName::Connect => {
            for token in connect_tokens {
                tasks.push(open(token, Expect::NOTHING));
            }
            streams
                .wait(deadline, "every stream's `connected` event", |s| {
                    s.connected.get() == CONNECT_WARMUP + STREAMS
                })
                .await?;
        }
    }
    let measured_s = measured.elapsed().as_secs_f64();
    callgrind_control(cli, server, "--dump=measured")?;
    let (ir, files) = read_dump(&server.dir, server.pid, 1, step)?;
    Ok(Measured {
        ir,
        files,
        seconds: measured_s,
        chunks: streams.chunks.get(),
    })
}

/// Notes a stream of `targeted` receives: one for every `STREAMS` events.
fn expected_targeted(index: usize) -> usize {
    (0..TARGETED_EVENTS)
        .filter(|seq| seq % STREAMS == index)
        .count()
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// What one stream counts: the measured events it should receive.
#[derive(Clone, Copy)]
struct Expect {
    event: &'static str,
    count: u64,
}

impl Expect {
    const NOTHING: Expect = Expect {
        event: "",
        count: 0,
    };
}

/// Progress of every stream of a run.
#[derive(Default)]
struct StreamsState {
    connected: Cell<usize>,
    warmed: Cell<usize>,
    /// Streams that have every measured event they should.
    complete: Cell<usize>,
    /// Measured events received, over all streams.
    received: Cell<u64>,
    /// Body chunks (the server's writes) received, over all streams, since
    /// `measuring` was set.
    chunks: Cell<u64>,
    /// Set when the counters are zeroed.
    measuring: Cell<bool>,
    failure: RefCell<Option<String>>,
    changed: Notify,
}

type Streams = Rc<StreamsState>;

impl StreamsState {
    fn fail(&self, error: String) {
        self.failure.borrow_mut().get_or_insert(error);
        self.changed.notify_one();
    }

    fn progress(&self) -> String {
        format!(
            "{} connected, {} warmed up, {} complete, {} events received",
            self.connected.get(),
            self.warmed.get(),
            self.complete.get(),
            self.received.get()
        )
    }

    /// Waits until `done` holds, a stream fails, or `deadline` passes.
    async fn wait(
        &self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        loop {
            if let Some(error) = self.failure.borrow().clone() {
                return Err(format!("waiting for {what}: a stream failed: {error}"));
            }
            if done(self) {
                return Ok(());
            }
            // notify_one keeps a permit when nobody waits: no wake-up is lost.
            if timeout_at(deadline, self.changed.notified()).await.is_err() {
                return Err(format!(
                    "timed out waiting for {what} ({})",
                    self.progress()
                ));
            }
        }
    }
}

/// One stream: connects (holding a connect slot until `connected`), then
/// reads and counts until it is aborted.
async fn subscribe(
    port: u16,
    token: Rc<str>,
    expect: Expect,
    streams: Streams,
    slots: Rc<Semaphore>,
) {
    if let Err(error) = read_stream(port, &token, expect, &streams, &slots).await {
        streams.fail(error);
    }
}

async fn read_stream(
    port: u16,
    token: &str,
    expect: Expect,
    streams: &StreamsState,
    slots: &Semaphore,
) -> Result<(), String> {
    let slot = slots.acquire().await.map_err(|e| e.to_string())?;
    let socket = connect(port).await?;
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    write_all(&socket, request.as_bytes()).await?;
    let (head, mut pending) = read_head(&socket).await?;
    if head.status != 200 || !head.chunked {
        let body = String::from_utf8_lossy(&pending[..pending.len().min(200)]).into_owned();
        return Err(format!(
            "GET /api/events answered {} (chunked: {}): {body}",
            head.status, head.chunked
        ));
    }
    let mut slot = Some(slot);
    let mut decoder = Chunked::default();
    let mut parser = sse::Parser::new();
    let mut body = Vec::new();
    let mut buffer = vec![0u8; 8192];
    let mut received = 0u64;
    loop {
        body.clear();
        let before = decoder.chunks;
        let ended = decoder.decode(&pending, &mut body)?;
        if streams.measuring.get() {
            streams
                .chunks
                .set(streams.chunks.get() + decoder.chunks - before);
        }
        for frame in parser.feed(&body) {
            if frame.event == "connected" && slot.is_some() {
                slot = None;
                streams.connected.set(streams.connected.get() + 1);
                streams.changed.notify_one();
            } else if frame.event == WARMUP {
                streams.warmed.set(streams.warmed.get() + 1);
                streams.changed.notify_one();
            } else if frame.event == expect.event {
                received += 1;
                streams.received.set(streams.received.get() + 1);
                if received == expect.count {
                    streams.complete.set(streams.complete.get() + 1);
                    streams.changed.notify_one();
                } else if received > expect.count {
                    return Err(format!(
                        "a stream received {received} `{}` events, {} expected",
                        expect.event, expect.count
                    ));
                }
            }
        }
        if ended {
            return Err("the server ended a stream".into());
        }
        let read = read_some(&socket, &mut buffer).await?;
        if read == 0 {
            return Err("the server closed a stream's connection".into());
        }
        pending.clear();
        pending.extend_from_slice(&buffer[..read]);
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 over TCP
// ---------------------------------------------------------------------------

async fn connect(port: u16) -> Result<TcpStream, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let socket = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    socket
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(socket)
}

async fn read_some(socket: &TcpStream, buffer: &mut [u8]) -> Result<usize, String> {
    loop {
        socket
            .readable()
            .await
            .map_err(|e| format!("reading: {e}"))?;
        match socket.try_read(buffer) {
            Ok(read) => return Ok(read),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        socket
            .writable()
            .await
            .map_err(|e| format!("writing: {e}"))?;
        match socket.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("writing: {e}")),
        }
    }
    Ok(())
}

/// What the driver needs from a response head.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
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
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                parsed.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                parsed.chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
    }
    Ok(parsed)
}

/// Reads a response head; returns it and the bytes read past it.
async fn read_head(socket: &TcpStream) -> Result<(Head, Vec<u8>), String> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_head(&received[..end])?;
            return Ok((head, received.split_off(end + 4)));
        }
        if received.len() > MAX_HEAD_BYTES {
            return Err("the response head is too long".into());
        }
        let read = read_some(socket, &mut buffer).await?;
        if read == 0 {
            return Err("the server closed the connection before answering".into());
        }
        received.extend_from_slice(&buffer[..read]);
    }
}

/// Where a chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size {
        value: usize,
        digits: u8,
        extension: bool,
    },
    Data {
        remaining: usize,
    },
    DataCr,
    DataLf,
    Trailer {
        line_empty: bool,
    },
    Done,
}

const SIZE_START: ChunkState = ChunkState::Size {
    value: 0,
    digits: 0,
    extension: false,
};

/// Incremental decoder of HTTP/1.1 chunked transfer encoding.
struct Chunked {
    state: ChunkState,
    /// Chunks with data begun so far: one per write of the stream's body.
    chunks: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: SIZE_START,
            chunks: 0,
        }
    }
}

impl Chunked {
    /// Appends the data carried by `input` to `out`; true once the body has ended.
    fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        use ChunkState::*;
        while !input.is_empty() && self.state != Done {
            if let Data { remaining } = self.state {
                let take = remaining.min(input.len());
                out.extend_from_slice(&input[..take]);
                input = &input[take..];
                self.state = match remaining - take {
                    0 => DataCr,
                    remaining => Data { remaining },
                };
                continue;
            }
            let byte = input[0];
            input = &input[1..];
            self.state = match self.state {
                Size {
                    value,
                    digits,
                    extension,
                } => match byte {
                    b'\n' if digits == 0 => return Err("a chunk size line is empty".into()),
                    b'\n' if value == 0 => Trailer { line_empty: true },
                    b'\n' => {
                        self.chunks += 1;
                        Data { remaining: value }
                    }
                    b'\r' => self.state,
                    b';' => Size {
                        value,
                        digits,
                        extension: true,
                    },
                    _ if extension => self.state,
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
                    b'\r' => self.state,
                    b'\n' if line_empty => Done,
                    b'\n' => Trailer { line_empty: true },
                    _ => Trailer { line_empty: false },
                },
                Data { .. } | Done => self.state,
            };
        }
        Ok(self.state == Done)
    }
}

/// A keep-alive HTTP/1.1 connection that publishes as an admin.
struct HttpConnection {
    socket: TcpStream,
    port: u16,
    authorization: String,
}

impl HttpConnection {
    async fn open(port: u16, admin_token: &str) -> Result<Self, String> {
        Ok(Self {
            socket: connect(port).await?,
            port,
            authorization: format!("Authorization: Bearer {admin_token}"),
        })
    }

    /// `POST /api/send` with this event; returns once the server answered
    /// 202, or fails at `deadline`.
    async fn publish(&mut self, event: &Value, deadline: Instant) -> Result<(), String> {
        timeout_at(deadline, self.send(event))
            .await
            .map_err(|_| format!("timed out waiting for the answer to POST /api/send {event}"))?
    }

    async fn send(&mut self, event: &Value) -> Result<(), String> {
        let body = event.to_string();
        let request = format!(
            "POST /api/send HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            self.authorization,
            body.len()
        );
        write_all(&self.socket, request.as_bytes()).await?;
        let (head, mut answer) = read_head(&self.socket).await?;
        let length = head
            .content_length
            .ok_or("the publish answer has no Content-Length")?;
        let mut buffer = vec![0u8; 4096];
        while answer.len() < length {
            let read = read_some(&self.socket, &mut buffer).await?;
            if read == 0 {
                return Err("the connection closed inside the publish answer".into());
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        if head.status != 202 {
            return Err(format!(
                "POST /api/send {body} answered {}: {}",
                head.status,
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    roles: &'a [&'a str],
    channels: &'a [&'a str],
}

/// An HS256 token for `user`, allowed on `channels`; an admin may publish.
fn mint(user: &str, admin: bool, channels: &[&str]) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let claims = Claims {
        sub: user,
        exp: now + TOKEN_TTL_SECS,
        roles: if admin { &["admin"] } else { &[] },
        channels,
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .map_err(|e| format!("cannot sign a token: {e}"))
}

// ---------------------------------------------------------------------------
// The server under callgrind
// ---------------------------------------------------------------------------

fn valgrind_options(cli: &Cli, dir: &Path) -> Vec<String> {
    let mut options = vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
        "--collect-atstart=yes".to_owned(),
        // vgdb's pipes, through which callgrind_control talks to callgrind,
        // in the run's own directory.
        format!("--vgdb-prefix={}/vgdb", dir.display()),
    ];
    if cli.fair_sched == YesNo::Yes {
        options.push("--fair-sched=yes".to_owned());
    }
    options.extend(cli.valgrind_args.iter().cloned());
    options
}

fn server_env(cli: &Cli, dir: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PORT", "0"),
        ("HOST", "127.0.0.1"),
        ("JWT_SECRET", SECRET),
        ("STORAGE", "memory"),
        ("RUST_LOG", "warn,herald=info"),
        ("MAX_CONNECTIONS_PER_USER", "20000"),
        ("HEARTBEAT_INTERVAL", "600"),
        ("WORKERS", "1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    env.push(("DATA_DIR".into(), dir.join("data").display().to_string()));
    for setting in &cli.server_env {
        if let Some((key, value)) = setting.split_once('=') {
            env.retain(|(existing, _)| existing != key);
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    env
}

/// A fresh directory for one run: callgrind's files, the server's `DATA_DIR`.
fn fresh_dir(path: PathName) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "herald-paths-{}-{}-{nanos}",
        path.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(dir.join("data"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

struct Server {
    child: Child,
    pid: u32,
    port: u16,
    dir: PathBuf,
    log: Arc<Mutex<VecDeque<String>>>,
    /// The server's `LOGNAME`, `USER`, `HOST`, `HOSTNAME` (vgdb's pipe names).
    identity: Vec<(String, String)>,
}

impl Server {
    fn start(cli: &Cli, binary: &Path, dir: &Path, step: Duration) -> Result<Self, String> {
        for setting in &cli.server_env {
            if !setting.contains('=') {
                return Err(format!("--server-env {setting:?} is not KEY=VALUE"));
            }
        }
        let env = server_env(cli, dir);
        let identity: Vec<(String, String)> = env
            .iter()
            .filter(|(key, _)| ["LOGNAME", "USER", "HOST", "HOSTNAME"].contains(&key.as_str()))
            .cloned()
            .collect();
        let mut command = Command::new(&cli.valgrind);
        command
            .args(valgrind_options(cli, dir))
            .arg(binary)
            .env_clear()
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // PATH for valgrind's own helpers; TMPDIR so that valgrind and
        // callgrind_control agree on where vgdb's pipes are.
        for variable in ["PATH", "TMPDIR"] {
            if let Some(value) = std::env::var_os(variable) {
                command.env(variable, value);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cli.valgrind.display()))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(LISTENING) {
                    let digits: String = line[at + LISTENING.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let (Ok(port), Some(tx)) = (digits.parse::<u16>(), port_tx.take()) {
                        let _ = tx.send(port);
                    }
                }
                let mut kept = kept.lock().expect("log lock");
                if kept.len() == LOG_LINES_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let mut server = Server {
            child,
            pid,
            port: 0,
            dir: dir.to_owned(),
            log,
            identity,
        };
        match port_rx.recv_timeout(step) {
            Ok(port) => server.port = port,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                server.stop();
                return Err(format!(
                    "the server did not log {LISTENING:?}<port> within {} s{}\n{}",
                    step.as_secs(),
                    status.map_or(String::new(), |s| format!(" (it exited: {s})")),
                    server.log_tail()
                ));
            }
        }
        Ok(server)
    }

    /// The server's last log lines, for an error message.
    fn log_tail(&self) -> String {
        let kept = self.log.lock().expect("log lock");
        let lines: Vec<&str> = kept.iter().map(String::as_str).collect();
        format!(
            "last lines of the server's stderr:\n  {}",
            lines.join("\n  ")
        )
    }

    /// SIGTERM, then SIGKILL if it has not exited after 60 s.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: a plain kill(2) of the child this process started.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("paths: the server did not exit within 60 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn command_output(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!("{}: {}", output.status, text.trim()));
    }
    Ok(text.trim().to_owned())
}

/// `callgrind_control <action> <pid>`; callgrind answers once it has done it.
///
/// vgdb names its pipes after the user (`LOGNAME`, `USER`) and the host
/// (`HOST`, `HOSTNAME`) in its environment, on both sides: callgrind_control
/// gets the server's values of those (so `HOST` is Herald's listen address),
/// else it finds no pipe — and callgrind_control prints `OK.` whether or not
/// the command arrived, so vgdb's error messages are what tell.
fn callgrind_control(cli: &Cli, server: &Server, action: &str) -> Result<(), String> {
    let mut command = Command::new(&cli.callgrind_control);
    command
        .arg(format!("--vgdb-prefix={}/vgdb", server.dir.display()))
        .arg(action)
        .arg(server.pid.to_string())
        .env_clear()
        .envs(server.identity.iter().cloned());
    for variable in ["PATH", "TMPDIR"] {
        if let Some(value) = std::env::var_os(variable) {
            command.env(variable, value);
        }
    }
    let pid = server.pid;
    let text = command_output(&mut command)
        .map_err(|e| format!("callgrind_control {action} {pid}: {e}"))?;
    let lower = text.to_ascii_lowercase();
    if !text.contains(&format!("PID {pid}"))
        || !text.contains("OK")
        || lower.contains("error")
        || lower.contains("failed")
    {
        return Err(format!("callgrind_control {action} {pid} failed: {text}"));
    }
    Ok(())
}

/// The `Ir` of dump `number` of process `pid`: the sum over its files (one
/// per thread with `--separate-threads=yes`, else one), each file's `totals:`
/// line (or `summary:` when it has none). Returns (Ir, files).
fn read_dump(dir: &Path, pid: u32, number: u32, step: Duration) -> Result<(u64, usize), String> {
    let prefix = format!("callgrind.out.{pid}.{number}");
    let until = std::time::Instant::now() + step;
    loop {
        let mut total = 0;
        let mut files = 0;
        let mut incomplete = None;
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != prefix && !name.starts_with(&format!("{prefix}-")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path())
                .map_err(|e| format!("reading {name}: {e}"))?;
            match instructions(&text) {
                Ok(ir) => {
                    total += ir;
                    files += 1;
                }
                Err(e) => incomplete = Some(format!("{name}: {e}")),
            }
        }
        match incomplete {
            None if files > 0 => return Ok((total, files)),
            _ if std::time::Instant::now() >= until => {
                return Err(format!(
                    "no complete dump {prefix}[-NN] in {}{}",
                    dir.display(),
                    incomplete.map_or(String::new(), |e| format!(" ({e})"))
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `Ir` of one callgrind file, from its `events:` and `totals:` (else `summary:`) lines.
fn instructions(text: &str) -> Result<u64, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name).map(str::trim))
    };
    let events: Vec<&str> = field("events:")
        .ok_or("no `events:` line")?
        .split_whitespace()
        .collect();
    let at = events
        .iter()
        .position(|&event| event == "Ir")
        .ok_or("no Ir among the events")?;
    let totals = field("totals:")
        .or_else(|| field("summary:"))
        .ok_or("no `totals:` or `summary:` line")?;
    totals
        .split_whitespace()
        .nth(at)
        .unwrap_or("0")
        .parse()
        .map_err(|e| format!("bad totals {totals:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Report, comparison, baseline
// ---------------------------------------------------------------------------

struct Summary {
    path: PathName,
    runs: Vec<RunResult>,
    /// Median over the runs (the lower middle one for an even count).
    ir: u64,
    ir_per_unit: f64,
    min: f64,
    max: f64,
    /// (max − min) / median, in percent.
    spread_pct: f64,
}

impl Summary {
    fn of(path: PathName, runs: &[RunResult]) -> Self {
        let mut sorted: Vec<&RunResult> = runs.iter().collect();
        sorted.sort_by_key(|run| run.ir);
        let median = sorted[(sorted.len() - 1) / 2];
        let min = sorted[0].ir_per_unit;
        let max = sorted[sorted.len() - 1].ir_per_unit;
        Summary {
            path,
            runs: runs.to_vec(),
            ir: median.ir,
            ir_per_unit: median.ir_per_unit,
            min,
            max,
            spread_pct: round((max - min) / median.ir_per_unit * 100.0, 2),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "unit": self.path.unit(),
            "units": self.path.units(),
            "what": self.path.describe(),
            "ir": self.ir,
            "ir_per_unit": self.ir_per_unit,
            "min_ir_per_unit": self.min,
            "max_ir_per_unit": self.max,
            "spread_pct": self.spread_pct,
            "runs": self.runs,
        })
    }
}

fn summary_table(summaries: &[Summary], runs: u32) -> String {
    let mut out = format!(
        "{:<9} {:>15} {:>13} {:>9}  {}\n",
        "path", "Ir (median)", "Ir/unit", "spread", "Ir/unit of each run"
    );
    for s in summaries {
        let each: Vec<String> = s
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.ir_per_unit))
            .collect();
        out.push_str(&format!(
            "{:<9} {:>15} {:>13} {:>9}  {}\n",
            s.path.name(),
            group(s.ir),
            format!("{:.0}/{}", s.ir_per_unit, s.path.unit()),
            if runs > 1 {
                format!("{:.2} %", s.spread_pct)
            } else {
                "-".into()
            },
            each.join(", ")
        ));
    }
    out
}

/// Compares the medians against the baseline in `file`: the comparison for
/// the report, and whether any path costs more than the margin above its baseline.
fn compare(cli: &Cli, file: &Path, summaries: &[Summary]) -> Result<(Value, bool), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("reading the baseline {}: {e}", file.display()))?;
    let baseline: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the baseline {} is not JSON: {e}", file.display()))?;
    let mut failed = false;
    let mut rows = serde_json::Map::new();
    let mut table = format!(
        "{:<9} {:<9} {:>12} {:>12} {:>9}  {}\n",
        "path", "Ir per", "baseline", "now", "change", "verdict"
    );
    for s in summaries {
        let base = baseline["paths"][s.path.name()]["ir_per_unit"].as_f64();
        let (change, verdict) = match base {
            None => {
                failed = true;
                (
                    None,
                    "FAIL: no baseline for this path (run .ci/instructions --update)".to_owned(),
                )
            }
            Some(base) => {
                let change = (s.ir_per_unit / base - 1.0) * 100.0;
                let verdict = if change > cli.margin {
                    failed = true;
                    format!("FAIL: more than {:.0} % above the baseline", cli.margin)
                } else if change < -cli.margin {
                    format!(
                        "ok, much cheaper: more than {:.0} % below the baseline; if that is \
                         meant, record it with .ci/instructions --update",
                        cli.margin
                    )
                } else {
                    "ok".to_owned()
                };
                (Some(change), verdict)
            }
        };
        table.push_str(&format!(
            "{:<9} {:<9} {:>12} {:>12} {:>9}  {}\n",
            s.path.name(),
            s.path.unit(),
            base.map_or("-".into(), |b| format!("{b:.0}")),
            format!("{:.0}", s.ir_per_unit),
            change.map_or("-".into(), |c| format!("{c:+.1} %")),
            verdict
        ));
        rows.insert(
            s.path.name().into(),
            json!({
                "baseline_ir_per_unit": base,
                "ir_per_unit": s.ir_per_unit,
                "change_pct": change.map(|c| round(c, 2)),
                "verdict": verdict,
            }),
        );
    }
    eprintln!();
    eprintln!(
        "Instructions (Ir) per unit against {} (margin {:.0} %):",
        file.display(),
        cli.margin
    );
    eprint!("{table}");
    let mut warnings = Vec::new();
    if let (Some(now), Some(then)) = (cli.rustc.as_deref(), baseline["rustc"].as_str()) {
        if now.trim() != then.trim() {
            warnings.push(format!(
                "the compiler differs from the baseline's ({now} against {then}): part of \
                 any change may be the compiler's"
            ));
        }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "{}",
        if failed {
            "FAILED: a path costs more instructions than its baseline allows. If the cost \
             rose on purpose, run .ci/instructions --update and commit benches/instructions.json \
             saying why."
        } else {
            "passed"
        }
    );
    Ok((
        json!({
            "baseline": file.display().to_string(),
            "margin_pct": cli.margin,
            "failed": failed,
            "paths": rows,
            "warnings": warnings,
        }),
        failed,
    ))
}

fn write_baseline(
    cli: &Cli,
    file: &Path,
    valgrind_version: &str,
    summaries: &[Summary],
) -> Result<(), String> {
    let paths: serde_json::Map<String, Value> = summaries
        .iter()
        .map(|s| {
            (
                s.path.name().to_owned(),
                json!({
                    "what": s.path.describe(),
                    "unit": s.path.unit(),
                    "units": s.path.units(),
                    "ir_per_unit": s.ir_per_unit,
                    "ir": s.ir,
                    "runs": s.runs.iter().map(|r| r.ir_per_unit).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let baseline = json!({
        "about": "Instructions (callgrind Ir) the whole herald process executes per unit of \
                  each hot path; checked by .ci/instructions. See docs/performance.md, \
                  \"The instruction-count guard\".",
        "rustc": cli.rustc,
        "valgrind": valgrind_version,
        "commit": cli.commit,
        "produced_by": cli.produced_by,
        "valgrind_options": valgrind_options(cli, Path::new("<dir>")),
        "server_env": server_env(cli, Path::new("<dir>")).into_iter().filter(|(k, _)| k != "JWT_SECRET").collect::<BTreeMap<_, _>>(),
        "runs": cli.runs,
        "paths": paths,
    });
    let text = serde_json::to_string_pretty(&baseline).map_err(|e| e.to_string())?;
    std::fs::write(file, text + "\n").map_err(|e| format!("writing {}: {e}", file.display()))
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

/// 1234567 as "1,234,567".
fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
