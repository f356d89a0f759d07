//! What configurations (automatic device management) do to twins: the hub evaluates each
//! configuration's `targetCondition` over the twins and applies to each targeted twin the
//! content of the configuration that wins there, the highest `priority`, of equal priorities
//! the one created last ("Understand IoT Hub configurations", "Priority"). Applying is a real
//! twin update (desired version bump, `$metadata`, the desired-change notification to a
//! connected device, a twin change event). The twin's `configurations` field keeps its status
//! per configuration: `Targeted`, or `Applied` for the winner whose content it got (capitalised
//! as the system metric `appliedCount` queries it: `configurations.[[id]].status = 'Applied'`).
//!
//! Azure evaluates shortly after a configuration is created and then every five minutes. The
//! local hub evaluates at once and deterministically instead: a pass runs when a configuration
//! is created, updated or deleted; a twin is evaluated again when its tags change (`rest/twins.rs`,
//! jobs through it), when a device reports properties or connects (`on_emit`), when a device or
//! module is created or updated (`rest/devices.rs`, `rest/bulk.rs`); a deleted one's statuses go
//! ([`ConfigState::twin_removed`]); and every [`PERIODIC`] (`HubConfig::config_pass_every`)
//! a whole pass runs as a safety net. A twin that leaves a
//! configuration's target keeps the desired properties it got, as on Azure (configurations
//! never remove desired properties; deleting one only lets the next one in priority apply).
//!
//! Applied content is not re-applied: the configuration's content is immutable, so a twin gets
//! it once, when the configuration starts winning there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::Shared;
use crate::query::{self, Cond};
use crate::store::configurations::{self as store, StoredConfig, TwinKey};
use crate::store::q;
use crate::{HubError, twin};

/// The safety-net pass interval (`HubConfig::config_pass_every`'s default).
pub(crate) const PERIODIC: Duration = Duration::from_secs(10);

pub(crate) const TARGETED: &str = "Targeted";
pub(crate) const APPLIED: &str = "Applied";

/// The hub's configuration state: every twin's statuses (what its `configurations` field
/// shows; the store keeps them too) and what the evaluation task has to look at next.
#[derive(Debug, Default)]
pub(crate) struct ConfigState {
    statuses: Mutex<HashMap<TwinKey, BTreeMap<String, String>>>,
    dirty: Mutex<Dirty>,
    wake: Notify,
}

/// What changed since the last pass.
#[derive(Debug, Default)]
struct Dirty {
    /// Configurations changed: every twin.
    all: bool,
    /// These twins changed.
    twins: HashSet<TwinKey>,
}

impl ConfigState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TwinKey, BTreeMap<String, String>>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A twin's `configurations` field (`{"<id>": {"status": "Targeted"|"Applied"}}`), `None`
    /// when no configuration targets it.
    pub(crate) fn twin_field(&self, device: &str, module: Option<&str>) -> Option<Value> {
        let key = (device.to_string(), module.unwrap_or("").to_string());
        let s = self.lock();
        let m = s.get(&key).filter(|m| !m.is_empty())?;
        Some(Value::Object(
            m.iter()
                .map(|(id, st)| (id.clone(), json!({ "status": st })))
                .collect(),
        ))
    }

    /// The configurations changed: evaluate every twin again.
    pub(crate) fn changed(&self) {
        self.dirty().all = true;
        self.wake.notify_one();
    }

    /// A configuration was deleted: no twin shows it any more (the store dropped its rows).
    pub(crate) fn forget(&self, id: &str) {
        let mut all = self.lock();
        for statuses in all.values_mut() {
            statuses.remove(id);
        }
        all.retain(|_, s| !s.is_empty());
        drop(all);
        self.changed();
    }

    /// One twin changed (tags, reported properties, a connection): evaluate it again.
    pub(crate) fn twin_changed(&self, device: &str, module: Option<&str>) {
        let key = (device.to_string(), module.unwrap_or("").to_string());
        self.dirty().twins.insert(key);
        self.wake.notify_one();
    }

    /// A device (with its modules) or a module was deleted: its statuses go at once, so a device
    /// created again under its id starts with none (its content is applied to it again), and the
    /// next pass drops the stored ones.
    pub(crate) fn twin_removed(&self, device: &str, module: Option<&str>) {
        let mut all = self.lock();
        let gone: Vec<TwinKey> = all
            .keys()
            .filter(|(d, m)| d == device && module.is_none_or(|x| x == m))
            .cloned()
            .collect();
        for k in &gone {
            all.remove(k);
        }
        drop(all);
        let mut dirty = self.dirty();
        dirty
            .twins
            .insert((device.to_string(), module.unwrap_or("").to_string()));
        dirty.twins.extend(gone);
        drop(dirty);
        self.wake.notify_one();
    }

    /// Whether any configuration or status exists (else a twin change needs no pass).
    fn idle(&self, configs: usize) -> bool {
        configs == 0 && self.lock().is_empty()
    }
}

