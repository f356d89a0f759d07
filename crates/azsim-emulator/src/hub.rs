//! The hub core shared by the MQTT endpoint and the REST API: live connections and their
//! subscriptions, the method broker, desired-patch pushes, C2D wake-ups and the event stream.
//! Also the server loop that ties the listeners, TLS and shutdown together.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azsim_proto::secret::Secret;
use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Publish;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::store::{Identity, Store, q};
use crate::{HUB_JSON, HubConfig, HubError, HubInfo, state_dir, twin};

/// What the hub asks a live connection to do.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// Send this (QoS 0) publish. Boxed: the channel's blocks hold 32 commands each, so the
    /// largest variant sizes a block every connection keeps (2 KiB with it inline).
    Publish(Box<Publish>),
    /// New C2D messages may be waiting.
    C2dWake,
    /// Close the connection; the reason is logged.
    Kick(&'static str),
    /// Close the connection as a graceful shutdown (no will); the reason is logged.
    Close(&'static str),
}

/// Which of the documented subscriptions a connection holds.
#[derive(Debug, Default)]
pub(crate) struct Subs {
    pub c2d: AtomicBool,
    pub methods: AtomicBool,
    pub twin_res: AtomicBool,
    pub desired: AtomicBool,
    /// The C2D subscription was granted QoS 0: messages go out at QoS 0 (at most once).
    pub c2d_qos0: AtomicBool,
}

#[derive(Debug, Clone)]
pub(crate) struct ConnEntry {
    pub conn_id: u64,
    pub tx: mpsc::UnboundedSender<ConnCmd>,
    pub subs: Arc<Subs>,
}

/// A stream event: the device it concerns and its JSON text.
#[derive(Debug)]
pub(crate) struct HubEvent {
    pub device_id: String,
    pub json: String,
}

/// Why a method invocation failed.
#[derive(Debug)]
pub(crate) enum MethodError {
    NotOnline,
    Timeout,
}

/// Where a device's method reply goes: status and body.
type MethodReply = oneshot::Sender<(u16, Bytes)>;

pub(crate) struct Hub {
    pub cfg: HubConfig,
    pub owner_key: Secret<String>,
    /// The shared access policies and their keys (`serve` loads the state dir's).
    pub policies: crate::auth::Policies,
    /// Faults injected on demand (`fault.rs`).
    pub faults: crate::fault::Faults,
    pub store: Store,
    pub mqtt_port: u16,
    pub https_port: u16,
    pub events: broadcast::Sender<Arc<HubEvent>>,
    pub conns: Mutex<HashMap<String, ConnEntry>>,
    presence: watch::Sender<u64>,
    methods: Mutex<HashMap<(String, String), MethodReply>>,
    next_rid: AtomicU64,
    next_conn: AtomicU64,
    pub shutdown: watch::Sender<bool>,
    /// Counts live connection tasks so shutdown can wait for them.
    pub live: watch::Sender<usize>,
    /// The Device Provisioning Service's id scope and key.
    pub dps: crate::dps::Dps,
    /// Events routed to the built-in endpoint, on their way to the log (`routing.rs`).
    pub router: crate::routing::Router,
    /// Configurations' statuses on twins and their evaluation task (`rest/config_apply.rs`).
    pub configs: crate::rest::config_apply::ConfigState,
    /// The Event Hubs-compatible endpoint, once the AMQP listeners serve it (AMQP over
    /// WebSockets on the HTTPS listener serves the same one).
    pub amqp_eventhub: std::sync::OnceLock<Arc<crate::amqp::EventHub>>,
    /// Direct wake-ups for service links that wait for new records (C2D feedback, file upload
    /// notifications) instead of subscribing to `events`: a subscriber there makes every
    /// telemetry message build its stream JSON.
    pub wakeups: Wakeups,
}

/// Counters bumped when a record a service link waits for is announced; a link holds a
/// `subscribe()`d receiver and waits on `changed()`, so a bump between its look at the store
/// and its wait is not lost.
#[derive(Debug)]
pub(crate) struct Wakeups {
    /// New C2D feedback records (the feedback sweep announces them).
    pub feedback: watch::Sender<u64>,
    /// A file upload finished (its notification, if any, is queued).
    pub file_notifications: watch::Sender<u64>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            feedback: watch::channel(0).0,
            file_notifications: watch::channel(0).0,
        }
    }
}

