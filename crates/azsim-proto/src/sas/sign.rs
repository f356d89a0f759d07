//! Writing tokens: the string-to-sign, the signature over it and the token text. The resource
//! streams through the percent-encoder straight into the HMAC and the caller's writer.

use core::fmt;
use core::fmt::Write as _;

use super::SignError;
use super::key::{Key, MacWriter, Signature};
use crate::encoding;

#[cfg(doc)]
use super::{DPS_POLICY, Resource};

/// Percent-encodes everything written to it into the inner writer. Encoding is per byte, so
/// encoding the pieces of a `Display` is the same as encoding the whole text.
struct EncodeWriter<'w, W: fmt::Write + ?Sized>(&'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for EncodeWriter<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        encoding::encode(self.0, s)
    }
}

/// Writes the string-to-sign of a resource: `encode(resource_uri) + "\n" + expiry`.
///
/// `resource_uri` is the unencoded URI: a [`Resource`] or a `&str` such as
/// `"myhub.azure-devices.net/devices/dev1"`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_string_to_sign<W, R>(out: &mut W, resource_uri: &R, expiry: u64) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    R: fmt::Display + ?Sized,
{
    write!(EncodeWriter(out), "{resource_uri}")?;
    out.write_str("\n")?;
    encoding::write_u64(&mut encoding::Dyn(out), expiry)
}

/// The signature of `resource_uri` at `expiry`: HMAC over [`write_string_to_sign`]'s text.
pub fn signature_for<R: fmt::Display + ?Sized>(
    key: &Key,
    resource_uri: &R,
    expiry: u64,
) -> Signature {
    let mut mac = key.mac();
    // MacWriter never fails.
    let _ = write_string_to_sign(&mut MacWriter(&mut mac), resource_uri, expiry);
    Signature::from_mac(mac)
}

/// Assembles a token from an already computed base64 signature:
/// `SharedAccessSignature sr={enc(uri)}&sig={enc(sig)}&se={expiry}[&skn={enc(policy)}]`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_token<W, R>(
    out: &mut W,
    resource_uri: &R,
    signature_b64: &str,
    expiry: u64,
    policy: Option<&str>,
) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    R: fmt::Display + ?Sized,
{
    token_dyn(
        &mut encoding::Dyn(out),
        &DisplayRef(resource_uri),
        signature_b64,
        expiry,
        policy,
    )
}

/// A `Display` behind a reference, so an unsized one can become `&dyn Display`.
struct DisplayRef<'r, R: ?Sized>(&'r R);

impl<R: fmt::Display + ?Sized> fmt::Display for DisplayRef<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// One body for every writer type (the firmware measures the token with one and writes it with
// another).
fn token_dyn(
    out: &mut dyn fmt::Write,
    resource_uri: &dyn fmt::Display,
    signature_b64: &str,
    expiry: u64,
    policy: Option<&str>,
) -> fmt::Result {
    out.write_str(concat!(token_prefix!(), "sr="))?;
    write!(EncodeWriter(out), "{resource_uri}")?;
    out.write_str("&sig=")?;
    encoding::encode(out, signature_b64)?;
    out.write_str("&se=")?;
    encoding::write_u64(out, expiry)?;
    if let Some(p) = policy {
        out.write_str("&skn=")?;
        encoding::encode(out, p)?;
    }
    Ok(())
}

/// Signs `resource_uri` (unencoded; a [`Resource`] or `&str`) with a base64 key until `expiry`
/// (Unix seconds) and writes the token into `out`:
/// `SharedAccessSignature sr={enc(uri)}&sig={enc(sig)}&se={expiry}[&skn={policy}]`.
///
/// `policy` is the `skn`: `None` for device and module keys, the policy name (`iothubowner`,
/// `device`, ...) for a hub policy key, `Some(DPS_POLICY)` for DPS if wanted.
///
/// # Errors
/// [`SignError::Key`] for a bad key (nothing is written), [`SignError::Write`] when `out` fails.
pub fn sign<W, R>(
    out: &mut W,
    resource_uri: &R,
    key_b64: &str,
    expiry: u64,
    policy: Option<&str>,
) -> Result<(), SignError>
where
    W: fmt::Write + ?Sized,
    R: fmt::Display + ?Sized,
{
    let key = Key::from_base64(key_b64)?;
    sign_with_key(out, resource_uri, &key, expiry, policy)
}

/// [`sign`] with an already decoded key (saves the base64 decode when signing repeatedly).
///
/// # Errors
/// [`SignError::Write`] when `out` fails.
pub fn sign_with_key<W, R>(
    out: &mut W,
    resource_uri: &R,
    key: &Key,
    expiry: u64,
    policy: Option<&str>,
) -> Result<(), SignError>
where
    W: fmt::Write + ?Sized,
    R: fmt::Display + ?Sized,
{
    let sig = signature_for(key, resource_uri, expiry);
    write_token(out, resource_uri, sig.as_str(), expiry, policy)?;
    Ok(())
}
