//! IoT Hub connection strings: `HostName=..;DeviceId=..;SharedAccessKey=..` and friends.
//!
//! Parsing is strict, like the Python SDK (spec section 3): the string is split on `;`, each
//! segment on its **first** `=` (base64 keys and whole SAS tokens contain `=`); key names are
//! case-sensitive and limited to the official SDKs' documented keys: the eight azsim uses
//! (`HostName, DeviceId, ModuleId, SharedAccessKey, SharedAccessKeyName, SharedAccessSignature,
//! GatewayHostName, x509`, see [`Field`]) and the few that carry nothing for azsim and are skipped
//! whatever their value ([`IGNORED_KEYS`]). An unknown or repeated key, an empty value, an empty
//! segment (so also a trailing `;`, which Python refuses and no portal emits), a segment without
//! `=`, a missing `HostName`, a key that is not base64 and a contradictory set of credentials are
//! errors naming the field. A consequence: a value cannot contain `;` (the C# SDK's regex
//! tokenizer allows that for legacy device ids; Python and Node do not).
//!
//! The parsed value borrows from the input. `Debug` and `Display` redact the key and any
//! signature; [`ConnectionString::write_with_secret`] writes the complete string for the one
//! place that must print it (`azsim device create`). Strings are built with
//! [`ConnectionString::device`], [`ConnectionString::module`] and [`ConnectionString::service`]
//! (plus [`ConnectionString::with_gateway`]), never formatted by hand.

use core::fmt;

use crate::sas::{self, Resource, Token};
use crate::secret::Secret;

/// A connection-string key name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `HostName`: the hub host, optionally with `:port` (the local hub's service string).
    HostName,
    /// `DeviceId`.
    DeviceId,
    /// `ModuleId`.
    ModuleId,
    /// `SharedAccessKey`: a base64 symmetric key.
    SharedAccessKey,
    /// `SharedAccessKeyName`: the hub policy the key belongs to.
    SharedAccessKeyName,
    /// `SharedAccessSignature`: a ready-made token.
    SharedAccessSignature,
    /// `GatewayHostName`: an IoT Edge gateway to connect through.
    GatewayHostName,
    /// `x509`: the device authenticates with a client certificate.
    X509,
}

impl Field {
    /// Every field, in the order [`ConnectionString::write_with_secret`] writes them.
    pub const ALL: [Self; 8] = [
        Self::HostName,
        Self::DeviceId,
        Self::ModuleId,
        Self::SharedAccessKeyName,
        Self::SharedAccessKey,
        Self::SharedAccessSignature,
        Self::GatewayHostName,
        Self::X509,
    ];

    /// The key name as written in a connection string.
    pub const fn name(self) -> &'static str {
        match self {
            Self::HostName => "HostName",
            Self::DeviceId => "DeviceId",
            Self::ModuleId => "ModuleId",
            Self::SharedAccessKey => "SharedAccessKey",
            Self::SharedAccessKeyName => "SharedAccessKeyName",
            Self::SharedAccessSignature => "SharedAccessSignature",
            Self::GatewayHostName => "GatewayHostName",
            Self::X509 => "x509",
        }
    }

    /// The field named exactly `name` (case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys the official SDKs document that carry nothing azsim uses: accepted and skipped, whatever
/// their value (and however often they appear), so a string copied from another SDK's sample or
/// tool parses as that SDK parses it.
///
/// - `CredentialScope` (`Device`, `IotHub`) and `CredentialType` (`SharedAccessKey`,
///   `SharedAccessSignature`): the C# SDK's legacy strings, e.g. `HostName=..;CredentialScope=
///   IotHub;CredentialType=SharedAccessSignature;SharedAccessKeyName=..;SharedAccessKey=..`. The
///   C# SDK itself derives scope and type from the other keys; so does azsim.
/// - `UseProvisioning=true`: the C SDK's marker for credentials that come from the DPS security
///   module instead of the string. Such a string has no key, so it is still refused, as having
///   no credential.
///
/// Not accepted: the C# SDK's `X509Cert` (a C# spelling of `x509`; keys are case-sensitive here)
/// and the Java SDK's `MqttGatewayHostName` (an MQTT broker to connect through, which azsim
/// cannot honour, so it is refused rather than silently skipped).
pub const IGNORED_KEYS: [&str; 3] = ["CredentialScope", "CredentialType", "UseProvisioning"];

