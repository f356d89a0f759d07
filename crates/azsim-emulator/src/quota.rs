//! The tier's daily message quota, metered as Azure meters it (`--tier`; off without one).
//!
//! Microsoft Learn, "Azure IoT Hub billing information" (iot-hub-devguide-pricing): every
//! billable operation is charged in 4 KB blocks (0.5 KB on the free tier), at least one message
//! each, against the same daily quota: device-to-cloud messages on ingress; cloud-to-device
//! messages; direct methods (the request, and the response as further messages; a request to a
//! disconnected device plus one message for the "not online" answer); twin reads, from the
//! device or the back end; twin updates (tags and properties, from the back end, reported
//! properties from the device, and each desired-property notification a device receives);
//! queries against `devices` and `devices.modules` by the size of their result. Not charged:
//! identity registry operations, jobs and configuration operations themselves, keep-alives.
//!
//! When the day's quota is used up Azure refuses further billable operations with 403002
//! IoTHubQuotaExceeded: telemetry closes the connection, REST calls get 403 (403002), a device's
//! twin request gets `res/403`, C2D over AMQP `amqp:resource-limit-exceeded`. A charge that
//! follows an accepted operation (a method's response, a desired notification) is counted and
//! never refused. Each charge is kept under the name Azure's "quota usage insight" gives it
//! (the italic terms of that page), which `GET /emulator/quota` (not Azure) reports.
//!
//! A job's per-device operations are charged as Azure charges them: each method call as a
//! method (request, response), each twin update as a twin update (the job runs the REST
//! update itself, so it is counted, and refused, as `Update Twin`). Not metered: file uploads,
//! digital twin and configuration operations (the hub has none of them).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::fault::Tier;
use crate::hub::Hub;

/// What a charge is for, with Azure's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Billed {
    Telemetry,
    C2d,
    Method,
    ModuleMethod,
    MethodJob,
    TwinRead,
    ModuleTwinRead,
    DeviceTwinRead,
    TwinUpdate,
    ModuleTwinUpdate,
    ReportedPatch,
    DesiredNotify,
    Query,
}

impl Billed {
    /// The term of Azure's quota usage insight.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Billed::Telemetry => "Device to Cloud Telemetry",
            Billed::C2d => "Cloud To Device Command",
            Billed::Method => "Device Direct Invoke Method",
            Billed::ModuleMethod => "Module Direct Invoke Method",
            Billed::MethodJob => "Invoke Method Device Job",
            Billed::TwinRead => "Get Twin",
            Billed::ModuleTwinRead => "Get Module Twin",
            Billed::DeviceTwinRead => "D2C Get Twin",
            Billed::TwinUpdate => "Update Twin",
            Billed::ModuleTwinUpdate => "Update Module Twin",
            Billed::ReportedPatch => "D2 Patch ReportedProperties",
            Billed::DesiredNotify => "D2C Notify DesiredProperties",
            Billed::Query => "Query Devices",
        }
    }
}

/// The 403002 text every refusal carries.
pub(crate) const EXCEEDED: &str =
    "403002 IoTHubQuotaExceeded: the hub's daily message quota is used up";

#[derive(Debug, Default)]
struct Day {
    /// UTC day number.
    day: u64,
    used: u64,
    by: BTreeMap<&'static str, u64>,
}

/// The day's usage (in memory: a restart starts the day over), and the shaped throttles of
/// device-to-cloud sends and connections (see `throttle`).
#[derive(Debug, Default)]
pub(crate) struct Meter {
    day: Mutex<Day>,
    pub(crate) buckets: crate::throttle::Buckets,
}

impl Meter {
    /// Charge `bytes` of `what` at `now_ms`. A `refusable` charge that does not fit in the
    /// day's quota is not made and returns false; the others always count. Always true, and
    /// nothing counted, without a tier.
    pub(crate) fn charge(
        &self,
        tier: Option<Tier>,
        units: u32,
        what: Billed,
        bytes: usize,
        now_ms: u64,
        refusable: bool,
    ) -> bool {
        let Some(tier) = tier else { return true };
        let cost = bytes.div_ceil(tier.chunk_bytes()).max(1) as u64;
        let mut d = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let today = now_ms / 86_400_000;
        if d.day != today {
            *d = Day {
                day: today,
                ..Day::default()
            };
        }
        if refusable && d.used + cost > tier.daily_messages(units) {
            return false;
        }
        d.used += cost;
        *d.by.entry(what.name()).or_default() += cost;
        true
    }

