//! The MQTT CONNECT username and client id for IoT Hub and DPS (spec sections 1 and 7).
//!
//! Built: `{host}/{device}[/{module}]/?api-version=2021-04-12&DeviceClientType=azsim%2F{ver}`
//! `[&model-id={enc(dtmi)}]`, client id `{device}[/{module}]`, and the DPS username
//! `{scope}/registrations/{regId}/api-version=2019-03-31` (no `?`).
//!
//! Parsed (the hub side): the `/?` form, the legacy `?`-less form
//! (`{host}/{device}/api-version=2016-11-14&...`, old C SDKs) and the `{host}/{device}?...` form,
//! parameters in any order, unknown parameters ignored. As the hub does, host, device and module
//! are taken verbatim (never percent-decoded) while query values are percent-decoded on demand
//! ([`Param`]).

use core::fmt;

use crate::encoding;

/// The api-version as a literal, so the username's fixed middle is one string.
macro_rules! api_version {
    () => {
        "2021-04-12"
    };
}

/// The IoT Hub api-version azsim sends.
pub const API_VERSION: &str = api_version!();

/// The DPS api-version azsim sends.
pub const DPS_API_VERSION: &str = "2019-03-31";

/// Writes the client id: `{device_id}` or `{device_id}/{module_id}`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_client_id<W: fmt::Write + ?Sized>(
    out: &mut W,
    device_id: &str,
    module_id: Option<&str>,
) -> fmt::Result {
    client_id_dyn(&mut encoding::Dyn(out), device_id, module_id)
}

// One body for every writer type (the firmware measures with one writer and writes with
// another).
fn client_id_dyn(
    out: &mut dyn fmt::Write,
    device_id: &str,
    module_id: Option<&str>,
) -> fmt::Result {
    out.write_str(device_id)?;
    if let Some(m) = module_id {
        out.write_str("/")?;
        out.write_str(m)?;
    }
    Ok(())
}

/// Splits a client id into device and module (`dev/mod`). `None` for an empty device or module,
/// or more than one `/`.
pub fn parse_client_id(client_id: &str) -> Option<(&str, Option<&str>)> {
    match client_id.split_once('/') {
        None if !client_id.is_empty() => Some((client_id, None)),
        Some((d, m)) if !d.is_empty() && !m.is_empty() && !m.contains('/') => Some((d, Some(m))),
        _ => None,
    }
}

/// Writes the hub username:
/// `{host}/{device_id}[/{module_id}]/?api-version=2021-04-12&DeviceClientType=azsim%2F{client_version}[&model-id={enc(model_id)}]`.
///
/// `host` is the hub host name as the token's resource uses it; `client_version` is azsim's
/// version (`env!("CARGO_PKG_VERSION")` of the caller), percent-encoded like the model id.
///
/// # Errors
/// Only the writer's own error.
pub fn write_username<W: fmt::Write + ?Sized>(
    out: &mut W,
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    client_version: &str,
    model_id: Option<&str>,
) -> fmt::Result {
    username_dyn(
        &mut encoding::Dyn(out),
        host,
        device_id,
        module_id,
        client_version,
        model_id,
    )
}

fn username_dyn(
    out: &mut dyn fmt::Write,
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    client_version: &str,
    model_id: Option<&str>,
) -> fmt::Result {
    out.write_str(host)?;
    out.write_str("/")?;
    client_id_dyn(out, device_id, module_id)?;
    out.write_str(concat!(
        "/?api-version=",
        api_version!(),
        "&DeviceClientType=azsim%2F"
    ))?;
    encoding::encode(out, client_version)?;
    if let Some(m) = model_id {
        out.write_str("&model-id=")?;
        encoding::encode(out, m)?;
    }
    Ok(())
}

/// Writes the DPS username: `{id_scope}/registrations/{registration_id}/api-version=2019-03-31`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_dps_username<W: fmt::Write + ?Sized>(
    out: &mut W,
    id_scope: &str,
    registration_id: &str,
) -> fmt::Result {
    write!(
        out,
        "{id_scope}/registrations/{registration_id}/api-version={DPS_API_VERSION}"
    )
}

/// A query parameter named in [`UsernameError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamName {
    /// `api-version`.
    ApiVersion,
    /// `DeviceClientType`.
    DeviceClientType,
    /// `model-id`.
    ModelId,
}

