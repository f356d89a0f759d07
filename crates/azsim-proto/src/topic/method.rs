//! Direct methods: the request the hub publishes and the response a device publishes. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

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
