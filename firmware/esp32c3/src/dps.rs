//! The board's DPS path: with `AZSIM_ID_SCOPE`, `AZSIM_REGISTRATION_ID` and a key at build time
//! the board registers with the Device Provisioning Service first, through the shared loop's
//! provisioning mode (`azsim_mqtt::Provisioning`, the code `tests/it/firmware_loop/dps.rs` runs
//! against the local hub), then connects to the hub it was assigned.

use azsim_mqtt::{Assignment, DpsCredential, DpsIdentity, DpsNote, ProvisionError, Provisioning};
use azsim_proto::secret::Secret;
use embassy_time::{Duration, Timer};
use log::{info, warn};

use crate::hub::{HubConnector, SntpClock};

/// DPS's global endpoint, used unless `AZSIM_PROVISIONING_HOST` names another.
pub const GLOBAL_HOST: &str = "global.azure-devices-provisioning.net";
/// The first wait after a transient failure, seconds (doubled each time, up to five minutes).
const FIRST_RETRY_S: u64 = 5;
const MAX_RETRY_S: u64 = 300;

/// Registers `identity` with `key` (the device's own, or the one derived from the group key)
/// through `connector`, trying again after network trouble; returns the assignment, or the
/// refusal that trying again would not change.
///
/// # Errors
/// The [`ProvisionError`] of a refusal (wrong key, unknown registration, disabled enrollment).
pub async fn provision(
    connector: &mut HubConnector<'_>,
    clock: &mut SntpClock,
    identity: DpsIdentity<'_>,
    key: &str,
    rx: &mut [u8],
    tx: &mut [u8],
) -> Result<Assignment, ProvisionError> {
    let mut registration =
        Provisioning::new(identity, DpsCredential::Key(Secret::new(key)), rx, tx)?;
    let mut wait_s = FIRST_RETRY_S;
    loop {
        match registration.run(connector, clock, &mut log_note).await {
            Ok(a) => return Ok(a),
            Err(e) if e.is_transient() => {
                warn!("provisioning failed: {e}; trying again in {wait_s} s");
                Timer::after(Duration::from_secs(wait_s)).await;
                wait_s = (wait_s * 2).min(MAX_RETRY_S);
            }
            Err(e) => return Err(e),
        }
    }
}

fn log_note(n: DpsNote) {
    match n {
        DpsNote::Connecting => info!("dps: connecting"),
        DpsNote::Connected => info!("dps: connected, registering"),
        DpsNote::Assigning { retry_after_s } => {
            info!("dps: assigning, asking again in {retry_after_s} s");
        }
        DpsNote::Throttled {
            status,
            retry_after_s,
        } => {
            warn!("dps: throttled ({status}), asking again in {retry_after_s} s");
        }
    }
}
