//! C2D messages and module inputs: the topics the hub publishes them on. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

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
