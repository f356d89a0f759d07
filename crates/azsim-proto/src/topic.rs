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

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// What a SUBSCRIBE filter asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// C2D messages (device identities).
    C2d,
    /// Module input messages (module identities).
    ModuleInputs,
    /// Direct method requests.
    Methods,
    /// Twin GET / reported-PATCH responses.
    TwinResponses,
    /// Desired-property patches.
    DesiredPatches,
}

impl SubscriptionKind {
    /// The subscriptions a device (C2D, methods, twin) or a module (inputs, methods, twin) makes.
    pub const fn for_identity(id: Identity<'_>) -> &'static [Self] {
        match id.module_id {
            None => &[
                Self::C2d,
                Self::Methods,
                Self::TwinResponses,
                Self::DesiredPatches,
            ],
            Some(_) => &[
                Self::ModuleInputs,
                Self::Methods,
                Self::TwinResponses,
                Self::DesiredPatches,
            ],
        }
    }
}

/// Writes the canonical filter of `kind` for `id`: `devices/{d}/messages/devicebound/#`,
/// `devices/{d}/modules/{m}/inputs/#` or one of the `$iothub` constants.
///
/// # Errors
/// [`FilterError::Topic`] ([`TopicError::NotAllowed`]) for C2D with a module identity or module
/// inputs with a device identity; [`FilterError::Write`] when the writer fails.
pub fn write_filter<W: fmt::Write + ?Sized>(
    out: &mut W,
    kind: SubscriptionKind,
    id: Identity<'_>,
) -> Result<(), FilterError> {
    match (kind, id.module_id) {
        // `devices/{d}/` or `devices/{d}/modules/{m}/`, then the rest of the filter.
        (SubscriptionKind::C2d, None) | (SubscriptionKind::ModuleInputs, Some(_)) => {
            write_identity_base(out, id)?;
            out.write_str(if id.module_id.is_none() {
                "messages/devicebound/#"
            } else {
                "inputs/#"
            })?;
        }
        (SubscriptionKind::C2d | SubscriptionKind::ModuleInputs, _) => {
            return Err(FilterError::Topic(TopicError::NotAllowed));
        }
        (SubscriptionKind::Methods, _) => out.write_str(METHODS_FILTER)?,
        (SubscriptionKind::TwinResponses, _) => out.write_str(TWIN_RESPONSE_FILTER)?,
        (SubscriptionKind::DesiredPatches, _) => out.write_str(TWIN_DESIRED_FILTER)?,
    }
    Ok(())
}

/// Why [`write_filter`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// The kind does not apply to this identity.
    Topic(TopicError),
    /// The writer failed (a full buffer).
    Write,
}

impl From<fmt::Error> for FilterError {
    fn from(_: fmt::Error) -> Self {
        Self::Write
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(e) => e.fmt(f),
            Self::Write => f.write_str("buffer too small for topic"),
        }
    }
}

impl core::error::Error for FilterError {}

/// Writes `devices/{device_id}/messages/devicebound/#`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_filter<W: fmt::Write + ?Sized>(out: &mut W, device_id: &str) -> fmt::Result {
    out.write_str("devices/")?;
    out.write_str(device_id)?;
    out.write_str("/messages/devicebound/#")
}

/// Writes `devices/{device_id}/modules/{module_id}/inputs/#` (the Python SDK's filter).
///
/// # Errors
/// Only the writer's own error.
pub fn write_module_inputs_filter<W: fmt::Write + ?Sized>(
    out: &mut W,
    device_id: &str,
    module_id: &str,
) -> fmt::Result {
    write_module_base(out, device_id, module_id)?;
    out.write_str("inputs/#")
}

