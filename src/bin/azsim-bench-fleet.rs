//! Benchmark (prints numbers, asserts nothing): `azsim fleet` against `azsim hub`, each in its
//! own process, on this machine.
//!
//! ```text
//! cargo build --release --bins && target/release/azsim-bench-fleet [--devices 10000]
//!     [--rate-devices 1000] [--seconds 15] [--provision-devices 1000] [--provision-rate 1000]
//!     [--skip-rss] [--skip-rate] [--skip-dps] [--skip-sdk] [--sdk-devices 100]
//!     [--sdk-fleet-devices 100] [--python-per-process 100] [--node-per-process N]
//!     [--python .venv/bin/python] [--azsim target/release/azsim]
//! ```
//!
//! Flags are read by name only (`--help` is not one: it runs the bench).
//!
//! 1. Memory: a fleet of 1 device and a fleet of `--devices` (60 s interval, every device
//!    connected over TLS and acknowledged once); resident memory per device is the difference
//!    of the two fleets' `VmRSS` over the difference of their sizes.
//! 2. CPU and throughput: a fleet of `--rate-devices` sending QoS 1 telemetry every second, then
//!    every 100 ms; over `--seconds` once every device is acknowledged, the fleet process's CPU
//!    time (`utime + stime` of `/proc/<pid>/stat`) per 1,000 acknowledged messages, and the
//!    acknowledged messages per second.
//! 3. DPS: a fleet of `--provision-devices` (default 1,000) registering through the hub's DPS
//!    (an enrollment group made with `azsim dps group create`) at `--provision-rate`
//!    registrations a second (default 1,000): provisioned devices per second (fleet start to
//!    the last assignment) and the provisioning time p50/p99.
//!
//! 4. The official SDKs in the same run (`--skip-sdk` leaves it out): a second hub on
//!    127.0.0.1:8883 (hostname `localhost`: the SDKs dial 8883 only), `--sdk-devices` (100)
//!    devices per SDK each sending the same JSON body as QoS 1 telemetry every second, then
//!    every 100 ms: the Python SDK (azure-iot-device's asyncio `IoTHubDeviceClient`s,
//!    benches/sdk/python_devices.py), the Node SDK (azure-iot-device-mqtt `Client`s,
//!    benches/sdk/node_devices.js; the npm packages of benches/sdk/package.json installed on
//!    demand into target/bench-node) and `azsim fleet` (`--sdk-fleet-devices`, default the
//!    same count; as run, then with `--timer-resolution 1ms`, every device waking on its own
//!    as each SDK device does), one after the other.
//!
//!    How the SDK side runs: an SDK's devices are split into processes of at most
//!    `--python-per-process` (default 100: one Python process with 1,000 clients times out
//!    connecting on 2 cores, its threads per client) and `--node-per-process` (default all of
//!    them in one process: Node's cost per message falls as one process carries more devices).
//!    All processes of an SDK start at once; each prints a `start` line once its own devices
//!    are connected and the warm-up has passed and an `end` line `--seconds` later, and its CPU
//!    time (`/proc/<pid>/stat`) and acknowledged messages are read at those lines. An SDK's
//!    figure is the sum of its processes' CPU seconds over the sum of their acknowledged
//!    messages (per 1,000), its rate the sum of their rates; the ratio is against the fleet
//!    as run. The fleet is measured the same way over the same `--seconds`.
//!
//! The hub runs `--in-memory` (no SQLite I/O). Each device needs a socket in the fleet and one
//! in the hub: both raise their open-files soft limit; the hard limit must allow it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use azsim::bench::{HubProcess, arg, status_kib};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

#[path = "bench-sdk/sdk.rs"]
mod sdk;

/// User + system CPU seconds of `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

struct Fleet {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Fleet {
    fn start(azsim: &Path, state: &Path, devices: usize, interval: &str) -> Fleet {
        Self::start_with(
            azsim,
            state,
            devices,
            interval,
            &["--connect-rate", "2000", "--stats-every", "500ms"],
        )
    }