/// What a configuration targets and puts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `deviceContent`: device twins.
    Device,
    /// `moduleContent`: module twins (`targetCondition` `FROM devices.modules WHERE ...`).
    Module,
    /// `modulesContent` (an IoT Edge deployment): edge device twins, content for their modules.
    Edge,
}

/// A configuration ready to evaluate.
#[derive(Debug)]
pub(crate) struct Target {
    pub id: String,
    pub priority: i64,
    pub seq: i64,
    pub kind: Kind,
    /// `None`: an empty condition, which targets nothing.
    pub condition: Option<Cond>,
    pub content: Map<String, Value>,
}

/// The `WHERE` clause of a module configuration's `FROM devices.modules WHERE ...` condition.
pub(crate) fn module_condition(text: &str) -> Option<&str> {
    let t = text.trim_start();
    let lower = t.to_ascii_lowercase();
    let rest = lower.strip_prefix("from")?.trim_start();
    let rest = rest.strip_prefix("devices.modules")?.trim_start();
    let rest = rest.strip_prefix("where")?;
    Some(&t[t.len() - rest.len()..])
}

/// The kind of a configuration by its content.
pub(crate) fn kind_of(content: &Map<String, Value>) -> Kind {
    let has = |k: &str| {
        content
            .get(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    };
    if has("modulesContent") {
        Kind::Edge
    } else if has("moduleContent") {
        Kind::Module
    } else {
        Kind::Device
    }
}

/// Parse a target condition for `kind`.
///
/// # Errors
/// The parser's message.
pub(crate) fn parse_target(kind: Kind, text: &str) -> Result<Option<Cond>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let clause = match kind {
        Kind::Module => module_condition(text).ok_or_else(|| {
            "the target condition of a module configuration must start with FROM devices.modules WHERE"
                .to_string()
        })?,
        _ => text,
    };
    query::parse_condition(clause)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl Target {
    pub(super) fn from_stored(c: &StoredConfig) -> Option<Target> {
        let content = c.doc.get("content")?.as_object()?.clone();
        let kind = kind_of(&content);
        let condition = parse_target(kind, c.target_condition()).ok()?;
        Some(Target {
            id: c.id().to_string(),
            priority: c.priority(),
            seq: c.seq,
            kind,
            condition,
            content,
        })
    }

    /// Whether it targets `doc` (a twin as the REST API shows it); an edge deployment targets
    /// IoT Edge devices only.
    pub(super) fn targets(&self, doc: &Value) -> bool {
        if self.kind == Kind::Edge && doc.pointer("/capabilities/iotEdge") != Some(&json!(true)) {
            return false;
        }
        self.condition
            .as_ref()
            .is_some_and(|c| query::matches(c, doc))
    }
}

/// The desired-properties patch of a `deviceContent`/`moduleContent` map: each key is
/// `properties.desired` or `properties.desired.<path>`.
pub(crate) fn desired_patch(content: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (k, v) in content {
        let Some(rest) = k.strip_prefix("properties.desired") else {
            continue;
        };
        let segs: Vec<&str> = rest.split('.').filter(|s| !s.is_empty()).collect();
        let mut value = v.clone();
        for s in segs.iter().rev() {
            value = json!({ *s: value });
        }
        // `properties.desired` itself is an object (checked on create).
        if let Value::Object(m) = value {
            twin::merge(&mut patch, &m);
        }
    }
    patch
}

/// Sets a twin's desired properties as a service update would: merge `patch` (or replace the
/// whole section when `replace`), version bump, `$metadata`, the notification to a connected
/// device and the twin change event. Nothing happens when it changes nothing.
pub(crate) async fn update_desired(
    hub: &Shared,
    device: &str,
    module: Option<&str>,
    patch: Map<String, Value>,
    replace: bool,
) -> Result<bool, HubError> {
    let (d, m) = (device.to_string(), module.map(str::to_string));
    let now = hub.clock().now_rfc3339();
    let done = hub
        .store
        .call(move |c| {
            let Some(mut i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(None);
            };
            let mut next = if replace {
                Map::new()
            } else {
                i.desired.clone()
            };
            twin::merge(&mut next, &patch);
            if next == i.desired {
                return Ok(None);
            }
            if let Err(e) = twin::check_size(&next, twin::MAX_SECTION_BYTES, "Properties.Desired") {
                tracing::info!(device = %d, error = %e, "configuration content not applied");
                return Ok(None);
            }
            let sent = if replace {
                twin::replacement_patch(&i.desired, &next)
            } else {
                patch
            };
            i.desired = next;
            i.desired_version += 1;
            if replace {
                i.desired_meta = Map::new();
                let whole = i.desired.clone();
                twin::touch_metadata(&mut i.desired_meta, &whole, &now, i.desired_version);
            } else {
                twin::touch_metadata(&mut i.desired_meta, &sent, &now, i.desired_version);
            }
            i.desired_updated = now;
            i.twin_version += 1;
            q::put_identity(c, &i)?;
            Ok(Some((i, sent)))
        })
        .await?;
    let Some((i, p)) = done else {
        return Ok(false);
    };
    let change = crate::routing::TwinChange {
        replace: false,
        version: i.twin_version,
        tags: None,
        properties: Some(("desired", &p)),
    };
    crate::routing::twin_changed(hub, &i.device_id, i.module_id.as_deref(), &change);
    hub.push_desired(&i.device_id, i.module_id.as_deref(), &p, i.desired_version);
    hub.emit(
        &i.device_id,
        json!({"type":"twinDesired","deviceId":i.device_id,"moduleId":i.module_id,"version":i.desired_version,"patch":p}),
    );
    Ok(true)
}

/// Put an edge deployment's `modulesContent` on a device's module twins: each module's
/// `properties.desired` replaces that module twin's desired properties (as IoT Edge
/// deployments do). Modules the registry does not have are skipped (the edge agent creates
/// its modules' identities when it starts them); returns the ones updated.
pub(crate) async fn apply_modules_content(
    hub: &Shared,
    device: &str,
    modules: &Map<String, Value>,
) -> Result<Vec<String>, HubError> {
    let mut done = Vec::new();
    for (module, content) in modules {
        let Some(desired) = content.get("properties.desired").and_then(Value::as_object) else {
            continue;
        };
        let mut d = desired.clone();
        twin::strip_meta(&mut d);
        if update_desired(hub, device, Some(module), d, true).await? {
            done.push(module.clone());
        }
    }
    Ok(done)
}

/// The statuses `targets` (one group, sorted, winner first) give `doc`, and the winner.
fn evaluate<'a>(
    targets: &[&'a Target],
    doc: &Value,
) -> (Option<&'a Target>, BTreeMap<String, String>) {
    let hit: Vec<&Target> = targets.iter().copied().filter(|t| t.targets(doc)).collect();
    let mut statuses = BTreeMap::new();
    for t in &hit {
        statuses.insert(t.id.clone(), TARGETED.to_string());
    }
    let winner = hit.first().copied();
    if let Some(w) = winner {
        statuses.insert(w.id.clone(), APPLIED.to_string());
    }
    (winner, statuses)
}

/// Every configuration that parses, highest priority first; of equal priorities the one created
/// last first.
async fn targets(hub: &Shared) -> Result<Vec<Target>, HubError> {
    let stored = hub.store.call(|c| store::list(c)).await?;
    let mut targets: Vec<Target> = stored.iter().filter_map(Target::from_stored).collect();
    targets.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.seq.cmp(&a.seq)));
    Ok(targets)
}

