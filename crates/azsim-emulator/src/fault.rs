//! Faults on demand, and the tier's quota and throttles.
//!
//! Two ways in, one behaviour:
//! - **In-band, as on Azure**: telemetry with the application properties the official SDKs' own
//!   end-to-end tests send (Azure/azure-iot-sdk-csharp `e2e/test/helpers/FaultInjection.cs`,
//!   azure-iot-sdk-java `ErrorInjectionHelper`): `AzIoTHub_FaultOperationType`,
//!   `AzIoTHub_FaultOperationCloseReason`, `AzIoTHub_FaultOperationDelayInSecs` and
//!   `AzIoTHub_FaultOperationDurationInSecs`. As those tests expect of the real hub over MQTT,
//!   the fault message itself is not acknowledged ("FaultInjection will terminate the
//!   connection prior to a PUBACK") and not routed; the fault starts after the delay and a
//!   windowed one (throttling, quota, auth) lasts for the duration.
//! - **From outside (not Azure)**: `POST /emulator/devices/{id}/faults` (`azsim hub fault`).
//!
//! Which operation types apply over MQTT: `KillTcp` (the connection is dropped, the will is
//! sent), `ShutDownMqtt` (closed as a graceful shutdown: no will), `InvokeThrottling`
//! (telemetry closes the connection with 429001 ThrottlingException, twin requests get 429,
//! REST calls about the device get 429), `InvokeMaxMessageQuota` (telemetry closes the
//! connection with 403002 IoTHubQuotaExceeded) and `InvokeAuthError` (the connection is closed
//! with 401003 and a CONNECT is refused, CONNACK 5, for the duration). The AMQP kinds
//! (`KillAmqp*`, `ShutDownAmqp`) name AMQP links and sessions, which an MQTT connection does
//! not have: over MQTT they are taken as ordinary telemetry.
//!
//! Over AMQP (a device's telemetry link, `amqp/device/`): `KillTcp` drops the connection's
//! stream, `ShutDownMqtt` closes the connection with `amqp:internal-error`, the windowed
//! kinds act as over MQTT except that a refused message is rejected (its link stays:
//! `com.microsoft:device-container-throttled`, `com.microsoft:quota-exceeded`) and an auth
//! error refuses the device's `put-token` (401); the AMQP kinds end the part of the connection
//! they name, once, after the delay (`amqp/device/faults.rs` lists each and its error
//! condition). The fault message is accepted before the fault starts (the SDK suites expect an
//! acknowledgement over AMQP, not over MQTT) and is not routed. The out-of-band kinds
//! act on an AMQP device connection as on an MQTT one: `drop` drops the connection, `shutdown`
//! closes it gracefully with an error, `expire-token` / `auth-error` detach the identity's
//! links with `amqp:unauthorized-access`.
//!
//! The tier (`--tier F1|S1|S2|S3 --units N`, off unless set) meters telemetry against the
//! daily message quota (Microsoft Learn, "IoT Hub quotas and throttling" and "Choose the right
//! IoT Hub tier": Free 8,000 messages of 0.5 KB a day, S1 400,000, S2 6,000,000 and S3
//! 300,000,000 messages of 4 KB a day per unit; the day is UTC) and REST calls against the
//! documented throttles (same page: identity registry operations 100/min/unit on S1 and S2,
//! 5,000 on S3; twin reads 100/s on S1, max(100, 10/unit) on S2, 500/unit on S3; twin updates
//! 50/s, max(50, 5/unit), 250/unit; C2D sends 1.67/s/unit, 83.33 on S3; file upload
//! initiations 1.67/s/unit (100/min), 83.33 on S3 (5,000/min); Free as S1). Over a
//! throttle, REST answers 429 ThrottlingException (429001) at once: Azure first queues and
//! delays ("traffic shaping"), which a local hub does not imitate. The meter is in memory and
//! counts what Azure counts (see `quota`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azsim_proto::property_bag::PropertyBag;

use crate::hub::{ConnCmd, Hub, is_device_or_its_module};

