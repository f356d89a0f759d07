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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestHub;
use crate::support::json_child::JsonChild;

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

/// `azsim dps group create NAME --primary-key KEY --secondary-key KEY` on the hub's DPS.
async fn create_group(hub: &TestHub, name: &str, key: &str) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["dps", "group", "create", name, "--json"])
        .args(["--primary-key", key, "--secondary-key", key])
        .arg("--state")
        .arg(&hub.dir)
        .env_remove("PROVISIONING_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output()
        .await
        .expect("azsim dps runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running fleet whose JSON lines are read as they come.
type Fleet = JsonChild;

/// The fleet's own signals and exit.
impl JsonChild {
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