impl Wakeups {
    /// Bump the counter an event `v` announces a record for, if any.
    fn on_emit(&self, v: &Value) {
        let w = match v.get("type").and_then(Value::as_str) {
            Some("c2dFeedback") => &self.feedback,
            Some("fileUpload") => &self.file_notifications,
            _ => return,
        };
        w.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Completes when the counter behind `rx` is bumped past what `rx` saw last (never once the
/// hub is gone).
pub(crate) async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("hostname", &self.cfg.hostname)
            .finish_non_exhaustive()
    }
}

/// Client id of an identity: `{device}` or `{device}/{module}` (the core's rule).
pub(crate) fn client_id(device: &str, module: Option<&str>) -> String {
    let mut cid = String::new();
    // Writing into a String cannot fail.
    let _ = azsim_proto::username::write_client_id(&mut cid, device, module);
    cid
}

/// Whether `cid` is the client id of `device` itself or of one of its modules.
pub(crate) fn is_device_or_its_module(cid: &str, device: &str) -> bool {
    azsim_proto::username::parse_client_id(cid).is_some_and(|(d, _)| d == device)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Hub {
    /// A hub with no connections, serving `store`; the ports are what it tells clients.
    pub fn new(
        cfg: HubConfig,
        owner_key: Secret<String>,
        store: Store,
        mqtt_port: u16,
        https_port: u16,
    ) -> Hub {
        Hub {
            policies: crate::auth::Policies::new(owner_key.clone(), |_| {
                Secret::new(state_dir::generate_key())
            }),
            faults: crate::fault::Faults::default(),
            owner_key,
            store,
            mqtt_port,
            https_port,
            events: broadcast::channel(4096).0,
            conns: Mutex::new(HashMap::new()),
            presence: watch::channel(0).0,
            methods: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            live: watch::channel(0).0,
            dps: crate::dps::Dps::ephemeral(),
            router: crate::routing::Router::default(),
            configs: crate::rest::config_apply::ConfigState::default(),
            amqp_eventhub: std::sync::OnceLock::new(),
            wakeups: Wakeups::default(),
            cfg,
        }
    }

    /// The hub's clock (see [`crate::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.cfg.clock
    }

    /// Unix milliseconds on the hub's clock, as the store keeps times.
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.cfg.clock.unix_ms()).unwrap_or(i64::MAX)
    }

    /// Unix microseconds on the hub's clock, as activity times are kept.
    pub fn now_us(&self) -> i64 {
        i64::try_from(self.cfg.clock.unix_us()).unwrap_or(i64::MAX)
    }

    pub fn new_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Publish an event to the SSE stream (nobody listening is fine).
    pub fn emit(&self, device_id: &str, v: Value) {
        crate::routing::on_emit(self, &v);
        crate::rest::config_apply::on_emit(self, &v);
        self.wakeups.on_emit(&v);
        let _ = self.events.send(Arc::new(HubEvent {
            device_id: device_id.to_string(),
            json: v.to_string(),
        }));
    }

    /// Something about connections or subscriptions changed: wake method waiters.
    pub fn presence_changed(&self) {
        self.presence.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Register a live connection, kicking any older one with the same client id.
    pub fn register(&self, cid: &str, entry: ConnEntry) {
        let old = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cid.to_string(), entry);
        if let Some(old) = old {
            tracing::info!(
                client_id = cid,
                code = 400027,
                "ConnectionForcefullyClosedOnNewConnection: closing the older connection"
            );
            let _ = old.tx.send(ConnCmd::Kick(
                "400027 ConnectionForcefullyClosedOnNewConnection",
            ));
        }
        self.presence_changed();
    }

    /// Remove the connection if it is still the registered one.
    pub fn unregister(&self, cid: &str, conn_id: u64) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let removed = conns.get(cid).is_some_and(|e| e.conn_id == conn_id);
        if removed {
            conns.remove(cid);
        }
        drop(conns);
        self.presence_changed();
        removed
    }

    pub fn conn(&self, cid: &str) -> Option<ConnEntry> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cid)
            .cloned()
    }

    pub fn is_connected(&self, cid: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(cid)
    }

    /// Close every connection of a device (and its modules), or of one module.
    pub fn kick_identity(&self, device: &str, module: Option<&str>, reason: &'static str) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for (cid, e) in conns.iter() {
            let hit = match module {
                Some(m) => *cid == client_id(device, Some(m)),
                None => is_device_or_its_module(cid, device),
            };
            if hit {
                let _ = e.tx.send(ConnCmd::Kick(reason));
            }
        }
    }

    pub fn wake_c2d(&self, device: &str) {
        if let Some(e) = self.conn(device) {
            let _ = e.tx.send(ConnCmd::C2dWake);
        }
    }

    /// Push a desired patch to the identity if it is connected and subscribed.
    pub fn push_desired(
        &self,
        device: &str,
        module: Option<&str>,
        patch: &Map<String, Value>,
        version: u64,
    ) {
        let cid = client_id(device, module);
        let Some(e) = self.conn(&cid) else { return };
        if !e.subs.desired.load(Ordering::Acquire) {
            return;
        }
        let mut topic = String::new();
        if azsim_proto::topic::write_desired_patch(&mut topic, version).is_err() {
            return;
        }
        let body = twin::section_json(patch, version);
        crate::quota::record(self, crate::quota::Billed::DesiredNotify, body.len());
        let _ = e.tx.send(ConnCmd::Publish(Box::new(Publish::new(
            topic,
            QoS::AtMostOnce,
            body.into_bytes(),
        ))));
    }

    /// Invoke a direct method: wait up to `connect_timeout` for the identity to be connected and
    /// subscribed to methods, publish the request, wait up to `response_timeout` for the reply.
    pub async fn invoke_method(
        &self,
        device: &str,
        module: Option<&str>,
        name: azsim_proto::topic::MethodName<'_>,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<(u16, Bytes), MethodError> {
        let cid = client_id(device, module);
        let clock = &self.cfg.clock;
        let mut presence = self.presence.subscribe();
        let deadline = clock.unix_ms().saturating_add(duration_ms(connect_timeout));
        let entry = loop {
            presence.borrow_and_update();
            if let Some(e) = self
                .conn(&cid)
                .filter(|e| e.subs.methods.load(Ordering::Acquire))
            {
                break e;
            }
            tokio::select! {
                r = presence.changed() => if r.is_err() { return Err(MethodError::NotOnline) },
                () = clock.sleep_until_ms(deadline) => return Err(MethodError::NotOnline),
            }
        };
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed));
        let mut topic = String::new();
        if azsim_proto::topic::write_method_request(&mut topic, name, &rid).is_err() {
            return Err(MethodError::NotOnline);
        }
        let (tx, rx) = oneshot::channel();
        let key = (cid.clone(), rid.clone());
        self.methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), tx);
        let body = serde_json::to_vec(payload).unwrap_or_default();
        if entry
            .tx
            .send(ConnCmd::Publish(Box::new(Publish::new(
                topic,
                QoS::AtMostOnce,
                body,
            ))))
            .is_err()
        {
            self.methods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            return Err(MethodError::NotOnline);
        }
        let r = clock.timeout(response_timeout, rx).await;
        self.methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        match r {
            Some(Ok(v)) => Ok(v),
            _ => Err(MethodError::Timeout),
        }
    }

    /// A method reply from `cid`; false when nobody waits for it (late or unknown: dropped).
    pub fn method_reply(&self, cid: &str, rid: &str, status: u16, body: Bytes) -> bool {
        let tx = self
            .methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(cid.to_string(), rid.to_string()));
        match tx {
            Some(tx) => tx.send((status, body)).is_ok(),
            None => false,
        }
    }

    /// The discovery record; its service string is built by the core's `ConnectionString`.
    ///
    /// # Errors
    /// A hostname that a connection string cannot hold (empty, or with `;`).
    pub fn info(&self, ca_file: std::path::PathBuf) -> Result<HubInfo, HubError> {
        // One host name for everything, as Azure has: with HTTPS on 443 and AMQPS (if served)
        // on 5671 the SDKs derive every endpoint from a bare `HostName`.
        let default_ports = self.https_port == 443 && self.cfg.amqp_port.is_none_or(|p| p == 5671);
        let host = if default_ports {
            self.cfg.hostname.clone()
        } else {
            format!("{}:{}", self.cfg.hostname, self.https_port)
        };
        let cs = azsim_proto::connection_string::ConnectionString::service(
            &host,
            "iothubowner",
            self.owner_key.expose(),
        )
        .map_err(|e| HubError::State(format!("hostname: {e}")))?;
        let mut service_connection_string = String::new();
        // Writing into a String cannot fail.
        let _ = cs.write_with_secret(&mut service_connection_string);
        Ok(HubInfo {
            hostname: self.cfg.hostname.clone(),
            mqtt_port: self.mqtt_port,
            https_port: self.https_port,
            ca_file,
            service_connection_string,
            pid: std::process::id(),
            dashboard_url: None,
            amqp_port: None,
            eventhub_connection_string: None,
            amqp_dev_port: None,
            eventhub_dev_connection_string: None,
            id_scope: self.dps.id_scope.clone(),
            provisioning_host: crate::dps::assigned_hub(self),
            provisioning_service_connection_string: crate::dps::service_connection_string(self)?,
            policies: self
                .policies
                .iter()
                .map(|p| crate::PolicyInfo {
                    name: p.name.to_string(),
                    key: p.key.expose().clone(),
                    rights: p.rights.iter().map(|r| r.name().to_string()).collect(),
                })
                .collect(),
            settings: Some(crate::settings::HubSettings::of(&self.cfg)),
        })
    }
}

