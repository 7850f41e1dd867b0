//! A test certificate authority made fresh for each test, the PEM files a
//! server reads, and clients that trust that authority and nothing else.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::{DataDir, TIMEOUT};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its own certificate, PEM: what clients trust.
    pub pem: String,
    /// SHA-256 of its public key (SubjectPublicKeyInfo), base64: how
    /// Chromium is told to trust it (`--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

/// A server certificate for `127.0.0.1` and `localhost` and its key.
pub struct ServerCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate as served in a handshake.
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        Self {
            spki_sha256: base64(digest.as_ref()),
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A fresh key and a certificate for it, signed by this CA. Each call
    /// gives a different key and serial number.
    pub fn issue(&self) -> ServerCertificate {
        let key = KeyPair::generate().expect("a server key");
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        ServerCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// The PEM files of one server (`TLS_CERT_FILE`, `TLS_KEY_FILE`) in a
/// directory of their own, removed when dropped.
pub struct TlsFiles {
    dir: DataDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(certificate: &ServerCertificate) -> Self {
        let dir = DataDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let files = Self {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
            dir,
        };
        files.write(certificate);
        files
    }

    /// Replaces the files' contents, as a renewal would.
    pub fn write(&self, certificate: &ServerCertificate) {
        std::fs::write(&self.cert, &certificate.cert_pem).unwrap();
        std::fs::write(&self.key, &certificate.key_pem).unwrap();
    }

    /// A file next to the others, for a test's own contents.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// The settings that point a server at these files.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("TLS_CERT_FILE", self.cert.to_str().unwrap()),
            ("TLS_KEY_FILE", self.key.to_str().unwrap()),
        ]
    }
}

/// A rustls client configuration that trusts the CA `ca_pem` alone and offers `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&str]) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// An HTTPS client that trusts `ca` and speaks HTTP/1.1 (a connection per stream).
pub fn https_client(ca: &TestCa) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(0)
                .rustls_0_23(client_config(&ca.pem, &["http/1.1"])),
        )
        .timeout(TIMEOUT)
        .finish()
}

/// What a TLS handshake showed.
pub struct Handshake {
    /// The protocol the server chose by ALPN.
    pub alpn: Option<String>,
    /// The certificate the server presented.
    pub certificate: Vec<u8>,
}

/// Completes a TLS handshake with `127.0.0.1:port`, offering `alpn`, and
/// checks the server's certificate against the CA `ca_pem`.
pub async fn handshake(port: u16, ca_pem: &str, alpn: &[&str]) -> Handshake {
    let ca_pem = ca_pem.to_owned();
    let alpn: Vec<String> = alpn.iter().map(|p| p.to_string()).collect();
    actix_web::rt::task::spawn_blocking(move || {
        let alpn: Vec<&str> = alpn.iter().map(String::as_str).collect();
        handshake_blocking(port, &ca_pem, &alpn)
    })
    .await
    .expect("the handshake does not panic")
}

fn handshake_blocking(port: u16, ca_pem: &str, alpn: &[&str]) -> Handshake {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = ClientConnection::new(client_config(ca_pem, alpn), name).unwrap();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .expect("the handshake succeeds");
    }
    Handshake {
        alpn: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        certificate: connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server presents a certificate")
            .to_vec(),
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_encodes_as_the_standard_says() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
