//! Device telemetry over HTTPS: `POST /devices/{id}/messages/events` (the Node SDK's `Http`
//! transport `sendEvent`/`sendEventBatch`, the C SDK's HTTP transport, the Java `HTTPS`
//! transport). The caller is authenticated before the handler runs, as the device-side C2D
//! calls are (a device SAS token for `{id}`, its X.509 client certificate, or a policy with
//! DeviceConnect).
//!
//! A single message is the request body as sent; its system properties come from the headers
//! `iothub-messageid`, `iothub-correlationid`, `iothub-userid`, `iothub-contenttype`,
//! `iothub-contentencoding`, `iothub-creationtimeutc`, `iothub-expiry`, `iothub-interface-id`
//! and `iothub-app-{name}` headers become application properties. A batch is
//! `Content-Type: application/vnd.microsoft.iothub.json` with a JSON array of
//! `{"body": base64, "base64Encoded": true, "properties": {"iothub-app-k": "v", ...}}` (the
//! Node SDK leaves `base64Encoded` out and base64-encodes the body all the same).
//!
//! Every message goes through the ingest path MQTT's do (the event log, routing, the Event
//! Hubs-compatible endpoint) and the answer is 204 only once the transaction holding it has
//! committed (the PUBACK rule). Over `HubLimits::d2c_max_bytes` (256 KiB, a batch in total)
//! is 413 `MessageTooLarge` (413001); over the daily quota 403 `IoTHubQuotaExceeded`
//! (403002); the tier's or an injected throttle 429 `ThrottlingException` (429001).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use azsim_proto::property_bag::SystemProperties;
use base64::Engine as _;
use serde_json::Value;

use super::ApiError;
use crate::fault::Fault;
use crate::hub::Hub;
use crate::store::{Commits, EventBatch};
use crate::telemetry::{AuthMethod, D2cRecord, Origin};

/// The batch content type (the Node and C SDKs' `sendEventBatch`).
const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";
const APP_PREFIX: &str = "iothub-app-";

/// Whether `path` is a device's telemetry call, `/devices/{id}/messages/events`.
pub(super) fn is_events_path(path: &str) -> bool {
    path.strip_prefix("/devices/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(id, tail)| !id.is_empty() && tail == "messages/events")
}

/// The system properties of one message, by their HTTP names, and its application properties.
#[derive(Debug, Default)]
struct Props {
    message_id: Option<String>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    creation_time: Option<String>,
    expiry: Option<String>,
    interface_id: Option<String>,
    app: Vec<(String, String)>,
}

impl Props {
    /// Takes `name: value` (a header or a batch entry's property); false when the name is not
    /// one a message carries.
    fn take(&mut self, name: &str, value: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if let Some(app) = lower.strip_prefix(APP_PREFIX) {
            if !app.is_empty() {
                // The name as sent (headers arrive lower-cased; batch keys keep their case).
                self.app
                    .push((name[APP_PREFIX.len()..].to_string(), value.to_string()));
            }
            return true;
        }
        let slot = match lower.as_str() {
            "iothub-messageid" => &mut self.message_id,
            "iothub-correlationid" => &mut self.correlation_id,
            "iothub-userid" => &mut self.user_id,
            "iothub-contenttype" => &mut self.content_type,
            "iothub-contentencoding" => &mut self.content_encoding,
            "iothub-creationtimeutc" => &mut self.creation_time,
            "iothub-expiry" => &mut self.expiry,
            "iothub-interface-id" => &mut self.interface_id,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }

    /// The raw (percent-encoded) property bag the hub stores.
    fn bag(&self) -> String {
        let sys = SystemProperties {
            message_id: self.message_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            user_id: self.user_id.as_deref(),
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            creation_time: self.creation_time.as_deref(),
            expiry: self.expiry.as_deref(),
            interface_id: self.interface_id.as_deref(),
            ..SystemProperties::default()
        };
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = azsim_proto::property_bag::write_d2c_bag(
            &mut out,
            &sys,
            self.app.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        out
    }
}

/// One message of the request: its raw property bag and body.
struct Message {
    bag: String,
    body: Vec<u8>,
}

fn single(headers: &HeaderMap, body: Bytes) -> Result<Message, ApiError> {
    let mut props = Props::default();
    for (name, value) in headers {
        let name = name.as_str();
        if !name.starts_with("iothub-") {
            continue;
        }
        let Ok(value) = value.to_str() else {
            return Err(ApiError::bad(format!("header {name} is not ASCII text")));
        };
        props.take(name, value);
    }
    Ok(Message {
        bag: props.bag(),
        body: body.to_vec(),
    })
}

fn batch(body: &[u8]) -> Result<Vec<Message>, ApiError> {
    let entries: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the batch is not a JSON array: {e}")))?;
    if entries.is_empty() {
        return Err(ApiError::bad("the batch holds no message"));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let text = e["body"]
                .as_str()
                .ok_or_else(|| ApiError::bad(format!("message {i}: body must be a string")))?;
            let body = if e["base64Encoded"].as_bool().unwrap_or(true) {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| ApiError::bad(format!("message {i}: body is not base64")))?
            } else {
                text.as_bytes().to_vec()
            };
            let mut props = Props::default();
            match &e["properties"] {
                Value::Null => {}
                Value::Object(m) => {
                    for (k, v) in m {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(_) | Value::Bool(_) => v.to_string(),
                            _ => {
                                return Err(ApiError::bad(format!(
                                    "message {i}: property {k} must be a string"
                                )));
                            }
                        };
                        props.take(k, &v);
                    }
                }
                _ => {
                    return Err(ApiError::bad(format!(
                        "message {i}: properties must be an object"
                    )));
                }
            }
            Ok(Message {
                bag: props.bag(),
                body,
            })
        })
        .collect()
}

