//! `azsim fleet`: clap structs and validation. The work is in `crate::cmd::fleet`, the runner
//! in `crate::fleet`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use azsim_proto::device::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};
use azsim_proto::secret::Secret;
use azsim_proto::session::MAX_IN_FLIGHT;
use clap::Args;

use crate::cli::run::{parse_duration, payload_source, telemetry_properties};
use crate::error::UsageError;
use crate::fleet::device::DeviceSpec;
use crate::fleet::{FleetConfig, Identities, Shard};
use crate::service::target::{Target, TargetInputs};

/// The variable a Kubernetes Indexed Job sets to the pod's index.
pub const ENV_JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
/// Where a Kubernetes Secret hands the fleet its hub connection string (a name of its own, so
/// a shell's `IOTHUB_CONNECTION_STRING` never turns a local fleet into one on a real hub).
pub const ENV_FLEET_HUB_CONNECTION_STRING: &str = "AZSIM_FLEET_HUB_CONNECTION_STRING";
/// Where a Kubernetes Secret hands the fleet its DPS enrollment group key.
pub const ENV_FLEET_DPS_GROUP_KEY: &str = "AZSIM_FLEET_DPS_GROUP_KEY";
/// Most devices one fleet (all shards) may have.
pub const MAX_DEVICES: u64 = 10_000_000;

/// Arguments of `azsim fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Devices in the whole fleet (all shards): `{prefix}{first-index}` onwards.
    #[arg(long, value_name = "N")]
    pub devices: Option<u64>,
    /// Device id prefix.
    #[arg(long, value_name = "P", default_value = "sim-")]
    pub prefix: String,
    /// Number of the first device.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub first_index: u64,
    /// Run only shard I of N (0-based): a contiguous slice; N shards cover the fleet once.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    pub shard: Option<String>,
    /// Run shard $JOB_COMPLETION_INDEX of N (a Kubernetes Indexed Job).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Existing devices: a file of device connection strings, one per line (# comments).
    #[arg(long, value_name = "FILE", conflicts_with = "hub_connection_string")]
    pub connection_strings: Option<PathBuf>,
    /// Create the devices on this hub (bulk registry API) instead of the local hub; a policy
    /// with registry write and device connect rights. From the environment (a Kubernetes
    /// Secret) as AZSIM_FLEET_HUB_CONNECTION_STRING.
    #[arg(long, value_name = "CS", env = ENV_FLEET_HUB_CONNECTION_STRING, hide_env_values = true)]
    pub hub_connection_string: Option<Secret<String>>,
    /// Provision every device through DPS: the enrollment group's key (base64); each device
    /// `{prefix}{i}` registers with the key derived from it. From the environment (a
    /// Kubernetes Secret) as AZSIM_FLEET_DPS_GROUP_KEY.
    #[arg(long, value_name = "B64", env = ENV_FLEET_DPS_GROUP_KEY, hide_env_values = true,
          conflicts_with = "connection_strings")]
    pub group_key: Option<Secret<String>>,
    /// The DPS id scope [default: the local hub's]; required with --provisioning-host.
    #[arg(long, value_name = "SCOPE", requires = "group_key")]
    pub id_scope: Option<String>,
    /// The DPS host (`host[:port]`, e.g. global.azure-devices-provisioning.net)
    /// [default: the local hub's DPS, the hub started here when none runs].
    #[arg(long, value_name = "HOST", requires = "group_key")]
    pub provisioning_host: Option<String>,
    /// Delete the created devices when the fleet stops (with --hub-connection-string).
    #[arg(long, requires = "hub_connection_string")]
    pub delete_after: bool,
    /// Extra CA certificate (PEM) to trust.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Telemetry interval of each device (10s, 500ms, 2).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub interval: String,
    /// Each device's interval is moved by up to this percentage either way, so sends drift
    /// apart.
    #[arg(long, value_name = "PERCENT", default_value_t = 10)]
    pub jitter: u8,
    /// New connections per second while the fleet ramps up.
    #[arg(long, value_name = "PER_SECOND", default_value = "200")]
    pub connect_rate: String,
    /// Stop the fleet after this long.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Each device stops after this many acknowledged messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// QoS 1 telemetry messages in flight per device (1 to 16).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_in_flight: usize,
    /// Telemetry body template (minijinja): `azsim run`'s variables plus `index`; @FILE reads
    /// it from a file.
    #[arg(long, value_name = "TEMPLATE|@FILE")]
    pub payload: Option<String>,
    /// Application property on every message (repeatable).
    #[arg(long = "property", value_name = "K=V")]
    pub properties: Vec<String>,
    /// `$.ct` of every message.
    #[arg(long, value_name = "T", default_value = "application/json")]
    pub content_type: String,
    /// SAS token lifetime in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub token_ttl: u64,
    /// MQTT keep-alive in seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub keep_alive: u16,
    /// Messages each device keeps while offline.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_queue: usize,
    /// Seed of the simulated sensors and the interval jitter.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Local hub state dir.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// MQTT port of a local hub started here.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// MQTT over WebSockets (`wss://HOST:443/$iothub/websocket`; the local hub's HTTPS port).
    #[arg(long)]
    pub websockets: bool,
    /// NDJSON: stats every --stats-every, events, and the summary.
    #[arg(long)]
    pub json: bool,
    /// Threads the devices run on, each a single-threaded runtime [default: 1];
    /// 0 runs them on the process's work-stealing runtime instead.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Devices wake up on a grid of this step shared by the fleet, so devices due close
    /// together send in one wake-up of their thread: each send is late by less than one step,
    /// no device's cadence drifts (1ms: no grid; at most 1s) [default: a twentieth of
    /// --interval, from 1ms to 100ms].
    #[arg(long, value_name = "DURATION")]
    pub timer_resolution: Option<String>,
    /// Period of the stats lines.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub stats_every: String,
    /// Print an `acked` event (device id, `$.mid`) for every acknowledged message, to check
    /// delivery message by message (small fleets).
    #[arg(long)]
    pub print_acks: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

