//! Telemetry over AMQP: each transfer on the device's `/messages/events` sender link is one
//! device-to-cloud message through the same ingest path as MQTT's (the event log, routing, the
//! Event Hubs-compatible endpoint), its AMQP properties becoming the system properties the
//! MQTT property bag carries: `message-id` (`$.mid`), `correlation-id` (`$.cid`), `user-id`
//! (`$.uid`), `content-type` (`$.ct`), `content-encoding` (`$.ce`), `absolute-expiry-time`
//! (`$.exp`), `creation-time` (`$.ctime`); the annotations `iothub-interface-id` (`$.ifid`) and
//! `dt-subject` (`$.sub`); the application properties as application properties.
//!
//! A message is settled `accepted` only once the transaction holding it has committed (the
//! PUBACK rule), `rejected` with IoT Hub's conditions otherwise: `amqp:link:message-size-exceeded`
//! over `HubLimits::d2c_max_bytes` (256 KiB), `com.microsoft:quota-exceeded` over the daily
//! quota, `com.microsoft:device-container-throttled` under injected throttling, and
//! `amqp:unauthorized-access` once the token has expired. With a tier, messages wait for their
//! turn at the hub's rate as MQTT's do.
//!
//! A fault-injection request (`AzIoTHub_FaultOperationType`, see `crate::fault`) is accepted at
//! once and not stored, and its fault starts after that. Over MQTT IoT Hub never acknowledges
//! it; over AMQP the SDK e2e suites expect the send to complete: azure-iot-sdk-java's
//! `sendErrorInjectionMessageAndWaitForResponse` expects `OK` and says the message "will not be
//! ack'd by service if sent over MQTT/MQTT_WS", C#'s `FaultInjection.cs` tolerates a timed-out
//! send only over MQTT. Left unsettled, the message is sent again by the SDK after each
//! reconnect and the fault fires again each time (azure-iot-device-amqp did so 5 to 7 times
//! per `KillAmqpConnection`).

use std::collections::VecDeque;
use std::sync::Arc;

use azsim_proto::property_bag::SystemProperties;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{Symbol, Value};

use super::{DeviceConn, until_ended};
use crate::amqp::ConnCtx;
use crate::amqp::c2d::{body_bytes, error, id_text, value_text};
use crate::fault::{Fault, InBand};
use crate::store::{Commits, EventBatch};
use crate::telemetry::D2cRecord;

/// IoT Hub's conditions for a refused message (the Node SDK's `amqp_common_errors` names them).
const QUOTA_EXCEEDED: &str = "com.microsoft:quota-exceeded";
const THROTTLED: &str = "com.microsoft:device-container-throttled";

/// What becomes of a received message.
enum Verdict {
    /// Stored (once committed): accepted then.
    Store(D2cRecord),
    /// Refused with this error.
    Reject(AmqpErr),
    /// A fault-injection request: accepted, not stored; the fault starts once the accept is on
    /// its way (see [`start_fault`]).
    Fault(InBand),
}

/// Receive telemetry on `receiver` until the link, the identity or the hub ends.
pub(super) async fn serve(ctx: Arc<ConnCtx>, dev: Arc<DeviceConn>, mut receiver: Receiver) {
    let hub = dev.hub.clone();
    let commits = Arc::new(Commits::default());
    let mut last_seq = 0u64;
    // Received and queued for the writer, settled once committed, in order.
    let mut held: VecDeque<(u64, Delivery<Body<Value>>)> = VecDeque::new();
    let mut ended = dev.ended(super::Kind::Telemetry);
    let mut shutdown = hub.shutdown.subscribe();
    let mut batch = EventBatch::default();
    let error = loop {
        tokio::select! {
            d = receiver.recv::<Body<Value>>() => {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(client_id = %dev.cid, error = %e, "amqp: telemetry link ended");
                        break None;
                    }
                };
                dev.activity.touch(hub.now_us());
                match verdict(&ctx, &dev, d.message()).await {
                    Verdict::Store(record) => {
                        last_seq += 1;
                        batch.push(record, Some((&commits, last_seq)));
                        if !hub.store.log_batch(&mut batch).await {
                            break Some(AmqpErr::new(
                                AmqpError::InternalError,
                                "the telemetry log is not running: message not stored".to_string(),
                                None,
                            ));
                        }
                        held.push_back((last_seq, d));
                    }
                    Verdict::Reject(e) => {
                        tracing::info!(client_id = %dev.cid, condition = ?e.condition, description = ?e.description, "amqp: telemetry rejected");
                        if receiver.reject(&d, e).await.is_err() {
                            break None;
                        }
                    }
                    Verdict::Fault(req) => {
                        // Settled before the fault starts: the disposition leaves ahead of the
                        // fault's frames, so the SDK does not send the request again.
                        if receiver.accept(&d).await.is_err() {
                            break None;
                        }
                        start_fault(&ctx, &dev, req);
                    }
                }
            }
            () = commits.changed(), if !held.is_empty() => {
                if commits.failed() {
                    // Not stored: unsettled, the device sends them again.
                    break Some(AmqpErr::new(
                        AmqpError::InternalError,
                        "telemetry could not be stored; its transfers are not settled".to_string(),
                        None,
                    ));
                }
                let done = commits.committed();
                let mut broken = false;
                while held.front().is_some_and(|(seq, _)| *seq <= done) {
                    if let Some((_, d)) = held.pop_front()
                        && receiver.accept(&d).await.is_err()
                    {
                        broken = true;
                        break;
                    }
                }
                if broken {
                    break None;
                }
            }
            e = until_ended(&mut ended, &mut shutdown) => {
                if e.is_none() && !held.is_empty() {
                    // The hub is stopping: the writer commits what was queued, and settling
                    // it spares the device a redelivery after the restart.
                    hub.store.flush().await;
                    let done = commits.committed();
                    while let Some((seq, d)) = held.pop_front() {
                        if seq <= done {
                            let _ = receiver.accept(&d).await;
                        }
                    }
                }
                break e;
            }
        }
    };
    let _ = match error {
        Some(e) => receiver.close_with_error(e).await,
        None => receiver.close().await,
    };
}

