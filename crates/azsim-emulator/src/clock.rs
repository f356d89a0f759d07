//! Time, once: Unix time and RFC 3339 text for the whole workspace, and the [`Clock`] the hub
//! reads instead of `SystemTime`.
//!
//! The free functions ([`unix_now`], [`unix_now_ms`], [`rfc3339`], ...) read or format the
//! system clock; the CLI and the tests use them, so nothing else in the tree has its own copy.
//!
//! The hub itself never calls them for "now": it is given a [`Clock`] (in its config, real by
//! default) and every deadline that follows Unix time goes through it: SAS token expiry, C2D
//! expiry (TTL), feedback and C2D locks, method response timeouts, activity and enqueue times.
//!
//! # Why a manual clock and not paused tokio time
//!
//! The hub's tests run real TLS sockets, often to another process (the `azsim` binary, the
//! Python SDK). Under `tokio::time::pause()` tokio advances its clock whenever the runtime is
//! idle, which is exactly when it waits for such a peer, so a 30 s timeout can "pass" while the
//! peer is still sending its first byte. A [`ManualClock`] moves only when the test says so:
//! [`ManualClock::advance`] moves Unix time and wakes every [`Clock::sleep_until_ms`] whose
//! deadline it passed, so a test can say "the token is now expired" or "the method timed out"
//! without waiting and without racing the scheduler; [`ManualClock::sleeper_at`] tells it when
//! the hub has started waiting, so the move cannot come before the hub computed its deadline.
//! Socket-level timeouts that are about the peer (TLS handshake, keep-alive) and periodic
//! housekeeping cadences stay on tokio's clock, as real time is what they measure; so do the
//! certificates' validity dates, which clients check against their own clocks.
//!
//! In system mode [`Clock::sleep`] is `tokio::time::sleep`, so paused tokio time still drives the
//! hub's timeouts in tests that run entirely in-process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Seconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now_ms() -> u64 {
    system_duration().as_millis().try_into().unwrap_or(u64::MAX)
}

/// Microseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now_us() -> u64 {
    system_duration().as_micros().try_into().unwrap_or(u64::MAX)
}

fn system_duration() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// RFC 3339 UTC text of a Unix time in whole seconds: `2026-11-28T10:22:44Z`. Beyond year 9999
/// (not representable) it says `after year 9999`.
pub fn rfc3339(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&RFC3339).ok())
        .unwrap_or_else(|| "after year 9999".to_owned())
}

/// RFC 3339 UTC text of a Unix time in nanoseconds, with as many fraction digits as it needs
/// (none for a whole second): `2026-11-28T10:22:44.5Z`. Empty if not representable.
pub fn rfc3339_ns(unix_ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .ok()
        .and_then(|t| t.format(&RFC3339).ok())
        .unwrap_or_default()
}

/// What Azure shows for a time that never happened.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Azure's own time format, RFC 3339 UTC with exactly 7 fraction digits
/// (`2026-01-02T03:04:05.1234567Z`), as the registry and C2D headers carry it; [`NEVER`] for 0
/// or less (a time that never happened).
pub fn azure_time_us(unix_us: i64) -> String {
    if unix_us <= 0 {
        return NEVER.to_string();
    }
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_us) * 1000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| NEVER.to_string())
}

/// [`azure_time_us`] for milliseconds.
pub fn azure_time_ms(unix_ms: i64) -> String {
    azure_time_us(unix_ms.saturating_mul(1000))
}

const RFC3339: time::format_description::well_known::Rfc3339 =
    time::format_description::well_known::Rfc3339;

/// The time the hub reads: the system clock by default, or a [`ManualClock`] in tests. Cheap to
/// clone (one `Option<Arc>`); every clone reads the same time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

#[derive(Debug)]
struct Manual {
    /// Unix time in microseconds.
    now_us: AtomicU64,
    /// Bumped on every move, so sleepers re-check their deadline.
    moved: watch::Sender<()>,
    /// The deadlines (Unix ms) someone is waiting for, so a test knows the hub is waiting
    /// before it moves the clock.
    sleepers: watch::Sender<Vec<u64>>,
}

/// Keeps a deadline in [`Manual::sleepers`] while its sleep is alive (finished or dropped).
struct Sleeper<'a> {
    manual: &'a Manual,
    deadline_ms: u64,
}

