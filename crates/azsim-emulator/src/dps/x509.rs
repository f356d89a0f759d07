//! X.509 attestation for DPS: the `x509` attestation of enrollments as the service API takes
//! it (an individual enrollment's `clientCertificates`, a group's `signingCertificates` or
//! `caReferences` naming a CA the hub holds), and the check of the chain a device presented in
//! its TLS handshake, with the hub's own X.509 rules (`crate::x509`): the leaf's subject CN is
//! the registration id and it is valid at the hub's clock; an individual enrollment's
//! certificate is the leaf (same SHA-1 or SHA-256 thumbprint); a group's CA signs the chain.

use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::DpsError;
use crate::x509 as hx;

/// A certificate from the service API: PEM text, or base64 of DER (or of PEM).
pub(crate) fn cert_from_text(text: &str) -> Result<CertificateDer<'static>, String> {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject as _;
    let text = text.trim();
    if text.contains("-----BEGIN") {
        return CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.replace(['\n', '\r'], ""))
        .map_err(|_| "neither PEM nor base64".to_string())?;
    if bytes.starts_with(b"-----BEGIN") {
        return CertificateDer::from_pem_slice(&bytes)
            .map_err(|e| format!("not a PEM certificate: {e}"));
    }
    Ok(CertificateDer::from(bytes))
}

/// DPS's `info` of a certificate.
fn info(der: &[u8]) -> Result<Value, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let v = cert.validity();
    Ok(json!({
        "subjectName": cert.subject().to_string(),
        "issuerName": cert.issuer().to_string(),
        "sha1Thumbprint": hx::sha1_thumbprint(der),
        "sha256Thumbprint": hx::sha256_thumbprint(der),
        "serialNumber": cert.raw_serial_as_string().replace(':', "").to_uppercase(),
        "notBeforeUtc": v.not_before.to_datetime().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "notAfterUtc": v.not_after.to_datetime().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "version": cert.version().0 + 1,
    }))
}

/// `{"certificate": text, "info": {...}}` for each of `primary` / `secondary` given under `at`.
fn certificates(att: &Value, at: &str, must_be_ca: bool) -> Result<Option<Value>, DpsError> {
    let Some(set) = att.pointer(at).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let mut out = serde_json::Map::new();
    for which in ["primary", "secondary"] {
        let Some(c) = set.get(which).filter(|v| !v.is_null()) else {
            continue;
        };
        let field = format!("attestation{}.{which}.certificate", at.replace('/', "."));
        let text = c
            .get("certificate")
            .and_then(Value::as_str)
            .ok_or_else(|| DpsError::bad(format!("{field}: missing")))?;
        let der = cert_from_text(text).map_err(|e| DpsError::bad(format!("{field}: {e}")))?;
        if must_be_ca {
            webpki::anchor_from_trusted_cert(&der).map_err(|e| {
                DpsError::bad(format!("{field}: not usable as a signing certificate: {e}"))
            })?;
        }
        let info = info(&der).map_err(|e| DpsError::bad(format!("{field}: {e}")))?;
        out.insert(which.into(), json!({"certificate": text, "info": info}));
    }
    if !out.contains_key("primary") {
        return Err(DpsError::bad(format!(
            "attestation{}.primary: a certificate is required",
            at.replace('/', ".")
        )));
    }
    Ok(Some(Value::Object(out)))
}

/// The `x509` attestation of an individual enrollment (`group` false: `clientCertificates`)
/// or a group (`signingCertificates`, or `caReferences` naming a CA the hub holds), with each
/// certificate's `info` filled in.
pub(crate) fn normalize(att: &Value, group: bool) -> Result<Value, DpsError> {
    if group {
        if let Some(s) = certificates(att, "/x509/signingCertificates", true)? {
            return Ok(json!({"type": "x509", "x509": {"signingCertificates": s}}));
        }
        if let Some(r) = att.pointer("/x509/caReferences").filter(|v| v.is_object()) {
            let primary = r.get("primary").and_then(Value::as_str).ok_or_else(|| {
                DpsError::bad("attestation.x509.caReferences.primary: a CA name is required")
            })?;
            return Ok(json!({"type": "x509", "x509": {"caReferences": {
                "primary": primary, "secondary": r.get("secondary").cloned().unwrap_or(Value::Null)}}}));
        }
        return Err(DpsError::bad(
            "attestation.x509: a group needs signingCertificates or caReferences",
        ));
    }
    match certificates(att, "/x509/clientCertificates", false)? {
        Some(c) => Ok(json!({"type": "x509", "x509": {"clientCertificates": c}})),
        None => Err(DpsError::bad(
            "attestation.x509.clientCertificates: an individual enrollment needs its device certificate",
        )),
    }
}

/// The certificates of `set` (`primary`, `secondary`) under `at`, parsed.
fn stored_certs(e: &Value, at: &str) -> Vec<CertificateDer<'static>> {
    ["primary", "secondary"]
        .iter()
        .filter_map(|w| e.pointer(&format!("{at}/{w}/certificate"))?.as_str())
        .filter_map(|t| cert_from_text(t).ok())
        .collect()
}

/// Checks a presented `chain` against an individual enrollment's certificates.
///
/// # Errors
/// The precise reason (for the hub's log and DPS's message).
pub(crate) fn attest_individual(
    e: &Value,
    chain: &[CertificateDer<'_>],
    registration_id: &str,
    now: u64,
) -> Result<(), hx::X509Error> {
    let leaf = leaf_checks(chain, registration_id, now)?;
    let (sha1, sha256) = (hx::sha1_thumbprint(leaf), hx::sha256_thumbprint(leaf));
    let hit = stored_certs(e, "/attestation/x509/clientCertificates")
        .iter()
        .any(|c| hx::sha1_thumbprint(c) == sha1 || hx::sha256_thumbprint(c) == sha256);
    if hit {
        Ok(())
    } else {
        Err(hx::X509Error::WrongThumbprint { sha1, sha256 })
    }
}

/// Checks a presented `chain` against a group's signing certificates, or the hub-held CAs its
/// `caReferences` name (`held`: those CAs, DER).
///
/// # Errors
/// The precise reason.
pub(crate) fn attest_group(
    g: &Value,
    chain: &[CertificateDer<'_>],
    registration_id: &str,
    held: &[CertificateDer<'static>],
    now: u64,
) -> Result<(), hx::X509Error> {
    leaf_checks(chain, registration_id, now)?;
    let mut cas = stored_certs(g, "/attestation/x509/signingCertificates");
    cas.extend(held.iter().cloned());
    hx::verify_chain(chain, &cas, now)
}

/// The CA names a group's `caReferences` give.
pub(crate) fn ca_references(g: &Value) -> Vec<String> {
    ["primary", "secondary"]
        .iter()
        .filter_map(|w| {
            g.pointer(&format!("/attestation/x509/caReferences/{w}"))?
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn leaf_checks<'c>(
    chain: &'c [CertificateDer<'_>],
    registration_id: &str,
    now: u64,
) -> Result<&'c CertificateDer<'c>, hx::X509Error> {
    let leaf = chain.first().ok_or(hx::X509Error::NoCertificate)?;
    let cn = hx::subject_cn(leaf)?;
    if cn != registration_id {
        return Err(hx::X509Error::WrongCn {
            found: cn,
            expected: registration_id.to_string(),
        });
    }
    hx::check_validity(leaf, now)?;
    Ok(leaf)
}
