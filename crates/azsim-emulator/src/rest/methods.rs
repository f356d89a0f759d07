//! Direct methods (`/twins/{id}/methods`, `/twins/{id}/modules/{mid}/methods`): the request
//! goes to the connected device and its answer back, within the connect and response timeouts
//! (on the hub's clock, see `Hub::invoke_method`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::hub::MethodError;

fn timeout_field(
    body: &Value,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        },
    }
}

async fn invoke(hub: &Shared, id: String, module: Option<String>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    let name = body
        .get("methodName")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("methodName is required"))?
        .to_string();
    let method = azsim_proto::topic::MethodName::new(&name)
        .map_err(|e| ApiError::bad(format!("methodName: {e}")))?;
    let response_timeout = timeout_field(&body, "responseTimeoutInSeconds", 30, 5, 300)?;
    let connect_timeout = timeout_field(&body, "connectTimeoutInSeconds", 0, 0, 300)?;
    let payload = body.get("payload").cloned().unwrap_or(Value::Null);
    if serde_json::to_vec(&payload).map(|v| v.len()).unwrap_or(0) > 128 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            413001,
            "MessageTooLarge",
            "method payload exceeds 128 KB",
        ));
    }
    if crate::hub::load_identity(hub, &id, module.as_deref())
        .await?
        .is_none()
    {
        return Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        });
    }
    let billed = if module.is_some() {
        crate::quota::Billed::ModuleMethod
    } else {
        crate::quota::Billed::Method
    };
    let request_bytes = serde_json::to_vec(&payload).map(|v| v.len()).unwrap_or(0);
    super::fault::charge(hub, billed, request_bytes)?;
    let r = hub
        .invoke_method(
            &id,
            module.as_deref(),
            method,
            &payload,
            Duration::from_secs(response_timeout),
            Duration::from_secs(connect_timeout),
        )
        .await;
    match &r {
        // The response is further messages; "not online" one.
        Ok((_, body)) => crate::quota::record(hub, billed, body.len()),
        Err(MethodError::NotOnline) => crate::quota::record(hub, billed, 0),
        Err(MethodError::Timeout) => {}
    }
    match r {
        Ok((status, body)) => {
            let payload = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            };
            Ok(json_ok(
                StatusCode::OK,
                json!({"status": status, "payload": payload}),
            ))
        }
        Err(MethodError::NotOnline) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            404103,
            "DeviceNotOnline",
            "Timed out waiting for device to connect.",
        )
        .with_timeout(connect_timeout)),
        Err(MethodError::Timeout) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            504101,
            "GatewayTimeout",
            "Timed out waiting for the response from device.",
        )
        .with_timeout(response_timeout)),
    }
}

pub(super) async fn invoke_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    invoke(&hub, id, None, body).await
}

pub(super) async fn invoke_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    invoke(&hub, id, Some(mid), body).await
}
