//! `azsim hub`: clap arguments and their validation into a [`HubCommand`].
//!
//! `azsim hub [FLAGS]` serves in the foreground; `azsim hub start | stop | status | env` are the
//! background mode for scripts and CI (see `cmd/hub.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::UsageError;
use azsim_emulator::DashboardPort;

/// The web dashboard's port when `--dashboard-port` is not given (a free one when it is taken).
pub const DEFAULT_DASHBOARD_PORT: u16 = 8880;

/// Run a local Azure IoT Hub (TLS MQTT on 8883, service REST on HTTPS 8443), in the foreground,
/// or in the background with `start` / `stop` / `status` / `env`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HubArgs {
    /// Background mode (for scripts and CI).
    #[command(subcommand)]
    pub action: Option<HubAction>,
    /// How to serve (foreground).
    #[command(flatten)]
    pub serve: HubServeArgs,
    /// Print one JSON line when ready instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// `azsim hub start | stop | status | env`.
#[derive(Debug, Subcommand)]
pub enum HubAction {
    /// Start the hub detached, wait until its MQTT and HTTPS listeners answer, print its ready
    /// JSON line and return. Exits 0 also when a hub already runs in the state dir (it says so on
    /// stderr and prints that hub's ready JSON).
    Start(HubServeArgs),
    /// Stop the hub of the state dir (SIGTERM to its recorded PID, then wait until it has saved
    /// its state and exited). Exits 1 when no hub runs there.
    Stop(StateArgs),
    /// Exit 0 when the hub of the state dir is running and answers, 1 when not (a stale hub.json
    /// - its process gone, or its PID now another process - counts as not running).
    Status(StatusArgs),
    /// Print the environment for SDKs and azsim: IOTHUB_CONNECTION_STRING,
    /// IOTHUB_DEVICE_CONNECTION_STRING (with --device), AZSIM_CA_FILE, NODE_EXTRA_CA_CERTS (the
    /// hub's CA), REQUESTS_CA_BUNDLE and SSL_CERT_FILE (the system CA bundle plus the hub's CA),
    /// EVENTHUB_CONNECTION_STRING (the Event Hubs-compatible endpoint, when served).
    /// Usage: eval "$(azsim hub env)" or azsim hub env --shell github >> "$GITHUB_ENV".
    Env(EnvArgs),
    /// The CA certificates the hub holds for X.509 devices registered `--x509 ca`:
    /// `azsim hub ca add FILE`, `list`, `delete NAME`.
    Ca(super::cert::HubCaArgs),
    /// The hub's shared access policies: `azsim hub policy list` (names and permissions; the
    /// keys are in hub.json).
    Policy(PolicyArgs),
    /// Not Azure: inject a fault for a device of the running hub, now or after --after
    /// seconds, for --for seconds (throttle, quota, auth-error): drop (the connection, as
    /// KillTcp), expire-token (closed as at token expiry), throttle (telemetry closes the
    /// connection, twin and REST calls get 429), quota (telemetry closes with 403002),
    /// auth-error (closed, and CONNECTs refused).
    Fault(FaultArgs),
}

/// `azsim hub policy list`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub action: PolicyAction,
}

/// `azsim hub policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// List the policies and their permissions.
    List(StatusArgs),
}

/// `azsim hub fault DEVICE KIND [--after S] [--for S]`.
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// The device.
    pub device: String,
    /// drop, expire-token, throttle, quota or auth-error.
    pub kind: String,
    /// Seconds before the fault starts.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub after: u64,
    /// Seconds a throttle, quota or auth-error fault lasts.
    #[arg(long = "for", value_name = "S", default_value_t = 60)]
    pub lasting: u64,
    /// State directory of the hub.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
}

/// Validated `azsim hub fault`.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub state: PathBuf,
    pub device: String,
    pub kind: String,
    pub after: u64,
    pub lasting: u64,
}

