//! The stored identity: a device or module with its keys, status and twin, one row of the
//! `identities` table.

use azsim_proto::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A registered device or module, with its twin.
///
/// One row of `identities`: the ids are the row's key columns, everything else is the `data`
/// column's JSON (camelCase field names, as since the first release). A field missing from an
/// older row takes its default (`enabled` true, the rest empty or 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Identity {
    #[serde(skip)]
    pub device_id: String,
    #[serde(skip)]
    pub module_id: Option<String>,
    #[serde(with = "secret_string")]
    pub primary_key: Secret<String>,
    #[serde(with = "secret_string")]
    pub secondary_key: Secret<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub status_reason: Option<String>,
    pub generation_id: String,
    pub etag_n: u64,
    pub status_updated: String,
    pub managed_by: Option<String>,
    pub tags: Map<String, Value>,
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub desired_updated: String,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
    pub reported_updated: String,
    pub twin_version: u64,
    /// Per-property `$metadata` of desired and reported (see `twin::touch_metadata`); empty in
    /// rows from before it was kept, and then not written.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub desired_meta: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub reported_meta: Map<String, Value>,
    /// The DTDL model the device announced in its last CONNECT (`model-id=` in the username).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// How it authenticates; SAS (not written, as in rows from before X.509) unless registered
    /// `selfSigned` or `certificateAuthority`.
    #[serde(skip_serializing_if = "crate::x509::Auth::is_sas")]
    pub auth: crate::x509::Auth,
    /// `capabilities.iotEdge` (devices only); not written while false, as in older rows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub iot_edge: bool,
    /// `deviceScope`: an edge device's own (made at registration unless given), or a leaf's
    /// parent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// `parentScopes`: the scope of an edge device's parent, as given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parent_scopes: Vec<String>,
}

/// The edge fields of a registry PUT (device or bulk entry): each `None` when absent (an update
/// keeps the stored value).
#[derive(Debug, Clone, Default)]
pub struct EdgeFields {
    pub iot_edge: Option<bool>,
    pub device_scope: Option<Option<String>>,
    pub parent_scopes: Option<Vec<String>>,
}