/// An IoT Hub tier, for its quota and throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    F1,
    S1,
    S2,
    S3,
}

impl Tier {
    /// `F1`, `S1`, `S2`, `S3` (any case).
    pub fn parse(s: &str) -> Option<Tier> {
        match s.to_ascii_uppercase().as_str() {
            "F1" => Some(Tier::F1),
            "S1" => Some(Tier::S1),
            "S2" => Some(Tier::S2),
            "S3" => Some(Tier::S3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::F1 => "F1",
            Tier::S1 => "S1",
            Tier::S2 => "S2",
            Tier::S3 => "S3",
        }
    }

    /// Messages a day for `units` units.
    pub fn daily_messages(self, units: u32) -> u64 {
        let per_unit: u64 = match self {
            Tier::F1 => 8_000,
            Tier::S1 => 400_000,
            Tier::S2 => 6_000_000,
            Tier::S3 => 300_000_000,
        };
        per_unit * u64::from(units.max(1))
    }

    /// The size one message of the daily quota stands for.
    pub fn chunk_bytes(self) -> usize {
        match self {
            Tier::F1 => 512,
            _ => 4096,
        }
    }

    /// How many calls of `class` a window of [`Class::window_ms`] allows.
    fn allowance(self, class: Class, units: u32) -> u64 {
        let u = u64::from(units.max(1));
        match (class, self) {
            (Class::Registry, Tier::S3) => 5_000 * u,
            (Class::Registry, _) => 100 * u,
            (Class::TwinRead, Tier::S3) => 500 * u,
            (Class::TwinRead, Tier::S2) => (10 * u).max(100),
            (Class::TwinRead, _) => 100,
            (Class::TwinUpdate, Tier::S3) => 250 * u,
            (Class::TwinUpdate, Tier::S2) => (5 * u).max(50),
            (Class::TwinUpdate, _) => 50,
            // Per minute: 1.67/s is 100/min, 83.33/s is 5,000/min.
            (Class::C2dSend, Tier::S3) => 5_000 * u,
            (Class::C2dSend, _) => 100 * u,
            // File upload initiations: as C2D sends (1.67/s/unit, 83.33/s/unit on S3).
            (Class::FileUpload, Tier::S3) => 5_000 * u,
            (Class::FileUpload, _) => 100 * u,
            // DPS's own limit, not the hub's tier: one DPS unit (see `dps::throttle`).
            (Class::DpsRegistration, _) => crate::dps::REGISTRATIONS_PER_MINUTE,
        }
    }
}

/// What a throttle counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    Registry,
    TwinRead,
    TwinUpdate,
    C2dSend,
    /// File upload initiations (`POST /devices/{id}/files`).
    FileUpload,
    /// DPS device registrations (register requests, not polls) of the hub's id scope.
    DpsRegistration,
}

impl Class {
    fn window_ms(self) -> u64 {
        match self {
            Class::Registry | Class::C2dSend | Class::FileUpload | Class::DpsRegistration => 60_000,
            Class::TwinRead | Class::TwinUpdate => 1_000,
        }
    }
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The connection is dropped (KillTcp).
    Drop,
    /// The connection is closed gracefully: no will (ShutDownMqtt).
    Shutdown,
    /// The connection is closed as if its token had expired; a new token connects.
    ExpireToken,
    /// The connection is closed and CONNECTs are refused for the duration (InvokeAuthError).
    AuthError,
    /// Telemetry closes the connection, twin and REST calls get 429 (InvokeThrottling).
    Throttle,
    /// Telemetry closes the connection with 403002 (InvokeMaxMessageQuota).
    Quota,
}

