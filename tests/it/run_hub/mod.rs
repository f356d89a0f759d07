//! `azsim run` (the real binary) against the local hub over TLS: telemetry, C2D, methods, twin,
//! token renewal, a hub restart, and a wrong key.
//!
//! Split by feature: `telemetry`, `methods_twin_c2d`, `reconnect_renewal`, `identities` (who a
//! run connects as), `diagnosis` (refusals named) and `bad_input`; the run command, its JSON
//! line reader and the hub queries they share are here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestHub;
use crate::support::json_child::JsonChild;

mod bad_input;
mod diagnosis;
mod identities;
mod methods_twin_c2d;
mod reconnect_renewal;
mod telemetry;

/// `azsim run --json` for `cs` against `hub`, with the environment cleared of azsim variables.
fn azsim_run(hub: &TestHub, cs: &str, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--connection-string", cs, "--ca"])
        .arg(&hub.ca_file)
        .args(extra)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `azsim run` whose JSON lines are read as they come.
pub(crate) struct Running(JsonChild);

impl Running {
    pub(crate) fn spawn(cmd: tokio::process::Command) -> Running {
        Running(JsonChild::spawn(cmd))
    }

    /// Waits for the first event (from now on) that `pred` accepts (within 30 s).
    pub(crate) async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.0.wait_for(what, 30, pred).await
    }

    pub(crate) async fn event(&mut self, name: &str) -> Value {
        self.wait_for(name, |v| v["event"] == name).await
    }

    /// Ctrl-C, then everything it printed.
    pub(crate) async fn interrupt(self) -> (ExitStatus, Vec<Value>, String) {
        self.signal("-INT").await
    }

    /// SIGTERM (`docker stop`, systemd), then everything it printed.
    pub(crate) async fn terminate(self) -> (ExitStatus, Vec<Value>, String) {
        self.signal("-TERM").await
    }

    async fn signal(self, sig: &str) -> (ExitStatus, Vec<Value>, String) {
        let pid = self.0.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        self.finish().await
    }

    async fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.0.child.wait())
            .await
            .expect("azsim exits")
            .unwrap();
        self.0.drain().await;
        let stderr = self.0.stderr.await.unwrap();
        (status, self.0.seen, stderr)
    }
}

fn events<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["event"] == name).collect()
}

async fn recent_telemetry(hub: &TestHub, device: &str) -> Vec<Value> {
    let (s, v) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .cloned()
        .collect()
}