/// (hub side) Classifies a SUBSCRIBE filter sent by `id`.
///
/// Accepted: the canonical filters, plus `devices/{d}/messages/#` and [`C2D_WILDCARD_FILTER`] for
/// a device's C2D and `devices/{d}/modules/{m}/#` for module inputs.
///
/// # Errors
/// [`TopicError::NotAllowed`] for anything else, including another identity's topics.
pub fn classify_subscription(
    filter: &str,
    id: Identity<'_>,
) -> Result<SubscriptionKind, TopicError> {
    match filter {
        METHODS_FILTER => return Ok(SubscriptionKind::Methods),
        TWIN_RESPONSE_FILTER => return Ok(SubscriptionKind::TwinResponses),
        TWIN_DESIRED_FILTER => return Ok(SubscriptionKind::DesiredPatches),
        // Only the connection's own C2D is ever delivered under it, so the `+` widens nothing.
        C2D_WILDCARD_FILTER if id.module_id.is_none() => return Ok(SubscriptionKind::C2d),
        _ => {}
    }
    // A `+` or a non-trailing `#` would widen the filter to other devices' topics whatever the
    // identity's own id contains.
    if filter.contains('+') || filter.find('#').is_some_and(|i| i + 1 != filter.len()) {
        return Err(TopicError::NotAllowed);
    }
    let rest = strip_identity(filter, id).ok_or(TopicError::NotAllowed)?;
    match (id.module_id, rest) {
        (None, "messages/devicebound/#" | "messages/#") => Ok(SubscriptionKind::C2d),
        (Some(_), "inputs/#" | "#") => Ok(SubscriptionKind::ModuleInputs),
        _ => Err(TopicError::NotAllowed),
    }
}

/// Strips `devices/{d}/` (device) or `devices/{d}/modules/{m}/` (module) from `topic`.
fn strip_identity<'t>(topic: &'t str, id: Identity<'_>) -> Option<&'t str> {
    let rest = topic
        .strip_prefix("devices/")?
        .strip_prefix(id.device_id)?
        .strip_prefix('/')?;
    match id.module_id {
        None => Some(rest),
        Some(m) => rest
            .strip_prefix("modules/")?
            .strip_prefix(m)?
            .strip_prefix('/'),
    }
}

fn write_module_base<W: fmt::Write + ?Sized>(
    out: &mut W,
    device_id: &str,
    module_id: &str,
) -> fmt::Result {
    write_identity_base(out, Identity::module(device_id, module_id))
}

/// Writes `devices/{d}/` (device) or `devices/{d}/modules/{m}/` (module).
fn write_identity_base<W: fmt::Write + ?Sized>(out: &mut W, id: Identity<'_>) -> fmt::Result {
    out.write_str("devices/")?;
    out.write_str(id.device_id)?;
    if let Some(m) = id.module_id {
        out.write_str("/modules/")?;
        out.write_str(m)?;
    }
    out.write_str("/")
}

// ---------------------------------------------------------------------------------------------
// Telemetry (D2C)

/// Writes `devices/{d}/messages/events/` or `devices/{d}/modules/{m}/messages/events/`, to be
/// followed by a bag (for example with [`crate::property_bag::BagWriter`]).
///
/// # Errors
/// Only the writer's own error.
pub fn write_telemetry_prefix<W: fmt::Write + ?Sized>(
    out: &mut W,
    id: Identity<'_>,
) -> fmt::Result {
    write_identity_base(out, id)?;
    out.write_str("messages/events/")
}

/// Writes a whole D2C topic: the prefix, the system properties in
/// [`SystemProperties::D2C_ORDER`], then `app` in the caller's order, all encoded. No `?` and no
/// trailing `/` (the trace form).
///
/// # Errors
/// Only the writer's own error.
pub fn write_telemetry_topic<'x, W, I>(
    out: &mut W,
    id: Identity<'_>,
    sys: &SystemProperties<'_>,
    app: I,
) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    I: IntoIterator<Item = (&'x str, &'x str)>,
{
    write_telemetry_prefix(out, id)?;
    crate::property_bag::write_d2c_bag(out, sys, app)
}

/// What a device published, as the hub reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTopic<'a> {
    /// Telemetry with its (validated) property bag.
    Telemetry {
        /// The bag, without a leading `?` or trailing `/`.
        bag: PropertyBag<'a>,
    },
    /// A direct-method response.
    MethodResponse {
        /// The device's status.
        status: u16,
        /// The request id being answered.
        rid: EncodedStr<'a>,
    },
    /// A twin GET.
    TwinGet {
        /// The request id.
        rid: EncodedStr<'a>,
    },
    /// A reported-properties PATCH.
    TwinPatchReported {
        /// The request id.
        rid: EncodedStr<'a>,
    },
}