    /// Whether a charge of `bytes` would fit today.
    pub(crate) fn fits(&self, tier: Option<Tier>, units: u32, bytes: usize, now_ms: u64) -> bool {
        let Some(tier) = tier else { return true };
        let cost = bytes.div_ceil(tier.chunk_bytes()).max(1) as u64;
        let d = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let used = if d.day == now_ms / 86_400_000 {
            d.used
        } else {
            0
        };
        used + cost <= tier.daily_messages(units)
    }

    /// `{"tier","units","limit","used","byOperation":{name: messages}}` for today.
    pub(crate) fn report(&self, tier: Option<Tier>, units: u32, now_ms: u64) -> Value {
        let d = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let today = d.day == now_ms / 86_400_000;
        json!({
            "tier": tier.map(Tier::name),
            "units": units,
            "limit": tier.map(|t| t.daily_messages(units)),
            "used": if today { d.used } else { 0 },
            "byOperation": if today { json!(d.by) } else { json!({}) },
        })
    }
}

/// Charge a billable operation about to be done; false (nothing charged) when it does not fit
/// in the day's quota: refuse it with 403002.
pub(crate) fn charge(hub: &Hub, what: Billed, bytes: usize) -> bool {
    hub.faults.meter.charge(
        hub.cfg.tier,
        hub.cfg.units,
        what,
        bytes,
        hub.clock().unix_ms(),
        true,
    )
}

/// Whether `bytes` more would fit in the day's quota (nothing charged): for an operation
/// charged only once it has succeeded ([`record`] then).
pub(crate) fn would_fit(hub: &Hub, bytes: usize) -> bool {
    hub.faults
        .meter
        .fits(hub.cfg.tier, hub.cfg.units, bytes, hub.clock().unix_ms())
}

/// Count what follows an accepted operation (a method's response, a desired notification).
pub(crate) fn record(hub: &Hub, what: Billed, bytes: usize) {
    hub.faults.meter.charge(
        hub.cfg.tier,
        hub.cfg.units,
        what,
        bytes,
        hub.clock().unix_ms(),
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_4kb_blocks_at_least_one_by_operation_and_refusable_ones_stop_at_the_limit() {
        let m = Meter::default();
        let day = 20_000 * 86_400_000;
        let s1 = Some(Tier::S1);
        assert!(m.charge(s1, 1, Billed::C2d, 6 * 1024, day, true));
        assert!(m.charge(s1, 1, Billed::Method, 0, day, true));
        assert!(m.charge(s1, 1, Billed::Method, 4096, day, true));
        let r = m.report(s1, 1, day);
        assert_eq!(r["used"], 4);
        assert_eq!(r["byOperation"]["Cloud To Device Command"], 2);
        assert_eq!(r["byOperation"]["Device Direct Invoke Method"], 2);
        // F1: 0.5 KB blocks, 8,000 a day; a refusable charge past it is not made.
        let f = Meter::default();
        let f1 = Some(Tier::F1);
        assert!(f.charge(f1, 1, Billed::Telemetry, 7999 * 512, day, true));
        assert!(!f.charge(f1, 1, Billed::TwinRead, 513, day, true));
        assert!(f.charge(f1, 1, Billed::TwinRead, 512, day, true));
        f.charge(f1, 1, Billed::DesiredNotify, 10, day, false);
        assert_eq!(f.report(f1, 1, day)["used"], 8001);
        // The next UTC day starts over.
        assert_eq!(f.report(f1, 1, day + 86_400_000)["used"], 0);
        assert!(f.charge(f1, 1, Billed::TwinRead, 513, day + 86_400_000, true));
        assert!(Meter::default().charge(None, 1, Billed::Query, usize::MAX, day, true));
    }
}
