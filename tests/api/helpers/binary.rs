//! A real `herald` process, for the tests that need the binary itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A running `herald` process, killed when dropped.
pub struct Herald {
    child: Child,
    pub port: u16,
    /// `http`, or `https` when it was given a certificate.
    scheme: String,
    /// Everything the process wrote to stderr (its log).
    log: Arc<Mutex<String>>,
    /// Its store's directory, unless the test named one.
    _data_dir: DataDir,
}

impl Herald {
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::launch(env, &[])
    }

    /// Starts `herald` as [`start`](Self::start) does, run through `wrapper`
    /// (a program and its arguments, such as `prlimit --fsize=N`) if given.
    pub fn launch(env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let data_dir = DataDir::new();
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(env!("CARGO_BIN_EXE_herald"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_herald")),
        };
        command
            .env_clear()
            .env("DATA_DIR", data_dir.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            // Away from the project's own .env.
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("herald starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Herald listening on ").nth(1) {
                    let (scheme, port) = rest
                        .trim()
                        .split_once("://127.0.0.1:")
                        .expect("the address is logged as <scheme>://127.0.0.1:<port>");
                    // The digits only: a JSON log line goes on after them.
                    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
                    let _ = port_tx.send((scheme.to_owned(), digits.parse::<u16>().unwrap()));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (scheme, port) = match port_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(address) => address,
            Err(_) => panic!("herald did not start; log:\n{}", log.lock().unwrap()),
        };
        Herald {
            child,
            port,
            scheme,
            log,
            _data_dir: data_dir,
        }
    }

    /// The process id (the program itself when a wrapper exec'd it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{}", self.scheme, self.port, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill() with a child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits until the log holds `text`; returns the log.
    pub async fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {text:?}:\n{log}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; returns how long it took and whether it exited cleanly.
    pub fn wait_exit(&mut self, limit: Duration) -> (Duration, bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (started.elapsed(), status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("herald did not exit within {limit:?}; log:\n{}", self.log());
    }

    /// Whether the process has exited, and if so whether cleanly; does not wait.
    pub fn exited(&mut self) -> Option<bool> {
        self.child
            .try_wait()
            .expect("the process can be asked about")
            .map(|status| status.success())
    }

    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    pub async fn stats(&self) -> Value {
        let request = client()
            .get(self.url("/api/stats"))
            .bearer_auth(admin_token());
        Answer::of(request.send()).await.into_json()
    }

    /// `POST /api/send` with `body` as JSON.
    pub async fn publish(&self, token: &str, body: &Value) -> Answer {
        let request = client().post(self.url("/api/send")).bearer_auth(token);
        Answer::of(request.send_json(body)).await
    }

    pub async fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let stats = self.stats().await;
            if predicate(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "{what} never happened: {stats}");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `herald` with `env` until it exits; returns whether it succeeded and
/// its log. A server that starts instead of exiting fails the test.
pub fn run_to_exit(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env("PORT", "0")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "herald started instead of stopping; log:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Herald {
    /// Ends the process at once, as a crash would, and waits for it.
    pub fn kill_hard(&mut self) {
        // Already gone is fine: this only makes sure it is.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
