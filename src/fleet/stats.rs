//! The fleet's figures: counters every device task bumps without a lock, two latency
//! histograms (publish-to-PUBACK and connect-to-CONNACK-and-subscribed), and errors by kind.
//! The same [`Snapshot`] feeds the NDJSON lines, the live terminal line, the final summary and
//! the Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Sub-buckets per power of two: values are kept to within about 9%.
const SUB: u32 = 8;
/// Buckets: microseconds up to 2^40 (about 12 days).
const BUCKETS: usize = (40 * SUB) as usize;

/// A lock-free log-scale histogram of durations in microseconds.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= 3
    let frac = (us >> (octave - 3)) & u64::from(SUB - 1);
    let b = (octave - 3 + 1) * SUB + frac as u32;
    (b as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `b` (so a percentile is never understated).
fn bucket_top(b: usize) -> u64 {
    let b = b as u64;
    let sub = u64::from(SUB);
    if b < sub {
        return b;
    }
    let octave = b / sub - 1 + 3;
    let frac = b % sub;
    ((sub + frac + 1) << (octave - 3)) - 1
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_top(b) as f64 / 1000.0);
            }
        }
        None
    }

    /// Sum of all durations, seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Everything the devices count.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices in this process's share of the fleet.
    pub devices: AtomicU64,
    /// Devices started so far (the connect-rate ramp).
    pub started: AtomicU64,
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Devices that connected at least once.
    pub ever_connected: AtomicU64,
    /// Telemetry publishes written (redeliveries count again).
    pub sent: AtomicU64,
    /// Telemetry acknowledged.
    pub acked: AtomicU64,
    /// Devices with at least one message acknowledged.
    pub devices_acked: AtomicU64,
    /// Redeliveries (DUP) among `sent`.
    pub redelivered: AtomicU64,
    /// Reconnects after a lost connection.
    pub reconnects: AtomicU64,
    /// C2D messages received.
    pub c2d: AtomicU64,
    /// Direct methods answered.
    pub methods: AtomicU64,
    /// Desired patches received.
    pub desired: AtomicU64,
    /// Reported PATCHes the hub accepted.
    pub reported: AtomicU64,
    /// Publish-to-PUBACK latency.
    pub latency: Histogram,
    /// Connection attempt to connected.
    pub connect_time: Histogram,
    /// The fleet registers through DPS (`--group-key`): the provisioning figures are shown.
    pub provisioning: std::sync::atomic::AtomicBool,
    /// Devices DPS assigned.
    pub provisioned: AtomicU64,
    /// Start of a successful registration to its assignment.
    pub provision_time: Histogram,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Counts one error of `kind` (`unreachable`, `tls`, `refused_not_authorized`, ...).
    pub fn error(&self, kind: impl Into<String>) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind.into()).or_default() += 1;
        }
    }

    /// The figures now, `elapsed` since the fleet started.
    pub fn snapshot(&self, elapsed: Duration) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sent = get(&self.sent);
        let acked = get(&self.acked);
        Snapshot {
            elapsed,
            devices: get(&self.devices),
            started: get(&self.started),
            connected: get(&self.connected),
            ever_connected: get(&self.ever_connected),
            sent,
            acked,
            devices_acked: get(&self.devices_acked),
            redelivered: get(&self.redelivered),
            reconnects: get(&self.reconnects),
            c2d: get(&self.c2d),
            methods: get(&self.methods),
            desired: get(&self.desired),
            reported: get(&self.reported),
            latency_ms: [0.5, 0.95, 0.99].map(|q| self.latency.quantile_ms(q)),
            latency_sum_s: self.latency.sum_secs(),
            connect_ms: [0.5, 0.99].map(|q| self.connect_time.quantile_ms(q)),
            connects: self.connect_time.count(),
            provisioning: self.provisioning.load(Ordering::Relaxed),
            provisioned: get(&self.provisioned),
            provision_ms: [0.5, 0.99].map(|q| self.provision_time.quantile_ms(q)),
            provision_sum_s: self.provision_time.sum_secs(),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// The figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Since the fleet started.
    pub elapsed: Duration,
    /// Devices in this process's share.
    pub devices: u64,
    /// Started so far.
    pub started: u64,
    /// Connected now.
    pub connected: u64,
    /// Connected at least once.
    pub ever_connected: u64,
    /// Telemetry sent.
    pub sent: u64,
    /// Telemetry acknowledged.
    pub acked: u64,
    /// Devices with a message acknowledged.
    pub devices_acked: u64,
    /// Redeliveries.
    pub redelivered: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// C2D received.
    pub c2d: u64,
    /// Methods answered.
    pub methods: u64,
    /// Desired patches received.
    pub desired: u64,
    /// Reported patches accepted.
    pub reported: u64,
    /// p50, p95, p99 publish-to-ack latency, ms.
    pub latency_ms: [Option<f64>; 3],
    /// Sum of the latencies, seconds (Prometheus summary `_sum`).
    pub latency_sum_s: f64,
    /// p50, p99 connect time, ms.
    pub connect_ms: [Option<f64>; 2],
    /// Successful connects timed.
    pub connects: u64,
    /// Devices register through DPS.
    pub provisioning: bool,
    /// Devices DPS assigned.
    pub provisioned: u64,
    /// p50, p99 provisioning time, ms.
    pub provision_ms: [Option<f64>; 2],
    /// Sum of the provisioning times, seconds.
    pub provision_sum_s: f64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Snapshot {
    /// Published but not yet acknowledged (redeliveries aside).
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.redelivered + self.acked)
    }

    /// Acknowledged messages per second over the whole run.
    pub fn msgs_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.acked as f64 / s } else { 0.0 }
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The JSON fields of a `stats` or `summary` line; `rate` is the msgs/s to show (the last
    /// window's for `stats`, the whole run's for `summary`).
    pub fn to_json(&self, rate: f64) -> Value {
        let [p50, p95, p99] = self.latency_ms;
        let [c50, c99] = self.connect_ms;
        let mut v = json!({
            "seconds": round3(self.elapsed.as_secs_f64()),
            "devices": self.devices,
            "started": self.started,
            "connected": self.connected,
            "ever_connected": self.ever_connected,
            "sent": self.sent,
            "acked": self.acked,
            "devices_acked": self.devices_acked,
            "in_flight": self.in_flight(),
            "redelivered": self.redelivered,
            "msgs_per_s": round3(rate),
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "connect_ms": {"p50": c50, "p99": c99},
            "reconnects": self.reconnects,
            "c2d": self.c2d,
            "methods": self.methods,
            "desired": self.desired,
            "reported": self.reported,
            "errors": self.errors,
        });
        if self.provisioning
            && let Some(m) = v.as_object_mut()
        {
            let [p50, p99] = self.provision_ms;
            m.insert("provisioned".into(), json!(self.provisioned));
            m.insert("provision_ms".into(), json!({"p50": p50, "p99": p99}));
        }
        v
    }

    /// The summary for people.
    pub fn to_text(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        let [p50, p95, p99] = self.latency_ms;
        let [c50, c99] = self.connect_ms;
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let provisioning = if self.provisioning {
            let [p50, p99] = self.provision_ms;
            format!(
                "\n  {} of {} devices provisioned through DPS, provisioning time p50 {} p99 {}",
                self.provisioned,
                self.devices,
                ms(p50),
                ms(p99)
            )
        } else {
            String::new()
        };
        format!(
            "fleet summary after {:.1} s: {} of {} devices connected ({} at the end), {} with a message acknowledged; {} messages sent, {} acknowledged, {:.1} msgs/s\n  \
             publish-to-ack latency p50 {} p95 {} p99 {}; connect time p50 {} p99 {}\n  \
             {} reconnects, {} c2d, {} methods, {} desired patches, {} reported; errors: {errors}{provisioning}",
            self.elapsed.as_secs_f64(),
            self.ever_connected,
            self.devices,
            self.connected,
            self.devices_acked,
            self.sent,
            self.acked,
            self.msgs_per_sec(),
            ms(p50),
            ms(p95),
            ms(p99),
            ms(c50),
            ms(c99),
            self.reconnects,
            self.c2d,
            self.methods,
            self.desired,
            self.reported,
        )
    }

    /// Prometheus text exposition (format 0.0.4) of the same figures.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP azsim_fleet_{name} {help}");
            let _ = writeln!(s, "# TYPE azsim_fleet_{name} {kind}");
            let _ = writeln!(s, "azsim_fleet_{name} {value}");
        };
        metric(
            "devices",
            "gauge",
            "Devices in this process's share of the fleet.",
            self.devices.to_string(),
        );
        metric(
            "devices_started",
            "gauge",
            "Devices started so far.",
            self.started.to_string(),
        );
        metric(
            "devices_connected",
            "gauge",
            "Devices connected now.",
            self.connected.to_string(),
        );
        metric(
            "devices_ever_connected",
            "gauge",
            "Devices that connected at least once.",
            self.ever_connected.to_string(),
        );
        metric(
            "messages_sent_total",
            "counter",
            "Telemetry messages published (redeliveries included).",
            self.sent.to_string(),
        );
        metric(
            "messages_acked_total",
            "counter",
            "Telemetry messages acknowledged by the hub.",
            self.acked.to_string(),
        );
        metric(
            "devices_acked",
            "gauge",
            "Devices with at least one message acknowledged.",
            self.devices_acked.to_string(),
        );
        metric(
            "messages_in_flight",
            "gauge",
            "Telemetry published and not yet acknowledged.",
            self.in_flight().to_string(),
        );
        metric(
            "reconnects_total",
            "counter",
            "Reconnects after a lost connection.",
            self.reconnects.to_string(),
        );
        metric(
            "c2d_received_total",
            "counter",
            "Cloud-to-device messages received.",
            self.c2d.to_string(),
        );
        metric(
            "methods_answered_total",
            "counter",
            "Direct methods answered.",
            self.methods.to_string(),
        );
        metric(
            "desired_patches_total",
            "counter",
            "Desired-property patches received.",
            self.desired.to_string(),
        );
        metric(
            "reported_accepted_total",
            "counter",
            "Reported-property patches accepted by the hub.",
            self.reported.to_string(),
        );
        let mut summary =
            |name: &str, help: &str, qs: &[(f64, Option<f64>)], sum: f64, count: u64| {
                let _ = writeln!(s, "# HELP azsim_fleet_{name} {help}");
                let _ = writeln!(s, "# TYPE azsim_fleet_{name} summary");
                for (q, v) in qs {
                    let v = v.map_or_else(|| "NaN".to_owned(), |v| (v / 1000.0).to_string());
                    let _ = writeln!(s, "azsim_fleet_{name}{{quantile=\"{q}\"}} {v}");
                }
                let _ = writeln!(s, "azsim_fleet_{name}_sum {sum}");
                let _ = writeln!(s, "azsim_fleet_{name}_count {count}");
            };
        let [p50, p95, p99] = self.latency_ms;
        summary(
            "publish_ack_seconds",
            "Telemetry publish-to-PUBACK latency.",
            &[(0.5, p50), (0.95, p95), (0.99, p99)],
            self.latency_sum_s,
            self.acked,
        );
        let [c50, c99] = self.connect_ms;
        summary(
            "connect_seconds",
            "Time from opening a connection to connected.",
            &[(0.5, c50), (0.99, c99)],
            f64::NAN,
            self.connects,
        );
        if self.provisioning {
            let [p50, p99] = self.provision_ms;
            summary(
                "provision_seconds",
                "Time from starting a registration to its assignment.",
                &[(0.5, p50), (0.99, p99)],
                self.provision_sum_s,
                self.provisioned,
            );
            let _ = writeln!(
                s,
                "# HELP azsim_fleet_devices_provisioned Devices DPS assigned.\n# TYPE azsim_fleet_devices_provisioned gauge\nazsim_fleet_devices_provisioned {}",
                self.provisioned
            );
        }
        let _ = writeln!(s, "# HELP azsim_fleet_errors_total Errors by kind.");
        let _ = writeln!(s, "# TYPE azsim_fleet_errors_total counter");
        for (k, v) in &self.errors {
            let _ = writeln!(s, "azsim_fleet_errors_total{{kind=\"{k}\"}} {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_within_a_tenth() {
        for us in [
            1u64,
            7,
            8,
            9,
            15,
            16,
            100,
            999,
            1000,
            12_345,
            1_000_000,
            987_654_321,
        ] {
            let top = bucket_top(bucket_of(us));
            assert!(top >= us, "{us} -> {top}");
            assert!((top - us) as f64 <= us as f64 * 0.13 + 1.0, "{us} -> {top}");
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=56.0).contains(&p50), "{p50}");
        assert!((99.0..=108.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }
}
