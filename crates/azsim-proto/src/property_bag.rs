//! IoT Hub message property bags: `k1=v1&k2&k3=`, the text after `.../messages/events/` (D2C)
//! and `.../messages/devicebound/` (C2D).
//!
//! Reading is zero-copy: [`PropertyBag::iter`] yields each [`Property`] as still-encoded
//! [`EncodedStr`] slices of the topic, and decoding happens only when the caller asks, into the
//! caller's buffer or `fmt::Write` (through the one percent-decoder in [`crate::encoding`]).
//! Writing goes through [`BagWriter`], which percent-encodes names and values with
//! [`crate::encoding::encode`], so `$.mid` goes on the wire as `%24.mid`.
//!
//! The rules, from the spec (section 4) and the SDKs' tests:
//!
//! | input | reads as |
//! |---|---|
//! | `key=value` | name `key`, value `Some("value")`; split on the **first** `=`, so `==` is name `""`, value `"="` |
//! | `key` | value `None` (a null property) |
//! | `key=` | value `Some("")` (an empty string) |
//! | empty segments (`&&`) | skipped |
//! | `%24.mid` and `$.mid` | both decode to `$.mid` (SDKs send the first, the docs the second) |
//! | `+` | a literal `+`, never a space |
//!
//! What this module does not do: decide which topic a bag belongs to (see [`crate::topic`]) or
//! check that values are well-formed dates, content types or acks beyond [`Ack::parse`].

use core::fmt;

use crate::encoding::{self, DecodeError};

/// A slice of still-percent-encoded text borrowed from a topic (a property name or value, a
/// request id, an input name).
///
/// The raw text is available through [`EncodedStr::as_raw`]; the decoded text through
/// [`EncodedStr::decode`] (into a byte buffer), [`EncodedStr::decode_to`] (into any
/// `fmt::Write`), or without copying through [`EncodedStr::as_plain`] when it has no escapes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncodedStr<'a>(&'a str);

impl<'a> EncodedStr<'a> {
    /// Wraps raw, percent-encoded text. Nothing is checked here; see [`EncodedStr::validate`].
    #[inline]
    pub const fn new(raw: &'a str) -> Self {
        Self(raw)
    }

    /// The text exactly as it appears on the wire.
    #[inline]
    pub const fn as_raw(&self) -> &'a str {
        self.0
    }

    /// Whether the raw text is empty (then the decoded text is empty too).
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The decoded text without copying, when the raw text has no `%` escape (the common case).
    #[inline]
    pub fn as_plain(&self) -> Option<&'a str> {
        if encoding::needs_decoding(self.0) {
            None
        } else {
            Some(self.0)
        }
    }

    /// Decodes into `buf` and returns the decoded text (`+` stays `+`).
    ///
    /// # Errors
    /// [`DecodeError::BadEscape`] for a `%` without two hex digits, [`DecodeError::NotUtf8`] when
    /// the decoded bytes are not UTF-8, [`DecodeError::BufferTooSmall`] when `buf` is too short.
    #[inline]
    pub fn decode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, DecodeError> {
        encoding::decode(self.0, buf)
    }

    /// Decodes into any `fmt::Write` (`String`, `heapless::String`).
    ///
    /// # Errors
    /// As [`EncodedStr::decode`]; a writer error is reported as [`DecodeError::BufferTooSmall`].
    #[inline]
    pub fn decode_to<W: fmt::Write + ?Sized>(&self, out: &mut W) -> Result<(), DecodeError> {
        encoding::decode_to(out, self.0)
    }

    /// Checks that the text decodes (escapes are complete, result is UTF-8) and returns the
    /// decoded length in bytes, without writing it anywhere.
    ///
    /// # Errors
    /// [`DecodeError::BadEscape`] or [`DecodeError::NotUtf8`].
    pub fn validate(&self) -> Result<usize, DecodeError> {
        encoding::decoded_len(self.0)
    }

    /// Whether the decoded text equals `s`, compared byte by byte without a buffer. A raw text
    /// with a malformed escape equals nothing.
    pub fn eq_decoded(&self, s: &str) -> bool {
        encoding::eq_decoded(self.0, s)
    }
}

