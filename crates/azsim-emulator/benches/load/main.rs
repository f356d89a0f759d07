//! Load bench: N devices with real SAS tokens over TLS each send M QoS 1 messages, against the
//! azsim hub (in its own process: this binary started again as the hub) and against
//! Debian's `mosquitto` (TLS listener) in the same run, and print msgs/s, PUBACK latency p50/p99
//! and the hub/mosquitto ratio.
//!
//! Not a test: it asserts nothing and prints numbers.
//!
//! ```text
//! cargo bench -p azsim-emulator --bench load -- [--devices N] [--messages M] [--payload BYTES]
//!     [--window W[,W...]] [--connect-concurrency C] [--only hub|mosquitto] [--rounds R] [--no-warmup]
//!     [--store disk|memory] [--sync normal|full] [--tls azure|modern|both]
//!     [--records message|batch]
//! ```
//! Defaults: 1000 devices, 20 messages of 256 bytes each, 1 message in flight per device,
//! 200 TLS handshakes at a time. Env `AZSIM_LOAD_DEVICES` / `AZSIM_LOAD_MESSAGES` override the
//! defaults too. Env `AZSIM_LOAD_HUB_EXE=PATH` runs the hub child from another build of this
//! bench (e.g. one built from an older commit): an A/B of hub changes behind the same clients.
//! Each device is one task of one tokio runtime with its own TLS connection
//! (tokio-rustls), speaking MQTT through a small hand-written client (`device.rs`, the codec is
//! `mqttbytes`): CONNECT, then QoS 1 PUBLISHes with up to W unacknowledged. Whatever the window
//! lets out goes in one write (one TLS record up to 16 KiB), every PUBACK a read brought is
//! handled before the next write, and the PUBLISH is encoded once (only its packet id changes).
//! Both brokers get this same client, doing the same work per message. It replaced `rumqttc`
//! clients, which cost 11.4 us of CPU per message at window 1 (lead's baseline run) and so left
//! the brokers too little of a 2-core machine to tell them apart: mosquitto was client-bound.
//! `--window 1,10,100` measures several windows in one run (each round runs both brokers at
//! each window, with a ratio per window and a summary per window at the end). Devices in the
//! field pipeline QoS 1 (the Python SDK has no in-flight limit; azsim's own loop has
//! `--max-in-flight`), so a window above 1 is a fair measure; window 1 is reported too.
//! Phases: connect everyone (CONNACK), then
//! everyone publishes at once; msgs/s is total messages over the time from the start signal
//! to the last PUBACK. Latency is from the PUBLISH leaving the client to its PUBACK.
//! mosquitto gets the same clients, usernames, SAS passwords and topics (it ignores them:
//! `allow_anonymous true`), with a certificate from the same kind of rcgen CA.
//! `--rounds R` runs the pair R times, alternating which broker goes first, and ends with every
//! ratio and the medians. Before the first measured run, an uncounted warm-up run (5 messages
//! per device, against the hub) grows the client process's heap and socket state, which
//! otherwise costs whichever broker goes first; `--no-warmup` skips it.
//!
//! It also prints the CPU time per message each side used during the publish phase (from
//! `/proc/*/task/*/schedstat`): the broker process's threads (hub or mosquitto; for the hub
//! also its SQLite threads: the telemetry writer, the WAL checkpointer) and the
//! clients'. On a shared, noisy machine msgs/s moves with
//! whatever else runs; CPU per message shows what each broker costs.
//!
//! Memory per connected device is the broker process's RSS (`/proc/PID/status` `VmRSS`) once
//! every device has its CONNACK, minus its RSS just before the first device connected, over the
//! number of devices.
//!
//! `--store disk` (the default, what `azsim hub` does) keeps the hub's state in SQLite files
//! in a temporary directory, so every PUBACK waits for a committed transaction on disk;
//! `--store memory` runs the hub with `in_memory` (SQLite in memory). mosquitto runs with
//! `persistence false` either way (it keeps nothing on disk for QoS 1 messages without
//! subscribers). `--sync normal` runs the hub with `Durability::ProcessCrash` (SQLite
//! `synchronous=NORMAL`: commits survive a killed process, not a power cut) instead of the
//! default `PowerLoss` (`synchronous=FULL`, an fsync per transaction).
//!
//! `--tls` picks the hub's TLS profile (`HubConfig.tls`): `azure` (the default, as `azsim hub`:
//! an RSA-2048 chain over TLS 1.2) or `modern` (one ECDSA P-256 certificate, TLS 1.3);
//! `both` runs the hub once per profile in the same run (modern first), so their memory per
//! device and msgs/s can be compared on the same machine state. mosquitto is unaffected.
//!
//! Measured figures, A/B comparisons against earlier commits and where the CPU goes:
//! `RESULTS.md` next to this file.

