//! The hub's state directory: a dev CA, a server certificate for the hub's names, the
//! `iothubowner` key, and (unless in-memory) the SQLite database. Created on first start and
//! reused afterwards, so clients that trusted the CA once keep trusting it.
//!
//! The certificates follow the hub's [`TlsProfile`]: by default Azure's (an RSA-2048 root,
//! intermediate and server certificate, TLS 1.2 only with IoT Hub's cipher suites), or
//! `modern` (one ECDSA P-256 certificate under an ECDSA CA, TLS 1.2 and 1.3). `tls.profile`
//! records which one the CA was made for; a start with the other profile makes a new CA and
//! server certificate (and says so in the log), so clients must then trust the new `ca.pem`.
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
const INTERMEDIATE_FILE: &str = "intermediate.pem";
const INTERMEDIATE_KEY_FILE: &str = "intermediate.key";
/// Which [`TlsProfile`] the CA and server certificate were made for.
const PROFILE_FILE: &str = "tls.profile";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server.key";
const SERVER_NAMES_FILE: &str = "server.names";
const OWNER_KEY_FILE: &str = "iothubowner.key";
/// The SQLite database file.
pub const DB_FILE: &str = "hub.db";

/// The files that hold a key, kept 0600: the CA and server private keys, the owner key, the
/// discovery file (its service connection string has the owner key), and the database with its
/// write-ahead log and shared memory (device keys).
const PRIVATE_FILES: [&str; 8] = [
    CA_KEY_FILE,
    INTERMEDIATE_KEY_FILE,
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
    /// Server certificate chain: leaf, (Azure profile) intermediate, root.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Server private key (PKCS#8 DER).
    pub key_der: Secret<Vec<u8>>,
    /// The `iothubowner` policy key (base64).
    pub owner_key: Secret<String>,
    /// The TLS versions and suites [`Prepared::server_config`] offers.
    pub profile: TlsProfile,
}

impl Prepared {
    /// A rustls server config over this certificate chain, ring provider, the profile's TLS
    /// versions and suites, asking for an
    /// optional client certificate (X.509 devices; see `crate::x509::AnyClientCert`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, HubError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.expose().clone()));
        let mut provider = rustls::crypto::ring::default_provider();
        let versions: &[&rustls::SupportedProtocolVersion] = match self.profile {
            TlsProfile::Modern => rustls::DEFAULT_VERSIONS,
            TlsProfile::Azure => {
                // IoT Hub's TLS 1.2 suites (its ECDHE-ECDSA ones cannot serve an RSA chain).
                use rustls::CipherSuite as C;
                provider.cipher_suites.retain(|s| {
                    matches!(
                        s.suite(),
                        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    )
                });
                &[&rustls::version::TLS12]
            }
        };
        let provider = Arc::new(provider);
        // A client certificate is asked for but optional; the hub decides at CONNECT.
        let client_certs = crate::x509::AnyClientCert::new(&provider);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
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

/// The TLS the hub's listeners speak and the server chain they present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsProfile {
    /// What Azure's device endpoints present: an RSA-2048 chain (root, intermediate, server
    /// certificate, all sent) over TLS 1.2 only, with the ECDHE-RSA AES-GCM suites IoT Hub
    /// lists (TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256;
    /// the ECDHE-ECDSA ones it also lists need an ECDSA certificate). A firmware TLS stack
    /// without RSA, or with buffers too small for the chain, fails here as it would on Azure.
    #[default]
    Azure,
    /// A single ECDSA P-256 certificate under the dev CA, TLS 1.2 and 1.3: smaller and faster,
    /// not what Azure presents.
    Modern,
}

impl TlsProfile {
    /// `azure` or `modern` (the `--tls` values and the `tls.profile` file).
    pub fn name(self) -> &'static str {
        match self {
            TlsProfile::Azure => "azure",
            TlsProfile::Modern => "modern",
        }
    }

    /// One line for people: the profile and what it presents.
    pub fn describe(self) -> &'static str {
        match self {
            TlsProfile::Azure => {
                "azure (RSA-2048 root, intermediate and server certificate; TLS 1.2, as Azure)"
            }
            TlsProfile::Modern => {
                "modern (one ECDSA P-256 certificate; TLS 1.2 and 1.3; not what Azure presents)"
            }
        }
    }

    /// The profile named `s`.
    pub fn parse(s: &str) -> Option<TlsProfile> {
        match s.trim() {
            "azure" => Some(TlsProfile::Azure),
            "modern" => Some(TlsProfile::Modern),
            _ => None,
        }
    }

    /// A new private key for this profile: RSA-2048 (Azure) or ECDSA P-256 (modern).
    fn new_key(self) -> Result<KeyPair, HubError> {
        match self {
            TlsProfile::Modern => KeyPair::generate().map_err(rcgen_err),
            TlsProfile::Azure => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                    .map_err(|e| HubError::State(format!("rsa key generation failed: {e}")))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| HubError::State(format!("rsa key encoding failed: {e}")))?;
                KeyPair::try_from(der.as_bytes()).map_err(rcgen_err)
            }
        }
    }
}

