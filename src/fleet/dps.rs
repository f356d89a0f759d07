//! `azsim fleet --group-key`: every device of the fleet registers through the Device
//! Provisioning Service (an enrollment group with symmetric keys) before it runs. Registration
//! id = device id `{prefix}{i}`, its key derived from the group key
//! (`azsim_proto::sas::derive_group_key`), the exchange itself `azsim run --dps`'s
//! ([`crate::device::provision::provision`]). The assigned hub and device id are where the
//! device then runs, as any fleet device.
//!
//! A registration that fails is counted by kind (`dps_refused_401`, `dps_timeout`, ...) and
//! tried again after a jittered, doubling backoff, so a refusing or throttling DPS slows the
//! fleet down instead of stopping it. A 429 or 5xx answered inside one exchange is waited out
//! by the exchange itself (its `retry-after`, `azsim_proto::dps`) and counted as it happens
//! (`dps_throttled_429`, `dps_throttled_503`, ...); one that outlasts the exchange ends as
//! `dps_timeout`. A connection the server closes before the TLS handshake is done (a
//! provisioning endpoint shedding unauthenticated connections, as the local hub does past its
//! pre-auth cap or connect deadline) is `dps_closed_before_auth`, not `dps_tls`, which is kept
//! for TLS itself failing (the certificate, an alert, a protocol error). Over WebSockets an
//! upgrade the server answers with an HTTP status is `dps_upgrade_refused_<status>` (the local
//! hub's 503 past its pre-auth cap), any other upgrade failure `dps_upgrade_failed`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use azsim_proto::secret::Secret;
use tokio::sync::watch;

use super::FleetError;
use super::device::{Common, DeviceSpec, run_device};
use crate::device::driver::Credential;
use crate::device::local_hub::LocalHub;
use crate::device::net::Transport;
use crate::device::output::Output;
use crate::device::provision::{ProvisionConfig, provision_noting};

/// Where and how the fleet's devices register, validated by the CLI.
#[derive(Debug)]
pub struct DpsFleet {
    /// The enrollment group's key (base64).
    pub group_key: Secret<String>,
    /// The id scope (`None`: the local hub's).
    pub id_scope: Option<String>,
    /// `--provisioning-host` (`None`: the local hub's DPS, started here when none runs).
    pub host: Option<(String, Option<u16>)>,
    /// Local hub state dir.
    pub state_dir: PathBuf,
    /// MQTT port of a local hub started here.
    pub port: Option<u16>,
}

/// Everything a device needs to register, shared by the fleet.
#[derive(Debug)]
pub struct Plan {
    /// DPS host.
    pub host: String,
    /// Its MQTT (WebSockets: HTTPS) port.
    pub port: u16,
    /// The id scope.
    pub id_scope: String,
    /// The group key (base64).
    pub group_key: Secret<String>,
    /// CA to trust for DPS (and the hub it assigns).
    pub ca_file: Option<PathBuf>,
    /// The port devices connect to on the assigned hub, when it is known here (the local
    /// hub's; the HTTPS port with WebSockets); otherwise the assignment's, or 8883 / 443.
    pub hub_port: Option<u16>,
}

/// Where the devices register: `--provisioning-host`, or the local hub's DPS (the hub of the
/// state dir, started here when none runs; returned for the caller to stop).
///
/// # Errors
/// When the local hub cannot be used or has no DPS.
pub async fn plan(
    d: &DpsFleet,
    ca_file: Option<PathBuf>,
    transport: Transport,
    out: &Output,
) -> Result<(Plan, Option<LocalHub>), FleetError> {
    let ws = transport == Transport::WebSocket;
    let group_key = d.group_key.clone();
    if let Some((host, port)) = &d.host {
        let default_port = if ws {
            crate::device::net::WEBSOCKET_PORT
        } else {
            azsim_proto::endpoint::MQTT_PORT
        };
        let plan = Plan {
            host: host.clone(),
            port: port.unwrap_or(default_port),
            // The CLI requires --id-scope with --provisioning-host.
            id_scope: d.id_scope.clone().unwrap_or_default(),
            group_key,
            ca_file,
            hub_port: None,
        };
        return Ok((plan, None));
    }
    let hub = LocalHub::ensure(&d.state_dir, d.port, out).await?;
    let info = hub.info().clone();
    let id_scope = match &d.id_scope {
        Some(s) => s.clone(),
        None if info.id_scope.is_empty() => {
            hub.stop().await;
            return Err(FleetError::Other(
                "the local hub serves no DPS (a hub from an older azsim: restart it)".into(),
            ));
        }
        None => info.id_scope.clone(),
    };
    let port = if ws { info.https_port } else { info.mqtt_port };
    let plan = Plan {
        host: info.hostname.clone(),
        port,
        id_scope,
        group_key,
        ca_file: ca_file.or_else(|| Some(hub.ca_file())),
        hub_port: Some(port),
    };
    Ok((plan, Some(hub)))
}

