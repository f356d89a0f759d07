//! The azsim hub side: this bench binary started again as a child process that serves a hub on
//! port 0, its state in a fresh directory (on disk or in memory, `--store`), so the hub, like
//! mosquitto, is its own process with its own runtime and address space; the devices are
//! registered through its REST API with keys chosen here.

use super::*;

/// Set (to the hub's state dir) in the child: serve the hub instead of running the bench.
pub const CHILD_ENV: &str = "AZSIM_LOAD_HUB_DIR";
/// Set to `memory` in the child for `--store memory`.
pub const STORE_ENV: &str = "AZSIM_LOAD_HUB_STORE";
/// Set to `full` in the child for `--sync full`.
pub const SYNC_ENV: &str = "AZSIM_LOAD_HUB_SYNC";
/// Set in the bench (not the child) to run another build's binary as the hub child.
pub const HUB_EXE_ENV: &str = "AZSIM_LOAD_HUB_EXE";
/// The child's TLS profile (`azure` or `modern`).
pub const TLS_ENV: &str = "AZSIM_LOAD_HUB_TLS";

/// The hub process. It runs on tokio's default multi-threaded runtime, as `azsim hub`
/// does, prints its `HubInfo` as one JSON line and stops cleanly when its stdin closes.
pub fn child_main(dir: PathBuf) {
    let mut cfg = azsim_emulator::HubConfig::new(dir);
    cfg.in_memory = std::env::var(STORE_ENV).is_ok_and(|v| v == "memory");
    match std::env::var(SYNC_ENV).as_deref() {
        Ok("full") => cfg.durability = azsim_emulator::store::Durability::PowerLoss,
        Ok("normal") => cfg.durability = azsim_emulator::store::Durability::ProcessCrash,
        _ => {}
    }
    if let Some(t) = std::env::var(TLS_ENV)
        .ok()
        .and_then(|v| azsim_emulator::state_dir::TlsProfile::parse(&v))
    {
        cfg.tls = t;
    }
    common::serve_hub_child(cfg, 0, 0, "load");
}

pub async fn run(
    p: &Arc<Params>,
    dir: &Path,
    tls: azsim_emulator::state_dir::TlsProfile,
) -> Result<RunStats, String> {
    // `AZSIM_LOAD_HUB_EXE`: the hub child from another build of this bench (an A/B of hub
    // changes behind the same clients); it speaks the same child protocol.
    let exe = match std::env::var_os(HUB_EXE_ENV) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().map_err(|e| format!("hub: {e}"))?,
    };
    // A fresh state dir per run: a disk store starts empty, like mosquitto.
    let state = dir.join(format!("hub-{}", next_run_number()));
    let mut cmd = tokio::process::Command::new(exe);
    cmd.env(CHILD_ENV, &state)
        .env(STORE_ENV, if p.disk { "disk" } else { "memory" })
        .env(SYNC_ENV, if p.sync_full { "full" } else { "normal" })
        .env(TLS_ENV, tls.name());
    let (mut child, info) = common::start_hub_child(cmd).await?;
    let tls = client_tls(&info.ca_file);
    let specs = register(&info, &tls, p.devices).await?;
    let pid = child.id().ok_or("hub: exited")?.to_string();
    let stats = run_load("azsim-hub", info.mqtt_port, tls, &specs, p, &pid).await;
    drop(child.stdin.take());
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(stats),
        Ok(Ok(status)) => Err(format!("hub: stopped with {status}")),
        Ok(Err(e)) => Err(format!("hub stop: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err("hub: did not stop within 30 s".into())
        }
    }
}

/// A name unique within this bench process.
fn next_run_number() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

async fn register(
    info: &azsim_emulator::HubInfo,
    tls: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Result<Vec<DeviceSpec>, String> {
    let owner = common::Owner::new(info, tls, 3600)?;
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("load-{i:05}");
        let key = random_key();
        let (owner, gate) = (owner.clone(), gate.clone());
        let hostname = info.hostname.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            owner.create_device(&id, &key, &random_key()).await?;
            Ok::<_, String>(device_spec(&hostname, &id, &key))
        }));
    }
    let mut specs = Vec::with_capacity(n);
    for t in tasks {
        specs.push(t.await.map_err(|e| e.to_string())??);
    }
    eprintln!(
        "load: azsim-hub: registered {n} devices over REST in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(specs)
}
