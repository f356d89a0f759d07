//! The DPS tables, in the hub's database: individual enrollments, enrollment groups and
//! registration states, each row its id and the record's JSON as the service API shows it
//! (keys included: the database is where keys live). Run inside `Store::call`.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use crate::HubError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dps_enrollments (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dps_groups (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dps_registrations (
  id TEXT PRIMARY KEY, operation_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dps_registration_groups (id TEXT PRIMARY KEY, group_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS dps_registration_groups_group ON dps_registration_groups (group_id);
";

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

pub(super) fn create_schema(c: &mut Connection) -> Result<(), HubError> {
    c.execute_batch(SCHEMA).map_err(db_err)
}

/// Which table a record lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Enrollment,
    Group,
    Registration,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Enrollment => "dps_enrollments",
            Kind::Group => "dps_groups",
            Kind::Registration => "dps_registrations",
        }
    }
}

pub(crate) fn get(c: &Connection, kind: Kind, id: &str) -> Result<Option<Value>, HubError> {
    let sql = format!("SELECT data FROM {} WHERE id = ?1", kind.table());
    let row: Option<String> = c
        .prepare_cached(&sql)
        .map_err(db_err)?
        .query_row(params![id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    Ok(row.and_then(|d| serde_json::from_str(&d).ok()))
}

pub(crate) fn put(c: &Connection, kind: Kind, id: &str, v: &Value) -> Result<(), HubError> {
    debug_assert_ne!(
        kind,
        Kind::Registration,
        "registrations go through put_registration"
    );
    let sql = format!(
        "INSERT OR REPLACE INTO {} (id, data) VALUES (?1, ?2)",
        kind.table()
    );
    c.prepare_cached(&sql)
        .map_err(db_err)?
        .execute(params![id, v.to_string()])
        .map_err(db_err)?;
    Ok(())
}

/// Deletes a record; false when there was none.
pub(crate) fn delete(c: &Connection, kind: Kind, id: &str) -> Result<bool, HubError> {
    let sql = format!("DELETE FROM {} WHERE id = ?1", kind.table());
    let n = c
        .prepare_cached(&sql)
        .map_err(db_err)?
        .execute(params![id])
        .map_err(db_err)?;
    Ok(n > 0)
}

/// Every record of a kind, by id.
pub(crate) fn list(c: &Connection, kind: Kind) -> Result<Vec<Value>, HubError> {
    let sql = format!("SELECT data FROM {} ORDER BY id", kind.table());
    let mut st = c.prepare_cached(&sql).map_err(db_err)?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok(v) = serde_json::from_str(&r.map_err(db_err)?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// A registration state with the operation that produced it.
pub(crate) fn put_registration(
    c: &Connection,
    id: &str,
    operation_id: &str,
    v: &Value,
) -> Result<(), HubError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO dps_registrations (id, operation_id, data) VALUES (?1, ?2, ?3)",
    )
    .map_err(db_err)?
    .execute(params![id, operation_id, v.to_string()])
    .map_err(db_err)?;
    Ok(())
}

/// Records which enrollment group attested a registration (`None`: an individual enrollment).
pub(crate) fn set_registration_group(
    c: &Connection,
    id: &str,
    group_id: Option<&str>,
) -> Result<(), HubError> {
    match group_id {
        Some(g) => c
            .prepare_cached(
                "INSERT OR REPLACE INTO dps_registration_groups (id, group_id) VALUES (?1, ?2)",
            )
            .map_err(db_err)?
            .execute(params![id, g]),
        None => c
            .prepare_cached("DELETE FROM dps_registration_groups WHERE id = ?1")
            .map_err(db_err)?
            .execute(params![id]),
    }
    .map_err(db_err)?;
    Ok(())
}

/// The registration states of the devices an enrollment group attested, by registration id.
pub(crate) fn registrations_of_group(
    c: &Connection,
    group_id: &str,
) -> Result<Vec<Value>, HubError> {
    let mut st = c
        .prepare_cached(
            "SELECT r.data FROM dps_registrations r JOIN dps_registration_groups g ON g.id = r.id \
             WHERE g.group_id = ?1 ORDER BY r.id",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(params![group_id], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok(v) = serde_json::from_str(&r.map_err(db_err)?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The registration state `operation_id` produced, when it is still the latest one.
pub(crate) fn registration_by_operation(
    c: &Connection,
    id: &str,
    operation_id: &str,
) -> Result<Option<Value>, HubError> {
    let row: Option<String> = c
        .prepare_cached("SELECT data FROM dps_registrations WHERE id = ?1 AND operation_id = ?2")
        .map_err(db_err)?
        .query_row(params![id, operation_id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    Ok(row.and_then(|d| serde_json::from_str(&d).ok()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_round_trip_and_a_registration_is_found_only_by_its_latest_operation() {
        let mut c = Connection::open_in_memory().unwrap();
        create_schema(&mut c).unwrap();
        create_schema(&mut c).unwrap();
        put(&c, Kind::Enrollment, "b", &json!({"registrationId": "b"})).unwrap();
        put(&c, Kind::Enrollment, "a", &json!({"registrationId": "a"})).unwrap();
        assert_eq!(
            get(&c, Kind::Enrollment, "a").unwrap().unwrap()["registrationId"],
            "a"
        );
        assert!(get(&c, Kind::Group, "a").unwrap().is_none());
        let ids: Vec<_> = list(&c, Kind::Enrollment)
            .unwrap()
            .into_iter()
            .map(|v| v["registrationId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(delete(&c, Kind::Enrollment, "a").unwrap());
        assert!(!delete(&c, Kind::Enrollment, "a").unwrap());
        put_registration(&c, "r", "op1", &json!({"n": 1})).unwrap();
        put_registration(&c, "r", "op2", &json!({"n": 2})).unwrap();
        assert!(registration_by_operation(&c, "r", "op1").unwrap().is_none());
        assert_eq!(
            registration_by_operation(&c, "r", "op2").unwrap().unwrap()["n"],
            2
        );
    }
}
