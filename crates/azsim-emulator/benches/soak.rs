//! Soak bench: N devices publish QoS 1 telemetry for M minutes against a hub process that is
//! killed with SIGKILL and started again on the same state directory at random moments; at the
//! end it counts, per `$.mid`, what the devices saw acknowledged against what the hub's SQLite
//! telemetry log holds, and prints the hub's RSS over time.
//!
//! Not a test: it prints numbers (and exits 1 if an acknowledged message is missing).
//!
//! ```text
//! cargo bench -p azsim-emulator --bench soak -- [--devices N] [--minutes M] [--rate R]
//!     [--window W] [--kill-min S] [--kill-max S] [--sync normal|full]
//! ```
//! Defaults: 50 devices, 30 minutes, 10 messages per second per device, 10 in flight per
//! device, a kill every 20-90 s (uniformly random), `synchronous=FULL` (the hub's default;
//! `--sync normal` for `Durability::ProcessCrash`, which survives these kills too).
//!
//! The hub is this binary started again as a child (like the load bench), with its state on
//! disk and a telemetry log cap high enough to keep every message of the run. Each device is a
//! raw `rumqttc` client with its own TLS connection; a message it sent but did not see
//! PUBACKed when the connection broke is sent again (same `$.mid`) after it reconnects, as a
//! device with a QoS 1 queue does, so a message committed but not acknowledged before a kill is
//! stored twice: those are the duplicates, which QoS 1 allows. Lost means acknowledged and not
//! stored; it must be 0. The run ends with a clean stop: devices stop publishing, wait for
//! their last PUBACKs, the hub stops, then the log is read from `hub.db`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use azsim_proto::property_bag::{PropertyBag, SystemProperties};
use azsim_proto::sas;
use azsim_proto::topic::{self, Identity};
use rand::Rng as _;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{Mutex, watch};

/// Set in the child: serve the hub with its state in this directory.
const CHILD_ENV: &str = "AZSIM_SOAK_HUB_DIR";
/// Set in the child: `mqtt_port,https_port`.
const PORTS_ENV: &str = "AZSIM_SOAK_HUB_PORTS";
/// Set to `full` in the child for `--sync full`.
const SYNC_ENV: &str = "AZSIM_SOAK_HUB_SYNC";

#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    minutes: f64,
    rate: f64,
    window: u16,
    kill_min: f64,
    kill_max: f64,
    sync_full: bool,
}

fn parse_params() -> Params {
    let mut p = Params {
        devices: 50,
        minutes: 30.0,
        rate: 10.0,
        window: 10,
        kill_min: 20.0,
        kill_max: 90.0,
        sync_full: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        let num = || {
            val.parse::<f64>().unwrap_or_else(|_| {
                eprintln!("soak: {} needs a number", args[i]);
                std::process::exit(2)
            })
        };
        match args[i].as_str() {
            "--devices" => p.devices = num() as usize,
            "--minutes" => p.minutes = num(),
            "--rate" => p.rate = num(),
            "--window" => p.window = (num() as u16).max(1),
            "--kill-min" => p.kill_min = num(),
            "--kill-max" => p.kill_max = num(),
            "--sync" => p.sync_full = val != "normal",
            // cargo bench passes `--bench`; ignore it and anything unknown without a value.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    p.kill_max = p.kill_max.max(p.kill_min);
    p
}

mod common;

use common::{client_tls, free_port};

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_main(PathBuf::from(dir));
        return;
    }
    let p = parse_params();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(soak(p));
    std::process::exit(code);
}

/// The hub process: persistent state, the telemetry log uncapped for the run, fixed ports (so
/// devices reconnect to the same address after a restart); stops cleanly when stdin closes.
fn child_main(dir: PathBuf) {
    let ports = std::env::var(PORTS_ENV).unwrap_or_default();
    let (mqtt, https) = ports
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((0, 0));
    let mut cfg = azsim_emulator::HubConfig::new(dir);
    cfg.limits.event_log_cap = 1_000_000_000;
    match std::env::var(SYNC_ENV).as_deref() {
        Ok("full") => cfg.durability = azsim_emulator::store::Durability::PowerLoss,
        Ok("normal") => cfg.durability = azsim_emulator::store::Durability::ProcessCrash,
        _ => {}
    }
    common::serve_hub_child(cfg, mqtt, https, "soak");
}

