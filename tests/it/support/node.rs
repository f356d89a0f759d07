//! The official Node SDKs' tests: `node` (env `AZSIM_NODE`, default `node`) with the packages a
//! script needs in `tests/node/node_modules` (`scripts/test` runs `npm ci` there, pinned by
//! `tests/node/package-lock.json`), and a hub on the fixed ports those SDKs dial.

use std::path::{Path, PathBuf};

use azsim_emulator::HubHandle;

use super::TestHub;

/// `tests/node`: the scripts and their `node_modules`.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// The `node` binary, when it runs and each of `packages` is installed in
/// `tests/node/node_modules`; else why the test cannot run.
pub fn node(packages: &[&str]) -> Result<PathBuf, String> {
    let node = match std::env::var_os("AZSIM_NODE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("node"),
    };
    let version = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .map_err(|e| format!("node not found ({}: {e})", node.display()))?;
    if !version.status.success() {
        return Err(format!("{} --version failed", node.display()));
    }
    let modules = node_dir().join("node_modules");
    for pkg in packages {
        if !modules.join(pkg).join("package.json").is_file() {
            return Err(format!(
                "tests/node/node_modules lacks {pkg} (run scripts/test, or npm ci in tests/node)"
            ));
        }
    }
    Ok(node)
}

/// A Node SDK test's hub on fixed ports of 127.0.0.1, with what the test needs around it. It
/// holds [`super::PORT_8883`] and the tempdir until it is dropped (after `hub`, whose
/// [`HubHandle::stop`] the test calls).
pub struct NodeHub {
    /// The `node` binary ([`node`]).
    pub node: PathBuf,
    pub hub: HubHandle,
    /// The REST and device helpers on `hub`.
    pub view: TestHub,
    /// An empty directory for the scripts' files (and their stderr).
    pub work: PathBuf,
    /// `{work}/service.cs`: the hub's service connection string.
    pub cs_file: PathBuf,
    _tmp: tempfile::TempDir,
    _port: tokio::sync::MutexGuard<'static, ()>,
}

/// [`node`] with `packages`, then the hub as [`super::start_on_fixed_ports`] starts it (MQTT
/// `mqtt_port`, HTTPS `https_port`, AMQPS `amqp_port`; 0 = a free port; `ports` names them when
/// they stay busy) under [`super::PORT_8883`]. `None` once [`super::skip`] has said why node or
/// a package is missing.
pub async fn hub_on_fixed_ports(
    packages: &[&str],
    mqtt_port: u16,
    https_port: u16,
    amqp_port: u16,
    ports: &str,
) -> Option<NodeHub> {
    let node = match node(packages) {
        Ok(n) => n,
        Err(why) => {
            super::skip(&why);
            return None;
        }
    };
    let port = super::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let hub = super::start_on_fixed_ports(
        &tmp.path().join("hub"),
        mqtt_port,
        https_port,
        |cfg| cfg.amqp_port = Some(amqp_port),
        ports,
    )
    .await;
    let view = TestHub::attach(&hub.info);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cs_file = work.join("service.cs");
    std::fs::write(&cs_file, &hub.info.service_connection_string).unwrap();
    Some(NodeHub {
        node,
        hub,
        view,
        work,
        cs_file,
        _tmp: tmp,
        _port: port,
    })
}

/// [`hub_on_fixed_ports`] on Azure's ports, all of them: MQTT 8883, HTTPS 443, AMQPS 5671.
pub async fn hub_on_azure_ports(packages: &[&str]) -> Option<NodeHub> {
    hub_on_fixed_ports(
        packages,
        8883,
        443,
        5671,
        "127.0.0.1:8883/443/5671, which the Node SDKs need (is another hub or broker using them?)",
    )
    .await
}
