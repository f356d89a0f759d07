//! Parsing a token: [`Token`] borrows the text and keeps `sr`, `sig` and `se` exactly as sent,
//! because the signature covers them as transmitted.

use core::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use hmac::Mac;

use super::key::{Key, MacWriter};
use super::{SIGNATURE_B64_LEN, TOKEN_PREFIX, TokenError, TokenField};
use crate::encoding;
use crate::secret::Secret;

/// Signatures arrive padded (Python, Node, C#) or unpadded (azure-sdk-for-c test vectors).
const SIG_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed SAS token borrowing from its text. `sr`, `sig` and `se` are kept exactly as sent,
/// because the signature covers the `sr` text as transmitted. `Debug` redacts the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    pub(super) sr: &'a str,
    sig: Secret<&'a str>,
    se_text: &'a str,
    pub(super) se: u64,
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

    pub(super) fn signature_matches(&self, key: &Key) -> bool {
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

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
}
