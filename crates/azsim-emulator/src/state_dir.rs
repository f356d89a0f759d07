//! The hub's state directory: a dev CA, a server certificate for the hub's names, the
//! `iothubowner` key, and (unless in-memory) the SQLite database. Created on first start and
//! reused afterwards, so clients that trusted the CA once keep trusting it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use azsim_proto::secret::Secret;
use base64::Engine as _;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::HubError;

/// File names inside the state directory.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server.key";
const SERVER_NAMES_FILE: &str = "server.names";
const OWNER_KEY_FILE: &str = "iothubowner.key";
/// The SQLite database file.
pub const DB_FILE: &str = "hub.db";

/// Everything `run` needs from the state directory.
#[derive(Debug)]
pub struct Prepared {
    /// Absolute path of the CA certificate clients should trust.
    pub ca_file: PathBuf,
    /// Server certificate chain (leaf, CA).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Server private key (PKCS#8 DER).
    pub key_der: Secret<Vec<u8>>,
    /// The `iothubowner` policy key (base64).
    pub owner_key: Secret<String>,
}

impl Prepared {
    /// A rustls server config over this certificate, ring provider, TLS 1.2+.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, HubError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.expose().clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(self.cert_chain.clone(), key)
        .map_err(|e| HubError::Tls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// A fresh random 256-bit key, base64 (the shape Azure generates).
pub fn generate_key() -> String {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn io_err(path: &Path, e: std::io::Error) -> HubError {
    HubError::State(format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> Result<(), HubError> {
    fs::write(path, contents).map_err(|e| io_err(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

fn ca_params() -> CertificateParams {
    // Rebuilt identically on every start: rcgen's Issuer needs only the DN, key usages and key
    // id method, so the persisted CA key plus these params re-sign without parsing the CA PEM.
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "azsim local hub dev CA");
    dn.push(DnType::OrganizationName, "azsim (not for production)");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn rcgen_err(e: rcgen::Error) -> HubError {
    HubError::State(format!("certificate generation failed: {e}"))
}

/// Create (first start) or load the state directory for `hostname`.
pub fn prepare(dir: &Path, hostname: &str) -> Result<Prepared, HubError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let dir = dir.canonicalize().map_err(|e| io_err(dir, e))?;
    let ca_path = dir.join(CA_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);

    let (ca_pem, ca_key) = if ca_path.exists() && ca_key_path.exists() {
        let pem = fs::read_to_string(&ca_path).map_err(|e| io_err(&ca_path, e))?;
        let key_pem = fs::read_to_string(&ca_key_path).map_err(|e| io_err(&ca_key_path, e))?;
        (pem, KeyPair::from_pem(&key_pem).map_err(rcgen_err)?)
    } else {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = ca_params();
        // Not the hub's clock: clients check certificates against their own real clocks.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        fs::write(&ca_path, cert.pem()).map_err(|e| io_err(&ca_path, e))?;
        // A new CA invalidates any old server certificate.
        let _ = fs::remove_file(dir.join(SERVER_CERT_FILE));
        (cert.pem(), key)
    };

    let mut names = vec![hostname.to_string()];
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let names_line = names.join(",");
    let server_path = dir.join(SERVER_CERT_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    let names_path = dir.join(SERVER_NAMES_FILE);
    let reuse = server_path.exists()
        && server_key_path.exists()
        && fs::read_to_string(&names_path).ok().as_deref() == Some(names_line.as_str());
    let (server_pem, server_key_pem) = if reuse {
        (
            fs::read_to_string(&server_path).map_err(|e| io_err(&server_path, e))?,
            fs::read_to_string(&server_key_path).map_err(|e| io_err(&server_key_path, e))?,
        )
    } else {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::new(names.clone()).map_err(rcgen_err)?;
        params.distinguished_name.push(DnType::CommonName, hostname);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(825);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::new(ca_params(), &ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
        write_private(&server_key_path, &key.serialize_pem())?;
        fs::write(&server_path, cert.pem()).map_err(|e| io_err(&server_path, e))?;
        fs::write(&names_path, &names_line).map_err(|e| io_err(&names_path, e))?;
        (cert.pem(), key.serialize_pem())
    };

    let owner_path = dir.join(OWNER_KEY_FILE);
    let owner_key = match fs::read_to_string(&owner_path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
        _ => {
            let k = generate_key();
            write_private(&owner_path, &k)?;
            k
        }
    };

    let leaf = pem_to_der(&server_pem)?;
    let ca = pem_to_der(&ca_pem)?;
    let key = KeyPair::from_pem(&server_key_pem).map_err(rcgen_err)?;
    Ok(Prepared {
        ca_file: ca_path,
        cert_chain: vec![leaf, ca],
        key_der: Secret::new(key.serialize_der()),
        owner_key: Secret::new(owner_key),
    })
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, HubError> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| HubError::State(format!("bad certificate pem: {e}")))
}