impl ParamName {
    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ApiVersion => "api-version",
            Self::DeviceClientType => "DeviceClientType",
            Self::ModelId => "model-id",
        }
    }
}

impl fmt::Display for ParamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a username was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernameError {
    /// The username is empty.
    Empty,
    /// No host before the first `/`.
    MissingHost,
    /// No device id after the host.
    MissingDevice,
    /// An empty path segment (`host//dev`), or more than host, device and module.
    BadPath,
    /// A parameter's value has a bad percent escape or is not UTF-8 once decoded.
    BadEscape(ParamName),
    /// A known parameter is given twice.
    Duplicate(ParamName),
}

impl fmt::Display for UsernameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("username is empty"),
            Self::MissingHost => f.write_str("username has no host"),
            Self::MissingDevice => f.write_str("username has no device id"),
            Self::BadPath => f.write_str("username path is not {host}/{device}[/{module}]"),
            Self::BadEscape(p) => write!(f, "username {p}: bad percent encoding"),
            Self::Duplicate(p) => write!(f, "username {p}: given twice"),
        }
    }
}

impl core::error::Error for UsernameError {}

/// A query value as sent (`raw`), validated to decode; `Display` writes it decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a>(&'a str);

impl<'a> Param<'a> {
    /// The value as sent, still percent-encoded.
    pub fn raw(&self) -> &'a str {
        self.0
    }

    /// Decodes into `buf`.
    ///
    /// # Errors
    /// [`encoding::DecodeError::BufferTooSmall`] when `buf` is too short.
    pub fn decode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, encoding::DecodeError> {
        encoding::decode(self.0, buf)
    }

    /// Whether the decoded value equals `s` (no buffer needed).
    pub fn eq_decoded(&self, s: &str) -> bool {
        encoding::eq_decoded(self.0, s)
    }
}

impl fmt::Display for Param<'_> {
    /// The decoded value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Checked by `Username::parse`, so decoding cannot fail on the escapes themselves.
        encoding::decode_to(f, self.0).map_err(|_| fmt::Error)
    }
}

/// A parsed hub username, borrowing from the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Username<'a> {
    /// The host, verbatim.
    pub host: &'a str,
    /// The device id, verbatim (not decoded).
    pub device_id: &'a str,
    /// The module id, verbatim (not decoded).
    pub module_id: Option<&'a str>,
    /// `api-version`, when given.
    pub api_version: Option<Param<'a>>,
    /// `DeviceClientType`, when given.
    pub device_client_type: Option<Param<'a>>,
    /// `model-id` (encoded or raw), when given.
    pub model_id: Option<Param<'a>>,
    /// The whole query as sent (after `?`, or from `api-version=` in the legacy form).
    pub query: &'a str,
}

impl<'a> Username<'a> {
    /// Parses `{host}/{device}[/{module}]/?{query}`, `{host}/{device}[/{module}]?{query}` or the
    /// legacy `{host}/{device}[/{module}]/api-version=...` form; a username without a query is
    /// accepted too (api-version is then `None`; the hub decides whether to care). Parameter
    /// names are matched exactly; unknown ones are ignored; known ones may appear once.
    ///
    /// # Errors
    /// A [`UsernameError`].
    pub fn parse(username: &'a str) -> Result<Self, UsernameError> {
        if username.is_empty() {
            return Err(UsernameError::Empty);
        }
        let (path, query) = split_query(username);
        let mut segs = path.split('/');
        let host = segs
            .next()
            .filter(|h| !h.is_empty())
            .ok_or(UsernameError::MissingHost)?;
        let device_id = segs
            .next()
            .filter(|d| !d.is_empty())
            .ok_or(UsernameError::MissingDevice)?;
        let module_id = match segs.next() {
            None => None,
            Some("") => return Err(UsernameError::BadPath),
            Some(m) => Some(m),
        };
        if segs.next().is_some() {
            return Err(UsernameError::BadPath);
        }
        let mut u = Self {
            host,
            device_id,
            module_id,
            api_version: None,
            device_client_type: None,
            model_id: None,
            query,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, which) = match name {
                "api-version" => (&mut u.api_version, ParamName::ApiVersion),
                "DeviceClientType" => (&mut u.device_client_type, ParamName::DeviceClientType),
                "model-id" => (&mut u.model_id, ParamName::ModelId),
                _ => continue,
            };
            if slot.is_some() {
                return Err(UsernameError::Duplicate(which));
            }
            if encoding::decoded_len(value).is_err() {
                return Err(UsernameError::BadEscape(which));
            }
            *slot = Some(Param(value));
        }
        Ok(u)
    }

    /// The client id this username implies: `{device}` or `{device}/{module}`.
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_client_id<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        write_client_id(out, self.device_id, self.module_id)
    }

    /// Whether `client_id` names the same device and module as this username.
    pub fn matches_client_id(&self, client_id: &str) -> bool {
        parse_client_id(client_id) == Some((self.device_id, self.module_id))
    }
}

