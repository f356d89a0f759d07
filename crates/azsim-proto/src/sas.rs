//! Shared access signature (SAS) tokens: sign, parse, verify and diagnose.
//!
//! The wire rule, once for every part of azsim (spec section 2):
//!
//! ```text
//! sr    = encode(resource URI)                 // encoding::encode: unreserved kept, "%2F" etc.
//! sign  = base64(HMAC-SHA256(base64decode(key), sr + "\n" + se))
//! token = "SharedAccessSignature sr=" sr "&sig=" encode(sign) "&se=" se ["&skn=" encode(policy)]
//! ```
//!
//! Signing streams the resource through the percent-encoder straight into the HMAC and into the
//! caller's writer, so no buffer holds the encoded URI. Verification checks the HMAC over the
//! `sr` text **exactly as received** (so legacy lower-case `%2f` tokens verify), then the expiry,
//! then that the percent-decoded `sr` names the expected resource or one of its parents (whole
//! path segments; the host name in any case, the device and module ids exactly, as IoT Hub
//! compares them). What this module does not do: read the clock (the
//! caller passes `now` in Unix seconds) or allocate.
//!
//! Keys and signatures are secrets: no `Debug` or error message here contains them.

use core::fmt;
use core::fmt::Write as _;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::encoding;
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The token prefix as a literal, so the token's first field joins it in one string.
macro_rules! token_prefix {
    () => {
        "SharedAccessSignature "
    };
}

/// The literal that starts every token.
pub const TOKEN_PREFIX: &str = token_prefix!();

/// The largest decoded key accepted, in bytes. Hub keys are 32 or 64 bytes; DPS group keys made
/// from a TPM endorsement key reach 316 bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Length of a base64 HMAC-SHA256 signature with padding.
pub const SIGNATURE_B64_LEN: usize = 44;

/// The `skn` DPS devices send with a registration token.
pub const DPS_POLICY: &str = "registration";

/// Signatures arrive padded (Python, Node, C#) or unpadded (azure-sdk-for-c test vectors).
const SIG_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a base64 key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The key is an empty string.
    Empty,
    /// The key is not canonical, padded standard base64.
    NotBase64,
    /// The decoded key is longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "key is empty",
            Self::NotBase64 => "key is not valid base64",
            Self::TooLong => "key is longer than 512 bytes",
        })
    }
}

impl core::error::Error for KeyError {}

/// Why a token could not be signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignError {
    /// The key was refused.
    Key(KeyError),
    /// The output writer failed (for example a full fixed-capacity buffer).
    Write,
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(e) => e.fmt(f),
            Self::Write => f.write_str("token does not fit the output buffer"),
        }
    }
}

impl core::error::Error for SignError {}

impl From<KeyError> for SignError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

impl From<fmt::Error> for SignError {
    fn from(_: fmt::Error) -> Self {
        Self::Write
    }
}

/// A field of a SAS token, named in [`TokenError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenField {
    /// `sr`, the encoded resource URI.
    Sr,
    /// `sig`, the encoded signature.
    Sig,
    /// `se`, the expiry in Unix seconds.
    Se,
    /// `skn`, the policy (key) name.
    Skn,
}

impl TokenField {
    /// The field's name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sr => "sr",
            Self::Sig => "sig",
            Self::Se => "se",
            Self::Skn => "skn",
        }
    }
}

impl fmt::Display for TokenField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a well-formed SAS token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// It does not start with `SharedAccessSignature ` (exactly one space).
    NotASasToken,
    /// A `&`-separated part has no `=`, or is empty.
    BadPair,
    /// A field other than `sr`, `sig`, `se`, `skn` (the Python SDK's rule).
    UnknownField,
    /// A required field (`sr`, `sig`, `se`) is absent.
    Missing(TokenField),
    /// A field appears twice.
    Duplicate(TokenField),
    /// A field has an empty value.
    Empty(TokenField),
    /// A field's value is invalid: `se` not a decimal `u64`, or a bad percent escape.
    Invalid(TokenField),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotASasToken => {
                f.write_str("not a sas token (must start with 'SharedAccessSignature ')")
            }
            Self::BadPair => f.write_str("sas token has a field without '='"),
            Self::UnknownField => f.write_str("sas token has a field other than sr, sig, se, skn"),
            Self::Missing(x) => write!(f, "sas token {x}: missing"),
            Self::Duplicate(x) => write!(f, "sas token {x}: given twice"),
            Self::Empty(x) => write!(f, "sas token {x}: empty"),
            Self::Invalid(TokenField::Se) => {
                f.write_str("sas token se: not a unix time in seconds")
            }
            Self::Invalid(x) => write!(f, "sas token {x}: bad percent encoding"),
        }
    }
}