/// How the hub serves.
#[derive(Debug, Args)]
pub struct HubServeArgs {
    /// State directory (dev CA, server certificate, hub key, database, hub.json).
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// Keep registry, twins and queues in memory only (certificates still go to --state).
    #[arg(long)]
    pub in_memory: bool,
    /// Address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub bind: String,
    /// MQTT over TLS port (0 picks a free port).
    #[arg(long, value_name = "PORT", default_value_t = 8883)]
    pub mqtt_port: u16,
    /// HTTPS (service REST) port (0 picks a free port; 443 gives a connection string whose
    /// HostName has no port, as a real hub's).
    #[arg(long, value_name = "PORT", default_value_t = 8443)]
    pub https_port: u16,
    /// Host name devices and services use; goes into the server certificate.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub hostname: String,
    /// AMQPS port: the Event Hubs-compatible endpoint (and service AMQP). Default 5671, or a
    /// free port when --mqtt-port is 0; 0 picks a free port.
    #[arg(long, value_name = "PORT")]
    pub amqp_port: Option<u16>,
    /// Plain-AMQP port for the Event Hubs SDKs' development mode (UseDevelopmentEmulator=true),
    /// always on 127.0.0.1. Default 5672, or a free port when --mqtt-port is 0.
    #[arg(long, value_name = "PORT")]
    pub amqp_dev_port: Option<u16>,
    /// Partitions of the Event Hubs-compatible endpoint (1 to 32): a device's telemetry goes to
    /// partition FNV-1a(device id) mod N. Retention is the telemetry log's: its last 10,000
    /// messages, kept across restarts with their sequence numbers and offsets.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub partitions: u32,
    /// A consumer group of the Event Hubs-compatible endpoint besides $Default (repeatable).
    #[arg(long = "consumer-group", value_name = "NAME")]
    pub consumer_groups: Vec<String>,
    /// What the Event Hubs-compatible endpoint gets, as an IoT Hub's routes choose: any of
    /// telemetry, twin (twin change events), lifecycle (device create/delete), connection
    /// (connect/disconnect), comma-separated. Default all.
    #[arg(
        long,
        value_name = "SOURCES",
        default_value = "telemetry,twin,lifecycle,connection"
    )]
    pub route: String,
    /// The web dashboard's port (0 picks a free port, `off` serves none): plain HTTP on
    /// loopback, the hub's TLS with a service token when --bind is another address.
    /// Default 8880, or a free port when 8880 is taken.
    #[arg(long, value_name = "PORT|off")]
    pub dashboard_port: Option<String>,
    /// Not Azure: turn off the strict rules a real hub applies (twin responses only to a
    /// client subscribed to $iothub/twin/res/#, C2D at the subscription's QoS, REST
    /// api-version required, If-Match required on DELETE). See the README.
    #[arg(long)]
    pub lenient: bool,
    /// TLS of every listener: `azure` (the default: an RSA-2048 root, intermediate and server
    /// certificate over TLS 1.2 with IoT Hub's cipher suites) or `modern` (one ECDSA P-256
    /// certificate, TLS 1.2 and 1.3; not what Azure presents). Changing it makes a new dev CA.
    #[arg(long, value_name = "azure|modern", default_value = "azure")]
    pub tls: String,
    /// Enforce this IoT Hub tier's daily message quota, counted as Azure bills (telemetry, C2D,
    /// methods, twin reads and updates, queries; 403002 when it is used up), its REST throttles
    /// (429), its device-to-cloud and new-connection throttles shaped as Azure does (PUBACKs
    /// and CONNACKs paced at the rate, then a closed connection or CONNACK 3) and DPS's
    /// registration and polling rates (429): F1, S1, S2 or S3. Default: none.
    #[arg(long, value_name = "F1|S1|S2|S3")]
    pub tier: Option<String>,
    /// Units of --tier (F1: 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub units: u32,
    /// What a PUBACK (or HTTP 204) promises: `power-loss` (the default: every commit is
    /// fsynced, so acknowledged telemetry survives a power cut) or `process-crash` (no fsync:
    /// it survives the hub being killed, not a power cut; faster on slow disks).
    #[arg(
        long,
        value_name = "power-loss|process-crash",
        default_value = "power-loss"
    )]
    pub durability: String,
    /// File upload: the blob container the hub's SAS URIs point into (on its own blob
    /// endpoint, on the HTTPS port).
    #[arg(long, value_name = "NAME", default_value = "fileuploads")]
    pub file_upload_container: String,
    /// File upload: how long a SAS URI handed to a device is valid, in seconds (Azure's
    /// sasTtlAsIso8601: 60 to 86400, default 1 h).
    #[arg(long, value_name = "S", default_value_t = 3600)]
    pub file_upload_sas_ttl: u64,
    /// File upload: whether a completed upload queues a notification for the service
    /// (/messages/serviceBound/filenotifications over AMQP): on or off.
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub file_upload_notifications: String,
    /// File upload: how long a file upload notification waits to be received, in seconds
    /// (Azure's fileNotifications.ttlAsIso8601, `az iot hub update
    /// --fileupload-notification-ttl`: 1 minute to 48 hours, default 1 h).
    #[arg(long, value_name = "S", default_value_t = 3600)]
    pub file_upload_notification_ttl: u64,
    /// File upload: how long a received notification stays locked before it is delivered
    /// again, in seconds (Azure's fileNotifications.lockDuration: 5 to 300, default 60).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub file_upload_notification_lock: u64,
    /// File upload: how often a notification is delivered before it is dropped uncompleted
    /// (Azure's fileNotifications.maxDeliveryCount, `az iot hub update
    /// --fileupload-notification-max-delivery-count`: 1 to 100, default 10).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub file_upload_notification_max_delivery: u32,
    /// Every limit of the hub (connect deadline, pre-auth caps, HTTP timeouts, C2D, feedback).
    #[command(flatten)]
    pub limits: Box<super::hub_limits::HubLimitArgs>,
}