mod brokers;
#[path = "../common/mod.rs"]
mod common;
mod device;
mod hub;
mod proc;

use brokers::*;
use common::{client_tls, free_port};
use device::*;
use proc::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use azsim_proto::sas;
use azsim_proto::topic::{self, Identity};
use tokio::sync::{Barrier, Semaphore};

#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    messages: usize,
    payload: usize,
    /// Unacknowledged PUBLISHes per device in the run at hand (one of `windows`).
    window: u16,
    /// Every window to measure (`--window 1,10,100`): each round runs both brokers at each.
    windows: Vec<u16>,
    /// Each PUBLISH in its own TLS record (`--records message`, the default) rather than the
    /// PUBLISHes of one write sharing records (`--records batch`).
    record_per_message: bool,
    connect_concurrency: usize,
    only: Option<String>,
    rounds: usize,
    warmup: bool,
    /// The hub keeps its state in SQLite on disk (`true`) or in memory.
    disk: bool,
    /// The hub fsyncs every commit (`Durability::PowerLoss`, its default).
    sync_full: bool,
    /// The hub's TLS profiles to run, in order (`--tls`; one, or both for `--tls both`).
    tls: Vec<azsim_emulator::state_dir::TlsProfile>,
}

fn parse_params() -> Params {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut p = Params {
        devices: env("AZSIM_LOAD_DEVICES", 1000),
        messages: env("AZSIM_LOAD_MESSAGES", 20),
        payload: 256,
        window: 1,
        windows: vec![1],
        record_per_message: true,
        connect_concurrency: 200,
        only: None,
        rounds: 1,
        warmup: true,
        disk: true,
        sync_full: true,
        tls: vec![azsim_emulator::state_dir::TlsProfile::Azure],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        let num = || val.parse::<usize>().unwrap_or_else(|_| usage(&args[i]));
        match args[i].as_str() {
            "--devices" => p.devices = num(),
            "--messages" => p.messages = num(),
            "--payload" => p.payload = num(),
            "--window" => {
                p.windows = val
                    .split(',')
                    .map(|w| match w.trim().parse::<u16>() {
                        Ok(w) if w > 0 => w,
                        _ => {
                            eprintln!("load: --window takes numbers 1-65535, comma-separated");
                            std::process::exit(2)
                        }
                    })
                    .collect();
                p.window = p.windows[0];
            }
            "--connect-concurrency" => p.connect_concurrency = num().max(1),
            "--only" => p.only = Some(val.clone()),
            "--rounds" => p.rounds = num().max(1),
            "--sync" => {
                p.sync_full = match val.as_str() {
                    "normal" => false,
                    "full" => true,
                    _ => {
                        eprintln!("load: --sync takes normal or full");
                        std::process::exit(2)
                    }
                }
            }
            "--tls" => {
                use azsim_emulator::state_dir::TlsProfile;
                p.tls = match (val.as_str(), TlsProfile::parse(&val)) {
                    ("both", _) => vec![TlsProfile::Modern, TlsProfile::Azure],
                    (_, Some(t)) => vec![t],
                    _ => {
                        eprintln!("load: --tls takes azure, modern or both");
                        std::process::exit(2)
                    }
                }
            }
            "--records" => {
                p.record_per_message = match val.as_str() {
                    "message" => true,
                    "batch" => false,
                    _ => {
                        eprintln!("load: --records takes message or batch");
                        std::process::exit(2)
                    }
                }
            }
            "--store" => {
                p.disk = match val.as_str() {
                    "disk" => true,
                    "memory" => false,
                    _ => {
                        eprintln!("load: --store takes disk or memory");
                        std::process::exit(2)
                    }
                }
            }
            "--no-warmup" => {
                p.warmup = false;
                i += 1;
                continue;
            }
            // cargo bench passes `--bench`; ignore it and anything unknown without a value.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    p
}

fn usage(flag: &str) -> ! {
    eprintln!("load: {flag} needs a number");
    std::process::exit(2)
}

/// What one run against one broker measured.
#[derive(Debug, Default)]
struct RunStats {
    connected: usize,
    connect_failures: usize,
    connect_secs: f64,
    messages: usize,
    publish_failures: usize,
    publish_secs: f64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
    /// CPU time the broker's threads used during the publish phase.
    broker_cpu_ns: u64,
    /// Of which the hub's store threads (`azsim-hub-*`: the telemetry writer, the WAL
    /// checkpointer, the activity flusher); 0 for mosquitto.
    store_cpu_ns: u64,
    /// CPU time the clients' runtime threads used during the publish phase.
    client_cpu_ns: u64,
    /// The broker's RSS (KiB) before the first device connected and once all had.
    rss_idle_kib: u64,
    rss_connected_kib: u64,
}

impl RunStats {
    fn msgs_per_sec(&self) -> f64 {
        if self.publish_secs > 0.0 {
            self.messages as f64 / self.publish_secs
        } else {
            0.0
        }
    }

    /// CPU microseconds per message acknowledged.
    fn cpu_us_per_msg(&self, ns: u64) -> f64 {
        if self.messages == 0 {
            return f64::NAN;
        }
        ns as f64 / 1000.0 / self.messages as f64
    }

    /// Broker memory per connected device, KiB.
    fn kib_per_device(&self) -> f64 {
        if self.connected == 0 {
            return f64::NAN;
        }
        self.rss_connected_kib.saturating_sub(self.rss_idle_kib) as f64 / self.connected as f64
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

async fn run_load(
    name: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    specs: &[DeviceSpec],
    p: &Arc<Params>,
    broker_pid: &str,
) -> RunStats {
    let broker_cpu_ns = || cpu_ns(broker_pid, |_| true);
    let store_cpu_ns = || cpu_ns(broker_pid, |c| c.starts_with("azsim-hub-"));
    let n = specs.len();
    let rss_idle_kib = rss_kib(broker_pid);
    let connect_gate = Arc::new(Semaphore::new(p.connect_concurrency));
    let connected = Arc::new(Barrier::new(n + 1));
    let start = Arc::new(Barrier::new(n + 1));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for spec in specs {
        tasks.push(tokio::spawn(run_device(
            spec.clone(),
            port,
            tls.clone(),
            p.clone(),
            connect_gate.clone(),
            connected.clone(),
            start.clone(),
        )));
    }
    connected.wait().await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let rss_connected_kib = rss_kib(broker_pid);
    eprintln!("load: {name}: {n} devices through CONNACK in {connect_secs:.2} s, publishing");
    let t1 = Instant::now();
    let (broker0, store0, client0) = (broker_cpu_ns(), store_cpu_ns(), client_cpu_ns());
    start.wait().await;
    let mut stats = RunStats {
        connect_secs,
        rss_idle_kib,
        rss_connected_kib,
        ..RunStats::default()
    };
    for t in tasks {
        match t.await {
            Ok(DeviceOutcome::ConnectFailed(e)) => {
                stats.connect_failures += 1;
                stats.first_error.get_or_insert(format!("connect: {e}"));
            }
            Ok(DeviceOutcome::Done {
                latencies_us,
                error,
                acked,
            }) => {
                stats.connected += 1;
                stats.messages += acked;
                stats.publish_failures += p.messages - acked;
                stats.latencies_us.extend(latencies_us);
                if let Some(e) = error {
                    stats.first_error.get_or_insert(format!("publish: {e}"));
                }
            }
            Err(e) => {
                stats.connect_failures += 1;
                stats.first_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    // Every task has ended by now; the last PUBACK came before its task's disconnect, so
    // this over-counts by at most one DISCONNECT round: small against the whole run.
    stats.publish_secs = t1.elapsed().as_secs_f64();
    stats.broker_cpu_ns = broker_cpu_ns().saturating_sub(broker0);
    stats.store_cpu_ns = store_cpu_ns().saturating_sub(store0);
    stats.client_cpu_ns = client_cpu_ns().saturating_sub(client0);
    stats.latencies_us.sort_unstable();
    stats
}

fn print_stats(name: &str, s: &RunStats, p: &Params) {
    println!(
        "{name:<10} devices {}/{} connected in {:.2} s | {} of {} msgs in {:.2} s = {:.0} msgs/s | \
         PUBACK p50 {:.2} ms p99 {:.2} ms | errors: {} connect, {} publish",
        s.connected,
        p.devices,
        s.connect_secs,
        s.messages,
        p.devices * p.messages,
        s.publish_secs,
        s.msgs_per_sec(),
        s.percentile_ms(0.50),
        s.percentile_ms(0.99),
        s.connect_failures,
        s.publish_failures,
    );
    let store = if s.store_cpu_ns > 0 {
        format!(
            " (its SQLite threads {:.1} us)",
            s.cpu_us_per_msg(s.store_cpu_ns)
        )
    } else {
        String::new()
    };
    println!(
        "{name:<10} CPU per message (publish phase): broker {:.1} us{store}, clients {:.1} us",
        s.cpu_us_per_msg(s.broker_cpu_ns),
        s.cpu_us_per_msg(s.client_cpu_ns),
    );
    println!(
        "{name:<10} memory: RSS {:.1} MiB idle, {:.1} MiB with {} devices connected = {:.1} KiB per device",
        s.rss_idle_kib as f64 / 1024.0,
        s.rss_connected_kib as f64 / 1024.0,
        s.connected,
        s.kib_per_device(),
    );
    if let Some(e) = &s.first_error {
        println!("{name:<10} first error: {e}");
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(hub::CHILD_ENV) {
        hub::child_main(PathBuf::from(dir));
        return;
    }
    let p = Arc::new(parse_params());
    raise_nofile(p.devices as u64 * 2 + 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "azsim load bench: {} devices x {} QoS 1 messages of {} bytes, {} in flight per device, \
         TLS ({}), SAS auth, hub state {} (synchronous={}), hub TLS profile {}, {} cores",
        p.devices,
        p.messages,
        p.payload,
        p.windows
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
        if p.record_per_message {
            "a record per PUBLISH"
        } else {
            "PUBLISHes of a write share records"
        },
        if p.disk { "on disk" } else { "in memory" },
        if p.sync_full { "FULL" } else { "NORMAL" },
        p.tls
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" then "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    rt.block_on(async {
        if p.warmup && p.only.is_none() {
            // The first load of a process costs the clients more (their heap, page tables and
            // socket buffers grow); without this the broker measured first pays for it.
            let w = Arc::new(Params {
                messages: p.messages.min(5),
                ..(*p).clone()
            });
            eprintln!("load: warm-up run against the hub, not counted");
            if let Err(e) = hub::run(&w, dir.path(), p.tls[0]).await {
                eprintln!("load: warm-up failed: {e}");
            }
        }
        // Per window: every round's (msgs/s, broker CPU us/msg, KiB/device) and ratio.
        let mut runs: Vec<WindowRuns> = p.windows.iter().map(|_| WindowRuns::default()).collect();
        for round in 0..p.rounds {
            if p.rounds > 1 {
                println!("round {}/{}", round + 1, p.rounds);
            }
            for (wi, &window) in p.windows.iter().enumerate() {
                let pw = Arc::new(Params {
                    window,
                    ..(*p).clone()
                });
                if p.windows.len() > 1 {
                    println!("window {window}");
                }
                // Alternate who goes first, so a change in the machine's background load does
                // not always favour the same side.
                let hub_first = (round + wi) % 2 == 0;
                let mut hub_rate = None;
                let mut mosq_rate = None;
                for hub_turn in [hub_first, !hub_first] {
                    if hub_turn {
                        hub_rate = run_hub(&pw, dir.path()).await;
                        runs[wi].hub.extend(hub_rate);
                    } else {
                        mosq_rate = run_mosquitto(&pw, dir.path()).await;
                        runs[wi].mosq.extend(mosq_rate);
                    }
                }
                if let (Some((h, _, _)), Some((m, _, _))) = (hub_rate, mosq_rate)
                    && m > 0.0
                {
                    println!(
                        "ratio      window {window}: azsim-hub / mosquitto ingest = {:.2}x",
                        h / m
                    );
                    runs[wi].ratios.push(h / m);
                }
            }
        }
        if p.rounds > 1 || p.windows.len() > 1 {
            for (w, r) in p.windows.iter().zip(&runs) {
                r.summary(*w, p.rounds);
            }
        }
    });
}

/// One window's figures over the rounds.
#[derive(Default)]
struct WindowRuns {
    hub: Vec<(f64, f64, f64)>,
    mosq: Vec<(f64, f64, f64)>,
    ratios: Vec<f64>,
}

impl WindowRuns {
    fn summary(&self, window: u16, rounds: usize) {
        let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let list: Vec<String> = self.ratios.iter().map(|r| format!("{r:.2}x")).collect();
        println!(
            "summary    window {window}, {rounds} rounds | ratios {} | median ratio {:.2}x | \
             median msgs/s hub {:.0}, mosquitto {:.0} | median broker CPU per message hub {:.1} us, \
             mosquitto {:.1} us | median memory per device hub {:.1} KiB, mosquitto {:.1} KiB",
            list.join(" "),
            median(&self.ratios),
            col(&self.hub, |r| r.0),
            col(&self.mosq, |r| r.0),
            col(&self.hub, |r| r.1),
            col(&self.mosq, |r| r.1),
            col(&self.hub, |r| r.2),
            col(&self.mosq, |r| r.2),
        );
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run against the hub: (msgs/s, broker CPU us per message, KiB per device), or `None`
/// when skipped.
async fn run_hub(p: &Arc<Params>, dir: &Path) -> Option<(f64, f64, f64)> {
    if p.only.as_deref() == Some("mosquitto") {
        return None;
    }
    // With `--tls both` the hub runs once per profile; the last one's figures go to the ratio.
    let mut last = None;
    for &profile in &p.tls {
        let name = if p.tls.len() > 1 {
            format!("hub/{}", profile.name())
        } else {
            "azsim-hub".to_string()
        };
        last = match hub::run(p, dir, profile).await {
            Ok(stats) => {
                print_stats(&name, &stats, p);
                Some((
                    stats.msgs_per_sec(),
                    stats.cpu_us_per_msg(stats.broker_cpu_ns),
                    stats.kib_per_device(),
                ))
            }
            Err(e) => {
                println!("{name:<10} not run: {e}");
                None
            }
        };
    }
    last
}

/// One run against a fresh mosquitto: (msgs/s, broker CPU us per message, KiB per device).
async fn run_mosquitto(p: &Arc<Params>, dir: &Path) -> Option<(f64, f64, f64)> {
    if p.only.as_deref() == Some("hub") {
        return None;
    }
    match start_mosquitto(dir) {
        Ok(m) => {
            let tls = client_tls(&m.ca_file);
            let specs: Vec<DeviceSpec> = (0..p.devices)
                .map(|i| {
                    let id = format!("load-{i:05}");
                    device_spec("localhost", &id, &random_key())
                })
                .collect();
            let pid = m.child.id().to_string();
            let stats = run_load("mosquitto", m.port, tls, &specs, p, &pid).await;
            print_stats("mosquitto", &stats, p);
            drop(m);
            Some((
                stats.msgs_per_sec(),
                stats.cpu_us_per_msg(stats.broker_cpu_ns),
                stats.kib_per_device(),
            ))
        }
        Err(e) => {
            println!("mosquitto  not run: {e}");
            None
        }
    }
}
