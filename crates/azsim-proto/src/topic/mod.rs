//! Every IoT Hub and DPS device topic: builders that write into a `fmt::Write`, and parsers that
//! borrow from the topic. The device side (session, firmware) builds what it publishes and parses
//! what it receives; the hub side (emulator) does the reverse with the same functions.
//!
//! | direction | topic | build | parse |
//! |---|---|---|---|
//! | device SUB | `devices/{d}/messages/devicebound/#`, `devices/{d}/modules/{m}/inputs/#`, [`METHODS_FILTER`], [`TWIN_RESPONSE_FILTER`], [`TWIN_DESIRED_FILTER`], [`DPS_RESPONSE_FILTER`] | [`write_filter`] | [`classify_subscription`] (hub) |
//! | device PUB | `devices/{d}[/modules/{m}]/messages/events/{bag}` | [`write_telemetry_topic`] | [`parse_device_publish`] (hub) |
//! | hub PUB | `devices/{d}/messages/devicebound/{bag}` | [`write_c2d_topic`] | [`parse_c2d`] |
//! | hub PUB | `devices/{d}/modules/{m}/inputs/{input}/{bag}` | [`write_module_input_topic`] | [`parse_module_input`] |
//! | hub PUB | `$iothub/methods/POST/{name}/?$rid={rid}` | [`write_method_request`] | [`parse_method_request`] |
//! | device PUB | `$iothub/methods/res/{status}/?$rid={rid}` | [`write_method_response`] | [`parse_device_publish`] (hub) |
//! | device PUB | `$iothub/twin/GET/?$rid={rid}` | [`write_twin_get`] | [`parse_device_publish`] (hub) |
//! | device PUB | `$iothub/twin/PATCH/properties/reported/?$rid={rid}` | [`write_twin_patch_reported`] | [`parse_device_publish`] (hub) |
//! | hub PUB | `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` | [`write_twin_response`] | [`parse_twin_response`] |
//! | hub PUB | `$iothub/twin/PATCH/properties/desired/?$version={v}` | [`write_desired_patch`] | [`parse_desired_patch`] |
//! | device PUB | `$dps/registrations/PUT/iotdps-register/?$rid={rid}` | [`write_dps_register`] | [`parse_dps_request`] |
//! | device PUB | `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}` | [`write_dps_query`] | [`parse_dps_request`] |
//! | DPS PUB | `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]` | [`write_dps_response`] | [`parse_dps_response`] |
//!
//! [`parse_hub_publish`] dispatches anything the hub sends to a device.
//!
//! # Encoding
//! Device and module ids are inserted and read **verbatim**, never percent-encoded (the hub
//! does not decode them). Request ids, operation ids, module input names and property-bag names
//! and values are percent-encoded when built ([`crate::encoding::encode`]) and returned still
//! encoded when parsed, as [`EncodedStr`], so parsing never copies; they are checked to decode
//! (complete escapes, UTF-8). Statuses are decimal `u16` (0..=65535, as the SDKs' method tests
//! use); versions are decimal `u64`; `retry-after` is decimal `u32` seconds. A request id must be
//! non-empty. Query pairs may come in any order; unknown pairs are ignored (the DPS service and
//! newer hubs add some); a known pair given twice is an error.
//!
//! # Strict or lenient
//! The hub side is lenient only where a real SDK or the docs send the form, so firmware that
//! works against the local hub works against Azure. The device side may accept harmless forms a
//! real SDK parser accepts.
//!
//! | form (vectors README "non-canonical" and spec "accept both") | decision |
//! |---|---|
//! | telemetry bag with a leading `?` (`events/?k=v`, docs and PY wiki) | **lenient** (hub): the `?` is dropped |
//! | telemetry with no bag (`.../messages/events/` or `.../messages/events`) | **lenient** (hub): an empty bag |
//! | telemetry bag with a trailing `/` (Node `sendOutputEvent`) | **lenient** (hub): one trailing `/` is dropped |
//! | `$.mid` sent with a literal `$` instead of `%24` (docs) | **lenient**: both decode to `$.mid` |
//! | C2D / module-input bag with a leading `?` (docs' `devicebound/?bag`) | **lenient** (device): the `?` is dropped; the hub itself builds the trace form `devicebound/{bag}` |
//! | C2D / module-input bag with a trailing `/` (C# strips it) | **lenient** (device): one trailing `/` is dropped |
//! | module input under `/endpoints/{name}/` (older Edge, C# test) | **lenient** (device) |
//! | no `/` before `?` (Node: `$iothub/methods/POST/Reboot?$rid=1`, `$iothub/twin/res/200?$rid=1`) | **lenient on the device side** (method request, twin response, desired patch, DPS response: unambiguous, since neither a method name nor a status can hold `?`); **strict on the hub side** (method response, twin GET/PATCH, DPS requests): no SDK publishes it, so accepting it locally would hide a firmware bug Azure may not forgive |
//! | `?rid=` without `$` (Python twin test only) | **strict**: nobody sends it; `rid` is an unknown pair, so the topic fails with [`TopicError::RequestIdMissing`] |
//! | a prefix before `$iothub` (`devices/my_device/$iothub/twin/...`, embedded C's substring match) | **strict**: [`TopicError::NoMatch`]; the service never sends it and it would let a C2D-looking topic be read as a twin topic |
//! | desired patch without `?$version=` (Node delivers it) | **strict**: [`TopicError::VersionMissing`]; the hub always sends it and the session orders patches by it |
//! | non-numeric status (`res/%24%24%24/`, `res/invalid+status/`, Python tests) | **strict**: [`TopicError::InvalidStatus`]; the spec says status is an integer |
//! | non-numeric `$version` (embedded C test `id_one`) | **strict**: [`TopicError::InvalidVersion`] |
//! | `retry-after` missing from a DPS response | `None` (Python), not `0` (embedded C) |
//! | C2D to another device id | parsed; [`parse_c2d`] returns the id and the caller compares (embedded C does not check it either) |
//! | SUBSCRIBE `devices/{d}/messages/#` (spec trace) and `devices/{d}/modules/{m}/#` | **lenient** (hub): C2D and module inputs respectively, besides the canonical filters |
//! | SUBSCRIBE [`C2D_WILDCARD_FILTER`] `devices/+/messages/devicebound/#` (azure-sdk-for-c's `AZ_IOT_HUB_CLIENT_C2D_SUBSCRIBE_TOPIC`, so the ESP-IDF/Arduino/FreeRTOS samples) | **lenient** (hub): a device's C2D; Azure accepts it and delivers only that device's messages |
//! | any other SUBSCRIBE filter, another identity's topics, other `+` wildcards | **strict** (hub): [`TopicError::NotAllowed`] |
//!
//! What this module does not do: enforce the 5-subscription limit, QoS rules or message sizes
//! (the hub's connection logic does), or interpret bodies.