impl Fault {
    /// The CLI's and the `/emulator/` endpoint's names.
    pub(crate) fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "drop" => Fault::Drop,
            "shutdown" => Fault::Shutdown,
            "expire-token" => Fault::ExpireToken,
            "auth-error" => Fault::AuthError,
            "throttle" => Fault::Throttle,
            "quota" => Fault::Quota,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Shutdown => "shutdown",
            Fault::ExpireToken => "expire-token",
            Fault::AuthError => "auth-error",
            Fault::Throttle => "throttle",
            Fault::Quota => "quota",
        }
    }

    /// An `AzIoTHub_FaultOperationType` that applies to an MQTT connection.
    fn from_operation_type(op: &str) -> Option<Fault> {
        Some(match op {
            "KillTcp" => Fault::Drop,
            "ShutDownMqtt" => Fault::Shutdown,
            "InvokeThrottling" => Fault::Throttle,
            "InvokeMaxMessageQuota" => Fault::Quota,
            "InvokeAuthError" => Fault::AuthError,
            _ => return None,
        })
    }

    fn windowed(self) -> bool {
        matches!(self, Fault::AuthError | Fault::Throttle | Fault::Quota)
    }
}

/// A fault requested by telemetry properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InBand {
    /// The operation type as sent.
    pub operation: String,
    /// The fault, when the operation applies to MQTT.
    pub fault: Option<Fault>,
    pub delay: Duration,
    pub duration: Duration,
}

/// The fault a telemetry message's (validated, raw) property bag asks for, if any.
pub(crate) fn requested(bag: &str) -> Option<InBand> {
    // The names are letters and `_`, which the SDKs do not percent-encode: most messages end
    // here.
    if !bag.contains("AzIoTHub_FaultOperation") {
        return None;
    }
    let mut operation = None;
    let mut reason = String::new();
    let (mut delay, mut duration) = (0u64, 5u64);
    for p in PropertyBag::new(bag).iter() {
        let mut name = String::new();
        if p.name.decode_to(&mut name).is_err() || !name.starts_with("AzIoTHub_FaultOperation") {
            continue;
        }
        let mut value = String::new();
        if let Some(v) = p.value
            && v.decode_to(&mut value).is_err()
        {
            continue;
        }
        match name.as_str() {
            "AzIoTHub_FaultOperationType" => operation = Some(value),
            "AzIoTHub_FaultOperationCloseReason" => reason = value,
            "AzIoTHub_FaultOperationDelayInSecs" => delay = value.trim().parse().unwrap_or(0),
            "AzIoTHub_FaultOperationDurationInSecs" => {
                duration = value.trim().parse().unwrap_or(duration);
            }
            _ => {}
        }
    }
    let operation = operation?;
    // The close reason says how the connection ends (FaultInjection.cs: "boom" an ungraceful
    // disconnect, "byebye" a graceful one); without either, the type decides.
    let fault = match (Fault::from_operation_type(&operation), reason.as_str()) {
        (Some(Fault::Drop | Fault::Shutdown), "byebye") => Some(Fault::Shutdown),
        (Some(Fault::Drop | Fault::Shutdown), "boom") => Some(Fault::Drop),
        (f, _) => f,
    };
    Some(InBand {
        fault,
        operation,
        delay: Duration::from_secs(delay.min(86_400)),
        duration: Duration::from_secs(duration.min(86_400)),
    })
}

/// A windowed fault of one device: active from `from_ms` until `until_ms` (Unix ms).
#[derive(Debug, Clone, Copy)]
struct Window {
    fault: Fault,
    from_ms: u64,
    until_ms: u64,
}