/// `--state` alone.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// State directory of the hub.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
}

/// `azsim hub status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// State directory of the hub.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// Print the ready JSON line of the running hub instead of one line of text.
    #[arg(long)]
    pub json: bool,
}

/// `azsim hub env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// State directory of the hub.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// Also print IOTHUB_DEVICE_CONNECTION_STRING for this device, registering it (symmetric
    /// key) when the hub does not know it yet.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Output syntax: sh (export K='v'), fish (set -gx K 'v'), powershell ($env:K = 'v'),
    /// github (K=v lines for $GITHUB_ENV).
    #[arg(long, value_name = "SHELL", default_value = "sh")]
    pub shell: String,
}

/// The syntax `azsim hub env` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// POSIX sh, bash, zsh: `export K='v'`.
    Sh,
    /// fish: `set -gx K 'v'`.
    Fish,
    /// PowerShell: `$env:K = 'v'`.
    Powershell,
    /// GitHub Actions `$GITHUB_ENV` file: `K=v`, or the delimiter form for a multi-line value.
    Github,
}

/// Validated `azsim hub` (foreground) and `azsim hub start` settings.
#[derive(Debug, Clone)]
pub struct HubCliConfig {
    pub state: PathBuf,
    pub in_memory: bool,
    pub bind: IpAddr,
    pub mqtt_port: u16,
    pub https_port: u16,
    pub hostname: String,
    pub json: bool,
    /// AMQPS port (0: a free one).
    pub amqp_port: u16,
    /// Plain-AMQP development port on 127.0.0.1 (0: a free one).
    pub amqp_dev_port: u16,
    pub partitions: u32,
    pub consumer_groups: Vec<String>,
    /// The sources routed to the Event Hubs-compatible endpoint.
    pub routes: azsim_emulator::routing::Routes,
    /// The web dashboard's port.
    pub dashboard_port: DashboardPort,
    /// Not Azure: the strict rules off.
    pub lenient: bool,
    /// `--tls`.
    pub tls: azsim_emulator::state_dir::TlsProfile,
    /// The tier to meter and throttle as, and its units.
    pub tier: Option<azsim_emulator::fault::Tier>,
    pub units: u32,
    /// `--durability`.
    pub durability: azsim_emulator::store::Durability,
    /// Every `HubLimits` value (`cli/hub_limits.rs`).
    pub limits: azsim_emulator::HubLimits,
    /// `--file-upload-*`.
    pub file_upload: azsim_emulator::FileUploadSettings,
}

/// Validated `azsim hub env` settings.
#[derive(Debug, Clone)]
pub struct EnvConfig {
    pub state: PathBuf,
    pub device: Option<String>,
    pub shell: Shell,
}

/// What `azsim hub` was asked to do.
#[derive(Debug, Clone)]
pub enum HubCommand {
    /// Serve in the foreground until Ctrl-C / SIGTERM.
    Serve(HubCliConfig),
    /// Start detached.
    Start(HubCliConfig),
    /// Stop the running hub of this state dir.
    Stop { state: PathBuf },
    /// Running or not.
    Status { state: PathBuf, json: bool },
    /// Print the environment.
    Env(EnvConfig),
    /// `azsim hub ca ...`.
    Ca(Box<crate::cmd::cert::HubCaConfig>),
    /// `azsim hub policy list`.
    Policies { state: PathBuf, json: bool },
    /// `azsim hub fault ...`.
    Fault(FaultConfig),
}

fn check_state(state: &std::path::Path) -> Result<(), UsageError> {
    if state.as_os_str().is_empty() {
        return Err(UsageError::new("--state", "must not be empty"));
    }
    Ok(())
}