use core::fmt;

use crate::encoding;
pub use crate::property_bag::{EncodedStr, PropertyBag, SystemProperties};

/// SUBSCRIBE filter for direct method requests.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";
/// SUBSCRIBE filter for twin GET / reported-PATCH responses.
pub const TWIN_RESPONSE_FILTER: &str = "$iothub/twin/res/#";
/// SUBSCRIBE filter for desired-property patches.
pub const TWIN_DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";
/// SUBSCRIBE filter for DPS responses.
pub const DPS_RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// The C2D filter azure-sdk-for-c (the Embedded C SDK) subscribes with: the device id level is a
/// `+`. Azure reads it as the connection's own C2D, never another device's.
pub const C2D_WILDCARD_FILTER: &str = "devices/+/messages/devicebound/#";

pub(crate) const METHOD_REQUEST_PREFIX: &str = "$iothub/methods/POST/";
const METHOD_RESPONSE_PREFIX: &str = "$iothub/methods/res/";
/// The twin GET and reported-PATCH topics up to their request id, each one literal.
const TWIN_GET_QUERY: &str = "$iothub/twin/GET/?$rid=";
const TWIN_REPORTED_QUERY: &str = "$iothub/twin/PATCH/properties/reported/?$rid=";
pub(crate) const TWIN_RESPONSE_PREFIX: &str = "$iothub/twin/res/";
const TWIN_DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
const DPS_REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/";
const DPS_QUERY_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
const DPS_RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// Why a topic was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicError {
    /// The topic is not of the kind this parser reads.
    NoMatch,
    /// (hub side) The topic or filter is not one this identity may use.
    NotAllowed,
    /// No `$rid`, or an empty one.
    RequestIdMissing,
    /// The `$rid` is not valid percent-encoded UTF-8.
    InvalidRequestId,
    /// The status segment is not a decimal integer from 0 to 65535.
    InvalidStatus,
    /// No `$version` where one is required.
    VersionMissing,
    /// The `$version` is not a decimal unsigned integer.
    InvalidVersion,
    /// The method name is empty or has a character the hub does not allow.
    InvalidMethodName,
    /// The module input name is empty or not valid percent-encoded UTF-8.
    InvalidInputName,
    /// No `operationId`, or an empty one.
    OperationIdMissing,
    /// The `operationId` is not valid percent-encoded UTF-8.
    InvalidOperationId,
    /// `retry-after` is not a decimal integer of seconds.
    InvalidRetryAfter,
    /// A query parameter is given twice.
    DuplicateParameter,
    /// A property-bag name or value is not valid percent-encoded UTF-8.
    InvalidPropertyBag,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoMatch => "topic does not match",
            Self::NotAllowed => "topic is not allowed for this device",
            Self::RequestIdMissing => "request id missing",
            Self::InvalidRequestId => "request id is not valid percent-encoded utf-8",
            Self::InvalidStatus => "status is not an integer from 0 to 65535",
            Self::VersionMissing => "version missing",
            Self::InvalidVersion => "version is not an unsigned integer",
            Self::InvalidMethodName => "method name is empty or has a forbidden character",
            Self::InvalidInputName => "input name is empty or not valid percent-encoded utf-8",
            Self::OperationIdMissing => "operation id missing",
            Self::InvalidOperationId => "operation id is not valid percent-encoded utf-8",
            Self::InvalidRetryAfter => "retry-after is not a whole number of seconds",
            Self::DuplicateParameter => "query parameter given twice",
            Self::InvalidPropertyBag => "property bag is not valid percent-encoded utf-8",
        })
    }
}