/// The key of registration `registration_id` in the group of `group_key`.
fn device_key(group_key: &Secret<String>, registration_id: &str) -> Option<Secret<String>> {
    let mut key = String::new();
    azsim_proto::sas::derive_group_key(&mut key, group_key.expose(), registration_id).ok()?;
    Some(Secret::new(key))
}

/// The error kind of a failed registration, from its one-line diagnosis (statuses stay
/// apart: `dps_refused_401` is a wrong key or a disabled group, `dps_refused_404` no group).
pub fn error_kind(diagnosis: &str) -> String {
    if let Some(rest) = diagnosis.strip_prefix("dps refused registration ") {
        // "{id}: {status}[ {code}]: {message}"
        let status = rest
            .split_once(": ")
            .map(|(_, s)| s.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
            .unwrap_or("");
        if !status.is_empty() {
            return format!("dps_refused_{status}");
        }
        return "dps_refused".into();
    }
    // `--websockets`: the upgrade refused with an HTTP status (the local hub answers 503 past
    // its pre-auth cap), or failing otherwise.
    if let Some(rest) = diagnosis.strip_prefix("websocket upgrade at ") {
        let status = rest
            .split_once("answered http ")
            .map(|(_, s)| s.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
            .unwrap_or("");
        return if status.is_empty() {
            "dps_upgrade_failed".into()
        } else {
            format!("dps_upgrade_refused_{status}")
        };
    }
    // The texts of `crate::device::provision` and the connector's failure slot.
    let kind = if diagnosis.contains("did not assign") {
        "dps_timeout"
    } else if diagnosis.contains("refused the connection") {
        "dps_connection_refused"
    } else if diagnosis.contains("cannot connect")
        || diagnosis.contains("cannot resolve")
        || diagnosis.contains("unreachable")
    {
        "dps_unreachable"
    } else if diagnosis.starts_with("tls handshake with") && closed_by_peer(diagnosis) {
        "dps_closed_before_auth"
    } else if diagnosis.starts_with("tls") || diagnosis.contains("tls handshake") {
        "dps_tls"
    } else if diagnosis.contains("closed the connection")
        || diagnosis.contains("lost")
        || diagnosis.starts_with("connection to dps")
    {
        "dps_connection_lost"
    } else {
        "dps_other"
    };
    kind.into()
}

/// Whether a failed handshake's I/O error says the server ended the connection (tokio-rustls'
/// "tls handshake eof", a reset, a broken pipe), not that TLS itself failed.
fn closed_by_peer(diagnosis: &str) -> bool {
    let cause = diagnosis.rsplit_once("failed: ").map_or("", |(_, c)| c);
    ["eof", "reset", "broken pipe", "aborted"]
        .iter()
        .any(|w| cause.contains(w))
}

/// Registers device `index` (`registration_id`) until DPS assigns it or `stop` turns true,
/// then runs it on its hub as [`run_device`] does.
pub async fn provision_and_run(
    plan: Arc<Plan>,
    common: Arc<Common>,
    index: u64,
    registration_id: String,
    stop: watch::Receiver<bool>,
) {
    let stats = &common.stats;
    let Some(key) = device_key(&plan.group_key, &registration_id) else {
        stats.error("dps_bad_group_key");
        return;
    };
    let cfg = ProvisionConfig {
        host: plan.host.clone(),
        port: plan.port,
        transport: common.transport,
        id_scope: plan.id_scope.clone(),
        registration_id,
        key: Some(key.clone()),
        client_cert: None,
        ca_file: plan.ca_file.clone(),
        payload: None,
    };
    let mut backoff = common.restart_backoff.0;
    let assigned = loop {
        let began = Instant::now();
        let mut s = stop.clone();
        // A 429 or 5xx inside the exchange is waited out there; it is counted here.
        let mut note = |n: azsim_mqtt::DpsNote| {
            if let azsim_mqtt::DpsNote::Throttled { status, .. } = n {
                stats.error(format!("dps_throttled_{status}"));
            }
        };
        let result = tokio::select! {
            r = provision_noting(&cfg, &mut note) => r,
            _ = s.wait_for(|v| *v) => return,
        };
        match result {
            Ok(a) => {
                stats.provision_time.record(began.elapsed());
                stats.provisioned.fetch_add(1, Ordering::Relaxed);
                break a;
            }
            Err(e) => {
                stats.error(error_kind(&e.0));
                tracing::debug!(device = %cfg.registration_id, "registration failed: {e}");
            }
        }
        let wait = backoff.mul_f64(0.5 + f64::from(rand::random::<u16>()) / f64::from(u16::MAX));
        let mut s = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = s.wait_for(|v| *v) => return,
        }
        backoff = (backoff * 2).min(common.restart_backoff.1);
    };
    let Some((hub_host, assigned_port)) =
        azsim_proto::connection_string::split_host_port(&assigned.assigned_hub)
            .filter(|(h, _)| !h.is_empty())
    else {
        stats.error("dps_unusable_hub_name");
        return;
    };
    let port = match (plan.hub_port, common.transport) {
        (Some(p), _) => p,
        (None, Transport::WebSocket) => crate::device::net::WEBSOCKET_PORT,
        (None, Transport::Mqtt) => assigned_port.unwrap_or(azsim_proto::endpoint::MQTT_PORT),
    };
    let spec = DeviceSpec {
        index,
        device_id: assigned.device_id,
        hub_host: hub_host.to_owned(),
        connect_host: hub_host.to_owned(),
        port,
        credential: Credential::Key(key),
    };
    run_device(spec, common, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_kinded_by_status_and_cause() {
        for (text, kind) in [
            (
                "dps refused registration sim-1: 401 401002: wrong key: check --id-scope",
                "dps_refused_401",
            ),
            ("dps refused registration sim-1: 404: no", "dps_refused_404"),
            (
                "dps at h:8883 did not assign registration sim-1 within 60 s",
                "dps_timeout",
            ),
            (
                "cannot connect to h:8883: connection refused",
                "dps_unreachable",
            ),
            ("cannot resolve host no-such.invalid", "dps_unreachable"),
            (
                "tls: the server certificate of h:8883 is not valid for the name h",
                "dps_tls",
            ),
            (
                "tls handshake with h:8883 failed: received corrupt message",
                "dps_tls",
            ),
            (
                "tls handshake with h:8883 failed: tls handshake eof",
                "dps_closed_before_auth",
            ),
            (
                "tls handshake with h:8883 failed: connection reset by peer",
                "dps_closed_before_auth",
            ),
            (
                "websocket upgrade at wss://h:443/$iothub/websocket failed: the server answered http 503",
                "dps_upgrade_refused_503",
            ),
            (
                "websocket upgrade at wss://h:443/$iothub/websocket failed: connection reset",
                "dps_upgrade_failed",
            ),
            ("connection to h:8883 lost: reset", "dps_connection_lost"),
            ("h:8883 closed the connection", "dps_connection_lost"),
            (
                "dps at h:8883 refused the connection (NotAuthorized): check",
                "dps_connection_refused",
            ),
            ("something new", "dps_other"),
        ] {
            assert_eq!(error_kind(text), kind, "{text}");
        }
    }

    #[test]
    fn device_keys_are_the_group_derivation_and_differ_per_device() {
        let g = Secret::new("c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC0xMjM=".to_owned());
        let a = device_key(&g, "sim-1").unwrap();
        let b = device_key(&g, "sim-2").unwrap();
        assert_ne!(a.expose(), b.expose());
        let mut want = String::new();
        azsim_proto::sas::derive_group_key(&mut want, g.expose(), "sim-1").unwrap();
        assert_eq!(a.expose(), &want);
        assert!(device_key(&Secret::new("not base64!".to_owned()), "x").is_none());
    }
}
