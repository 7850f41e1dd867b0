//! Node.js scripts (`tests/api/node/`) run as clients of a test server: each
//! takes its input as JSON in its first argument and reports by printing one
//! JSON object per line, which the test reads and asserts on.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::{find_program, skip};

/// A running script, killed when dropped.
pub struct NodeScript {
    child: Child,
    /// Its stdout, line by line; `None` only while a read is waiting on it.
    lines: Option<mpsc::Receiver<String>>,
    name: String,
}

impl NodeScript {
    /// Starts `node tests/api/node/<script> <input as JSON>`. Without `node`
    /// it reports the skip (a failure under `CI=true`) and returns `None`.
    pub fn start(script: &str, input: &Value) -> Option<Self> {
        let Some(node) = find_program("node") else {
            skip("node is not installed (Debian: apt-get install nodejs)");
            return None;
        };
        let path = format!("{}/tests/api/node/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(node)
            .arg(path)
            .arg(input.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Some(Self {
            child,
            lines: Some(lines),
            name: script.to_owned(),
        })
    }

    /// The next line the script prints, parsed; fails the test (with the
    /// script's stderr) if none comes within `wait` or it is not JSON.
    pub async fn next(&mut self, wait: Duration) -> Value {
        let lines = self.lines.take().expect("one read at a time");
        let (lines, line) = actix_web::rt::task::spawn_blocking(move || {
            let line = lines.recv_timeout(wait);
            (lines, line)
        })
        .await
        .expect("the reading thread does not panic");
        self.lines = Some(lines);
        match line {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let stderr = self.stderr();
                panic!(
                    "{} printed nothing within {wait:?}; stderr:\n{stderr}",
                    self.name
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                let stderr = self.stderr();
                panic!(
                    "{} ended ({status:?}) without its report; stderr:\n{stderr}",
                    self.name
                )
            }
        }
    }

    /// Everything the script wrote to stderr (once it has ended).
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = self.child.wait();
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        // Already ended is the normal case; this only makes sure it has.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