/// Evaluate one twin (`doc` as the REST API shows it): apply the content of each winner that
/// did not win there before, and save its statuses if they changed.
async fn evaluate_twin(hub: &Shared, targets: &[Target], doc: &Value) -> Result<(), HubError> {
    let device = doc["deviceId"].as_str().unwrap_or_default().to_string();
    let module = doc
        .get("moduleId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let key: TwinKey = (device.clone(), module.clone().unwrap_or_default());
    let old = hub.configs.lock().get(&key).cloned().unwrap_or_default();
    // Device configurations and edge deployments are separate: a device twin has a winner of
    // each; a module twin only module configurations.
    let groups: &[Kind] = if module.is_some() {
        &[Kind::Module]
    } else {
        &[Kind::Device, Kind::Edge]
    };
    let mut statuses = BTreeMap::new();
    for group in groups {
        let ts: Vec<&Target> = targets.iter().filter(|t| t.kind == *group).collect();
        let (winner, s) = evaluate(&ts, doc);
        statuses.extend(s);
        let Some(w) = winner else { continue };
        if old.get(&w.id).is_none_or(|s| s != APPLIED) {
            apply(hub, w, &device, module.as_deref()).await?;
        }
    }
    if old != statuses {
        let (k, s) = (key.clone(), statuses.clone());
        hub.store
            .call(move |c| store::save_statuses(c, &k, &s))
            .await?;
        let mut all = hub.configs.lock();
        if statuses.is_empty() {
            all.remove(&key);
        } else {
            all.insert(key, statuses);
        }
    }
    Ok(())
}

/// One evaluation of every configuration over every twin; the statuses of twins that are gone
/// are dropped.
pub(crate) async fn pass(hub: &Shared) -> Result<(), HubError> {
    let targets = targets(hub).await?;
    if hub.configs.idle(targets.len()) {
        return Ok(());
    }
    let mut live = HashSet::new();
    for modules in [false, true] {
        let has_status = hub
            .configs
            .lock()
            .keys()
            .any(|(_, m)| m.is_empty() != modules);
        if !has_status && !targets.iter().any(|t| (t.kind == Kind::Module) == modules) {
            continue;
        }
        for doc in super::query::twins(hub, modules).await? {
            evaluate_twin(hub, &targets, &doc).await?;
            let d = doc["deviceId"].as_str().unwrap_or_default().to_string();
            let m = doc.get("moduleId").and_then(Value::as_str).unwrap_or("");
            live.insert((d, m.to_string()));
        }
    }
    let gone: Vec<TwinKey> = hub
        .configs
        .lock()
        .keys()
        .filter(|k| !live.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        let k2 = k.clone();
        hub.store
            .call(move |c| store::save_statuses(c, &k2, &BTreeMap::new()))
            .await?;
        hub.configs.lock().remove(&k);
    }
    Ok(())
}

/// Evaluate only these twins (the ones that changed); the statuses of those that are gone are
/// dropped.
async fn pass_twins(hub: &Shared, twins: HashSet<TwinKey>) -> Result<(), HubError> {
    let targets = targets(hub).await?;
    if hub.configs.idle(targets.len()) {
        return Ok(());
    }
    let h = hub.clone();
    let (docs, gone) = hub
        .store
        .call(move |c| {
            let (mut docs, mut gone) = (Vec::new(), Vec::new());
            for key in twins {
                let m = (!key.1.is_empty()).then_some(key.1.as_str());
                match q::get_identity(c, &key.0, m)? {
                    Some(i) => {
                        let depth = super::twins::twin_c2d_count(c, &i)?;
                        docs.push(super::twins::twin_json(&h, &i, depth));
                    }
                    None => {
                        store::save_statuses(c, &key, &BTreeMap::new())?;
                        gone.push(key);
                    }
                }
            }
            Ok((docs, gone))
        })
        .await?;
    {
        let mut all = hub.configs.lock();
        for k in &gone {
            all.remove(k);
        }
    }
    for doc in docs {
        evaluate_twin(hub, &targets, &doc).await?;
    }
    Ok(())
}

/// Put `t`'s content on a twin it won.
async fn apply(
    hub: &Shared,
    t: &Target,
    device: &str,
    module: Option<&str>,
) -> Result<(), HubError> {
    match t.kind {
        Kind::Device | Kind::Module => {
            let key = if t.kind == Kind::Device {
                "deviceContent"
            } else {
                "moduleContent"
            };
            let content = t.content.get(key).and_then(Value::as_object);
            let patch = content.map(desired_patch).unwrap_or_default();
            if !patch.is_empty() {
                update_desired(hub, device, module, patch, false).await?;
            }
        }
        Kind::Edge => {
            if let Some(m) = t.content.get("modulesContent").and_then(Value::as_object) {
                apply_modules_content(hub, device, m).await?;
            }
        }
    }
    tracing::info!(configuration = %t.id, device, module, "configuration applied");
    Ok(())
}

/// Runs passes for as long as the hub: a whole one at start, on [`ConfigState::changed`] and
/// every `HubConfig::config_pass_every`; one of the changed twins on [`ConfigState::twin_changed`] and when a
/// device (or module) reports properties or connects.
pub(crate) async fn maintain(hub: Shared) {
    match hub.store.call(|c| store::load_statuses(c)).await {
        Ok(s) => *hub.configs.lock() = s,
        Err(e) => tracing::warn!(error = %e, "loading configuration statuses failed"),
    }
    let mut shutdown = hub.shutdown.subscribe();
    hub.configs.changed();
    let every = hub.cfg.config_pass_every.max(Duration::from_millis(10));
    let mut periodic = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let dirty = std::mem::take(&mut *hub.configs.dirty());
        let r = if dirty.all {
            pass(&hub).await
        } else if !dirty.twins.is_empty() {
            pass_twins(&hub, dirty.twins).await
        } else {
            Ok(())
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "configuration pass failed");
        }
        tokio::select! {
            () = hub.configs.wake.notified() => {}
            _ = periodic.tick() => hub.configs.dirty().all = true,
            () = crate::hub::until_shutdown(&mut shutdown) => return,
        }
    }
}

