//! Twin: GET and reported-PATCH requests, their responses, and desired-property patches. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

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