/// Whether `name` is a key [`ConnectionString::parse`] accepts: a [`Field`] or one of
/// [`IGNORED_KEYS`] (case-sensitive).
pub fn is_known_key(name: &str) -> bool {
    Field::from_name(name).is_some() || IGNORED_KEYS.contains(&name)
}

/// Why a connection string was refused. Messages name the field and never contain a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionStringError {
    /// The string is empty.
    Empty,
    /// Two `;` in a row, or a leading or trailing `;`.
    EmptySegment,
    /// A segment without `=`.
    MissingEquals,
    /// A key name that is neither a [`Field`] nor one of [`IGNORED_KEYS`] (names are
    /// case-sensitive).
    UnknownKey,
    /// A key given twice.
    Duplicate(Field),
    /// A key with an empty value.
    EmptyValue(Field),
    /// A required key is absent (`HostName`; `DeviceId` for device credentials).
    Missing(Field),
    /// A value that is not valid for its key: `SharedAccessKey` not base64, `x509` not `true`,
    /// `HostName` with a bad port, `SharedAccessSignature` not a token.
    Invalid(Field),
    /// Two keys that cannot be used together (two credentials, or a policy name without a key).
    Conflict(Field, Field),
    /// None of `SharedAccessKey`, `SharedAccessSignature`, `x509` is present.
    NoCredential,
}

impl fmt::Display for ConnectionStringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("connection string is empty"),
            Self::EmptySegment => f.write_str("connection string has an empty segment (';;' or a trailing ';')"),
            Self::MissingEquals => f.write_str("connection string has a segment without '='"),
            Self::UnknownKey => f.write_str(
                "connection string has an unknown key (known, case-sensitive: HostName, DeviceId, ModuleId, SharedAccessKey, SharedAccessKeyName, SharedAccessSignature, GatewayHostName, x509; ignored: CredentialScope, CredentialType, UseProvisioning)",
            ),
            Self::Duplicate(x) => write!(f, "{x}: given twice"),
            Self::EmptyValue(x) => write!(f, "{x}: empty"),
            Self::Missing(Field::DeviceId) => f.write_str("DeviceId: missing (needed with this credential)"),
            Self::Missing(x) => write!(f, "{x}: missing"),
            Self::Invalid(Field::SharedAccessKey) => f.write_str("SharedAccessKey: not valid base64"),
            Self::Invalid(Field::X509) => f.write_str("x509: must be true"),
            Self::Invalid(Field::HostName) => f.write_str("HostName: bad port"),
            Self::Invalid(Field::SharedAccessSignature) => {
                f.write_str("SharedAccessSignature: not a sas token")
            }
            Self::Invalid(x) => write!(f, "{x}: contains ';'"),
            Self::Conflict(Field::ModuleId, _) => f.write_str("ModuleId: requires DeviceId"),
            Self::Conflict(Field::SharedAccessKeyName, _) => {
                f.write_str("SharedAccessKeyName: requires SharedAccessKey")
            }
            Self::Conflict(a, b) => write!(f, "{a}: cannot be combined with {b}"),
            Self::NoCredential => f.write_str(
                "connection string has no credential (SharedAccessKey, SharedAccessSignature or x509)",
            ),
        }
    }
}

impl core::error::Error for ConnectionStringError {}

/// What a connection string authenticates as, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A device signing its own tokens: `DeviceId` + `SharedAccessKey` (with
    /// `SharedAccessKeyName` the key is a hub policy key acting for the device; tokens carry `skn`).
    Device,
    /// A module signing its own tokens: `DeviceId` + `ModuleId` + `SharedAccessKey` (optionally
    /// via a policy, as for [`Kind::Device`]).
    Module,
    /// A service (hub policy) string: `SharedAccessKeyName` + `SharedAccessKey`, no `DeviceId`.
    Service,
    /// A device or module with a ready `SharedAccessSignature` (it cannot renew it).
    DeviceWithSas,
    /// A device or module authenticating with an X.509 client certificate (`x509=true`).
    X509,
}

