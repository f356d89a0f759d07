//! Why a key, a signing, a token or a verification was refused: small `Copy` enums whose
//! messages never hold a key or a signature.

use core::fmt;

#[cfg(doc)]
use super::{MAX_KEY_LEN, verify};

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

/// Why a token was refused by [`verify`](fn@verify). Each failure is its own variant, checked in
/// this order: the key, the signature, the expiry, the resource.
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
