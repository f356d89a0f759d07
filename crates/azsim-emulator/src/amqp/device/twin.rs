//! The device twin over AMQP: the device attaches two links to `/devices/{id}/twin` (with
//! `com.microsoft:channel-correlation-id` = `twin:{uuid}`) and sends requests on its sender,
//! each with the message annotation `operation` and a `correlation-id` (Node
//! `amqp_twin_client.ts`, C# `AmqpIotConstants`):
//!
//! - `GET`: the twin's `{"desired":{..},"reported":{..}}` (status 200);
//! - `PATCH` with `resource` `/properties/reported`: the body patches the reported
//!   properties (status 204, annotation `version` the new reported version);
//! - `PUT` / `DELETE` with `resource` `/notifications/twin/properties/desired`: start / stop
//!   desired-property notifications (status 200).
//!
//! Responses go out on the device's receiver with the request's `correlation-id` and the
//! annotation `status` (and `version`); errors carry IoT Hub's JSON error body. A desired
//! notification is a message without `correlation-id` whose body is the patch with its
//! `$version` (MQTT's body; annotation `version` too). The rules (validation, the 32 KiB
//! section limit, versions, metadata, quota, the routed change event) are MQTT's, through
//! `twin.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageAnnotations, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use serde_json::json;
use tokio::sync::mpsc;

use super::{DeviceConn, until_ended};
use crate::amqp::c2d::body_bytes;
use crate::hub::twin_device_view;
use crate::quota::Billed;
use crate::store::q;
use crate::twin;

/// The resource of the reported properties.
const REPORTED: &str = "/properties/reported";
/// The resource of the desired-property notifications.
const DESIRED_NOTIFICATIONS: &str = "/notifications/twin/properties/desired";

/// A message for the device's twin receiver link.
#[derive(Debug)]
pub(crate) enum Out {
    /// The response to the request with this correlation id.
    Response {
        correlation_id: MessageId,
        status: u16,
        version: Option<u64>,
        body: Vec<u8>,
    },
    /// A desired-properties patch (MQTT's body: the patch with its `$version`).
    Desired { version: u64, body: Vec<u8> },
}

/// The twin messages for the device. Queued from the identity's first link on: the device
/// attaches its two twin links at once and sends its first request as soon as it may, so a
/// response can be ready before the receiver link is; it waits for it. The receiver link takes
/// the queue while it is attached.
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Outbox {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

fn annotations(pairs: &[(&str, Value)]) -> MessageAnnotations {
    let mut ann = MessageAnnotations::default();
    for (k, v) in pairs {
        ann.0.insert(OwnedKey::Symbol(Symbol::from(*k)), v.clone());
    }
    ann
}

fn to_message(out: Out) -> Message<fe2o3_amqp::types::messaging::Data> {
    match out {
        Out::Response {
            correlation_id,
            status,
            version,
            body,
        } => {
            let mut pairs = vec![("status", Value::Int(i32::from(status)))];
            if let Some(v) = version {
                pairs.push(("version", Value::Long(i64::try_from(v).unwrap_or(i64::MAX))));
            }
            Message::builder()
                .properties(Properties {
                    correlation_id: Some(correlation_id),
                    ..Properties::default()
                })
                .message_annotations(annotations(&pairs))
                .data(Binary::from(body))
                .build()
        }
        Out::Desired { version, body } => Message::builder()
            .message_annotations(annotations(&[(
                "version",
                Value::Long(i64::try_from(version).unwrap_or(i64::MAX)),
            )]))
            .data(Binary::from(body))
            .build(),
    }
}

/// Send twin responses and desired notifications on the device's receiver link until it, the
/// identity or the hub ends.
pub(super) async fn responses(dev: Arc<DeviceConn>, mut sender: Sender) {
    let hub = dev.hub.clone();
    let taken = dev.twin.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut rx) = taken else {
        let e = fe2o3_amqp::types::definitions::Error::new(
            fe2o3_amqp::types::definitions::AmqpError::ResourceLocked,
            "the device already has a twin receiver link".to_string(),
            None,
        );
        let _ = sender.close_with_error(e).await;
        return;
    };
    let mut ended = dev.ended(super::Kind::TwinResponses);
    let mut shutdown = hub.shutdown.subscribe();
    let error = loop {
        tokio::select! {
            Some(out) = rx.recv() => match sender.send_batchable(to_message(out)).await {
                Ok(fut) => drop(tokio::spawn(fut)),
                Err(e) => {
                    tracing::debug!(client_id = %dev.cid, error = %e, "amqp: twin response link ended");
                    break None;
                }
            },
            _ = sender.on_detach() => break None,
            e = until_ended(&mut ended, &mut shutdown) => break e,
        }
    };
    *dev.twin.rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    dev.subs.desired.store(false, Ordering::Release);
    hub.presence_changed();
    let _ = match error {
        Some(e) => sender.close_with_error(e).await,
        None => sender.close().await,
    };
}