/// A parsed connection string, borrowing from the input. `Debug` shows the key and the
/// signature as `<redacted>` ([`Secret`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConnectionString<'a> {
    host_name: &'a str,
    device_id: Option<&'a str>,
    module_id: Option<&'a str>,
    shared_access_key: Option<Secret<&'a str>>,
    shared_access_key_name: Option<&'a str>,
    shared_access_signature: Option<Secret<&'a str>>,
    gateway_host_name: Option<&'a str>,
    x509: bool,
}

type E = ConnectionStringError;

impl<'a> ConnectionString<'a> {
    /// Parses a connection string strictly (see the module docs for the rules).
    ///
    /// The credential rules: exactly one of `SharedAccessKey`, `SharedAccessSignature`,
    /// `x509=true`; `SharedAccessKeyName` only with `SharedAccessKey`; `ModuleId` only with
    /// `DeviceId`; without `DeviceId` only a service string (`SharedAccessKeyName` +
    /// `SharedAccessKey`) is complete. `x509` accepts only `true` (any case): the Python SDK
    /// treats the key's mere presence as "x509", so `x509=false` would mean the opposite of what
    /// it says.
    ///
    /// # Errors
    /// A [`ConnectionStringError`] naming the field.
    pub fn parse(s: &'a str) -> Result<Self, ConnectionStringError> {
        if s.is_empty() {
            return Err(E::Empty);
        }
        let mut values: [Option<&'a str>; 8] = [None; 8];
        for pair in pairs(s) {
            let (name, value) = pair?;
            let Some(field) = Field::from_name(name) else {
                if IGNORED_KEYS.contains(&name) {
                    continue;
                }
                return Err(E::UnknownKey);
            };
            let slot = &mut values[field.index()];
            if slot.is_some() {
                return Err(E::Duplicate(field));
            }
            if value.is_empty() {
                return Err(E::EmptyValue(field));
            }
            *slot = Some(value);
        }
        let get = |f: Field| values[f.index()];
        let x509 = match get(Field::X509) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(_) => return Err(E::Invalid(Field::X509)),
        };
        let cs = Self {
            host_name: get(Field::HostName).ok_or(E::Missing(Field::HostName))?,
            device_id: get(Field::DeviceId),
            module_id: get(Field::ModuleId),
            shared_access_key: get(Field::SharedAccessKey).map(Secret::new),
            shared_access_key_name: get(Field::SharedAccessKeyName),
            shared_access_signature: get(Field::SharedAccessSignature).map(Secret::new),
            gateway_host_name: get(Field::GatewayHostName),
            x509,
        };
        cs.validate()?;
        Ok(cs)
    }

    fn validate(&self) -> Result<(), ConnectionStringError> {
        split_host_port(self.host_name).ok_or(E::Invalid(Field::HostName))?;
        match (
            self.shared_access_key,
            self.shared_access_signature,
            self.x509,
        ) {
            (None, None, false) => {
                return Err(if self.shared_access_key_name.is_some() {
                    E::Conflict(Field::SharedAccessKeyName, Field::SharedAccessKey)
                } else {
                    E::NoCredential
                });
            }
            (Some(_), Some(_), _) => {
                return Err(E::Conflict(
                    Field::SharedAccessKey,
                    Field::SharedAccessSignature,
                ));
            }
            (Some(_), _, true) => return Err(E::Conflict(Field::SharedAccessKey, Field::X509)),
            (_, Some(_), true) => {
                return Err(E::Conflict(Field::SharedAccessSignature, Field::X509));
            }
            _ => {}
        }
        if self.shared_access_key_name.is_some() && self.shared_access_key.is_none() {
            return Err(E::Conflict(
                Field::SharedAccessKeyName,
                Field::SharedAccessKey,
            ));
        }
        if self.module_id.is_some() && self.device_id.is_none() {
            return Err(E::Conflict(Field::ModuleId, Field::DeviceId));
        }
        if self.device_id.is_none() && self.shared_access_key_name.is_none() {
            // A bare key, a token or x509 without a device is not a complete identity.
            return Err(E::Missing(Field::DeviceId));
        }
        if let Some(k) = self.shared_access_key() {
            sas::check_key(k).map_err(|_| E::Invalid(Field::SharedAccessKey))?;
        }
        if let Some(t) = self.shared_access_signature() {
            Token::parse(t).map_err(|_| E::Invalid(Field::SharedAccessSignature))?;
        }
        Ok(())
    }

