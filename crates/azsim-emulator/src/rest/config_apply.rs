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
//! is created, updated or deleted, when a twin's tags change (`rest/twins.rs`), when a device
//! reports properties or connects (seen on the hub's event stream), and every
//! [`PERIODIC`] as a safety net (a device created or imported since). A twin that leaves a
//! configuration's target keeps the desired properties it got, as on Azure (configurations
//! never remove desired properties; deleting one only lets the next one in priority apply).
//!
//! Applied content is not re-applied: the configuration's content is immutable, so a twin gets
//! it once, when the configuration starts winning there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::Shared;
use crate::query::{self, Cond, Source};
use crate::store::configurations::{self as store, StoredConfig, TwinKey};
use crate::store::q;
use crate::{HubError, twin};

/// The safety-net pass interval.
pub(crate) const PERIODIC: Duration = Duration::from_secs(10);

pub(crate) const TARGETED: &str = "Targeted";
pub(crate) const APPLIED: &str = "Applied";

/// The hub's configuration state: every twin's statuses (what its `configurations` field
/// shows; the store keeps them too) and the wake-up of the evaluation task.
#[derive(Debug)]
pub(crate) struct ConfigState {
    statuses: Mutex<HashMap<TwinKey, BTreeMap<String, String>>>,
    wake: Notify,
}

