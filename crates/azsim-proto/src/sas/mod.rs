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
//!
//! Split by step, all re-exported here (the paths are `sas::...`): `error` (why a key, a token or
//! a check was refused), `resource` (what a token grants), `key` (decoded keys and the HMAC),
//! `sign`, `token` (parsing), `verify` and `diagnose`.

/// The token prefix as a literal, so the token's first field joins it in one string.
macro_rules! token_prefix {
    () => {
        "SharedAccessSignature "
    };
}

mod diagnose;
mod error;
mod key;
mod resource;
mod sign;
mod token;
mod verify;

pub use diagnose::{Diagnosis, diagnose};
pub use error::{KeyError, SignError, TokenError, TokenField, VerifyError};
pub use key::{Key, Signature, check_key, derive_group_key, raw_signature, raw_signature_with_key};
pub use resource::Resource;
pub use sign::{sign, sign_with_key, signature_for, write_string_to_sign, write_token};
pub use token::Token;
pub use verify::{verify, verify_str, verify_with_key};

/// The literal that starts every token.
pub const TOKEN_PREFIX: &str = token_prefix!();

/// The largest decoded key accepted, in bytes. Hub keys are 32 or 64 bytes; DPS group keys made
/// from a TPM endorsement key reach 316 bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Length of a base64 HMAC-SHA256 signature with padding.
pub const SIGNATURE_B64_LEN: usize = 44;

/// The `skn` DPS devices send with a registration token.
pub const DPS_POLICY: &str = "registration";

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    /// The key the tests of every `sas` module sign with.
    pub(super) const KEY: &str = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";

    /// A token for `res` signed with [`KEY`].
    pub(super) fn token(res: &Resource<'_>, exp: u64, skn: Option<&str>) -> String {
        let mut s = String::new();
        sign(&mut s, res, KEY, exp, skn).unwrap();
        s
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
}