impl fmt::Debug for EncodedStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// The well-known property names of IoT Hub messages (spec section 4, "Property bag").
///
/// Names are given decoded (`$.mid`); on the wire the `$` is usually `%24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemProperty {
    /// `$.mid`: message id.
    MessageId,
    /// `$.cid`: correlation id.
    CorrelationId,
    /// `$.uid`: user id.
    UserId,
    /// `$.ct`: content type (`application/json`); needed with `$.ce` for body routing.
    ContentType,
    /// `$.ce`: content encoding (`utf-8`).
    ContentEncoding,
    /// `$.ctime`: creation time (ISO-8601).
    CreationTime,
    /// `$.exp`: absolute expiry time.
    Expiry,
    /// `$.to`: C2D destination, `/devices/{id}/messages/deviceBound`.
    To,
    /// `$.on`: module output name.
    OutputName,
    /// `$.sub`: Plug and Play component name.
    Component,
    /// `$.ifid`: interface id (security messages).
    InterfaceId,
    /// `$.diagid`: diagnostic (tracing) id.
    DiagnosticId,
    /// `$.diagctx`: diagnostic (tracing) context.
    DiagnosticContext,
    /// `$.cdid`: connection device id.
    ConnectionDeviceId,
    /// `$.cmid`: connection module id.
    ConnectionModuleId,
    /// `iothub-ack`: C2D feedback request, see [`Ack`].
    Ack,
}

impl SystemProperty {
    /// Every system property, in declaration order.
    pub const ALL: [Self; 16] = [
        Self::MessageId,
        Self::CorrelationId,
        Self::UserId,
        Self::ContentType,
        Self::ContentEncoding,
        Self::CreationTime,
        Self::Expiry,
        Self::To,
        Self::OutputName,
        Self::Component,
        Self::InterfaceId,
        Self::DiagnosticId,
        Self::DiagnosticContext,
        Self::ConnectionDeviceId,
        Self::ConnectionModuleId,
        Self::Ack,
    ];

    /// The decoded wire name (`$.mid`, ..., `iothub-ack`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::MessageId => "$.mid",
            Self::CorrelationId => "$.cid",
            Self::UserId => "$.uid",
            Self::ContentType => "$.ct",
            Self::ContentEncoding => "$.ce",
            Self::CreationTime => "$.ctime",
            Self::Expiry => "$.exp",
            Self::To => "$.to",
            Self::OutputName => "$.on",
            Self::Component => "$.sub",
            Self::InterfaceId => "$.ifid",
            Self::DiagnosticId => "$.diagid",
            Self::DiagnosticContext => "$.diagctx",
            Self::ConnectionDeviceId => "$.cdid",
            Self::ConnectionModuleId => "$.cmid",
            Self::Ack => "iothub-ack",
        }
    }

    /// The name as [`crate::encoding::encode`] writes it on the wire (`%24.mid`, `iothub-ack`).
    pub const fn encoded_name(self) -> &'static str {
        match self {
            Self::MessageId => "%24.mid",
            Self::CorrelationId => "%24.cid",
            Self::UserId => "%24.uid",
            Self::ContentType => "%24.ct",
            Self::ContentEncoding => "%24.ce",
            Self::CreationTime => "%24.ctime",
            Self::Expiry => "%24.exp",
            Self::To => "%24.to",
            Self::OutputName => "%24.on",
            Self::Component => "%24.sub",
            Self::InterfaceId => "%24.ifid",
            Self::DiagnosticId => "%24.diagid",
            Self::DiagnosticContext => "%24.diagctx",
            Self::ConnectionDeviceId => "%24.cdid",
            Self::ConnectionModuleId => "%24.cmid",
            Self::Ack => "iothub-ack",
        }
    }

    /// The property with this decoded name (`$.mid`), if it is a system property. Exact,
    /// case-sensitive match.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "iothub-ack" {
            return Some(Self::Ack);
        }
        Self::from_suffix(name.strip_prefix("$.")?)
    }

    /// The property with this raw (still encoded) name: `%24.mid` and `$.mid` both give
    /// [`SystemProperty::MessageId`]; any other escape spelling of the same text does too.
    pub fn from_raw_name(raw: EncodedStr<'_>) -> Option<Self> {
        let r = raw.as_raw();
        // Fast path for the two spellings every sender uses.
        let suffix = r.strip_prefix("%24.").or_else(|| r.strip_prefix("$."));
        if let Some(s) = suffix {
            if !encoding::needs_decoding(s) {
                return Self::from_suffix(s);
            }
        } else if r == "iothub-ack" {
            return Some(Self::Ack);
        }
        if !encoding::needs_decoding(r) {
            return None;
        }
        Self::ALL.into_iter().find(|p| raw.eq_decoded(p.name()))
    }

    fn from_suffix(s: &str) -> Option<Self> {
        Some(match s {
            "mid" => Self::MessageId,
            "cid" => Self::CorrelationId,
            "uid" => Self::UserId,
            "ct" => Self::ContentType,
            "ce" => Self::ContentEncoding,
            "ctime" => Self::CreationTime,
            "exp" => Self::Expiry,
            "to" => Self::To,
            "on" => Self::OutputName,
            "sub" => Self::Component,
            "ifid" => Self::InterfaceId,
            "diagid" => Self::DiagnosticId,
            "diagctx" => Self::DiagnosticContext,
            "cdid" => Self::ConnectionDeviceId,
            "cmid" => Self::ConnectionModuleId,
            _ => return None,
        })
    }
}

