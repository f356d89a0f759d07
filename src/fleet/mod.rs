//! `azsim fleet`: many devices in one process, each the same session and behaviour as
//! `azsim run` (the one device loop, [`azsim_mqtt::Client`], one tokio task per device, one
//! rustls client configuration for all), with the fleet's pacing, counting and reporting around
//! them.
//!
//! Identities: `{prefix}{i}` created (or their keys reset) with the bulk registry call on the
//! local hub (started or reused as `azsim run` does) or on a real hub
//! (`--hub-connection-string`), or existing devices from `--connection-strings`. A shard
//! (`--shard I/N`) takes a contiguous slice of the fleet's indices; the N slices cover every
//! device exactly once.
//!
//! Or, with `--group-key`, every device registers through DPS (an enrollment group; the local
//! hub's DPS unless `--provisioning-host`) and runs on the hub it is assigned (`dps`).
//!
//! What it does not do: modules, X.509 devices.

pub mod clock;
pub mod device;
pub mod dps;
pub mod metrics;
pub mod registry;
pub mod stats;
pub mod workers;

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::device::driver::Credential;
use crate::device::local_hub::LocalHub;
use crate::device::net::{Transport, WEBSOCKET_PORT};
use crate::device::output::Output;
use crate::device::template::Template;
use crate::service::target::{Target, TargetInputs};
use azsim_proto::secret::Secret;
use device::{Common, DeviceSpec};
use registry::Registry;
use stats::{Snapshot, Stats};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards.
    pub count: u32,
}

impl Shard {
    /// The offsets (0-based, into a fleet of `total`) this shard runs: a contiguous slice, the
    /// slices of shards `0..count` in order covering `0..total` exactly once.
    pub fn range(self, total: u64) -> Range<u64> {
        let (i, n) = (u64::from(self.index), u64::from(self.count.max(1)));
        (total * i / n)..(total * (i + 1) / n)
    }
}

/// Where the fleet's identities come from.
#[derive(Debug)]
pub enum Identities {
    /// `{prefix}{i}` on the local hub of `state_dir` (started here when none runs).
    Local {
        /// State dir.
        state_dir: PathBuf,
        /// MQTT port for a hub started here (`None`: the default).
        port: Option<u16>,
    },
    /// `{prefix}{i}` on the hub of a service connection string.
    Hub {
        /// The hub.
        target: Box<Target>,
        /// Delete the devices when the fleet stops.
        delete_after: bool,
    },
    /// Existing devices, one connection string each, in file order (index = line number from 0).
    Listed(Vec<DeviceSpec>),
    /// `{prefix}{i}` registered through DPS with keys derived from a group key.
    Dps(dps::DpsFleet),
}

/// How one device of the fleet starts.
enum Start {
    /// Its identity is known: run it.
    Run(DeviceSpec),
    /// Register it through DPS (index, registration id), then run it.
    Provision(u64, String),
}

impl Start {
    fn device_id(&self) -> &str {
        match self {
            Start::Run(s) => &s.device_id,
            Start::Provision(_, id) => id,
        }
    }
}

/// Everything a fleet run needs, validated.
#[derive(Debug)]
pub struct FleetConfig {
    /// Identities.
    pub identities: Identities,
    /// Fleet size (all shards).
    pub devices: u64,
    /// Device id prefix.
    pub prefix: String,
    /// Index of the first device.
    pub first_index: u64,
    /// This process's shard.
    pub shard: Shard,
    /// Extra CA (real hubs, listed devices).
    pub ca_file: Option<PathBuf>,
    /// Telemetry interval, ms.
    pub interval_ms: u64,
    /// Interval jitter, percent.
    pub jitter_percent: u8,
    /// New connections per second.
    pub connect_rate: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Each device stops after this many acknowledged messages.
    pub count: Option<u64>,
    /// QoS 1 messages in flight per device.
    pub max_in_flight: usize,
    /// Body template source.
    pub payload: Option<String>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// `$.ct`.
    pub content_type: String,
    /// Token lifetime, s.
    pub token_ttl: u64,
    /// Keep-alive, s.
    pub keep_alive: u16,
    /// Offline queue per device.
    pub max_queue: usize,
    /// Seed.
    pub seed: u64,
    /// MQTT over TLS, or over WebSockets (`--websockets`).
    pub transport: Transport,
    /// NDJSON output.
    pub json: bool,
    /// An `acked` event per acknowledged message.
    pub print_acks: bool,
    /// Stats line period.
    pub stats_every: Duration,
    /// Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Threads the devices run on (one single-threaded runtime each).
    pub threads: usize,
    /// The grid devices wake up on (`--timer-resolution`).
    pub timer_resolution: Duration,
}

