//! The hub's state directory: a dev CA, a server certificate for the hub's names, the
//! `iothubowner` key, and (unless in-memory) the SQLite database. Created on first start and
//! reused afterwards, so clients that trusted the CA once keep trusting it.
//!
//! Private to its user (Unix): the directory is 0700 and every file holding a key (the CA and
//! server keys, the owner key, `hub.json` with the service connection string, the database with
//! the device keys and its `-wal`/`-shm`) is 0600, made so on creation and checked on every
//! start, so a state directory from an older build (0755/0644) is fixed, with one log line.

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

/// The files that hold a key, kept 0600: the CA and server private keys, the owner key, the
/// discovery file (its service connection string has the owner key), and the database with its
/// write-ahead log and shared memory (device keys).
const PRIVATE_FILES: [&str; 7] = [
    CA_KEY_FILE,
    SERVER_KEY_FILE,
    OWNER_KEY_FILE,
    crate::HUB_JSON,
    DB_FILE,
    "hub.db-wal",
    "hub.db-shm",
];

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
    /// A rustls server config over this certificate, ring provider, TLS 1.2+, asking for an
    /// optional client certificate (X.509 devices; see `crate::x509::AnyClientCert`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, HubError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.expose().clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A client certificate is asked for but optional; the hub decides at CONNECT.
        let client_certs = crate::x509::AnyClientCert::new(&provider);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HubError::Tls(e.to_string()))?
            .with_client_cert_verifier(client_certs)
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

/// Writes `contents` to a file only its owner can read: created 0600 (never readable for a
/// moment), and an existing file's mode set to 0600.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), HubError> {
    use std::io::Write as _;
    let mut f = private_file(path)?;
    f.set_len(0).map_err(|e| io_err(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| io_err(path, e))
}

/// Opens (creating, 0600 on Unix) `path` for writing without truncating it, and makes an
/// existing file 0600. The hub creates its database this way before SQLite opens it, so the
/// database and the `-wal`/`-shm` files SQLite makes beside it (it gives them the database's
/// mode) are private from the start.
pub(crate) fn private_file(path: &Path) -> Result<fs::File, HubError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let f = o.open(path).map_err(|e| io_err(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
    }
    Ok(f)
}

/// Makes `dir` 0700 and each of its [`PRIVATE_FILES`] that exists 0600 (Unix; elsewhere
/// nothing). Returns what had been open to other users (the directory as `.`), so the caller
/// can say so once.
///
/// # Errors
/// A mode that cannot be read or set.
pub fn make_private(dir: &Path) -> Result<Vec<String>, HubError> {
    let mut widened = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mut fix = |path: &Path, name: &str, mode: u32| -> Result<(), HubError> {
            let meta = match fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(path, e)),
            };
            if meta.permissions().mode() & 0o777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err(path, e))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    widened.push(name.to_string());
                }
            }
            Ok(())
        };
        fix(dir, ".", 0o700)?;
        for name in PRIVATE_FILES {
            fix(&dir.join(name), name, 0o600)?;
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(widened)
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
    let mut create = fs::DirBuilder::new();
    create.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        create.mode(0o700);
    }
    create.create(dir).map_err(|e| io_err(dir, e))?;
    let dir = dir.canonicalize().map_err(|e| io_err(dir, e))?;
    // Before anything is written: a new directory is private from its first key on, and an
    // older one (0755, keys 0644) is fixed on this start.
    let widened = make_private(&dir)?;
    if !widened.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            files = %widened.join(", "),
            "state directory was readable by other users: made the directory 0700 and its key files 0600"
        );
    }
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

/// The hub's shared access policies: `iothubowner` with `owner_key`, the others with the keys
/// in `{name}.key` files of `dir`, generated on first use and private (0600) like the owner's.
///
/// # Errors
/// A key file that cannot be read or written.
pub fn policies(
    dir: &Path,
    owner_key: Secret<String>,
) -> Result<crate::auth::Policies, HubError> {
    let mut failed = None;
    let policies = crate::auth::Policies::new(owner_key, |name| {
        let path = dir.join(format!("{name}.key"));
        let key = match fs::read_to_string(&path) {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                let k = generate_key();
                if let Err(e) = write_private(&path, &k) {
                    failed = Some(e);
                }
                k
            }
        };
        Secret::new(key)
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(policies),
    }
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, HubError> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| HubError::State(format!("bad certificate pem: {e}")))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn set_mode(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_new_state_dir_is_private_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hub");
        prepare(&dir, "localhost").unwrap();
        assert_eq!(mode(&dir), 0o700);
        for f in [CA_KEY_FILE, SERVER_KEY_FILE, OWNER_KEY_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert!(
            make_private(&dir).unwrap().is_empty(),
            "nothing left to fix"
        );
    }

    #[test]
    fn an_older_state_dir_is_made_private_on_start_and_said_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hub");
        prepare(&dir, "localhost").unwrap();
        // What older builds left: a 0755 directory and 0644 files holding keys.
        set_mode(&dir, 0o755);
        for f in PRIVATE_FILES {
            let p = dir.join(f);
            if !p.exists() {
                fs::write(&p, "x").unwrap();
            }
            set_mode(&p, 0o644);
        }
        set_mode(&dir.join(CA_FILE), 0o644);
        let widened = make_private(&dir).unwrap();
        let mut expected: Vec<String> = PRIVATE_FILES.iter().map(|f| f.to_string()).collect();
        expected.insert(0, ".".into());
        assert_eq!(widened, expected);
        assert_eq!(mode(&dir), 0o700);
        for f in PRIVATE_FILES {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        // The CA certificate is public; the private directory is what guards it.
        assert_eq!(mode(&dir.join(CA_FILE)), 0o644);
        assert!(make_private(&dir).unwrap().is_empty(), "said once");
        // And a start (prepare) fixes it too, keeping the keys it finds.
        set_mode(&dir.join(OWNER_KEY_FILE), 0o640);
        let before = fs::read_to_string(dir.join(OWNER_KEY_FILE)).unwrap();
        prepare(&dir, "localhost").unwrap();
        assert_eq!(mode(&dir.join(OWNER_KEY_FILE)), 0o600);
        assert_eq!(
            fs::read_to_string(dir.join(OWNER_KEY_FILE)).unwrap(),
            before
        );
    }

    #[test]
    fn write_private_replaces_the_contents_and_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, "a much longer old text").unwrap();
        set_mode(&p, 0o666);
        write_private(&p, "new").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(mode(&p), 0o600);
    }
}