/// Checks one message as MQTT's ingest does and builds its record.
async fn verdict(ctx: &ConnCtx, dev: &DeviceConn, msg: &Message<Body<Value>>) -> Verdict {
    let hub = &dev.hub;
    let path = super::identity_path(&dev.device, dev.module.as_deref());
    if ctx.claims.identity_expiry(&path, ctx.now_s()).is_none() {
        return Verdict::Reject(error(
            AmqpError::UnauthorizedAccess,
            "401003 IoTHubUnauthorized: sas token expired; put-token on $cbs again".into(),
        ));
    }
    let body = match body_bytes(&msg.body) {
        Ok(b) => b,
        Err(e) => return Verdict::Reject(e),
    };
    let properties = bag(msg);
    let size = body.len() + properties.len();
    let max = hub.cfg.limits.d2c_max_bytes;
    if size > max {
        return Verdict::Reject(error(
            LinkError::MessageSizeExceeded,
            format!("message of {size} bytes exceeds {max} bytes"),
        ));
    }
    if let Some(req) = crate::fault::requested(&properties)
        && (req.fault.is_some() || super::faults::target(&req.operation).is_some())
    {
        return Verdict::Fault(req);
    }
    if hub.cfg.tier.is_some()
        && let Err(reason) = Box::pin(crate::throttle::wait_turn(
            hub,
            crate::throttle::Shaped::D2c,
        ))
        .await
    {
        return Verdict::Reject(error(custom(THROTTLED), reason.to_string()));
    }
    let now = hub.clock().unix_ms();
    if hub.faults.active(&dev.device, Fault::Quota, now)
        || !hub
            .faults
            .charge_message(hub.cfg.tier, hub.cfg.units, size, now)
    {
        return Verdict::Reject(error(
            custom(QUOTA_EXCEEDED),
            "403002 IoTHubQuotaExceeded: the hub's daily message quota is used up".into(),
        ));
    }
    if hub.faults.active(&dev.device, Fault::Throttle, now) {
        return Verdict::Reject(error(
            custom(THROTTLED),
            "429001 ThrottlingException".into(),
        ));
    }
    Verdict::Store(D2cRecord {
        origin: dev.origin.clone(),
        enqueued_ns: hub.clock().unix_ns(),
        properties,
        body,
        source: crate::routing::Source::Telemetry,
    })
}

/// Start the fault a (just accepted) telemetry message asked for.
fn start_fault(ctx: &ConnCtx, dev: &DeviceConn, req: InBand) {
    if let Some(f) = req.fault {
        tracing::info!(client_id = %dev.cid, "fault requested in telemetry (amqp)");
        crate::fault::inject(&dev.hub, &dev.device, f, req.delay, req.duration);
    } else if let Some(target) = super::faults::target(&req.operation) {
        tracing::info!(client_id = %dev.cid, operation = %req.operation, "amqp fault requested in telemetry");
        super::faults::schedule(ctx, &dev.cid, target, &req.operation, req.delay);
    }
}

fn custom(condition: &str) -> ErrorCondition {
    ErrorCondition::Custom(Symbol::from(condition))
}

/// The message's properties as the raw (percent-encoded) property bag the hub stores, system
/// properties first (see the module doc).
fn bag(msg: &Message<Body<Value>>) -> String {
    let props = msg.properties.clone().unwrap_or_default();
    let message_id = props.message_id.as_ref().map(id_text);
    let correlation_id = props.correlation_id.as_ref().map(id_text);
    let user_id = props
        .user_id
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let expiry = props
        .absolute_expiry_time
        .map(|t| crate::clock::azure_time_ms(t.milliseconds()));
    let creation = props
        .creation_time
        .map(|t| crate::clock::azure_time_ms(t.milliseconds()));
    let annotation = |name: &str| {
        let v = msg
            .message_annotations
            .as_ref()?
            .0
            .iter()
            .find_map(|(k, v)| {
                let key = match k {
                    fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s) => s.as_str(),
                    _ => return None,
                };
                (key == name).then_some(v)
            })?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Symbol(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    };
    let interface_id = annotation("iothub-interface-id");
    let component = annotation("dt-subject");
    let sys = SystemProperties {
        message_id: message_id.as_deref(),
        correlation_id: correlation_id.as_deref(),
        user_id: user_id.as_deref(),
        content_type: props.content_type.as_ref().map(|s| s.as_str()),
        content_encoding: props.content_encoding.as_ref().map(|s| s.as_str()),
        creation_time: creation.as_deref(),
        expiry: expiry.as_deref(),
        interface_id: interface_id.as_deref(),
        component: component.as_deref(),
        ..SystemProperties::default()
    };
    let app: Vec<(String, String)> = msg
        .application_properties
        .as_ref()
        .map(|a| {
            a.0.iter()
                .filter_map(|(k, v)| Some((k.clone(), value_text(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::new();
    let _ = azsim_proto::property_bag::write_d2c_bag(
        &mut out,
        &sys,
        app.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    out
}