/// Why a fleet could not run (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The local hub could not be used.
    #[error(transparent)]
    LocalHub(#[from] crate::device::local_hub::LocalHubError),
    /// The registry refused the identities.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

/// How long stopped devices get to DISCONNECT before the summary.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs the fleet until every device reached `--count`, `--duration` passed, or `shutdown`
/// (Ctrl-C, SIGTERM) completes; then disconnects every device and returns the summary (also
/// printed).
///
/// # Errors
/// [`FleetError`] when the identities cannot be set up; failures of single devices are counted,
/// not returned.
pub async fn run(
    cfg: FleetConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Snapshot, FleetError> {
    let out = Output::stdout(cfg.json);
    let mine = cfg.shard.range(cfg.devices);
    let indices = (cfg.first_index + mine.start)..(cfg.first_index + mine.end);
    let mut local = None;
    let mut cleanup = None;
    let mut dps_plan = None;
    let (mut specs, ca_file, https_port) = match cfg.identities {
        Identities::Dps(ref d) => {
            let (plan, hub) = dps::plan(d, cfg.ca_file.clone(), cfg.transport, &out).await?;
            local = hub;
            let ca = plan.ca_file.clone();
            dps_plan = Some(Arc::new(plan));
            let https = local
                .as_ref()
                .map_or(WEBSOCKET_PORT, |h| h.info().https_port);
            (Vec::new(), ca, https)
        }
        Identities::Listed(ref all) => {
            let specs: Vec<DeviceSpec> = all
                .iter()
                .skip(usize::try_from(mine.start).unwrap_or(usize::MAX))
                .take(usize::try_from(mine.end - mine.start).unwrap_or(usize::MAX))
                .cloned()
                .collect();
            (specs, cfg.ca_file.clone(), WEBSOCKET_PORT)
        }
        Identities::Local {
            ref state_dir,
            port,
        } => {
            let hub = LocalHub::ensure(state_dir, port, &out).await?;
            let info = hub.info().clone();
            let target = Target::resolve_with(
                TargetInputs {
                    connection_string: Some(Secret::new(info.service_connection_string.clone())),
                    ca: Some(info.ca_file.clone()),
                    state_dir: None,
                },
                None,
                None,
            )
            .map_err(|e| FleetError::Other(e.to_string()))?;
            let specs = register(
                &target,
                &cfg.prefix,
                indices.clone(),
                &info.hostname,
                &info.hostname,
                info.mqtt_port,
            )
            .await?;
            let ca = cfg.ca_file.clone().or_else(|| Some(hub.ca_file()));
            local = Some(hub);
            (specs, ca, info.https_port)
        }
        Identities::Hub {
            ref target,
            delete_after,
        } => {
            let mqtt = target.mqtt_endpoint(None);
            let specs = register(
                target,
                &cfg.prefix,
                indices.clone(),
                target.host_name(),
                &mqtt.host,
                mqtt.port,
            )
            .await?;
            if delete_after {
                cleanup = Some(Registry::new(target)?);
            }
            let https = target
                .local_hub
                .as_ref()
                .map_or(WEBSOCKET_PORT, |h| h.https_port);
            (specs, cfg.ca_file.clone(), https)
        }
    };
    if cfg.transport == Transport::WebSocket {
        // WebSockets go to the hub's HTTPS port (443 on Azure), whatever the MQTT port.
        for s in &mut specs {
            s.port = https_port;
        }
    }
    let starts: Vec<Start> = if dps_plan.is_some() {
        indices
            .clone()
            .map(|i| Start::Provision(i, format!("{}{i}", cfg.prefix)))
            .collect()
    } else {
        specs.into_iter().map(Start::Run).collect()
    };
    raise_open_files_limit(starts.len() as u64 + 256, &out);
    let tls = crate::tls::client_config(ca_file.as_deref())?;
    let payload = cfg
        .payload
        .clone()
        .map(|p| Template::for_fleet(p, cfg.seed))
        .transpose()
        .map_err(|e| FleetError::Other(format!("--payload: {e}")))?;
    let stats = Arc::new(Stats::default());
    stats.devices.store(starts.len() as u64, Ordering::Relaxed);
    stats
        .provisioning
        .store(dps_plan.is_some(), Ordering::Relaxed);
    let started = Instant::now();
    let metrics = match cfg.metrics_addr {
        Some(addr) => {
            let (bound, task) = metrics::serve(addr, stats.clone(), started)
                .await
                .map_err(FleetError::Other)?;
            out.emit("metrics", json!({"addr": bound.to_string()}), || {
                format!("prometheus metrics on http://{bound}/metrics")
            });
            Some(task)
        }
        None => None,
    };
    let ids: Vec<String> = starts.iter().map(|s| s.device_id().to_owned()).collect();
    out.emit(
        "fleet",
        json!({
            "devices": starts.len(),
            "fleet_devices": cfg.devices,
            "shard": format!("{}/{}", cfg.shard.index, cfg.shard.count),
            "first": ids.first(),
            "last": ids.last(),
            "device_ids": if starts.len() <= 1000 { json!(ids) } else { json!(null) },
            "threads": cfg.threads,
            "timer_resolution_ms": cfg.timer_resolution.as_millis(),
            "provisioning": dps_plan.as_ref().map(|p| json!({"host": p.host, "port": p.port, "id_scope": p.id_scope})),
        }),
        || {
            format!(
                "fleet: {} devices ({} .. {}), shard {}/{}, {} connections/s",
                starts.len(),
                ids.first().map_or("-", String::as_str),
                ids.last().map_or("-", String::as_str),
                cfg.shard.index,
                cfg.shard.count,
                cfg.connect_rate
            )
        },
    );

    let common = Arc::new(Common {
        stats: stats.clone(),
        out: out.clone(),
        tls,
        interval_ms: cfg.interval_ms,
        jitter_percent: cfg.jitter_percent,
        count: cfg.count,
        payload,
        properties: cfg.properties.clone(),
        content_type: cfg.content_type.clone(),
        token_ttl: cfg.token_ttl,
        keep_alive: cfg.keep_alive,
        max_queue: cfg.max_queue,
        max_in_flight: cfg.max_in_flight,
        seed: cfg.seed,
        print_acks: cfg.print_acks,
        transport: cfg.transport,
        restart_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        timer_resolution: cfg.timer_resolution,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let rate = cfg.connect_rate;
    let mut fleet = {
        let stop = stop_rx.clone();
        let stats = stats.clone();
        let dps_plan = dps_plan.clone();
        let mut workers = workers::Workers::new(cfg.threads).map_err(FleetError::Other)?;
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            let t0 = tokio::time::Instant::now();
            for (k, start) in starts.into_iter().enumerate() {
                let at = t0 + Duration::from_secs_f64(k as f64 / rate);
                let mut s = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    _ = s.wait_for(|v| *v) => break,
                }
                match (start, &dps_plan) {
                    (Start::Run(spec), _) => {
                        set.spawn_on(
                            device::run_device(spec, common.clone(), stop.clone()),
                            workers.next_handle(),
                        );
                    }
                    (Start::Provision(index, id), Some(plan)) => {
                        set.spawn_on(
                            dps::provision_and_run(
                                plan.clone(),
                                common.clone(),
                                index,
                                id,
                                stop.clone(),
                            ),
                            workers.next_handle(),
                        );
                    }
                    (Start::Provision(..), None) => continue,
                }
                stats.started.fetch_add(1, Ordering::Relaxed);
            }
            while set.join_next().await.is_some() {}
            // The runtimes end with the last device.
            drop(workers);
        })
    };
    let reporter = tokio::spawn(report(
        stats.clone(),
        out.clone(),
        started,
        cfg.stats_every,
        cfg.json,
    ));

    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = &mut fleet => "count",
        () = shutdown => "interrupted",
        () = deadline => "duration",
    };
    let _ = stop_tx.send(true);
    if reason != "count" && tokio::time::timeout(STOP_GRACE, &mut fleet).await.is_err() {
        fleet.abort();
        stats.error("disconnect_timeout");
    }
    reporter.abort();
    let _ = reporter.await;
    if let Some(m) = metrics {
        m.abort();
    }
    let snap = stats.snapshot(started.elapsed());
    let mut fields = snap.to_json(snap.msgs_per_sec());
    if let Some(m) = fields.as_object_mut() {
        m.insert("reason".into(), json!(reason));
    }
    out.emit("summary", fields, || snap.to_text());
    if let Some(reg) = cleanup {
        match reg.delete(&ids).await {
            Ok(()) => out.emit("deleted", json!({"devices": ids.len()}), || {
                format!("deleted {} devices", ids.len())
            }),
            Err(e) => {
                if let Some(l) = local {
                    l.stop().await;
                }
                return Err(e.into());
            }
        }
    }
    if let Some(l) = local {
        l.stop().await;
    }
    Ok(snap)
}