    /// A device string: `HostName={host};DeviceId={device_id};SharedAccessKey={key_b64}`.
    ///
    /// # Errors
    /// As [`ConnectionString::parse`] would report for the written string (empty values, a `;`
    /// in a value, a bad key, a bad port).
    pub fn device(
        host: &'a str,
        device_id: &'a str,
        key_b64: &'a str,
    ) -> Result<Self, ConnectionStringError> {
        Self::built(Self {
            host_name: host,
            device_id: Some(device_id),
            module_id: None,
            shared_access_key: Some(Secret::new(key_b64)),
            shared_access_key_name: None,
            shared_access_signature: None,
            gateway_host_name: None,
            x509: false,
        })
    }

    /// A module string: `HostName=..;DeviceId=..;ModuleId=..;SharedAccessKey=..`.
    ///
    /// # Errors
    /// As [`ConnectionString::device`].
    pub fn module(
        host: &'a str,
        device_id: &'a str,
        module_id: &'a str,
        key_b64: &'a str,
    ) -> Result<Self, ConnectionStringError> {
        Self::built(Self {
            module_id: Some(module_id),
            ..Self::unchecked_device(host, device_id, key_b64)
        })
    }

    /// A service (hub policy) string: `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`.
    ///
    /// # Errors
    /// As [`ConnectionString::device`].
    pub fn service(
        host: &'a str,
        policy: &'a str,
        key_b64: &'a str,
    ) -> Result<Self, ConnectionStringError> {
        Self::built(Self {
            device_id: None,
            shared_access_key_name: Some(policy),
            ..Self::unchecked_device(host, "", key_b64)
        })
    }

    /// Returns this string with `GatewayHostName` set.
    ///
    /// # Errors
    /// [`ConnectionStringError::EmptyValue`] or [`ConnectionStringError::Invalid`] (a `;`).
    pub fn with_gateway(self, gateway: &'a str) -> Result<Self, ConnectionStringError> {
        Self::built(Self {
            gateway_host_name: Some(gateway),
            ..self
        })
    }

    const fn unchecked_device(host: &'a str, device_id: &'a str, key_b64: &'a str) -> Self {
        Self {
            host_name: host,
            device_id: Some(device_id),
            module_id: None,
            shared_access_key: Some(Secret::new(key_b64)),
            shared_access_key_name: None,
            shared_access_signature: None,
            gateway_host_name: None,
            x509: false,
        }
    }

    fn built(cs: Self) -> Result<Self, ConnectionStringError> {
        for field in Field::ALL {
            if let Some(v) = cs.get(field) {
                if v.is_empty() {
                    return Err(E::EmptyValue(field));
                }
                if v.contains(';') {
                    return Err(E::Invalid(field));
                }
            }
        }
        cs.validate()?;
        Ok(cs)
    }

