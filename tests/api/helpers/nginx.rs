//! A real nginx of the test's own running the repository's
//! `deploy/nginx/herald.conf` (filled in, not copied) in front of two Herald
//! processes that share a real Redis.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::binary::Herald;
use super::redis::Redis;
use super::{find_program, free_port, skip, Answer, Sse, SECRET, TIMEOUT};

/// The configuration operators are given, read from the repository each run.
pub fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/herald.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `nginx` on `PATH`, or where Debian puts it (`/usr/sbin` is not on every
/// user's `PATH`).
fn nginx_program() -> Option<PathBuf> {
    find_program("nginx").or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nginx");
        debian.is_file().then_some(debian)
    })
}

/// A self-signed certificate for `127.0.0.1`, made for one run.
struct Certificate {
    der: rustls::pki_types::CertificateDer<'static>,
    pem: String,
    key_pem: String,
}

impl Certificate {
    fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a self-signed certificate can be made");
        Self {
            der: made.cert.der().clone(),
            pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
        }
    }
}

/// An nginx process in the foreground, on a random port, with its files in a
/// directory of its own. Dropping it kills it and removes the directory.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    /// What nginx wrote to stderr.
    log: Arc<Mutex<String>>,
    certificate: rustls::pki_types::CertificateDer<'static>,
}

impl Nginx {
    /// Runs the template in front of `nodes` (their ports). Each of `changes`
    /// is a line of the template and what replaces it; the line must be
    /// there, so a test never changes a setting the file no longer has.
    fn start(program: &Path, nodes: [u16; 2], changes: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("herald-nginx-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certificate = Certificate::new();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &certificate.pem).unwrap();
        std::fs::write(&key, &certificate.key_pem).unwrap();

        let port = free_port();
        let mut config = template();
        for (line, replacement) in changes {
            assert_eq!(
                config.matches(line).count(),
                1,
                "deploy/nginx/herald.conf has no (single) line {line:?}"
            );
            config = config.replace(line, replacement);
        }
        for (placeholder, value) in [
            ("{{LISTEN_PORT}}", port.to_string()),
            ("{{SERVER_NAME}}", "127.0.0.1".to_owned()),
            ("{{CERT}}", path_text(&cert)),
            ("{{CERT_KEY}}", path_text(&key)),
            ("{{NODE_1}}", format!("127.0.0.1:{}", nodes[0])),
            ("{{NODE_2}}", format!("127.0.0.1:{}", nodes[1])),
        ] {
            assert!(
                config.contains(placeholder),
                "the template lost {placeholder}"
            );
            config = config.replace(placeholder, &value);
        }
        assert!(
            !config.contains("{{"),
            "the template has a placeholder this test does not fill (document it too):\n{config}"
        );
        let site = dir.join("herald.conf");
        std::fs::write(&site, &config).unwrap();

        // The smallest main configuration around the site file: one process
        // in the foreground (killing it leaves no worker behind), every file
        // in this test's directory.
        let temp = |name: &str| path_text(&dir.join(name));
        let main = format!(
            "master_process off;\n\
             daemon off;\n\
             pid {pid};\n\
             error_log stderr warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {body};\n\
             \x20   proxy_temp_path {proxy};\n\
             \x20   fastcgi_temp_path {fastcgi};\n\
             \x20   uwsgi_temp_path {uwsgi};\n\
             \x20   scgi_temp_path {scgi};\n\
             \x20   include {site};\n\
             }}\n",
            pid = temp("nginx.pid"),
            body = temp("client_body"),
            proxy = temp("proxy"),
            fastcgi = temp("fastcgi"),
            uwsgi = temp("uwsgi"),
            scgi = temp("scgi"),
            site = path_text(&site),
        );
        let main_path = dir.join("nginx.conf");
        std::fs::write(&main_path, main).unwrap();

        let mut child = Command::new(program)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&main_path)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut nginx = Nginx {
            child,
            port,
            dir,
            log,
            certificate: certificate.der,
        };
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        nginx
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The origin browsers see: `https://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// A client that trusts this nginx's certificate and offers HTTP/2 and
    /// HTTP/1.1, as a browser does.
    pub fn client(&self) -> awc::Client {
        self.client_offering(&[b"h2", b"http/1.1"])
    }

    /// A client that speaks HTTP/1.1 only, as some browsers behind an
    /// intercepting proxy, and `curl --http1.1`, do.
    pub fn http1_client(&self) -> awc::Client {
        self.client_offering(&[b"http/1.1"])
    }

    fn client_offering(&self, protocols: &[&[u8]]) -> awc::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.certificate.clone())
            .expect("the certificate just made is valid");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
        awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)).limit(0))
            .timeout(TIMEOUT)
            .finish()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (`master_process off`), so killing it leaves nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_text(path: &Path) -> String {
    path.to_str()
        .expect("the temporary directory's path is UTF-8")
        .to_owned()
}

/// Two Herald processes on one Redis, behind nginx.
pub struct Proxied {
    pub nginx: Nginx,
    pub nodes: [Herald; 2],
    /// Killed last: the nodes need it until they stop.
    _redis: Redis,
}

impl Proxied {
    /// Starts Redis, two nodes with `settings` (besides the test secret and
    /// `REDIS_URL`), and nginx with `changes` to the template (see
    /// [`Nginx::start`]). Without `nginx` or `redis-server` it says so loudly
    /// and returns `None` (see [`skip`]).
    pub fn start(settings: &[(&str, &str)], changes: &[(&str, &str)]) -> Option<Self> {
        let Some(program) = nginx_program() else {
            skip("nginx is not installed (Debian: apt-get install nginx-light)");
            return None;
        };
        let redis = Redis::start()?;
        let url = redis.url();
        let mut env = vec![
            ("JWT_SECRET", SECRET),
            ("REDIS_URL", url.as_str()),
            ("WORKERS", "1"),
        ];
        env.extend_from_slice(settings);
        let nodes = [Herald::start(&env), Herald::start(&env)];
        let nginx = Nginx::start(&program, [nodes[0].port, nodes[1].port], changes);
        Some(Self {
            nginx,
            nodes,
            _redis: redis,
        })
    }

    /// `GET /api/events` through nginx with a Bearer token, resuming after
    /// `last_event_id` if given; the `connected` event is not read.
    pub async fn open_stream(
        &self,
        client: &awc::Client,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Sse {
        let mut request = client.get(self.nginx.url("/api/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.insert_header(("last-event-id", id));
        }
        Sse::open(request).await
    }

    /// `POST /api/send` through nginx as admin; expects 202.
    pub async fn send(&self, body: &Value) -> Value {
        let request = self
            .nginx
            .client()
            .post(self.nginx.url("/api/send"))
            .bearer_auth(super::admin_token());
        let answer = Answer::of(request.send_json(body)).await;
        assert_eq!(
            answer.status,
            202,
            "publish through nginx: {answer}; logs:\n{}\n---\n{}",
            self.nodes[0].log(),
            self.nodes[1].log()
        );
        answer.into_json()
    }

    /// The open streams of each node, asked directly.
    pub async fn connections(&self) -> [u64; 2] {
        let mut counts = [0; 2];
        for (count, node) in counts.iter_mut().zip(&self.nodes) {
            *count = node.stats().await["connections"].as_u64().unwrap();
        }
        counts
    }
}
