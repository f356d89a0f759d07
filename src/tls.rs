//! The TLS client configuration every azsim client uses (device driver, service REST, tests).
//!
//! Trusts the Mozilla roots from `webpki-roots` (so a real Azure hub works with no flags) plus,
//! when given, the certificates of one extra CA PEM file (the local hub's `ca.pem`). Crypto is
//! `ring` only, selected explicitly: nothing here depends on a process-wide default provider.
//! TLS 1.2 and 1.3, the versions IoT Hub accepts. An X.509 device adds its client certificate
//! ([`ClientCert`], [`client_config_with_cert`]); this is the one place it goes into a config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS client configuration could not be built. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read ca file {}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM, or a PEM section is malformed.
    #[error("ca file {} is not valid pem: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The CA file holds no `CERTIFICATE` section.
    #[error("ca file {} contains no pem certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the CA file cannot be used as a trust anchor.
    #[error("ca file {} has a certificate that is not a usable ca: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// rustls/webpki's reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls rejected the configuration (protocol versions vs provider).
    #[error("tls configuration rejected: {0}")]
    Config(#[source] rustls::Error),
    /// A client certificate or key file could not be read.
    #[error("cannot read {what} file {}", path.display())]
    ReadClient {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A client certificate or key file holds no usable PEM section.
    #[error("{what} file {} is not usable: {reason}", path.display())]
    BadClient {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key's bytes).
        reason: String,
    },
}

/// A device's X.509 client certificate: its chain (leaf first) and private key, as
/// `azsim run --cert FILE --cert-key FILE` reads them. `Debug` shows no key.
pub struct ClientCert {
    /// The chain from the certificate file, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientCert {
    /// Reads the PEM certificate chain at `cert` and the PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) at `key`.
    ///
    /// # Errors
    /// [`TlsError::ReadClient`] or [`TlsError::BadClient`], naming the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::ReadClient {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let bad = |what, path: &Path, reason: String| TlsError::BadClient {
            what,
            path: path.to_path_buf(),
            reason,
        };
        let pem = read("certificate", cert)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(
                "certificate",
                cert,
                "no PEM CERTIFICATE section".into(),
            ));
        }
        let key_pem = read("key", key)?;
        // The parser's error never holds key bytes; it names a missing or malformed section.
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad("key", key, format!("no PEM private key ({e})")))?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }

    /// The leaf certificate's SHA-1 and SHA-256 thumbprints (uppercase hex, as IoT Hub shows).
    pub fn thumbprints(&self) -> (String, String) {
        let leaf = self.chain.first().map_or(&[][..], |c| c.as_ref());
        (
            azsim_emulator::x509::sha1_thumbprint(leaf),
            azsim_emulator::x509::sha256_thumbprint(leaf),
        )
    }
}

/// Reads every `CERTIFICATE` section of the PEM file at `path`.
///
/// # Errors
/// [`TlsError::ReadCa`], [`TlsError::BadPem`] or [`TlsError::NoCertificate`], naming the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The root store: webpki roots plus the certificates in `ca_file`.
///
/// # Errors
/// As [`load_certs`], plus [`TlsError::BadCertificate`] when a certificate is not a usable anchor.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(roots)
}

/// A client configuration with the ring provider, TLS 1.2+, webpki roots and the extra CA.
///
/// # Errors
/// See [`TlsError`]; file errors name `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_with_cert(ca_file, None)
}

/// [`client_config`] presenting `cert` (an X.509 device's certificate and key) when the server
/// asks for one; `None` is [`client_config`].
///
/// # Errors
/// See [`TlsError`]; [`TlsError::Config`] when rustls cannot use the key.
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    cert: Option<&ClientCert>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = root_store(ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(TlsError::Config)?
    .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(TlsError::Config)?,
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn without_a_ca_file_the_webpki_roots_are_trusted() {
        let roots = root_store(None).unwrap();
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        client_config(None).unwrap();
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let err = client_config(Some(Path::new("/nonexistent/azsim-ca.pem"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/azsim-ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "not a certificate").unwrap();
        let err = client_config(Some(f.path())).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn a_garbled_pem_section_is_refused_by_name() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
        )
        .unwrap();
        let err = client_config(Some(f.path())).unwrap_err();
        assert!(
            err.to_string().contains(&f.path().display().to_string()),
            "{err}"
        );
    }

    /// Handshakes with a server using the local hub's real certificate chain (from
    /// `azsim_emulator::state_dir::prepare`) and returns whether it succeeded.
    async fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let ok = match tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
        {
            Ok(mut tls) => {
                let mut buf = Vec::new();
                tls.read_to_end(&mut buf).await.is_ok() && buf == b"ok"
            }
            Err(_) => false,
        };
        srv.abort();
        ok
    }

    #[tokio::test]
    async fn the_local_hub_ca_file_makes_its_certificate_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let hub = azsim_emulator::state_dir::prepare(dir.path(), "localhost").unwrap();
        let server = hub.server_config(&[]).unwrap();
        let with_ca = client_config(Some(&hub.ca_file)).unwrap();
        assert!(
            handshake(with_ca, server.clone()).await,
            "handshake with the hub ca failed"
        );
        let without = client_config(None).unwrap();
        assert!(
            !handshake(without, server).await,
            "a self-made ca must not be trusted by default"
        );
    }
}
