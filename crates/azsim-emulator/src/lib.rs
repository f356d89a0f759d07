//! A local Azure IoT Hub for development and tests: a TLS MQTT 3.1.1 endpoint that applies IoT
//! Hub's device rules (SAS auth, topic ACL, QoS, limits, C2D, methods, twins), the service REST
//! API subset of api-version 2021-04-12 (plus emulator-only `/emulator/...` endpoints), and the
//! registry, twins, C2D queues and a D2C event log kept in SQLite. Also what the registry
//! reports about activity (`lastActivityTime`, `connectionStateUpdatedTime`, see `activity`)
//! and the C2D feedback queue the service reads over REST (`/messages/serviceBound/feedback`).
//!
//! An AMQP 1.0 listener (fe2o3-amqp's acceptor; `amqp`) authenticates services with SASL and CBS
//! and serves the built-in Event Hubs-compatible endpoint: the telemetry log by partition, with
//! `$management` and the Event Hubs start filters.
//!
//! What it does not do: WebSockets, X.509 device auth, DPS, or routing beyond telemetry to the
//! built-in endpoint. Every wire rule (tokens, usernames, topics, property bags) comes from
//! `azsim-proto`; MQTT framing comes from `rumqttc::mqttbytes::v4`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod activity;
mod amqp;
pub mod auth;
mod blob;
pub mod clock;
mod dashboard;
mod dps;
pub mod fault;
mod feedback;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod hub;
mod listen;
mod mqtt;
pub mod query;
mod quota;
mod rest;
pub mod routing;
pub mod settings;
pub mod state_dir;
pub mod store;
mod telemetry;
pub mod throttle;
pub mod twin;
mod untrusted;
pub mod x509;

/// File upload's settings (SAS TTL, container, notifications, limits).
pub use blob::{ACCOUNT as FILE_UPLOAD_ACCOUNT, FileUploadSettings, valid_container_name};

/// MQTT over WebSockets: the byte stream over a WebSocket connection (hub and `azsim run`).
pub use mqtt::websocket::{SUBPROTOCOL as WEBSOCKET_SUBPROTOCOL, WsBytes};

/// The MQTT port Azure uses (devices assume it when `HostName` has no port): the core's
/// [`azsim_proto::endpoint::MQTT_PORT`].
pub const DEFAULT_MQTT_PORT: u16 = azsim_proto::endpoint::MQTT_PORT;
/// The discovery file written into the state dir on start.
pub const HUB_JSON: &str = "hub.json";

/// Errors starting or running the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("state directory: {0}")]
    State(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}: cannot read hub info: {1}")]
    Info(PathBuf, String),
}

