//! Traffic shaping of the tier's device-side throttles (`--tier`; nothing at all without one):
//! device-to-cloud sends and new device connections, per hub, shared by all devices.
//!
//! The rates, Microsoft Learn "IoT Hub quotas and throttling" (iot-hub-devguide-quotas-
//! throttling, "Operation throttles"): device-to-cloud sends Free and S1 "higher of 100 send
//! operations/sec or 12 send operations/sec/unit", S2 120/sec/unit, S3 6,000/sec/unit; new
//! device connections the same figures ("higher of 100/sec or 12/sec/unit", 120/sec/unit,
//! 6,000/sec/unit).
//!
//! How they apply, same page, "Traffic shaping": "IoT Hub accepts requests above the throttle
//! for a limited time. The first few of these requests are processed immediately. However, if
//! the number of requests continues violate the throttle, IoT Hub starts placing the requests
//! in a queue and processed at the limit rate. [...] the size of this queue is limited. If the
//! throttle violation continues, eventually the queue fills up, and IoT Hub starts rejecting
//! requests". Its example (200 messages/s to an S1 hub): "For the first minute or two, the
//! messages are processed immediately", so the excess accepted at once is about a minute of
//! the rate: [`Shaping::burst`], 60 s by default. The queue's size is not documented;
//! [`Shaping::queue`] defaults to 60 s of
//! the rate (inferred: the time Azure's C# device SDK now waits for a CONNACK, raised to 60 s
//! because "IoT Hub ... will implement traffic shaping" and a CONNECT "can have a delay",
//! Azure/azure-iot-sdk-csharp#2043 and #2044).
//!
//! The meter is a token bucket in GCRA form: a theoretical arrival time (when the next request
//! would conform to the bare rate) that each request moves on by one interval (1 / rate). A
//! request is processed at once while that time is at most the burst ahead of now (so at or
//! under the rate nothing ever waits); then at its slot (that time minus the burst: one
//! interval after the previous one, so at the rate) while it is at most burst + queue ahead;
//! past that it is refused and does not count.
//!
//! What a device sees:
//! - Telemetry (QoS 0 and 1) is stored when its slot comes, so a QoS 1 message's PUBACK goes out
//!   then. The hub reads nothing more from that connection meanwhile (a device with several
//!   PUBLISHes in flight gets the PUBACKs of one read together, at the last one's slot).
//!   Refused: 429002 ThrottleBacklogLimitExceeded (Learn, "Understand and resolve Azure IoT Hub
//!   errors": "the number of requests that are in the backlog due to throttling has exceeded
//!   the backlog limit"), and as MQTT has no way to say it the connection is closed ("429
//!   errors are only respective to the HTTP transport. For MQTT the connection is closed by
//!   the hub", Azure/azure-iot-sdk-c#1766; "once HUB return 429002, it will proactively
//!   disconnect the device", MicrosoftDocs/azure-docs#107838). The message is not stored.
//! - A CONNECT waits for its slot before its CONNACK (the delay #2044 describes). Refused: CONNACK
//!   3 "server unavailable" (inferred: Azure does not document the code; it is MQTT 3.1.1's
//!   answer for "the service is unavailable", which every client retries).

use std::sync::Mutex;
use std::time::Duration;

use crate::fault::Tier;
use crate::hub::Hub;

/// How far over its rate a shaped throttle goes (`HubConfig::shaping`), each as time at the
/// rate: `burst` processed at once, then `queue` held and processed at the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    pub burst: Duration,
    pub queue: Duration,
}

impl Default for Shaping {
    /// A minute of each (see the module docs).
    fn default() -> Self {
        Shaping {
            burst: Duration::from_secs(60),
            queue: Duration::from_secs(60),
        }
    }
}

/// Why a device is refused past the queue (the hub's log and the disconnect reason).
pub(crate) const BACKLOG_FULL: &str =
    "429002 ThrottleBacklogLimitExceeded: the backlog of requests over the hub's throttle is full";

/// The operations shaped per hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shaped {
    /// Device-to-cloud sends.
    D2c,
    /// New device connections.
    Connection,
}

impl Shaped {
    /// Requests a second for `units` units of `tier` (Learn's table; both are the same).
    pub(crate) fn per_second(self, tier: Tier, units: u32) -> u64 {
        let u = u64::from(units.max(1));
        match (self, tier) {
            (Shaped::D2c | Shaped::Connection, Tier::F1 | Tier::S1) => (12 * u).max(100),
            (Shaped::D2c | Shaped::Connection, Tier::S2) => 120 * u,
            (Shaped::D2c | Shaped::Connection, Tier::S3) => 6_000 * u,
        }
    }
}

