//! `azsim cert ca | device`: test certificates for X.509 devices, made with rcgen (ECDSA P-256
//! keys, PEM files); and `azsim hub ca add | list | delete`, the CAs a hub holds for
//! `certificateAuthority` devices (its `/certificates/{name}` API).
//!
//! A device certificate's subject CN is the device id (`{device}/{module}` for a module) and it
//! is marked for client authentication, which is what IoT Hub checks. Key files are written
//! 0600 (Unix) and never printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::Method;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::cli::cert::{CertConfig, CertKind, key_file_for};
use crate::cli::run::DeviceTarget;
use crate::device::driver::Credential;
use crate::error::{CliError, UsageError};
use crate::out::outln;
use crate::service::{ServiceClient, Target};
use crate::tls::ClientCert;

/// What was written.
#[derive(Debug, Clone)]
pub struct Made {
    /// Subject CN.
    pub subject: String,
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key_file: PathBuf,
    /// SHA-1 thumbprint, uppercase hex.
    pub sha1: String,
    /// SHA-256 thumbprint, uppercase hex.
    pub sha256: String,
    /// `notAfter`, RFC 3339.
    pub not_after: String,
}

impl Made {
    fn json(&self, kind: &str) -> Value {
        json!({
            "kind": kind,
            "subject": self.subject,
            "certFile": self.cert_file,
            "keyFile": self.key_file,
            "sha1Thumbprint": self.sha1,
            "sha256Thumbprint": self.sha256,
            "notAfter": self.not_after,
        })
    }
}

fn rcgen_err(e: rcgen::Error) -> CliError {
    CliError::runtime(format!("certificate generation failed: {e}"))
}

fn io_err(path: &Path, e: &std::io::Error) -> CliError {
    CliError::runtime(format!("{}: {e}", path.display()))
}

fn write_key(path: &Path, pem: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| io_err(path, &e))?;
    f.write_all(pem.as_bytes()).map_err(|e| io_err(path, &e))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A few minutes back: a hub or device whose clock is a little behind still accepts it.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

fn finish(
    subject: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
    out: &Path,
    stem: &str,
    not_after: OffsetDateTime,
) -> Result<Made, CliError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, &e))?;
    let cert_file = out.join(format!("{stem}.pem"));
    let key_file = out.join(format!("{stem}.key.pem"));
    write_key(&key_file, &key.serialize_pem())?;
    std::fs::write(&cert_file, cert.pem()).map_err(|e| io_err(&cert_file, &e))?;
    Ok(Made {
        subject: subject.to_owned(),
        cert_file,
        key_file,
        sha1: azsim_emulator::x509::sha1_thumbprint(cert.der()),
        sha256: azsim_emulator::x509::sha256_thumbprint(cert.der()),
        not_after: not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}

/// A CA certificate and key, `out/{name}.pem` and `out/{name}.key.pem`, valid `days`.
///
/// # Errors
/// Generation or file errors (exit 1).
pub fn make_ca(name: &str, out: &Path, days: i64) -> Result<Made, CliError> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(
        DnType::OrganizationName,
        "azsim test CA (not for production)",
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    finish(name, &cert, &key, out, name, params.not_after)
}

/// A device certificate with subject CN `cn` and key, `out/{stem}.pem` and
/// `out/{stem}.key.pem`, signed by the CA in `ca` (its key beside it as `.key.pem`) or
/// self-signed, valid `days`.
///
/// # Errors
/// An unreadable or unusable CA (exit 1), generation or file errors.
pub fn make_device(
    cn: &str,
    stem: &str,
    ca: Option<&Path>,
    out: &Path,
    days: i64,
) -> Result<Made, CliError> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = match ca {
        None => params.self_signed(&key).map_err(rcgen_err)?,
        Some(ca_file) => {
            let key_path = key_file_for(ca_file);
            let ca_pem = std::fs::read_to_string(ca_file).map_err(|e| io_err(ca_file, &e))?;
            let ca_key_pem =
                std::fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, &e))?;
            let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
                CliError::runtime(format!(
                    "{}: not a usable PKCS#8 private key ({e})",
                    key_path.display()
                ))
            })?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
                CliError::runtime(format!(
                    "{}: not a usable CA certificate ({e})",
                    ca_file.display()
                ))
            })?;
            params.signed_by(&key, &issuer).map_err(rcgen_err)?
        }
    };
    finish(cn, &cert, &key, out, stem, params.not_after)
}

