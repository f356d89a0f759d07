//! The little glue between `mqttrs` and a byte stream: where a packet ends in the receive
//! buffer, and the packets this client writes.

use mqttrs::{Connect, Packet, Pid, Protocol, QoS, QosPid, Subscribe, SubscribeTopic};

/// The remaining-length field of a packet is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLenError;

impl core::fmt::Display for FrameLenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("malformed mqtt remaining length")
    }
}

impl core::error::Error for FrameLenError {}

/// The length of the first complete MQTT packet at the front of `buf` (fixed header included),
/// `Ok(None)` while more bytes are needed.
///
/// `mqttrs::decode_slice` decodes a packet but does not say how many bytes it used; this reads
/// just the fixed header's remaining-length field (MQTT 3.1.1 section 2.2.3) to know where the
/// next packet starts.
///
/// # Errors
/// [`FrameLenError`] when the remaining length runs past four bytes.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameLenError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + len;
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(FrameLenError)
}

/// The length of the packet starting at the front of `buf` (fixed header included) once its
/// fixed header is complete, whether or not the rest has arrived.
pub(crate) fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(2 + i + len);
        }
    }
    None
}

/// A bound on the length of a PUBLISH of `topic` and `payload` (at most five bytes of fixed
/// header, and the packet id).
pub(crate) fn publish_len(topic: &str, payload: &[u8]) -> usize {
    5 + 2 + topic.len() + 2 + payload.len()
}

pub(crate) fn pid(n: u16) -> Option<Pid> {
    Pid::try_from(n).ok()
}

// An mqttrs `Packet` is over 1 KiB (SUBSCRIBE holds five 256-byte filters): each packet is
// built and encoded in a function of its own, never inlined, so that only these small frames
// hold one, not the client's step function or its future.

/// The packets this client sends that have no body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bare {
    Puback(Pid),
    Pingreq,
    Disconnect,
}

/// Encodes `packet` into `tx`: its length, `None` when it does not fit.
#[inline(never)]
pub(crate) fn encode_bare(packet: Bare, tx: &mut [u8]) -> Option<usize> {
    let packet = match packet {
        Bare::Puback(pid) => Packet::Puback(pid),
        Bare::Pingreq => Packet::Pingreq,
        Bare::Disconnect => Packet::Disconnect,
    };
    mqttrs::encode_slice(&packet, tx).ok()
}

/// Encodes CONNECT into `tx`.
#[inline(never)]
pub(crate) fn encode_connect(
    client_id: &str,
    username: &str,
    password: Option<&[u8]>,
    keep_alive: u16,
    clean_session: bool,
    tx: &mut [u8],
) -> Option<usize> {
    let packet = Packet::Connect(Connect {
        protocol: Protocol::MQTT311,
        keep_alive,
        client_id,
        clean_session,
        last_will: None,
        username: Some(username),
        password,
    });
    mqttrs::encode_slice(&packet, tx).ok()
}

/// Encodes a SUBSCRIBE to one filter into `tx`.
#[inline(never)]
pub(crate) fn encode_subscribe(
    pid: u16,
    filter: &str,
    qos: azsim_proto::session::QoS,
    tx: &mut [u8],
) -> Option<usize> {
    mqttrs::encode_slice(&subscribe(self::pid(pid)?, filter, qos), tx).ok()
}

fn subscribe(pid: Pid, filter: &str, qos: azsim_proto::session::QoS) -> Packet<'static> {
    let topic = SubscribeTopic {
        // Filters the session builds are at most 160 bytes; mqttrs holds 256 without std.
        topic_path: filter.into(),
        qos: mqtt_qos(qos),
    };
    Packet::Subscribe(Subscribe {
        pid,
        topics: core::iter::once(topic).collect(),
    })
}

/// Encodes a PUBLISH into `tx`.
#[inline(never)]
pub(crate) fn encode_publish(
    topic: &str,
    payload: &[u8],
    qospid: QosPid,
    dup: bool,
    tx: &mut [u8],
) -> Option<usize> {
    mqttrs::encode_slice(&publish(topic, payload, qospid, dup), tx).ok()
}

fn publish<'a>(topic: &'a str, payload: &'a [u8], qospid: QosPid, dup: bool) -> Packet<'a> {
    Packet::Publish(mqttrs::Publish {
        dup,
        qospid,
        retain: false,
        topic_name: topic,
        payload,
    })
}

