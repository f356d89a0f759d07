//! `azsim hub policy list` (the hub's shared access policies and their permissions, from its
//! `hub.json`; the keys stay there) and `azsim hub fault` (not Azure: a fault for a device of
//! the running hub, through `POST /emulator/devices/{id}/faults`).

use std::path::Path;
use std::process::ExitCode;

use azsim_emulator::HubInfo;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::hub::FaultConfig;
use crate::error::CliError;
use crate::out::outln;
use crate::service::{ServiceClient, Target, TargetInputs};

/// Prints the policies of the hub in `state`: one line each (`name  Right, Right`), or with
/// `json` one JSON array of `{"name", "rights"}`. Keys are never printed.
///
/// # Errors
/// No hub.json in `state` (exit 1).
pub fn policy_list(state: &Path, json: bool) -> Result<ExitCode, CliError> {
    let info = HubInfo::load(state).map_err(CliError::runtime)?;
    if info.policies.is_empty() {
        return Err(CliError::runtime(format!(
            "{}: no policies in hub.json (written by an older azsim hub; restart it)",
            state.display()
        )));
    }
    if json {
        let v: Vec<Value> = info
            .policies
            .iter()
            .map(|p| json!({"name": p.name, "rights": p.rights}))
            .collect();
        outln!("{}", Value::Array(v));
    } else {
        for p in &info.policies {
            outln!("{:<18} {}", p.name, p.rights.join(", "));
        }
        outln!("(keys: {})", state.join(azsim_emulator::HUB_JSON).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Injects the fault and prints the hub's answer (JSON: device, kind, startsAt, endsAt).
///
/// # Errors
/// No hub in the state dir, an unknown device, a transport error (exit 1).
pub async fn fault(cfg: FaultConfig) -> Result<ExitCode, CliError> {
    let target = Target::resolve_with(
        TargetInputs {
            state_dir: Some(cfg.state.clone()),
            ..TargetInputs::default()
        },
        None,
        None,
    )
    .map_err(|e| CliError::runtime(e.to_string()))?;
    let client = ServiceClient::new(&target).map_err(CliError::runtime)?;
    let path = format!(
        "/emulator/devices/{}/faults",
        crate::service::client::path_segment(&cfg.device)
    );
    let (rb, url) = client.request(Method::POST, &path);
    let body = json!({"kind": cfg.kind, "afterSeconds": cfg.after, "forSeconds": cfg.lasting});
    let v = client
        .json(rb.json(&body), &url)
        .await
        .map_err(CliError::runtime)?;
    outln!("{v}");
    Ok(ExitCode::SUCCESS)
}