impl EdgeFields {
    /// `capabilities.iotEdge` (a bool), `deviceScope` (a string or null) and `parentScopes` (an
    /// array of strings) of a device body.
    ///
    /// # Errors
    /// The field that has the wrong type.
    pub fn from_json(body: &Value) -> Result<Self, String> {
        let iot_edge = match body.pointer("/capabilities/iotEdge") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err("capabilities.iotEdge must be true or false".into()),
        };
        let device_scope = match body.get("deviceScope") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some((!s.is_empty()).then(|| s.clone())),
            Some(_) => return Err("deviceScope must be a string".into()),
        };
        let parent_scopes = match body.get("parentScopes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("parentScopes must be an array of strings")?,
            ),
            Some(_) => return Err("parentScopes must be an array of strings".into()),
        };
        Ok(Self {
            iot_edge,
            device_scope,
            parent_scopes,
        })
    }

    /// Stores what was given on a device (modules have none of these); an edge device without a
    /// scope gets its own, `ms-azure-iot-edge://{deviceId}-{generationId}`, as IoT Hub makes it,
    /// and a leaf given a scope but no `parentScopes` has its scope copied there (as the service
    /// SDKs document: "left for the service to copy over").
    pub fn apply(&self, i: &mut Identity) {
        if i.module_id.is_some() {
            return;
        }
        if let Some(e) = self.iot_edge {
            i.iot_edge = e;
        }
        if let Some(s) = &self.device_scope {
            i.device_scope.clone_from(s);
        }
        match (&self.parent_scopes, &self.device_scope) {
            (Some(p), _) => i.parent_scopes.clone_from(p),
            (None, Some(Some(s))) if !i.iot_edge => i.parent_scopes = vec![s.clone()],
            _ => {}
        }
        if i.iot_edge && i.device_scope.is_none() {
            i.device_scope = Some(format!(
                "ms-azure-iot-edge://{}-{}",
                i.device_id, i.generation_id
            ));
        }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// A `Secret<String>` stored as its plain text (the database is where the keys live).
mod secret_string {
    use azsim_proto::secret::Secret;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Secret<String>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret<String>, D::Error> {
        String::deserialize(de).map(Secret::new)
    }
}

pub(super) fn identity_to_json(i: &Identity) -> String {
    // Maps of JSON values and plain fields: serialising cannot fail.
    serde_json::to_string(i).unwrap_or_default()
}

/// The identity in a row; `None` (the row is skipped) when its JSON does not parse.
pub(super) fn identity_from_json(
    device_id: String,
    module_id: String,
    data: &str,
) -> Option<Identity> {
    let mut i: Identity = serde_json::from_str(data).ok()?;
    i.device_id = device_id;
    i.module_id = (!module_id.is_empty()).then_some(module_id);
    Some(i)
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, params};

    use super::*;
    use crate::store::{SCHEMA, Store, q};

    /// A row as `identity_to_json` wrote it before `Identity` derived serde (the hand-written
    /// `json!` mapping), so state dirs from older builds keep opening.
    const OLD_ROW: &str = r#"{"desired":{"interval":5},"desiredUpdated":"2026-01-02T03:04:05.123456789Z","desiredVersion":2,"enabled":false,"etagN":3,"generationId":"638123","managedBy":null,"primaryKey":"cHJpbWFyeS1rZXktMTIzNDU2","reported":{},"reportedUpdated":"2026-01-02T03:04:05Z","reportedVersion":1,"secondaryKey":"c2Vjb25kYXJ5LWtleS0xMjM0","statusReason":"maintenance","statusUpdated":"2026-01-02T03:04:05Z","tags":{"site":"lab"},"twinVersion":4}"#;

    #[test]
    fn a_row_written_by_older_builds_loads_and_is_written_back_the_same() {
        let i = identity_from_json("d1".into(), "m1".into(), OLD_ROW).expect("parses");
        assert_eq!(
            (i.device_id.as_str(), i.module_id.as_deref()),
            ("d1", Some("m1"))
        );
        assert_eq!(i.primary_key.expose(), "cHJpbWFyeS1rZXktMTIzNDU2");
        assert_eq!(i.secondary_key.expose(), "c2Vjb25kYXJ5LWtleS0xMjM0");
        assert!(!i.enabled);
        assert_eq!(i.status_reason.as_deref(), Some("maintenance"));
        assert_eq!(i.managed_by, None);
        assert_eq!((i.etag_n, i.desired_version, i.twin_version), (3, 2, 4));
        assert_eq!(i.desired["interval"], 5);
        assert_eq!(i.tags["site"], "lab");
        // Same fields, same values: the new writer's JSON equals the old one.
        let again: Value = serde_json::from_str(&identity_to_json(&i)).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(OLD_ROW).unwrap());
        // A device row (empty module column) has no module.
        let dev = identity_from_json("d1".into(), String::new(), OLD_ROW).unwrap();
        assert_eq!(dev.module_id, None);
    }

    #[test]
    fn edge_fields_round_trip_and_an_edge_device_gets_its_own_scope() {
        let mut i = identity_from_json("e1".into(), String::new(), OLD_ROW).unwrap();
        let body = serde_json::json!({"capabilities": {"iotEdge": true}, "parentScopes": ["p"]});
        EdgeFields::from_json(&body).unwrap().apply(&mut i);
        assert_eq!(
            i.device_scope.as_deref(),
            Some("ms-azure-iot-edge://e1-638123")
        );
        let back = identity_from_json("e1".into(), String::new(), &identity_to_json(&i)).unwrap();
        assert!(back.iot_edge);
        assert_eq!(back.device_scope, i.device_scope);
        assert_eq!(back.parent_scopes, ["p"]);
        // A module has none of them.
        let mut m = identity_from_json("e1".into(), "m".into(), OLD_ROW).unwrap();
        EdgeFields::from_json(&body).unwrap().apply(&mut m);
        assert!(!m.iot_edge && m.device_scope.is_none() && m.parent_scopes.is_empty());
        let bad = serde_json::json!({"parentScopes": "p"});
        assert!(
            EdgeFields::from_json(&bad)
                .unwrap_err()
                .contains("parentScopes")
        );
    }

    #[test]
    fn missing_fields_take_the_old_defaults_and_bad_rows_are_skipped() {
        let i = identity_from_json("d".into(), String::new(), "{}").unwrap();
        assert!(i.enabled, "enabled unless stored otherwise");
        assert_eq!((i.etag_n, i.twin_version), (0, 0));
        assert!(i.primary_key.expose().is_empty());
        assert!(identity_from_json("d".into(), String::new(), "not json").is_none());
    }

    #[test]
    fn an_identity_debug_shows_no_key() {
        let i = identity_from_json("d1".into(), String::new(), OLD_ROW).unwrap();
        let shown = format!("{i:?}");
        assert!(shown.contains("d1"), "{shown}");
        assert!(!shown.contains("cHJpbWFyeS1rZXktMTIzNDU2"), "{shown}");
        assert!(!shown.contains("c2Vjb25kYXJ5LWtleS0xMjM0"), "{shown}");
    }

    #[test]
    fn an_old_database_file_opens_with_its_identities() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            // The tables and row as an older build left them.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                "INSERT INTO identities (device_id, module_id, data) VALUES ('old', '', ?1)",
                params![OLD_ROW],
            )
            .unwrap();
        }
        let store = Store::open(Some(&path), 100).unwrap();
        let conn = store.conn.lock().unwrap();
        let i = q::get_identity(&conn, "old", None)
            .unwrap()
            .expect("still there");
        assert_eq!(i.primary_key.expose(), "cHJpbWFyeS1rZXktMTIzNDU2");
        assert_eq!(q::list_identities(&conn, None).unwrap().len(), 1);
    }
}