fn ca_params(profile: TlsProfile) -> CertificateParams {
    // Rebuilt identically on every start: rcgen's Issuer needs only the DN, key usages and key
    // id method, so the persisted CA key plus these params re-sign without parsing the CA PEM.
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        match profile {
            TlsProfile::Modern => "azsim local hub dev CA",
            TlsProfile::Azure => "azsim local hub dev root CA (RSA)",
        },
    );
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

/// The Azure profile's intermediate CA (as Azure's chain has one), issued by the root.
fn intermediate_params() -> CertificateParams {
    let mut params = ca_params(TlsProfile::Azure);
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "azsim local hub dev intermediate CA (RSA)",
    );
    dn.push(DnType::OrganizationName, "azsim (not for production)");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
}

fn rcgen_err(e: rcgen::Error) -> HubError {
    HubError::State(format!("certificate generation failed: {e}"))
}

fn read(path: &Path) -> Result<String, HubError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// The new private keys of one start. A first start of the Azure profile needs three RSA-2048
/// keys, each a few hundred milliseconds of prime search: they are made ahead on their own
/// threads, so the start takes about as long as the slowest one where there are cores for it.
struct Keys {
    profile: TlsProfile,
    ready: Vec<KeyPair>,
}

impl Keys {
    fn new(profile: TlsProfile, ahead: usize) -> Result<Keys, HubError> {
        let ready = std::thread::scope(|s| {
            let made: Vec<_> = (0..ahead).map(|_| s.spawn(|| profile.new_key())).collect();
            made.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(HubError::State("key generation failed".into())))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Keys { profile, ready })
    }

    /// A key made ahead, or a new one.
    fn next(&mut self) -> Result<KeyPair, HubError> {
        match self.ready.pop() {
            Some(k) => Ok(k),
            None => self.profile.new_key(),
        }
    }
}

/// A CA certificate and key: loaded from `cert`/`key` when both exist, else made with
/// `params` (self-signed, or by `issuer`) and written.
fn load_or_make_ca(
    cert: &Path,
    key: &Path,
    keys: &mut Keys,
    params: CertificateParams,
    issuer: Option<&Issuer<'_, &KeyPair>>,
) -> Result<(String, KeyPair, bool), HubError> {
    if cert.exists() && key.exists() {
        let key_pair = KeyPair::from_pem(&read(key)?).map_err(rcgen_err)?;
        return Ok((read(cert)?, key_pair, false));
    }
    let key_pair = keys.next()?;
    let mut params = params;
    // Not the hub's clock: clients check certificates against their own real clocks.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    let made = match issuer {
        None => params.self_signed(&key_pair),
        Some(i) => params.signed_by(&key_pair, i),
    }
    .map_err(rcgen_err)?;
    write_private(key, &key_pair.serialize_pem())?;
    fs::write(cert, made.pem()).map_err(|e| io_err(cert, e))?;
    Ok((made.pem(), key_pair, true))
}

/// Create (first start) or load the state directory for `hostname`, with the default
/// ([`TlsProfile::Azure`]) TLS profile.
pub fn prepare(dir: &Path, hostname: &str) -> Result<Prepared, HubError> {
    prepare_with(dir, hostname, TlsProfile::default())
}

