//! The fleet's clock: the system clock, with every device's wake-up moved to the next slot of
//! a grid shared by the whole fleet (`--timer-resolution`, the slots counted from one instant
//! for the process).
//!
//! Why: a device's message costs two wake-ups of its thread (the timer, then the PUBACK), and
//! at a few hundred messages a second each wake-up is alone, so the fixed cost of sleeping and
//! waking (`epoll_wait`, a context switch, cold caches) is most of the message. Devices due in
//! the same slot wake together: their publishes go out back to back, and PUBACKs arriving
//! meanwhile are read in the same turn. A device's cadence does not drift (the session
//! schedules the next message from when the last was due, not from when it went); each send
//! is late by less than one slot.

use std::sync::OnceLock;
use std::time::Duration;

use azsim_emulator::clock::unix_now_ms;
use azsim_mqtt::Clock;
use tokio::time::Instant;

/// The system clock in Unix milliseconds, waking on a shared grid of `resolution`.
#[derive(Debug, Clone, Copy)]
pub struct FleetClock {
    resolution: Duration,
}

impl FleetClock {
    /// Wake-ups on a grid of `resolution` (at most 1 ms: none).
    pub fn new(resolution: Duration) -> Self {
        Self { resolution }
    }

    /// The first grid point at or after `at`.
    fn slot(&self, at: Instant) -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let res = self.resolution.as_nanos();
        if res <= 1_000_000 {
            return at;
        }
        let origin = *ORIGIN.get_or_init(Instant::now);
        let since = at.saturating_duration_since(origin).as_nanos();
        let n = since.div_ceil(res);
        let offset = n.saturating_mul(res);
        origin + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
    }
}

impl Clock for FleetClock {
    fn now(&mut self) -> u64 {
        unix_now_ms()
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        // Again if the system clock was set back while sleeping.
        loop {
            let now = unix_now_ms();
            if now >= unix_ms {
                return;
            }
            let at = Instant::now() + Duration::from_millis(unix_ms - now);
            tokio::time::sleep_until(self.slot(at)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wake_ups_land_on_a_shared_grid_no_earlier_than_asked() {
        let c = FleetClock::new(Duration::from_millis(20));
        let base = Instant::now();
        let slots: Vec<Instant> = (0..40)
            .map(|ms| c.slot(base + Duration::from_millis(ms)))
            .collect();
        for (ms, s) in slots.iter().enumerate() {
            let asked = base + Duration::from_millis(ms as u64);
            assert!(*s >= asked && *s < asked + Duration::from_millis(20));
        }
        let distinct: std::collections::BTreeSet<_> = slots.iter().collect();
        assert!(distinct.len() <= 3, "{} slots", distinct.len());
        // No grid at 1 ms.
        let exact = FleetClock::new(Duration::from_millis(1));
        assert_eq!(
            exact.slot(base + Duration::from_micros(1500)),
            base + Duration::from_micros(1500)
        );
    }

    #[tokio::test]
    async fn successive_sleeps_later_earlier_and_abandoned_end_on_time() {
        let mut c = FleetClock::new(Duration::from_millis(5));
        for ahead in [30, 60, 10, 10] {
            let until = unix_now_ms() + ahead;
            c.sleep_until(until).await;
            assert!(unix_now_ms() >= until, "woke before {ahead} ms");
        }
        // A sleep given up (a packet came first); the next, earlier one still ends on time.
        let far = unix_now_ms() + 10_000;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), c.sleep_until(far))
                .await
                .is_err()
        );
        let until = unix_now_ms() + 15;
        let t0 = Instant::now();
        c.sleep_until(until).await;
        assert!(unix_now_ms() >= until);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_sleep_ends_at_or_after_its_deadline() {
        let mut c = FleetClock::new(Duration::from_millis(20));
        let until = unix_now_ms() + 30;
        c.sleep_until(until).await;
        assert!(unix_now_ms() >= until);
    }
}