/// (hub side) Parses a PUBLISH topic sent by `id`.
///
/// # Errors
/// [`TopicError::NotAllowed`] for a topic outside this identity's telemetry, method-response and
/// twin topics (including another device's); [`TopicError::RequestIdMissing`],
/// [`TopicError::InvalidRequestId`], [`TopicError::InvalidStatus`],
/// [`TopicError::DuplicateParameter`] or [`TopicError::InvalidPropertyBag`] for a known topic with
/// a bad part.
pub fn parse_device_publish<'a>(
    topic: &'a str,
    id: Identity<'_>,
) -> Result<DeviceTopic<'a>, TopicError> {
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        if let Some(rest) = rest.strip_prefix("methods/res/") {
            let (status, q) = segment_and_query(rest, false).map_err(not_allowed_on_no_match)?;
            let status = parse_status(status)?;
            let rid = Query::parse(q)?.rid()?;
            return Ok(DeviceTopic::MethodResponse { status, rid });
        }
        if let Some(q) = rest.strip_prefix("twin/GET/") {
            let rid = hub_side_query(q)?.rid()?;
            return Ok(DeviceTopic::TwinGet { rid });
        }
        if let Some(q) = rest.strip_prefix("twin/PATCH/properties/reported/") {
            let rid = hub_side_query(q)?.rid()?;
            return Ok(DeviceTopic::TwinPatchReported { rid });
        }
        return Err(TopicError::NotAllowed);
    }
    let rest = strip_identity(topic, id).ok_or(TopicError::NotAllowed)?;
    let bag = match rest.strip_prefix("messages/events") {
        Some("") => "",
        Some(b) => b.strip_prefix('/').ok_or(TopicError::NotAllowed)?,
        None => return Err(TopicError::NotAllowed),
    };
    let bag = PropertyBag::new(trim_bag(bag));
    bag.validate().map_err(|_| TopicError::InvalidPropertyBag)?;
    Ok(DeviceTopic::Telemetry { bag })
}

fn not_allowed_on_no_match(e: TopicError) -> TopicError {
    if e == TopicError::NoMatch {
        TopicError::NotAllowed
    } else {
        e
    }
}

/// The query of a hub-side topic whose fixed part ends in `/`: `?{query}` strictly.
fn hub_side_query(rest: &str) -> Result<Query<'_>, TopicError> {
    match rest.strip_prefix('?') {
        Some(q) => Query::parse(q),
        None if rest.is_empty() => Err(TopicError::RequestIdMissing),
        None => Err(TopicError::NotAllowed),
    }
}

/// Drops the docs' leading `?` and Node's/C#'s trailing `/` from a bag.
fn trim_bag(bag: &str) -> &str {
    let bag = bag.strip_prefix('?').unwrap_or(bag);
    bag.strip_suffix('/').unwrap_or(bag)
}

// ---------------------------------------------------------------------------------------------
// C2D and module inputs

/// Writes `devices/{device_id}/messages/devicebound/`, to be followed by a bag.
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_prefix<W: fmt::Write + ?Sized>(out: &mut W, device_id: &str) -> fmt::Result {
    out.write_str("devices/")?;
    out.write_str(device_id)?;
    out.write_str("/messages/devicebound/")
}

/// (hub side) Writes the `$.to` value the hub stamps on every C2D message:
/// `/devices/{device_id}/messages/deviceBound` (capital `B`, unlike the topic; spec section 4).
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_to<W: fmt::Write + ?Sized>(out: &mut W, device_id: &str) -> fmt::Result {
    out.write_str("/devices/")?;
    out.write_str(device_id)?;
    out.write_str("/messages/deviceBound")
}

/// (hub side) Writes a whole C2D topic in the trace form: the prefix, the system properties in
/// [`SystemProperties::C2D_ORDER`], then `app` in the caller's order, all encoded.
///
/// # Errors
/// Only the writer's own error.
pub fn write_c2d_topic<'x, W, I>(
    out: &mut W,
    device_id: &str,
    sys: &SystemProperties<'_>,
    app: I,
) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    I: IntoIterator<Item = (&'x str, &'x str)>,
{
    write_c2d_prefix(out, device_id)?;
    crate::property_bag::write_c2d_bag(out, sys, app)
}

/// A received C2D topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct C2dTopic<'a> {
    /// The device id in the topic, verbatim (compare it with your own if you care).
    pub device_id: &'a str,
    /// The bag, without a leading `?` or trailing `/`. Not validated: decode errors show up
    /// per property.
    pub bag: PropertyBag<'a>,
}