/// Whether `name` (decoded) is reserved for the hub and the SDKs, so a sender may not use it as
/// an application property: it starts with `$.` (system properties, `$.mid`, `$.to`, ...) or
/// `iothub-` (`iothub-ack`, the hub's `iothub-connection-*` annotations, ...).
///
/// Both prefixes are matched exactly and case-sensitively, as the hub's REST API and the CLI
/// check `--property` names; a name such as `IotHub-x` or `%24.mid` (still encoded) is not
/// reserved by this rule.
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with("$.") || name.starts_with("iothub-")
}

impl fmt::Display for SystemProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `iothub-ack` values: which C2D feedback the sender asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ack {
    /// `none`: no feedback (the default).
    #[default]
    None,
    /// `positive`: feedback on completion.
    Positive,
    /// `negative`: feedback on expiry, dead-lettering or rejection.
    Negative,
    /// `full`: both.
    Full,
}

impl Ack {
    /// The wire value (`none`, `positive`, `negative`, `full`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Full => "full",
        }
    }

    /// Parses a decoded value, ASCII case-insensitively (the legacy C tests send `Full`).
    ///
    /// # Errors
    /// [`UnknownAck`] for any other text.
    pub fn parse(s: &str) -> Result<Self, UnknownAck> {
        [Self::None, Self::Positive, Self::Negative, Self::Full]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownAck)
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `iothub-ack` value other than `none`, `positive`, `negative` or `full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownAck;

impl fmt::Display for UnknownAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("iothub-ack is not none, positive, negative or full")
    }
}

impl core::error::Error for UnknownAck {}

/// One `name[=value]` pair of a bag, both still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property<'a> {
    /// The raw name (`%24.mid`, `temperature`).
    pub name: EncodedStr<'a>,
    /// The raw value: `None` for a bare `key` (null), `Some("")` for `key=`.
    pub value: Option<EncodedStr<'a>>,
}

impl<'a> Property<'a> {
    /// The system property this pair carries, if its decoded name is one.
    #[inline]
    pub fn system(&self) -> Option<SystemProperty> {
        SystemProperty::from_raw_name(self.name)
    }

    /// Splits one non-empty segment on its first `=`.
    #[inline]
    fn from_segment(seg: &'a str) -> Self {
        match seg.split_once('=') {
            Some((n, v)) => Self {
                name: EncodedStr(n),
                value: Some(EncodedStr(v)),
            },
            None => Self {
                name: EncodedStr(seg),
                value: None,
            },
        }
    }
}

/// A raw property bag (`k1=v1&k2&k3=`) borrowed from a topic, without the leading `?` or
/// trailing `/` some senders add (the topic parsers strip those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropertyBag<'a>(&'a str);

impl<'a> PropertyBag<'a> {
    /// Wraps raw bag text. Nothing is checked; see [`PropertyBag::validate`].
    #[inline]
    pub const fn new(raw: &'a str) -> Self {
        Self(raw)
    }

    /// The bag exactly as on the wire.
    #[inline]
    pub const fn as_raw(&self) -> &'a str {
        self.0
    }

    /// Whether the bag has no properties (it is empty or only `&`s).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Every pair in wire order, empty segments skipped.
    #[inline]
    pub fn iter(&self) -> Properties<'a> {
        Properties { rest: self.0 }
    }

    /// The pairs that are not system properties, in wire order. A name starting with `$.` that
    /// is not in [`SystemProperty`] counts as an application property (as the Python SDK does).
    pub fn app_properties(&self) -> impl Iterator<Item = Property<'a>> + use<'a> {
        self.iter().filter(|p| p.system().is_none())
    }

    /// The first pair whose decoded name is `name`: `None` when absent, `Some(None)` when
    /// present with a null value.
    pub fn get(&self, name: &str) -> Option<Option<EncodedStr<'a>>> {
        self.iter()
            .find(|p| p.name.eq_decoded(name))
            .map(|p| p.value)
    }

    /// The first occurrence of a system property: `None` when absent, `Some(None)` when null.
    pub fn system(&self, prop: SystemProperty) -> Option<Option<EncodedStr<'a>>> {
        self.iter()
            .find(|p| p.system() == Some(prop))
            .map(|p| p.value)
    }

    /// Checks that every name and value decodes (complete escapes, UTF-8).
    ///
    /// # Errors
    /// The first [`DecodeError`] found.
    pub fn validate(&self) -> Result<(), DecodeError> {
        // Text without escapes is already UTF-8 (it is a `&str`).
        if !encoding::needs_decoding(self.0) {
            return Ok(());
        }
        for p in self.iter() {
            p.name.validate()?;
            if let Some(v) = p.value {
                v.validate()?;
            }
        }
        Ok(())
    }
}

impl<'a> IntoIterator for PropertyBag<'a> {
    type Item = Property<'a>;
    type IntoIter = Properties<'a>;
    fn into_iter(self) -> Properties<'a> {
        self.iter()
    }
}

/// Iterator over the pairs of a [`PropertyBag`].
#[derive(Clone, Debug)]
pub struct Properties<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Properties<'a> {
    type Item = Property<'a>;

    fn next(&mut self) -> Option<Property<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (seg, rest) = match self.rest.find('&') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            if !seg.is_empty() {
                return Some(Property::from_segment(seg));
            }
        }
    }
}

impl core::iter::FusedIterator for Properties<'_> {}

/// Appends percent-encoded `name[=value]` pairs, `&`-separated, to a `fmt::Write`.
///
/// ```
/// # use azsim_proto::property_bag::{BagWriter, SystemProperty};
/// let mut s = String::new();
/// let mut w = BagWriter::new(&mut s);
/// w.system(SystemProperty::MessageId, "m 1").unwrap();
/// w.pair("flag", None).unwrap();
/// assert_eq!(s, "%24.mid=m%201&flag");
/// ```
#[derive(Debug)]
pub struct BagWriter<'w, W: ?Sized> {
    out: &'w mut W,
    empty: bool,
}