/// Limits and defaults; `Default` gives Azure's documented values, and for what Azure does not
/// document (how long and how much an unauthenticated connection may take) the emulator's own.
#[derive(Debug, Clone)]
pub struct HubLimits {
    pub c2d_queue_cap: u32,
    pub c2d_default_ttl: Duration,
    pub c2d_max_delivery_count: u32,
    pub c2d_max_bytes: usize,
    pub d2c_max_bytes: usize,
    pub max_subscriptions: usize,
    pub event_log_cap: usize,
    /// Keep-alive ceiling (Azure caps the 1.5x timeout at 1767 s, so 1177 s of keep-alive).
    pub max_keep_alive: u16,
    /// How long a C2D feedback record waits to be received and completed (Azure: 1 h).
    pub feedback_ttl: Duration,
    /// How long a received feedback batch stays locked before it is visible again (Azure: 1 min).
    pub feedback_lock_timeout: Duration,
    /// How often a feedback record is handed out before it is dropped uncompleted (Azure: 10).
    pub feedback_max_delivery_count: u32,
    /// How long a connection may take from its TCP accept to being authenticated, in total
    /// (not per read): the TLS handshake and the CONNECT with its SAS check (MQTT), or the TLS
    /// handshake and the headers of the first request (HTTPS). Past it the connection is closed.
    pub connect_deadline: Duration,
    /// The largest first packet (the CONNECT, will message included) an unauthenticated MQTT
    /// client may send; a bigger one closes the connection before it is read.
    pub pre_auth_max_bytes: usize,
    /// How many connections per listener (MQTT, HTTPS) may be open and not yet authenticated;
    /// beyond it a new connection is closed as soon as it is accepted.
    pub max_pre_auth_connections: usize,
    /// HTTP/1.1: how long a client may take to send a request's headers, the first or the
    /// next on a kept-alive connection. hyper starts this clock while it waits for the next
    /// request, so it also closes an HTTP/1.1 connection idle that long.
    pub http_header_timeout: Duration,
    /// HTTPS: how long a connection may stay open with no request in progress before it is
    /// closed (what bounds an idle HTTP/2 connection, whose pings do not count as requests).
    pub http_idle_timeout: Duration,
    /// HTTPS: how long a request's body may take to arrive once its headers are in; past it
    /// the request is answered 408 and (HTTP/1.1) its connection closed.
    pub http_body_timeout: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            c2d_queue_cap: 50,
            c2d_default_ttl: Duration::from_secs(3600),
            c2d_max_delivery_count: 10,
            c2d_max_bytes: 64 * 1024,
            d2c_max_bytes: 256 * 1024,
            max_subscriptions: 5,
            event_log_cap: 10_000,
            max_keep_alive: 1177,
            feedback_ttl: Duration::from_secs(3600),
            feedback_lock_timeout: Duration::from_secs(60),
            feedback_max_delivery_count: 10,
            connect_deadline: Duration::from_secs(10),
            // Room for the ids, the username, a token and a will message of ~60 KiB.
            pre_auth_max_bytes: 64 * 1024,
            max_pre_auth_connections: 512,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            http_body_timeout: Duration::from_secs(30),
        }
    }
}

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Holds the CA, server cert, keys, the database (unless `in_memory`) and `hub.json`.
    pub state_dir: PathBuf,
    /// The name devices and services use (`HostName=`); in the server certificate.
    pub hostname: String,
    /// Keep registry, twins and queues in memory only (certs and keys still go to `state_dir`).
    pub in_memory: bool,
    pub limits: HubLimits,
    /// Where the hub reads the time: token expiry, C2D TTL, locks, method timeouts and every
    /// timestamp it writes. The system clock unless a test gives it a
    /// [`clock::ManualClock`]'s.
    pub clock: clock::Clock,
    /// What a PUBACK promises: telemetry is acknowledged once its SQLite transaction has
    /// committed, and this says whether that commit survives power loss (the default: an
    /// fsync per transaction) or only the hub process being killed. See [`store::Durability`].
    pub durability: store::Durability,
    /// The TLS of every listener: Azure's RSA chain over TLS 1.2 (the default), or `modern`
    /// (ECDSA, TLS 1.3). See [`state_dir::TlsProfile`].
    pub tls: state_dir::TlsProfile,
    /// Not Azure: turn off the strict rules a real hub applies (twin responses only to a
    /// client subscribed to `$iothub/twin/res/#`, C2D at the subscription's QoS, REST
    /// `api-version` required, `If-Match` required on DELETE). Off by default: the hub is
    /// Azure. See the README's "How strict the hub is".
    pub lenient: bool,
    /// The IoT Hub tier whose daily message quota and REST throttles to enforce (none: no
    /// quota, no throttles), and its number of units. See `fault`.
    pub tier: Option<fault::Tier>,
    pub units: u32,
    /// With a tier: how far device-to-cloud sends and new connections may go over the tier's
    /// rate before they wait, and then before they are refused. See `throttle`.
    pub shaping: throttle::Shaping,
    /// The web dashboard, on the MQTT listener's address: plain HTTP on loopback, the hub's
    /// TLS on any other address. Off unless asked for.
    pub dashboard: DashboardPort,
    /// The AMQPS port (service AMQP and the Event Hubs-compatible endpoint) on the MQTT
    /// listener's address: `None` serves none, `Some(0)` (the default) a free port.
    pub amqp_port: Option<u16>,
    /// The plain-AMQP port for the Event Hubs SDKs' development mode, always on 127.0.0.1:
    /// `None` (the default) serves none, `Some(0)` a free port.
    pub amqp_dev_port: Option<u16>,
    /// The Event Hubs-compatible endpoint's partition count (telemetry is spread over them by
    /// device id; see `amqp::eventhub`).
    pub partitions: u32,
    /// Consumer groups besides `$Default`.
    pub consumer_groups: Vec<String>,
    /// Which sources go to the Event Hubs-compatible endpoint (telemetry, twin change,
    /// lifecycle, connection state events): all by default. See `routing`.
    pub routes: routing::Routes,
    /// File upload: the blob container, SAS TTL, notifications and limits (see `blob`).
    pub file_upload: FileUploadSettings,
    /// How often configurations are evaluated over every twin as a safety net (10 s); every
    /// twin change is evaluated at once besides.
    pub config_pass_every: Duration,
}