/// [`crate::hub::Hub::emit`] hands every hub event here: a twin whose reported properties
/// changed (`twinReported`) or that connected (`connected`) is evaluated again. A direct call
/// rather than a subscription to the event stream: a permanent subscriber made every telemetry
/// message build its stream JSON (`mqtt/session.rs` builds it only while someone watches), which
/// measured as doubling the hub's CPU per message in the load bench.
pub(crate) fn on_emit(hub: &crate::hub::Hub, v: &Value) {
    if let Some((d, m)) = twin_of_event(v) {
        hub.configs.twin_changed(d, m);
    }
}

/// The twin an event says changed in a way a target condition may read: reported properties
/// (`twinReported`) or a connection (`connected`).
fn twin_of_event(v: &Value) -> Option<(&str, Option<&str>)> {
    let kind = v.get("type")?.as_str()?;
    if kind != "twinReported" && kind != "connected" {
        return None;
    }
    let d = v.get("deviceId")?.as_str()?;
    Some((d, v.get("moduleId").and_then(Value::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::store::{Identity, Store};
    use std::sync::Arc;

    /// An in-memory hub (no listeners: the passes are run by hand).
    fn hub() -> Shared {
        let mut cfg = crate::HubConfig::new("unused");
        cfg.in_memory = true;
        let store = Store::open(None, 1000).unwrap();
        Arc::new(Hub::new(cfg, String::from("owner").into(), store, 0, 0))
    }

    async fn put_device(hub: &Shared, id: &str, tags: Value) {
        let i = Identity {
            device_id: id.into(),
            tags: tags.as_object().cloned().unwrap(),
            desired_version: 1,
            reported_version: 1,
            twin_version: 1,
            ..Identity::default()
        };
        hub.store
            .call(move |c| q::put_identity(c, &i))
            .await
            .unwrap();
    }

    async fn put_config(hub: &Shared, id: &str, priority: i64, condition: &str, x: &str) {
        let doc = json!({
            "id": id, "priority": priority, "targetCondition": condition,
            "content": {"deviceContent": {"properties.desired.x": x}},
        });
        let (id, doc) = (id.to_string(), doc.as_object().cloned().unwrap());
        hub.store
            .call(move |c| store::put(c, &id, &doc))
            .await
            .unwrap();
    }

    async fn desired(hub: &Shared, id: &str) -> (Value, u64) {
        let id = id.to_string();
        let i = hub
            .store
            .call(move |c| q::get_identity(c, &id, None))
            .await
            .unwrap()
            .unwrap();
        (Value::Object(i.desired), i.desired_version)
    }

    fn field(hub: &Shared, id: &str) -> Value {
        hub.configs.twin_field(id, None).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn the_highest_priority_wins_and_of_equal_ones_the_latest() {
        let hub = hub();
        put_device(&hub, "d1", json!({"env": "prod"})).await;
        put_device(&hub, "d2", json!({"env": "test"})).await;
        put_device(&hub, "d3", json!({})).await;
        put_config(&hub, "a", 1, "tags.env = 'prod'", "a").await;
        put_config(&hub, "b", 1, "tags.env = 'prod'", "b").await;
        put_config(&hub, "c", 0, "tags.env IN ['prod', 'test']", "c").await;
        put_config(&hub, "none", 9, "", "none").await;
        pass(&hub).await.unwrap();
        assert_eq!(desired(&hub, "d1").await, (json!({"x": "b"}), 2));
        assert_eq!(
            field(&hub, "d1"),
            json!({"a": {"status": "Targeted"}, "b": {"status": "Applied"}, "c": {"status": "Targeted"}})
        );
        assert_eq!(desired(&hub, "d2").await, (json!({"x": "c"}), 2));
        assert_eq!(field(&hub, "d2"), json!({"c": {"status": "Applied"}}));
        assert_eq!(desired(&hub, "d3").await, (json!({}), 1));
        assert_eq!(field(&hub, "d3"), Value::Null);
        // A second pass changes nothing: applied content is not applied again.
        pass(&hub).await.unwrap();
        assert_eq!(desired(&hub, "d1").await.1, 2);

        // One twin's change is evaluated on its own; the winner's content is applied once.
        put_device(&hub, "d2", json!({"env": "prod"})).await;
        let twins = HashSet::from([("d2".to_string(), String::new())]);
        pass_twins(&hub, twins).await.unwrap();
        let (d2, _) = desired(&hub, "d2").await;
        assert_eq!(d2, json!({"x": "b"}));
        assert_eq!(field(&hub, "d2")["b"]["status"], "Applied");

        // A deleted twin loses its statuses (in the store too).
        hub.store
            .call(|c| q::delete_identity(c, "d1", None))
            .await
            .unwrap();
        pass(&hub).await.unwrap();
        assert_eq!(field(&hub, "d1"), Value::Null);
        let saved = hub.store.call(|c| store::load_statuses(c)).await.unwrap();
        assert!(!saved.contains_key(&("d1".to_string(), String::new())));
        assert!(saved.contains_key(&("d2".to_string(), String::new())));
    }

    #[tokio::test]
    async fn module_configurations_target_module_twins_and_edge_ones_edge_devices() {
        let hub = hub();
        put_device(&hub, "plain", json!({})).await;
        put_device(&hub, "edge", json!({})).await;
        let (mut edge, mut module) = (Identity::default(), Identity::default());
        (edge.device_id, edge.iot_edge, edge.desired_version) = ("edge".into(), true, 1);
        (module.device_id, module.module_id) = ("plain".into(), Some("filter".into()));
        module.tags = json!({"role": "filter"}).as_object().cloned().unwrap();
        module.desired_version = 1;
        let filter_on_edge = Identity {
            device_id: "edge".into(),
            module_id: Some("filter".into()),
            ..Identity::default()
        };
        hub.store
            .call(move |c| {
                q::put_identity(c, &edge)?;
                q::put_identity(c, &module)?;
                q::put_identity(c, &filter_on_edge)
            })
            .await
            .unwrap();
        let configs = [
            json!({"id": "mod", "priority": 0,
                "targetCondition": "FROM devices.modules WHERE tags.role = 'filter'",
                "content": {"moduleContent": {"properties.desired.threshold": 3}}}),
            json!({"id": "deploy", "priority": 0, "targetCondition": "deviceId <> 'x'",
                "content": {"modulesContent": {"filter": {"properties.desired": {"t": 9}}}}}),
        ];
        for doc in configs {
            let doc = doc.as_object().cloned().unwrap();
            let id = doc["id"].as_str().unwrap().to_string();
            hub.store
                .call(move |c| store::put(c, &id, &doc))
                .await
                .unwrap();
        }
        pass(&hub).await.unwrap();
        let module_desired = |d: &'static str| {
            let hub = hub.clone();
            async move {
                let i = hub
                    .store
                    .call(move |c| q::get_identity(c, d, Some("filter")))
                    .await
                    .unwrap()
                    .unwrap();
                Value::Object(i.desired)
            }
        };
        assert_eq!(module_desired("plain").await, json!({"threshold": 3}));
        assert_eq!(
            hub.configs.twin_field("plain", Some("filter")),
            Some(json!({"mod": {"status": "Applied"}}))
        );
        // The deployment targets the edge device only (both match its condition).
        assert_eq!(module_desired("edge").await, json!({"t": 9}));
        assert_eq!(
            field(&hub, "edge"),
            json!({"deploy": {"status": "Applied"}})
        );
        assert_eq!(field(&hub, "plain"), Value::Null);
    }

    #[test]
    fn stream_events_name_the_twin_that_changed() {
        let ev = json!({"type": "twinReported", "deviceId": "d", "moduleId": "m", "patch": {}});
        assert_eq!(twin_of_event(&ev), Some(("d", Some("m"))));
        let ev = json!({"type": "connected", "deviceId": "d", "moduleId": null});
        assert_eq!(twin_of_event(&ev), Some(("d", None)));
        let ev = json!({"type": "telemetry", "deviceId": "d"});
        assert_eq!(twin_of_event(&ev), None);
    }

    /// Prints how long passes take over 10,000 devices (`cargo test -p azsim-emulator --release
    /// -- --ignored configuration_pass_timing --nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a timing, not a test"]
    async fn configuration_pass_timing() {
        let hub = hub();
        let n = 10_000;
        hub.store
            .call(move |c| {
                let tx = c.transaction().unwrap();
                for k in 0..n {
                    let env = if k % 2 == 0 { "prod" } else { "test" };
                    let i = Identity {
                        device_id: format!("dev-{k:05}"),
                        tags: json!({"env": env}).as_object().cloned().unwrap(),
                        desired_version: 1,
                        twin_version: 1,
                        ..Identity::default()
                    };
                    q::put_identity(&tx, &i)?;
                }
                tx.commit().unwrap();
                Ok(())
            })
            .await
            .unwrap();
        put_config(&hub, "prod", 1, "tags.env = 'prod'", "p").await;
        let t = std::time::Instant::now();
        pass(&hub).await.unwrap();
        println!(
            "first pass, {n} devices, {} applied: {:?}",
            n / 2,
            t.elapsed()
        );
        let t = std::time::Instant::now();
        pass(&hub).await.unwrap();
        println!(
            "next pass, {n} devices, nothing to apply: {:?}",
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let one = HashSet::from([("dev-00001".to_string(), String::new())]);
        pass_twins(&hub, one).await.unwrap();
        println!("one changed twin: {:?}", t.elapsed());
    }

    #[test]
    fn content_keys_become_one_desired_patch() {
        let c = json!({
            "properties.desired.settings": {"a": 1},
            "properties.desired.fw.version": "2.0",
            "properties.desired": {"top": true},
        });
        let p = desired_patch(c.as_object().unwrap());
        assert_eq!(
            Value::Object(p),
            json!({"settings": {"a": 1}, "fw": {"version": "2.0"}, "top": true})
        );
    }

    #[test]
    fn module_conditions_start_with_from_devices_modules_where() {
        assert_eq!(
            module_condition("FROM devices.modules WHERE tags.a = 1"),
            Some(" tags.a = 1")
        );
        assert_eq!(module_condition("tags.a = 1"), None);
        assert!(parse_target(Kind::Module, "tags.a = 1").is_err());
        assert!(parse_target(Kind::Device, "tags.a = ").is_err());
        assert!(parse_target(Kind::Device, "").unwrap().is_none());
    }
}