impl HubArgs {
    /// Validates the arguments.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad flag.
    pub fn into_config(self) -> Result<HubCommand, UsageError> {
        match self.action {
            None => Ok(HubCommand::Serve(self.serve.into_config(self.json)?)),
            Some(HubAction::Start(a)) => Ok(HubCommand::Start(a.into_config(true)?)),
            Some(HubAction::Ca(a)) => Ok(HubCommand::Ca(Box::new(a.into_config()?))),
            Some(HubAction::Policy(PolicyArgs {
                action: PolicyAction::List(a),
            })) => {
                check_state(&a.state)?;
                Ok(HubCommand::Policies {
                    state: a.state,
                    json: a.json,
                })
            }
            Some(HubAction::Fault(a)) => {
                check_state(&a.state)?;
                if !["drop", "expire-token", "throttle", "quota", "auth-error"]
                    .contains(&a.kind.as_str())
                {
                    return Err(UsageError::new(
                        "KIND",
                        "must be one of drop, expire-token, throttle, quota, auth-error",
                    ));
                }
                if a.device.is_empty() || a.device.len() > 128 {
                    return Err(UsageError::new("DEVICE", "must be 1 to 128 characters"));
                }
                for (flag, v) in [("--after", a.after), ("--for", a.lasting)] {
                    if v > 86_400 {
                        return Err(UsageError::new(flag, "must be 0 to 86400 seconds"));
                    }
                }
                Ok(HubCommand::Fault(FaultConfig {
                    state: a.state,
                    device: a.device,
                    kind: a.kind,
                    after: a.after,
                    lasting: a.lasting,
                }))
            }
            Some(HubAction::Stop(a)) => {
                check_state(&a.state)?;
                Ok(HubCommand::Stop { state: a.state })
            }
            Some(HubAction::Status(a)) => {
                check_state(&a.state)?;
                Ok(HubCommand::Status {
                    state: a.state,
                    json: a.json,
                })
            }
            Some(HubAction::Env(a)) => {
                check_state(&a.state)?;
                let shell = match a.shell.to_ascii_lowercase().as_str() {
                    "sh" | "bash" | "zsh" => Shell::Sh,
                    "fish" => Shell::Fish,
                    "powershell" | "pwsh" => Shell::Powershell,
                    "github" => Shell::Github,
                    _ => {
                        return Err(UsageError::new(
                            "--shell",
                            "must be one of sh, fish, powershell, github",
                        ));
                    }
                };
                if let Some(d) = &a.device {
                    let ok = !d.is_empty()
                        && d.len() <= 128
                        && d.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(c));
                    if !ok {
                        return Err(UsageError::new(
                            "--device",
                            "must be 1 to 128 letters, digits or - . % _ * ? ! ( ) , : = @ $ '",
                        ));
                    }
                }
                Ok(HubCommand::Env(EnvConfig {
                    state: a.state,
                    device: a.device,
                    shell,
                }))
            }
        }
    }
}

