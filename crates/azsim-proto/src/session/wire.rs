//! Glue between the session and [`crate::topic`], where every topic string lives.

use core::fmt;

use super::QoS;
use crate::property_bag::PropertyBag;
use crate::topic::{self, SubscriptionKind, TopicError};

pub(super) fn subscription(id: &super::Identity, i: u8) -> Option<(SubscriptionKind, QoS)> {
    let kind = *SubscriptionKind::for_identity(topic_id(id)).get(usize::from(i))?;
    let qos = match kind {
        // C2D and module inputs are at-least-once; twin and method traffic is QoS 0, as the
        // SDKs subscribe it.
        SubscriptionKind::C2d | SubscriptionKind::ModuleInputs => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    };
    Some((kind, qos))
}

pub(super) fn subscription_count(id: &super::Identity) -> u8 {
    SubscriptionKind::for_identity(topic_id(id)).len() as u8
}

pub(super) fn topic_id(id: &super::Identity) -> topic::Identity<'_> {
    match id.module_id() {
        Some(m) => topic::Identity::module(id.device_id(), m),
        None => topic::Identity::device(id.device_id()),
    }
}

pub(super) fn twin_get(w: &mut dyn fmt::Write, rid: u32) -> fmt::Result {
    topic::write_twin_request(w, false, rid)
}

pub(super) fn twin_reported(w: &mut dyn fmt::Write, rid: u32) -> fmt::Result {
    topic::write_twin_request(w, true, rid)
}

/// `rid` is the raw (still percent-encoded) id from the request topic; the builder encodes
/// it again, so it is decoded first.
pub(super) fn method_response(w: &mut dyn fmt::Write, status: u16, rid: &str) -> fmt::Result {
    let mut decoded = [0u8; 128];
    let decoded = crate::encoding::decode(rid, &mut decoded).map_err(|_| fmt::Error)?;
    topic::write_method_response(w, status, decoded)
}

pub(super) enum Incoming<'t> {
    C2d {
        properties: PropertyBag<'t>,
    },
    Method {
        name: &'t str,
        rid: &'t str,
    },
    TwinResponse {
        status: u16,
        rid: u32,
        version: Option<u64>,
    },
    DesiredPatch {
        version: Option<u64>,
    },
}

/// The hub publishes the session acts on. Module input messages are the application's
/// business and not parsed here (a device id has no `/`, so such a topic never matches the
/// C2D shape for this identity).
pub(super) fn parse_incoming<'t>(t: &'t str, id: &super::Identity) -> Option<Incoming<'t>> {
    // Each prefix compared once: the parsers take what follows it.
    if let Some(rest) = t.strip_prefix(topic::METHOD_REQUEST_PREFIX) {
        let m = topic::method_request(rest).ok()?;
        return Some(Incoming::Method {
            name: m.name.as_str(),
            rid: m.rid.as_raw(),
        });
    }
    if let Some(rest) = t.strip_prefix(topic::TWIN_RESPONSE_PREFIX) {
        let r = topic::twin_response(rest).ok()?;
        // Our own ids are plain decimal; anything else is not ours.
        let rid = crate::encoding::parse_decimal(r.rid.as_plain()?.as_bytes(), u32::MAX.into())?;
        return Some(Incoming::TwinResponse {
            status: r.status,
            rid: rid as u32,
            version: r.version,
        });
    }
    if let Some(rest) = t.strip_prefix("devices/") {
        let c = topic::c2d(rest).ok()?;
        return (c.device_id == id.device_id()).then_some(Incoming::C2d { properties: c.bag });
    }
    match topic::parse_desired_patch(t) {
        Ok(version) => Some(Incoming::DesiredPatch {
            version: Some(version),
        }),
        // Lenient on the device side: the body's `$version` is used instead.
        Err(TopicError::VersionMissing) => Some(Incoming::DesiredPatch { version: None }),
        Err(_) => None,
    }
}