/// Each device holds a socket: the soft open-files limit (often 1024) is raised to the hard one
/// when it is below `needed`; a warning says so when even that is too low.
fn raise_open_files_limit(needed: u64, out: &Output) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return;
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < needed {
        out.emit(
            "warning",
            json!({"open_files_limit": now, "needed": needed}),
            || {
                format!(
                    "warning: the open-files limit {now} is below the ~{needed} this fleet needs; raise it with `ulimit -n`"
                )
            },
        );
    }
}

/// Creates `{prefix}{i}` for each `i` with fresh keys (bulk `createOrUpdate`) and returns how
/// to connect as each.
async fn register(
    target: &Target,
    prefix: &str,
    indices: Range<u64>,
    hub_host: &str,
    connect_host: &str,
    port: u16,
) -> Result<Vec<DeviceSpec>, FleetError> {
    let keyed: Vec<(String, String)> = indices
        .clone()
        .map(|i| {
            (
                format!("{prefix}{i}"),
                azsim_emulator::state_dir::generate_key(),
            )
        })
        .collect();
    Registry::new(target)?.create_or_update(&keyed).await?;
    Ok(indices
        .zip(keyed)
        .map(|(index, (device_id, key))| DeviceSpec {
            index,
            device_id,
            hub_host: hub_host.to_owned(),
            connect_host: connect_host.to_owned(),
            port,
            credential: Credential::Key(Secret::new(key)),
        })
        .collect())
}

