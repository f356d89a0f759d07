//! X.509 device authentication, as IoT Hub does it: the TLS layer asks for a client certificate
//! but accepts any (see [`AnyClientCert`]: it only checks that the client holds the
//! certificate's private key), and the hub decides at CONNECT time with [`authenticate`]:
//!
//! - a `selfSigned` identity: the leaf's SHA-1 or SHA-256 thumbprint is its primary or
//!   secondary thumbprint (its subject is not read: the Node SDKs' e2e suite connects with
//!   `CN=localhost` certificates, which IoT Hub takes);
//! - a `certificateAuthority` identity: the chain the client sent leads to a CA the hub holds
//!   (`/certificates/{name}`, `azsim hub ca add`), checked with rustls-webpki for client auth,
//!   and the leaf's subject CN is the client id (`{device}` or `{device}/{module}`);
//! - both: the leaf is valid at the hub's clock (not expired, not before its `notBefore`).
//!
//! An X.509 v1 certificate (what `openssl x509 -req` makes without extensions, as the `pem`
//! package under the Node e2e suite does) is taken too: webpki reads only v3, so its handshake
//! signature is checked with its raw public key (see [`AnyClientCert`]), and for
//! `certificateAuthority` it must be issued directly by a held CA (see `verify_v1_leaf`).
//!
//! The hub-held CAs live in the store's `certificates` table (created on first use), one JSON
//! row per name. Parsing is x509-parser's and rustls-webpki's: no hand-written ASN.1.
//!
//! DPS X.509 attestation checks a registration's certificate with the same [`verify_chain`],
//! [`subject_cn`], [`check_validity`] and thumbprints.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension as _, params};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::HubError;

/// How an identity authenticates (Azure's `authentication.type` and `x509Thumbprint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Auth {
    /// Symmetric keys and SAS tokens.
    #[default]
    Sas,
    /// A certificate whose thumbprint (SHA-1 or SHA-256, uppercase hex) is registered.
    SelfSigned {
        primary_thumbprint: Option<String>,
        secondary_thumbprint: Option<String>,
    },
    /// A certificate issued by a CA the hub holds.
    CertificateAuthority,
}

impl Auth {
    /// Azure's name for it: `sas`, `selfSigned`, `certificateAuthority`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Auth::Sas => "sas",
            Auth::SelfSigned { .. } => "selfSigned",
            Auth::CertificateAuthority => "certificateAuthority",
        }
    }

    /// SAS (the default, not written into older-looking rows).
    pub fn is_sas(&self) -> bool {
        matches!(self, Auth::Sas)
    }

    /// Whether the identity connects with a certificate.
    pub fn is_x509(&self) -> bool {
        !self.is_sas()
    }

    /// `x509Thumbprint` as the registry shows it.
    pub fn thumbprint_json(&self) -> Value {
        match self {
            Auth::SelfSigned {
                primary_thumbprint,
                secondary_thumbprint,
            } => {
                json!({"primaryThumbprint": primary_thumbprint, "secondaryThumbprint": secondary_thumbprint})
            }
            _ => json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
        }
    }
}

/// Give `ident` the authentication a registry write asked for (`None`: keep what it has), then
/// make its keys agree: an X.509 identity holds none, a SAS one without keys gets new ones.
/// The one rule for the registry PUT and the bulk call.
pub(crate) fn apply_auth(ident: &mut crate::store::Identity, auth: Option<&Auth>) {
    if let Some(a) = auth {
        ident.auth = a.clone();
    }
    for k in [&mut ident.primary_key, &mut ident.secondary_key] {
        if ident.auth.is_x509() {
            *k = azsim_proto::secret::Secret::new(String::new());
        } else if k.expose().is_empty() {
            *k = azsim_proto::secret::Secret::new(crate::state_dir::generate_key());
        }
    }
}

