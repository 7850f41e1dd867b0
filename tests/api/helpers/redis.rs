//! A `redis-server` of the test's own, for the many-node tests.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, skip, spawn, TestServer, TIMEOUT};

/// A `redis-server` on a random port, with an append-only file so a restart
/// (even after `kill -9`) keeps what was accepted. Dropping it kills it and removes its data.
pub struct Redis {
    program: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts one, or returns `None` after saying so loudly when
    /// `redis-server` is not installed (see [`skip`]).
    pub fn start() -> Option<Self> {
        let Some(program) = super::find_program("redis-server") else {
            skip("redis-server is not installed (Debian: apt-get install redis-server)");
            return None;
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("herald-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            program,
            child: None,
            port,
            dir,
        };
        redis.run();
        Some(redis)
    }

    fn run(&mut self) {
        let child = Command::new(&self.program)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            // Redis writes the append-only file before it answers, so what it
            // acknowledged survives its process being killed; syncing to disk
            // too (`always`) would only add stalls of seconds while other tests
            // fill the disk, and no test crashes the machine.
            .args(["--appendonly", "yes", "--appendfsync", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a Herald node on this Redis, with `extra` settings.
    pub async fn node(&self, extra: &[(&str, &str)]) -> TestServer {
        let url = self.url();
        let mut pairs = vec![("REDIS_URL", url.as_str())];
        pairs.extend_from_slice(extra);
        spawn(&pairs).await
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP relay in front of a Redis whose replies to the node behind it can
/// be held back: that node's reader then falls behind the shared flow while
/// its HTTP side keeps serving.
pub struct Relay {
    pub port: u16,
    held: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(redis_port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, watch) = tokio::sync::watch::channel(false);
        actix_web::rt::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let (mut from_node, mut to_node) = inbound.into_split();
                let (mut from_redis, mut to_redis) = outbound.into_split();
                actix_web::rt::spawn(async move {
                    let _ = tokio::io::copy(&mut from_node, &mut to_redis).await;
                });
                let mut watch = watch.clone();
                actix_web::rt::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    while let Ok(read @ 1..) = from_redis.read(&mut buffer).await {
                        if watch.wait_for(|held| !*held).await.is_err()
                            || to_node.write_all(&buffer[..read]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, held }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds back (or lets through again) everything Redis sends.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}
