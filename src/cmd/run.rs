//! `azsim run`: connect as a device and behave like the reference firmware until `--count`,
//! `--duration` or Ctrl-C.
//!
//! With no connection string it runs against the local hub: the one already serving the state
//! dir (its `hub.json` names a live process), or one started in this process, and registers
//! `sim-device-1` there if it is missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::run::{DeviceTarget, RunSettings};
use serde_json::json;

use crate::device::driver::{self, RunConfig};
use crate::device::local_hub::LocalHub;
use crate::device::net::Transport;
use crate::device::output::Output;
use crate::device::template::Template;
use crate::error::{CliError, UsageError};

/// The device `azsim run` registers and runs on the local hub: `sim-device-1`, or the next
/// number when another run is connected as that already.
pub const SIM_DEVICE_PREFIX: &str = "sim-device-";

/// Runs the device.
///
/// # Errors
/// [`CliError::Runtime`] when the hub refuses the device (with the diagnosis), cannot be
/// reached, or the local hub cannot be started.
pub async fn run(s: RunSettings) -> Result<ExitCode, CliError> {
    let out = Output::stdout(s.json);
    let shutdown = super::interrupted();
    let provisioned = match &s.dps {
        Some(dps) => Some(crate::device::provision::provisioned_target(&s, dps, &out).await?),
        None => None,
    };
    let (target, ca_file, local) = match (provisioned, s.target.clone()) {
        (Some(p), _) => p,
        (None, Some(t)) => (t, s.ca_file.clone(), None),
        (None, None) => {
            let local = LocalHub::ensure(&s.state_dir, s.port, &out)
                .await
                .map_err(CliError::runtime)?;
            let mut target = match &s.client_cert {
                // An X.509 device runs as the id its certificate names (registered by the user).
                Some(cert) => super::cert::local_x509_target(local.info(), cert.clone())?,
                None => local
                    .free_device_target(SIM_DEVICE_PREFIX)
                    .await
                    .map_err(CliError::runtime)?,
            };
            if s.transport == Transport::WebSocket {
                // The local hub serves WebSockets on its HTTPS listener.
                target.port = local.info().https_port;
            }
            let ca = s.ca_file.clone().or_else(|| Some(local.ca_file()));
            print_hints(&out, &s.state_dir, &local, &target.device_id);
            (target, ca, Some(local))
        }
    };
    let cfg = config(&s, target, ca_file)?;
    let result = tokio::select! {
        r = driver::run(cfg, out, shutdown) => r,
        () = crate::out::stdout_closed() => crate::out::reader_gone(),
    };
    if let Some(local) = local {
        local.stop().await;
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::runtime(e)),
    }
}

fn config(
    s: &RunSettings,
    t: DeviceTarget,
    ca_file: Option<PathBuf>,
) -> Result<RunConfig, CliError> {
    let payload = s
        .payload
        .as_ref()
        .map(|src| Template::new(src.clone(), s.seed))
        .transpose()
        .map_err(|e| UsageError::new("--payload", e))?;
    Ok(RunConfig {
        hub_host: t.hub_host,
        connect_host: t.connect_host,
        port: t.port,
        transport: s.transport,
        device_id: t.device_id,
        module_id: t.module_id,
        credential: t.credential,
        ca_file,
        interval_ms: s.interval_ms,
        count: s.count,
        duration: s.duration,
        payload,
        properties: s.properties.clone(),
        content_type: s.content_type.clone(),
        methods: s.methods.clone(),
        token_ttl: s.token_ttl,
        seed: s.seed,
        model_id: s.model_id.clone(),
        keep_alive: s.keep_alive,
        max_queue: s.max_queue,
        // A device that cannot connect the first time says why and exits; once connected it
        // keeps reconnecting.
        max_initial_attempts: Some(1),
        state_dir: s.state_dir.clone(),
    })
}

/// How to drive the device from another terminal: a note on a terminal, a `local_hub` event
/// (with whether the hub was started here or reused) in JSON mode.
fn print_hints(out: &Output, state_dir: &Path, local: &LocalHub, device: &str) {
    let state = if state_dir == Path::new(".azsim/hub") {
        String::new()
    } else {
        format!(" --state {}", state_dir.display())
    };
    let hints = [
        format!("azsim invoke {device} ping{state}"),
        format!("azsim twin patch {device} '{{\"telemetryInterval\":5}}'{state}"),
        format!("azsim c2d send {device} hello{state}"),
        format!("azsim monitor{state}"),
    ];
    if out.is_json() {
        let info = local.info();
        out.emit(
            "local_hub",
            json!({
                "state": state_dir.display().to_string(),
                "started": local.started_here(),
                "mqtt_port": info.mqtt_port,
                "https_port": info.https_port,
                "device_id": device,
                "try": hints,
            }),
            String::new,
        );
    } else {
        out.note(&format!(
            "running {device} on the local hub; from another terminal try:\n  {}",
            hints.join("\n  ")
        ));
    }
}
