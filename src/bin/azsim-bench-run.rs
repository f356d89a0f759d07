//! Benchmark (prints numbers, asserts nothing): connect-to-first-acknowledged-telemetry time and
//! peak RSS of one `azsim run`, next to the official Python device SDK (`azure-iot-device`)
//! doing the same against the same local hub in the same run.
//!
//! ```text
//! cargo build --release && target/release/azsim-bench-run [--runs 5] [--python .venv/bin/python]
//! ```
//!
//! The hub runs in this process on 127.0.0.1:8883 (the Python SDK only connects to 8883), so the
//! port must be free. For each run and each client it measures, from the client's own clock,
//! the time from starting the connection to the first PUBACK of a QoS 1 telemetry message; from
//! the bench's clock, process start to that PUBACK (interpreter start and imports included); and
//! the process's peak resident set (`VmHWM`) read right after the acknowledgement.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use azsim::bench::{arg, service_client, status_kib};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const PY_DEVICE: &str = r#"
import json, sys, time
t_start = time.monotonic()
from azure.iot.device import IoTHubDeviceClient, Message
cs = open(sys.argv[1]).read().strip()
ca = open(sys.argv[2]).read()
client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=ca, connection_retry=False)
t_connect = time.monotonic()
client.connect()
msg = Message(json.dumps({"temperature": 21.5, "humidity": 40.0, "seq": 1}))
msg.content_type = "application/json"
msg.content_encoding = "utf-8"
client.send_message(msg)  # returns once the hub's PUBACK arrived
t_ack = time.monotonic()
print(json.dumps({"event": "acked", "connect_to_ack_ms": (t_ack - t_connect) * 1000, "import_ms": (t_connect - t_start) * 1000}), flush=True)
time.sleep(1.5)
client.shutdown()
"#;

#[derive(Debug, Clone, Copy)]
struct Sample {
    connect_to_ack_ms: f64,
    spawn_to_ack_ms: f64,
    peak_rss_kib: u64,
}

/// Spawns `cmd`, waits for the JSON line `is_ack` accepts (sampling the process's peak RSS
/// then), and reads on to the end for the line `connect_ms` takes the client's own timing from.
async fn measure(
    mut cmd: tokio::process::Command,
    is_ack: impl Fn(&Value) -> bool,
    connect_ms: impl Fn(&Value) -> Option<f64>,
) -> Result<Sample, String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut spawn_to_ack_ms = None;
    let mut peak_rss_kib = 0;
    let mut connect_to_ack_ms = None;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if spawn_to_ack_ms.is_none() && is_ack(&v) {
                spawn_to_ack_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                peak_rss_kib = status_kib(pid, "VmHWM:");
            }
            if let Some(ms) = connect_ms(&v) {
                connect_to_ack_ms = Some(ms);
            }
        }
    })
    .await;
    let _ = child.kill().await;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt as _;
        let _ = e.read_to_string(&mut err).await;
    }
    match (read, spawn_to_ack_ms, connect_to_ack_ms) {
        (Ok(()), Some(spawn_to_ack_ms), Some(connect_to_ack_ms)) => Ok(Sample {
            connect_to_ack_ms,
            spawn_to_ack_ms,
            peak_rss_kib,
        }),
        _ => Err(format!("no acknowledgement: {}", err.trim())),
    }
}

fn summary(name: &str, samples: &[Sample]) {
    if samples.is_empty() {
        println!("{name:<28} no samples");
        return;
    }
    let med = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (c, cmin, cmax) = med(|s| s.connect_to_ack_ms);
    let (p, pmin, pmax) = med(|s| s.spawn_to_ack_ms);
    let (r, rmin, rmax) = med(|s| s.peak_rss_kib as f64);
    println!(
        "{name:<28} connect->ack {c:>7.1} ms ({cmin:.1}..{cmax:.1})   process start->ack {p:>7.1} ms ({pmin:.1}..{pmax:.1})   peak RSS {:>6.1} MiB ({:.1}..{:.1})",
        r / 1024.0,
        rmin / 1024.0,
        rmax / 1024.0
    );
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let azsim = arg("--azsim").map_or_else(|| exe_dir.join("azsim"), PathBuf::from);
    let python = arg("--python")
        .or_else(|| std::env::var("AZSIM_PYTHON").ok())
        .unwrap_or_else(|| ".venv/bin/python".into());

    let tmp = std::env::temp_dir().join(format!("azsim-bench-run-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut cfg = azsim_emulator::HubConfig::new(tmp.join("hub"));
    cfg.in_memory = true;
    let hub = azsim_emulator::start(cfg, std::net::IpAddr::from([127, 0, 0, 1]), 8883, 0)
        .await
        .map_err(|e| {
            format!("cannot start the hub on 127.0.0.1:8883 (the Python SDK needs that port): {e}")
        })?;
    let info = hub.info.clone();
    let svc = service_client(&info)?;
    let cs_of = |id: &'static str| {
        let svc = &svc;
        let info = &info;
        async move {
            let d = svc
                .create_device(id, None, None)
                .await
                .map_err(|e| e.to_string())?;
            let key = d["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .ok_or("no key")?
                .to_owned();
            info.device_connection_string(id, &key)
                .map_err(|e| e.to_string())
        }
    };
    let rust_cs = cs_of("bench-azsim").await?;
    let py_cs = cs_of("bench-python").await?;
    let py_cs_file = tmp.join("py.cs");
    let py_script = tmp.join("device.py");
    std::fs::write(&py_cs_file, &py_cs).map_err(|e| e.to_string())?;
    std::fs::write(&py_script, PY_DEVICE).map_err(|e| e.to_string())?;
    let have_python = std::process::Command::new(&python)
        .args(["-c", "import azure.iot.device"])
        .output()
        .is_ok_and(|o| o.status.success());

    println!(
        "azsim run vs azure-iot-device, local hub on 127.0.0.1:8883, {runs} runs each, {} build of {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        azsim.display()
    );
    let (mut rust, mut py) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        // Run 0 warms the page cache and the hub; it is not counted.
        let mut cmd = tokio::process::Command::new(&azsim);
        cmd.args([
            "run",
            "--json",
            "--count",
            "2",
            "--interval",
            "1s",
            "--connection-string",
        ])
        .arg(&rust_cs)
        .arg("--ca")
        .arg(&info.ca_file)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING");
        let s = measure(
            cmd,
            |v| v["event"] == "telemetry_acked",
            |v| {
                (v["event"] == "stopped")
                    .then(|| v["first_ack_ms"].as_f64())
                    .flatten()
            },
        )
        .await
        .map_err(|e| format!("azsim run {i}: {e}"))?;
        if i > 0 {
            rust.push(s);
        }
        if have_python {
            let mut cmd = tokio::process::Command::new(&python);
            cmd.arg(&py_script).arg(&py_cs_file).arg(&info.ca_file);
            let s = measure(
                cmd,
                |v| v["event"] == "acked",
                |v| v["connect_to_ack_ms"].as_f64(),
            )
            .await
            .map_err(|e| format!("python run {i}: {e}"))?;
            if i > 0 {
                py.push(s);
            }
        }
    }
    summary("azsim run", &rust);
    if have_python {
        summary("azure-iot-device 2.14 (py)", &py);
    } else {
        println!(
            "azure-iot-device: skipped ({python} cannot import azure.iot.device; create it with `python3 -m venv .venv && .venv/bin/pip install azure-iot-device==2.14.0`)"
        );
    }
    let _ = hub.stop().await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
