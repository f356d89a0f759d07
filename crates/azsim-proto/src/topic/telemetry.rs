//! Telemetry (D2C): the topic a device publishes its messages on, and the hub-side parser of every device publish. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

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
pub(super) fn hub_side_query(rest: &str) -> Result<Query<'_>, TopicError> {
    match rest.strip_prefix('?') {
        Some(q) => Query::parse(q),
        None if rest.is_empty() => Err(TopicError::RequestIdMissing),
        None => Err(TopicError::NotAllowed),
    }
}

/// Drops the docs' leading `?` and Node's/C#'s trailing `/` from a bag.
pub(super) fn trim_bag(bag: &str) -> &str {
    let bag = bag.strip_prefix('?').unwrap_or(bag);
    bag.strip_suffix('/').unwrap_or(bag)
}