impl FleetArgs {
    /// Validates the arguments (reads `JOB_COMPLETION_INDEX` for `--shards`).
    ///
    /// # Errors
    /// [`UsageError`] naming the flag.
    pub fn into_config(self) -> Result<FleetConfig, UsageError> {
        // Read only for --shards: an unrelated job's variable never stops a plain fleet.
        let job_index = match self.shards {
            Some(_) => crate::cli::run::env_text(ENV_JOB_COMPLETION_INDEX)?,
            None => None,
        };
        self.into_config_with(job_index)
    }

    /// [`FleetArgs::into_config`] with the job index given.
    ///
    /// # Errors
    /// [`UsageError`] naming the flag.
    pub fn into_config_with(self, job_index: Option<String>) -> Result<FleetConfig, UsageError> {
        if let Some(p) = &self.ca
            && !p.is_file()
        {
            return Err(UsageError::new(
                "--ca",
                format!("{} is not a readable file", p.display()),
            ));
        }
        let listed = self
            .connection_strings
            .as_ref()
            .map(|path| read_connection_strings(path, self.ca.is_some()))
            .transpose()?;
        let devices = match (&listed, self.devices) {
            (Some(l), None) => l.len() as u64,
            (Some(l), Some(n)) if n <= l.len() as u64 => n,
            (Some(l), Some(n)) => {
                return Err(UsageError::new(
                    "--devices",
                    format!(
                        "{n} is more than the {} devices in --connection-strings",
                        l.len()
                    ),
                ));
            }
            (None, Some(n)) => n,
            (None, None) => {
                return Err(UsageError::new(
                    "--devices",
                    "required (or give --connection-strings)",
                ));
            }
        };
        if devices == 0 {
            return Err(UsageError::new("--devices", "must be at least 1"));
        }
        if devices > MAX_DEVICES {
            return Err(UsageError::new(
                "--devices",
                format!("must be at most {MAX_DEVICES}"),
            ));
        }
        if self.connection_strings.is_none() {
            check_prefix(&self.prefix, self.first_index, devices)?;
        }
        let shard = match (&self.shard, self.shards) {
            (Some(s), _) => parse_shard(s)?,
            (None, Some(n)) => {
                if n == 0 {
                    return Err(UsageError::new("--shards", "must be at least 1"));
                }
                let raw = job_index.ok_or_else(|| {
                    UsageError::new(
                        ENV_JOB_COMPLETION_INDEX,
                        "must be set with --shards (a Kubernetes Indexed Job sets it)",
                    )
                })?;
                let index: u32 = raw.trim().parse().map_err(|_| {
                    UsageError::new(ENV_JOB_COMPLETION_INDEX, format!("{raw:?} is not a number"))
                })?;
                if index >= n {
                    return Err(UsageError::new(
                        ENV_JOB_COMPLETION_INDEX,
                        format!("{index} is not below --shards {n}"),
                    ));
                }
                Shard { index, count: n }
            }
            (None, None) => Shard { index: 0, count: 1 },
        };
        if u64::from(shard.count) > devices {
            let field = if self.shard.is_some() {
                "--shard"
            } else {
                "--shards"
            };
            return Err(UsageError::new(
                field,
                format!(
                    "{} shards for {devices} devices leaves some empty",
                    shard.count
                ),
            ));
        }
        let interval = parse_duration("--interval", &self.interval)?;
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(UsageError::new(
                "--interval",
                format!("{:?} must be from 100ms to 1 day", self.interval),
            ));
        }
        if self.jitter > 50 {
            return Err(UsageError::new("--jitter", "must be from 0 to 50 percent"));
        }
        let connect_rate: f64 = self
            .connect_rate
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= 1_000_000.0)
            .ok_or_else(|| {
                UsageError::new(
                    "--connect-rate",
                    format!(
                        "{:?} is not a number of connections per second above 0 (at most 1000000)",
                        self.connect_rate
                    ),
                )
            })?;
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration("--duration", d))
            .transpose()?;
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(UsageError::new("--duration", "must be longer than 0s"));
        }
        if self.count == Some(0) {
            return Err(UsageError::new("--count", "must be at least 1"));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(UsageError::new(
                "--max-in-flight",
                format!("must be from 1 to {MAX_IN_FLIGHT}"),
            ));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let payload = payload_source(self.payload, seed, true)?;
        let properties = telemetry_properties(self.properties, &self.content_type)?;
        if !(2..=365 * 24 * 3600).contains(&self.token_ttl) {
            return Err(UsageError::new(
                "--token-ttl",
                "must be between 2 seconds and 365 days",
            ));
        }
        if self.keep_alive > crate::cli::run::MAX_KEEP_ALIVE {
            return Err(UsageError::new(
                "--keep-alive",
                "must be at most 1177 seconds (IoT Hub's limit)",
            ));
        }
        let threads = self
            .threads
            .unwrap_or_else(crate::fleet::workers::default_threads);
        if threads > 1024 {
            return Err(UsageError::new("--threads", "must be from 0 to 1024"));
        }
        if self.max_queue == 0 {
            return Err(UsageError::new("--max-queue", "must be at least 1"));
        }
        if self.port == Some(0) {
            return Err(UsageError::new("--port", "must be between 1 and 65535"));
        }
        let timer_resolution = match &self.timer_resolution {
            Some(r) => parse_duration("--timer-resolution", r)?,
            None => default_timer_resolution(interval_ms),
        };
        if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&timer_resolution) {
            return Err(UsageError::new(
                "--timer-resolution",
                "must be from 1ms to 1s",
            ));
        }
        let stats_every = parse_duration("--stats-every", &self.stats_every)?;
        if stats_every < Duration::from_millis(100) {
            return Err(UsageError::new("--stats-every", "must be at least 100ms"));
        }
        let metrics_addr = self
            .metrics_addr
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    UsageError::new(
                        "--metrics-addr",
                        format!("{a:?} is not an address like 127.0.0.1:9100"),
                    )
                })
            })
            .transpose()?;
        let dps = self
            .group_key
            .map(|key| {
                dps_fleet(
                    key,
                    self.id_scope,
                    self.provisioning_host,
                    self.hub_connection_string.is_some(),
                )
            })
            .transpose()?;
        let identities = match (listed, self.hub_connection_string, dps) {
            (Some(l), _, _) => Identities::Listed(l),
            (None, _, Some(mut d)) => {
                d.state_dir = self.state;
                d.port = self.port;
                Identities::Dps(d)
            }
            (None, Some(cs), None) => {
                let target = Target::resolve_with(
                    TargetInputs {
                        connection_string: Some(cs),
                        ca: self.ca.clone(),
                        state_dir: None,
                    },
                    None,
                    None,
                )
                .map_err(|e| UsageError::new("--hub-connection-string", e.message().to_owned()))?;
                Identities::Hub {
                    target: Box::new(target),
                    delete_after: self.delete_after,
                }
            }
            (None, None, None) => Identities::Local {
                state_dir: self.state,
                port: self.port,
            },
        };
        Ok(FleetConfig {
            identities,
            devices,
            prefix: self.prefix,
            first_index: self.first_index,
            shard,
            ca_file: self.ca,
            interval_ms,
            jitter_percent: self.jitter,
            connect_rate,
            duration,
            count: self.count,
            max_in_flight: self.max_in_flight,
            payload,
            properties,
            content_type: self.content_type,
            token_ttl: self.token_ttl,
            keep_alive: self.keep_alive,
            max_queue: self.max_queue,
            seed,
            transport: if self.websockets {
                crate::device::net::Transport::WebSocket
            } else {
                crate::device::net::Transport::Mqtt
            },
            json: self.json,
            print_acks: self.print_acks,
            stats_every,
            metrics_addr,
            threads,
            timer_resolution,
        })
    }
}

