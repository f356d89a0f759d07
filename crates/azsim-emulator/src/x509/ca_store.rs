//! The hub-held CAs in the store (`certificates` table, made on first use).

use super::*;

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

fn ensure(c: &Connection) -> Result<(), HubError> {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS certificates (name TEXT PRIMARY KEY, data TEXT NOT NULL);",
    )
    .map_err(db_err)
}

fn from_row(name: String, data: &str) -> Option<HeldCa> {
    let mut ca: HeldCa = serde_json::from_str(data).ok()?;
    ca.name = name;
    Some(ca)
}

/// One CA by name.
///
/// # Errors
/// Database failures.
pub fn get(c: &Connection, name: &str) -> Result<Option<HeldCa>, HubError> {
    ensure(c)?;
    let row: Option<String> = c
        .query_row(
            "SELECT data FROM certificates WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    Ok(row.and_then(|d| from_row(name.to_string(), &d)))
}

/// All CAs, by name.
///
/// # Errors
/// Database failures.
pub fn list(c: &Connection) -> Result<Vec<HeldCa>, HubError> {
    ensure(c)?;
    let mut st = c
        .prepare_cached("SELECT name, data FROM certificates ORDER BY name")
        .map_err(db_err)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        let (name, data) = r.map_err(db_err)?;
        out.extend(from_row(name, &data));
    }
    Ok(out)
}

/// Insert or replace.
///
/// # Errors
/// Database failures.
pub fn put(c: &Connection, ca: &HeldCa) -> Result<(), HubError> {
    ensure(c)?;
    let data = serde_json::to_string(ca).map_err(|e| HubError::Store(e.to_string()))?;
    c.execute(
        "INSERT OR REPLACE INTO certificates (name, data) VALUES (?1, ?2)",
        params![ca.name, data],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Delete; false when there was none.
///
/// # Errors
/// Database failures.
pub fn delete(c: &Connection, name: &str) -> Result<bool, HubError> {
    ensure(c)?;
    c.execute("DELETE FROM certificates WHERE name = ?1", params![name])
        .map(|n| n > 0)
        .map_err(db_err)
}

/// The DER of every held CA.
///
/// # Errors
/// Database failures.
pub fn anchors(c: &Connection) -> Result<Vec<CertificateDer<'static>>, HubError> {
    Ok(list(c)?.iter().filter_map(HeldCa::der).collect())
}