/// The `authentication` of a registry PUT body: `None` when it names no type (keep what is
/// stored; a new identity is SAS), else the type with its thumbprints (`selfSigned` needs at
/// least one, SHA-1 or SHA-256 hex).
///
/// # Errors
/// The field and what is wrong with it (for a 400).
pub fn auth_from_json(body: &Value) -> Result<Option<Auth>, String> {
    let Some(t) = body.pointer("/authentication/type") else {
        return Ok(None);
    };
    let thumb = |which: &str| -> Result<Option<String>, String> {
        match body.pointer(&format!("/authentication/x509Thumbprint/{which}")) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => normalize_thumbprint(s)
                .map(Some)
                .map_err(|e| format!("authentication.x509Thumbprint.{which}: {e}")),
            Some(_) => Err(format!(
                "authentication.x509Thumbprint.{which}: must be a string"
            )),
        }
    };
    let t = match t {
        Value::Null => return Ok(None),
        Value::String(t) => t.as_str(),
        _ => return Err("authentication.type: must be a string".into()),
    };
    match t {
        "sas" => Ok(Some(Auth::Sas)),
        "selfSigned" => {
            let primary_thumbprint = thumb("primaryThumbprint")?;
            let secondary_thumbprint = thumb("secondaryThumbprint")?;
            if primary_thumbprint.is_none() && secondary_thumbprint.is_none() {
                return Err("authentication.x509Thumbprint: a selfSigned identity needs a primaryThumbprint or secondaryThumbprint".into());
            }
            Ok(Some(Auth::SelfSigned {
                primary_thumbprint,
                secondary_thumbprint,
            }))
        }
        "certificateAuthority" => Ok(Some(Auth::CertificateAuthority)),
        other => Err(format!(
            "authentication.type '{other}' is not supported by the local hub (sas, selfSigned, certificateAuthority)"
        )),
    }
}

/// Why a certificate does not authenticate an identity. Shown in the hub's log with the
/// CONNACK 5, and by DPS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("no client certificate (the identity uses x509 authentication)")]
    NoCertificate,
    #[error("client certificate does not parse: {0}")]
    Malformed(String),
    #[error("client certificate expired (notAfter {0})")]
    Expired(String),
    #[error("client certificate not yet valid (notBefore {0})")]
    NotYetValid(String),
    #[error("client certificate subject CN '{found}' is not '{expected}'")]
    WrongCn { found: String, expected: String },
    #[error(
        "client certificate thumbprint {sha1} / {sha256} matches neither registered thumbprint"
    )]
    WrongThumbprint { sha1: String, sha256: String },
    #[error("client certificate is not issued by a CA the hub holds: {0}")]
    UnknownCa(String),
    #[error("identity uses sas authentication: a certificate alone is not accepted")]
    NotX509,
}

/// SHA-1 thumbprint of a DER certificate, uppercase hex (how Azure shows it).
pub fn sha1_thumbprint(der: &[u8]) -> String {
    hex_upper(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// SHA-256 thumbprint of a DER certificate, uppercase hex.
pub fn sha256_thumbprint(der: &[u8]) -> String {
    hex_upper(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// A thumbprint as given (hex, any case, `:` or spaces between bytes allowed) in the stored
/// form: 40 (SHA-1) or 64 (SHA-256) uppercase hex digits.
///
/// # Errors
/// Anything else, as a short statement.
pub fn normalize_thumbprint(s: &str) -> Result<String, String> {
    let t: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_uppercase();
    if !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("must be hex".into());
    }
    if t.len() != 40 && t.len() != 64 {
        return Err("must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint".into());
    }
    Ok(t)
}

/// The subject common name of a DER certificate.
///
/// A certificate webpki cannot read is refused here too: its TLS handshake signature was not
/// checked (see `AnyClientCert`), so no check that starts from the leaf's CN (the hub's
/// [`authenticate`], DPS attestation) may accept it.
///
/// # Errors
/// [`X509Error::Malformed`] when it does not parse or has no CN.
pub fn subject_cn(der: &[u8]) -> Result<String, X509Error> {
    if unreadable(&CertificateDer::from(der)) {
        return Err(X509Error::Malformed("not an X.509 certificate".into()));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| X509Error::Malformed("no subject CN".into()))?;
    cn.as_str()
        .map(str::to_string)
        .map_err(|e| X509Error::Malformed(format!("subject CN: {e}")))
}

/// Checks that `now` (Unix seconds) is within the certificate's validity.
///
/// # Errors
/// [`X509Error::Expired`], [`X509Error::NotYetValid`] or [`X509Error::Malformed`].
pub fn check_validity(der: &[u8], now: u64) -> Result<(), X509Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    let v = cert.validity();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < v.not_before.timestamp() {
        return Err(X509Error::NotYetValid(v.not_before.to_string()));
    }
    if now > v.not_after.timestamp() {
        return Err(X509Error::Expired(v.not_after.to_string()));
    }
    Ok(())
}

/// Checks that `chain` (leaf first, then any intermediates the client sent) leads to one of
/// `cas` (DER), valid at `now` (Unix seconds) for client authentication.
///
/// # Errors
/// [`X509Error::UnknownCa`] with webpki's reason (an expired link is [`X509Error::Expired`]).
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    cas: &[CertificateDer<'_>],
    now: u64,
) -> Result<(), X509Error> {
    let leaf = chain.first().ok_or(X509Error::NoCertificate)?;
    if webpki::EndEntityCert::try_from(leaf).is_err() && v1_public_key(leaf).is_some() {
        return verify_v1_leaf(leaf, cas, now);
    }
    let anchors: Vec<_> = cas
        .iter()
        .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
        .collect();
    if anchors.is_empty() {
        return Err(X509Error::UnknownCa(
            "the hub holds no CA certificate".into(),
        ));
    }
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| X509Error::Malformed(e.to_string()))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => X509Error::Expired(format!("in the chain: {e}")),
        webpki::Error::CertNotValidYet { .. } => {
            X509Error::NotYetValid(format!("in the chain: {e}"))
        }
        other => X509Error::UnknownCa(other.to_string()),
    })
}