/// (device side) Parses `devices/{id}/messages/devicebound/{bag}` (also `devicebound/?{bag}`,
/// `devicebound` with nothing after it, and a bag with a trailing `/`).
///
/// # Errors
/// [`TopicError::NoMatch`] for anything else.
pub fn parse_c2d(topic: &str) -> Result<C2dTopic<'_>, TopicError> {
    c2d(topic.strip_prefix("devices/").ok_or(TopicError::NoMatch)?)
}

/// [`parse_c2d`] after its `devices/` (the session strips the prefix once, while dispatching).
pub(crate) fn c2d(rest: &str) -> Result<C2dTopic<'_>, TopicError> {
    const MARK: &str = "/messages/devicebound";
    // Scanning the `/`s (memchr) beats a substring search on these short topics; the device id
    // normally has no `/`, so the first one is the hit.
    let bytes = rest.as_bytes();
    let at = (0..bytes.len())
        .find(|&i| bytes[i] == b'/' && bytes[i..].starts_with(MARK.as_bytes()))
        .ok_or(TopicError::NoMatch)?;
    // `at` and the end of the mark are at ASCII bytes: character boundaries.
    let device_id = rest.get(..at).unwrap_or("");
    let after = rest.get(at + MARK.len()..).unwrap_or("");
    let bag = match after {
        "" => "",
        _ => after.strip_prefix('/').ok_or(TopicError::NoMatch)?,
    };
    if device_id.is_empty() {
        return Err(TopicError::NoMatch);
    }
    Ok(C2dTopic {
        device_id,
        bag: PropertyBag::new(trim_bag(bag)),
    })
}

/// (hub side) Writes `devices/{d}/modules/{m}/inputs/{input}/` plus the bag (C2D order), with the
/// input name encoded.
///
/// # Errors
/// Only the writer's own error.
pub fn write_module_input_topic<'x, W, I>(
    out: &mut W,
    device_id: &str,
    module_id: &str,
    input: &str,
    sys: &SystemProperties<'_>,
    app: I,
) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    I: IntoIterator<Item = (&'x str, &'x str)>,
{
    write_module_base(out, device_id, module_id)?;
    out.write_str("inputs/")?;
    encoding::encode(out, input)?;
    out.write_char('/')?;
    crate::property_bag::write_c2d_bag(out, sys, app)
}

/// A received module input topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleInputTopic<'a> {
    /// The device id, verbatim.
    pub device_id: &'a str,
    /// The module id, verbatim.
    pub module_id: &'a str,
    /// The input name, still encoded (the Python SDK decodes it: `fake%24input` is `fake$input`).
    pub input: EncodedStr<'a>,
    /// The bag, without a leading `?` or trailing `/`.
    pub bag: PropertyBag<'a>,
}

/// (device side) Parses `devices/{d}/modules/{m}/inputs/{input}/{bag}` (also the older
/// `/endpoints/{input}/`).
///
/// # Errors
/// [`TopicError::NoMatch`] for another shape, [`TopicError::InvalidInputName`] for an empty or
/// undecodable input name.
pub fn parse_module_input(topic: &str) -> Result<ModuleInputTopic<'_>, TopicError> {
    let rest = topic.strip_prefix("devices/").ok_or(TopicError::NoMatch)?;
    let (device_id, rest) = rest.split_once('/').ok_or(TopicError::NoMatch)?;
    let rest = rest.strip_prefix("modules/").ok_or(TopicError::NoMatch)?;
    let (module_id, rest) = rest.split_once('/').ok_or(TopicError::NoMatch)?;
    let rest = rest
        .strip_prefix("inputs/")
        .or_else(|| rest.strip_prefix("endpoints/"))
        .ok_or(TopicError::NoMatch)?;
    if device_id.is_empty() || module_id.is_empty() {
        return Err(TopicError::NoMatch);
    }
    let (input, bag) = rest.split_once('/').unwrap_or((rest, ""));
    let input = EncodedStr::new(input);
    if input.is_empty() || input.validate().is_err() {
        return Err(TopicError::InvalidInputName);
    }
    Ok(ModuleInputTopic {
        device_id,
        module_id,
        input,
        bag: PropertyBag::new(trim_bag(bag)),
    })
}

// ---------------------------------------------------------------------------------------------
// Methods

