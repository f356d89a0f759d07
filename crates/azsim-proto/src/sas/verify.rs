//! Checking a token, in the hub's order: the signature, then the expiry, then whether `sr`
//! covers the expected resource (whole path segments; the host in any case, the ids exactly).

use core::fmt;

use super::VerifyError;
use super::key::Key;
use super::token::Token;
use crate::encoding;

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
pub(super) fn covers(encoded: &str, expected: &str) -> bool {
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::sas::tests::{KEY, token};
    use crate::sas::{KeyError, Resource, TokenError, TokenField, diagnose};

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
}