/// An X.509 v1 leaf (which webpki does not read) issued directly by a CA the hub holds: its
/// issuer is the CA's subject, its signature verifies with the CA's public key, and both are
/// valid at `now`. (The Node e2e suite's CA-signed devices are such leaves: `openssl x509 -req
/// -CA`.) Intermediates are not followed for a v1 leaf.
fn verify_v1_leaf(leaf: &[u8], cas: &[CertificateDer<'_>], now: u64) -> Result<(), X509Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    let signed = parsed.tbs_certificate.as_ref();
    let signature = &parsed.signature_value.data;
    for ca in cas {
        let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(ca) else {
            continue;
        };
        if ca_cert.subject().as_raw() != parsed.issuer().as_raw() {
            continue;
        }
        let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from(
            ca_cert.tbs_certificate.subject_pki.raw,
        );
        let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
            continue;
        };
        // Any algorithm the key verifies the signature with: only the CA's key signs so.
        if webpki::ALL_VERIFICATION_ALGS
            .iter()
            .any(|alg| key.verify_signature(*alg, signed, signature).is_ok())
        {
            check_validity(ca, now).map_err(|e| X509Error::UnknownCa(format!("the CA: {e}")))?;
            return check_validity(leaf, now);
        }
    }
    Err(X509Error::UnknownCa(
        "no CA the hub holds issued this X.509 v1 certificate".into(),
    ))
}