impl core::error::Error for TokenError {}

/// Why a token was refused by [`verify`]. Each failure is its own variant, checked in this
/// order: the key, the signature, the expiry, the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The token is not well formed.
    Malformed(TokenError),
    /// The key to verify with was refused (a configuration problem, not the token's).
    Key(KeyError),
    /// The signature was not made with this key over this `sr` and `se`.
    BadSignature,
    /// The signature is right but `now >= se`.
    Expired {
        /// The token's expiry.
        se: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The signature is right but `sr` names a resource that does not cover the expected one.
    ResourceMismatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => e.fmt(f),
            Self::Key(e) => e.fmt(f),
            Self::BadSignature => f.write_str("sas token signature does not match the key"),
            Self::Expired { se, now } => write!(f, "sas token expired (se {se}, now {now})"),
            Self::ResourceMismatch => f.write_str("sas token sr is for another resource"),
        }
    }
}

impl core::error::Error for VerifyError {}

impl From<TokenError> for VerifyError {
    fn from(e: TokenError) -> Self {
        Self::Malformed(e)
    }
}

impl From<KeyError> for VerifyError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

/// What a token grants access to. `Display` writes the URI unencoded, as it is signed before
/// encoding: `myhub.azure-devices.net/devices/dev1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `{host}`: the whole hub, signed with a policy key (`skn` required).
    Hub {
        /// The hub host name, for example `myhub.azure-devices.net`.
        host: &'a str,
    },
    /// `{host}/devices/{device_id}`.
    Device {
        /// The hub host name.
        host: &'a str,
        /// The device id.
        device_id: &'a str,
    },
    /// `{host}/devices/{device_id}/modules/{module_id}`.
    Module {
        /// The hub host name.
        host: &'a str,
        /// The device id.
        device_id: &'a str,
        /// The module id.
        module_id: &'a str,
    },
    /// `{id_scope}/registrations/{registration_id}`: a DPS registration.
    DpsRegistration {
        /// The DPS id scope, for example `0ne00000000`.
        id_scope: &'a str,
        /// The registration id.
        registration_id: &'a str,
    },
}