impl<'w, W: fmt::Write + ?Sized> BagWriter<'w, W> {
    /// A writer appending to `out`; the first pair gets no leading `&`.
    pub fn new(out: &'w mut W) -> Self {
        Self { out, empty: true }
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Appends `name=value` (or a bare `name` for a null value), both encoded.
    ///
    /// # Errors
    /// Only the writer's own error (a full fixed-capacity buffer).
    pub fn pair(&mut self, name: &str, value: Option<&str>) -> fmt::Result {
        if !self.empty {
            self.out.write_char('&')?;
        }
        self.empty = false;
        encoding::encode(self.out, name)?;
        if let Some(v) = value {
            self.out.write_char('=')?;
            encoding::encode(self.out, v)?;
        }
        Ok(())
    }

    /// Appends a system property (`%24.mid=...`).
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn system(&mut self, prop: SystemProperty, value: &str) -> fmt::Result {
        if !self.empty {
            self.out.write_char('&')?;
        }
        self.empty = false;
        self.out.write_str(prop.encoded_name())?;
        self.out.write_char('=')?;
        encoding::encode(self.out, value)
    }

    /// Appends application properties in the caller's order.
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn app_properties<'x, I>(&mut self, props: I) -> fmt::Result
    where
        I: IntoIterator<Item = (&'x str, &'x str)>,
    {
        for (k, v) in props {
            self.pair(k, Some(v))?;
        }
        Ok(())
    }
}

/// The system properties a sender sets on a message, for building D2C and C2D bags.
///
/// Unset fields (`None`) are left out of the bag. Values are given decoded; the writer encodes
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemProperties<'a> {
    /// `$.mid`
    pub message_id: Option<&'a str>,
    /// `$.cid`
    pub correlation_id: Option<&'a str>,
    /// `$.uid`
    pub user_id: Option<&'a str>,
    /// `$.ct`
    pub content_type: Option<&'a str>,
    /// `$.ce`
    pub content_encoding: Option<&'a str>,
    /// `$.ctime`
    pub creation_time: Option<&'a str>,
    /// `$.exp`
    pub expiry: Option<&'a str>,
    /// `$.to`
    pub to: Option<&'a str>,
    /// `$.on`
    pub output_name: Option<&'a str>,
    /// `$.sub`
    pub component: Option<&'a str>,
    /// `$.ifid`
    pub interface_id: Option<&'a str>,
    /// `iothub-ack`
    pub ack: Option<Ack>,
}