impl core::error::Error for TopicError {}

/// Who is connected: a device, or a module of a device. Ids are compared verbatim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity<'a> {
    /// The device id.
    pub device_id: &'a str,
    /// The module id, for a module identity.
    pub module_id: Option<&'a str>,
}

impl<'a> Identity<'a> {
    /// A device identity.
    pub const fn device(device_id: &'a str) -> Self {
        Self {
            device_id,
            module_id: None,
        }
    }

    /// A module identity.
    pub const fn module(device_id: &'a str, module_id: &'a str) -> Self {
        Self {
            device_id,
            module_id: Some(module_id),
        }
    }
}

/// A direct-method name: printable US-ASCII without the separators `$()<>@,;:\"/[]?={}`
/// (spec section 4, "Methods"), and without `+` and `#`, which MQTT forbids in topic names.
/// Plug and Play commands use `component*command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodName<'a>(&'a str);

impl<'a> MethodName<'a> {
    /// Validates a method name.
    ///
    /// # Errors
    /// [`TopicError::InvalidMethodName`] when empty or with a forbidden character.
    pub fn new(name: &'a str) -> Result<Self, TopicError> {
        if !name.is_empty() && name.bytes().all(is_method_name_byte) {
            Ok(Self(name))
        } else {
            Err(TopicError::InvalidMethodName)
        }
    }

    /// The name.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// Splits a Plug and Play `component*command` name: `(Some("component"), "command")`, or
    /// `(None, name)` without a `*`.
    pub fn split_component(&self) -> (Option<&'a str>, &'a str) {
        match self.0.split_once('*') {
            Some((c, m)) => (Some(c), m),
            None => (None, self.0),
        }
    }
}

impl fmt::Display for MethodName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

const fn is_method_name_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e)
        && !matches!(
            b,
            b'$' | b'('
                | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
                | b'+'
                | b'#'
        )
}

mod c2d;
mod dispatch;
mod dps;
mod method;
mod subscribe;
mod telemetry;
mod twin;

pub use c2d::*;
pub use dispatch::*;
pub use dps::*;
pub use method::*;
pub use subscribe::*;
pub use telemetry::*;
pub use twin::*;