/// Faults pending or active, and the tier's meters.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Whether any window was ever added: every telemetry message asks, and almost always
    /// none was, so the common answer costs no lock.
    any: AtomicBool,
    windows: Mutex<HashMap<String, Vec<Window>>>,
    /// The day's message quota (see `quota`).
    pub(crate) meter: crate::quota::Meter,
    /// Per throttle class: (window start, calls in it).
    calls: Mutex<HashMap<Class, (u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Faults {
    /// Whether `fault` is active for `device` at `now_ms`.
    pub(crate) fn active(&self, device: &str, fault: Fault, now_ms: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut w = lock(&self.windows);
        let Some(list) = w.get_mut(device) else {
            return false;
        };
        list.retain(|x| x.until_ms > now_ms);
        let hit = list.iter().any(|x| x.fault == fault && x.from_ms <= now_ms);
        if list.is_empty() {
            w.remove(device);
        }
        hit
    }

    /// When the active `fault` window of `device` ends (Unix ms), or `None` when none is
    /// active at `now_ms`.
    pub(crate) fn active_until(&self, device: &str, fault: Fault, now_ms: u64) -> Option<u64> {
        if !self.active(device, fault, now_ms) {
            return None;
        }
        lock(&self.windows).get(device).and_then(|list| {
            list.iter()
                .filter(|x| x.fault == fault && x.from_ms <= now_ms)
                .map(|x| x.until_ms)
                .max()
        })
    }

    /// Like [`Faults::admit_call`], and when refused, the Unix ms the throttle's window ends.
    pub(crate) fn admit_call_until(
        &self,
        tier: Option<Tier>,
        units: u32,
        class: Class,
        now_ms: u64,
    ) -> Result<(), u64> {
        if self.admit_call(tier, units, class, now_ms) {
            return Ok(());
        }
        let window = class.window_ms();
        Err(now_ms - now_ms % window + window)
    }

    fn add_window(&self, device: &str, fault: Fault, from_ms: u64, until_ms: u64) {
        self.any.store(true, Ordering::Release);
        lock(&self.windows)
            .entry(device.to_string())
            .or_default()
            .push(Window {
                fault,
                from_ms,
                until_ms,
            });
    }

    /// Charge a telemetry message of `bytes` to the day's quota; false when the quota is used
    /// up (the message is refused). Always true without a tier.
    pub(crate) fn charge_message(
        &self,
        tier: Option<Tier>,
        units: u32,
        bytes: usize,
        now_ms: u64,
    ) -> bool {
        self.meter.charge(
            tier,
            units,
            crate::quota::Billed::Telemetry,
            bytes,
            now_ms,
            true,
        )
    }

    /// Count a REST call of `class`; false when it is over the tier's throttle.
    pub(crate) fn admit_call(
        &self,
        tier: Option<Tier>,
        units: u32,
        class: Class,
        now_ms: u64,
    ) -> bool {
        let Some(tier) = tier else { return true };
        let window = class.window_ms();
        let start = now_ms - now_ms % window;
        let mut calls = lock(&self.calls);
        let e = calls.entry(class).or_insert((start, 0));
        if e.0 != start {
            *e = (start, 0);
        }
        if e.1 >= tier.allowance(class, units) {
            return false;
        }
        e.1 += 1;
        true
    }
}

/// The reason a `drop` (KillTcp) fault kicks a connection with: an AMQP one is dropped too.
pub(crate) const KILL_TCP: &str = "fault injected: KillTcp";
/// The reason a `shutdown` (ShutDownMqtt) fault closes a connection with.
pub(crate) const SHUT_DOWN_MQTT: &str = "fault injected: ShutDownMqtt";

/// Why a connection is closed by a fault (the hub's log and the event stream).
fn close_reason(fault: Fault) -> &'static str {
    match fault {
        Fault::Drop => KILL_TCP,
        Fault::Shutdown => SHUT_DOWN_MQTT,
        Fault::ExpireToken => "401003 IoTHubUnauthorized: sas token expired (fault injected)",
        Fault::AuthError => "401003 IoTHubUnauthorized (fault injected)",
        Fault::Throttle => "429001 ThrottlingException (fault injected)",
        Fault::Quota => "403002 IoTHubQuotaExceeded (fault injected)",
    }
}

