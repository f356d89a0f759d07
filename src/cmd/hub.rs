//! `azsim hub`: start the local IoT Hub, print how to reach it, serve until Ctrl-C, stop cleanly;
//! and its background mode for scripts and CI: `start` (a detached `azsim hub --json` child),
//! `stop`, `status` and `env`.
//!
//! Which hub runs in a state dir: `hub.json` (written by the hub once it listens) names its PID
//! and ports; `hub.pid` (written here by the serving process once ready, removed on a clean stop)
//! records the same PID with the process's start time (`/proc/PID/stat`, field 22) and the
//! address its listeners answer on. A hub is running only when the PID exists and is not a
//! zombie, its start time is the recorded one (so a PID reused by another process is not taken
//! for the hub), and both its MQTT and HTTPS ports accept a TCP connection.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use azsim_emulator::{DashboardPort, HubConfig, HubInfo};
use azsim_proto::connection_string::{ConnectionString, split_host_port};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::hub::{HubCliConfig, HubCommand};
use crate::cmd::shell_quote;
use crate::error::CliError;

/// The run record next to `hub.json`.
pub const RUN_RECORD: &str = "hub.pid";
/// Where a detached hub's stdout and stderr go.
pub const LOG_FILE: &str = "hub.log";
/// How long `start` waits for the listeners, and `stop` for the exit.
const WAIT: Duration = Duration::from_secs(60);

/// Runs `azsim hub` or one of its background subcommands.
///
/// # Errors
/// Runtime errors (exit 1): ports in use, an unusable state directory, no hub running.
pub async fn run(cmd: HubCommand) -> Result<ExitCode, CliError> {
    match cmd {
        HubCommand::Serve(cfg) => serve(cfg).await,
        HubCommand::Start(cfg) => start(cfg).await,
        HubCommand::Stop { state } => stop(&state).await,
        HubCommand::Status { state, json } => status(&state, json).await,
        HubCommand::Env(cfg) => super::hub_env::env(cfg).await,
        HubCommand::Ca(cfg) => crate::cmd::cert::hub_ca(*cfg).await,
        HubCommand::Policies { state, json } => crate::cmd::hub_fault::policy_list(&state, json),
        HubCommand::Fault(cfg) => crate::cmd::hub_fault::fault(cfg).await,
    }
}

/// What `hub.pid` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RunRecord {
    pid: u32,
    /// `/proc/PID/stat` field 22 (clock ticks after boot), when there is a `/proc`.
    start_time: Option<u64>,
    /// The address the listeners answer on (the bind address, loopback for a wildcard).
    probe_ip: IpAddr,
}

/// A running hub.
#[derive(Debug, Clone)]
pub struct LiveHub {
    /// Its `hub.json`.
    pub info: HubInfo,
    /// Its state dir, absolute.
    pub state: PathBuf,
}

impl LiveHub {
    /// The CA file as an absolute path (a foreground hub with a relative `--state` records it
    /// relative to its own working directory; it is always `{state}/ca.pem`).
    pub fn ca_file(&self) -> PathBuf {
        if self.info.ca_file.is_absolute() {
            self.info.ca_file.clone()
        } else {
            self.state.join(
                self.info
                    .ca_file
                    .file_name()
                    .unwrap_or(std::ffi::OsStr::new("ca.pem")),
            )
        }
    }

    /// The ready JSON line (`azsim hub --json` plus `pid` and `state`).
    pub fn ready_json(&self) -> Value {
        json!({
            "mqtt_port": self.info.mqtt_port,
            "https_port": self.info.https_port,
            "ca_file": self.ca_file(),
            "service_connection_string": service_connection_string(&self.info),
            "hostname": self.info.hostname,
            "amqp_port": self.info.amqp_port,
            "eventhub_connection_string": self.info.eventhub_connection_string,
            "amqp_dev_port": self.info.amqp_dev_port,
            "eventhub_dev_connection_string": self.info.eventhub_dev_connection_string,
            "pid": self.info.pid,
            "state": self.state,
            "dashboard_url": self.info.dashboard_url,
            "id_scope": self.info.id_scope,
            "provisioning_host": self.info.provisioning_host,
            "provisioning_service_connection_string": self.info.provisioning_service_connection_string,
            "settings": self.info.settings,
        })
    }
}