/// (hub side) Writes `$iothub/methods/POST/{name}/?$rid={rid}` (rid encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_method_request<W: fmt::Write + ?Sized>(
    out: &mut W,
    name: MethodName<'_>,
    rid: &str,
) -> fmt::Result {
    out.write_str(METHOD_REQUEST_PREFIX)?;
    out.write_str(name.as_str())?;
    write_rid_query(out, rid)
}

/// A received direct-method request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodRequest<'a> {
    /// The method name.
    pub name: MethodName<'a>,
    /// The request id to echo in the response.
    pub rid: EncodedStr<'a>,
}

/// (device side) Parses `$iothub/methods/POST/{name}/?$rid={rid}` (also Node's form without the
/// `/` before `?`).
///
/// # Errors
/// [`TopicError::NoMatch`] for another topic (the `#` filter included),
/// [`TopicError::InvalidMethodName`], [`TopicError::RequestIdMissing`],
/// [`TopicError::InvalidRequestId`] or [`TopicError::DuplicateParameter`].
pub fn parse_method_request(topic: &str) -> Result<MethodRequest<'_>, TopicError> {
    method_request(
        topic
            .strip_prefix(METHOD_REQUEST_PREFIX)
            .ok_or(TopicError::NoMatch)?,
    )
}

/// [`parse_method_request`] after its prefix.
pub(crate) fn method_request(rest: &str) -> Result<MethodRequest<'_>, TopicError> {
    let (name, q) = segment_and_query(rest, true)?;
    let name = MethodName::new(name)?;
    let rid = Query::parse(q)?.rid()?;
    Ok(MethodRequest { name, rid })
}

/// Writes `$iothub/methods/res/{status}/?$rid={rid}` (rid encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_method_response<W: fmt::Write + ?Sized>(
    out: &mut W,
    status: u16,
    rid: &str,
) -> fmt::Result {
    out.write_str(METHOD_RESPONSE_PREFIX)?;
    encoding::write_u64(&mut encoding::Dyn(out), status.into())?;
    write_rid_query(out, rid)
}

// ---------------------------------------------------------------------------------------------
// Twin

/// Writes `$iothub/twin/GET/?$rid={rid}` (rid encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_twin_get<W: fmt::Write + ?Sized>(out: &mut W, rid: &str) -> fmt::Result {
    out.write_str(TWIN_GET_QUERY)?;
    encoding::encode(out, rid)
}

/// Writes `$iothub/twin/PATCH/properties/reported/?$rid={rid}` (rid encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_twin_patch_reported<W: fmt::Write + ?Sized>(out: &mut W, rid: &str) -> fmt::Result {
    out.write_str(TWIN_REPORTED_QUERY)?;
    encoding::encode(out, rid)
}

/// [`write_twin_get`] (`reported` false) or [`write_twin_patch_reported`] for a numeric request
/// id, written as decimal digits (which percent-encoding leaves as they are).
pub(crate) fn write_twin_request(
    out: &mut dyn fmt::Write,
    reported: bool,
    rid: u32,
) -> fmt::Result {
    out.write_str(if reported {
        TWIN_REPORTED_QUERY
    } else {
        TWIN_GET_QUERY
    })?;
    encoding::write_u64(out, rid.into())
}

/// A received twin response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinResponse<'a> {
    /// 200 for GET, 204 for a reported PATCH, 4xx/5xx for errors.
    pub status: u16,
    /// The request id being answered.
    pub rid: EncodedStr<'a>,
    /// The new reported `$version` (reported PATCH responses).
    pub version: Option<u64>,
}

/// (hub side) Writes `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_twin_response<W: fmt::Write + ?Sized>(
    out: &mut W,
    status: u16,
    rid: &str,
    version: Option<u64>,
) -> fmt::Result {
    write!(out, "{TWIN_RESPONSE_PREFIX}{status}")?;
    write_rid_query(out, rid)?;
    if let Some(v) = version {
        write!(out, "&$version={v}")?;
    }
    Ok(())
}

