//! `azsim fleet` (the real binary) against a local hub started here on ports 0 (the fleet
//! reuses it through its state dir): 200 devices all acknowledged, a method, a desired patch and
//! a C2D message reaching single devices of the fleet, three shards covering a fleet exactly
//! once, the Prometheus endpoint, the bulk registry call, DPS provisioning, and bad input.
//!
//! Split by feature: running fleets (`run`), the bulk registry call (`bulk`), DPS (`dps`), and what a fleet is
//! started with (`config`); the fleet command and its JSON line reader they share are here.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::support::TestHub;

mod bulk;
mod config;
mod dps;
mod dps_throttle;
mod run;

/// `azsim fleet --json` on the hub of `hub` (its state dir), environment cleared.
fn fleet(hub: &TestHub, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["fleet", "--json", "--state"])
        .arg(&hub.dir)
        .args(extra)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("AZSIM_FLEET_DPS_GROUP_KEY")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running fleet whose JSON lines are read as they come.
struct Fleet {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Fleet {
    fn spawn(mut cmd: tokio::process::Command) -> Fleet {
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
        Fleet {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first event from now on that `pred` accepts (within `secs`).
    async fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().await;
                    let err = (&mut self.stderr).await.unwrap_or_default();
                    panic!(
                        "azsim fleet ended ({status:?}) before {what}; stderr: {err}\nlast lines: {:#?}",
                        self.seen.iter().rev().take(5).collect::<Vec<_>>()
                    );
                }
                Err(_) => panic!(
                    "no {what} within {secs} s; last lines: {:#?}",
                    self.seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// SIGTERM, as Kubernetes sends.
    fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("azsim fleet exits")
            .expect("wait");
        status.code().unwrap_or(-1)
    }
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == name
}