/// NDJSON `stats` lines every `every`, or on a terminal a live line on stderr.
async fn report(stats: Arc<Stats>, out: Output, started: Instant, every: Duration, json: bool) {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(stats.devices.load(Ordering::Relaxed));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} {pos}/{len} connected {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let period = if bar.is_some() {
        Duration::from_millis(250)
    } else {
        every
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut last_acked = 0;
    let mut last_at = Instant::now();
    let _finish = FinishBar(bar.clone());
    loop {
        tick.tick().await;
        let snap = stats.snapshot(started.elapsed());
        let window = last_at.elapsed().as_secs_f64();
        let rate = if window > 0.0 {
            snap.acked.saturating_sub(last_acked) as f64 / window
        } else {
            0.0
        };
        match &bar {
            Some(pb) => {
                pb.set_position(snap.connected);
                pb.set_message(format!(
                    "| {rate:.0} msgs/s | {} acked | {} in flight | {} errors | {} reconnects",
                    snap.acked,
                    snap.in_flight(),
                    snap.error_count(),
                    snap.reconnects
                ));
                // The terminal line wants a smooth rate; the window is the last second.
                if last_at.elapsed() >= Duration::from_secs(1) {
                    last_acked = snap.acked;
                    last_at = Instant::now();
                }
            }
            None => {
                out.emit("stats", snap.to_json(rate), || {
                    format!(
                        "{:.0} s: {}/{} connected, {rate:.0} msgs/s, {} acked, {} errors",
                        snap.elapsed.as_secs_f64(),
                        snap.connected,
                        snap.devices,
                        snap.acked,
                        snap.error_count()
                    )
                });
                last_acked = snap.acked;
                last_at = Instant::now();
            }
        }
    }
}

/// Clears the live line when the reporter ends (aborted), so the summary starts clean.
struct FinishBar(Option<indicatif::ProgressBar>);

impl Drop for FinishBar {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_fleet_exactly_once() {
        for total in [0u64, 1, 2, 7, 100, 10_001] {
            for count in 1..=9u32 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(total);
                    assert_eq!(r.start, next, "total {total} shard {index}/{count}");
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }
}