    fn start_with(
        azsim: &Path,
        state: &Path,
        devices: usize,
        interval: &str,
        extra: &[&str],
    ) -> Fleet {
        let mut child = tokio::process::Command::new(azsim)
            .args(["fleet", "--json", "--prefix", "bench-"])
            .args(["--devices", &devices.to_string(), "--interval", interval])
            .args(["--max-queue", "10"])
            .args(extra)
            .arg("--state")
            .arg(state)
            .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
            .env_remove("JOB_COMPLETION_INDEX")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("azsim fleet starts");
        let pid = child.id().unwrap_or(0);
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Fleet { child, lines, pid }
    }

    /// The next `stats` line that `pred` accepts.
    async fn stats_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} within 600 s"))
                .expect("read")
                .unwrap_or_else(|| panic!("the fleet ended before {what}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["event"] == "stats" && pred(&v) {
                return v;
            }
        }
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

/// Resident memory of a fleet of `n` with every device connected and acknowledged, after one
/// more second.
async fn fleet_rss(azsim: &Path, state: &Path, n: usize) -> (u64, f64) {
    let began = Instant::now();
    let mut f = Fleet::start(azsim, state, n, "60s");
    let n64 = n as u64;
    f.stats_until("every device acknowledged", |v| {
        v["devices_acked"].as_u64() == Some(n64) && v["connected"].as_u64() == Some(n64)
    })
    .await;
    let ready = began.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = status_kib(f.pid, "VmRSS:");
    f.stop().await;
    (rss, ready)
}

/// CPU seconds per 1,000 acknowledged messages and messages per second, for `n` devices at
/// `interval`, measured over `secs` once every device is acknowledged.
async fn fleet_rate(azsim: &Path, state: &Path, n: usize, interval: &str, secs: u64) -> (f64, f64) {
    measure_fleet(Fleet::start(azsim, state, n, interval), n, secs).await
}

/// [`fleet_rate`]'s figures for the started fleet `f` of `n` devices, which it stops.
async fn measure_fleet(mut f: Fleet, n: usize, secs: u64) -> (f64, f64) {
    let n64 = n as u64;
    let first = f
        .stats_until("every device acknowledged", |v| {
            v["devices_acked"].as_u64() == Some(n64)
        })
        .await;
    let (cpu0, t0, acked0) = (
        cpu_secs(f.pid),
        Instant::now(),
        first["acked"].as_u64().unwrap_or(0),
    );
    let last = loop {
        let v = f.stats_until("stats", |_| true).await;
        if t0.elapsed() >= Duration::from_secs(secs) {
            break v;
        }
    };
    let (cpu1, dt) = (cpu_secs(f.pid), t0.elapsed().as_secs_f64());
    let acked = last["acked"].as_u64().unwrap_or(0).saturating_sub(acked0) as f64;
    f.stop().await;
    ((cpu1 - cpu0) / (acked / 1000.0), acked / dt)
}

/// The enrollment group key of the DPS phase (a bench key, not a secret of anyone's).
const BENCH_GROUP_KEY: &str = "YmVuY2gtZ3JvdXAta2V5LWF6c2ltLWZsZWV0LWRwcy0wMTIzNDU2Nzg5";

/// Provisioned devices per second, provisioning time p50 and p99 (ms), for a fleet of `n`
/// registering through the hub's DPS at `rate` a second.
async fn fleet_provisioning(
    azsim: &Path,
    state: &Path,
    n: usize,
    rate: &str,
) -> (f64, Option<f64>, Option<f64>, Value) {
    let out = tokio::process::Command::new(azsim)
        .args(["dps", "group", "create", "bench-group", "--json"])
        .args(["--primary-key", BENCH_GROUP_KEY])
        .args(["--secondary-key", BENCH_GROUP_KEY])
        .arg("--state")
        .arg(state)
        .env_remove("PROVISIONING_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output()
        .await
        .expect("azsim dps runs");
    assert!(
        out.status.success(),
        "azsim dps group create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = Fleet::start_with(
        azsim,
        state,
        n,
        "60s",
        &[
            "--group-key",
            BENCH_GROUP_KEY,
            "--connect-rate",
            rate,
            // Fine-grained: the last assignment is timed by the first stats line showing it.
            "--stats-every",
            "100ms",
        ],
    );
    let n64 = n as u64;
    let done = f
        .stats_until("every device provisioned", |v| {
            v["provisioned"].as_u64() == Some(n64)
        })
        .await;
    f.stop().await;
    let secs = done["seconds"].as_f64().unwrap_or(f64::NAN);
    (
        n as f64 / secs,
        done["provision_ms"]["p50"].as_f64(),
        done["provision_ms"]["p99"].as_f64(),
        done["errors"].clone(),
    )
}

#[tokio::main]
async fn main() {
    raise_nofile();
    let devices: usize = arg("--devices")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rate_devices: usize = arg("--rate-devices")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(15);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let azsim = arg("--azsim").map_or_else(|| exe_dir.join("azsim"), PathBuf::from);
    let mut hub = HubProcess::start(&azsim, "azsim-bench-fleet")
        .await
        .expect("azsim hub starts");
    let hub_pid = hub.pid();
    let state = hub.dir.join("hub");
    println!(
        "azsim-bench-fleet: {} build, {} CPUs, azsim hub --in-memory in its own process",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let provision_devices: usize = arg("--provision-devices")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let provision_rate = arg("--provision-rate").unwrap_or_else(|| "1000".into());
    let flag = |f: &str| std::env::args().any(|a| a == f);

    if !flag("--skip-rss") {
        let (rss1, _) = fleet_rss(&azsim, &state, 1).await;
        let (rss_n, ready) = fleet_rss(&azsim, &state, devices).await;
        let per = (rss_n.saturating_sub(rss1)) as f64 / (devices - 1) as f64;
        println!(
            "memory: fleet of 1 VmRSS {rss1} KiB; fleet of {devices} (all connected over TLS and acknowledged after {ready:.1} s) VmRSS {rss_n} KiB: {per:.1} KiB per device; hub VmRSS {} KiB",
            status_kib(hub_pid, "VmRSS:")
        );
    }
    if !flag("--skip-rate") {
        for interval in ["1s", "100ms"] {
            let (cpu_per_k, rate) = fleet_rate(&azsim, &state, rate_devices, interval, secs).await;
            println!(
                "{rate_devices} devices every {interval}: {rate:.0} msgs/s acknowledged, fleet CPU {cpu_per_k:.3} CPU-s per 1,000 QoS 1 messages ({:.0} messages per CPU-second)",
                1000.0 / cpu_per_k
            );
        }
    }
    if !flag("--skip-dps") {
        let (per_s, p50, p99, errors) =
            fleet_provisioning(&azsim, &state, provision_devices, &provision_rate).await;
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
        println!(
            "dps: {provision_devices} devices registered through the hub's DPS at --connect-rate {provision_rate}: {per_s:.0} provisioned devices/s (fleet start to the last assignment), provisioning time p50 {} p99 {}; errors {errors}",
            ms(p50),
            ms(p99)
        );
    }
    let _ = hub.child.kill().await;
    let _ = std::fs::remove_dir_all(&hub.dir);
    if !flag("--skip-sdk") {
        let n: usize = arg("--sdk-devices")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let fleet_n: usize = arg("--sdk-fleet-devices")
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        let python_per: usize = arg("--python-per-process")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let node_per: usize = arg("--node-per-process")
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        sdk::compare(&azsim, n, fleet_n, secs, python_per, node_per).await;
    }
}