    /// The raw value of `field` (`x509` reads as `"true"` when set).
    pub fn get(&self, field: Field) -> Option<&'a str> {
        match field {
            Field::HostName => Some(self.host_name),
            Field::DeviceId => self.device_id,
            Field::ModuleId => self.module_id,
            Field::SharedAccessKey => self.shared_access_key(),
            Field::SharedAccessKeyName => self.shared_access_key_name,
            Field::SharedAccessSignature => self.shared_access_signature(),
            Field::GatewayHostName => self.gateway_host_name,
            Field::X509 => self.x509.then_some("true"),
        }
    }

    /// What this string authenticates as.
    pub fn kind(&self) -> Kind {
        if self.x509 {
            Kind::X509
        } else if self.shared_access_signature.is_some() {
            Kind::DeviceWithSas
        } else if self.device_id.is_none() {
            Kind::Service
        } else if self.module_id.is_some() {
            Kind::Module
        } else {
            Kind::Device
        }
    }

    /// `HostName` as written, including any `:port`.
    pub fn host_name(&self) -> &'a str {
        self.host_name
    }

    /// `HostName` without a `:port` suffix.
    pub fn host(&self) -> &'a str {
        split_host_port(self.host_name).map_or(self.host_name, |(h, _)| h)
    }

    /// The port in `HostName`, if it has one (`HostName=localhost:8443`).
    pub fn port(&self) -> Option<u16> {
        split_host_port(self.host_name).and_then(|(_, p)| p)
    }

    /// `DeviceId`.
    pub fn device_id(&self) -> Option<&'a str> {
        self.device_id
    }

    /// `ModuleId`.
    pub fn module_id(&self) -> Option<&'a str> {
        self.module_id
    }

    /// `SharedAccessKey` (base64, checked). A secret: never log it.
    pub fn shared_access_key(&self) -> Option<&'a str> {
        self.shared_access_key.map(Secret::into_inner)
    }

    /// `SharedAccessKeyName`: the policy, which becomes the token's `skn`.
    pub fn shared_access_key_name(&self) -> Option<&'a str> {
        self.shared_access_key_name
    }

    /// `SharedAccessSignature` (a token, checked by [`Token::parse`]). A secret: never log it.
    pub fn shared_access_signature(&self) -> Option<&'a str> {
        self.shared_access_signature.map(Secret::into_inner)
    }

    /// The ready-made token, parsed.
    pub fn token(&self) -> Option<Token<'a>> {
        self.shared_access_signature()
            .and_then(|t| Token::parse(t).ok())
    }

    /// `GatewayHostName`.
    pub fn gateway_host_name(&self) -> Option<&'a str> {
        self.gateway_host_name
    }

    /// Whether `x509=true`.
    pub fn x509(&self) -> bool {
        self.x509
    }

    /// The resource a token for this identity is signed for: the module, the device, or the hub
    /// for a service string. Uses `HostName` as written (with any port), as every SDK does.
    pub fn resource(&self) -> Resource<'a> {
        match (self.device_id, self.module_id) {
            (Some(d), Some(m)) => Resource::Module {
                host: self.host_name,
                device_id: d,
                module_id: m,
            },
            (Some(d), None) => Resource::Device {
                host: self.host_name,
                device_id: d,
            },
            _ => Resource::Hub {
                host: self.host_name,
            },
        }
    }

    /// Signs a token for [`ConnectionString::resource`] valid until `expiry` (Unix seconds), with
    /// `skn` set to `SharedAccessKeyName` when present.
    ///
    /// # Errors
    /// [`sas::SignError::Key`] when the string has no `SharedAccessKey` (x509 or a ready token:
    /// reported as [`sas::KeyError::Empty`]); [`sas::SignError::Write`] when `out` fails.
    pub fn sign<W: fmt::Write + ?Sized>(
        &self,
        out: &mut W,
        expiry: u64,
    ) -> Result<(), sas::SignError> {
        let key = self
            .shared_access_key()
            .ok_or(sas::SignError::Key(sas::KeyError::Empty))?;
        sas::sign(
            out,
            &self.resource(),
            key,
            expiry,
            self.shared_access_key_name,
        )
    }

    /// Writes the complete string, key and signature included, in the order
    /// `HostName, DeviceId, ModuleId, SharedAccessKeyName, SharedAccessKey,
    /// SharedAccessSignature, GatewayHostName, x509`. Only for output a person asked for.
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_with_secret<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        self.write(out, false)
    }

    fn write<W: fmt::Write + ?Sized>(&self, out: &mut W, redact: bool) -> fmt::Result {
        let mut first = true;
        for field in Field::ALL {
            let Some(v) = self.get(field) else { continue };
            if !first {
                out.write_str(";")?;
            }
            first = false;
            out.write_str(field.name())?;
            out.write_str("=")?;
            let secret = matches!(field, Field::SharedAccessKey | Field::SharedAccessSignature);
            out.write_str(if redact && secret { "<redacted>" } else { v })?;
        }
        Ok(())
    }
}

/// The generic `key=value;key=value` layer under [`ConnectionString::parse`], for any key set:
/// splits on `;`, each segment on its first `=`. Yields an error for an empty segment (so an
/// empty string or a trailing `;`) or a segment without `=`; the values may be empty (the caller
/// decides). Keys are returned as written.
///
/// # Errors
/// Each item is [`ConnectionStringError::EmptySegment`] or
/// [`ConnectionStringError::MissingEquals`] for a bad segment.
pub fn pairs(s: &str) -> impl Iterator<Item = Result<(&str, &str), ConnectionStringError>> {
    s.split(';').map(|segment| {
        if segment.is_empty() {
            return Err(E::EmptySegment);
        }
        segment.split_once('=').ok_or(E::MissingEquals)
    })
}