/// (device side) Parses `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` (pairs in any
/// order; also Node's form without the `/` before `?`).
///
/// # Errors
/// [`TopicError::NoMatch`] for another topic, [`TopicError::RequestIdMissing`] (also for the
/// Python test form `?rid=`), [`TopicError::InvalidStatus`], [`TopicError::InvalidVersion`],
/// [`TopicError::InvalidRequestId`] or [`TopicError::DuplicateParameter`].
pub fn parse_twin_response(topic: &str) -> Result<TwinResponse<'_>, TopicError> {
    twin_response(
        topic
            .strip_prefix(TWIN_RESPONSE_PREFIX)
            .ok_or(TopicError::NoMatch)?,
    )
}

/// [`parse_twin_response`] after its prefix.
pub(crate) fn twin_response(rest: &str) -> Result<TwinResponse<'_>, TopicError> {
    let (status, q) = segment_and_query(rest, true)?;
    let status = parse_status(status)?;
    let q = Query::parse(q)?;
    let rid = q.rid()?;
    let version = q.0[VERSION].map(parse_version).transpose()?;
    Ok(TwinResponse {
        status,
        rid,
        version,
    })
}

/// (hub side) Writes `$iothub/twin/PATCH/properties/desired/?$version={version}`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_desired_patch<W: fmt::Write + ?Sized>(out: &mut W, version: u64) -> fmt::Result {
    write!(out, "{TWIN_DESIRED_PREFIX}?$version={version}")
}

/// (device side) Parses `$iothub/twin/PATCH/properties/desired/?$version={v}` and returns the
/// version.
///
/// # Errors
/// [`TopicError::NoMatch`] for another topic (one with a prefix before `$iothub` included),
/// [`TopicError::VersionMissing`], [`TopicError::InvalidVersion`] or
/// [`TopicError::DuplicateParameter`].
pub fn parse_desired_patch(topic: &str) -> Result<u64, TopicError> {
    // The prefix without its `/`, then the `/` if there is one: one comparison for both forms.
    let rest = topic
        .strip_prefix(&TWIN_DESIRED_PREFIX[..TWIN_DESIRED_PREFIX.len() - 1])
        .ok_or(TopicError::NoMatch)?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let q = match rest.strip_prefix('?') {
        Some(q) => q,
        None if rest.is_empty() => return Err(TopicError::VersionMissing),
        None => return Err(TopicError::NoMatch),
    };
    let v = Query::parse(q)?.0[VERSION].ok_or(TopicError::VersionMissing)?;
    parse_version(v)
}

// ---------------------------------------------------------------------------------------------
// DPS

/// Writes `$dps/registrations/PUT/iotdps-register/?$rid={rid}` (rid encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_dps_register<W: fmt::Write + ?Sized>(out: &mut W, rid: &str) -> fmt::Result {
    out.write_str(DPS_REGISTER_PREFIX)?;
    out.write_str("?$rid=")?;
    encoding::encode(out, rid)
}

/// Writes `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`
/// (both encoded).
///
/// # Errors
/// Only the writer's own error.
pub fn write_dps_query<W: fmt::Write + ?Sized>(
    out: &mut W,
    rid: &str,
    operation_id: &str,
) -> fmt::Result {
    out.write_str(DPS_QUERY_PREFIX)?;
    out.write_str("?$rid=")?;
    encoding::encode(out, rid)?;
    out.write_str("&operationId=")?;
    encoding::encode(out, operation_id)
}

/// A DPS request as the DPS side reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpsRequest<'a> {
    /// `iotdps-register`.
    Register {
        /// The request id.
        rid: EncodedStr<'a>,
    },
    /// `iotdps-get-operationstatus`.
    Query {
        /// The request id.
        rid: EncodedStr<'a>,
        /// The operation id from the 202 response.
        operation_id: EncodedStr<'a>,
    },
}

/// (DPS side) Parses a register or operation-status request (strict `/?`).
///
/// # Errors
/// [`TopicError::NoMatch`] for another topic, [`TopicError::RequestIdMissing`],
/// [`TopicError::InvalidRequestId`], [`TopicError::OperationIdMissing`],
/// [`TopicError::InvalidOperationId`] or [`TopicError::DuplicateParameter`].
pub fn parse_dps_request(topic: &str) -> Result<DpsRequest<'_>, TopicError> {
    if let Some(rest) = topic.strip_prefix(DPS_REGISTER_PREFIX) {
        let rid = hub_side_query(rest)
            .map_err(no_match_on_not_allowed)?
            .rid()?;
        return Ok(DpsRequest::Register { rid });
    }
    if let Some(rest) = topic.strip_prefix(DPS_QUERY_PREFIX) {
        let q = hub_side_query(rest).map_err(no_match_on_not_allowed)?;
        let rid = q.rid()?;
        let op = q.0[OPERATION_ID]
            .filter(|o| !o.is_empty())
            .ok_or(TopicError::OperationIdMissing)?;
        let op = EncodedStr::new(op);
        op.validate().map_err(|_| TopicError::InvalidOperationId)?;
        return Ok(DpsRequest::Query {
            rid,
            operation_id: op,
        });
    }
    Err(TopicError::NoMatch)
}

