//! Direct methods over AMQP: the device attaches two links to
//! `/devices/{id}/methods/devicebound` (with `com.microsoft:channel-correlation-id` =
//! `methods:{uuid}`): on its receiver the hub sends each request, the method's name in the
//! application property `IoThub-methodname`, the payload as the body and the request id as a
//! UUID `correlation-id`; on its sender the device answers with the same `correlation-id` and
//! its status in `IoThub-status` (Node `amqp_device_method_client.ts`, C#
//! `AmqpIotMessageConverter`). The identity counts as subscribed to methods (the service's
//! invoke waits for that) while the request link is attached.
//!
//! The hub's request ids are hex numbers; on the wire each is the UUID of that number
//! (`00000000-0000-0000-0000-00000000002a` for `2a`), as the SDKs parse the correlation id
//! as a GUID.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use tokio::sync::mpsc;

use super::{DeviceConn, until_ended};
use crate::amqp::c2d::{body_bytes, id_text, value_text};
use crate::untrusted::Untrusted;

/// The application property naming the method of a request.
const METHOD_NAME: &str = "IoThub-methodname";
/// The application property holding the status of a response.
const STATUS: &str = "IoThub-status";

/// One method request for the device.
#[derive(Debug)]
pub(crate) struct Request {
    pub name: String,
    /// The hub's request id (see the module doc).
    pub rid: String,
    pub body: Vec<u8>,
}

/// The wire correlation id of a hub request id.
fn correlation_id(rid: &str) -> MessageId {
    match u128::from_str_radix(rid, 16) {
        Ok(n) => MessageId::Uuid(uuid::Uuid::from_u128(n).into_bytes().into()),
        Err(_) => MessageId::String(rid.to_string()),
    }
}

/// The hub request id a response's correlation id names (a UUID, as binary or text).
fn request_id(id: &MessageId) -> String {
    let text = id_text(id);
    match uuid::Uuid::parse_str(&text) {
        Ok(u) => format!("{:x}", u.as_u128()),
        Err(_) => text,
    }
}

/// Send method requests on the device's receiver link until it, the identity or the hub ends.
pub(super) async fn requests(dev: Arc<DeviceConn>, mut sender: Sender) {
    let hub = dev.hub.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    *dev.methods.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    dev.subs.methods.store(true, Ordering::Release);
    hub.presence_changed();
    let mut ended = dev.ended(super::Kind::MethodRequests);
    let mut shutdown = hub.shutdown.subscribe();
    let error = loop {
        tokio::select! {
            Some(r) = rx.recv() => {
                let r: Request = r;
                let mut app = ApplicationProperties::default();
                app.0.insert(METHOD_NAME.into(), SimpleValue::String(r.name));
                let message = Message::builder()
                    .properties(Properties {
                        correlation_id: Some(correlation_id(&r.rid)),
                        ..Properties::default()
                    })
                    .application_properties(app)
                    .data(Binary::from(r.body))
                    .build();
                // The device settles requests as it likes (Node auto-accepts); the reply is
                // what counts, so the outcome is not waited for.
                match sender.send_batchable(message).await {
                    Ok(fut) => drop(tokio::spawn(fut)),
                    Err(e) => {
                        tracing::debug!(client_id = %dev.cid, error = %e, "amqp: method request link ended");
                        break None;
                    }
                }
            }
            _ = sender.on_detach() => break None,
            e = until_ended(&mut ended, &mut shutdown) => break e,
        }
    };
    dev.subs.methods.store(false, Ordering::Release);
    *dev.methods.lock().unwrap_or_else(|p| p.into_inner()) = None;
    hub.presence_changed();
    let _ = match error {
        Some(e) => sender.close_with_error(e).await,
        None => sender.close().await,
    };
}

/// Take method responses on the device's sender link until it, the identity or the hub ends.
pub(super) async fn responses(dev: Arc<DeviceConn>, mut receiver: Receiver) {
    let hub = dev.hub.clone();
    let mut ended = dev.ended(super::Kind::MethodResponses);
    let mut shutdown = hub.shutdown.subscribe();
    let error = loop {
        let d = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            e = until_ended(&mut ended, &mut shutdown) => break e,
        };
        let Ok(d) = d else { break None };
        dev.activity.touch(hub.now_us());
        let msg = d.message();
        let rid = msg
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .map(request_id);
        let status = msg
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get(STATUS))
            .and_then(value_text)
            .and_then(|s| s.parse::<u16>().ok());
        let body = body_bytes(&msg.body).unwrap_or_default();
        match (rid, status) {
            (Some(rid), Some(status)) => {
                if !hub.method_reply(&dev.cid, &rid, status, Bytes::from(body)) {
                    tracing::info!(client_id = %dev.cid, rid = %Untrusted(&rid), "method response dropped: no pending request (late or unknown)");
                }
            }
            _ => {
                tracing::info!(client_id = %dev.cid, "amqp: method response without correlation-id or IoThub-status dropped");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_travel_as_uuids_and_come_back() {
        let id = correlation_id("2a");
        assert_eq!(id_text(&id), "00000000-0000-0000-0000-00000000002a");
        assert_eq!(request_id(&id), "2a");
        assert_eq!(
            request_id(&MessageId::String(
                "00000000-0000-0000-0000-00000000002a".into()
            )),
            "2a"
        );
        assert_eq!(request_id(&MessageId::String("x".into())), "x");
    }
}