/// What an incoming packet means to the client; the small part of a decoded `Packet`.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    Publish(mqttrs::Publish<'a>),
    Puback(u16),
    Pingresp,
    /// CONNACK with its return code (0: accepted).
    Connack(u8),
    /// SUBACK: whether its (first) filter was granted.
    Suback(bool),
    /// DISCONNECT, or bytes that are not MQTT.
    Closed,
    /// Needs no answer (UNSUBACK, ...).
    Other,
}

/// Decodes the complete packet `packet`.
#[inline(never)]
pub(crate) fn decode(packet: &[u8]) -> Incoming<'_> {
    match mqttrs::decode_slice(packet) {
        Ok(Some(Packet::Publish(p))) => Incoming::Publish(p),
        Ok(Some(Packet::Puback(pid))) => Incoming::Puback(pid.get()),
        Ok(Some(Packet::Pingresp)) => Incoming::Pingresp,
        Ok(Some(Packet::Connack(c))) => Incoming::Connack(match c.code {
            mqttrs::ConnectReturnCode::Accepted => 0,
            mqttrs::ConnectReturnCode::RefusedProtocolVersion => 1,
            mqttrs::ConnectReturnCode::RefusedIdentifierRejected => 2,
            mqttrs::ConnectReturnCode::ServerUnavailable => 3,
            mqttrs::ConnectReturnCode::BadUsernamePassword => 4,
            mqttrs::ConnectReturnCode::NotAuthorized => 5,
        }),
        Ok(Some(Packet::Suback(s))) => Incoming::Suback(
            s.return_codes
                .first()
                .is_some_and(|c| matches!(c, mqttrs::SubscribeReturnCodes::Success(_))),
        ),
        Ok(Some(Packet::Disconnect)) | Ok(None) | Err(_) => Incoming::Closed,
        Ok(Some(_)) => Incoming::Other,
    }
}

fn mqtt_qos(q: azsim_proto::session::QoS) -> QoS {
    match q {
        azsim_proto::session::QoS::AtMostOnce => QoS::AtMostOnce,
        azsim_proto::session::QoS::AtLeastOnce => QoS::AtLeastOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(packet: &Packet<'_>, out: &mut [u8]) -> Option<usize> {
        mqttrs::encode_slice(packet, out).ok()
    }

    #[test]
    fn frame_len_waits_for_the_whole_packet() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0xD0]), Ok(None));
        assert_eq!(frame_len(&[0xD0, 0x00]), Ok(Some(2)));
        assert_eq!(frame_len(&[0x30, 0x03, 1, 2]), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x03, 1, 2, 3, 9, 9]), Ok(Some(5)));
    }

    #[test]
    fn frame_len_reads_multi_byte_lengths() {
        // 200 = 0xC8 -> 0xC8 0x01
        let mut buf = [0u8; 203];
        buf[0] = 0x30;
        buf[1] = 0xC8;
        buf[2] = 0x01;
        assert_eq!(frame_len(&buf[..202]), Ok(None));
        assert_eq!(frame_len(&buf), Ok(Some(203)));
        assert_eq!(
            frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(FrameLenError)
        );
    }

    #[test]
    fn frame_len_agrees_with_mqttrs() {
        let mut buf = [0u8; 512];
        let payload = [7u8; 300];
        let n = encode(
            &publish(
                "devices/d/messages/events/",
                &payload,
                QosPid::AtLeastOnce(pid(9).unwrap()),
                false,
            ),
            &mut buf,
        )
        .unwrap();
        assert_eq!(frame_len(&buf[..n]), Ok(Some(n)));
        assert_eq!(frame_len(&buf[..n - 1]), Ok(None));
        match mqttrs::decode_slice(&buf[..n]) {
            Ok(Some(Packet::Publish(p))) => assert_eq!(p.payload.len(), 300),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscribe_carries_one_filter() {
        let mut buf = [0u8; 256];
        let n = encode(
            &subscribe(
                pid(60001).unwrap(),
                "$iothub/methods/POST/#",
                azsim_proto::session::QoS::AtMostOnce,
            ),
            &mut buf,
        )
        .unwrap();
        match mqttrs::decode_slice(&buf[..n]) {
            Ok(Some(Packet::Subscribe(s))) => {
                assert_eq!(s.pid.get(), 60001);
                assert_eq!(s.topics.len(), 1);
                assert_eq!(s.topics[0].topic_path.as_str(), "$iothub/methods/POST/#");
            }
            other => panic!("{other:?}"),
        }
    }
}