/// Whether the certificate `chain` a client presented authenticates the identity `client_id`
/// (`{device}` or `{device}/{module}`) registered with `auth`, at `now` (Unix seconds, the
/// hub's clock). `cas` are the hub-held CA certificates (only read for
/// `certificateAuthority`).
///
/// # Errors
/// The precise reason, for the hub's log.
pub fn authenticate(
    chain: Option<&[CertificateDer<'_>]>,
    client_id: &str,
    auth: &Auth,
    cas: &[CertificateDer<'_>],
    now: u64,
) -> Result<(), X509Error> {
    let chain = chain
        .filter(|c| !c.is_empty())
        .ok_or(X509Error::NoCertificate)?;
    let leaf = &chain[0];
    // Only a certificate whose handshake signature was verified may authenticate: those are
    // exactly the ones webpki reads (see `AnyClientCert`).
    if unreadable(leaf) {
        return Err(X509Error::Malformed("not an X.509 certificate".into()));
    }
    check_validity(leaf, now)?;
    if matches!(auth, Auth::CertificateAuthority) {
        let cn = subject_cn(leaf)?;
        if cn != client_id {
            return Err(X509Error::WrongCn {
                found: cn,
                expected: client_id.to_string(),
            });
        }
    }
    match auth {
        Auth::Sas => Err(X509Error::NotX509),
        Auth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
        } => {
            let (sha1, sha256) = (sha1_thumbprint(leaf), sha256_thumbprint(leaf));
            let hit = [primary_thumbprint, secondary_thumbprint]
                .into_iter()
                .flatten()
                .any(|t| t.eq_ignore_ascii_case(&sha1) || t.eq_ignore_ascii_case(&sha256));
            if hit {
                Ok(())
            } else {
                Err(X509Error::WrongThumbprint { sha1, sha256 })
            }
        }
        Auth::CertificateAuthority => verify_chain(chain, cas, now),
    }
}

/// The certificate chain an HTTPS client sent in its TLS handshake (leaf first), put on each of
/// its requests: a WebSocket upgrade's MQTT CONNECT and the DPS device HTTPS API check X.509
/// devices with it.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Option<Arc<[CertificateDer<'static>]>>);

impl PeerCerts {
    /// The chain the client sent, if any.
    pub fn to_vec(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.0.as_deref().map(<[_]>::to_vec)
    }
}

/// The TLS layer's client-certificate check: a certificate is asked for but optional (a SAS
/// device sends none), any chain is accepted (the hub decides at CONNECT, as IoT Hub does), and
/// the handshake signature is verified, so a client that sent a certificate holds its key (one
/// that is not a certificate at all is let through unverified and refused at CONNECT: see
/// `unreadable`).
#[derive(Debug)]
pub struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    /// Over `provider`'s signature algorithms.
    pub fn new(provider: &CryptoProvider) -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl AnyClientCert {
    /// The handshake signature of a certificate webpki cannot read: verified with its raw
    /// public key when x509-parser reads it (an X.509 v1 certificate), let through otherwise
    /// (garbage, refused at CONNECT: see `unreadable`).
    fn verify_other(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let Some(spki) = v1_public_key(cert) else {
            return Ok(HandshakeSignatureValid::assertion());
        };
        let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from(spki.as_slice());
        let key = webpki::RawPublicKeyEntity::try_from(&spki).map_err(|_| bad())?;
        let algs = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or_else(bad)?;
        // As rustls does for TLS 1.2: the first of the scheme's algorithms that fits the key.
        for alg in algs {
            match key.verify_signature(*alg, message, dss.signature()) {
                Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
                Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {}
                Err(_) => return Err(bad()),
            }
        }
        Err(bad())
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if webpki::EndEntityCert::try_from(cert).is_err() {
            return self.verify_other(message, cert, dss);
        }
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if webpki::EndEntityCert::try_from(cert).is_err() {
            return self.verify_other(message, cert, dss);
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether neither webpki (v3) nor x509-parser (v1) reads `cert` (garbage bytes). Such a
/// certificate proves nothing and authenticates nothing: [`authenticate`] refuses any such
/// leaf, so its handshake signature is not checked and the client gets the CONNACK 5 any bad
/// certificate gets rather than a TLS alert. Every certificate read has its handshake
/// signature verified (a v1 one with its raw public key).
fn unreadable(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_err() && v1_public_key(cert).is_none()
}

/// The subject public key info (DER) of an X.509 v1 certificate, which webpki does not read.
fn v1_public_key(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    (parsed.tbs_certificate.version == x509_parser::x509::X509Version::V1)
        .then(|| parsed.tbs_certificate.subject_pki.raw.to_vec())
}

/// A CA certificate the hub holds (`/certificates/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldCa {
    #[serde(skip)]
    pub name: String,
    /// The certificate, PEM.
    pub pem: String,
    pub subject: String,
    /// SHA-1, uppercase hex (Azure's `thumbprint`).
    pub thumbprint: String,
    /// `notAfter`, RFC 2822 as Azure's `expiry`.
    pub expiry: String,
    pub created: String,
    pub updated: String,
    pub etag_n: u64,
}

impl HeldCa {
    /// Reads a PEM (or base64 DER, as the service API also takes) CA certificate.
    ///
    /// # Errors
    /// Not a certificate, or not usable as a CA (a short statement).
    pub fn parse(name: &str, text: &str, now: &str) -> Result<HeldCa, String> {
        let der = pem_or_base64_der(text)?;
        webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| format!("not usable as a CA certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map_or_else(|| cert.subject().to_string(), str::to_string);
        let expiry = cert
            .validity()
            .not_after
            .to_rfc2822()
            .unwrap_or_else(|_| cert.validity().not_after.to_string());
        Ok(HeldCa {
            name: name.to_string(),
            pem: der_to_pem(&der),
            subject,
            thumbprint: sha1_thumbprint(&der),
            expiry,
            created: now.to_string(),
            updated: now.to_string(),
            etag_n: 1,
        })
    }

    /// The certificate, DER.
    pub fn der(&self) -> Option<CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(self.pem.as_bytes()).ok()
    }
}

/// The first certificate of a PEM text, or a bare base64 DER certificate.
fn pem_or_base64_der(text: &str) -> Result<CertificateDer<'static>, String> {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject as _;
    if text.contains("-----BEGIN") {
        return CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|e| format!("no PEM certificate: {e}"));
    }
    let compact: String = text.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map(CertificateDer::from)
        .map_err(|_| "neither a PEM certificate nor base64 DER".to_string())
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The hub-held CAs in the store (`certificates` table, made on first use).
pub mod ca_store;

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use time::{Duration, OffsetDateTime};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
    }

    fn ca(cn: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = at(NOW) - Duration::days(1);
        p.not_after = at(NOW) + Duration::days(30);
        let cert = p.self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(p, key))
    }

    fn leaf(
        cn: &str,
        issuer: Option<&Issuer<'_, KeyPair>>,
        from: u64,
        to: u64,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(from);
        p.not_after = at(to);
        match issuer {
            Some(i) => p.signed_by(&key, i).unwrap().der().clone(),
            None => p.self_signed(&key).unwrap().der().clone(),
        }
    }

    #[test]
    fn a_self_signed_certificate_matches_by_either_thumbprint_and_cn() {
        let cert = leaf("d1", None, NOW - 10, NOW + 10);
        let chain = [cert.clone()];
        let by = |p: Option<String>, s: Option<String>| Auth::SelfSigned {
            primary_thumbprint: p,
            secondary_thumbprint: s,
        };
        let sha1 = sha1_thumbprint(&cert);
        let sha256 = sha256_thumbprint(&cert);
        assert_eq!((sha1.len(), sha256.len()), (40, 64));
        for auth in [
            by(Some(sha1.clone()), None),
            by(Some("00".repeat(20)), Some(sha256.to_lowercase())),
        ] {
            authenticate(Some(&chain), "d1", &auth, &[], NOW).unwrap();
        }
        let wrong = by(Some("00".repeat(20)), None);
        assert!(matches!(
            authenticate(Some(&chain), "d1", &wrong, &[], NOW),
            Err(X509Error::WrongThumbprint { .. })
        ));
        // The thumbprint is the match: the subject is not read (CN d1, device d2).
        authenticate(Some(&chain), "d2", &by(Some(sha1.clone()), None), &[], NOW).unwrap();
        assert_eq!(
            authenticate(None, "d1", &by(Some(sha1.clone()), None), &[], NOW),
            Err(X509Error::NoCertificate)
        );
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert!(matches!(
            authenticate(
                Some(&garbage),
                "d1",
                &by(Some(sha1.clone()), None),
                &[],
                NOW
            ),
            Err(X509Error::Malformed(_))
        ));
        assert!(matches!(
            authenticate(
                Some(&chain),
                "d1",
                &by(Some(sha1.clone()), None),
                &[],
                NOW + 11
            ),
            Err(X509Error::Expired(_))
        ));
        assert!(matches!(
            authenticate(Some(&chain), "d1", &by(Some(sha1), None), &[], NOW - 11),
            Err(X509Error::NotYetValid(_))
        ));
    }

    #[test]
    fn a_ca_signed_certificate_needs_the_ca_held_by_the_hub() {
        let (ca_der, issuer) = ca("root");
        let (other_der, _) = ca("other");
        let cert = leaf("d1/m1", Some(&issuer), NOW - 10, NOW + 10);
        let chain = [cert];
        let auth = Auth::CertificateAuthority;
        authenticate(
            Some(&chain),
            "d1/m1",
            &auth,
            &[other_der.clone(), ca_der],
            NOW,
        )
        .unwrap();
        assert!(matches!(
            authenticate(Some(&chain), "d1/m1", &auth, &[other_der], NOW),
            Err(X509Error::UnknownCa(_))
        ));
        assert!(matches!(
            authenticate(Some(&chain), "d1/m1", &auth, &[], NOW),
            Err(X509Error::UnknownCa(_))
        ));
    }

    #[test]
    fn thumbprints_are_normalized_or_refused() {
        let t = "ab:".repeat(19) + "ab";
        assert_eq!(normalize_thumbprint(&t).unwrap(), "AB".repeat(20));
        assert!(normalize_thumbprint("xyz").is_err());
        assert!(normalize_thumbprint("ABCD").is_err());
    }

    #[test]
    fn held_cas_round_trip_through_the_store() {
        let (der, _) = ca("root");
        let pem = der_to_pem(&der);
        let held = HeldCa::parse("root", &pem, "t0").unwrap();
        assert_eq!(held.subject, "root");
        assert_eq!(held.thumbprint, sha1_thumbprint(&der));
        let c = Connection::open_in_memory().unwrap();
        ca_store::put(&c, &held).unwrap();
        assert_eq!(ca_store::anchors(&c).unwrap(), vec![der]);
        assert_eq!(ca_store::list(&c).unwrap()[0].name, "root");
        assert!(ca_store::delete(&c, "root").unwrap());
        assert!(ca_store::get(&c, "root").unwrap().is_none());
        assert!(HeldCa::parse("x", "not a cert", "t0").is_err());
    }
}
