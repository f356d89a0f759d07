//! DPS's throttles on the device API (register and operation-status requests, over MQTT and
//! HTTPS), answered as DPS does: status 429 with a `retry-after` (MQTT: in the response topic;
//! HTTPS: the `Retry-After` header) and DPS's error body.
//!
//! - **Azure's rate, with `--tier`**: Microsoft Learn, "Azure IoT Hub Device Provisioning
//!   Service quotas and limits" (includes/iot-dps-limits.md): "Device registrations:
//!   1,000/min/service" per unit, over it 429 "Too Many Requests" (and "Best practices for
//!   large-scale IoT device deployments": "registering all the devices at once may result in
//!   the DPS instance being overwhelmed due to throttling (HTTP response code 429 ...)"). The
//!   local DPS is one unit, and counts every register request of its id scope, attested or not
//!   (each is an operation to Azure); polls are not registrations. The same page's "Device
//!   polling operation: 5/10 sec/device" is applied to each registration id's operation-status
//!   polls (10 s windows). Both off without `--tier`, as the hub's own throttles are.
//! - **A throttle fault (not Azure)**: `azsim hub fault ID throttle` (or an in-band
//!   `InvokeThrottling`) throttles the registration id's register and poll requests too, for
//!   the fault's window, so a device's retry of a throttled registration can be seen working.
//!
//! The error code is 429001 and the message DPS's "Too many requests" (inferred: Microsoft
//! Learn lists 429 for DPS throttling but not the body's `errorCode`).

use std::collections::HashMap;
use std::sync::Mutex;

use super::DpsError;
use crate::fault::{Class, Fault};
use crate::hub::Hub;

/// Device registrations a minute per DPS unit (the document above).
pub(crate) const REGISTRATIONS_PER_MINUTE: u64 = 1_000;
/// Operation-status polls a device may make per window (the document above).
const POLLS_PER_WINDOW: u64 = 5;
const POLL_WINDOW_MS: u64 = 10_000;

/// Polls per registration id in the current 10 s window.
#[derive(Debug, Default)]
pub(crate) struct Polls(Mutex<HashMap<String, (u64, u64)>>);

impl Polls {
    /// Counts a poll of `id` at `now_ms`; `Err(window end)` when it is one too many.
    fn admit(&self, id: &str, now_ms: u64) -> Result<(), u64> {
        let start = now_ms - now_ms % POLL_WINDOW_MS;
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Ids from earlier windows count for nothing: dropped once there are many.
        if m.len() > 10_000 {
            m.retain(|_, (s, _)| *s == start);
        }
        let e = m.entry(id.to_string()).or_insert((start, 0));
        if e.0 != start {
            *e = (start, 0);
        }
        if e.1 >= POLLS_PER_WINDOW {
            return Err(start + POLL_WINDOW_MS);
        }
        e.1 += 1;
        Ok(())
    }
}

/// The 429 to answer, waiting until `until_ms` (whole seconds, at least 1).
fn throttled(now_ms: u64, until_ms: u64, why: &str) -> DpsError {
    let secs = until_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    let mut e = DpsError::new(429, 429001, format!("Too many requests: {why}"));
    e.retry_after = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    e
}

/// A throttle fault of `registration_id`, if one is active.
fn fault(hub: &Hub, registration_id: &str, now_ms: u64) -> Result<(), DpsError> {
    match hub
        .faults
        .active_until(registration_id, Fault::Throttle, now_ms)
    {
        Some(until) => Err(throttled(now_ms, until, "throttle fault injected")),
        None => Ok(()),
    }
}

/// Before a register request is looked at: the fault, then the scope's registration rate.
///
/// # Errors
/// The 429 to answer.
pub(crate) fn check_register(hub: &Hub, registration_id: &str) -> Result<(), DpsError> {
    let now = hub.clock().unix_ms();
    fault(hub, registration_id, now)?;
    hub.faults
        .admit_call_until(hub.cfg.tier, 1, Class::DpsRegistration, now)
        .map_err(|until| {
            throttled(
                now,
                until,
                "the id scope's device registrations per minute are used up",
            )
        })
}

/// Before an operation-status poll: the fault, then (with a tier) the device's poll rate.
///
/// # Errors
/// The 429 to answer.
pub(crate) fn check_poll(hub: &Hub, registration_id: &str) -> Result<(), DpsError> {
    let now = hub.clock().unix_ms();
    fault(hub, registration_id, now)?;
    if hub.cfg.tier.is_none() {
        return Ok(());
    }
    hub.dps.polls.admit(registration_id, now).map_err(|until| {
        throttled(
            now,
            until,
            "a device may poll its registration 5 times in 10 seconds",
        )
    })
}