/// Runs `azsim cert`.
///
/// # Errors
/// See [`make_ca`] and [`make_device`].
pub async fn run(cfg: CertConfig) -> Result<ExitCode, CliError> {
    let (made, kind) = match &cfg.kind {
        CertKind::Ca { name } => (make_ca(name, &cfg.out, cfg.days)?, "ca"),
        CertKind::Device { cn, stem, ca } => (
            make_device(cn, stem, ca.as_deref(), &cfg.out, cfg.days)?,
            if ca.is_some() {
                "ca-signed"
            } else {
                "self-signed"
            },
        ),
    };
    if cfg.json {
        outln!("{}", made.json(kind));
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "wrote {} (certificate) and {} (private key)",
        made.cert_file.display(),
        made.key_file.display()
    );
    outln!("subject CN:         {}", made.subject);
    outln!("SHA-1 thumbprint:   {}", made.sha1);
    outln!("SHA-256 thumbprint: {}", made.sha256);
    outln!("valid until:        {}", made.not_after);
    let cert = made.cert_file.display();
    match &cfg.kind {
        CertKind::Ca { .. } => outln!("next: azsim hub ca add {cert}"),
        CertKind::Device { cn, ca: None, .. } => {
            outln!("next: azsim device create {cn} --x509 self-signed --cert {cert}")
        }
        CertKind::Device { cn, .. } => {
            outln!("next: azsim device create {cn} --x509 ca");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `azsim run --cert FILE --cert-key FILE` without a connection string: the local hub `info`,
/// as the identity the certificate's subject CN names (`{device}` or `{device}/{module}`).
///
/// # Errors
/// A certificate without a usable CN (`--cert`, exit 2).
pub fn local_x509_target(
    info: &azsim_emulator::HubInfo,
    cert: ClientCert,
) -> Result<DeviceTarget, UsageError> {
    let leaf = cert
        .chain
        .first()
        .ok_or_else(|| UsageError::new("--cert", "holds no certificate"))?;
    let cn = azsim_emulator::x509::subject_cn(leaf)
        .map_err(|e| UsageError::new("--cert", e.to_string()))?;
    let (device_id, module_id) = match cn.split_once('/') {
        Some((d, m)) => (d.to_owned(), Some(m.to_owned())),
        None => (cn, None),
    };
    Ok(DeviceTarget {
        hub_host: info.hostname.clone(),
        connect_host: info.hostname.clone(),
        port: info.mqtt_port,
        device_id,
        module_id,
        credential: Credential::X509(cert),
    })
}

/// What `azsim hub ca` does, validated.
#[derive(Debug, Clone)]
pub enum HubCaAction {
    /// Upload a CA certificate file under a name.
    Add {
        /// The PEM file.
        file: PathBuf,
        /// Its name in the hub.
        name: String,
    },
    /// List the hub's CAs.
    List,
    /// Delete one.
    Delete {
        /// Its name.
        name: String,
    },
}

/// Validated `azsim hub ca`.
#[derive(Debug, Clone)]
pub struct HubCaConfig {
    /// The hub.
    pub target: Target,
    /// What to do.
    pub action: HubCaAction,
    /// JSON output.
    pub json: bool,
}

/// The name a CA file gets in the hub unless `--name` says otherwise: its file stem.
///
/// # Errors
/// A stem that is not a valid certificate name.
pub fn ca_name_of(file: &Path, name: Option<String>) -> Result<String, UsageError> {
    let (field, name) = match name {
        Some(n) => ("--name", n),
        None => (
            "FILE",
            file.file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".pem").to_string())
                .unwrap_or_default(),
        ),
    };
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(UsageError::new(
            field,
            "a certificate name is 1 to 64 characters of A-Z, a-z, 0-9, '-', '.', '_' (give --name)",
        ))
    }
}

/// Runs `azsim hub ca`.
///
/// # Errors
/// The hub's error or a transport error (exit 1); an unreadable file (exit 1).
pub async fn hub_ca(cfg: HubCaConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    match cfg.action {
        HubCaAction::Add { file, name } => {
            let pem = std::fs::read_to_string(&file).map_err(|e| io_err(&file, &e))?;
            let path = format!("/certificates/{name}");
            let (rb, url) = client.request(Method::PUT, &path);
            let body = json!({"properties": {"certificate": pem, "isVerified": true}});
            // Replaces a CA of the same name (If-Match: *), as re-running the command should.
            let v = client
                .json(rb.header("If-Match", "*").json(&body), &url)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                outln!("{v}");
            } else {
                outln!(
                    "CA {name} added to {}: subject {}, thumbprint {}",
                    client.host(),
                    v.pointer("/properties/subject")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    v.pointer("/properties/thumbprint")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                );
            }
        }
        HubCaAction::List => {
            let (rb, url) = client.request(Method::GET, "/certificates");
            let v = client.json(rb, &url).await.map_err(CliError::runtime)?;
            if cfg.json {
                outln!("{v}");
            } else {
                let list = v
                    .get("value")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    outln!("no CA certificates in {}", client.host());
                }
                for c in list {
                    let f = |p: &str| {
                        c.pointer(p)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    };
                    outln!(
                        "{}  {}  {}  expires {}",
                        f("/name"),
                        f("/properties/subject"),
                        f("/properties/thumbprint"),
                        f("/properties/expiry")
                    );
                }
            }
        }
        HubCaAction::Delete { name } => {
            let (rb, url) = client.request(Method::DELETE, &format!("/certificates/{name}"));
            client
                .send(rb.header("If-Match", "*"), &url)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                outln!("{}", json!({"name": name, "deleted": true}));
            } else {
                outln!("CA {name} deleted from {}", client.host());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
