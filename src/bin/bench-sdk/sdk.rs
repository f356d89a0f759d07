//! The SDK phase of `azsim-bench-fleet`: the official Python and Node device SDKs and
//! `azsim fleet` sending the same QoS 1 telemetry to one hub on 127.0.0.1:8883, in one run,
//! each process's CPU time per 1,000 acknowledged messages side by side.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use azsim::bench::service_client;
use azsim_emulator::HubInfo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Fleet, cpu_secs};

/// The telemetry body every client sends (the SDK scripts build the same JSON).
const PAYLOAD: &str = r#"{"device_id":"{{device_id}}","temperature":{{temperature}},"humidity":{{humidity}},"seq":{{seq}}}"#;

/// The devices' key on the bench hub (a bench key, not anyone's secret; never printed).
const DEVICE_KEY: &str = "YXpzaW0tYmVuY2gtc2RrLWRldmljZS1rZXktMDEyMzQ1Njc4OQ==";

/// Seconds each SDK process sends after every device is connected before the measured window.
const WARMUP_S: u64 = 3;

/// `azsim hub --in-memory` on 127.0.0.1:8883 (hostname `localhost`) in its own process.
struct Hub8883 {
    child: tokio::process::Child,
    info: HubInfo,
    dir: PathBuf,
}