impl Default for ConfigState {
    fn default() -> Self {
        ConfigState {
            statuses: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }
}

impl ConfigState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TwinKey, BTreeMap<String, String>>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Something a target condition may read changed: evaluate again.
    pub(crate) fn changed(&self) {
        self.wake.notify_one();
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
    fn from_stored(c: &StoredConfig) -> Option<Target> {
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

    fn targets(&self, doc: &Value) -> bool {
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

/// One evaluation of every configuration over every twin it may target.
pub(crate) async fn pass(hub: &Shared) -> Result<(), HubError> {
    let stored = hub.store.call(|c| store::list(c)).await?;
    let mut targets: Vec<Target> = stored.iter().filter_map(Target::from_stored).collect();
    // Highest priority first; of equal priorities the one created last.
    targets.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.seq.cmp(&a.seq)));
    let has_status = |modules: bool| {
        hub.configs
            .lock()
            .keys()
            .any(|(_, m)| m.is_empty() != modules)
    };
    for modules in [false, true] {
        let of_kind: Vec<&Target> = targets
            .iter()
            .filter(|t| (t.kind == Kind::Module) == modules)
            .collect();
        if of_kind.is_empty() && !has_status(modules) {
            continue;
        }
        let docs = super::query::twins(hub, modules).await?;
        for doc in docs {
            let device = doc["deviceId"].as_str().unwrap_or_default().to_string();
            let module = doc
                .get("moduleId")
                .and_then(Value::as_str)
                .map(str::to_string);
            let key: TwinKey = (device.clone(), module.clone().unwrap_or_default());
            let old = hub.configs.lock().get(&key).cloned();
            // Device configurations and edge deployments are separate: a device twin has a
            // winner of each.
            let mut statuses = BTreeMap::new();
            for group in [Kind::Device, Kind::Edge, Kind::Module] {
                let ts: Vec<&Target> = of_kind
                    .iter()
                    .copied()
                    .filter(|t| t.kind == group)
                    .collect();
                let (winner, s) = evaluate(&ts, &doc);
                statuses.extend(s);
                let Some(w) = winner else { continue };
                let had = old
                    .as_ref()
                    .and_then(|o| o.get(&w.id))
                    .is_some_and(|s| s == APPLIED);
                if !had {
                    apply(hub, w, &device, module.as_deref()).await?;
                }
            }
            if old.as_ref().unwrap_or(&BTreeMap::new()) != &statuses {
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
        }
        // Twins that are gone (deleted identities) lose their statuses.
        let live: std::collections::HashSet<TwinKey> =
            hub.store.call(move |c| twin_keys(c, modules)).await?;
        let gone: Vec<TwinKey> = hub
            .configs
            .lock()
            .keys()
            .filter(|k| k.1.is_empty() != modules && !live.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            let k2 = k.clone();
            hub.store
                .call(move |c| store::save_statuses(c, &k2, &BTreeMap::new()))
                .await?;
            hub.configs.lock().remove(&k);
        }
    }
    Ok(())
}

fn twin_keys(
    c: &rusqlite::Connection,
    modules: bool,
) -> Result<std::collections::HashSet<TwinKey>, HubError> {
    let sql = if modules {
        "SELECT device_id, module_id FROM identities WHERE module_id <> ''"
    } else {
        "SELECT device_id, module_id FROM identities WHERE module_id = ''"
    };
    let db = |e: rusqlite::Error| HubError::Store(e.to_string());
    let mut st = c.prepare_cached(sql).map_err(db)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
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

/// Runs passes for as long as the hub: at start, on [`ConfigState::changed`], when a device
/// reports properties or connects, and every [`PERIODIC`].
pub(crate) async fn maintain(hub: Shared) {
    match hub.store.call(|c| store::load_statuses(c)).await {
        Ok(s) => *hub.configs.lock() = s,
        Err(e) => tracing::warn!(error = %e, "loading configuration statuses failed"),
    }
    let mut shutdown = hub.shutdown.subscribe();
    let mut events = hub.events.subscribe();
    loop {
        if let Err(e) = pass(&hub).await {
            tracing::warn!(error = %e, "configuration pass failed");
        }
        let woken = async {
            loop {
                tokio::select! {
                    () = hub.configs.wake.notified() => return,
                    () = tokio::time::sleep(PERIODIC) => return,
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.json.contains("\"type\":\"twinReported\"")
                            || ev.json.contains("\"type\":\"connected\"") => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    },
                }
            }
        };
        tokio::select! {
            () = woken => {}
            () = crate::hub::until_shutdown(&mut shutdown) => return,
        }
    }
}

/// The metric queries' `configurations.[[id]]` spelled as a property name the query parser
/// reads: `[[id]]` becomes `cfg_<hex of id>`, and the documents' configuration keys likewise.
pub(crate) fn alias(id: &str) -> String {
    let mut s = String::from("cfg_");
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A metric query with every `[[id]]` replaced by its [`alias`].
pub(crate) fn rewrite_brackets(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        let Some(len) = rest[start + 2..].find("]]") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&alias(&rest[start + 2..start + 2 + len]));
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

/// A twin document with its `configurations` keys aliased (see [`alias`]).
fn aliased(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(Value::Object(m)) = d.get_mut("configurations") {
        let renamed: Map<String, Value> = m.iter().map(|(k, v)| (alias(k), v.clone())).collect();
        *m = renamed;
    }
    d
}

/// The number of rows `text` (a metric query, `[[id]]` allowed) gives over the twins.
///
/// # Errors
/// The parser's message.
pub(crate) fn parse_metric(text: &str) -> Result<query::Query, String> {
    query::parse(&rewrite_brackets(text)).map_err(|e| e.to_string())
}

/// Twin documents for metric queries, read once for a listing.
#[derive(Default)]
pub(crate) struct Docs {
    devices: Option<Vec<Value>>,
    modules: Option<Vec<Value>>,
}

impl Docs {
    pub(crate) async fn get(&mut self, hub: &Shared, modules: bool) -> Result<&[Value], HubError> {
        let slot = if modules {
            &mut self.modules
        } else {
            &mut self.devices
        };
        if slot.is_none() {
            let docs = super::query::twins(hub, modules).await?;
            *slot = Some(docs.iter().map(aliased).collect());
        }
        Ok(slot.as_deref().unwrap_or(&[]))
    }
}

/// Count the rows of a metric query (0 for one that does not parse).
pub(crate) async fn run_metric(hub: &Shared, docs: &mut Docs, text: &str) -> Result<u64, HubError> {
    let Ok(q) = parse_metric(text) else {
        return Ok(0);
    };
    let rows = match q.source {
        Source::Devices => docs.get(hub, false).await?.to_vec(),
        Source::Modules => docs.get(hub, true).await?.to_vec(),
        Source::Jobs => Vec::new(),
    };
    Ok(query::run(&q, rows).rows.len() as u64)
}

/// `systemMetrics.results` of a configuration: twins its condition targets, and twins whose
/// status for it is `Applied`.
pub(crate) async fn system_results(
    hub: &Shared,
    docs: &mut Docs,
    c: &StoredConfig,
) -> Result<(u64, u64), HubError> {
    let Some(t) = Target::from_stored(c) else {
        return Ok((0, 0));
    };
    let list = docs.get(hub, t.kind == Kind::Module).await?;
    let targeted = list.iter().filter(|d| {
        // The documents are aliased; the condition reads tags, properties, ids.
        t.targets(d)
    });
    let targeted = targeted.count() as u64;
    let key = alias(&t.id);
    let applied = list
        .iter()
        .filter(|d| d.pointer(&format!("/configurations/{key}/status")) == Some(&json!(APPLIED)))
        .count() as u64;
    Ok((targeted, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn metric_queries_may_name_a_configuration_in_double_brackets() {
        let q = "SELECT deviceId FROM devices WHERE configurations.[[my-cfg]].status = 'Applied'";
        let r = rewrite_brackets(q);
        assert!(r.contains("configurations.cfg_6d792d636667.status"), "{r}");
        assert!(parse_metric(q).is_ok());
        let doc =
            aliased(&json!({"deviceId": "d", "configurations": {"my-cfg": {"status": "Applied"}}}));
        let parsed = parse_metric(q).unwrap();
        assert_eq!(query::run(&parsed, vec![doc]).rows.len(), 1);
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