/// When a request may be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Now,
    /// At this Unix time in ms (queued).
    At(u64),
    /// The queue is full: refused, not counted.
    Refused,
}

/// One throttle's bucket: the theoretical arrival time in Unix ns.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    tat_ns: Mutex<u64>,
}

impl Bucket {
    /// Admit one request at `now_ns` to a throttle of one per `interval_ns`, processing at once
    /// up to `burst_ns` ahead and queueing up to `queue_ns` more.
    pub(crate) fn admit(
        &self,
        now_ns: u64,
        interval_ns: u64,
        burst_ns: u64,
        queue_ns: u64,
    ) -> Verdict {
        let mut tat = self.tat_ns.lock().unwrap_or_else(|p| p.into_inner());
        // When this request would conform to the bare rate, and how far that is from now.
        let start = (*tat).max(now_ns);
        let ahead = start - now_ns;
        if ahead > burst_ns.saturating_add(queue_ns) {
            return Verdict::Refused;
        }
        *tat = start.saturating_add(interval_ns);
        if ahead <= burst_ns {
            Verdict::Now
        } else {
            // Rounded up: never before the slot.
            Verdict::At((start - burst_ns).div_ceil(1_000_000))
        }
    }
}

/// The hub's shaped throttles (kept with the tier's quota meter).
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    d2c: Bucket,
    connections: Bucket,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The verdict for one `what` now, on the hub's clock; `Now` without a tier.
pub(crate) fn admit(hub: &Hub, what: Shaped) -> Verdict {
    let Some(tier) = hub.cfg.tier else {
        return Verdict::Now;
    };
    let buckets = &hub.faults.meter.buckets;
    let bucket = match what {
        Shaped::D2c => &buckets.d2c,
        Shaped::Connection => &buckets.connections,
    };
    let shaping = &hub.cfg.shaping;
    bucket.admit(
        hub.clock().unix_us().saturating_mul(1_000),
        1_000_000_000 / what.per_second(tier, hub.cfg.units),
        ns(shaping.burst),
        ns(shaping.queue),
    )
}

/// Wait (on the hub's clock) until one `what` may be processed; `Err` with the reason when the
/// queue is full. The hub stopping ends the wait: the request goes through.
pub(crate) async fn wait_turn(hub: &Hub, what: Shaped) -> Result<(), &'static str> {
    match admit(hub, what) {
        Verdict::Now => Ok(()),
        Verdict::Refused => Err(BACKLOG_FULL),
        Verdict::At(ms) => {
            let mut shutdown = hub.shutdown.subscribe();
            tokio::select! {
                () = hub.clock().sleep_until_ms(ms) => {}
                () = crate::hub::until_shutdown(&mut shutdown) => {}
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_s_rates_per_tier_and_units() {
        assert_eq!(Shaped::D2c.per_second(Tier::F1, 1), 100);
        assert_eq!(Shaped::D2c.per_second(Tier::S1, 2), 100);
        assert_eq!(Shaped::D2c.per_second(Tier::S1, 9), 108);
        assert_eq!(Shaped::D2c.per_second(Tier::S2, 2), 240);
        assert_eq!(Shaped::Connection.per_second(Tier::S3, 3), 18_000);
    }

    #[test]
    fn a_burst_goes_at_once_then_the_queue_at_the_rate_then_refusals() {
        const MS: u64 = 1_000_000;
        let b = Bucket::default();
        let t0 = 1_700_000_000_000 * MS;
        // 100/s: 10 ms apart; 1 s of burst, 2 s of queue.
        let admit = |now| b.admit(now, 10 * MS, 1000 * MS, 2000 * MS);
        for _ in 0..=100 {
            assert_eq!(admit(t0), Verdict::Now);
        }
        // Then one every 10 ms.
        assert_eq!(admit(t0), Verdict::At(t0 / MS + 10));
        assert_eq!(admit(t0), Verdict::At(t0 / MS + 20));
        for _ in 0..198 {
            assert!(matches!(admit(t0), Verdict::At(_)));
        }
        assert_eq!(admit(t0), Verdict::Refused, "the queue holds 2 s");
        // A second later 100 more slots are free, and the next one is at the end of the queue.
        assert_eq!(admit(t0 + 1000 * MS), Verdict::At(t0 / MS + 2010));
        // Under the rate nothing waits: after a quiet spell, one every 10 ms goes at once.
        let quiet = t0 + 60_000 * MS;
        for i in 0..1000 {
            assert_eq!(admit(quiet + i * 10 * MS), Verdict::Now);
        }
    }
}
