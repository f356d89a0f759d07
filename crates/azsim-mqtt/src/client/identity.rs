//! Who the client is and how it proves it, and why one cannot be built.

use super::*;

/// The device or module the client connects as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The hub host name as in `HostName`, without a port (it goes into the username and the
    /// token; the connector decides where TCP goes).
    pub host: &'a str,
    /// Device id.
    pub device_id: &'a str,
    /// Module id, for a module identity.
    pub module_id: Option<&'a str>,
    /// Plug and Play model id (`dtmi:...`), sent in the username.
    pub model_id: Option<&'a str>,
}

/// How the client proves who it is. `Debug` shows no secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The device's (or module's) base64 `SharedAccessKey`: a fresh token is signed for each
    /// connection.
    Key(Secret<&'a str>),
    /// A hub policy key (`SharedAccessKeyName`) acting for the device: tokens carry `skn`.
    PolicyKey {
        /// Policy name.
        policy: &'a str,
        /// Base64 key.
        key: Secret<&'a str>,
    },
    /// A fixed `SharedAccessSignature sr=...` token (never renewed).
    Token(Secret<&'a str>),
}

/// Why a [`Client`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The device or module id is unusable.
    Identity(IdentityError),
    /// The `SharedAccessKey` is unusable.
    Key(KeyError),
    /// The MQTT username would not fit its buffer.
    UsernameTooLong,
    /// A token for this identity would not fit its buffer.
    TokenTooLong,
    /// The receive or transmit buffer is smaller than 512 bytes.
    BufferTooSmall,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(e) => e.fmt(f),
            Self::Key(e) => {
                f.write_str("shared access key: ")?;
                e.fmt(f)
            }
            Self::UsernameTooLong => f.write_str("mqtt username is too long"),
            Self::TokenTooLong => f.write_str("sas token is too long"),
            Self::BufferTooSmall => f.write_str("packet buffers must be at least 512 bytes"),
        }
    }
}

impl core::error::Error for ClientError {}

/// What the tokens are signed for.
pub(super) fn resource<'a>(id: &Identity<'a>) -> Resource<'a> {
    match id.module_id {
        Some(m) => Resource::Module {
            host: id.host,
            device_id: id.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: id.host,
            device_id: id.device_id,
        },
    }
}

/// The `skn` the tokens carry: the policy of a policy key.
pub(super) fn policy(credential: Credential<'_>) -> Option<&str> {
    match credential {
        Credential::PolicyKey { policy, .. } => Some(policy),
        Credential::Key(_) | Credential::Token(_) => None,
    }
}