impl HubServeArgs {
    /// Validates the serving flags.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad flag.
    pub fn into_config(self, json: bool) -> Result<HubCliConfig, UsageError> {
        let bind: IpAddr = self
            .bind
            .parse()
            .map_err(|_| UsageError::new("--bind", "must be an IP address such as 127.0.0.1"))?;
        let h = &self.hostname;
        let host_ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !host_ok {
            return Err(UsageError::new(
                "--hostname",
                "must be a DNS name or IPv4 address (letters, digits, '-', '.')",
            ));
        }
        if self.mqtt_port != 0 && self.mqtt_port == self.https_port {
            return Err(UsageError::new(
                "--https-port",
                "must differ from --mqtt-port",
            ));
        }
        let dashboard_port = match self.dashboard_port.as_deref() {
            None => DashboardPort::Preferred(DEFAULT_DASHBOARD_PORT),
            Some("off") => DashboardPort::Off,
            Some(p) => DashboardPort::Port(p.parse::<u16>().map_err(|_| {
                UsageError::new("--dashboard-port", "must be a port (0 to 65535) or off")
            })?),
        };
        if let DashboardPort::Port(d) = dashboard_port
            && d != 0
            && (d == self.mqtt_port || d == self.https_port)
        {
            return Err(UsageError::new(
                "--dashboard-port",
                "must differ from --mqtt-port and --https-port",
            ));
        }
        check_state(&self.state)?;
        // Free ports everywhere when the MQTT port is free (tests, several hubs on a machine).
        let free = self.mqtt_port == 0;
        let amqp_port = self.amqp_port.unwrap_or(if free { 0 } else { 5671 });
        let amqp_dev_port = self.amqp_dev_port.unwrap_or(if free { 0 } else { 5672 });
        for (flag, port) in [
            ("--amqp-port", amqp_port),
            ("--amqp-dev-port", amqp_dev_port),
        ] {
            if port != 0 && (port == self.mqtt_port || port == self.https_port) {
                return Err(UsageError::new(
                    flag,
                    "must differ from --mqtt-port and --https-port",
                ));
            }
        }
        if amqp_port != 0 && amqp_port == amqp_dev_port {
            return Err(UsageError::new(
                "--amqp-dev-port",
                "must differ from --amqp-port",
            ));
        }
        if !(1..=32).contains(&self.partitions) {
            return Err(UsageError::new("--partitions", "must be 1 to 32"));
        }
        let routes = azsim_emulator::routing::Routes::parse(&self.route)
            .map_err(|e| UsageError::new("--route", e))?;
        for g in &self.consumer_groups {
            let ok = !g.is_empty()
                && g.len() <= 50
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(UsageError::new(
                    "--consumer-group",
                    "must be 1 to 50 letters, digits, '-', '.' or '_'",
                ));
            }
        }
        let tier = match self.tier.as_deref() {
            None => None,
            Some(t) => Some(
                azsim_emulator::fault::Tier::parse(t)
                    .ok_or_else(|| UsageError::new("--tier", "must be one of F1, S1, S2, S3"))?,
            ),
        };
        let max_units = if tier == Some(azsim_emulator::fault::Tier::F1) {
            1
        } else {
            200
        };
        if !(1..=max_units).contains(&self.units) {
            return Err(UsageError::new("--units", "must be 1 to 200 (1 for F1)"));
        }
        let tls = azsim_emulator::state_dir::TlsProfile::parse(&self.tls)
            .ok_or_else(|| UsageError::new("--tls", "must be azure or modern"))?;
        let durability = match self.durability.as_str() {
            "power-loss" => azsim_emulator::store::Durability::PowerLoss,
            "process-crash" => azsim_emulator::store::Durability::ProcessCrash,
            _ => {
                return Err(UsageError::new(
                    "--durability",
                    "must be power-loss or process-crash",
                ));
            }
        };
        let limits = self.limits.into_limits()?;
        if !azsim_emulator::valid_container_name(&self.file_upload_container) {
            return Err(UsageError::new(
                "--file-upload-container",
                "must be 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit",
            ));
        }
        if !(60..=86_400).contains(&self.file_upload_sas_ttl) {
            return Err(UsageError::new(
                "--file-upload-sas-ttl",
                "must be 60 to 86400 seconds",
            ));
        }
        let notifications = match self.file_upload_notifications.as_str() {
            "on" => true,
            "off" => false,
            _ => {
                return Err(UsageError::new(
                    "--file-upload-notifications",
                    "must be on or off",
                ));
            }
        };
        if !(60..=172_800).contains(&self.file_upload_notification_ttl) {
            return Err(UsageError::new(
                "--file-upload-notification-ttl",
                "must be 60 to 172800 seconds (1 minute to 48 hours)",
            ));
        }
        if !(5..=300).contains(&self.file_upload_notification_lock) {
            return Err(UsageError::new(
                "--file-upload-notification-lock",
                "must be 5 to 300 seconds",
            ));
        }
        if !(1..=100).contains(&self.file_upload_notification_max_delivery) {
            return Err(UsageError::new(
                "--file-upload-notification-max-delivery",
                "must be 1 to 100",
            ));
        }
        let file_upload = azsim_emulator::FileUploadSettings {
            container: self.file_upload_container,
            sas_ttl: std::time::Duration::from_secs(self.file_upload_sas_ttl),
            notifications,
            notification_ttl: std::time::Duration::from_secs(self.file_upload_notification_ttl),
            notification_lock: std::time::Duration::from_secs(self.file_upload_notification_lock),
            notification_max_delivery_count: self.file_upload_notification_max_delivery,
            ..azsim_emulator::FileUploadSettings::default()
        };
        Ok(HubCliConfig {
            file_upload,
            durability,
            limits,
            tls,
            lenient: self.lenient,
            tier,
            units: self.units,
            amqp_port,
            amqp_dev_port,
            partitions: self.partitions,
            consumer_groups: self.consumer_groups,
            routes,
            state: self.state,
            in_memory: self.in_memory,
            bind,
            mqtt_port: self.mqtt_port,
            https_port: self.https_port,
            hostname: self.hostname.to_ascii_lowercase(),
            json,
            dashboard_port,
        })
    }
}
