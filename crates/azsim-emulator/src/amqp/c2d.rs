//! Cloud-to-device messages from the service over AMQP: the client attaches a sender link to
//! `/messages/devicebound` and sends each message with `to` =
//! `/devices/{id}/messages/devicebound` (`ServiceClient.SendAsync`, the Python
//! `IoTHubRegistryManager.send_c2d_message`). Each one enters the same queue as the REST path
//! (`rest/c2d.rs`), with the same limits, and is settled as IoT Hub settles it:
//!
//! - accepted once it is committed to the device's queue (and the device is woken);
//! - rejected with `amqp:not-found` for a device that is not registered;
//! - rejected with `amqp:resource-limit-exceeded` ("Device Queue depth cannot exceed 50
//!   messages") when the device already has `HubLimits::c2d_queue_cap` messages pending: the
//!   condition the service SDKs map to `DeviceMaximumQueueDepthExceeded` (.NET
//!   `AmqpErrorMapper`, Node `amqp_service_errors`);
//! - rejected with `amqp:link:message-size-exceeded` for a body and properties larger than
//!   `c2d_max_bytes`, with `com.microsoft:argument-error` for a message without a usable `to`
//!   or with an `iothub-ack` that is not none/positive/negative/full, and with
//!   `amqp:unauthorized-access` once the connection's token has expired;
//! - a module `to` (`/devices/{id}/modules/{m}/messages/devicebound`) is checked against the
//!   registry and then rejected with `amqp:not-implemented`: IoT Hub delivers C2D messages to
//!   devices only (a module has no C2D topic or HTTPS call), so such a message would sit in a
//!   queue nobody reads.
//!
//! What is kept of the message: the body (data sections concatenated, or an `amqp-value`
//! string or binary), message id (a fresh UUID when absent), correlation id, user id, content
//! type and encoding, `absolute-expiry-time` (else the hub's default TTL), the application
//! properties as strings, and the application property `iothub-ack` (where the SDKs put it) as
//! the feedback request. Other `iothub-` and `$.` names are the hub's and are dropped.

use std::sync::Arc;

use azsim_proto::property_bag::{Ack, is_reserved_name};
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, Fields, LinkError};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};

use super::ConnCtx;
use crate::store::{C2dMessage, q};
use crate::untrusted::Untrusted;

/// The path of the node the service sends C2D messages to.
pub(crate) const PATH: &str = "messages/devicebound";

/// The condition IoT Hub uses for a malformed argument.
const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";

/// Receive C2D messages on `receiver` until the link or the hub ends.
pub(crate) async fn serve(ctx: Arc<ConnCtx>, mut receiver: Receiver) {
    let mut shutdown = ctx.hub.shutdown.subscribe();
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "amqp: c2d link ended");
                break;
            }
        };
        let settled = match enqueue(&ctx, delivery.message()).await {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => {
                tracing::info!(peer = %ctx.peer, condition = ?error.condition, description = ?error.description, "amqp: c2d message rejected");
                receiver.reject(&delivery, error).await
            }
        };
        if let Err(e) = settled {
            tracing::debug!(peer = %ctx.peer, error = %e, "amqp: c2d disposition not sent");
            break;
        }
    }
    let _ = receiver.close().await;
}

/// An AMQP error with a tracking id in its info, as IoT Hub's carry one.
pub(super) fn error(
    condition: impl Into<fe2o3_amqp::types::definitions::ErrorCondition>,
    text: String,
) -> AmqpErr {
    let mut info = Fields::default();
    info.insert(
        Symbol::from("com.microsoft:tracking-id"),
        Value::String(uuid::Uuid::new_v4().simple().to_string()),
    );
    AmqpErr::new(condition, text, info)
}

fn argument_error(text: impl Into<String>) -> AmqpErr {
    error(
        fe2o3_amqp::types::definitions::ErrorCondition::Custom(Symbol::from(ARGUMENT_ERROR)),
        text.into(),
    )
}

/// The device (and module) a `to` address names, ids percent-decoded.
fn parse_to(to: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = to.trim_start_matches('/').split('/').collect();
    let tail_ok = |t: &[&str]| {
        t.len() == 2
            && t[0].eq_ignore_ascii_case("messages")
            && t[1].eq_ignore_ascii_case("devicebound")
    };
    let decode = |s: &str| {
        let mut out = String::new();
        azsim_proto::encoding::decode_to(&mut out, s).ok()?;
        (!out.is_empty()).then_some(out)
    };
    match parts.as_slice() {
        [d, id, tail @ ..] if d.eq_ignore_ascii_case("devices") && tail_ok(tail) => {
            Some((decode(id)?, None))
        }
        [d, id, m, module, tail @ ..]
            if d.eq_ignore_ascii_case("devices")
                && m.eq_ignore_ascii_case("modules")
                && tail_ok(tail) =>
        {
            Some((decode(id)?, Some(decode(module)?)))
        }
        _ => None,
    }
}

/// A message id or correlation id as the hub keeps it: text.
pub(super) fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// An application property value as text; `None` for one that has none (null, described).
pub(super) fn value_text(v: &SimpleValue) -> Option<String> {
    Some(match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(f) => f.to_string(),
        SimpleValue::Double(f) => f.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        SimpleValue::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => return None,
    })
}

