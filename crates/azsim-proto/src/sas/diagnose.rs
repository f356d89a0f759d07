//! Explaining a token rather than judging it: expiry, encoding quirks, and which of the
//! verification checks it passes, for `azsim token inspect` and the hub's log.

use super::key::Key;
use super::token::Token;
use super::verify::{covers, verify_with_key};
use super::{KeyError, VerifyError};
use crate::encoding;

#[cfg(doc)]
use super::{Resource, verify};

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
    /// What [`verify`](fn@verify) would return, when both a key and a resource were given.
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