/// Splits a hub host name into the hub name and the DNS suffix at the first `.`:
/// `myhub.azure-devices.net` -> (`myhub`, `azure-devices.net`). `None` without a `.` or with an
/// empty part.
pub fn split_host_name(host: &str) -> Option<(&str, &str)> {
    host.split_once('.')
        .filter(|(name, suffix)| !name.is_empty() && !suffix.is_empty())
}

/// Splits a `HostName` value, `host[:port]`, into the host and the port if one is given
/// (`localhost:18883` -> (`localhost`, `Some(18883)`)). A bracketed IPv6 literal (`[::1]:8443`)
/// keeps its colons. `None` when a port is present but not a number in 1..=65535, or the host is
/// empty.
pub fn split_host_port(host_name: &str) -> Option<(&str, Option<u16>)> {
    // Byte searches: `str::find`'s pattern machinery is large in the firmware image.
    let bytes = host_name.as_bytes();
    let search_from = if bytes.first() == Some(&b'[') {
        bytes.iter().position(|&b| b == b']')?
    } else {
        0
    };
    let (host, port) = match bytes.get(search_from..)?.iter().rposition(|&b| b == b':') {
        Some(i) => {
            let (h, p) = host_name.split_at_checked(search_from + i)?;
            // Capped at u16::MAX, so the cast keeps the value.
            let port = crate::encoding::parse_decimal(p.get(1..)?.as_bytes(), u16::MAX.into())?;
            if port == 0 {
                return None;
            }
            (h, Some(port as u16))
        }
        None => (host_name, None),
    };
    (!host.is_empty()).then_some((host, port))
}