/// Take twin requests on the device's sender link until it, the identity or the hub ends.
pub(super) async fn requests(dev: Arc<DeviceConn>, mut receiver: Receiver) {
    let hub = dev.hub.clone();
    let mut ended = dev.ended(super::Kind::TwinRequests);
    let mut shutdown = hub.shutdown.subscribe();
    let error = loop {
        let d = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            e = until_ended(&mut ended, &mut shutdown) => break e,
        };
        let Ok(d) = d else { break None };
        dev.activity.touch(hub.now_us());
        let msg = d.message();
        let correlation_id = msg
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let (status, version, body) = answer(&dev, msg).await;
        match correlation_id {
            Some(correlation_id) => respond(
                &dev,
                Out::Response {
                    correlation_id,
                    status,
                    version,
                    body,
                },
            ),
            None => {
                tracing::info!(client_id = %dev.cid, status, "amqp: twin request without correlation-id: no response")
            }
        }
        if receiver.accept(&d).await.is_err() {
            break None;
        }
    };
    let _ = match error {
        Some(e) => receiver.close_with_error(e).await,
        None => receiver.close().await,
    };
}

/// Queue `out` for the device's twin receiver link (see [`Outbox`]).
fn respond(dev: &DeviceConn, out: Out) {
    let _ = dev.twin.tx.send(out);
}

/// A desired-properties patch for the device, if it asked for notifications.
pub(super) fn desired(dev: &DeviceConn, body: Vec<u8>) {
    if !dev.subs.desired.load(Ordering::Acquire) {
        return;
    }
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("$version").and_then(serde_json::Value::as_u64))
        .unwrap_or_default();
    respond(dev, Out::Desired { version, body });
}

/// A message annotation as text.
fn annotation<'m>(msg: &'m Message<Body<Value>>, name: &str) -> Option<&'m str> {
    msg.message_annotations
        .as_ref()?
        .0
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (OwnedKey::Symbol(s), Value::String(t)) if s.as_str() == name => Some(t.as_str()),
            (OwnedKey::Symbol(s), Value::Symbol(t)) if s.as_str() == name => Some(t.as_str()),
            _ => None,
        })
}

/// IoT Hub's JSON error body.
fn error_body(dev: &DeviceConn, code: u32, message: &str) -> Vec<u8> {
    json!({
        "errorCode": code, "trackingId": uuid::Uuid::new_v4().simple().to_string(),
        "message": message, "timestampUtc": dev.hub.clock().now_rfc3339(),
    })
    .to_string()
    .into_bytes()
}