/// The hub's service connection string, with `HostName` carrying no port when the HTTPS port is
/// 443 (as a real hub's; the hub itself always writes `host:port`).
pub fn service_connection_string(info: &HubInfo) -> String {
    let written = &info.service_connection_string;
    if info.https_port != 443 {
        return written.clone();
    }
    let Ok(cs) = ConnectionString::parse(written) else {
        return written.clone();
    };
    let (Some((host, Some(443))), Some(policy), Some(key)) = (
        split_host_port(cs.host_name()),
        cs.shared_access_key_name(),
        cs.shared_access_key(),
    ) else {
        return written.clone();
    };
    let mut out = String::new();
    match ConnectionString::service(host, policy, key).map(|c| c.write_with_secret(&mut out)) {
        Ok(Ok(())) => out,
        _ => written.clone(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// `/proc/PID/stat`: the process state letter and its start time, `None` when there is no
/// such process (or no `/proc`).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn has_proc() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether `pid` is a live (non-zombie) process; without `/proc`, `kill -0` decides.
fn pid_alive(pid: u32) -> bool {
    if has_proc() {
        return proc_stat(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X');
    }
    std::process::Command::new("sh")
        .args(["-c", "kill -0 \"$1\" 2>/dev/null", "sh", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn probe_ip(bind: IpAddr) -> IpAddr {
    match bind {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

async fn answers(ip: IpAddr, port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// The hub running in `state`, or why there is none (one line, naming the state dir).
///
/// # Errors
/// Why no hub is running there: no `hub.json`, its process gone, its PID now another process,
/// or its listeners not answering.
pub async fn live_hub(state: &Path) -> Result<LiveHub, String> {
    let dir = absolute(state);
    let shown = dir.display();
    if !dir.join(azsim_emulator::HUB_JSON).exists() {
        return Err(format!("no hub has run in {shown} (no hub.json)"));
    }
    let info = HubInfo::load(&dir).map_err(|e| e.to_string())?;
    let record: Option<RunRecord> = std::fs::read_to_string(dir.join(RUN_RECORD))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let pid = info.pid;
    if !pid_alive(pid) {
        return Err(format!(
            "the hub of {shown} is not running (hub.json names pid {pid}, which is gone)"
        ));
    }
    let ip = match &record {
        Some(r) if r.pid != pid => {
            return Err(format!(
                "the hub of {shown} is not running (stale: hub.json names pid {pid}, hub.pid \
                 names pid {})",
                r.pid
            ));
        }
        Some(r) => {
            if let (Some(recorded), Some((_, now))) = (r.start_time, proc_stat(pid))
                && recorded != now
            {
                return Err(format!(
                    "the hub of {shown} is not running (stale: pid {pid} is now another \
                     process, started after the hub)"
                ));
            }
            r.probe_ip
        }
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    for (what, port) in [("MQTT", info.mqtt_port), ("HTTPS", info.https_port)] {
        if !answers(ip, port).await {
            return Err(format!(
                "the hub of {shown} is not answering (pid {pid} runs, but its {what} port \
                 {ip}:{port} does not accept connections)"
            ));
        }
    }
    Ok(LiveHub { info, state: dir })
}

/// `--durability`'s name for `d`.
fn durability_name(d: azsim_emulator::store::Durability) -> &'static str {
    match d {
        azsim_emulator::store::Durability::PowerLoss => "power-loss",
        azsim_emulator::store::Durability::ProcessCrash => "process-crash",
    }
}

/// `azsim hub` in the foreground: until Ctrl-C or SIGTERM.
async fn serve(cfg: HubCliConfig) -> Result<ExitCode, CliError> {
    let mut hc = HubConfig::new(&cfg.state);
    hc.hostname = cfg.hostname.clone();
    hc.in_memory = cfg.in_memory;
    hc.amqp_port = Some(cfg.amqp_port);
    hc.amqp_dev_port = Some(cfg.amqp_dev_port);
    hc.partitions = cfg.partitions;
    hc.consumer_groups = cfg.consumer_groups.clone();
    hc.routes = cfg.routes;
    hc.dashboard = cfg.dashboard_port;
    hc.lenient = cfg.lenient;
    hc.tls = cfg.tls;
    hc.tier = cfg.tier;
    hc.units = cfg.units;
    hc.durability = cfg.durability;
    hc.limits = cfg.limits.clone();
    hc.file_upload = cfg.file_upload.clone();
    let handle = azsim_emulator::start(hc, cfg.bind, cfg.mqtt_port, cfg.https_port)
        .await
        .map_err(CliError::runtime)?;
    let signal = shutdown_signal();
    let info = handle.info.clone();
    let record = RunRecord {
        pid: std::process::id(),
        start_time: proc_stat(std::process::id()).map(|(_, t)| t),
        probe_ip: probe_ip(cfg.bind),
    };
    let record_path = cfg.state.join(RUN_RECORD);
    // The record makes `start`, `stop`, `status` and `env` able to tell this process from a
    // stale hub.json; without it they still work by PID and port, so a failure only warns.
    if let Err(e) = std::fs::write(
        &record_path,
        serde_json::to_string(&record).unwrap_or_default() + "\n",
    ) {
        tracing::warn!("cannot write {}: {e}", record_path.display());
    }
    if cfg.json {
        crate::out::outln!(
            "{}",
            json!({
                "mqtt_port": info.mqtt_port,
                "https_port": info.https_port,
                "ca_file": info.ca_file,
                "service_connection_string": service_connection_string(&info),
                "hostname": info.hostname,
                "amqp_port": info.amqp_port,
                "eventhub_connection_string": info.eventhub_connection_string,
                "amqp_dev_port": info.amqp_dev_port,
                "eventhub_dev_connection_string": info.eventhub_dev_connection_string,
                "dashboard_url": info.dashboard_url,
                "id_scope": info.id_scope,
                "provisioning_host": info.provisioning_host,
                "provisioning_service_connection_string": info.provisioning_service_connection_string,
                "settings": info.settings,
            })
        );
    } else {
        crate::out::outln!(
            "azsim hub ready ({})",
            if cfg.in_memory {
                "in-memory state"
            } else {
                "state kept"
            }
        );
        crate::out::outln!(
            "  MQTT (devices):  mqtts://{}:{}",
            info.hostname,
            info.mqtt_port
        );
        crate::out::outln!(
            "  REST (service):  https://{}:{}",
            info.hostname,
            info.https_port
        );
        let amqp = info.amqp_port.is_some() || info.amqp_dev_port.is_some();
        crate::out::outln!(
            "  WebSockets:      wss://{}:{}/$iothub/websocket ({}){}",
            info.hostname,
            info.https_port,
            if amqp { "MQTT, AMQP" } else { "MQTT" },
            if amqp {
                ", /$servicebus/websocket (AMQP)"
            } else {
                ""
            }
        );
        if let Some(p) = info.amqp_port {
            crate::out::outln!(
                "  AMQPS (Event Hubs-compatible): amqps://{}:{p}",
                info.hostname
            );
        }
        if let Some(p) = info.amqp_dev_port {
            crate::out::outln!("  AMQP (development mode, loopback): amqp://localhost:{p}");
        }
        crate::out::outln!(
            "  DPS (devices):   id scope {}, provisioning host {}",
            info.id_scope,
            info.provisioning_host
        );
        let fu = &cfg.file_upload;
        crate::out::outln!(
            "  file upload:     blobs at https://{}:{}/{}/{}/ (SAS TTL {} s, notifications {}; \
             GET /emulator/files lists them)",
            info.hostname,
            info.https_port,
            azsim_emulator::FILE_UPLOAD_ACCOUNT,
            fu.container,
            fu.sas_ttl.as_secs(),
            if fu.notifications { "on" } else { "off" }
        );
        crate::out::outln!("  CA certificate:  {}", info.ca_file.display());
        crate::out::outln!("  TLS:             {}", cfg.tls.describe());
        crate::out::outln!(
            "  durability:      {} (a PUBACK means committed{})",
            durability_name(cfg.durability),
            match cfg.durability {
                azsim_emulator::store::Durability::PowerLoss => ", fsynced",
                azsim_emulator::store::Durability::ProcessCrash =>
                    "; survives a kill, not a power cut",
            }
        );
        let l = &cfg.limits;
        crate::out::outln!(
            "  limits:          connect deadline {} s, {} connections and {} bytes before auth, \
             HTTP header/idle/body {}/{}/{} s (all in hub.json)",
            l.connect_deadline.as_secs(),
            l.max_pre_auth_connections,
            l.pre_auth_max_bytes,
            l.http_header_timeout.as_secs(),
            l.http_idle_timeout.as_secs(),
            l.http_body_timeout.as_secs()
        );
        crate::out::outln!("  state dir:       {}", cfg.state.display());
        if let Some(url) = &info.dashboard_url {
            crate::out::outln!("  dashboard: {url}");
        }
        if cfg.lenient {
            crate::out::outln!(
                "  --lenient: Azure's strict rules are off; this hub is kinder than Azure"
            );
        }
        if let Some(t) = cfg.tier {
            crate::out::outln!(
                "  tier:            {} x {} (daily message quota; REST, D2C, connection and DPS throttles enforced)",
                t.name(),
                cfg.units
            );
        }
        crate::out::outln!("  service connection string:");
        crate::out::outln!("    {}", service_connection_string(&info));
        crate::out::outln!();
        crate::out::outln!(
            "export IOTHUB_CONNECTION_STRING={}",
            shell_quote(&service_connection_string(&info))
        );
        crate::out::outln!(
            "export AZSIM_CA_FILE={}",
            shell_quote(&info.ca_file.display().to_string())
        );
        crate::out::outln!();
        crate::out::outln!("Ctrl-C stops the hub.");
    }
    let _ = std::io::stdout().flush();
    signal.await;
    let stopped = handle.stop().await;
    // Only this process's record: a hub started since in the same dir keeps its own.
    if std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str::<RunRecord>(&t).ok())
        .is_some_and(|r| r == record)
    {
        let _ = std::fs::remove_file(&record_path);
    }
    stopped.map_err(CliError::runtime)?;
    if !cfg.json {
        crate::out::errln!("hub stopped; state saved");
    }
    Ok(ExitCode::SUCCESS)
}

/// `azsim hub start`: a detached `azsim hub --json` child; returns once it answers.
async fn start(cfg: HubCliConfig) -> Result<ExitCode, CliError> {
    if let Ok(hub) = live_hub(&cfg.state).await {
        crate::out::errln!(
            "a hub is already running in {} (pid {}); not starting another",
            hub.state.display(),
            hub.info.pid
        );
        crate::out::outln!("{}", hub.ready_json());
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&cfg.state)
        .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", cfg.state.display())))?;
    let state = absolute(&cfg.state);
    let log_path = state.join(LOG_FILE);
    // Private like the rest of the state dir: the hub's ready line holds the owner key.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let log = opts
        .open(&log_path)
        .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", log_path.display())))?;
    let log2 = log.try_clone()?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::runtime(format!("cannot find the azsim binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("hub")
        .arg("--state")
        .arg(&state)
        .args(["--bind", &cfg.bind.to_string()])
        .args(["--mqtt-port", &cfg.mqtt_port.to_string()])
        .args(["--https-port", &cfg.https_port.to_string()])
        .args(["--amqp-port", &cfg.amqp_port.to_string()])
        .args(["--amqp-dev-port", &cfg.amqp_dev_port.to_string()])
        .args(["--partitions", &cfg.partitions.to_string()])
        .args(["--hostname", &cfg.hostname, "--json"])
        .args(["--tls", cfg.tls.name()])
        .args(["--durability", durability_name(cfg.durability)]);
    for (flag, value) in crate::cli::hub_limits::limit_args(&cfg.limits) {
        cmd.args([flag, &value]);
    }
    match cfg.dashboard_port {
        DashboardPort::Off => {
            cmd.args(["--dashboard-port", "off"]);
        }
        DashboardPort::Port(p) => {
            cmd.args(["--dashboard-port", &p.to_string()]);
        }
        DashboardPort::Preferred(_) => {}
    }
    if cfg.lenient {
        cmd.arg("--lenient");
    }
    if let Some(t) = cfg.tier {
        cmd.args(["--tier", t.name(), "--units", &cfg.units.to_string()]);
    }
    if cfg.in_memory {
        cmd.arg("--in-memory");
    }
    for g in &cfg.consumer_groups {
        cmd.args(["--consumer-group", g]);
    }
    cmd.args(["--route", &cfg.routes.arg()]);
    cmd.args(["--file-upload-container", &cfg.file_upload.container])
        .args([
            "--file-upload-sas-ttl",
            &cfg.file_upload.sas_ttl.as_secs().to_string(),
        ])
        .args([
            "--file-upload-notifications",
            if cfg.file_upload.notifications {
                "on"
            } else {
                "off"
            },
        ])
        .args([
            "--file-upload-notification-ttl",
            &cfg.file_upload.notification_ttl.as_secs().to_string(),
        ])
        .args([
            "--file-upload-notification-lock",
            &cfg.file_upload.notification_lock.as_secs().to_string(),
        ])
        .args([
            "--file-upload-notification-max-delivery",
            &cfg.file_upload.notification_max_delivery_count.to_string(),
        ]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // Its own process group: a Ctrl-C in the terminal that ran `start` does not reach it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::runtime(format!("cannot start the hub: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::runtime(format!(
                "the hub exited during start ({status}); {}: {}",
                log_path.display(),
                last_lines(&log_path)
            )));
        }
        if let Ok(hub) = live_hub(&state).await
            && hub.info.pid == pid
        {
            crate::out::outln!("{}", hub.ready_json());
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::runtime(format!(
                "the hub did not answer within {} s; {}: {}",
                WAIT.as_secs(),
                log_path.display(),
                last_lines(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of the hub's log, on one line (it holds no secret: the hub never logs keys).
fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail.join(" | ")
    }
}

/// `azsim hub stop`: SIGTERM to the recorded PID, then wait until it is gone.
async fn stop(state: &Path) -> Result<ExitCode, CliError> {
    let hub = live_hub(state)
        .await
        .map_err(|why| CliError::check_failed(format!("nothing to stop: {why}")))?;
    let pid = hub.info.pid;
    let sent = std::process::Command::new("sh")
        .args(["-c", "kill -TERM \"$1\"", "sh", &pid.to_string()])
        .status()
        .map_err(|e| CliError::runtime(format!("cannot run kill: {e}")))?;
    if !sent.success() {
        return Err(CliError::runtime(format!("kill -TERM {pid} failed")));
    }
    let deadline = Instant::now() + WAIT;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return Err(CliError::runtime(format!(
                "the hub (pid {pid}) did not exit within {} s of SIGTERM",
                WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::out::errln!(
        "stopped the hub of {} (pid {pid}); state kept",
        hub.state.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `, tls azure, durability power-loss, strict, tier S1 x 2` for `azsim hub status` (the
/// limits are in `--json`).
fn settings_summary(s: &azsim_emulator::settings::HubSettings) -> String {
    let mut out = format!(
        ", tls {}, durability {}, {}",
        s.tls,
        s.durability,
        if s.strict { "strict" } else { "lenient" }
    );
    if let Some(t) = &s.tier {
        out += &format!(", tier {t} x {}", s.units);
    }
    if s.in_memory {
        out += ", in-memory";
    }
    out
}

/// `azsim hub status`: exit 0 when running, 1 when not.
async fn status(state: &Path, json: bool) -> Result<ExitCode, CliError> {
    let hub = live_hub(state).await.map_err(CliError::check_failed)?;
    if json {
        crate::out::outln!("{}", hub.ready_json());
    } else {
        crate::out::outln!(
            "running: pid {}, mqtts://{}:{}, https://{}:{}, state {}{}",
            hub.info.pid,
            hub.info.hostname,
            hub.info.mqtt_port,
            hub.info.hostname,
            hub.info.https_port,
            hub.state.display(),
            hub.info
                .settings
                .as_ref()
                .map(settings_summary)
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM (`docker stop`). Registered before the hub announces itself, so a
/// signal sent right after the ready line is never lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(https_port: u16) -> HubInfo {
        HubInfo {
            hostname: "localhost".into(),
            mqtt_port: 8883,
            https_port,
            ca_file: "ca.pem".into(),
            service_connection_string: format!(
                "HostName=localhost:{https_port};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"
            ),
            pid: 1,
            dashboard_url: None,
            amqp_port: None,
            eventhub_connection_string: None,
            amqp_dev_port: None,
            eventhub_dev_connection_string: None,
            id_scope: String::new(),
            provisioning_host: String::new(),
            provisioning_service_connection_string: String::new(),
            policies: Vec::new(),
            settings: None,
        }
    }

    #[test]
    fn the_service_string_has_no_port_only_on_443() {
        assert_eq!(
            service_connection_string(&info(443)),
            "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"
        );
        assert!(service_connection_string(&info(8443)).starts_with("HostName=localhost:8443;"));
    }

    #[test]
    fn proc_stat_reads_this_process() {
        if !has_proc() {
            return;
        }
        let (state, start) = proc_stat(std::process::id()).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(start > 0);
        assert!(pid_alive(std::process::id()));
        assert!(proc_stat(u32::MAX).is_none());
    }
}