/// Create (first start) or load the state directory for `hostname` and `profile`. A state
/// directory made for the other profile (or before profiles: those are `modern`) gets a new
/// CA and server certificate for this one, and says so in the log.
pub fn prepare_with(dir: &Path, hostname: &str, profile: TlsProfile) -> Result<Prepared, HubError> {
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
    let int_path = dir.join(INTERMEDIATE_FILE);
    let int_key_path = dir.join(INTERMEDIATE_KEY_FILE);
    let server_path = dir.join(SERVER_CERT_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    let names_path = dir.join(SERVER_NAMES_FILE);
    let profile_path = dir.join(PROFILE_FILE);

    // A CA made before profiles existed is the modern one.
    let was = fs::read_to_string(&profile_path)
        .ok()
        .and_then(|s| TlsProfile::parse(&s))
        .unwrap_or(TlsProfile::Modern);
    if ca_path.exists() && was != profile {
        tracing::warn!(
            from = was.name(),
            to = profile.name(),
            ca_file = %ca_path.display(),
            "TLS profile changed: making a new dev CA and server certificate for it; clients must trust the new CA file"
        );
        for p in [
            &ca_path,
            &ca_key_path,
            &int_path,
            &int_key_path,
            &server_path,
        ] {
            let _ = fs::remove_file(p);
        }
    }
    let whole_chain = profile == TlsProfile::Azure && !(ca_path.exists() && ca_key_path.exists());
    let mut keys = Keys::new(profile, if whole_chain { 3 } else { 0 })?;
    let (ca_pem, ca_key, new_ca) =
        load_or_make_ca(&ca_path, &ca_key_path, &mut keys, ca_params(profile), None)?;
    fs::write(&profile_path, profile.name()).map_err(|e| io_err(&profile_path, e))?;
    if new_ca {
        // A new CA invalidates any old intermediate and server certificate.
        let _ = fs::remove_file(&int_path);
        let _ = fs::remove_file(&server_path);
    }
    let root_issuer = Issuer::new(ca_params(profile), &ca_key);
    // The Azure profile's server certificate is issued by an intermediate, sent in the chain.
    let intermediate = match profile {
        TlsProfile::Modern => None,
        TlsProfile::Azure => {
            let (pem, key, new_int) = load_or_make_ca(
                &int_path,
                &int_key_path,
                &mut keys,
                intermediate_params(),
                Some(&root_issuer),
            )?;
            if new_int {
                let _ = fs::remove_file(&server_path);
            }
            Some((pem, key))
        }
    };

    let mut names = vec![hostname.to_string()];
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let names_line = names.join(",");
    let reuse = server_path.exists()
        && server_key_path.exists()
        && fs::read_to_string(&names_path).ok().as_deref() == Some(names_line.as_str());
    let (server_pem, server_key_pem) = if reuse {
        (read(&server_path)?, read(&server_key_path)?)
    } else {
        let key = keys.next()?;
        let mut params = CertificateParams::new(names.clone()).map_err(rcgen_err)?;
        params.distinguished_name.push(DnType::CommonName, hostname);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(825);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if profile == TlsProfile::Azure {
            // As Azure's RSA server certificates carry it.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let cert = match &intermediate {
            None => params.signed_by(&key, &root_issuer),
            Some((_, int_key)) => {
                params.signed_by(&key, &Issuer::new(intermediate_params(), int_key))
            }
        }
        .map_err(rcgen_err)?;
        write_private(&server_key_path, &key.serialize_pem())?;
        // The file holds the chain a server sends up to the root (leaf, then the Azure
        // profile's intermediate), so a broker given it as its certificate (mosquitto's
        // `certfile`) presents a chain clients can verify against `ca.pem`.
        let mut file = cert.pem();
        if let Some((int_pem, _)) = &intermediate {
            file.push_str(int_pem);
        }
        fs::write(&server_path, file).map_err(|e| io_err(&server_path, e))?;
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

    let mut cert_chain = vec![pem_to_der(&server_pem)?];
    if let Some((pem, _)) = &intermediate {
        cert_chain.push(pem_to_der(pem)?);
    }
    cert_chain.push(pem_to_der(&ca_pem)?);
    let key = KeyPair::from_pem(&server_key_pem).map_err(rcgen_err)?;
    Ok(Prepared {
        ca_file: ca_path,
        cert_chain,
        key_der: Secret::new(key.serialize_der()),
        owner_key: Secret::new(owner_key),
        profile,
    })
}

/// The hub's shared access policies: `iothubowner` with `owner_key`, the others with the keys
/// in `{name}.key` files of `dir`, generated on first use and private (0600) like the owner's.
///
/// # Errors
/// A key file that cannot be read or written.
pub fn policies(dir: &Path, owner_key: Secret<String>) -> Result<crate::auth::Policies, HubError> {
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
    fn each_profile_has_its_chain_and_a_profile_change_makes_a_new_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hub");
        let started = std::time::Instant::now();
        let azure = prepare_with(&dir, "localhost", TlsProfile::Azure).unwrap();
        println!("azure profile, first start: {:?}", started.elapsed());
        assert_eq!(azure.cert_chain.len(), 3, "leaf, intermediate, root");
        for der in &azure.cert_chain {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            let spki = c.public_key().parsed().unwrap();
            assert!(
                matches!(spki, x509_parser::public_key::PublicKey::RSA(ref k) if k.key_size() == 2048),
                "{}",
                c.subject()
            );
        }
        let started = std::time::Instant::now();
        let again = prepare_with(&dir, "localhost", TlsProfile::Azure).unwrap();
        println!("azure profile, next start: {:?}", started.elapsed());
        assert_eq!(again.cert_chain, azure.cert_chain, "kept across starts");
        let cfg = azure.server_config(&[]).unwrap();
        assert!(
            cfg.crypto_provider()
                .cipher_suites
                .iter()
                .all(|s| s.version() == &rustls::version::TLS12)
        );
        // Switching profile: a new (ECDSA) CA and one server certificate under it.
        let modern = prepare_with(&dir, "localhost", TlsProfile::Modern).unwrap();
        assert_eq!(modern.cert_chain.len(), 2);
        assert_ne!(modern.cert_chain.last(), azure.cert_chain.last());
        assert!(!dir.join(INTERMEDIATE_FILE).exists() || modern.cert_chain.len() == 2);
        assert_eq!(
            fs::read_to_string(dir.join(PROFILE_FILE)).unwrap(),
            "modern"
        );
        let back = prepare_with(&dir, "localhost", TlsProfile::Azure).unwrap();
        assert_eq!(back.cert_chain.len(), 3);
        assert_ne!(
            back.cert_chain.last(),
            azure.cert_chain.last(),
            "a new root"
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
