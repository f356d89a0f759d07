//! Cloud-to-device queues from the service side: Azure's purge (`DELETE
//! /devices/{id}/commands`) and the emulator-only send (`POST /emulator/devices/{id}/c2d`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::store::{C2dMessage, q};

pub(super) async fn purge_c2d(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = id.clone();
    let now = hub.now_ms();
    let r = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, None)?.is_none() {
                return Ok(None);
            }
            q::c2d_purge(c, &d, now).map(Some)
        })
        .await?;
    match r {
        Some(n) => Ok(json_ok(
            StatusCode::OK,
            json!({"totalMessagesPurged": n, "deviceId": id}),
        )),
        None => Err(ApiError::device_not_found(&id)),
    }
}

fn opt_str(body: &Value, k: &str) -> Result<Option<String>, ApiError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("{k} must be a string"))),
    }
}

fn prop_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Emulator-only (not Azure): queue a C2D message for a device.
pub(super) async fn send_c2d(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    let payload = match (opt_str(&body, "body")?, opt_str(&body, "bodyBase64")?) {
        (Some(_), Some(_)) => return Err(ApiError::bad("give body or bodyBase64, not both")),
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| ApiError::bad("bodyBase64 is not base64"))?,
        (None, None) => Vec::new(),
    };
    let ack = opt_str(&body, "ack")?.unwrap_or_else(|| "none".into());
    if azsim_proto::property_bag::Ack::parse(&ack).is_err() {
        return Err(ApiError::bad(
            "ack must be none, positive, negative or full",
        ));
    }
    let mut properties = Vec::new();
    match body.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !prop_name_ok(k) || azsim_proto::property_bag::is_reserved_name(k) {
                    return Err(ApiError::bad(format!("properties: invalid name '{k}'")));
                }
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        return Err(ApiError::bad(format!("properties.{k}: must be a string")));
                    }
                    other => other.to_string(),
                };
                properties.push((k.clone(), v));
            }
        }
        Some(_) => return Err(ApiError::bad("properties must be an object of strings")),
    }
    let ttl = match body.get("ttlSeconds") {
        None | Some(Value::Null) => hub.cfg.limits.c2d_default_ttl.as_millis() as i64,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=172_800).contains(&n) => (n * 1000) as i64,
            _ => {
                return Err(ApiError::bad(
                    "ttlSeconds must be an integer from 1 to 172800",
                ));
            }
        },
    };
    let message_id =
        opt_str(&body, "messageId")?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if message_id.is_empty() || message_id.len() > 128 {
        return Err(ApiError::bad("messageId must be 1 to 128 characters"));
    }
    let size = payload.len()
        + properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > hub.cfg.limits.c2d_max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            413001,
            "MessageTooLarge",
            format!("message exceeds {} bytes", hub.cfg.limits.c2d_max_bytes),
        ));
    }
    super::fault::fits(&hub, size)?;
    let now = hub.now_ms();
    let msg = C2dMessage {
        seq: 0,
        device_id: id.clone(),
        message_id: message_id.clone(),
        correlation_id: opt_str(&body, "correlationId")?,
        content_type: opt_str(&body, "contentType")?,
        content_encoding: opt_str(&body, "contentEncoding")?,
        user_id: None,
        ack,
        properties,
        body: payload,
        enqueued_ms: now,
        expiry_ms: now + ttl,
        delivery_count: 0,
    };
    let cap = hub.cfg.limits.c2d_queue_cap;
    let d = id.clone();
    let r = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, None)?.is_none() {
                return Ok(Err(ApiError::device_not_found(&d)));
            }
            // Expired messages no longer count against the cap.
            q::c2d_expire_due(c, Some(&d), now)?;
            Ok(Ok(q::c2d_enqueue(c, &msg, cap)?))
        })
        .await?;
    match r? {
        Some(depth) => {
            crate::quota::record(&hub, crate::quota::Billed::C2d, size);
            hub.wake_c2d(&id);
            Ok(json_ok(
                StatusCode::ACCEPTED,
                json!({"messageId": message_id, "deviceId": id, "queueDepth": depth}),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403004,
            "DeviceMaximumQueueDepthExceeded",
            format!("Device {id} already has {cap} messages pending"),
        )),
    }
}