impl HubConfig {
    /// Defaults: hostname `localhost`, persistent, Azure's limits, the system clock, commits
    /// that survive a power cut.
    pub fn new(state_dir: impl Into<PathBuf>) -> HubConfig {
        HubConfig {
            state_dir: state_dir.into(),
            hostname: "localhost".into(),
            in_memory: false,
            limits: HubLimits::default(),
            clock: clock::Clock::system(),
            durability: store::Durability::default(),
            tls: state_dir::TlsProfile::default(),
            lenient: false,
            tier: None,
            units: 1,
            shaping: throttle::Shaping::default(),
            dashboard: DashboardPort::Off,
            amqp_port: Some(0),
            amqp_dev_port: None,
            partitions: 4,
            consumer_groups: Vec::new(),
            routes: routing::Routes::default(),
            file_upload: FileUploadSettings::default(),
            config_pass_every: rest::config_apply::PERIODIC,
        }
    }
}

/// Where the web dashboard listens (see [`HubConfig::dashboard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DashboardPort {
    /// No dashboard (the library default).
    #[default]
    Off,
    /// This port (0 picks a free one); a port already taken fails the start.
    Port(u16),
    /// This port, or a free one when it is taken (`azsim hub` without `--dashboard-port`).
    Preferred(u16),
}

/// The discovery record in `DIR/hub.json` (CONTRACTS.md).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    pub hostname: String,
    pub mqtt_port: u16,
    pub https_port: u16,
    pub ca_file: PathBuf,
    pub service_connection_string: String,
    pub pid: u32,
    /// The web dashboard's address (`http://localhost:8880/`), when one is served.
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// The AMQPS port, when one is served.
    #[serde(default)]
    pub amqp_port: Option<u16>,
    /// `Endpoint=sb://..;SharedAccessKeyName=iothubowner;SharedAccessKey=..;EntityPath=..`: the
    /// built-in Event Hubs-compatible endpoint over AMQPS.
    #[serde(default)]
    pub eventhub_connection_string: Option<String>,
    /// The plain-AMQP development port (loopback), when one is served.
    #[serde(default)]
    pub amqp_dev_port: Option<u16>,
    /// The Event Hubs connection string for the development port (`UseDevelopmentEmulator=true`).
    #[serde(default)]
    pub eventhub_dev_connection_string: Option<String>,
    /// The Device Provisioning Service's id scope (`0ne` + 8 hex digits).
    #[serde(default)]
    pub id_scope: String,
    /// The host devices dial for DPS: the hostname, with the MQTT port when it is not 8883.
    #[serde(default)]
    pub provisioning_host: String,
    /// `HostName={host}:{https};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=..`.
    #[serde(default)]
    pub provisioning_service_connection_string: String,
    /// The shared access policies (Azure's five), their keys and permissions.
    #[serde(default)]
    pub policies: Vec<PolicyInfo>,
    /// What the hub enforces: TLS profile, durability, strict or lenient, tier, every limit
    /// (none in a `hub.json` written before it was recorded).
    #[serde(default)]
    pub settings: Option<settings::HubSettings>,
}

/// One shared access policy in `hub.json`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub name: String,
    pub key: String,
    /// `RegistryRead`, `RegistryWrite`, `ServiceConnect`, `DeviceConnect`.
    pub rights: Vec<String>,
}

impl std::fmt::Debug for PolicyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInfo")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("rights", &self.rights)
            .finish()
    }
}

