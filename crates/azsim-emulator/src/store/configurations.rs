//! Configurations (automatic device management) in SQLite: one row per configuration (its
//! JSON as the service wrote it, without the metric results, which are computed when read),
//! and one row per (twin, configuration) the hub evaluated as targeting it, with the twin's
//! status for it (`Targeted` or `Applied`: the twin's `configurations` field).
//!
//! `seq` orders configurations by creation: of two configurations with the same priority the
//! one created later wins ("Understand IoT Hub configurations": "If two configurations have the
//! same priority, the one that was created most recently is applied").

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::{Map, Value};

use super::db_err;
use crate::HubError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS configurations (
  id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configuration_status (
  device_id TEXT NOT NULL, module_id TEXT NOT NULL DEFAULT '', config_id TEXT NOT NULL,
  status TEXT NOT NULL, PRIMARY KEY (device_id, module_id, config_id));
";

/// A stored configuration: its creation order and its JSON (camelCase, as the REST API shows
/// it, `systemMetrics.results` and `metrics.results` left out).
#[derive(Debug, Clone)]
pub struct StoredConfig {
    pub seq: i64,
    pub doc: Map<String, Value>,
}

impl StoredConfig {
    pub fn id(&self) -> &str {
        self.doc.get("id").and_then(Value::as_str).unwrap_or("")
    }

    pub fn priority(&self) -> i64 {
        self.doc
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    pub fn target_condition(&self) -> &str {
        self.doc
            .get("targetCondition")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The etag's counter (bumped by each update).
    pub fn etag_n(&self) -> u64 {
        self.doc.get("$etagN").and_then(Value::as_u64).unwrap_or(1)
    }
}

/// Every configuration, in id order.
pub fn list(c: &Connection) -> Result<Vec<StoredConfig>, HubError> {
    let mut st = c
        .prepare_cached("SELECT seq, data FROM configurations ORDER BY id")
        .map_err(db_err)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, data) = row.map_err(db_err)?;
        if let Ok(Value::Object(doc)) = serde_json::from_str(&data) {
            out.push(StoredConfig { seq, doc });
        }
    }
    Ok(out)
}

pub fn get(c: &Connection, id: &str) -> Result<Option<StoredConfig>, HubError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT seq, data FROM configurations WHERE id = ?1")
        .map_err(db_err)?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db_err)?;
    Ok(
        row.and_then(|(seq, data)| match serde_json::from_str(&data) {
            Ok(Value::Object(doc)) => Some(StoredConfig { seq, doc }),
            _ => None,
        }),
    )
}

pub fn count(c: &Connection) -> Result<usize, HubError> {
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM configurations", [], |r| r.get(0))
        .map_err(db_err)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Insert a new configuration (a fresh `seq`, later than every other) or replace one keeping
/// its `seq`.
pub fn put(c: &Connection, id: &str, doc: &Map<String, Value>) -> Result<i64, HubError> {
    let data = Value::Object(doc.clone()).to_string();
    let existing: Option<i64> = c
        .query_row(
            "SELECT seq FROM configurations WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    let seq = match existing {
        Some(s) => s,
        None => c
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM configurations",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?,
    };
    c.execute(
        "INSERT OR REPLACE INTO configurations (id, seq, data) VALUES (?1, ?2, ?3)",
        params![id, seq, data],
    )
    .map_err(db_err)?;
    Ok(seq)
}

/// Delete a configuration and every twin's status for it; false when there was none.
pub fn delete(c: &mut Connection, id: &str) -> Result<bool, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    let n = tx
        .execute("DELETE FROM configurations WHERE id = ?1", params![id])
        .map_err(db_err)?;
    tx.execute(
        "DELETE FROM configuration_status WHERE config_id = ?1",
        params![id],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(n > 0)
}

/// A twin: its device id and module id (empty for a device twin).
pub type TwinKey = (String, String);

/// Every twin's statuses: twin -> configuration id -> `Targeted` or `Applied`.
pub type Statuses = HashMap<TwinKey, BTreeMap<String, String>>;

pub fn load_statuses(c: &Connection) -> Result<Statuses, HubError> {
    let mut st = c
        .prepare_cached("SELECT device_id, module_id, config_id, status FROM configuration_status")
        .map_err(db_err)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(db_err)?;
    let mut out = Statuses::new();
    for row in rows {
        let (d, m, cfg, status) = row.map_err(db_err)?;
        out.entry((d, m)).or_default().insert(cfg, status);
    }
    Ok(out)
}

/// Replace one twin's statuses.
pub fn save_statuses(
    c: &mut Connection,
    twin: &TwinKey,
    statuses: &BTreeMap<String, String>,
) -> Result<(), HubError> {
    let tx = c.transaction().map_err(db_err)?;
    tx.execute(
        "DELETE FROM configuration_status WHERE device_id = ?1 AND module_id = ?2",
        params![twin.0, twin.1],
    )
    .map_err(db_err)?;
    for (cfg, status) in statuses {
        tx.execute(
            "INSERT INTO configuration_status (device_id, module_id, config_id, status) \
             VALUES (?1, ?2, ?3, ?4)",
            params![twin.0, twin.1, cfg, status],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    #[test]
    fn a_replaced_configuration_keeps_its_creation_order() {
        let mut c = db();
        let doc = |id: &str, p: i64| {
            json!({"id": id, "priority": p})
                .as_object()
                .cloned()
                .unwrap()
        };
        assert_eq!(put(&c, "a", &doc("a", 1)).unwrap(), 1);
        assert_eq!(put(&c, "b", &doc("b", 1)).unwrap(), 2);
        assert_eq!(put(&c, "a", &doc("a", 5)).unwrap(), 1);
        let all = list(&c).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].id(), all[0].priority(), all[0].seq), ("a", 5, 1));
        let twin = ("d1".to_string(), String::new());
        let mut s = BTreeMap::new();
        s.insert("a".to_string(), "Applied".to_string());
        s.insert("b".to_string(), "Targeted".to_string());
        save_statuses(&mut c, &twin, &s).unwrap();
        assert!(delete(&mut c, "b").unwrap());
        assert!(!delete(&mut c, "b").unwrap());
        let loaded = load_statuses(&c).unwrap();
        assert_eq!(loaded[&twin].len(), 1);
        assert_eq!(loaded[&twin]["a"], "Applied");
        assert_eq!(count(&c).unwrap(), 1);
        assert!(get(&c, "b").unwrap().is_none());
    }
}