impl SystemProperties<'_> {
    /// The D2C order: the Python SDK's fixed order (`$.on $.mid $.cid $.uid $.ct $.ce $.ifid
    /// $.exp`), then the ones it never sends (`$.ctime $.sub $.to iothub-ack`).
    pub const D2C_ORDER: [SystemProperty; 12] = [
        SystemProperty::OutputName,
        SystemProperty::MessageId,
        SystemProperty::CorrelationId,
        SystemProperty::UserId,
        SystemProperty::ContentType,
        SystemProperty::ContentEncoding,
        SystemProperty::InterfaceId,
        SystemProperty::Expiry,
        SystemProperty::CreationTime,
        SystemProperty::Component,
        SystemProperty::To,
        SystemProperty::Ack,
    ];

    /// The C2D order, as the hub's real C2D topics show it (spec section 4 traces): `$.mid $.exp
    /// $.to $.cid $.uid $.ct $.ce iothub-ack`, with the rarely-set rest in between.
    pub const C2D_ORDER: [SystemProperty; 12] = [
        SystemProperty::MessageId,
        SystemProperty::Expiry,
        SystemProperty::To,
        SystemProperty::CorrelationId,
        SystemProperty::UserId,
        SystemProperty::ContentType,
        SystemProperty::ContentEncoding,
        SystemProperty::CreationTime,
        SystemProperty::OutputName,
        SystemProperty::Component,
        SystemProperty::InterfaceId,
        SystemProperty::Ack,
    ];

    /// The value set for `prop`, if any (`iothub-ack` as its wire text).
    pub fn get(&self, prop: SystemProperty) -> Option<&str> {
        match prop {
            SystemProperty::MessageId => self.message_id,
            SystemProperty::CorrelationId => self.correlation_id,
            SystemProperty::UserId => self.user_id,
            SystemProperty::ContentType => self.content_type,
            SystemProperty::ContentEncoding => self.content_encoding,
            SystemProperty::CreationTime => self.creation_time,
            SystemProperty::Expiry => self.expiry,
            SystemProperty::To => self.to,
            SystemProperty::OutputName => self.output_name,
            SystemProperty::Component => self.component,
            SystemProperty::InterfaceId => self.interface_id,
            SystemProperty::Ack => self.ack.map(Ack::as_str),
            SystemProperty::DiagnosticId
            | SystemProperty::DiagnosticContext
            | SystemProperty::ConnectionDeviceId
            | SystemProperty::ConnectionModuleId => None,
        }
    }

    /// Writes the set properties in `order`.
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_in_order<W: fmt::Write + ?Sized>(
        &self,
        w: &mut BagWriter<'_, W>,
        order: &[SystemProperty],
    ) -> fmt::Result {
        for &p in order {
            if let Some(v) = self.get(p) {
                w.system(p, v)?;
            }
        }
        Ok(())
    }

    /// Writes the set properties in [`SystemProperties::D2C_ORDER`].
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_d2c<W: fmt::Write + ?Sized>(&self, w: &mut BagWriter<'_, W>) -> fmt::Result {
        self.write_in_order(w, &Self::D2C_ORDER)
    }

    /// Writes the set properties in [`SystemProperties::C2D_ORDER`].
    ///
    /// # Errors
    /// Only the writer's own error.
    pub fn write_c2d<W: fmt::Write + ?Sized>(&self, w: &mut BagWriter<'_, W>) -> fmt::Result {
        self.write_in_order(w, &Self::C2D_ORDER)
    }
}