impl<'a> Resource<'a> {
    /// Recognises a decoded resource URI: `{host}`, `{host}/devices/{d}`,
    /// `{host}/devices/{d}/modules/{m}` or `{scope}/registrations/{r}`. Returns `None` for any
    /// other shape (an empty segment, an unknown collection, extra segments).
    pub fn parse(uri: &'a str) -> Option<Self> {
        let mut it = uri.split('/');
        let first = it.next().filter(|s| !s.is_empty())?;
        let parts = (it.next(), it.next(), it.next(), it.next(), it.next());
        let ok = |s: &str| !s.is_empty();
        match parts {
            (None, ..) => Some(Self::Hub { host: first }),
            (Some("devices"), Some(d), None, ..) if ok(d) => Some(Self::Device {
                host: first,
                device_id: d,
            }),
            (Some("devices"), Some(d), Some("modules"), Some(m), None) if ok(d) && ok(m) => {
                Some(Self::Module {
                    host: first,
                    device_id: d,
                    module_id: m,
                })
            }
            (Some("registrations"), Some(r), None, ..) if ok(r) => Some(Self::DpsRegistration {
                id_scope: first,
                registration_id: r,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece rather than `write!`: the same text without the formatting machinery
        // in the firmware, which signs with this on every connect.
        let (first, middle, last, module) = match *self {
            Self::Hub { host } => return f.write_str(host),
            Self::Device { host, device_id } => (host, "/devices/", device_id, None),
            Self::Module {
                host,
                device_id,
                module_id,
            } => (host, "/devices/", device_id, Some(module_id)),
            Self::DpsRegistration {
                id_scope,
                registration_id,
            } => (id_scope, "/registrations/", registration_id, None),
        };
        f.write_str(first)?;
        f.write_str(middle)?;
        f.write_str(last)?;
        if let Some(m) = module {
            f.write_str("/modules/")?;
            f.write_str(m)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and raw signatures
// ---------------------------------------------------------------------------------------------

/// A decoded symmetric key, held on the stack. `Debug` never shows it.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_BUF_LEN],
    len: usize,
    // Keyed once (the inner and outer pads hashed), so each signature costs only the message.
    mac: HmacSha256,
}

/// base64's decoder wants room for its length estimate (whole 3-byte groups), so a key of
/// exactly [`MAX_KEY_LEN`] bytes needs two bytes of slack.
const KEY_BUF_LEN: usize = MAX_KEY_LEN.div_ceil(3) * 3;

impl Key {
    /// Decodes a base64 key (standard alphabet, canonical padding, as the portal and every SDK
    /// print it).
    ///
    /// # Errors
    /// [`KeyError::Empty`], [`KeyError::NotBase64`] (including unpadded or non-canonical input),
    /// [`KeyError::TooLong`] beyond [`MAX_KEY_LEN`] decoded bytes.
    pub fn from_base64(key_b64: &str) -> Result<Self, KeyError> {
        let (bytes, len) = decode_key(key_b64)?;
        Ok(Self::keyed(bytes, len))
    }

    /// Wraps raw key bytes.
    ///
    /// # Errors
    /// [`KeyError::Empty`] or [`KeyError::TooLong`].
    pub fn from_bytes(key: &[u8]) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        let mut bytes = [0u8; KEY_BUF_LEN];
        bytes
            .get_mut(..key.len())
            .ok_or(KeyError::TooLong)?
            .copy_from_slice(key);
        Ok(Self::keyed(bytes, key.len()))
    }

    fn keyed(bytes: [u8; KEY_BUF_LEN], len: usize) -> Self {
        // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
        let mac = HmacSha256::new_from_slice(&bytes[..len]).unwrap_or_else(|_| unreachable!());
        Self { bytes, len, mac }
    }

    /// The decoded key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<redacted>, {} bytes)", self.len)
    }
}

/// Whether `key_b64` is a key [`Key::from_base64`] accepts.
///
/// # Errors
/// As [`Key::from_base64`].
pub fn check_key(key_b64: &str) -> Result<(), KeyError> {
    decode_key(key_b64).map(|_| ())
}

fn decode_key(key_b64: &str) -> Result<([u8; KEY_BUF_LEN], usize), KeyError> {
    if key_b64.is_empty() {
        return Err(KeyError::Empty);
    }
    // Padded base64 is 4 chars per 3 bytes; anything longer cannot fit, and checking first
    // keeps "too long" distinct from "not base64".
    if key_b64.len() > MAX_KEY_LEN.div_ceil(3) * 4 {
        return Err(KeyError::TooLong);
    }
    let mut bytes = [0u8; KEY_BUF_LEN];
    let len = STANDARD
        .decode_slice(key_b64.as_bytes(), &mut bytes)
        .map_err(|e| match e {
            base64::DecodeSliceError::OutputSliceTooSmall => KeyError::TooLong,
            base64::DecodeSliceError::DecodeError(_) => KeyError::NotBase64,
        })?;
    match len {
        0 => Err(KeyError::Empty),
        n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
        n => Ok((bytes, n)),
    }
}

/// An HMAC-SHA256 signature in base64 (44 characters, padded). `Debug` never shows it; read it
/// with [`Signature::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    b64: Secret<[u8; SIGNATURE_B64_LEN]>,
}

impl Signature {
    fn from_mac(mac: HmacSha256) -> Self {
        let raw = mac.finalize().into_bytes();
        let mut b64 = [0u8; SIGNATURE_B64_LEN];
        // 32 bytes always encode to exactly 44 characters.
        let n = STANDARD.encode_slice(raw, &mut b64).unwrap_or(0);
        debug_assert_eq!(n, SIGNATURE_B64_LEN);
        Self { b64: b64.into() }
    }

    /// The base64 text (not percent-encoded).
    pub fn as_str(&self) -> &str {
        // The base64 alphabet is ASCII.
        core::str::from_utf8(self.b64.expose()).unwrap_or_default()
    }
}

/// `base64(HMAC-SHA256(base64decode(key_b64), message))`: the raw signing primitive.
///
/// # Errors
/// The key's [`KeyError`].
pub fn raw_signature(key_b64: &str, message: &[u8]) -> Result<Signature, KeyError> {
    Ok(raw_signature_with_key(&Key::from_base64(key_b64)?, message))
}

/// [`raw_signature`] with an already decoded key.
pub fn raw_signature_with_key(key: &Key, message: &[u8]) -> Signature {
    let mut mac = key.mac();
    mac.update(message);
    Signature::from_mac(mac)
}

/// Writes the DPS group-enrollment device key,
/// `base64(HMAC-SHA256(base64decode(group_key_b64), registration_id))`, into `out`. The
/// registration id is used verbatim (case matters).
///
/// # Errors
/// [`SignError::Key`] for a bad group key, [`SignError::Write`] when `out` fails.
pub fn derive_group_key<W: fmt::Write + ?Sized>(
    out: &mut W,
    group_key_b64: &str,
    registration_id: &str,
) -> Result<(), SignError> {
    let sig = raw_signature(group_key_b64, registration_id.as_bytes())?;
    out.write_str(sig.as_str())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------------

/// Feeds everything written to it into an HMAC.
struct MacWriter<'m>(&'m mut HmacSha256);

impl fmt::Write for MacWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

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

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A parsed SAS token borrowing from its text. `sr`, `sig` and `se` are kept exactly as sent,
/// because the signature covers the `sr` text as transmitted. `Debug` redacts the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    sr: &'a str,
    sig: Secret<&'a str>,
    se_text: &'a str,
    se: u64,
    skn: Option<&'a str>,
}

impl<'a> Token<'a> {
    /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`, fields in any order.
    ///
    /// The rules: the prefix is exactly `SharedAccessSignature ` (one space); fields are split on
    /// `&`, each on its first `=`; `sr`, `sig` and `se` are required, `skn` optional; any other
    /// field is refused (as the Python SDK does: a hub has no use for it and a typo such as
    /// `Se=` would otherwise pass unnoticed); duplicates and empty values are refused; `se` is
    /// ASCII digits that fit a `u64`; percent escapes in `sr`, `sig` and `skn` must be well formed.
    ///
    /// # Errors
    /// A [`TokenError`] naming the field.
    pub fn parse(token: &'a str) -> Result<Self, TokenError> {
        let fields = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::NotASasToken)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in fields.split('&') {
            let (name, value) = pair.split_once('=').ok_or(TokenError::BadPair)?;
            let (slot, field) = match name {
                "sr" => (&mut sr, TokenField::Sr),
                "sig" => (&mut sig, TokenField::Sig),
                "se" => (&mut se, TokenField::Se),
                "skn" => (&mut skn, TokenField::Skn),
                _ => return Err(TokenError::UnknownField),
            };
            if slot.is_some() {
                return Err(TokenError::Duplicate(field));
            }
            if value.is_empty() {
                return Err(TokenError::Empty(field));
            }
            if field != TokenField::Se && encoding::decoded_len(value).is_err() {
                return Err(TokenError::Invalid(field));
            }
            *slot = Some(value);
        }
        let sr = sr.ok_or(TokenError::Missing(TokenField::Sr))?;
        let sig = sig.ok_or(TokenError::Missing(TokenField::Sig))?;
        let se_text = se.ok_or(TokenError::Missing(TokenField::Se))?;
        // `u64::from_str` accepts a leading '+', which would change the signed text.
        if !se_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Invalid(TokenField::Se));
        }
        let se = se_text
            .parse()
            .map_err(|_| TokenError::Invalid(TokenField::Se))?;
        Ok(Self {
            sr,
            sig: sig.into(),
            se_text,
            se,
            skn,
        })
    }

    /// `sr` exactly as sent (still percent-encoded).
    pub fn sr(&self) -> &'a str {
        self.sr
    }

    /// `sig` exactly as sent (usually percent-encoded base64). This is a secret: don't log it.
    pub fn sig(&self) -> &'a str {
        self.sig.expose()
    }

    /// The expiry, Unix seconds.
    pub fn expiry(&self) -> u64 {
        self.se
    }

    /// `se` exactly as sent.
    pub fn expiry_text(&self) -> &'a str {
        self.se_text
    }

    /// `skn` as sent (still percent-encoded; policy names normally need no encoding).
    pub fn policy(&self) -> Option<&'a str> {
        self.skn
    }

    /// Writes the percent-decoded `sr` (the resource URI) into `out`.
    ///
    /// # Errors
    /// Only the writer's own error (the escapes were checked by [`Token::parse`]).
    pub fn write_resource<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        encoding::decode_to(out, self.sr).map_err(|_| fmt::Error)
    }

    /// Decodes `sr` into `buf` and returns the resource URI.
    ///
    /// # Errors
    /// [`encoding::DecodeError::BufferTooSmall`] when `buf` is too short.
    pub fn resource<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, encoding::DecodeError> {
        encoding::decode(self.sr, buf)
    }

    /// Writes the text this token's signature covers: `sr` as sent, `"\n"`, `se` as sent.
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_string_to_sign<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        out.write_str(self.sr)?;
        out.write_str("\n")?;
        out.write_str(self.se_text)
    }

    /// Whether `sr` was percent-encoded twice (`%252F`): the decoded resource still holds escapes.
    pub fn sr_double_encoded(&self) -> bool {
        let b = self.sr.as_bytes();
        b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && w[2] == b'5')
    }

    /// Whether `sr` uses lower-case hex escapes (`%2f`), as the legacy C SDK and the docs do.
    /// Such tokens are valid; this is only for diagnosis.
    pub fn sr_lowercase_escapes(&self) -> bool {
        let b = self.sr.as_bytes();
        b.windows(3)
            .any(|w| w[0] == b'%' && (w[1].is_ascii_lowercase() || w[2].is_ascii_lowercase()))
    }

    fn signature_matches(&self, key: &Key) -> bool {
        let mut mac = key.mac();
        // MacWriter never fails.
        let _ = self.write_string_to_sign(&mut MacWriter(&mut mac));
        // The sig may be encoded with upper- or lower-case hex, or not at all (azure-iot-hub
        // leaves '/' raw); decode escapes, then base64 with or without padding.
        let mut text = [0u8; 3 * SIGNATURE_B64_LEN];
        let Ok(b64) = encoding::decode(self.sig.expose(), &mut text) else {
            return false;
        };
        let mut raw = [0u8; 48];
        let Ok(n) = SIG_ENGINE.decode_slice(b64.as_bytes(), &mut raw) else {
            return false;
        };
        // Constant-time comparison (hmac uses `subtle`).
        mac.verify_slice(&raw[..n]).is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// Compares the text written to it with the start of `expected`: the host (up to the first
/// `/`) ignoring ASCII case, as DNS names are; everything after it exactly, because device and
/// module ids are case-sensitive (a token for `fleet-X` must not open `fleet-x`).
struct PrefixMatcher<'e> {
    expected: &'e [u8],
    pos: usize,
    /// Past the host: bytes compare exactly.
    in_path: bool,
    last: u8,
    ok: bool,
}

impl fmt::Write for PrefixMatcher<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let Some(&e) = self.expected.get(self.pos) else {
                self.ok = false;
                break;
            };
            let same = if self.in_path {
                e == b
            } else {
                e.eq_ignore_ascii_case(&b)
            };
            if !self.ok || !same {
                self.ok = false;
                break;
            }
            self.in_path |= e == b'/';
            self.pos += 1;
            self.last = b;
        }
        Ok(())
    }
}

/// Whether the decoded text of `encoded` covers `expected`: equal, or a parent made of whole
/// `/` segments (`a/b` covers `a/b/c`, not `a/bc`); the host ignoring ASCII case, the rest
/// exactly.
fn covers(encoded: &str, expected: &str) -> bool {
    let mut m = PrefixMatcher {
        expected: expected.as_bytes(),
        pos: 0,
        in_path: false,
        last: 0,
        ok: true,
    };
    if encoding::decode_to(&mut m, encoded).is_err() || !m.ok || m.pos == 0 {
        return false;
    }
    m.pos == expected.len() || expected.as_bytes()[m.pos] == b'/' || m.last == b'/'
}

/// Verifies a token against a base64 key, the resource the caller expects it to grant (unencoded,
/// for example `"myhub.azure-devices.net/devices/dev1"`) and the current time `now`.
///
/// Checks, in order: the HMAC over `sr` exactly as received + `"\n"` + `se` (constant-time), the
/// expiry (expired when `now >= se`), then that the percent-decoded `sr` equals the expected
/// resource or is a parent of it in whole segments: the host name ignoring ASCII case, the path
/// after it (`devices/{id}/modules/{id}`) exactly, as IoT Hub ids are case-sensitive. A hub-level policy token
/// (`sr={host}`) therefore covers every device of that hub. Which policies may act for a device
/// is the caller's decision (it picks the key by `skn`).
///
/// # Errors
/// [`VerifyError::Key`], [`VerifyError::BadSignature`], [`VerifyError::Expired`],
/// [`VerifyError::ResourceMismatch`].
pub fn verify(
    token: &Token<'_>,
    key_b64: &str,
    expected_resource_uri: &str,
    now: u64,
) -> Result<(), VerifyError> {
    verify_with_key(
        token,
        &Key::from_base64(key_b64)?,
        expected_resource_uri,
        now,
    )
}

/// [`verify`] with an already decoded key.
///
/// # Errors
/// As [`verify`], without [`VerifyError::Key`].
pub fn verify_with_key(
    token: &Token<'_>,
    key: &Key,
    expected_resource_uri: &str,
    now: u64,
) -> Result<(), VerifyError> {
    if !token.signature_matches(key) {
        return Err(VerifyError::BadSignature);
    }
    if now >= token.se {
        return Err(VerifyError::Expired { se: token.se, now });
    }
    if !covers(token.sr, expected_resource_uri) {
        return Err(VerifyError::ResourceMismatch);
    }
    Ok(())
}

/// [`Token::parse`] then [`verify`].
///
/// # Errors
/// [`VerifyError::Malformed`] or any [`verify`] error.
pub fn verify_str(
    token: &str,
    key_b64: &str,
    expected_resource_uri: &str,
    now: u64,
) -> Result<(), VerifyError> {
    verify(&Token::parse(token)?, key_b64, expected_resource_uri, now)
}

/// Everything `azsim token inspect` and the hub's log want to say about a token. Contains no
/// secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// The token's expiry, Unix seconds.
    pub expiry: u64,
    /// `se - now`: positive while valid, zero or negative once expired.
    pub seconds_left: i128,
    /// `now >= se`.
    pub expired: bool,
    /// `sr` was percent-encoded twice (`%252F`): an old azure-cli bug; the hub refuses the
    /// resource even when the signature matches.
    pub double_encoded: bool,
    /// `sr` uses lower-case escapes (`%2f`). Fine: only reported so nobody chases it.
    pub lowercase_escapes: bool,
    /// `sr` has a raw `/` (Node's DPS client sends `sr` unencoded). Fine for the signature.
    pub unencoded_sr: bool,
    /// With a key: whether the signature matches it. `None` without a key or with a bad key.
    pub signature_matches: Option<bool>,
    /// With an expected resource: whether `sr` covers it. `None` without one.
    pub resource_covers: Option<bool>,
    /// With an expected resource and a double-encoded `sr`: whether decoding twice covers it
    /// (the token was meant for the right resource but encoded twice).
    pub resource_covers_decoded_twice: Option<bool>,
    /// What [`verify`] would return, when both a key and a resource were given.
    pub verdict: Option<Result<(), VerifyError>>,
}

/// Inspects a parsed token: expiry relative to `now`, encoding quirks, and, when given, whether
/// the signature matches `key_b64` and whether `sr` covers `expected_resource_uri`. Write the
/// resource `sr` names with [`Token::write_resource`] (and recognise it with
/// [`Resource::parse`]).
///
/// # Errors
/// [`KeyError`] when a key is given and refused.
pub fn diagnose(
    token: &Token<'_>,
    key_b64: Option<&str>,
    expected_resource_uri: Option<&str>,
    now: u64,
) -> Result<Diagnosis, KeyError> {
    let key = key_b64.map(Key::from_base64).transpose()?;
    let signature_matches = key.as_ref().map(|k| token.signature_matches(k));
    let resource_covers = expected_resource_uri.map(|e| covers(token.sr, e));
    let double_encoded = token.sr_double_encoded();
    let resource_covers_decoded_twice = match expected_resource_uri {
        Some(e) if double_encoded => {
            let mut buf = [0u8; 1024];
            Some(encoding::decode(token.sr, &mut buf).is_ok_and(|once| covers(once, e)))
        }
        _ => None,
    };
    let verdict = match (&key, expected_resource_uri) {
        (Some(k), Some(e)) => Some(verify_with_key(token, k, e, now)),
        _ => None,
    };
    Ok(Diagnosis {
        expiry: token.se,
        seconds_left: i128::from(token.se) - i128::from(now),
        expired: now >= token.se,
        double_encoded,
        lowercase_escapes: token.sr_lowercase_escapes(),
        unencoded_sr: token.sr.contains('/'),
        signature_matches,
        resource_covers,
        resource_covers_decoded_twice,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    const KEY: &str = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";

    fn token(res: &Resource<'_>, exp: u64, skn: Option<&str>) -> String {
        let mut s = String::new();
        sign(&mut s, res, KEY, exp, skn).unwrap();
        s
    }

    #[test]
    fn hub_policy_token_covers_devices_but_not_prefix_lookalikes() {
        let t = token(&Resource::Hub { host: "h.net" }, 100, Some("iothubowner"));
        let t = Token::parse(&t).unwrap();
        assert_eq!(verify(&t, KEY, "h.net/devices/d1", 99), Ok(()));
        assert_eq!(verify(&t, KEY, "H.NET", 99), Ok(()));
        assert_eq!(
            verify(&t, KEY, "h.network", 99),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(
            verify(&t, KEY, "h.net", 100),
            Err(VerifyError::Expired { se: 100, now: 100 })
        );
    }

    #[test]
    fn ids_are_compared_exactly_and_only_the_host_ignores_case() {
        let token_for = |device_id, module_id: Option<&str>| {
            let host = "Hub.Azure-Devices.net";
            let r = match module_id {
                Some(module_id) => Resource::Module {
                    host,
                    device_id,
                    module_id,
                },
                None => Resource::Device { host, device_id },
            };
            token(&r, 100, None)
        };
        let (upper, lower) = (token_for("fleet-X", None), token_for("fleet-x", None));
        let (upper, lower) = (Token::parse(&upper).unwrap(), Token::parse(&lower).unwrap());
        // The host in any case.
        for host in ["hub.azure-devices.net", "HUB.AZURE-DEVICES.NET"] {
            assert_eq!(
                verify(&upper, KEY, &std::format!("{host}/devices/fleet-X"), 0),
                Ok(())
            );
            assert_eq!(
                verify(&lower, KEY, &std::format!("{host}/devices/fleet-x"), 0),
                Ok(())
            );
        }
        // A device id differing only in case is another device, both ways.
        assert_eq!(
            verify(&upper, KEY, "hub.azure-devices.net/devices/fleet-x", 0),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(
            verify(&lower, KEY, "hub.azure-devices.net/devices/fleet-X", 0),
            Err(VerifyError::ResourceMismatch)
        );
        // So is a module id, and the path's own words are not case-folded either.
        let module = token_for("fleet-x", Some("Sensor"));
        let module = Token::parse(&module).unwrap();
        let base = "hub.azure-devices.net/devices/fleet-x";
        assert_eq!(
            verify(&module, KEY, &std::format!("{base}/modules/Sensor"), 0),
            Ok(())
        );
        assert_eq!(
            verify(&module, KEY, &std::format!("{base}/modules/sensor"), 0),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(
            verify(&lower, KEY, "hub.azure-devices.net/DEVICES/fleet-x", 0),
            Err(VerifyError::ResourceMismatch)
        );
    }

    #[test]
    fn device_token_does_not_cover_sibling_or_parent() {
        let r = Resource::Device {
            host: "h",
            device_id: "d1",
        };
        let t = token(&r, 100, None);
        let t = Token::parse(&t).unwrap();
        assert_eq!(verify(&t, KEY, "h/devices/d1", 0), Ok(()));
        assert_eq!(verify(&t, KEY, "h/devices/d1/modules/m", 0), Ok(()));
        assert_eq!(
            verify(&t, KEY, "h/devices/d10", 0),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(
            verify(&t, KEY, "h/devices", 0),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(verify(&t, KEY, "h", 0), Err(VerifyError::ResourceMismatch));
    }

    #[test]
    fn debug_never_shows_key_or_signature() {
        let t = token(&Resource::Hub { host: "h" }, 1, None);
        let parsed = Token::parse(&t).unwrap();
        let dbg = std::format!(
            "{parsed:?} {:?} {:?}",
            Key::from_base64(KEY).unwrap(),
            raw_signature(KEY, b"x").unwrap()
        );
        assert!(!dbg.contains(parsed.sig()), "{dbg}");
        assert!(!dbg.contains(raw_signature(KEY, b"x").unwrap().as_str()));
        assert!(!dbg.contains("NMgJ"), "{dbg}");
    }

    #[test]
    fn keys_up_to_512_bytes_are_accepted_and_garbage_refused() {
        use base64::Engine as _;
        let mut b64 = [0u8; 700];
        for (len, ok) in [
            (1, true),
            (32, true),
            (316, true),
            (512, true),
            (513, false),
        ] {
            let raw = std::vec![0xA5u8; len];
            let n = STANDARD.encode_slice(&raw, &mut b64).unwrap();
            let text = core::str::from_utf8(&b64[..n]).unwrap();
            let got = Key::from_base64(text);
            assert_eq!(got.is_ok(), ok, "{len}");
            if ok {
                assert_eq!(got.unwrap().as_bytes(), &raw[..]);
            } else {
                assert_eq!(got.unwrap_err(), KeyError::TooLong);
            }
        }
        assert_eq!(Key::from_bytes(&[1; 513]).unwrap_err(), KeyError::TooLong);
        for bad in [
            "key",
            "a b=",
            "Zm9vYmFy\n",
            "Zm9vYg",
            "Zm9vYh==",
            "!!!!",
            "Zm9vYmFy====",
        ] {
            assert_eq!(
                Key::from_base64(bad).unwrap_err(),
                KeyError::NotBase64,
                "{bad}"
            );
        }
        assert_eq!(Key::from_base64("").unwrap_err(), KeyError::Empty);
        assert_eq!(Key::from_base64("Zm9vYmFy").unwrap().as_bytes(), b"foobar");
    }

    #[test]
    fn failures_are_reported_in_order_signature_then_expiry_then_resource() {
        let t = token(
            &Resource::Device {
                host: "h",
                device_id: "d",
            },
            100,
            None,
        );
        let t = Token::parse(&t).unwrap();
        let other = "dGVzdFN0cmluZzE=";
        // A wrong key wins over expiry and resource: nothing else is trusted before the HMAC.
        assert_eq!(
            verify(&t, other, "h/devices/x", 500),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&t, KEY, "h/devices/x", 500),
            Err(VerifyError::Expired { se: 100, now: 500 })
        );
        assert_eq!(
            verify(&t, KEY, "h/devices/x", 5),
            Err(VerifyError::ResourceMismatch)
        );
        assert_eq!(
            verify(&t, "%%%", "h/devices/d", 5),
            Err(VerifyError::Key(KeyError::NotBase64))
        );
        assert_eq!(
            verify_str("SharedAccessSignature sr=a&sig=b", KEY, "a", 0),
            Err(VerifyError::Malformed(TokenError::Missing(TokenField::Se)))
        );

        let d = diagnose(&t, Some(other), Some("h/devices/d"), 40).unwrap();
        assert_eq!(d.signature_matches, Some(false));
        assert_eq!(d.resource_covers, Some(true));
        assert_eq!((d.expired, d.seconds_left), (false, 60));
        assert_eq!(d.verdict, Some(Err(VerifyError::BadSignature)));
        assert!(!d.double_encoded && !d.lowercase_escapes && !d.unencoded_sr);
        let d = diagnose(&t, None, None, 101).unwrap();
        assert_eq!((d.expired, d.seconds_left, d.verdict), (true, -1, None));

        let odd =
            Token::parse("SharedAccessSignature sr=s/registrations/r%2fx&sig=a&se=1").unwrap();
        let d = diagnose(&odd, None, Some("s/registrations/r/x"), 0).unwrap();
        assert!(d.unencoded_sr && d.lowercase_escapes && !d.double_encoded);
        assert_eq!(d.resource_covers, Some(true));
    }

    #[test]
    fn token_errors_name_the_field() {
        let cases = [
            (
                "sharedaccesssignature sr=a&sig=b&se=1",
                TokenError::NotASasToken,
            ),
            (
                "SharedAccessSignature sr=a&sig=b&se=1&",
                TokenError::BadPair,
            ),
            (
                "SharedAccessSignature sr=a&sig=b&se=1&x=y",
                TokenError::UnknownField,
            ),
            (
                "SharedAccessSignature sr=a&sr=a&sig=b&se=1",
                TokenError::Duplicate(TokenField::Sr),
            ),
            (
                "SharedAccessSignature sr=&sig=b&se=1",
                TokenError::Empty(TokenField::Sr),
            ),
            (
                "SharedAccessSignature sr=a&sig=b&se=+1",
                TokenError::Invalid(TokenField::Se),
            ),
            (
                "SharedAccessSignature sr=a&sig=b&se=18446744073709551616",
                TokenError::Invalid(TokenField::Se),
            ),
            (
                "SharedAccessSignature sr=a%2&sig=b&se=1",
                TokenError::Invalid(TokenField::Sr),
            ),
            (
                "SharedAccessSignature sr=a&se=1",
                TokenError::Missing(TokenField::Sig),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Token::parse(input), Err(want), "{input}");
        }
        assert_eq!(
            std::format!("{}", TokenError::Invalid(TokenField::Se)),
            "sas token se: not a unix time in seconds"
        );
        let t =
            Token::parse("SharedAccessSignature se=18446744073709551615&skn=p&sig=b&sr=a").unwrap();
        assert_eq!((t.expiry(), t.policy()), (u64::MAX, Some("p")));
    }

    #[test]
    fn resource_parse_recognises_each_shape() {
        assert_eq!(Resource::parse("h"), Some(Resource::Hub { host: "h" }));
        assert_eq!(
            Resource::parse("h/devices/d/modules/m"),
            Some(Resource::Module {
                host: "h",
                device_id: "d",
                module_id: "m"
            })
        );
        assert_eq!(
            Resource::parse("s/registrations/r"),
            Some(Resource::DpsRegistration {
                id_scope: "s",
                registration_id: "r"
            })
        );
        assert_eq!(Resource::parse("h/devices/"), None);
        assert_eq!(Resource::parse("h/things/d"), None);
        assert_eq!(Resource::parse(""), None);
    }
}
