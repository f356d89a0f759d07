//! Routing to the built-in endpoint, as an IoT Hub with the usual routes does: besides
//! telemetry, twin change events, device lifecycle events and connection state events go to
//! the Event Hubs-compatible endpoint. Each is a record in the telemetry log with its source
//! (so partitions, sequence numbers, retention and consumers that start later work as for
//! telemetry); every other reader of the log reads telemetry only.
//!
//! The events carry what Azure gives them ("IoT Hub non-telemetry event schemas"): system
//! properties `content-type` application/json, `content-encoding` utf-8, `correlation-id` (a
//! unique id), `user-id` (the hub's name); the annotations `iothub-connection-device-id`,
//! `-module-id` (a module's), `iothub-message-source`; the application properties `hubName`,
//! `deviceId`, `moduleId` (a module's), `opType`, `operationTimestamp`,
//! `iothub-message-schema`.
//!
//! # A bounded queue
//!
//! The places that raise these events (a twin update, a registry call, a connect) do not wait
//! for the log: IoT Hub does not refuse or slow a twin update because its event stream is
//! behind. Events wait in [`Router`]'s queue for the log's writer instead, at most
//! [`ROUTED_QUEUE_MAX_BYTES`] of them, and at most [`IN_FLIGHT`] more handed to the writer and
//! not yet committed. When the writer is that far behind (a stalled disk, a telemetry flood),
//! a new event is dropped, never silently: it is counted (`GET /emulator/routing`,
//! `droppedEvents`), logged (a warning at most every 10 s and when the queue has caught up,
//! with the count since the last one) and announced on the hub's event stream (a
//! `routedEventsDropped` event, shown in the dashboard's event log). Azure counts what its
//! routing could not deliver the same way (the "dropped messages" metric) rather than holding
//! up the operation that raised it. An event in a transaction of the log that failed is
//! counted as dropped too. A stopping hub hands what is queued to the log before its last
//! flush (the disconnects of the stop included); what it cannot in 5 s is logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, broadcast};

use crate::hub::{Hub, HubEvent};
use crate::store::{Commits, Store};
use crate::telemetry::{D2cRecord, Origin, push_pair};

/// The most bytes of routed events (bodies, properties, ids and the records themselves) that
/// wait for the telemetry log's writer: some 6,000 twin change events (one with a small patch
/// takes about 650 bytes here).
pub const ROUTED_QUEUE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Routed events handed to the log's writer and not yet committed, at most.
pub const IN_FLIGHT: u64 = 256;

/// Dropped events are logged at most this often (and once more when the queue has caught up).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where a record of the telemetry log comes from (`iothub-message-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Telemetry,
    TwinChange,
    Lifecycle,
    ConnectionState,
}

impl Source {
    /// The `iothub-message-source` annotation.
    pub fn annotation(self) -> &'static str {
        match self {
            Source::Telemetry => "Telemetry",
            Source::TwinChange => "twinChangeEvents",
            Source::Lifecycle => "deviceLifecycleEvents",
            Source::ConnectionState => "deviceConnectionStateEvents",
        }
    }

    /// The log's `source` column: NULL for telemetry (so rows from before routing, and the
    /// readers that want telemetry only, need no change but `source IS NULL`).
    pub fn column(self) -> Option<&'static str> {
        match self {
            Source::Telemetry => None,
            other => Some(other.annotation()),
        }
    }

    /// The source a `source` column value names (telemetry for NULL or anything unknown).
    pub fn from_column(c: Option<&str>) -> Source {
        match c {
            Some("twinChangeEvents") => Source::TwinChange,
            Some("deviceLifecycleEvents") => Source::Lifecycle,
            Some("deviceConnectionStateEvents") => Source::ConnectionState,
            _ => Source::Telemetry,
        }
    }

    /// The `iothub-message-schema` application property.
    fn schema(self) -> &'static str {
        match self {
            Source::Telemetry => "",
            Source::TwinChange => "twinChangeNotification",
            Source::Lifecycle => "deviceLifecycleNotification",
            Source::ConnectionState => "deviceConnectionStateNotification",
        }
    }
}

/// Which sources reach the built-in endpoint (`azsim hub --route`; all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    pub telemetry: bool,
    pub twin: bool,
    pub lifecycle: bool,
    pub connection: bool,
}