/// `--timer-resolution` when not given: a twentieth of the interval (each send late by under
/// 5% of it), from 1 ms (no grid) to 100 ms.
fn default_timer_resolution(interval_ms: u64) -> Duration {
    Duration::from_millis((interval_ms / 20).clamp(1, 100))
}

/// `--group-key`, `--id-scope`, `--provisioning-host` checked (state dir and port filled in by
/// the caller).
fn dps_fleet(
    key: Secret<String>,
    id_scope: Option<String>,
    provisioning_host: Option<String>,
    has_hub_connection_string: bool,
) -> Result<crate::fleet::dps::DpsFleet, UsageError> {
    if has_hub_connection_string {
        return Err(UsageError::new(
            "--group-key",
            "cannot be used with --hub-connection-string (DPS assigns the hub)",
        ));
    }
    let group_key = super::service::base64_key("--group-key", Some(key))?
        .ok_or_else(|| UsageError::new("--group-key", "required"))?;
    if let Some(s) = &id_scope
        && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(UsageError::new(
            "--id-scope",
            "must be letters and digits (like 0ne0012ABCD)",
        ));
    }
    let host = match provisioning_host {
        None => None,
        Some(h) => {
            let (host, port) = azsim_proto::connection_string::split_host_port(&h)
                .filter(|(host, p)| !host.is_empty() && *p != Some(0))
                .ok_or_else(|| {
                    UsageError::new(
                        "--provisioning-host",
                        "must be host or host:port (port 1 to 65535)",
                    )
                })?;
            Some((host.to_owned(), port))
        }
    };
    if host.is_some() && id_scope.is_none() {
        return Err(UsageError::new(
            "--id-scope",
            "required with --provisioning-host",
        ));
    }
    Ok(crate::fleet::dps::DpsFleet {
        group_key,
        id_scope,
        host,
        state_dir: PathBuf::new(),
        port: None,
    })
}

