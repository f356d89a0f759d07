//! `POST /emulator/devices/{id}/faults` (not Azure): inject a fault for a device from outside,
//! for scripts and CI (`azsim hub fault`). Body `{"kind": "drop" | "shutdown" | "expire-token"
//! | "auth-error" | "throttle" | "quota", "afterSeconds": n, "forSeconds": n}`; the answer says
//! when it starts and (for the windowed kinds) ends, as RFC 3339 times of the hub's clock.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::fault::{self, Fault};

/// The longest delay or duration accepted: a day.
const MAX_SECONDS: u64 = 86_400;

fn seconds(body: &Value, field: &str, default: u64) -> Result<u64, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| *n <= MAX_SECONDS).ok_or_else(|| {
            ApiError::bad(format!(
                "{field}: a whole number of seconds, 0 to {MAX_SECONDS}"
            ))
        }),
    }
}

pub(super) async fn inject_fault(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_json(&body)?;
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    let fault = Fault::parse(kind).ok_or_else(|| {
        ApiError::bad(format!(
            "kind '{kind}': one of drop, shutdown, expire-token, auth-error, throttle, quota"
        ))
    })?;
    let after = seconds(&body, "afterSeconds", 0)?;
    let lasting = seconds(&body, "forSeconds", 60)?;
    if crate::hub::load_identity(&hub, &id, None).await?.is_none() {
        return Err(ApiError::device_not_found(&id));
    }
    let (from, until) = fault::inject(
        &hub,
        &id,
        fault,
        Duration::from_secs(after),
        Duration::from_secs(lasting),
    );
    let time = |ms: u64| {
        crate::clock::rfc3339_ns(
            i64::try_from(ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        )
    };
    Ok(json_ok(
        StatusCode::OK,
        json!({"deviceId": id, "kind": fault.name(), "startsAt": time(from), "endsAt": time(until)}),
    ))
}

/// 403002 IoTHubQuotaExceeded: the day's message quota is used up (see `quota`).
pub(super) fn quota_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        403002,
        "IoTHubQuotaExceeded",
        "Total number of messages on IotHub exceeded the allocated quota",
    )
}

/// Charge a billable REST operation to the day's quota, or refuse it with 403002.
pub(super) fn charge(
    hub: &Shared,
    what: crate::quota::Billed,
    bytes: usize,
) -> Result<(), ApiError> {
    if crate::quota::charge(hub, what, bytes) {
        Ok(())
    } else {
        Err(quota_exceeded())
    }
}

/// Refuse with 403002 an operation of `bytes` the day's quota has no room for (charged with
/// `quota::record` once it has succeeded).
pub(super) fn fits(hub: &Shared, bytes: usize) -> Result<(), ApiError> {
    if crate::quota::would_fit(hub, bytes) {
        Ok(())
    } else {
        Err(quota_exceeded())
    }
}

/// `GET /emulator/quota` (not Azure): the day's message quota, used and by operation, under
/// the names of Azure's quota usage insight.
pub(super) async fn quota_usage(State(hub): State<Shared>) -> ApiResult {
    Ok(json_ok(
        StatusCode::OK,
        hub.faults
            .meter
            .report(hub.cfg.tier, hub.cfg.units, hub.clock().unix_ms()),
    ))
}