impl Default for Routes {
    fn default() -> Routes {
        Routes {
            telemetry: true,
            twin: true,
            lifecycle: true,
            connection: true,
        }
    }
}

impl Routes {
    /// No source routed.
    pub const NONE: Routes = Routes {
        telemetry: false,
        twin: false,
        lifecycle: false,
        connection: false,
    };

    /// `telemetry,twin,lifecycle,connection` (any subset, comma-separated).
    pub fn parse(s: &str) -> Result<Routes, String> {
        let mut r = Routes::NONE;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "telemetry" => r.telemetry = true,
                "twin" => r.twin = true,
                "lifecycle" => r.lifecycle = true,
                "connection" => r.connection = true,
                other => {
                    return Err(format!(
                        "unknown route source {other:?} (telemetry, twin, lifecycle, connection)"
                    ));
                }
            }
        }
        Ok(r)
    }

    /// The `--route` value that [`Routes::parse`] reads back as these routes (empty for none).
    pub fn arg(&self) -> String {
        [
            (self.telemetry, "telemetry"),
            (self.twin, "twin"),
            (self.lifecycle, "lifecycle"),
            (self.connection, "connection"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }

    pub fn routes(&self, s: Source) -> bool {
        match s {
            Source::Telemetry => self.telemetry,
            Source::TwinChange => self.twin,
            Source::Lifecycle => self.lifecycle,
            Source::ConnectionState => self.connection,
        }
    }
}

/// The queue from the places that raise events to the telemetry log: one task appends them
/// in the order they were raised (started with the first event, on the caller's runtime). See
/// the module docs for its bound and what happens beyond it.
#[derive(Debug)]
pub(crate) struct Router {
    queue: Arc<Queue>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    max_bytes: usize,
    state: Mutex<QueueState>,
    /// An event was queued.
    ready: Notify,
    /// Events queued since the start.
    routed: AtomicU64,
    /// Events dropped since the start (queue full, or in a failed write of the log).
    dropped: AtomicU64,
    /// Events queued or being handed to the writer: what [`Router::flush`] waits for.
    unsent: AtomicU64,
    /// `unsent` came down to 0.
    idle: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<D2cRecord>,
    /// What `events` hold, by [`record_bytes`].
    bytes: usize,
    /// The task that appends them runs.
    started: bool,
    /// Dropped since the last report, and when that was.
    unreported: u64,
    reported_at: Option<Instant>,
}

impl Default for Router {
    fn default() -> Router {
        Router::with_max_bytes(ROUTED_QUEUE_MAX_BYTES)
    }
}

/// What one queued event holds.
fn record_bytes(r: &D2cRecord) -> usize {
    std::mem::size_of::<D2cRecord>()
        + std::mem::size_of::<Origin>()
        + r.body.capacity()
        + r.properties.capacity()
        + r.origin.device_id.len()
        + r.origin.module_id.as_ref().map_or(0, String::len)
}

impl Router {
    /// A router whose queue holds at most `max_bytes` of events.
    pub(crate) fn with_max_bytes(max_bytes: usize) -> Router {
        Router {
            queue: Arc::new(Queue {
                max_bytes,
                state: Mutex::new(QueueState::default()),
                ready: Notify::new(),
                routed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                unsent: AtomicU64::new(0),
                idle: Notify::new(),
            }),
            next: AtomicU64::new(1),
        }
    }

    /// Starts the task that appends the events, on the caller's runtime, if it does not run
    /// (without a runtime here it is started by a later caller that has one).
    fn start(&self, hub: &Hub, st: &mut QueueState) {
        if !st.started
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            st.started = true;
            rt.spawn(drain(
                self.queue.clone(),
                hub.store.clone(),
                hub.events.clone(),
            ));
        }
    }

    fn send(&self, hub: &Hub, record: D2cRecord) {
        let q = &self.queue;
        let size = record_bytes(&record);
        let mut st = q.lock();
        self.start(hub, &mut st);
        if st.bytes.saturating_add(size) <= q.max_bytes {
            st.bytes += size;
            st.events.push_back(record);
            q.unsent.fetch_add(1, Ordering::AcqRel);
            drop(st);
            q.routed.fetch_add(1, Ordering::Relaxed);
            q.ready.notify_one();
            return;
        }
        drop(record);
        st.unreported += 1;
        let total = q.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let due = st.reported_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        let report = due.then(|| {
            st.reported_at = Some(Instant::now());
            std::mem::take(&mut st.unreported)
        });
        drop(st);
        if let Some(n) = report {
            report_dropped(
                &hub.events,
                n,
                total,
                "the queue to the built-in endpoint is full",
            );
        }
    }

    /// Waits, at most `within`, until every event queued so far is handed to the log's writer
    /// (the hub does this before its last flush, so the disconnects of a stop are kept).
    pub(crate) async fn flush(&self, hub: &Hub, within: Duration) {
        let q = &self.queue;
        self.start(hub, &mut q.lock());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = q.idle.notified();
            let left = q.unsent.load(Ordering::Acquire);
            if left == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    events = left,
                    "routed events not handed to the log before the hub stopped"
                );
                return;
            }
        }
    }

    /// What `GET /emulator/routing` shows.
    pub(crate) fn stats(&self) -> Value {
        let q = &self.queue;
        let (queued, bytes) = {
            let st = q.lock();
            (st.events.len(), st.bytes)
        };
        json!({
            "queuedEvents": queued,
            "queuedBytes": bytes,
            "maxQueuedBytes": q.max_bytes,
            "routedEvents": q.routed.load(Ordering::Relaxed),
            "droppedEvents": q.dropped.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let queued = self.queue.lock().events.len();
        if queued > 0 {
            tracing::warn!(
                events = queued,
                "routed events still queued when the hub stopped were not written to the log"
            );
        }
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest event, waiting for one; a run of drops not reported yet is reported once
    /// the queue is empty.
    async fn pop(&self, events: &broadcast::Sender<Arc<HubEvent>>) -> D2cRecord {
        loop {
            let unreported = {
                let mut st = self.lock();
                if let Some(r) = st.events.pop_front() {
                    st.bytes -= record_bytes(&r);
                    return r;
                }
                st.reported_at = None;
                std::mem::take(&mut st.unreported)
            };
            if unreported > 0 {
                let total = self.dropped.load(Ordering::Relaxed);
                report_dropped(events, unreported, total, "the queue was full");
            }
            self.ready.notified().await;
        }
    }
}

/// Appends the queue's events to the log in order, with at most [`IN_FLIGHT`] of them not yet
/// committed; ends when the log's writer is gone.
async fn drain(q: Arc<Queue>, store: Store, events: broadcast::Sender<Arc<HubEvent>>) {
    let mut commits = Arc::new(Commits::default());
    let mut sent = 0u64;
    loop {
        while sent - commits.committed().min(sent) >= IN_FLIGHT && !commits.failed() {
            commits.changed().await;
        }
        if commits.failed() {
            // A transaction of the log failed (the writer logged why): what it held is lost.
            let lost = sent - commits.committed().min(sent);
            let total = q.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
            report_dropped(&events, lost, total, "a write of the telemetry log failed");
            commits = Arc::new(Commits::default());
            sent = 0;
        }
        let record = q.pop(&events).await;
        sent += 1;
        let handed = store.log_acked(record, &commits, sent).await;
        if q.unsent.fetch_sub(1, Ordering::AcqRel) == 1 {
            q.idle.notify_waiters();
        }
        if !handed {
            return;
        }
    }
}

/// Logs `n` dropped events (`total` since the start) and announces them on the event stream.
fn report_dropped(
    events: &broadcast::Sender<Arc<HubEvent>>,
    n: u64,
    total: u64,
    why: &'static str,
) {
    if n == 0 {
        return;
    }
    tracing::warn!(
        dropped = n,
        dropped_total = total,
        reason = why,
        "routed events (twin, lifecycle, connection state) dropped, not written to the built-in endpoint"
    );
    let _ = events.send(Arc::new(HubEvent {
        device_id: String::new(),
        json: json!({
            "type": "routedEventsDropped",
            "dropped": n,
            "droppedTotal": total,
            "reason": why,
        })
        .to_string(),
    }));
}

/// `GET /emulator/routing`: the routed events' queue and counters (see [`Router`]).
pub(crate) async fn stats(State(hub): State<Arc<Hub>>) -> Json<Value> {
    Json(hub.router.stats())
}

/// Append one event of `source` about `device` (and `module`) to the log, if that source is
/// routed: `op_type` and `body` as Azure sends them.
pub(crate) fn route_event(
    hub: &Hub,
    source: Source,
    device: &str,
    module: Option<&str>,
    op_type: &str,
    body: &Value,
) {
    if source == Source::Telemetry || !hub.cfg.routes.routes(source) {
        return;
    }
    let enqueued_ns = hub.clock().unix_ns();
    let n = hub.router.next.fetch_add(1, Ordering::Relaxed);
    let hub_name = hub
        .cfg
        .hostname
        .split('.')
        .next()
        .unwrap_or(&hub.cfg.hostname);
    let mut bag = String::new();
    push_pair(&mut bag, "$.ct", "application/json");
    push_pair(&mut bag, "$.ce", "utf-8");
    push_pair(
        &mut bag,
        "$.cid",
        &format!("{:016x}{:08x}", enqueued_ns, n & 0xffff_ffff),
    );
    push_pair(&mut bag, "$.uid", hub_name);
    push_pair(&mut bag, "hubName", hub_name);
    push_pair(&mut bag, "deviceId", device);
    if let Some(m) = module {
        push_pair(&mut bag, "moduleId", m);
    }
    push_pair(&mut bag, "opType", op_type);
    push_pair(
        &mut bag,
        "operationTimestamp",
        &crate::clock::rfc3339_ns(enqueued_ns),
    );
    push_pair(&mut bag, "iothub-message-schema", source.schema());
    let record = D2cRecord {
        origin: Arc::new(Origin {
            device_id: device.to_string(),
            module_id: module.map(str::to_string),
            generation_id: String::new(),
            auth: crate::telemetry::AuthMethod::IdentityKey,
        }),
        enqueued_ns,
        properties: bag,
        body: body.to_string().into_bytes(),
        source,
    };
    hub.router.send(hub, record);
}

/// What a twin change changed.
#[derive(Debug)]
pub(crate) struct TwinChange<'a> {
    /// The whole twin replaced (`replaceTwin`), else a patch (`updateTwin`).
    pub replace: bool,
    /// The twin's version after it.
    pub version: u64,
    /// The tags patch (a replacement's whole tags), if the tags changed.
    pub tags: Option<&'a Map<String, Value>>,
    /// `desired` or `reported` and its patch, if properties changed.
    pub properties: Option<(&'a str, &'a Map<String, Value>)>,
}

/// A twin change event: body `{"version":..,"tags":{..},"properties":{"desired"|"reported":{..}}}`
/// with what changed.
pub(crate) fn twin_changed(hub: &Hub, device: &str, module: Option<&str>, change: &TwinChange<'_>) {
    let op = if change.replace {
        "replaceTwin"
    } else {
        "updateTwin"
    };
    let mut body = Map::new();
    body.insert("version".into(), json!(change.version));
    if let Some(t) = change.tags {
        body.insert("tags".into(), Value::Object(t.clone()));
    }
    if let Some((which, patch)) = change.properties {
        body.insert("properties".into(), json!({ which: patch }));
    }
    route_event(
        hub,
        Source::TwinChange,
        device,
        module,
        op,
        &Value::Object(body),
    );
}

/// A device lifecycle event: `twin` is the identity's twin as the registry returns it.
pub(crate) fn lifecycle(
    hub: &Hub,
    device: &str,
    module: Option<&str>,
    created: bool,
    twin: &Value,
) {
    let op = if created {
        "createDeviceIdentity"
    } else {
        "deleteDeviceIdentity"
    };
    route_event(hub, Source::Lifecycle, device, module, op, twin);
}

/// Called with every event of the hub's live stream: connects and disconnects become
/// connection state events.
pub(crate) fn on_emit(hub: &Hub, v: &Value) {
    let op = match v.get("type").and_then(Value::as_str) {
        Some("connected") => "deviceConnected",
        Some("disconnected") => "deviceDisconnected",
        _ => return,
    };
    if !hub.cfg.routes.connection {
        return;
    }
    let Some(device) = v.get("deviceId").and_then(Value::as_str) else {
        return;
    };
    let module = v.get("moduleId").and_then(Value::as_str);
    let n = hub.router.next.load(Ordering::Relaxed);
    // Azure's is an opaque, increasing hex string.
    let seq = format!("{:032X}{:032X}", hub.clock().unix_ns(), n);
    let body = json!({ "sequenceNumber": seq });
    route_event(hub, Source::ConnectionState, device, module, op, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_of_routes_reads_back_from_its_route_argument() {
        for bits in 0..16u8 {
            let r = Routes {
                telemetry: bits & 1 != 0,
                twin: bits & 2 != 0,
                lifecycle: bits & 4 != 0,
                connection: bits & 8 != 0,
            };
            assert_eq!(Routes::parse(&r.arg()), Ok(r), "{:?}", r.arg());
        }
        assert_eq!(
            Routes::default().arg(),
            "telemetry,twin,lifecycle,connection"
        );
    }

    /// An in-memory hub whose routed events may queue up to `max_bytes`.
    fn hub(max_bytes: usize) -> Arc<Hub> {
        let mut cfg = crate::HubConfig::new("unused");
        cfg.in_memory = true;
        let store = Store::open(None, 1_000_000).unwrap();
        let mut hub = Hub::new(cfg, String::from("owner").into(), store, 0, 0);
        hub.router = Router::with_max_bytes(max_bytes);
        Arc::new(hub)
    }

    fn stat(hub: &Hub, name: &str) -> u64 {
        hub.router.stats()[name].as_u64().unwrap()
    }

    async fn twin_events_in_log(hub: &Hub) -> u64 {
        hub.store
            .call(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM events WHERE source = 'twinChangeEvents'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| crate::HubError::Store(e.to_string()))
            })
            .await
            .unwrap() as u64
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_with_the_writer_stalled_stays_within_the_bound_and_counts_each_drop() {
        const MAX: usize = 64 * 1024;
        const FLOOD: u64 = 5_000;
        let hub = hub(MAX);
        let mut stream = hub.events.subscribe();
        // The writer stalls: the database is held until the test lets go.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = tokio::sync::oneshot::channel();
        let holder = {
            let store = hub.store.clone();
            tokio::spawn(async move {
                store
                    .call(move |_| {
                        let _ = held_tx.send(());
                        let _ = released.recv();
                        Ok(())
                    })
                    .await
            })
        };
        held.await.unwrap();

        let patch: Map<String, Value> = serde_json::from_str(
            r#"{"telemetryInterval": 5, "firmware": {"version": "1.2.3", "url": "https://example.com/fw.bin"}}"#,
        )
        .unwrap();
        let mut peak = 0;
        for version in 1..=FLOOD {
            twin_changed(
                &hub,
                "flood",
                None,
                &TwinChange {
                    replace: false,
                    version,
                    tags: None,
                    properties: Some(("desired", &patch)),
                },
            );
            peak = peak.max(stat(&hub, "queuedBytes"));
        }
        assert!(peak <= MAX as u64, "queued {peak} bytes, bound {MAX}");
        let (routed, dropped) = (stat(&hub, "routedEvents"), stat(&hub, "droppedEvents"));
        assert_eq!(routed + dropped, FLOOD);
        assert!(dropped > FLOOD / 2, "{}", hub.router.stats());
        // Nothing beyond the bound is held elsewhere: what was routed is queued, or one of at
        // most IN_FLIGHT handed to the writer (and the one the task is handing over).
        assert!(
            routed <= stat(&hub, "queuedEvents") + IN_FLIGHT + 1,
            "{}",
            hub.router.stats()
        );
        // The drops are announced on the event stream (the dashboard's event log).
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let ev = stream.recv().await.unwrap();
                let v: Value = serde_json::from_str(&ev.json).unwrap();
                if v["type"] == "routedEventsDropped" {
                    return v;
                }
            }
        })
        .await
        .expect("a routedEventsDropped event");
        assert!(announced["dropped"].as_u64().unwrap() >= 1, "{announced}");

        // The writer resumes: every event that was kept reaches the log, in order, and the
        // queue empties.
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while twin_events_in_log(&hub).await < routed {
            assert!(Instant::now() < deadline, "{}", hub.router.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(twin_events_in_log(&hub).await, routed);
        assert_eq!(stat(&hub, "queuedEvents"), 0);
        assert_eq!(stat(&hub, "queuedBytes"), 0);
        assert_eq!(stat(&hub, "droppedEvents"), dropped);
        // The rest of the drops are reported once the queue has caught up; what is reported
        // adds up to the count.
        let mut reported = announced["dropped"].as_u64().unwrap();
        while reported < dropped {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.recv())
                .await
                .expect("the rest of the drops reported")
                .unwrap();
            let v: Value = serde_json::from_str(&ev.json).unwrap();
            if v["type"] == "routedEventsDropped" {
                reported += v["dropped"].as_u64().unwrap();
            }
        }
        assert_eq!(reported, dropped);
        let versions: Vec<u64> = hub
            .store
            .call(|c| {
                let mut st = c
                    .prepare(
                        "SELECT body FROM events WHERE source = 'twinChangeEvents' ORDER BY seq",
                    )
                    .unwrap();
                let v = st
                    .query_map([], |r| r.get::<_, Vec<u8>>(0))
                    .unwrap()
                    .map(|b| {
                        serde_json::from_slice::<Value>(&b.unwrap()).unwrap()["version"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect();
                Ok(v)
            })
            .await
            .unwrap();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(versions.first(), Some(&1));
    }

    #[tokio::test]
    async fn the_counters_are_served_at_emulator_routing_to_the_owner_only() {
        use tower::ServiceExt as _;
        let key = crate::state_dir::generate_key();
        let mut cfg = crate::HubConfig::new("unused");
        cfg.in_memory = true;
        let store = Store::open(None, 1000).unwrap();
        let mut hub = Hub::new(cfg, key.clone().into(), store, 8883, 8443);
        hub.router = Router::with_max_bytes(1);
        let hub = Arc::new(hub);
        lifecycle(&hub, "d1", None, true, &json!({"deviceId": "d1"}));
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            "localhost:8443",
            &key,
            crate::clock::unix_now() + 600,
            Some("iothubowner"),
        )
        .unwrap();
        let app = crate::rest::router(hub.clone());
        let get = |auth: Option<&str>| {
            let mut req = axum::http::Request::builder().uri("/emulator/routing");
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            app.clone()
                .oneshot(req.body(axum::body::Body::empty()).unwrap())
        };
        let r = get(Some(&token)).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["droppedEvents"], 1, "{v}");
        assert_eq!(v["routedEvents"], 0, "{v}");
        assert_eq!(v["maxQueuedBytes"], 1, "{v}");
        assert_eq!(get(None).await.unwrap().status(), 401);
    }

    #[tokio::test]
    async fn flush_hands_every_queued_event_to_the_log() {
        let hub = hub(ROUTED_QUEUE_MAX_BYTES);
        for device in 0..300 {
            lifecycle(&hub, &format!("d{device}"), None, true, &json!({}));
        }
        hub.router.flush(&hub, Duration::from_secs(30)).await;
        hub.store.flush().await;
        let n = hub
            .store
            .call(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM events WHERE source = 'deviceLifecycleEvents'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| crate::HubError::Store(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(n, 300);
        // Nothing queued: at once.
        let t = Instant::now();
        hub.router.flush(&hub, Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn with_room_nothing_is_dropped() {
        let hub = hub(ROUTED_QUEUE_MAX_BYTES);
        let patch = Map::new();
        for version in 1..=500 {
            twin_changed(
                &hub,
                "calm",
                None,
                &TwinChange {
                    replace: false,
                    version,
                    tags: Some(&patch),
                    properties: None,
                },
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while twin_events_in_log(&hub).await < 500 {
            assert!(Instant::now() < deadline, "{}", hub.router.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stat(&hub, "routedEvents"), 500);
        assert_eq!(stat(&hub, "droppedEvents"), 0);
    }

    #[test]
    fn routes_parse_a_subset_and_name_a_bad_source() {
        let r = Routes::parse("telemetry,twin").unwrap();
        assert!(r.telemetry && r.twin && !r.lifecycle && !r.connection);
        assert_eq!(
            Routes::parse("telemetry,twin,lifecycle,connection").unwrap(),
            Routes::default()
        );
        assert!(Routes::parse("twin,bogus").unwrap_err().contains("bogus"));
    }

    #[test]
    fn a_source_survives_its_column() {
        for s in [
            Source::Telemetry,
            Source::TwinChange,
            Source::Lifecycle,
            Source::ConnectionState,
        ] {
            assert_eq!(Source::from_column(s.column()), s);
        }
    }
}