/// A running hub child.
struct Hub {
    child: tokio::process::Child,
    info: azsim_emulator::HubInfo,
}

impl Hub {
    async fn start(state: &Path, ports: (u16, u16), sync_full: bool) -> Result<Hub, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.env(CHILD_ENV, state)
            .env(PORTS_ENV, format!("{},{}", ports.0, ports.1))
            .env(SYNC_ENV, if sync_full { "full" } else { "normal" })
            .env("RUST_LOG", "warn");
        let (child, info) = common::start_hub_child(cmd).await?;
        Ok(Hub { child, info })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn stop(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            other => Err(format!("hub stop: {other:?}")),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Registers `n` devices over REST; their ids and keys.
async fn register(
    info: &azsim_emulator::HubInfo,
    tls: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Result<Vec<(String, String)>, String> {
    let owner = common::Owner::new(info, tls, 7 * 86_400)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("soak-{i:04}");
        let key = azsim_emulator::state_dir::generate_key();
        owner
            .create_device(&id, &key, &azsim_emulator::state_dir::generate_key())
            .await?;
        out.push((id, key));
    }
    Ok(out)
}

/// What all devices saw, shared.
#[derive(Default)]
struct Tally {
    /// Every `$.mid` PUBACKed (a message sent again and acknowledged twice counts once).
    acked: Mutex<HashSet<String>>,
    acks: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    connects: AtomicU64,
}

/// The hub's address (the same across restarts).
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

/// One device: publishes `$.mid` = `{id}:{n}` at `rate` per second with up to `window` in flight,
/// reconnecting (and re-sending what was not acknowledged) whenever the connection breaks,
/// until `stop`; then waits for its last PUBACKs.
async fn run_device(
    id: String,
    key: String,
    target: Target,
    p: Params,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
) {
    let mut next_n: u64 = 0;
    // Sent, not acknowledged: sent again (first) after a reconnect.
    let mut unacked: VecDeque<String> = VecDeque::new();
    loop {
        let stopping = *stop.borrow();
        if stopping && unacked.is_empty() {
            return;
        }
        let mut password = String::new();
        sas::sign(
            &mut password,
            &sas::Resource::Device {
                host: &target.host,
                device_id: &id,
            },
            &key,
            unix_now() + 86_400,
            None,
        )
        .expect("sign");
        let mut username = String::new();
        azsim_proto::username::write_username(&mut username, &target.host, &id, None, "soak", None)
            .expect("username");
        let mut o = MqttOptions::new(id.clone(), target.host.clone(), target.port);
        o.set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(p.window)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                target.tls.clone(),
            )));
        let (client, mut el) = AsyncClient::new(o, usize::from(p.window) * 2 + 4);
        let mut net = el.network_options();
        net.set_connection_timeout(5);
        el.set_network_options(net);
        // CONNACK first.
        let connected = loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    break a.code == rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        if !connected {
            let pause = Duration::from_millis(rand::thread_rng().gen_range(200..1000));
            tokio::time::sleep(pause).await;
            continue;
        }
        tally.connects.fetch_add(1, Ordering::Relaxed);
        // The mids in the order they were handed to rumqttc (its pkids follow that order; a
        // client is never resumed, so nothing is retransmitted out of it).
        let mut queued: VecDeque<String> = VecDeque::new();
        let mut in_flight: HashMap<u16, String> = HashMap::new();
        let mut resend: VecDeque<String> = std::mem::take(&mut unacked);
        let period = Duration::from_secs_f64(1.0 / p.rate);
        let mut next_send = tokio::time::Instant::now();
        let mut stop_rx = stop.clone();
        loop {
            let stopping = *stop_rx.borrow();
            let may_send = queued.len() + in_flight.len() < usize::from(p.window)
                && (!resend.is_empty() || !stopping);
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(mid) = queued.pop_front() {
                            in_flight.insert(pkid, mid);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        if let Some(mid) = in_flight.remove(&a.pkid) {
                            tally.acks.fetch_add(1, Ordering::Relaxed);
                            tally.acked.lock().await.insert(mid);
                        }
                        if stopping && resend.is_empty() && queued.is_empty() && in_flight.is_empty() {
                            let _ = client.try_disconnect();
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(next_send), if may_send => {
                    let (mid, again) = match resend.pop_front() {
                        Some(m) => (m, true),
                        None => {
                            next_n += 1;
                            (format!("{id}:{next_n}"), false)
                        }
                    };
                    let mut t = String::new();
                    topic::write_telemetry_topic(
                        &mut t,
                        Identity::device(&id),
                        &SystemProperties { message_id: Some(&mid), ..Default::default() },
                        [],
                    )
                    .expect("topic");
                    if client.try_publish(t, QoS::AtLeastOnce, false, b"{\"soak\":1}".to_vec()).is_err() {
                        resend.push_front(mid);
                        break;
                    }
                    if again {
                        tally.resent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    queued.push_back(mid);
                    // Re-sends go out at once; new messages at the device's rate.
                    if resend.is_empty() {
                        next_send += period;
                        let now = tokio::time::Instant::now();
                        if next_send < now {
                            next_send = now;
                        }
                    }
                }
                r = stop_rx.changed(), if !stopping => { let _ = r; }
            }
            if stopping && resend.is_empty() && queued.is_empty() && in_flight.is_empty() {
                let _ = client.try_disconnect();
                return;
            }
        }
        // The connection broke: what was not acknowledged goes again, in order.
        let mut lost: Vec<(u16, String)> = in_flight.drain().collect();
        lost.sort_by_key(|(pkid, _)| *pkid);
        unacked.extend(lost.into_iter().map(|(_, m)| m));
        unacked.extend(queued.drain(..));
        unacked.extend(resend.drain(..));
        let pause = Duration::from_millis(rand::thread_rng().gen_range(100..500));
        tokio::time::sleep(pause).await;
    }
}

/// Every `$.mid` in the hub's telemetry log, with how often it is there.
fn stored_mids(db: &Path) -> Result<HashMap<String, u32>, String> {
    let c = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let mut stmt = c
        .prepare("SELECT props FROM events")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut out: HashMap<String, u32> = HashMap::new();
    while let Some(r) = rows.next().map_err(|e| e.to_string())? {
        let props: Option<String> = r.get(0).map_err(|e| e.to_string())?;
        let Some(props) = props else { continue };
        for prop in PropertyBag::new(&props).iter() {
            let mut name = String::new();
            if prop.name.decode_to(&mut name).is_err() || name != "$.mid" {
                continue;
            }
            let mut v = String::new();
            if let Some(raw) = prop.value
                && raw.decode_to(&mut v).is_ok()
            {
                *out.entry(v).or_default() += 1;
            }
        }
    }
    Ok(out)
}

async fn soak(p: Params) -> i32 {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("hub");
    let ports = (free_port(), free_port());
    println!(
        "azsim soak: {} devices x {} msg/s (QoS 1, {} in flight) for {} min, hub killed (SIGKILL) every {}-{} s, synchronous={}",
        p.devices,
        p.rate,
        p.window,
        p.minutes,
        p.kill_min,
        p.kill_max,
        if p.sync_full { "FULL" } else { "NORMAL" }
    );
    let hub = match Hub::start(&state, ports, p.sync_full).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("soak: {e}");
            return 1;
        }
    };
    let tls = client_tls(&hub.info.ca_file);
    let devices = match register(&hub.info, &tls, p.devices).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("soak: {e}");
            return 1;
        }
    };
    let target = Target {
        host: hub.info.hostname.clone(),
        port: hub.info.mqtt_port,
        tls,
    };
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (id, key) in devices {
        tasks.push(tokio::spawn(run_device(
            id,
            key,
            target.clone(),
            p.clone(),
            tally.clone(),
            stop_rx.clone(),
        )));
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(p.minutes * 60.0);
    let hub = Arc::new(Mutex::new(Some(hub)));
    // The RSS and progress printer.
    let printer = {
        let (tally, hub) = (tally.clone(), hub.clone());
        tokio::spawn(async move {
            let mut last_acks = 0;
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let pid = hub.lock().await.as_ref().and_then(Hub::pid);
                let rss = pid.map_or(0, rss_kib);
                let acks = tally.acks.load(Ordering::Relaxed);
                let rate = (acks - last_acks) as f64 / last.elapsed().as_secs_f64();
                (last_acks, last) = (acks, Instant::now());
                println!(
                    "t={:>5.0}s hub RSS {:>6.1} MiB | acked {} ({rate:.0}/s) | sent {} new, {} again | connects {}",
                    t0.elapsed().as_secs_f64(),
                    rss as f64 / 1024.0,
                    acks,
                    tally.sent.load(Ordering::Relaxed),
                    tally.resent.load(Ordering::Relaxed),
                    tally.connects.load(Ordering::Relaxed),
                );
            }
        })
    };
    // The killer: SIGKILL at random moments, a random pause, start again on the same dir.
    let mut kills = 0u32;
    loop {
        let wait = Duration::from_secs_f64(rand::thread_rng().gen_range(p.kill_min..=p.kill_max));
        if Instant::now() + wait >= end {
            tokio::time::sleep_until(end.into()).await;
            break;
        }
        tokio::time::sleep(wait).await;
        let old = hub.lock().await.take();
        if let Some(h) = old {
            let rss = h.pid().map_or(0, rss_kib);
            h.kill9().await;
            kills += 1;
            println!(
                "t={:>5.0}s kill -9 #{kills} (hub RSS was {:.1} MiB)",
                t0.elapsed().as_secs_f64(),
                rss as f64 / 1024.0
            );
        }
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..2000))).await;
        match Hub::start(&state, ports, p.sync_full).await {
            Ok(h) => *hub.lock().await = Some(h),
            Err(e) => {
                eprintln!("soak: restart failed: {e}");
                return 1;
            }
        }
    }
    println!(
        "t={:>5.0}s stopping: devices finish their in-flight messages",
        t0.elapsed().as_secs_f64()
    );
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), t).await;
    }
    printer.abort();
    if let Some(h) = hub.lock().await.take() {
        let rss = h.pid().map_or(0, rss_kib);
        println!("final hub RSS {:.1} MiB", rss as f64 / 1024.0);
        if let Err(e) = h.stop().await {
            eprintln!("soak: {e}");
        }
    }
    let stored = match stored_mids(&state.join("hub.db")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: reading hub.db: {e}");
            return 1;
        }
    };
    let acked = tally.acked.lock().await;
    let lost: Vec<&String> = acked.iter().filter(|m| !stored.contains_key(*m)).collect();
    let duplicated = stored.values().filter(|&&n| n > 1).count();
    let extra_rows: u64 = stored.values().map(|&n| u64::from(n - 1)).sum();
    let stored_not_acked = stored.keys().filter(|m| !acked.contains(*m)).count();
    println!(
        "result: {} min, {kills} kills | acknowledged {} | stored {} distinct ({} rows) | \
         duplicated {duplicated} ({extra_rows} extra rows) | stored, never acknowledged {stored_not_acked} | \
         LOST (acknowledged, not stored) {}",
        p.minutes,
        acked.len(),
        stored.len(),
        stored.len() as u64 + extra_rows,
        lost.len()
    );
    if !lost.is_empty() {
        let sample: Vec<&&String> = lost.iter().take(10).collect();
        println!("lost, e.g.: {sample:?}");
        return 1;
    }
    0
}