/// Splits path and query. Device and module ids may contain `?` (even first) but never `/`,
/// while query values are percent-encoded (no `/?`), so the last `/?` ends the path.
fn split_query(u: &str) -> (&str, &str) {
    if let Some(i) = u.rfind("/?") {
        return (&u[..i], &u[i + 2..]);
    }
    if let Some(i) = u.rfind("/api-version=") {
        return (&u[..i], &u[i + 1..]);
    }
    if let Some(i) = u.find("?api-version=") {
        return (&u[..i], &u[i + 1..]);
    }
    (u.strip_suffix('/').unwrap_or(u), "")
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::{String, ToString};

    #[test]
    fn builds_module_username_with_model_id() {
        let mut s = String::new();
        write_username(&mut s, "h.net", "d", Some("m"), "0.1.0", Some("dtmi:a:b;1")).unwrap();
        assert_eq!(
            s,
            "h.net/d/m/?api-version=2021-04-12&DeviceClientType=azsim%2F0.1.0&model-id=dtmi%3Aa%3Ab%3B1"
        );
        let u = Username::parse(&s).unwrap();
        assert_eq!(
            (u.host, u.device_id, u.module_id),
            ("h.net", "d", Some("m"))
        );
        assert_eq!(u.model_id.unwrap().to_string(), "dtmi:a:b;1");
        assert_eq!(u.device_client_type.unwrap().to_string(), "azsim/0.1.0");
        assert!(u.matches_client_id("d/m"));
        assert!(!u.matches_client_id("d"));
    }

    #[test]
    fn legacy_and_question_mark_forms_and_any_order() {
        let u = Username::parse("h/dev/api-version=2016-11-14&DeviceClientType=c%2F1").unwrap();
        assert_eq!((u.device_id, u.module_id), ("dev", None));
        assert_eq!(u.api_version.unwrap().raw(), "2016-11-14");
        let u = Username::parse("h/dev?api-version=2018-06-30").unwrap();
        assert_eq!(u.device_id, "dev");
        let u = Username::parse("h/d%20x/?model-id=dtmi:raw;1&x=y&api-version=2021-04-12").unwrap();
        assert_eq!(u.device_id, "d%20x", "ids are never decoded");
        assert!(u.model_id.unwrap().eq_decoded("dtmi:raw;1"));
        assert!(u.api_version.unwrap().eq_decoded(API_VERSION));
        let u = Username::parse("h/dev?ice/?api-version=1").unwrap();
        assert_eq!(u.device_id, "dev?ice");
    }

    #[test]
    fn bad_usernames_are_refused() {
        assert_eq!(Username::parse(""), Err(UsernameError::Empty));
        assert_eq!(Username::parse("/d/?a=b"), Err(UsernameError::MissingHost));
        assert_eq!(Username::parse("h"), Err(UsernameError::MissingDevice));
        assert_eq!(
            Username::parse("h//?api-version=1"),
            Err(UsernameError::MissingDevice)
        );
        assert_eq!(
            Username::parse("h/d/m/x/?api-version=1"),
            Err(UsernameError::BadPath)
        );
        assert_eq!(
            Username::parse("h/d/?api-version=1&api-version=2"),
            Err(UsernameError::Duplicate(ParamName::ApiVersion))
        );
        assert_eq!(
            Username::parse("h/d/?model-id=%zz"),
            Err(UsernameError::BadEscape(ParamName::ModelId))
        );
        assert_eq!(parse_client_id("a/b/c"), None);
        assert_eq!(parse_client_id("a"), Some(("a", None)));
    }
}
