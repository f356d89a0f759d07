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
    /// The device id (or, with `module`, the module id) contains an MQTT wildcard (`+` or
    /// `#`). IoT Hub's registry accepts both, but a topic name cannot carry them (MQTT 3.1.1
    /// 4.7.1), so such an identity could connect and then use none of its topics: it is only
    /// usable over HTTPS or AMQP.
    Wildcard {
        /// The module id has it, not the device id.
        module: bool,
        /// `'+'` or `'#'`.
        wildcard: char,
    },
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
            Self::Wildcard { module, wildcard } => {
                f.write_str(if *module { "module id" } else { "device id" })?;
                f.write_str(" contains '")?;
                fmt::Write::write_char(f, *wildcard)?;
                f.write_str(
                    "', which MQTT topics cannot carry; IoT Hub accepts it, but only over \
                     HTTPS/AMQP",
                )
            }
        }
    }
}

impl core::error::Error for ClientError {}

/// The first MQTT wildcard (`+` or `#`) in the ids, if any: device id first.
pub(super) fn wildcard(id: &Identity<'_>) -> Option<ClientError> {
    let find = |s: &str| s.bytes().find(|b| matches!(b, b'+' | b'#')).map(char::from);
    if let Some(wildcard) = find(id.device_id) {
        return Some(ClientError::Wildcard {
            module: false,
            wildcard,
        });
    }
    let wildcard = find(id.module_id?)?;
    Some(ClientError::Wildcard {
        module: true,
        wildcard,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use azsim_proto::device::{DeviceConfig, RandomWalk};
    use std::string::ToString;

    fn build(device_id: &str, module_id: Option<&str>) -> Result<(), ClientError> {
        let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
        let device = Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval_ms: 1_000,
                version: "0.1.0",
            },
        );
        Client::new(
            Identity {
                host: "hub.example.net",
                device_id,
                module_id,
                model_id: None,
            },
            Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            device,
            SessionConfig::default(),
            7,
            &mut rx,
            &mut tx,
        )
        .map(drop)
    }

    #[test]
    fn ids_with_an_mqtt_wildcard_are_refused_naming_the_id_and_the_wildcard() {
        assert_eq!(build("a-b.c:d_e", Some("m=1")), Ok(()));
        let e = build("a+b", None).unwrap_err();
        assert_eq!(
            e,
            ClientError::Wildcard {
                module: false,
                wildcard: '+'
            }
        );
        assert_eq!(
            e.to_string(),
            "device id contains '+', which MQTT topics cannot carry; IoT Hub accepts it, but \
             only over HTTPS/AMQP"
        );
        assert_eq!(
            build("dev#1", Some("m+")),
            Err(ClientError::Wildcard {
                module: false,
                wildcard: '#'
            })
        );
        let e = build("dev", Some("edge#hub")).unwrap_err();
        assert_eq!(
            e,
            ClientError::Wildcard {
                module: true,
                wildcard: '#'
            }
        );
        assert!(e.to_string().starts_with("module id contains '#'"), "{e}");
    }
}