/// The body's bytes: data sections concatenated, or an `amqp-value` string or binary.
pub(super) fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, AmqpErr> {
    match body {
        Body::Data(batch) => Ok(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(AmqpValue(Value::String(s))) => Ok(s.clone().into_bytes()),
        Body::Value(AmqpValue(Value::Binary(b))) => Ok(b.to_vec()),
        Body::Value(AmqpValue(Value::Null)) | Body::Empty => Ok(Vec::new()),
        _ => Err(argument_error(
            "the body must be data sections, a string or binary",
        )),
    }
}

/// Checks the message and puts it in the device's queue.
async fn enqueue(ctx: &ConnCtx, msg: &Message<Body<Value>>) -> Result<(), AmqpErr> {
    let hub = &ctx.hub;
    if !ctx
        .claims
        .covers(PATH, crate::auth::Permission::ServiceConnect, ctx.now_s())
    {
        return Err(error(
            AmqpError::UnauthorizedAccess,
            "the connection's token has expired: put-token on $cbs again".into(),
        ));
    }
    let props = msg.properties.clone().unwrap_or_default();
    let to = props
        .to
        .as_deref()
        .ok_or_else(|| argument_error("the message has no 'to' address"))?;
    let (device, module) = parse_to(to).ok_or_else(|| {
        argument_error(format!(
            "'to' must be /devices/{{id}}/messages/devicebound, not '{}'",
            Untrusted(to)
        ))
    })?;
    // No `iothub-ack` from the service: none on the device's topic either (IoT Hub writes one
    // only when the service set it; azure-iothub (Node) sets none and its e2e suite checks that
    // every property the device gets whose name holds an 'a' is the sender's).
    let mut ack = String::new();
    let mut properties = Vec::new();
    if let Some(app) = &msg.application_properties {
        for (k, v) in app.0.iter() {
            if k == "iothub-ack" {
                let a = value_text(v).unwrap_or_default();
                if Ack::parse(&a).is_err() {
                    return Err(argument_error(
                        "iothub-ack must be none, positive, negative or full",
                    ));
                }
                ack = a;
            } else if !is_reserved_name(k)
                && let Some(text) = value_text(v)
            {
                properties.push((k.clone(), text));
            }
        }
    }
    let body = body_bytes(&msg.body)?;
    let limits = &hub.cfg.limits;
    let size = body.len()
        + properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > limits.c2d_max_bytes {
        return Err(error(
            LinkError::MessageSizeExceeded,
            format!("message exceeds {} bytes", limits.c2d_max_bytes),
        ));
    }
    if !crate::quota::would_fit(hub, size) {
        return Err(error(
            AmqpError::ResourceLimitExceeded,
            crate::quota::EXCEEDED.into(),
        ));
    }
    let now = hub.now_ms();
    let expiry_ms = match props.absolute_expiry_time {
        Some(t) => t.milliseconds(),
        None => now
            .saturating_add(i64::try_from(limits.c2d_default_ttl.as_millis()).unwrap_or(i64::MAX)),
    };
    let message_id = props
        .message_id
        .as_ref()
        .map(id_text)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let m = C2dMessage {
        seq: 0,
        device_id: device.clone(),
        message_id: message_id.clone(),
        correlation_id: props.correlation_id.as_ref().map(id_text),
        content_type: props.content_type.map(|s| s.0),
        content_encoding: props.content_encoding.map(|s| s.0),
        user_id: props
            .user_id
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        ack,
        properties,
        body,
        enqueued_ms: now,
        expiry_ms,
        delivery_count: 0,
    };
    let cap = limits.c2d_queue_cap;
    let (d, module2) = (device.clone(), module.clone());
    let queued = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, module2.as_deref())?.is_none() {
                return Ok(Err(Refusal::NotFound));
            }
            if module2.is_some() {
                return Ok(Err(Refusal::Module));
            }
            // Expired messages no longer count against the cap.
            q::c2d_expire_due(c, Some(&d), now)?;
            Ok(q::c2d_enqueue(c, &m, cap)?.ok_or(Refusal::QueueFull))
        })
        .await
        .map_err(|e| error(AmqpError::InternalError, e.to_string()))?;
    match queued {
        Ok(depth) => {
            crate::quota::record(hub, crate::quota::Billed::C2d, size);
            tracing::info!(device = %Untrusted(&device), message_id = %Untrusted(&message_id), depth, "c2d queued over amqp");
            hub.wake_c2d(&device);
            Ok(())
        }
        Err(Refusal::NotFound) => Err(error(
            AmqpError::NotFound,
            match &module {
                Some(m) => format!("Module {m} on device {device} not registered"),
                None => format!("Device {device} not registered"),
            },
        )),
        Err(Refusal::Module) => Err(error(
            AmqpError::NotImplemented,
            "cloud-to-device messages go to devices, not modules".into(),
        )),
        Err(Refusal::QueueFull) => Err(error(
            AmqpError::ResourceLimitExceeded,
            format!("Device Queue depth cannot exceed {cap} messages"),
        )),
    }
}

/// Why the store did not take a message.
enum Refusal {
    NotFound,
    Module,
    QueueFull,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_addresses_name_a_device_or_a_module_in_any_case_and_encoding() {
        assert_eq!(
            parse_to("/devices/d1/messages/devicebound"),
            Some(("d1".into(), None))
        );
        assert_eq!(
            parse_to("/devices/d%231/messages/deviceBound"),
            Some(("d#1".into(), None))
        );
        assert_eq!(
            parse_to("/devices/d1/modules/m%2F1/messages/devicebound"),
            Some(("d1".into(), Some("m/1".into())))
        );
        for bad in [
            "",
            "/devices//messages/devicebound",
            "/devices/d1/messages/events",
            "/devices/d1/messages/devicebound/x",
            "/twins/d1/messages/devicebound",
        ] {
            assert_eq!(parse_to(bad), None, "{bad}");
        }
    }
}
