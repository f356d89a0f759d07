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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::support::TestHub;

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
pub(crate) struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Running {
    pub(crate) fn spawn(mut cmd: tokio::process::Command) -> Running {
        let mut child = cmd.spawn().expect("azsim runs");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for the first event (from now on) that `pred` accepts.
    pub(crate) async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => panic!("azsim ended before {what}: {:#?}", self.seen),
                Err(_) => panic!("no {what} within 30 s: {:#?}", self.seen),
            }
        }
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
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        self.finish().await
    }

    async fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("azsim exits")
            .unwrap();
        while let Some(v) = self.lines.recv().await {
            self.seen.push(v);
        }
        let stderr = self.stderr.await.unwrap();
        (status, self.seen, stderr)
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