fn no_match_on_not_allowed(e: TopicError) -> TopicError {
    if e == TopicError::NotAllowed {
        TopicError::NoMatch
    } else {
        e
    }
}

/// A received DPS response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpsResponse<'a> {
    /// 200 assigned, 202 assigning (poll again), 4xx/5xx errors.
    pub status: u16,
    /// The request id being answered.
    pub rid: EncodedStr<'a>,
    /// Seconds to wait before polling, when given.
    pub retry_after: Option<u32>,
}

/// (DPS side) Writes `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`.
///
/// # Errors
/// Only the writer's own error.
pub fn write_dps_response<W: fmt::Write + ?Sized>(
    out: &mut W,
    status: u16,
    rid: &str,
    retry_after: Option<u32>,
) -> fmt::Result {
    write!(out, "{DPS_RESPONSE_PREFIX}{status}")?;
    write_rid_query(out, rid)?;
    if let Some(s) = retry_after {
        write!(out, "&retry-after={s}")?;
    }
    Ok(())
}

/// (device side) Parses `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]` (pairs in
/// any order, unknown pairs ignored; also without the `/` before `?`).
///
/// # Errors
/// [`TopicError::NoMatch`] for another topic, [`TopicError::InvalidStatus`],
/// [`TopicError::RequestIdMissing`], [`TopicError::InvalidRequestId`],
/// [`TopicError::InvalidRetryAfter`] or [`TopicError::DuplicateParameter`].
pub fn parse_dps_response(topic: &str) -> Result<DpsResponse<'_>, TopicError> {
    let rest = topic
        .strip_prefix(DPS_RESPONSE_PREFIX)
        .ok_or(TopicError::NoMatch)?;
    let (status, q) = segment_and_query(rest, true)?;
    let status = parse_status(status)?;
    let q = Query::parse(q)?;
    let rid = q.rid()?;
    let retry_after = q.0[RETRY_AFTER]
        .map(|s| parse_decimal(s, u64::from(u32::MAX)).ok_or(TopicError::InvalidRetryAfter))
        .transpose()?
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok(DpsResponse {
        status,
        rid,
        retry_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Device-side dispatch

/// Anything the hub publishes to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubTopic<'a> {
    /// A C2D message.
    C2d(C2dTopic<'a>),
    /// A module input message.
    ModuleInput(ModuleInputTopic<'a>),
    /// A direct-method request.
    MethodRequest(MethodRequest<'a>),
    /// A twin GET / reported-PATCH response.
    TwinResponse(TwinResponse<'a>),
    /// A desired-properties patch with its `$version`.
    DesiredPatch {
        /// The desired `$version` after this patch.
        version: u64,
    },
}

/// (device side) Parses any topic the hub publishes to a device.
///
/// # Errors
/// [`TopicError::NoMatch`] for an unknown topic, or the error of the matching parser.
pub fn parse_hub_publish(topic: &str) -> Result<HubTopic<'_>, TopicError> {
    if topic.starts_with(METHOD_REQUEST_PREFIX) {
        parse_method_request(topic).map(HubTopic::MethodRequest)
    } else if topic.starts_with(TWIN_RESPONSE_PREFIX) {
        parse_twin_response(topic).map(HubTopic::TwinResponse)
    } else if topic.starts_with(&TWIN_DESIRED_PREFIX[..TWIN_DESIRED_PREFIX.len() - 1]) {
        parse_desired_patch(topic).map(|version| HubTopic::DesiredPatch { version })
    } else if topic.starts_with("devices/") {
        match parse_module_input(topic) {
            Err(TopicError::NoMatch) => parse_c2d(topic).map(HubTopic::C2d),
            other => other.map(HubTopic::ModuleInput),
        }
    } else {
        Err(TopicError::NoMatch)
    }
}

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
