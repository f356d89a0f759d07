//! C2D delivery on an MQTT connection: the device's queued messages sent at the QoS its
//! subscription was granted, each QoS 1 one in flight under a packet id until its PUBACK
//! completes it (`session.rs` handles the PUBACK); expired or over-delivered ones are
//! dead-lettered instead of sent.

use azsim_proto::property_bag::Ack;
use azsim_proto::topic;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use serde_json::json;
use std::sync::atomic::Ordering;

use super::session::Conn;
use crate::store::{C2dMessage, q};
use crate::untrusted::Untrusted;

impl Conn {
    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Send every queued C2D message not already in flight (expired or over-delivered ones are
    /// dead-lettered instead).
    pub(super) async fn deliver_c2d(&mut self) -> Result<(), String> {
        if self.module.is_some() || !self.subs.c2d.load(Ordering::Acquire) {
            return Ok(());
        }
        let device = self.device.clone();
        let skip: Vec<i64> = self.inflight.values().map(|(s, _)| *s).collect();
        let max_dc = self.hub.cfg.limits.c2d_max_delivery_count;
        let now = self.hub.now_ms();
        let batch = self
            .hub
            .store
            .call(move |c| {
                let mut send = Vec::new();
                for m in q::c2d_pending(c, &device)? {
                    if skip.contains(&m.seq) {
                        continue;
                    }
                    if m.expiry_ms <= now {
                        tracing::info!(device = %device, message_id = %Untrusted(&m.message_id), "c2d dead-lettered: Expired");
                        q::c2d_dead_letter(c, m.seq, "Expired", now)?;
                    } else if m.delivery_count >= max_dc {
                        tracing::info!(device = %device, message_id = %Untrusted(&m.message_id), "c2d dead-lettered: DeliveryCountExceeded");
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
        let qos0 = self.subs.c2d_qos0.load(Ordering::Acquire);
        for m in batch {
            let topic = c2d_topic(&m);
            if qos0 {
                // At most once: sent and completed, no PUBACK to wait for.
                let p = Publish::new(topic, QoS::AtMostOnce, m.body.clone());
                let _ = Packet::Publish(p).write(&mut self.out, usize::MAX);
                self.complete_c2d(m.seq, m.message_id.clone()).await;
                continue;
            }
            let pkid = self.alloc_pkid();
            let mut p = Publish::new(topic, QoS::AtLeastOnce, m.body.clone());
            p.pkid = pkid;
            p.dup = m.delivery_count > 0;
            self.inflight.insert(pkid, (m.seq, m.message_id.clone()));
            let _ = Packet::Publish(p).write(&mut self.out, usize::MAX);
        }
        Ok(())
    }

    pub(super) async fn complete_c2d(&self, seq: i64, message_id: String) {
        let now = self.hub.now_ms();
        let r = self
            .hub
            .store
            .call(move |c| q::c2d_complete(c, seq, now))
            .await;
        if let Ok(true) = r {
            self.hub.emit(
                &self.device,
                json!({"type":"c2dCompleted","deviceId":self.device,"messageId":message_id}),
            );
        }
    }
}

fn c2d_topic(m: &C2dMessage) -> String {
    let mut to = String::new();
    let _ = topic::write_c2d_to(&mut to, &m.device_id);
    let sys = azsim_proto::property_bag::SystemProperties {
        message_id: Some(&m.message_id),
        correlation_id: m.correlation_id.as_deref(),
        user_id: m.user_id.as_deref(),
        content_type: m.content_type.as_deref(),
        content_encoding: m.content_encoding.as_deref(),
        to: Some(&to),
        ack: Ack::parse(&m.ack).ok(), // empty when the service set none: not on the topic
        ..Default::default()
    };
    let mut t = String::new();
    let _ = topic::write_c2d_topic(
        &mut t,
        &m.device_id,
        &sys,
        m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    t
}
