//! Decoded keys and the HMAC-SHA256 under every signature: [`Key`], [`Signature`], the raw
//! signing primitive and the DPS group-key derivation.

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{KeyError, MAX_KEY_LEN, SIGNATURE_B64_LEN, SignError};
use crate::secret::Secret;

pub(super) type HmacSha256 = Hmac<Sha256>;

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

    pub(super) fn mac(&self) -> HmacSha256 {
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
    pub(super) fn from_mac(mac: HmacSha256) -> Self {
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

/// Feeds everything written to it into an HMAC.
pub(super) struct MacWriter<'m>(pub(super) &'m mut HmacSha256);

impl fmt::Write for MacWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

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
}
