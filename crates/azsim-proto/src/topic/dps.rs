//! DPS: the registration and status requests and their responses. Part of [`crate::topic`]; see its docs for the encoding and the strict or
//! lenient decisions.

use super::*;

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
