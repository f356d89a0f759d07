//! Where jobs v2 live: two tables of the hub's database, created on first use. `jobs` holds each
//! job's `JobResponse` document (what `GET /jobs/v2/{id}` shows, without its statistics, which
//! are counted from the device rows when read); `job_devices` one `DeviceJob` document per
//! device the job reaches (what `FROM devices.jobs` shows). Both survive a restart.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::Shared;
use crate::HubError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY, created_us INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_devices (
  job_id TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
  PRIMARY KEY (job_id, device_id));
";

fn db(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// Creates the tables when this database has none yet.
pub(super) fn schema(c: &Connection) -> Result<(), HubError> {
    c.execute_batch(SCHEMA).map_err(db)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Stores a new job; false when one with its id exists.
pub(super) fn insert_job(
    c: &Connection,
    id: &str,
    created_us: i64,
    job: &Value,
) -> Result<bool, HubError> {
    schema(c)?;
    let n = c
        .execute(
            "INSERT OR IGNORE INTO jobs (job_id, created_us, data) VALUES (?1, ?2, ?3)",
            params![id, created_us, job.to_string()],
        )
        .map_err(db)?;
    Ok(n == 1)
}

/// Replaces a job's document.
pub(super) fn put_job(c: &Connection, id: &str, job: &Value) -> Result<(), HubError> {
    schema(c)?;
    c.execute(
        "UPDATE jobs SET data = ?2 WHERE job_id = ?1",
        params![id, job.to_string()],
    )
    .map_err(db)?;
    Ok(())
}

/// A job's document without statistics.
pub(super) fn job(c: &Connection, id: &str) -> Result<Option<Value>, HubError> {
    schema(c)?;
    c.query_row(
        "SELECT data FROM jobs WHERE job_id = ?1",
        params![id],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map_err(db)
    .map(|t| t.as_deref().map(parse))
}

/// `deviceJobStatistics` counted from the job's device rows.
fn statistics(c: &Connection, id: &str) -> Result<Value, HubError> {
    let mut st = c
        .prepare_cached(
            "SELECT status, COUNT(*) FROM job_devices WHERE job_id = ?1 GROUP BY status",
        )
        .map_err(db)?;
    let rows = st
        .query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(db)?;
    let (mut all, mut failed, mut ok, mut running, mut pending) = (0, 0, 0, 0, 0);
    for row in rows {
        let (status, n) = row.map_err(db)?;
        all += n;
        match status.as_str() {
            "failed" | "canceled" => failed += n,
            "completed" => ok += n,
            "running" => running += n,
            _ => pending += n,
        }
    }
    Ok(json!({
        "deviceCount": all, "failedCount": failed, "succeededCount": ok,
        "runningCount": running, "pendingCount": pending,
    }))
}

/// A job's document as the REST API shows it: with its statistics.
pub(super) fn job_view(c: &Connection, id: &str) -> Result<Option<Value>, HubError> {
    let Some(mut j) = job(c, id)? else {
        return Ok(None);
    };
    let stats = statistics(c, id)?;
    if let Some(m) = j.as_object_mut() {
        m.insert("deviceJobStatistics".into(), stats);
    }
    Ok(Some(j))
}

/// Every job as the REST API shows it, oldest first.
pub(super) fn all_jobs(c: &Connection) -> Result<Vec<Value>, HubError> {
    schema(c)?;
    let ids: Vec<String> = c
        .prepare("SELECT job_id FROM jobs ORDER BY created_us, job_id")
        .map_err(db)?
        .query_map([], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(j) = job_view(c, &id)? {
            out.push(j);
        }
    }
    Ok(out)
}

/// Writes one device's row of a job.
pub(super) fn put_device_job(
    c: &Connection,
    job_id: &str,
    device_id: &str,
    row: &Value,
) -> Result<(), HubError> {
    let status = row
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("pending");
    c.prepare_cached(
        "INSERT OR REPLACE INTO job_devices (job_id, device_id, status, data) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(db)?
    .execute(params![job_id, device_id, status, row.to_string()])
    .map_err(db)?;
    Ok(())
}

/// One job's device rows (all, or those with `status`), in device id order.
pub(super) fn device_jobs(
    c: &Connection,
    job_id: &str,
    status: Option<&str>,
) -> Result<Vec<Value>, HubError> {
    schema(c)?;
    let mut st = c
        .prepare_cached(
            "SELECT data FROM job_devices WHERE job_id = ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY device_id",
        )
        .map_err(db)?;
    st.query_map(params![job_id, status], |r| r.get::<_, String>(0))
        .map_err(db)?
        .map(|r| r.map(|t| parse(&t)).map_err(db))
        .collect()
}

/// Every device row of every job (`FROM devices.jobs`), by job then device.
pub(super) async fn all_device_jobs(hub: &Shared) -> Result<Vec<Value>, HubError> {
    hub.store
        .call(|c| {
            schema(c)?;
            let mut st = c
                .prepare(
                    "SELECT d.data FROM job_devices d JOIN jobs j ON j.job_id = d.job_id \
                     ORDER BY j.created_us, d.job_id, d.device_id",
                )
                .map_err(db)?;
            st.query_map([], |r| r.get::<_, String>(0))
                .map_err(db)?
                .map(|r| r.map(|t| parse(&t)).map_err(db))
                .collect()
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_count_the_device_rows_by_status() {
        let c = crate::store::memory_db();
        assert!(insert_job(&c, "j", 1, &json!({"jobId":"j","status":"running"})).unwrap());
        assert!(!insert_job(&c, "j", 2, &json!({"jobId":"j"})).unwrap());
        for (d, s) in [
            ("a", "completed"),
            ("b", "failed"),
            ("c", "pending"),
            ("d", "running"),
        ] {
            put_device_job(&c, "j", d, &json!({"deviceId":d,"status":s})).unwrap();
        }
        let v = job_view(&c, "j").unwrap().unwrap();
        assert_eq!(
            v["deviceJobStatistics"],
            json!({"deviceCount":4,"failedCount":1,"succeededCount":1,"runningCount":1,"pendingCount":1})
        );
        assert_eq!(device_jobs(&c, "j", Some("failed")).unwrap().len(), 1);
        assert_eq!(all_jobs(&c).unwrap().len(), 1);
        assert!(job_view(&c, "nope").unwrap().is_none());
    }
}