/// Writes a whole D2C bag: system properties in [`SystemProperties::D2C_ORDER`], then `app` in
/// the caller's order.
///
/// # Errors
/// Only the writer's own error.
pub fn write_d2c_bag<'x, W, I>(out: &mut W, sys: &SystemProperties<'_>, app: I) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    I: IntoIterator<Item = (&'x str, &'x str)>,
{
    let mut w = BagWriter::new(out);
    sys.write_d2c(&mut w)?;
    w.app_properties(app)
}

/// Writes a whole C2D bag: system properties in [`SystemProperties::C2D_ORDER`], then `app` in
/// the caller's order.
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_bag<'x, W, I>(out: &mut W, sys: &SystemProperties<'_>, app: I) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    I: IntoIterator<Item = (&'x str, &'x str)>,
{
    let mut w = BagWriter::new(out);
    sys.write_c2d(&mut w)?;
    w.app_properties(app)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    use std::string::String;
    use std::vec::Vec;

    fn pairs(raw: &str) -> Vec<(String, Option<String>)> {
        PropertyBag::new(raw)
            .iter()
            .map(|p| {
                let mut n = String::new();
                p.name.decode_to(&mut n).unwrap();
                let v = p.value.map(|v| {
                    let mut s = String::new();
                    v.decode_to(&mut s).unwrap();
                    s
                });
                (n, v)
            })
            .collect()
    }

    #[test]
    fn null_empty_and_first_equals_split() {
        assert_eq!(
            pairs("a&b=&c=x=y&&==&d+e=%2B"),
            std::vec![
                ("a".into(), None),
                ("b".into(), Some("".into())),
                ("c".into(), Some("x=y".into())),
                ("".into(), Some("=".into())),
                ("d+e".into(), Some("+".into())),
            ]
        );
        assert!(PropertyBag::new("&&&").is_empty());
        assert!(PropertyBag::new("").is_empty());
    }

    #[test]
    fn both_dollar_spellings_are_system_properties() {
        for raw in ["%24.mid", "$.mid", "%24%2Emid", "%24%2emid"] {
            assert_eq!(
                SystemProperty::from_raw_name(EncodedStr::new(raw)),
                Some(SystemProperty::MessageId),
                "{raw}"
            );
        }
        assert_eq!(
            SystemProperty::from_raw_name(EncodedStr::new("%24.nope")),
            None
        );
        assert_eq!(SystemProperty::from_raw_name(EncodedStr::new("mid")), None);
        assert_eq!(
            SystemProperty::from_raw_name(EncodedStr::new("iothub%2Dack")),
            Some(SystemProperty::Ack)
        );
        for p in SystemProperty::ALL {
            assert_eq!(SystemProperty::from_name(p.name()), Some(p));
            assert_eq!(
                std::format!("{}", crate::encoding::Encoded(p.name())),
                p.encoded_name()
            );
        }
        let bag = PropertyBag::new("$.cid=1&%24.mid=2&x=3&%24.foo=4");
        assert_eq!(
            bag.system(SystemProperty::MessageId),
            Some(Some(EncodedStr::new("2")))
        );
        assert_eq!(bag.get("$.cid"), Some(Some(EncodedStr::new("1"))));
        let app: Vec<_> = bag.app_properties().map(|p| p.name.as_raw()).collect();
        assert_eq!(app, ["x", "%24.foo"]);
    }

    #[test]
    fn eq_decoded_matches_decode() {
        let e = EncodedStr::new("a%2Fb%c3%a9");
        assert!(e.eq_decoded("a/bé"));
        assert!(!e.eq_decoded("a/b"));
        assert!(!e.eq_decoded("a/béx"));
        assert!(!EncodedStr::new("%2").eq_decoded("%2"));
        assert_eq!(e.validate(), Ok(5));
        assert_eq!(
            EncodedStr::new("%zz").validate(),
            Err(DecodeError::BadEscape)
        );
        assert_eq!(e.as_plain(), None);
        assert_eq!(EncodedStr::new("plain").as_plain(), Some("plain"));
    }

    #[test]
    fn builders_encode_and_order() {
        let sys = SystemProperties {
            message_id: Some("m/1"),
            expiry: Some("2030-01-01T00:00:00Z"),
            to: Some("/devices/d/messages/deviceBound"),
            content_encoding: Some("utf-8"),
            ack: Some(Ack::Full),
            output_name: Some("o"),
            ..SystemProperties::default()
        };
        let mut s = String::new();
        write_c2d_bag(&mut s, &sys, [("k&", "v=")]).unwrap();
        assert_eq!(
            s,
            "%24.mid=m%2F1&%24.exp=2030-01-01T00%3A00%3A00Z&%24.to=%2Fdevices%2Fd%2Fmessages%2FdeviceBound&%24.ce=utf-8&%24.on=o&iothub-ack=full&k%26=v%3D"
        );
        let mut s = String::new();
        write_d2c_bag(&mut s, &sys, []).unwrap();
        assert!(s.starts_with("%24.on=o&%24.mid=m%2F1&%24.ce=utf-8&%24.exp="));
        assert_eq!(Ack::parse("Full"), Ok(Ack::Full));
        assert_eq!(Ack::parse("nope"), Err(UnknownAck));
    }

    #[test]
    fn reserved_names_are_the_dollar_dot_and_iothub_prefixes_case_sensitively() {
        for name in [
            "$.mid",
            "$.",
            "$.custom",
            "iothub-ack",
            "iothub-",
            "iothub-connection-device-id",
        ] {
            assert!(is_reserved_name(name), "{name}");
        }
        for name in [
            "",
            "$",
            "$mid",
            "mid",
            "temperature",
            "IOTHUB-ack",
            "Iothub-x",
            "iothub",
            "x-iothub-ack",
            "%24.mid",
            " $.mid",
        ] {
            assert!(!is_reserved_name(name), "{name}");
        }
        // Every system property is reserved.
        for p in SystemProperty::ALL {
            assert!(is_reserved_name(p.name()), "{p}");
        }
    }
}