impl Hub8883 {
    async fn start(azsim: &Path) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("azsim-bench-sdk-{}", std::process::id()));
        let state = dir.join("hub");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut child = tokio::process::Command::new(azsim)
            .args([
                "hub",
                "--in-memory",
                "--mqtt-port",
                "8883",
                "--https-port",
                "0",
            ])
            .args(["--hostname", "localhost", "--dashboard-port", "off"])
            .args(["--amqp-port", "0", "--amqp-dev-port", "0"])
            .arg("--state")
            .arg(&state)
            // The hub logs every connection; the bench prints figures only.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {} hub: {e}", azsim.display()))?;
        let pid = child.id().unwrap_or(0);
        let started = Instant::now();
        loop {
            if let Ok(info) = HubInfo::load(&state)
                && info.pid == pid
            {
                return Ok(Self { child, info, dir });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the hub on 8883 exited ({status}): is 8883 taken?"));
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("the hub on 8883 did not start within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The Node packages of benches/sdk/package.json in target/bench-node (installed with npm when
/// missing): the `NODE_PATH` to use, or why not.
fn node_modules(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target").join("bench-node");
    let modules = dir.join("node_modules");
    let want = std::fs::read_to_string(root.join("benches/sdk/package.json"))
        .map_err(|e| format!("benches/sdk/package.json: {e}"))?;
    let have = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
    if have == want && modules.join("azure-iot-device-mqtt").is_dir() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("package.json"), &want).map_err(|e| format!("{e}"))?;
    let status = std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if !status.success() {
        return Err(format!(
            "npm install in {} failed ({status})",
            dir.display()
        ));
    }
    Ok(modules)
}

/// What one measured client process did in its window.
struct Measured {
    /// CPU seconds in the window.
    cpu: f64,
    /// Acknowledged messages in the window.
    acked: u64,
    /// The window, seconds.
    secs: f64,
    errors: u64,
}

/// Runs one SDK script (`program` + `args`) and measures its CPU between its `start` and `end`
/// lines.
async fn sdk_process(
    program: PathBuf,
    args: Vec<OsString>,
    node_path: Option<PathBuf>,
) -> Result<Measured, String> {
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(p) = node_path {
        cmd.env("NODE_PATH", p);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut start: Option<(f64, Instant, u64)> = None;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| "no end within 600 s".to_owned())?
            .map_err(|e| format!("read: {e}"))?
            .ok_or_else(|| "the process ended before its end line".to_owned())?;
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        let acked = v["acked"].as_u64().unwrap_or(0);
        match (v["event"].as_str(), start) {
            (Some("start"), _) => start = Some((cpu_secs(pid), Instant::now(), acked)),
            (Some("end"), Some((cpu0, t0, acked0))) => {
                let (cpu1, secs) = (cpu_secs(pid), t0.elapsed().as_secs_f64());
                let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
                return Ok(Measured {
                    cpu: cpu1 - cpu0,
                    acked: acked.saturating_sub(acked0),
                    secs,
                    errors: v["errors"].as_u64().unwrap_or(0),
                });
            }
            (Some("error"), _) => return Err(format!("the SDK process failed: {line}")),
            _ => {}
        }
    }
}

/// One SDK's side of a round: its devices split into processes of at most `per_process`,
/// all started at once, each measured over its own window (they overlap: each starts once its
/// devices are connected plus the warm-up).
struct SdkSide {
    name: &'static str,
    program: PathBuf,
    script: &'static str,
    node_path: Option<PathBuf>,
    per_process: usize,
}

/// What all processes of one SDK did: CPU seconds per 1,000 acknowledged messages (CPU and
/// messages each summed over the processes), acknowledged messages per second (the sum of each
/// process's rate), errors, processes.
struct Summed {
    cpu_per_k: f64,
    rate: f64,
    errors: u64,
    processes: usize,
}

/// Runs `side` over the connection strings `strings` (`per_process` a file each, written into
/// `dir`), with `tail` (CA file, interval, warm-up, seconds) after each file.
async fn sdk_side(
    side: &SdkSide,
    root: &Path,
    dir: &Path,
    strings: &[String],
    tail: &[OsString],
) -> Result<Summed, String> {
    let mut set = tokio::task::JoinSet::new();
    let chunks: Vec<&[String]> = strings.chunks(side.per_process.max(1)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let file = dir.join(format!("{}-{i}.txt", side.script));
        std::fs::write(&file, chunk.concat()).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut args: Vec<OsString> = vec![root.join("benches/sdk").join(side.script).into()];
        args.push(file.into());
        args.extend(tail.iter().cloned());
        set.spawn(sdk_process(
            side.program.clone(),
            args,
            side.node_path.clone(),
        ));
    }
    let (mut cpu, mut acked, mut rate, mut errors) = (0.0, 0u64, 0.0, 0);
    while let Some(r) = set.join_next().await {
        let m = r.map_err(|e| format!("{e}"))??;
        cpu += m.cpu;
        acked += m.acked;
        rate += m.acked as f64 / m.secs;
        errors += m.errors;
    }
    Ok(Summed {
        cpu_per_k: cpu / (acked as f64 / 1000.0),
        rate,
        errors,
        processes: chunks.len(),
    })
}

/// The SDK comparison: `n` devices per SDK (Python in processes of `python_per`, Node of
/// `node_per`), `fleet_n` in `azsim fleet`, `secs` measured.
pub(crate) async fn compare(
    azsim: &Path,
    n: usize,
    fleet_n: usize,
    secs: u64,
    python_per: usize,
    node_per: usize,
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut hub = match Hub8883::start(azsim).await {
        Ok(h) => h,
        Err(e) => {
            println!("sdk: skipped: {e}");
            return;
        }
    };
    let service = service_client(&hub.info).expect("service client");
    let mut strings = Vec::new();
    for i in 0..n {
        let id = format!("sdk-{i}");
        service
            .create_device(&id, Some(DEVICE_KEY), Some(DEVICE_KEY))
            .await
            .expect("device created");
        strings.push(format!(
            "HostName={};DeviceId={id};SharedAccessKey={DEVICE_KEY}\n",
            hub.info.hostname
        ));
    }
    let ca = hub.info.ca_file.clone();
    let state = hub.dir.join("hub");
    let python = super::arg("--python").map_or_else(
        || {
            let venv = root.join(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        },
        PathBuf::from,
    );
    let mut sides = vec![SdkSide {
        name: "Python SDK",
        program: python,
        script: "python_devices.py",
        node_path: None,
        per_process: python_per,
    }];
    match node_modules(root) {
        Ok(p) => sides.push(SdkSide {
            name: "Node SDK",
            program: PathBuf::from("node"),
            script: "node_devices.js",
            node_path: Some(p),
            per_process: node_per,
        }),
        Err(e) => println!("sdk: the Node SDK skipped: {e}"),
    }
    let procs = |per: usize| n.div_ceil(per.max(1));
    println!(
        "sdk: hub on 127.0.0.1:8883 (localhost); {n} devices per SDK (Python in {} process(es) of up to {python_per}, Node in {} of up to {node_per}), {fleet_n} in azsim fleet; {secs} s measured",
        procs(python_per),
        procs(node_per)
    );
    for (interval, interval_s) in [("1s", "1"), ("100ms", "0.1")] {
        // As run (wake-ups on the default grid of a twentieth of the interval), then with no
        // grid (every device wakes on its own, as each SDK device does).
        let mut az_k = f64::NAN;
        for (label, extra) in [("", None), (", --timer-resolution 1ms", Some("1ms"))] {
            let mut args = vec![
                "--connect-rate",
                "2000",
                "--stats-every",
                "500ms",
                "--payload",
                PAYLOAD,
            ];
            if let Some(r) = extra {
                args.extend(["--timer-resolution", r]);
            }
            let f = Fleet::start_with(azsim, &state, fleet_n, interval, &args);
            let (k, rate) = super::measure_fleet(f, fleet_n, secs).await;
            if extra.is_none() {
                az_k = k;
            }
            println!(
                "sdk {interval}: azsim fleet ({fleet_n} devices{label}): {k:.4} CPU-s per 1,000 QoS 1 messages, {rate:.0} msgs/s acknowledged"
            );
        }
        let tail: Vec<OsString> = vec![
            ca.clone().into(),
            interval_s.into(),
            WARMUP_S.to_string().into(),
            secs.to_string().into(),
        ];
        for side in &sides {
            match sdk_side(side, root, &hub.dir, &strings, &tail).await {
                Ok(m) => println!(
                    "sdk {interval}: {} ({n} devices in {} process(es)): {:.4} CPU-s per 1,000 QoS 1 messages, {:.0} msgs/s acknowledged, {} errors; azsim fleet: {:.1}x its messages per CPU-second",
                    side.name,
                    m.processes,
                    m.cpu_per_k,
                    m.rate,
                    m.errors,
                    m.cpu_per_k / az_k
                ),
                Err(e) => println!("sdk {interval}: {}: {e}", side.name),
            }
        }
    }
    let _ = hub.child.kill().await;
    let _ = std::fs::remove_dir_all(&hub.dir);
}