impl<'a> Sleeper<'a> {
    fn new(manual: &'a Manual, deadline_ms: u64) -> Self {
        manual.sleepers.send_modify(|v| v.push(deadline_ms));
        Sleeper {
            manual,
            deadline_ms,
        }
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.manual.sleepers.send_modify(|v| {
            if let Some(i) = v.iter().position(|d| *d == self.deadline_ms) {
                v.swap_remove(i);
            }
        });
    }
}

/// A clock that moves only when told: the handle a test keeps while the hub holds its
/// [`ManualClock::clock`].
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Manual>);

impl Clock {
    /// The system clock (what [`Clock::default`] is).
    pub fn system() -> Self {
        Self::default()
    }

    /// Whether this clock moves only when a [`ManualClock`] says so.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Microseconds since the Unix epoch, now.
    pub fn unix_us(&self) -> u64 {
        match &self.manual {
            Some(m) => m.now_us.load(Ordering::Acquire),
            None => unix_now_us(),
        }
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn unix_ms(&self) -> u64 {
        self.unix_us() / 1000
    }

    /// Seconds since the Unix epoch, now.
    pub fn unix_secs(&self) -> u64 {
        self.unix_us() / 1_000_000
    }

    /// Nanoseconds since the Unix epoch, now (microsecond resolution).
    pub fn unix_ns(&self) -> i64 {
        i64::try_from(self.unix_us())
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    /// RFC 3339 text of now, with its fraction (`2026-11-28T10:22:44.123456Z`).
    pub fn now_rfc3339(&self) -> String {
        rfc3339_ns(self.unix_ns())
    }

    /// Waits until this clock reads at least `unix_ms`.
    ///
    /// System clock: a tokio sleep for the remaining time (so paused tokio time drives it).
    /// Manual clock: wakes when [`ManualClock::advance`] or [`ManualClock::set_unix_ms`] moves
    /// it past the deadline; never on its own.
    pub async fn sleep_until_ms(&self, unix_ms: u64) {
        match &self.manual {
            None => {
                let left = unix_ms.saturating_sub(self.unix_ms());
                if left > 0 {
                    tokio::time::sleep(Duration::from_millis(left)).await;
                }
            }
            Some(m) => {
                let _sleeper = Sleeper::new(m, unix_ms);
                let mut moved = m.moved.subscribe();
                // Subscribing before the check means a move between the two is still seen.
                while m.now_us.load(Ordering::Acquire) / 1000 < unix_ms {
                    if moved.changed().await.is_err() {
                        // The sender lives in `m`, which we hold: cannot happen.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Waits for `d` on this clock.
    pub async fn sleep(&self, d: Duration) {
        match &self.manual {
            None => tokio::time::sleep(d).await,
            Some(_) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                self.sleep_until_ms(self.unix_ms().saturating_add(ms)).await;
            }
        }
    }

    /// Runs `fut` for at most `d` on this clock; `None` if the time ran out first.
    pub async fn timeout<F: Future>(&self, d: Duration, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = self.sleep(d) => None,
        }
    }
}

impl ManualClock {
    /// A clock standing at `unix_ms` until moved.
    pub fn new(unix_ms: u64) -> Self {
        Self(Arc::new(Manual {
            now_us: AtomicU64::new(unix_ms.saturating_mul(1000)),
            moved: watch::Sender::new(()),
            sleepers: watch::Sender::new(Vec::new()),
        }))
    }

    /// A clock standing at the system time of its creation until moved.
    pub fn at_system_now() -> Self {
        Self::new(unix_now_ms())
    }

    /// The clock to give the hub (reads this one's time).
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(Arc::clone(&self.0)),
        }
    }

    /// Moves the time forward by `d` and wakes the sleepers whose deadline has come.
    pub fn advance(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.now_us.fetch_add(us, Ordering::AcqRel);
        self.0.moved.send_replace(());
    }

    /// Sets the time (it may go back, as a system clock may) and wakes the sleepers.
    pub fn set_unix_ms(&self, unix_ms: u64) {
        self.0
            .now_us
            .store(unix_ms.saturating_mul(1000), Ordering::Release);
        self.0.moved.send_replace(());
    }

    /// Milliseconds since the Unix epoch on this clock.
    pub fn unix_ms(&self) -> u64 {
        self.clock().unix_ms()
    }

    /// The deadlines (Unix ms) that sleeps on this clock wait for now, earliest first.
    pub fn sleepers(&self) -> Vec<u64> {
        let mut v = self.0.sleepers.borrow().clone();
        v.sort_unstable();
        v
    }

    /// Waits until something sleeps on this clock until exactly `unix_ms`: how a test knows
    /// the hub has started waiting (for a method reply, a token's expiry...) before it moves
    /// the clock past the deadline.
    pub async fn sleeper_at(&self, unix_ms: u64) {
        let mut rx = self.0.sleepers.subscribe();
        // The sender lives as long as `self`: wait_for cannot fail.
        let _ = rx.wait_for(|v| v.contains(&unix_ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_whole_seconds_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_861_364), "2026-11-28T10:22:44Z");
        assert_eq!(rfc3339(u64::MAX), "after year 9999");
    }

    #[test]
    fn rfc3339_ns_keeps_the_fraction_it_needs() {
        assert_eq!(
            rfc3339_ns(1_795_861_364_000_000_000),
            "2026-11-28T10:22:44Z"
        );
        assert_eq!(
            rfc3339_ns(1_795_861_364_500_000_000),
            "2026-11-28T10:22:44.5Z"
        );
    }

    #[test]
    fn azure_time_has_seven_fraction_digits_and_a_never() {
        assert_eq!(
            azure_time_us(1_700_000_000_123_456),
            "2023-11-14T22:13:20.1234560Z"
        );
        assert_eq!(
            azure_time_ms(1_700_000_000_001),
            "2023-11-14T22:13:20.0010000Z"
        );
        assert_eq!(azure_time_us(0), NEVER);
        assert_eq!(azure_time_us(-5), NEVER);
    }

    #[test]
    fn system_readings_agree_with_each_other() {
        let s = unix_now();
        let ms = unix_now_ms();
        let us = unix_now_us();
        // After 2020 and in order (each read is later than the one before).
        assert!(s > 1_577_836_800);
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1);
        assert!(us / 1000 >= ms);
        let c = Clock::system();
        assert!(!c.is_manual());
        assert!(c.unix_secs() >= s);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let hand = ManualClock::new(1_000_000);
        let c = hand.clock();
        assert!(c.is_manual());
        assert_eq!(c.unix_ms(), 1_000_000);
        assert_eq!(c.unix_secs(), 1_000);
        hand.advance(Duration::from_millis(1_500));
        assert_eq!(c.unix_ms(), 1_001_500);
        assert_eq!(c.clone().unix_ms(), 1_001_500);
        hand.set_unix_ms(5);
        assert_eq!(c.unix_ms(), 5);
        assert_eq!(c.now_rfc3339(), "1970-01-01T00:00:00.005Z");
    }

    #[tokio::test]
    async fn manual_sleep_wakes_on_advance_past_its_deadline_only() {
        let hand = ManualClock::new(10_000);
        let c = hand.clock();
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        hand.advance(Duration::from_secs(29));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!sleeper.is_finished(), "woke 1 s early");
        hand.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        // A deadline already passed returns at once.
        c.sleep_until_ms(0).await;
    }

    #[tokio::test]
    async fn sleepers_are_listed_while_they_wait() {
        let hand = ManualClock::new(1_000);
        let c = hand.clock();
        assert!(hand.sleepers().is_empty());
        let t = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_until_ms(5_000).await }
        });
        hand.sleeper_at(5_000).await;
        assert_eq!(hand.sleepers(), vec![5_000]);
        hand.advance(Duration::from_secs(4));
        t.await.unwrap();
        assert!(hand.sleepers().is_empty(), "a finished sleep is gone");
        // A sleep dropped while it waits (the losing branch of a select) is gone too.
        let t = tokio::spawn(async move { c.sleep_until_ms(9_000).await });
        hand.sleeper_at(9_000).await;
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
        assert!(hand.sleepers().is_empty());
    }

    #[tokio::test]
    async fn manual_timeout_gives_up_only_when_the_clock_says() {
        let hand = ManualClock::new(0);
        let c = hand.clock();
        assert_eq!(
            c.timeout(Duration::from_secs(5), async { 7 }).await,
            Some(7)
        );
        let t = tokio::spawn({
            let c = c.clone();
            async move {
                c.timeout(Duration::from_secs(5), std::future::pending::<()>())
                    .await
            }
        });
        tokio::task::yield_now().await;
        hand.advance(Duration::from_secs(5));
        assert_eq!(t.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn system_sleep_follows_paused_tokio_time() {
        let c = Clock::system();
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            c.timeout(Duration::from_secs(60), std::future::pending::<()>())
                .await,
            None
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    }
}