impl std::fmt::Debug for HubInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubInfo")
            .field("hostname", &self.hostname)
            .field("mqtt_port", &self.mqtt_port)
            .field("https_port", &self.https_port)
            .field("ca_file", &self.ca_file)
            .field("service_connection_string", &"<redacted>")
            .field("pid", &self.pid)
            .field("dashboard_url", &self.dashboard_url)
            .field("amqp_port", &self.amqp_port)
            .field("eventhub_connection_string", &"<redacted>")
            .field("amqp_dev_port", &self.amqp_dev_port)
            .field("eventhub_dev_connection_string", &"<redacted>")
            .field("id_scope", &self.id_scope)
            .field("provisioning_host", &self.provisioning_host)
            .field("provisioning_service_connection_string", &"<redacted>")
            .field("policies", &self.policies)
            .field("settings", &self.settings)
            .finish()
    }
}

impl HubInfo {
    /// Read `dir/hub.json`.
    ///
    /// # Errors
    /// [`HubError::Info`] naming the file when it is missing or malformed.
    pub fn load(dir: &Path) -> Result<HubInfo, HubError> {
        let path = dir.join(HUB_JSON);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| HubError::Info(path.clone(), e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| HubError::Info(path, e.to_string()))
    }

    /// `HostName=..;DeviceId=..;SharedAccessKey=..` for a device of this hub (the core's
    /// builder); the MQTT port is appended to `HostName` only when it is not 8883.
    ///
    /// # Errors
    /// What the string could not hold: a device id with `;` (legal in IoT Hub, but a
    /// connection string cannot carry it), a key that is not base64.
    pub fn device_connection_string(
        &self,
        device_id: &str,
        key: &str,
    ) -> Result<String, azsim_proto::connection_string::ConnectionStringError> {
        let host = self.mqtt_host();
        let cs = azsim_proto::connection_string::ConnectionString::device(&host, device_id, key)?;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = cs.write_with_secret(&mut out);
        Ok(out)
    }

    /// `HostName` for devices: the hostname, plus `:port` when the port is not 8883.
    pub fn mqtt_host(&self) -> String {
        if self.mqtt_port == DEFAULT_MQTT_PORT {
            self.hostname.clone()
        } else {
            format!("{}:{}", self.hostname, self.mqtt_port)
        }
    }
}

/// Serve until `shutdown` completes, then stop cleanly (connections closed, event log flushed,
/// database checkpointed). Writes `hub.json` once listening.
///
/// # Errors
/// State directory, certificate or database failures at start.
pub async fn run(
    mqtt: TcpListener,
    https: TcpListener,
    config: HubConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    hub::serve(mqtt, https, config, shutdown, None).await
}

/// A hub running in this process (see [`start`]).
#[derive(Debug)]
pub struct HubHandle {
    pub info: HubInfo,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), HubError>>,
}

impl HubHandle {
    /// Stop the hub and wait until its state is saved.
    ///
    /// # Errors
    /// Whatever the hub failed with while running.
    pub async fn stop(mut self) -> Result<(), HubError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(HubError::State(format!("hub task failed: {e}"))),
        }
    }
}

/// Bind `bind:mqtt_port` and `bind:https_port` (0 picks free ports), prepare the state dir and
/// start the hub in the background; returns once it accepts connections.
///
/// # Errors
/// Bind failures and everything [`run`] can fail with at start.
pub async fn start(
    config: HubConfig,
    bind: IpAddr,
    mqtt_port: u16,
    https_port: u16,
) -> Result<HubHandle, HubError> {
    let mqtt = TcpListener::bind(SocketAddr::new(bind, mqtt_port)).await?;
    let https = TcpListener::bind(SocketAddr::new(bind, https_port)).await?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(hub::serve(
        mqtt,
        https,
        config,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    match ready_rx.await {
        Ok(info) => Ok(HubHandle {
            info,
            stop: Some(stop_tx),
            task,
        }),
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(HubError::State("hub stopped during start".into())),
            Err(e) => Err(HubError::State(format!("hub task failed: {e}"))),
        },
    }
}