/// `I/N` with `0 <= I < N`.
fn parse_shard(s: &str) -> Result<Shard, UsageError> {
    let bad = || UsageError::new("--shard", format!("{s:?} is not I/N with 0 <= I < N"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let index: u32 = i.trim().parse().map_err(|_| bad())?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// The ids `{prefix}{first}` .. `{prefix}{first + devices - 1}` must be valid device ids.
fn check_prefix(prefix: &str, first: u64, devices: u64) -> Result<(), UsageError> {
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b));
    if !ok {
        return Err(UsageError::new(
            "--prefix",
            "may hold only letters, digits and -:.+%_#*?!(),=@;$'",
        ));
    }
    let last = first.checked_add(devices - 1).ok_or_else(|| {
        UsageError::new(
            "--first-index",
            "the last device's number does not fit 64 bits",
        )
    })?;
    if prefix.len() + last.to_string().len() > 128 {
        return Err(UsageError::new(
            "--prefix",
            "device ids would be longer than 128 characters",
        ));
    }
    Ok(())
}

/// Device connection strings, one per line; blank lines and `#` comments skipped.
fn read_connection_strings(path: &PathBuf, has_ca: bool) -> Result<Vec<DeviceSpec>, UsageError> {
    const FIELD: &str = "--connection-strings";
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError::new(FIELD, format!("cannot read {}: {e}", path.display())))?;
    let _ = has_ca;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cs = crate::device::credentials::parse_connection_string(line).map_err(|e| {
            // The text of a connection-string error never holds its key.
            UsageError::new(format!("{FIELD}: line {}", n + 1), e.to_string())
        })?;
        if cs.module_id.is_some() {
            return Err(UsageError::new(
                format!("{FIELD}: line {}", n + 1),
                "module connection strings are not supported by the fleet",
            ));
        }
        let (hub_host, port) = azsim_proto::connection_string::split_host_port(&cs.host)
            .ok_or_else(|| {
                UsageError::new(
                    format!("{FIELD}: line {}", n + 1),
                    "HostName has a port that is not a number from 1 to 65535",
                )
            })?;
        let (hub_host, port) = (
            hub_host.to_owned(),
            port.unwrap_or(azsim_emulator::DEFAULT_MQTT_PORT),
        );
        out.push(DeviceSpec {
            index: out.len() as u64,
            device_id: cs.device_id,
            connect_host: cs.gateway.unwrap_or_else(|| hub_host.clone()),
            hub_host,
            port,
            credential: cs.credential,
        });
    }
    if out.is_empty() {
        return Err(UsageError::new(
            FIELD,
            format!("{} holds no connection string", path.display()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        fleet: FleetArgs,
    }

    fn config(args: &[&str], job: Option<&str>) -> Result<FleetConfig, UsageError> {
        let mut argv = vec!["azsim-fleet"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv)
            .unwrap()
            .fleet
            .into_config_with(job.map(str::to_owned))
    }

    #[test]
    fn bad_input_names_the_flag() {
        for (args, field) in [
            (&["--devices", "0"][..], "--devices"),
            (&["--devices", "5", "--shard", "3/3"], "--shard"),
            (&["--devices", "5", "--shard", "x"], "--shard"),
            (&["--devices", "5", "--connect-rate", "0"], "--connect-rate"),
            (
                &["--devices", "5", "--connect-rate", "fast"],
                "--connect-rate",
            ),
            (
                &["--devices", "5", "--max-in-flight", "17"],
                "--max-in-flight",
            ),
            (&["--devices", "5", "--interval", "1ms"], "--interval"),
            (&["--devices", "2", "--shard", "0/3"], "--shard"),
            (
                &["--devices", "5", "--metrics-addr", "nope"],
                "--metrics-addr",
            ),
            (
                &["--connection-strings", "/nonexistent/cs.txt"],
                "--connection-strings",
            ),
        ] {
            let e = config(args, None)
                .err()
                .unwrap_or_else(|| panic!("{args:?} passed"));
            assert_eq!(e.field(), field, "{args:?}: {e}");
        }
        let e = config(&["--devices", "5", "--shards", "3"], None).unwrap_err();
        assert_eq!(e.field(), ENV_JOB_COMPLETION_INDEX);
        let e = config(&["--devices", "5", "--shards", "3"], Some("3")).unwrap_err();
        assert_eq!(e.field(), ENV_JOB_COMPLETION_INDEX);
    }

    #[test]
    fn the_job_index_picks_the_shard() {
        let c = config(&["--devices", "10", "--shards", "3"], Some("2")).unwrap();
        assert_eq!(c.shard, Shard { index: 2, count: 3 });
        let c = config(&["--devices", "10", "--shard", "1/4"], None).unwrap();
        assert_eq!(c.shard, Shard { index: 1, count: 4 });
    }
}