fn too_large(size: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        413001,
        "MessageTooLarge",
        format!("message of {size} bytes exceeds {max} bytes"),
    )
}

/// `POST /devices/{id}/messages/events`: 204 once every message is committed.
pub(crate) async fn send_handler(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    auth: Option<Extension<AuthMethod>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_batch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(BATCH_CONTENT_TYPE));
    let max = hub.cfg.limits.d2c_max_bytes;
    // A batch's JSON is larger than its messages; anything past four times the limit is over.
    if body.len() > max.saturating_mul(if is_batch { 4 } else { 1 }) + 1024 {
        return Err(too_large(body.len(), max));
    }
    let messages = if is_batch {
        batch(&body)?
    } else {
        vec![single(&headers, body)?]
    };
    let size: usize = messages.iter().map(|m| m.bag.len() + m.body.len()).sum();
    if size > max {
        return Err(too_large(size, max));
    }
    let Some(ident) = crate::hub::load_identity(&hub, &id, None).await? else {
        return Err(ApiError::device_not_found(&id));
    };
    hub.store.activity().cell(&id).touch(hub.now_us());
    if hub.cfg.tier.is_some() {
        for _ in &messages {
            if let Err(reason) = Box::pin(crate::throttle::wait_turn(
                &hub,
                crate::throttle::Shaped::D2c,
            ))
            .await
            {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    429001,
                    "ThrottlingException",
                    reason,
                ));
            }
        }
    }
    let now = hub.clock().unix_ms();
    let quota_ok = !hub.faults.active(&id, Fault::Quota, now)
        && messages.iter().all(|m| {
            hub.faults
                .charge_message(hub.cfg.tier, hub.cfg.units, m.bag.len() + m.body.len(), now)
        });
    if !quota_ok {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403002,
            "IoTHubQuotaExceeded",
            "the hub's daily message quota is used up",
        ));
    }
    let origin = Arc::new(Origin {
        device_id: id.clone(),
        module_id: None,
        generation_id: ident.generation_id,
        // The auth layer (`rest/mod.rs`) says how the caller signed in.
        auth: auth.map(|Extension(a)| a).unwrap_or_default(),
    });
    let commits = Arc::new(Commits::default());
    let mut queued = EventBatch::default();
    let count = messages.len() as u64;
    for (n, m) in messages.into_iter().enumerate() {
        queued.push(
            D2cRecord {
                origin: origin.clone(),
                enqueued_ns: hub.clock().unix_ns(),
                properties: m.bag,
                body: m.body,
                source: crate::routing::Source::Telemetry,
            },
            Some((&commits, n as u64 + 1)),
        );
        if queued.is_full() && !hub.store.log_batch(&mut queued).await {
            return Err(not_stored());
        }
    }
    if !hub.store.log_batch(&mut queued).await {
        return Err(not_stored());
    }
    loop {
        if commits.failed() {
            return Err(not_stored());
        }
        if commits.committed() >= count {
            break;
        }
        commits.changed().await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_stored() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        500001,
        "ServerError",
        "the telemetry could not be stored",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_path() {
        assert!(is_events_path("/devices/d1/messages/events"));
        assert!(is_events_path("/devices/d%231/messages/events"));
        assert!(!is_events_path("/devices//messages/events"));
        assert!(!is_events_path("/devices/d1/messages/deviceBound"));
        assert!(!is_events_path("/devices/d1/messages/events/x"));
    }

    #[test]
    fn a_batch_in_the_node_and_c_shapes() {
        let body = br#"[{"body":"aGk=","properties":{"iothub-app-k":"v","iothub-messageid":"m1"}},
                        {"body":"plain","base64Encoded":false}]"#;
        let m = batch(body).expect("batch");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].body, b"hi");
        assert!(m[0].bag.contains("k=v"), "{}", m[0].bag);
        assert!(m[0].bag.contains("m1"), "{}", m[0].bag);
        assert_eq!(m[1].body, b"plain");
        assert!(batch(b"{}").is_err());
        assert!(batch(b"[]").is_err());
        assert!(batch(br#"[{"body":"!!"}]"#).is_err());
    }
}
