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
