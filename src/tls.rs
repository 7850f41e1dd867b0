//! HTTPS: the server's certificate and key, read from PEM files, served
//! through rustls, and swapped in place by [`Certificates::reload`] (on
//! `SIGHUP`).
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate of every new
//! handshake. Herald's resolver hands out whatever [`CertifiedKey`] is current,
//! and a reload replaces that one value: handshakes from then on use the new
//! certificate, while connections already open (and the streams on them) are
//! not touched, since their handshake is long done.
//!
//! Which protocol a connection speaks is chosen by ALPN: actix offers `h2`
//! then `http/1.1` (see `startup.rs`), so browsers multiplex their streams
//! to one origin over one HTTP/2 connection.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// The server's certificate and key, shared by every worker's TLS acceptor;
/// cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Certificates {
    inner: Arc<Resolver>,
}

#[derive(Debug)]
struct Resolver {
    /// Where the certificate and key are read from, at start and on reload.
    files: TlsFiles,
    /// The certificate chain and signing key new handshakes get. Replaced
    /// whole by a reload; a handshake in progress keeps the `Arc` it took.
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the certificate and key; an error names the file at fault.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, String> {
        let current = read(files, &provider())?;
        log::info!(
            "TLS: certificate from {} (SHA-256 {})",
            files.cert_file.display(),
            fingerprint(&current)
        );
        Ok(Self {
            inner: Arc::new(Resolver {
                files: files.clone(),
                current: RwLock::new(Arc::new(current)),
            }),
        })
    }

    /// Reads the files again and, if they hold a usable certificate and key,
    /// makes them the ones new handshakes get. On an error the certificate
    /// in use stays. Returns a line for the log either way.
    pub fn reload(&self) -> Result<String, String> {
        let files = &self.inner.files;
        let fresh = read(files, &provider())?;
        let line = format!(
            "TLS: certificate reloaded from {} (SHA-256 {}); new connections use it",
            files.cert_file.display(),
            fingerprint(&fresh)
        );
        *self
            .inner
            .current
            .write()
            // Only an assignment happens under this lock: a poisoned one
            // still holds a whole value.
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(line)
    }

    /// The rustls configuration that serves these certificates: the `ring`
    /// provider (the one ureq already brings), TLS 1.2 and 1.3, no client
    /// certificates. actix adds the ALPN protocols.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, String> {
        Ok(ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.inner.clone()))
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            // See `reload`: the value is whole even if a writer panicked.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(current.clone())
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate chain and the key from `files`, checked to belong together.
fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (cert_file, key_file) = (&files.cert_file, &files.key_file);
    let pem = read_file("TLS_CERT_FILE", cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "TLS_CERT_FILE {}: not a readable PEM certificate chain ({e})",
                cert_file.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "TLS_CERT_FILE {}: no certificate in it (expected PEM `-----BEGIN CERTIFICATE-----`)",
            cert_file.display()
        ));
    }
    let pem = read_file("TLS_KEY_FILE", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "TLS_KEY_FILE {}: no private key in it (expected PEM `-----BEGIN PRIVATE KEY-----`, \
             RSA or EC)",
            key_file.display()
        ),
        other => format!(
            "TLS_KEY_FILE {}: not a readable PEM private key ({other})",
            key_file.display()
        ),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "TLS_KEY_FILE {} is not the key of the certificate in TLS_CERT_FILE {}",
            key_file.display(),
            cert_file.display()
        ),
        other => format!(
            "TLS_CERT_FILE {} / TLS_KEY_FILE {}: {other}",
            cert_file.display(),
            key_file.display()
        ),
    })
}

fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting} {}: cannot read it: {e}", path.display()))
}

/// The SHA-256 fingerprint of the served certificate, as `openssl x509
/// -fingerprint -sha256` prints it, so an operator can see which one is live.
fn fingerprint(certified: &CertifiedKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &certified.cert[0]);
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A self-signed certificate for localhost and its key, as PEM.
    fn certificate() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// A directory of this test's own, removed when dropped.
    struct Files(PathBuf);

    impl Files {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("herald-tls-unit-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, cert: &str, key: &str) -> TlsFiles {
            let files = TlsFiles {
                cert_file: self.0.join("cert.pem"),
                key_file: self.0.join("key.pem"),
            };
            std::fs::write(&files.cert_file, cert).unwrap();
            std::fs::write(&files.key_file, key).unwrap();
            files
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            // Best effort: a leftover temporary directory harms nothing.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn served(certificates: &Certificates) -> Vec<u8> {
        certificates.inner.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_certificate_and_its_key_load_and_a_reload_swaps_them() {
        let dir = Files::new("reload");
        let (cert, key) = certificate();
        let files = dir.write(&cert, &key);
        let certificates = Certificates::load(&files).unwrap();
        let first = served(&certificates);
        assert_eq!(
            first,
            CertificateDer::from_pem_slice(cert.as_bytes())
                .unwrap()
                .to_vec()
        );
        certificates.server_config().unwrap();

        let (cert, key) = certificate();
        dir.write(&cert, &key);
        let line = certificates.reload().unwrap();
        assert!(line.contains("cert.pem"), "{line}");
        let second = served(&certificates);
        assert_ne!(first, second);
        assert_eq!(
            second,
            CertificateDer::from_pem_slice(cert.as_bytes())
                .unwrap()
                .to_vec()
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_use() {
        let dir = Files::new("failed-reload");
        let (cert, key) = certificate();
        let certificates = Certificates::load(&dir.write(&cert, &key)).unwrap();
        let before = served(&certificates);
        let (_, other_key) = certificate();
        dir.write(&cert, &other_key);
        let err = certificates.reload().unwrap_err();
        assert!(err.contains("is not the key of the certificate"), "{err}");
        assert_eq!(served(&certificates), before);
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file_and_the_fault() {
        let dir = Files::new("unusable");
        let (cert, key) = certificate();
        let (_, other_key) = certificate();
        let cases = [
            ("", key.as_str(), "TLS_CERT_FILE", "no certificate in it"),
            (
                "not a certificate",
                key.as_str(),
                "TLS_CERT_FILE",
                "no certificate in it",
            ),
            (cert.as_str(), "", "TLS_KEY_FILE", "no private key in it"),
            (
                cert.as_str(),
                cert.as_str(),
                "TLS_KEY_FILE",
                "no private key in it",
            ),
            (
                cert.as_str(),
                other_key.as_str(),
                "TLS_KEY_FILE",
                "is not the key of",
            ),
        ];
        for (cert, key, setting, fault) in cases {
            let files = dir.write(cert, key);
            let err = Certificates::load(&files).unwrap_err();
            assert!(
                err.contains(setting)
                    && err.contains(fault)
                    && err.contains(&*dir.0.to_string_lossy()),
                "{setting} {fault:?}: {err}"
            );
        }
        let missing = TlsFiles {
            cert_file: dir.0.join("missing.pem"),
            key_file: dir.0.join("key.pem"),
        };
        let err = Certificates::load(&missing).unwrap_err();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );
    }
}
