//! What the bench binaries (`src/bin/azsim-bench-*.rs`) share: their flags, a hub in its own
//! process, the service client for it, and `/proc` figures. Benches print numbers; nothing
//! here is used by `azsim` itself, and none of it is a stable API.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use azsim_emulator::HubInfo;

use crate::service::client::ServiceClient;
use crate::service::target::{Target, TargetInputs};

/// The value after `name` on the command line (`--devices 1000`).
pub fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

/// Whether `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().skip(1).any(|a| a == name)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB; 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `azsim hub --in-memory` on free ports in its own process, as a user runs it (so its memory
/// and CPU are not the bench's), with a state dir under the system temp dir.
#[derive(Debug)]
pub struct HubProcess {
    /// The hub process (killed when dropped).
    pub child: tokio::process::Child,
    /// What the hub wrote about itself once it was up.
    pub info: HubInfo,
    /// The bench's temp dir (the hub's state is `dir/hub`).
    pub dir: PathBuf,
}

impl HubProcess {
    /// Starts `azsim` (the binary at that path) as a hub for the bench `name`, and waits up to
    /// a minute for it to be up.
    ///
    /// # Errors
    /// Why the hub could not be started, or that it did not come up.
    pub async fn start(azsim: &Path, name: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let state = dir.join("hub");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = tokio::process::Command::new(azsim)
            .args([
                "hub",
                "--in-memory",
                "--mqtt-port",
                "0",
                "--https-port",
                "0",
            ])
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {} hub: {e}", azsim.display()))?;
        let pid = child.id().unwrap_or(0);
        let started = Instant::now();
        loop {
            match HubInfo::load(&state) {
                Ok(info) if info.pid == pid => return Ok(Self { child, info, dir }),
                _ if started.elapsed() > Duration::from_secs(60) => {
                    return Err("the hub did not start within 60 s".into());
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }
}

/// The service (REST) client for the hub `info` describes, as `azsim device create` uses.
///
/// # Errors
/// The hub's connection string or CA file is unusable.
pub fn service_client(info: &HubInfo) -> Result<ServiceClient, String> {
    let target = Target::resolve_with(
        TargetInputs {
            connection_string: Some(info.service_connection_string.clone().into()),
            ca: Some(info.ca_file.clone()),
            state_dir: None,
        },
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    ServiceClient::new(&target).map_err(|e| e.to_string())
}