/// Carry out one request: its status, version annotation and body.
async fn answer(dev: &DeviceConn, msg: &Message<Body<Value>>) -> (u16, Option<u64>, Vec<u8>) {
    let hub = &dev.hub;
    let now = hub.clock().unix_ms();
    if hub
        .faults
        .active(&dev.device, crate::fault::Fault::Throttle, now)
    {
        return (
            429,
            None,
            error_body(dev, 429001, "Throttling: retry later"),
        );
    }
    let operation = annotation(msg, "operation").unwrap_or_default();
    let resource = annotation(msg, "resource").unwrap_or_default();
    match (operation, resource) {
        ("GET", _) => {
            let ident = crate::hub::load_identity(hub, &dev.device, dev.module.as_deref()).await;
            match ident {
                Ok(Some(i)) => {
                    let body = twin_device_view(&i).into_bytes();
                    if crate::quota::charge(hub, Billed::DeviceTwinRead, body.len()) {
                        (200, None, body)
                    } else {
                        (403, None, error_body(dev, 403002, crate::quota::EXCEEDED))
                    }
                }
                _ => (404, None, error_body(dev, 404001, "device not found")),
            }
        }
        ("PATCH", REPORTED) => {
            let body = body_bytes(&msg.body).unwrap_or_default();
            if !crate::quota::charge(hub, Billed::ReportedPatch, body.len()) {
                return (403, None, error_body(dev, 403002, crate::quota::EXCEEDED));
            }
            patch_reported(dev, &body).await
        }
        ("PUT" | "DELETE", DESIRED_NOTIFICATIONS) => {
            dev.subs
                .desired
                .store(operation == "PUT", Ordering::Release);
            hub.presence_changed();
            (200, None, Vec::new())
        }
        _ => (
            400,
            None,
            error_body(
                dev,
                400004,
                "unknown twin operation: GET, PATCH /properties/reported, PUT or DELETE /notifications/twin/properties/desired",
            ),
        ),
    }
}

/// Apply a reported-properties patch as MQTT's `PATCH /properties/reported` does.
async fn patch_reported(dev: &DeviceConn, body: &[u8]) -> (u16, Option<u64>, Vec<u8>) {
    let Some(patch) = twin::parse_reported_patch(body) else {
        return (
            400,
            None,
            error_body(dev, 400004, "reported patch must be a JSON object"),
        );
    };
    if let Err(e) = twin::validate_patch(&patch) {
        return (400, None, error_body(dev, 400004, &e.0));
    }
    let hub = &dev.hub;
    let (d, m) = (dev.device.clone(), dev.module.clone());
    let p2 = patch.clone();
    let now = hub.clock().now_rfc3339();
    let res = hub
        .store
        .call(move |c| {
            let Some(mut i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(Err((404, 404001, "device not found".to_string())));
            };
            let mut next = i.reported.clone();
            twin::merge(&mut next, &p2);
            if let Err(e) = twin::check_size(&next, twin::MAX_SECTION_BYTES, "Properties.Reported")
            {
                return Ok(Err((twin::SIZE_ERROR_STATUS, twin::SIZE_ERROR_CODE, e.0)));
            }
            i.reported = next;
            i.reported_version += 1;
            i.twin_version += 1;
            twin::touch_metadata(&mut i.reported_meta, &p2, &now, i.reported_version);
            i.reported_updated = now;
            q::put_identity(c, &i)?;
            Ok(Ok((i.reported_version, i.twin_version)))
        })
        .await;
    match res {
        Ok(Ok((v, twin_version))) => {
            let change = crate::routing::TwinChange {
                replace: false,
                version: twin_version,
                tags: None,
                properties: Some(("reported", &patch)),
            };
            crate::routing::twin_changed(hub, &dev.device, dev.module.as_deref(), &change);
            hub.emit(
                &dev.device,
                json!({"type":"twinReported","deviceId":dev.device,"moduleId":dev.module,"version":v,"patch":patch}),
            );
            (204, Some(v), Vec::new())
        }
        Ok(Err((status, code, msg))) => (status, None, error_body(dev, code, &msg)),
        Err(e) => (500, None, error_body(dev, 500001, &e.to_string())),
    }
}