impl fmt::Display for ConnectionString<'_> {
    /// The string with `SharedAccessKey=<redacted>` and `SharedAccessSignature=<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    const KEY: &str = "dGVzdFN0cmluZzE=";

    #[test]
    fn local_hub_service_string_has_host_and_port() {
        let s = "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=dGVzdFN0cmluZzE=";
        let cs = ConnectionString::parse(s).unwrap();
        assert_eq!(cs.kind(), Kind::Service);
        assert_eq!(
            (cs.host(), cs.port(), cs.host_name()),
            ("localhost", Some(8443), "localhost:8443")
        );
        assert_eq!(
            cs.resource(),
            Resource::Hub {
                host: "localhost:8443"
            }
        );
        let mut full = String::new();
        cs.write_with_secret(&mut full).unwrap();
        assert_eq!(full, s);
    }

    #[test]
    fn host_names_split_into_host_and_port() {
        assert_eq!(
            split_host_port("localhost:18883"),
            Some(("localhost", Some(18883)))
        );
        assert_eq!(
            split_host_port("h.azure-devices.net"),
            Some(("h.azure-devices.net", None))
        );
        assert_eq!(split_host_port("[::1]:8443"), Some(("[::1]", Some(8443))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        for bad in ["h:0", "h:65536", "h:x", ":8883", ""] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_and_debug_redact_key_and_signature() {
        let s = std::format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}");
        let cs = ConnectionString::parse(&s).unwrap();
        let shown = std::format!("{cs} {cs:?}");
        assert!(!shown.contains(KEY), "{shown}");
        assert!(shown.contains("SharedAccessKey=<redacted>"), "{shown}");
        let t = "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=c2VjcmV0c2ln&se=5605002146";
        let s = std::format!("HostName=h;DeviceId=d;SharedAccessSignature={t}");
        let cs = ConnectionString::parse(&s).unwrap();
        assert_eq!(cs.kind(), Kind::DeviceWithSas);
        assert_eq!(cs.token().unwrap().expiry(), 5_605_002_146);
        let shown = std::format!("{cs} {cs:?}");
        assert!(!shown.contains("c2VjcmV0c2ln"), "{shown}");
    }

    #[test]
    fn other_sdks_keys_are_accepted_and_ignored() {
        // The C# SDK's legacy service string, and its device string acting through a policy.
        let s = std::format!(
            "HostName=acme.azure-devices.net;CredentialScope=IotHub;\
             CredentialType=SharedAccessSignature;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        );
        let cs = ConnectionString::parse(&s).unwrap();
        assert_eq!(cs.kind(), Kind::Service);
        assert_eq!(cs.shared_access_key_name(), Some("iothubowner"));
        let mut full = String::new();
        cs.write_with_secret(&mut full).unwrap();
        assert_eq!(
            full,
            std::format!(
                "HostName=acme.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
            ),
            "ignored keys are not written back"
        );
        let s = std::format!(
            "HostName=h;CredentialType=SharedAccessKey;CredentialScope=Device;DeviceId=d;SharedAccessKey={KEY}"
        );
        assert_eq!(
            ConnectionString::parse(&s),
            ConnectionString::device("h", "d", KEY)
        );
        // The C SDK's provisioning marker: accepted as a key, but the string has no credential.
        assert_eq!(
            ConnectionString::parse("HostName=h;DeviceId=d;UseProvisioning=true"),
            Err(ConnectionStringError::NoCredential)
        );
        for name in IGNORED_KEYS {
            assert!(
                is_known_key(name) && Field::from_name(name).is_none(),
                "{name}"
            );
        }
        assert!(is_known_key("ModuleId"));
    }

    #[test]
    fn typos_and_other_spellings_are_still_unknown_keys() {
        for key in [
            "SharedAccesKey",
            "credentialscope",
            "CredentialScopes",
            "X509Cert",
            "MqttGatewayHostName",
        ] {
            let s = std::format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};{key}=x");
            assert_eq!(
                ConnectionString::parse(&s),
                Err(ConnectionStringError::UnknownKey),
                "{key}"
            );
            assert!(!is_known_key(key), "{key}");
        }
        let msg = std::format!("{}", ConnectionStringError::UnknownKey);
        for name in Field::ALL.map(Field::name).iter().chain(&IGNORED_KEYS) {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
    }

    #[test]
    fn builders_write_what_parse_reads_back() {
        let mut out = String::new();
        ConnectionString::device("localhost:18883", "d", KEY)
            .unwrap()
            .write_with_secret(&mut out)
            .unwrap();
        assert_eq!(
            out,
            std::format!("HostName=localhost:18883;DeviceId=d;SharedAccessKey={KEY}")
        );
        let cs = ConnectionString::parse(&out).unwrap();
        assert_eq!((cs.host(), cs.port()), ("localhost", Some(18883)));

        out.clear();
        ConnectionString::module("h", "d", "m", KEY)
            .unwrap()
            .write_with_secret(&mut out)
            .unwrap();
        assert_eq!(
            out,
            std::format!("HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={KEY}")
        );

        out.clear();
        ConnectionString::service("h:8443", "iothubowner", KEY)
            .unwrap()
            .write_with_secret(&mut out)
            .unwrap();
        assert_eq!(
            out,
            std::format!("HostName=h:8443;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
        );

        assert_eq!(
            ConnectionString::device("h", "a;b", KEY),
            Err(ConnectionStringError::Invalid(Field::DeviceId))
        );
        assert_eq!(
            ConnectionString::module("h", "d", "", KEY),
            Err(ConnectionStringError::EmptyValue(Field::ModuleId))
        );
        assert_eq!(
            ConnectionString::service("h", "p", "not base64!"),
            Err(ConnectionStringError::Invalid(Field::SharedAccessKey))
        );
    }

    #[test]
    fn errors_name_the_field_and_hide_values() {
        let cases = [
            (
                "HostName=h;DeviceId=d;SharedAccessKey=not*base64",
                "SharedAccessKey: not valid base64",
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=",
                "SharedAccessKey: empty",
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=dGVzdFN0cmluZzE=;",
                "connection string has an empty segment (';;' or a trailing ';')",
            ),
            (
                "HostName=h;ModuleId=m;SharedAccessKeyName=p;SharedAccessKey=dGVzdFN0cmluZzE=",
                "ModuleId: requires DeviceId",
            ),
            (
                "HostName=h:99999;DeviceId=d;x509=true",
                "HostName: bad port",
            ),
            ("HostName=h:0;DeviceId=d;x509=true", "HostName: bad port"),
            ("HostName=h:;DeviceId=d;x509=true", "HostName: bad port"),
            ("HostName=h;DeviceId=d;x509=false", "x509: must be true"),
            (
                "HostName=h;DeviceId=d;DeviceId=e;x509=true",
                "DeviceId: given twice",
            ),
        ];
        for (input, msg) in cases {
            let e = ConnectionString::parse(input).unwrap_err();
            assert_eq!(std::format!("{e}"), msg, "{input}");
        }
    }
}