/// The body of a twin GET response: `{"desired":{..,"$version":n},"reported":{..,"$version":m}}`
/// (each `$version` last, see [`twin::section_json`]).
pub(crate) fn twin_device_view(i: &Identity) -> String {
    format!(
        "{{\"desired\":{},\"reported\":{}}}",
        twin::section_json(&i.desired, i.desired_version),
        twin::section_json(&i.reported, i.reported_version),
    )
}

pub(crate) async fn serve(
    mqtt: TcpListener,
    https: TcpListener,
    config: HubConfig,
    shutdown: impl Future<Output = ()>,
    ready: Option<oneshot::Sender<HubInfo>>,
) -> Result<(), HubError> {
    let cfg2 = config.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        state_dir::prepare_with(&cfg2.state_dir, &cfg2.hostname, cfg2.tls)
    })
    .await
    .map_err(|e| HubError::State(e.to_string()))??;
    let db_path = (!config.in_memory).then(|| prepared.ca_file.with_file_name(state_dir::DB_FILE));
    if let Some(p) = &db_path {
        // Created private before SQLite opens it: its -wal/-shm then get the same mode.
        state_dir::private_file(p)?;
    }
    let (cap, durability) = (config.limits.event_log_cap, config.durability);
    let store =
        tokio::task::spawn_blocking(move || Store::open_with(db_path.as_deref(), cap, durability))
            .await
            .map_err(|e| HubError::Store(e.to_string()))??;
    let mqtt_tls = prepared.server_config(&[])?;
    let https_tls = prepared.server_config(&[b"h2", b"http/1.1"])?;
    let dashboard_port = config.dashboard;
    let amqp = crate::amqp::Listeners::bind(&config, mqtt.local_addr()?.ip()).await?;
    let dps_dir = prepared
        .ca_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dps = tokio::task::spawn_blocking(move || crate::dps::Dps::prepare(&dps_dir))
        .await
        .map_err(|e| HubError::State(e.to_string()))??;
    let mut core = Hub::new(
        config,
        prepared.owner_key.clone(),
        store.clone(),
        mqtt.local_addr()?.port(),
        https.local_addr()?.port(),
    );
    core.dps = dps;
    core.policies = state_dir::policies(&core.cfg.state_dir, prepared.owner_key.clone())?;
    let hub = Arc::new(core);
    let mut info = hub.info(prepared.ca_file.clone())?;
    let dashboard = crate::dashboard::Dashboard::bind(
        dashboard_port,
        mqtt.local_addr()?.ip(),
        &hub.cfg.hostname,
        prepared.server_config(&[b"http/1.1"])?,
    )
    .await?;
    info.dashboard_url = dashboard.as_ref().map(|d| d.url.clone());
    amqp.describe(&hub, &mut info)?;
    let hub_json = prepared.ca_file.with_file_name(HUB_JSON);
    let text = serde_json::to_string_pretty(&info).map_err(|e| HubError::State(e.to_string()))?;
    // It holds the owner key (in the service connection string): private, like the key files.
    state_dir::write_private(&hub_json, &(text + "\n"))?;
    tracing::info!(
        hostname = %info.hostname, mqtt_port = info.mqtt_port, https_port = info.https_port,
        "hub listening"
    );

    let mqtt_task = tokio::spawn(crate::mqtt::accept_loop(hub.clone(), mqtt, mqtt_tls));
    let https_task = tokio::spawn(crate::rest::accept_loop(hub.clone(), https, https_tls));
    let amqp_tasks = amqp.spawn(&hub, prepared.server_config(&[])?);
    let ca_pem = std::fs::read_to_string(&prepared.ca_file)?;
    let dashboard_task =
        dashboard.map(|d| tokio::spawn(d.serve(hub.clone(), info.clone(), ca_pem)));
    if let Some(r) = ready {
        let _ = r.send(info);
    }
    shutdown.await;
    tracing::info!("hub shutting down");
    hub.shutdown.send_replace(true);
    mqtt_task.abort();
    https_task.abort();
    let _ = mqtt_task.await;
    let _ = https_task.await;
    for t in amqp_tasks {
        t.abort();
        let _ = t.await;
    }
    if let Some(t) = dashboard_task {
        t.abort();
        let _ = t.await;
    }
    // Connections notice the shutdown flag and finish their current packet; wait for them so
    // every PUBACKed message is in the event log before the final flush.
    let mut live = hub.live.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), live.wait_for(|n| *n == 0)).await;
    // The routed events they raised (their disconnects) go into that flush too.
    hub.router.flush(&hub, Duration::from_secs(5)).await;
    store.close().await;
    tracing::info!("hub stopped; state saved");
    Ok(())
}

/// Guard that counts a live connection task.
pub(crate) struct LiveGuard(pub Arc<Hub>);

impl LiveGuard {
    pub fn new(hub: Arc<Hub>) -> LiveGuard {
        hub.live.send_modify(|n| *n += 1);
        LiveGuard(hub)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Read an identity (blocking pool).
pub(crate) async fn load_identity(
    hub: &Hub,
    device: &str,
    module: Option<&str>,
) -> Result<Option<Identity>, HubError> {
    let (d, m) = (device.to_string(), module.map(str::to_string));
    hub.store
        .call(move |c| q::get_identity(c, &d, m.as_deref()))
        .await
}

/// Completes once the hub's shutdown flag is set.
pub(crate) async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
