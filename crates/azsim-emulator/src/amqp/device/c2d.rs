//! Cloud-to-device messages over AMQP: the device attaches a receiver link to
//! `/devices/{id}/messages/devicebound` and the hub sends it the device's C2D queue (the same
//! queue MQTT and HTTPS deliver from), each message with its system properties as AMQP
//! properties (`message-id`, `correlation-id`, `user-id`, `content-type`, `content-encoding`,
//! `to`, `absolute-expiry-time`), the sender's application properties (and `iothub-ack` when
//! the sender set one), and the times it was delivered before as the header's
//! `delivery-count`.
//!
//! The device's disposition is its acknowledgement, as the SDKs map them (Node
//! `ReceiverLink`: complete = accept, abandon = release, reject = reject):
//!
//! - `accepted` completes the message (`Success` feedback when asked for);
//! - `released` or `modified` abandons it: it is sent again at once, until it has been
//!   delivered `HubLimits::c2d_max_delivery_count` times, then dead-lettered
//!   (`DeliveryCountExceeded` feedback);
//! - `rejected` dead-letters it (`Rejected` feedback).
//!
//! A message stays locked to the link until it is settled or the link ends (then it is
//! delivered again), as an MQTT delivery stays in flight until its PUBACK: the hub has no lock
//! timeout for a connected device's deliveries (the HTTPS receive has one).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fe2o3_amqp::link::{SendError, Sender};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Header, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp};
use serde_json::json;
use tokio::sync::mpsc;

use super::{DeviceConn, until_ended};
use crate::amqp::ConnCtx;
use crate::store::{C2dMessage, q};
use crate::untrusted::Untrusted;

/// A delivery's end: the message's queue number and id, and how the device settled it.
type Settled = (i64, String, Result<Outcome, SendError>);

/// Send the device's C2D messages on `sender` until the link, the identity or the hub ends.
pub(super) async fn serve(_ctx: Arc<ConnCtx>, dev: Arc<DeviceConn>, mut sender: Sender) {
    let hub = dev.hub.clone();
    dev.subs.c2d.store(true, Ordering::Release);
    hub.presence_changed();
    let (tx, mut settled) = mpsc::unbounded_channel::<Settled>();
    let mut inflight: Vec<i64> = Vec::new();
    let mut ended = dev.ended(super::Kind::C2d);
    let mut shutdown = hub.shutdown.subscribe();
    let error = loop {
        if let Err(e) = deliver(&dev, &mut sender, &mut inflight, &tx).await {
            tracing::info!(client_id = %dev.cid, error = %e, "amqp: c2d delivery stopped");
            break None;
        }
        tokio::select! {
            () = dev.c2d_wake.notified() => {}
            Some((seq, message_id, outcome)) = settled.recv() => {
                inflight.retain(|s| *s != seq);
                match outcome {
                    Ok(o) => settle(&dev, seq, message_id, o).await,
                    Err(e) => {
                        tracing::debug!(client_id = %dev.cid, error = %e, "amqp: c2d link ended with a delivery unsettled");
                        break None;
                    }
                }
            }
            _ = sender.on_detach() => break None,
            e = until_ended(&mut ended, &mut shutdown) => break e,
        }
    };
    dev.subs.c2d.store(false, Ordering::Release);
    hub.presence_changed();
    let _ = match error {
        Some(e) => sender.close_with_error(e).await,
        None => sender.close().await,
    };
}

/// What the device's outcome does to the message (see the module doc).
async fn settle(dev: &DeviceConn, seq: i64, message_id: String, outcome: Outcome) {
    let hub = &dev.hub;
    let now = hub.now_ms();
    let (what, r) = match outcome {
        Outcome::Accepted(_) => (
            "completed",
            hub.store
                .call(move |c| q::c2d_complete(c, seq, now))
                .await
                .map(Some),
        ),
        Outcome::Rejected(_) => (
            "rejected",
            hub.store
                .call(move |c| q::c2d_dead_letter(c, seq, "Rejected", now))
                .await
                .map(|()| None),
        ),
        // Abandoned: live again, sent by the next delivery round.
        Outcome::Released(_) | Outcome::Modified(_) => ("abandoned", Ok(None)),
    };
    tracing::info!(client_id = %dev.cid, message_id = %Untrusted(&message_id), what, "amqp: c2d settled");
    match r {
        Ok(Some(true)) => hub.emit(
            &dev.device,
            json!({"type":"c2dCompleted","deviceId":dev.device,"messageId":message_id}),
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(client_id = %dev.cid, error = %e, "amqp: c2d settlement not stored")
        }
    }
}

/// Send every queued message not already out on this link; expired or over-delivered ones are
/// dead-lettered instead (MQTT's rule). Each delivery's outcome comes back on `tx`.
async fn deliver(
    dev: &DeviceConn,
    sender: &mut Sender,
    inflight: &mut Vec<i64>,
    tx: &mpsc::UnboundedSender<Settled>,
) -> Result<(), String> {
    let hub = &dev.hub;
    let device = dev.device.clone();
    let skip = inflight.clone();
    let max_dc = hub.cfg.limits.c2d_max_delivery_count;
    let now = hub.now_ms();
    let batch = hub
        .store
        .call(move |c| {
            let mut send = Vec::new();
            for m in q::c2d_pending(c, &device)? {
                if skip.contains(&m.seq) {
                    continue;
                }
                if m.expiry_ms <= now {
                    q::c2d_dead_letter(c, m.seq, "Expired", now)?;
                } else if m.delivery_count >= max_dc {
                    q::c2d_dead_letter(c, m.seq, "DeliveryCountExceeded", now)?;
                } else {
                    q::c2d_mark_delivered(c, m.seq)?;
                    send.push(m);
                }
            }
            Ok(send)
        })
        .await
        .map_err(|e| e.to_string())?;
    for m in batch {
        let (seq, message_id) = (m.seq, m.message_id.clone());
        let fut = sender
            .send_batchable(message(&m))
            .await
            .map_err(|e| e.to_string())?;
        inflight.push(seq);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((seq, message_id, fut.await));
        });
    }
    Ok(())
}

/// The AMQP message the device gets for `m`.
fn message(m: &C2dMessage) -> Message<fe2o3_amqp::types::messaging::Data> {
    let mut to = String::new();
    let _ = azsim_proto::topic::write_c2d_to(&mut to, &m.device_id);
    let props = Properties {
        message_id: Some(MessageId::String(m.message_id.clone())),
        correlation_id: m.correlation_id.clone().map(MessageId::String),
        user_id: m.user_id.clone().map(|u| Binary::from(u.into_bytes())),
        content_type: m.content_type.clone().map(Symbol::from),
        content_encoding: m.content_encoding.clone().map(Symbol::from),
        to: Some(to),
        absolute_expiry_time: Some(Timestamp::from_milliseconds(m.expiry_ms)),
        ..Properties::default()
    };
    let mut app = ApplicationProperties::default();
    for (k, v) in &m.properties {
        app.0.insert(k.clone(), SimpleValue::String(v.clone()));
    }
    // Only when the sender set one (see amqp/c2d.rs), as on the MQTT topic.
    if azsim_proto::property_bag::Ack::parse(&m.ack).is_ok() {
        app.0
            .insert("iothub-ack".into(), SimpleValue::String(m.ack.clone()));
    }
    Message::builder()
        .header(Header {
            durable: true,
            // Delivered before this time (mark_delivered counted this one).
            delivery_count: m.delivery_count,
            ..Header::default()
        })
        .properties(props)
        .application_properties(app)
        .data(Binary::from(m.body.clone()))
        .build()
}