/// Start `fault` for `device` after `after`, lasting `duration` (windowed faults); on the hub's
/// clock. Returns the Unix ms it starts and ends at.
pub(crate) fn inject(
    hub: &Arc<Hub>,
    device: &str,
    fault: Fault,
    after: Duration,
    duration: Duration,
) -> (u64, u64) {
    let from = hub.clock().unix_ms().saturating_add(ms(after));
    let until = if fault.windowed() {
        from.saturating_add(ms(duration))
    } else {
        from
    };
    if fault.windowed() {
        hub.faults.add_window(device, fault, from, until);
    }
    tracing::info!(device = %device, fault = fault.name(), from, until, "fault scheduled");
    // Throttling and quota act on the device's next calls; the others close its connections.
    if matches!(fault, Fault::Throttle | Fault::Quota) {
        return (from, until);
    }
    let (hub, device) = (hub.clone(), device.to_string());
    tokio::spawn(async move {
        let mut shutdown = hub.shutdown.subscribe();
        tokio::select! {
            () = hub.clock().sleep_until_ms(from) => {}
            () = crate::hub::until_shutdown(&mut shutdown) => return,
        }
        let reason = close_reason(fault);
        let conns = lock(&hub.conns);
        for (cid, e) in conns.iter() {
            if is_device_or_its_module(cid, &device) {
                let cmd = if fault == Fault::Shutdown {
                    ConnCmd::Close(reason)
                } else {
                    ConnCmd::Kick(reason)
                };
                let _ = e.tx.send(cmd);
            }
        }
    });
    (from, until)
}

/// The reason a CONNECT of `device` is refused by an active auth-error fault.
pub(crate) fn connect_refused(hub: &Hub, device: &str) -> Option<&'static str> {
    hub.faults
        .active(device, Fault::AuthError, hub.clock().unix_ms())
        .then_some("401003 IoTHubUnauthorized (auth-error fault injected)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_e2e_properties_are_read() {
        let r = requested(
            "AzIoTHub_FaultOperationType=KillTcp&AzIoTHub_FaultOperationCloseReason=boom&AzIoTHub_FaultOperationDelayInSecs=1&AzIoTHub_FaultOperationDurationInSecs=5",
        )
        .unwrap();
        assert_eq!(r.fault, Some(Fault::Drop));
        assert_eq!(r.delay, Duration::from_secs(1));
        assert_eq!(r.duration, Duration::from_secs(5));
        let bye = requested(
            "AzIoTHub_FaultOperationType=ShutDownMqtt&AzIoTHub_FaultOperationCloseReason=byebye",
        )
        .unwrap();
        assert_eq!(bye.fault, Some(Fault::Shutdown));
        let typed = requested("AzIoTHub_FaultOperationType=ShutDownMqtt").unwrap();
        assert_eq!(typed.fault, Some(Fault::Shutdown));
        let amqp = requested("AzIoTHub_FaultOperationType=KillAmqpSession").unwrap();
        assert_eq!(amqp.fault, None, "AMQP kinds do not apply to MQTT");
        assert!(requested("a=1&b=2").is_none());
    }

    #[test]
    fn the_quota_resets_each_utc_day_and_counts_chunks() {
        let f = Faults::default();
        let day = 20_000 * 86_400_000;
        // F1: 8,000 messages of 512 bytes; a 256 KiB message is 512 of them.
        for _ in 0..15 {
            assert!(f.charge_message(Some(Tier::F1), 1, 256 * 1024, day));
        }
        assert!(f.charge_message(Some(Tier::F1), 1, 100, day + 1));
        assert!(!f.charge_message(Some(Tier::F1), 1, 256 * 1024, day + 2));
        assert!(f.charge_message(Some(Tier::F1), 1, 256 * 1024, day + 86_400_000));
        assert!(f.charge_message(None, 1, usize::MAX, day));
    }

    #[test]
    fn throttles_count_per_window() {
        let f = Faults::default();
        let t = 1_000_000_020_000;
        for _ in 0..100 {
            assert!(f.admit_call(Some(Tier::S1), 1, Class::Registry, t));
        }
        assert!(!f.admit_call(Some(Tier::S1), 1, Class::Registry, t + 1));
        assert!(f.admit_call(Some(Tier::S1), 1, Class::Registry, t + 60_000));
        assert_eq!(Tier::S2.allowance(Class::TwinRead, 20), 200);
        assert_eq!(Tier::S2.allowance(Class::TwinRead, 2), 100);
    }
}