// ---------------------------------------------------------------------------------------------
// Shared pieces

fn write_rid_query<W: fmt::Write + ?Sized>(out: &mut W, rid: &str) -> fmt::Result {
    out.write_str("/?$rid=")?;
    encoding::encode(out, rid)
}

/// The text before and after the first `sep` (an ASCII byte, so both sides are whole
/// characters), `None` without one. What `split_once(char)` does, minus its generic searcher.
fn split_at_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// Splits `{segment}/?{query}`, or with `lenient_slash` also `{segment}?{query}`.
fn segment_and_query(rest: &str, lenient_slash: bool) -> Result<(&str, &str), TopicError> {
    let Some((seg, q)) = split_at_byte(rest, b'?') else {
        return Err(TopicError::RequestIdMissing);
    };
    match seg.strip_suffix('/') {
        Some(s) => Ok((s, q)),
        None if lenient_slash => Ok((seg, q)),
        None => Err(TopicError::NoMatch),
    }
}

/// The known query pairs of a response/request topic, raw, indexed like [`QUERY_KEYS`].
struct Query<'a>([Option<&'a str>; 4]);

/// The keys [`Query`] keeps: one comparison loop instead of a `match` with a comparison per key.
const QUERY_KEYS: [&str; 4] = ["$rid", "$version", "retry-after", "operationId"];
const RID: usize = 0;
const VERSION: usize = 1;
const RETRY_AFTER: usize = 2;
const OPERATION_ID: usize = 3;

