//! Benchmark (prints numbers, asserts nothing): resident memory of the device loop, for the
//! fleet's budget of 24 KiB per device.
//!
//! ```text
//! cargo build --release --bins && target/release/azsim-bench-rss [--devices 1000] [--interval 10s]
//!     [--tls-per-device] [--azsim target/release/azsim]
//! ```
//!
//! The local hub runs as its own process (`azsim hub --in-memory` on free ports), so its
//! connections are not counted; devices are registered through its REST API. Then:
//!
//! 1. One `azsim run` process: its `VmRSS` (and peak, `VmHWM`) from `/proc/<pid>/status` after
//!    three acknowledged messages.
//! 2. N device loops in this process: `azsim run`'s driver (`azsim_mqtt::Client` over tokio TCP
//!    and rustls, one tokio task each, one TLS client configuration shared by all as `azsim
//!    fleet` will, or one each with `--tls-per-device` as `azsim run` builds it). `VmRSS` of this
//!    process before they start and once every device has had a message acknowledged and one
//!    more interval has passed; the difference over N is the cost of one device.
//!
//! Each device needs a socket in this process: raise `ulimit -n` above N if it is lower.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use azsim::bench::{HubProcess, arg, flag, service_client, status_kib};
use azsim::device::driver::{self, Credential, RunConfig};
use azsim::device::output::Output;
use azsim_proto::connection_string::ConnectionString;
use azsim_proto::secret::Secret;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The soft open-files limit of this process.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[derive(Default)]
struct Counts {
    connected: AtomicUsize,
    acked: AtomicUsize,
    devices_acked: AtomicUsize,
}

/// One device's event lines, counted instead of printed.
struct Lines {
    buf: Vec<u8>,
    counts: Arc<Counts>,
    connected: bool,
    acked: bool,
}

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while let Some(i) = self.buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            if line.contains("\"event\":\"connected\"") && !self.connected {
                self.connected = true;
                self.counts.connected.fetch_add(1, Ordering::Relaxed);
            }
            if line.contains("\"event\":\"telemetry_acked\"") {
                self.counts.acked.fetch_add(1, Ordering::Relaxed);
                if !self.acked {
                    self.acked = true;
                    self.counts.devices_acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn connection_string(host: &str, id: &str, key: &str) -> Result<String, String> {
    let mut out = String::new();
    ConnectionString::device(host, id, key)
        .map_err(|e| e.to_string())?
        .write_with_secret(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let devices: usize = arg("--devices")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    let interval = arg("--interval")
        .map(|s| humantime::parse_duration(&s).map_err(|e| format!("--interval: {e}")))
        .transpose()?
        .unwrap_or(Duration::from_secs(10));
    let tls_per_device = flag("--tls-per-device");
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let azsim = arg("--azsim").map_or_else(|| exe_dir.join("azsim"), PathBuf::from);
    if let Some(limit) = open_files_limit()
        && limit < devices as u64 + 64
    {
        eprintln!(
            "azsim-bench-rss: warning: open-files limit {limit} is below the ~{} this run needs; raise it with `ulimit -n`",
            devices + 64
        );
    }

    let mut hub = HubProcess::start(&azsim, "azsim-bench-rss").await?;
    let info = hub.info.clone();
    let state = hub.dir.join("hub");
    let svc = service_client(&info)?;
    let mut keys = Vec::new();
    for i in 0..=devices {
        let id = format!("rss-{i}");
        let d = svc
            .create_device(&id, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let key = d["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .ok_or("no key")?
            .to_owned();
        keys.push((id, key));
    }
    println!(
        "azsim-bench-rss: {} build, local hub in its own process on 127.0.0.1:{}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        info.mqtt_port
    );

    // 1. One `azsim run` process.
    let (id0, key0) = &keys[0];
    let mut child = tokio::process::Command::new(&azsim)
        .args(["run", "--json", "--interval", "1s", "--connection-string"])
        .arg(connection_string(&info.mqtt_host(), id0, key0)?)
        .arg("--ca")
        .arg(&info.ca_file)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut acks = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "telemetry_acked" {
            acks += 1;
            if acks == 3 {
                break;
            }
        }
    }
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let _ = child.kill().await;
    println!(
        "one `azsim run` process after {acks} acknowledged messages: VmRSS {rss} KiB ({:.1} MiB), VmHWM {hwm} KiB",
        rss as f64 / 1024.0
    );

    // 2. N device loops in this process.
    let me = std::process::id();
    let shared_tls = azsim::tls::client_config(Some(&info.ca_file)).map_err(|e| e.to_string())?;
    let base = status_kib(me, "VmRSS:");
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let began = Instant::now();
    let mut tasks = Vec::new();
    let mut task_bytes = 0;
    for (id, key) in keys.iter().skip(1) {
        let cfg = RunConfig {
            hub_host: info.hostname.clone(),
            connect_host: info.hostname.clone(),
            port: info.mqtt_port,
            transport: Default::default(),
            device_id: id.clone(),
            module_id: None,
            credential: Credential::Key(Secret::new(key.clone())),
            ca_file: Some(info.ca_file.clone()),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            count: None,
            duration: None,
            payload: None,
            properties: Vec::new(),
            content_type: "application/json".into(),
            methods: Vec::new(),
            token_ttl: 3600,
            seed: 1,
            model_id: None,
            keep_alive: 60,
            max_queue: 1000,
            max_initial_attempts: None,
            state_dir: state.clone(),
        };
        let out = Output::to_writer(
            true,
            Box::new(Lines {
                buf: Vec::new(),
                counts: counts.clone(),
                connected: false,
                acked: false,
            }),
        );
        let mut rx = stop_rx.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let tls = shared_tls.clone();
        let task = async move {
            let _ = if tls_per_device {
                driver::run(cfg, out, shutdown).await
            } else {
                driver::run_with_tls(cfg, tls, out, shutdown).await
            };
        };
        if tasks.is_empty() {
            task_bytes = std::mem::size_of_val(&task);
        }
        tasks.push(tokio::spawn(task));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while counts.devices_acked.load(Ordering::Relaxed) < devices && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = began.elapsed();
    // One more interval, so every loop has been through a send and its acknowledgement.
    tokio::time::sleep(interval).await;
    let total = status_kib(me, "VmRSS:");
    let peak = status_kib(me, "VmHWM:");
    let per_device = total.saturating_sub(base) as f64 / devices as f64;
    println!(
        "{devices} device loops in one process ({} TLS configuration{}): VmRSS {base} KiB before, {total} KiB with them (VmHWM {peak} KiB): {per_device:.1} KiB per device",
        if tls_per_device { "one" } else { "a shared" },
        if tls_per_device { " each" } else { "" },
    );
    println!(
        "  each device's task future: {task_bytes} bytes (the rest is heap: TLS, buffers, tokio)"
    );
    println!(
        "  {} connected, {} with a message acknowledged after {:.1} s, {} messages acknowledged",
        counts.connected.load(Ordering::Relaxed),
        counts.devices_acked.load(Ordering::Relaxed),
        ready.as_secs_f64(),
        counts.acked.load(Ordering::Relaxed),
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let _ = hub.child.kill().await;
    let _ = std::fs::remove_dir_all(&hub.dir);
    Ok(())
}
