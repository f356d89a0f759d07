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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::store::Store;
use crate::telemetry::{D2cRecord, Origin, push_pair};

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
/// in the order they were raised (started with the first event, on the caller's runtime).
#[derive(Debug)]
pub(crate) struct Router {
    tx: mpsc::UnboundedSender<D2cRecord>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<D2cRecord>>>,
    next: AtomicU64,
}

impl Default for Router {
    fn default() -> Router {
        let (tx, rx) = mpsc::unbounded_channel();
        Router {
            tx,
            rx: Mutex::new(Some(rx)),
            next: AtomicU64::new(1),
        }
    }
}

impl Router {
    fn send(&self, store: &Store, record: D2cRecord) {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut rx) = rx {
            let store = store.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        while let Some(r) = rx.recv().await {
                            if !store.log_event(r).await {
                                break;
                            }
                        }
                    });
                }
                Err(_) => {
                    // No runtime: keep the queue for a later caller that has one.
                    *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
                }
            }
        }
        let _ = self.tx.send(record);
    }
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
        }),
        enqueued_ns,
        properties: bag,
        body: body.to_string().into_bytes(),
        source,
    };
    hub.router.send(&hub.store, record);
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