impl<'a> Query<'a> {
    fn parse(q: &'a str) -> Result<Self, TopicError> {
        let mut out = Query([None; 4]);
        let mut rest = Some(q);
        while let Some(r) = rest {
            let seg = match split_at_byte(r, b'&') {
                Some((seg, next)) => {
                    rest = Some(next);
                    seg
                }
                None => {
                    rest = None;
                    r
                }
            };
            let (k, v) = split_at_byte(seg, b'=').unwrap_or((seg, ""));
            for (key, slot) in QUERY_KEYS.iter().zip(out.0.iter_mut()) {
                if *key == k {
                    if slot.replace(v).is_some() {
                        return Err(TopicError::DuplicateParameter);
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    fn rid(&self) -> Result<EncodedStr<'a>, TopicError> {
        let rid = self.0[RID]
            .filter(|r| !r.is_empty())
            .ok_or(TopicError::RequestIdMissing)?;
        let rid = EncodedStr::new(rid);
        rid.validate().map_err(|_| TopicError::InvalidRequestId)?;
        Ok(rid)
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces, at most 20 digits) up to `max`.
fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    if s.len() > 20 {
        return None;
    }
    encoding::parse_decimal(s.as_bytes(), max)
}

fn parse_status(s: &str) -> Result<u16, TopicError> {
    // Capped at u16::MAX, so the cast keeps the value.
    parse_decimal(s, u64::from(u16::MAX))
        .map(|v| v as u16)
        .ok_or(TopicError::InvalidStatus)
}

fn parse_version(s: &str) -> Result<u64, TopicError> {
    parse_decimal(s, u64::MAX).ok_or(TopicError::InvalidVersion)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn numeric_twin_request_ids_are_written_as_the_text_ones() {
        assert_eq!(
            s(|w| write_twin_request(w, false, 42)),
            "$iothub/twin/GET/?$rid=42"
        );
        assert_eq!(
            s(|w| write_twin_request(w, true, 7)),
            "$iothub/twin/PATCH/properties/reported/?$rid=7"
        );
        for rid in [0, 1, 42, u32::MAX] {
            let text = std::format!("{rid}");
            assert_eq!(
                s(|w| write_twin_request(w, false, rid)),
                s(|w| write_twin_get(w, &text))
            );
            assert_eq!(
                s(|w| write_twin_request(w, true, rid)),
                s(|w| write_twin_patch_reported(w, &text))
            );
        }
    }

    fn s<F: FnOnce(&mut String) -> fmt::Result>(f: F) -> String {
        let mut out = String::new();
        f(&mut out).unwrap();
        out
    }

    #[test]
    fn c2d_to_is_the_device_bound_address_with_a_capital_b() {
        assert_eq!(
            s(|o| write_c2d_to(o, "dev-1")),
            "/devices/dev-1/messages/deviceBound"
        );
    }

    #[test]
    fn hub_side_publish_rules() {
        let dev = Identity::device("d1");
        let m = Identity::module("d1", "m1");
        assert_eq!(
            parse_device_publish("devices/d1/messages/events/a=1", dev),
            Ok(DeviceTopic::Telemetry {
                bag: PropertyBag::new("a=1")
            })
        );
        for t in [
            "devices/d1/messages/events",
            "devices/d1/messages/events/",
            "devices/d1/messages/events/?",
        ] {
            assert_eq!(
                parse_device_publish(t, dev),
                Ok(DeviceTopic::Telemetry {
                    bag: PropertyBag::new("")
                }),
                "{t}"
            );
        }
        for t in [
            "devices/d2/messages/events/",
            "devices/d1/messages/eventsx",
            "devices/d1/modules/m1/messages/events/",
            "devices/d1/messages/devicebound/",
            "$iothub/twin/GET?$rid=1",
            "$iothub/methods/res/200?$rid=1",
            "$iothub/twin/PATCH/properties/desired/?$version=1",
            "$iothub/methods/POST/x/?$rid=1",
            "devices/d1/$iothub/twin/GET/?$rid=1",
        ] {
            assert_eq!(
                parse_device_publish(t, dev),
                Err(TopicError::NotAllowed),
                "{t}"
            );
        }
        assert!(matches!(
            parse_device_publish("devices/d1/modules/m1/messages/events/x=1/", m),
            Ok(DeviceTopic::Telemetry { bag }) if bag.as_raw() == "x=1"
        ));
        assert_eq!(
            parse_device_publish("devices/d1/messages/events/", m),
            Err(TopicError::NotAllowed)
        );
        assert_eq!(
            parse_device_publish("$iothub/twin/GET/", dev),
            Err(TopicError::RequestIdMissing)
        );
        assert_eq!(
            parse_device_publish("$iothub/twin/GET/?rid=1", dev),
            Err(TopicError::RequestIdMissing)
        );
        assert_eq!(
            parse_device_publish("$iothub/methods/res/abc/?$rid=1", dev),
            Err(TopicError::InvalidStatus)
        );
        assert_eq!(
            parse_device_publish("$iothub/methods/res/65536/?$rid=1", dev),
            Err(TopicError::InvalidStatus)
        );
        assert_eq!(
            parse_device_publish("$iothub/methods/res/+200/?$rid=1", dev),
            Err(TopicError::InvalidStatus)
        );
        assert_eq!(
            parse_device_publish("$iothub/twin/GET/?$rid=%zz", dev),
            Err(TopicError::InvalidRequestId)
        );
        assert_eq!(
            parse_device_publish("$iothub/twin/GET/?$rid=1&$rid=2", dev),
            Err(TopicError::DuplicateParameter)
        );
        assert_eq!(
            parse_device_publish("devices/d1/messages/events/a=%C3", dev),
            Err(TopicError::InvalidPropertyBag)
        );
    }

    #[test]
    fn subscription_rules() {
        let dev = Identity::device("d1");
        let m = Identity::module("d1", "m1");
        assert_eq!(
            classify_subscription("devices/d1/messages/devicebound/#", dev),
            Ok(SubscriptionKind::C2d)
        );
        assert_eq!(
            classify_subscription("devices/d1/messages/#", dev),
            Ok(SubscriptionKind::C2d)
        );
        assert_eq!(
            classify_subscription("devices/d1/modules/m1/#", m),
            Ok(SubscriptionKind::ModuleInputs)
        );
        // azure-sdk-for-c's filter: the device's own C2D (not a module's).
        assert_eq!(
            classify_subscription(C2D_WILDCARD_FILTER, dev),
            Ok(SubscriptionKind::C2d)
        );
        assert_eq!(
            classify_subscription(C2D_WILDCARD_FILTER, m),
            Err(TopicError::NotAllowed)
        );
        for f in [
            "devices/d2/messages/devicebound/#",
            "devices/+/messages/#",
            "devices/+/messages/devicebound/+",
            "devices/+/modules/m1/inputs/#",
            "devices/+/+/devicebound/#",
            "#",
            "$iothub/#",
            "$iothub/twin/#",
            "devices/d1/messages/events/",
        ] {
            assert_eq!(
                classify_subscription(f, dev),
                Err(TopicError::NotAllowed),
                "{f}"
            );
        }
        assert_eq!(
            classify_subscription("devices/d1/messages/devicebound/#", m),
            Err(TopicError::NotAllowed)
        );
        // A device whose id is a wildcard gets no other wildcard subscription.
        assert_eq!(
            classify_subscription("devices/+/messages/#", Identity::device("+")),
            Err(TopicError::NotAllowed)
        );
        assert_eq!(
            classify_subscription("devices/#/messages/devicebound/#", Identity::device("#")),
            Err(TopicError::NotAllowed)
        );
        for id in [dev, m] {
            for &k in SubscriptionKind::for_identity(id) {
                let mut f = String::new();
                write_filter(&mut f, k, id).unwrap();
                assert_eq!(classify_subscription(&f, id), Ok(k), "{f}");
            }
        }
        let mut f = String::new();
        assert_eq!(
            write_filter(&mut f, SubscriptionKind::C2d, m),
            Err(FilterError::Topic(TopicError::NotAllowed))
        );
    }

    #[test]
    fn builders() {
        let name = MethodName::new("comp*reboot").unwrap();
        assert_eq!(name.split_component(), (Some("comp"), "reboot"));
        assert_eq!(
            s(|o| write_method_request(o, name, "a b")),
            "$iothub/methods/POST/comp*reboot/?$rid=a%20b"
        );
        assert_eq!(
            s(|o| write_twin_response(o, 204, "4", Some(2))),
            "$iothub/twin/res/204/?$rid=4&$version=2"
        );
        assert_eq!(
            s(|o| write_desired_patch(o, 7)),
            "$iothub/twin/PATCH/properties/desired/?$version=7"
        );
        assert_eq!(
            s(|o| write_dps_response(o, 202, "1", Some(3))),
            "$dps/registrations/res/202/?$rid=1&retry-after=3"
        );
        for bad in ["", "a b", "a/b", "a?b", "$x", "a+b", "a#", "é"] {
            assert_eq!(
                MethodName::new(bad),
                Err(TopicError::InvalidMethodName),
                "{bad}"
            );
        }
    }

    #[test]
    fn device_side_rules() {
        assert_eq!(
            parse_desired_patch("$iothub/twin/PATCH/properties/desired/"),
            Err(TopicError::VersionMissing)
        );
        assert_eq!(
            parse_desired_patch("$iothub/twin/PATCH/properties/desired?$version=3"),
            Ok(3)
        );
        assert_eq!(
            parse_desired_patch("$iothub/twin/PATCH/properties/desired/?$version=x"),
            Err(TopicError::InvalidVersion)
        );
        assert_eq!(
            parse_twin_response("$iothub/twin/res/200/?$version=3&$rid=1"),
            Ok(TwinResponse {
                status: 200,
                rid: EncodedStr::new("1"),
                version: Some(3)
            })
        );
        assert_eq!(
            parse_hub_publish("devices/d/modules/m/inputs/in/a=1"),
            Ok(HubTopic::ModuleInput(ModuleInputTopic {
                device_id: "d",
                module_id: "m",
                input: EncodedStr::new("in"),
                bag: PropertyBag::new("a=1"),
            }))
        );
        assert_eq!(
            parse_hub_publish("devices/d/messages/devicebound/?a=1"),
            Ok(HubTopic::C2d(C2dTopic {
                device_id: "d",
                bag: PropertyBag::new("a=1"),
            }))
        );
        assert_eq!(
            parse_c2d("devices//messages/devicebound/"),
            Err(TopicError::NoMatch)
        );
        assert_eq!(
            parse_dps_request("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1"),
            Err(TopicError::OperationIdMissing)
        );
        assert_eq!(
            parse_dps_response("$dps/registrations/res/202/?$rid=1&retry-after=x"),
            Err(TopicError::InvalidRetryAfter)
        );
    }
}
