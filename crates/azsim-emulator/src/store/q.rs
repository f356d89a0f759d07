//! Synchronous queries, run inside [`Store::call`](super::Store::call): identities, C2D queues,
//! MQTT sessions, activity times and the telemetry log.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use super::identity::{identity_from_json, identity_to_json};
use super::{C2dMessage, Identity, db_err};
use crate::HubError;

fn mid_key(m: Option<&str>) -> &str {
    m.unwrap_or("")
}

pub fn get_identity(
    c: &Connection,
    device: &str,
    module: Option<&str>,
) -> Result<Option<Identity>, HubError> {
    let row: Option<String> = c
        .prepare_cached("SELECT data FROM identities WHERE device_id = ?1 AND module_id = ?2")
        .map_err(db_err)?
        .query_row(params![device, mid_key(module)], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    Ok(row.and_then(|d| identity_from_json(device.to_string(), mid_key(module).to_string(), &d)))
}

pub fn put_identity(c: &Connection, i: &Identity) -> Result<(), HubError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO identities (device_id, module_id, data) VALUES (?1, ?2, ?3)",
    )
    .map_err(db_err)?
    .execute(params![
        i.device_id,
        mid_key(i.module_id.as_deref()),
        identity_to_json(i)
    ])
    .map_err(db_err)?;
    Ok(())
}

/// Whether an IoT Edge device other than `except` has `scope` as its `deviceScope`: the only
/// scopes a leaf device may be given (IoT Hub refuses any other).
pub fn edge_scope_exists(c: &Connection, scope: &str, except: &str) -> Result<bool, HubError> {
    c.prepare_cached(
        "SELECT 1 FROM identities WHERE module_id = '' AND device_id <> ?2 \
         AND json_extract(data, '$.iotEdge') = 1 AND json_extract(data, '$.deviceScope') = ?1",
    )
    .map_err(db_err)?
    .exists(params![scope, except])
    .map_err(db_err)
}

/// Delete a device (with its modules, queue and sessions) or one module.
pub fn delete_identity(
    c: &mut Connection,
    device: &str,
    module: Option<&str>,
) -> Result<(), HubError> {
    let tx = c.transaction().map_err(db_err)?;
    match module {
        Some(m) => {
            tx.execute(
                "DELETE FROM identities WHERE device_id = ?1 AND module_id = ?2",
                params![device, m],
            )
            .map_err(db_err)?;
            let cid = crate::hub::client_id(device, Some(m));
            tx.execute("DELETE FROM sessions WHERE client_id = ?1", params![cid])
                .map_err(db_err)?;
            tx.execute("DELETE FROM activity WHERE client_id = ?1", params![cid])
                .map_err(db_err)?;
        }
        None => {
            tx.execute(
                "DELETE FROM identities WHERE device_id = ?1",
                params![device],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM c2d WHERE device_id = ?1", params![device])
                .map_err(db_err)?;
            // A prefix compare, not LIKE: `_` and `%` are legal in device ids.
            tx.execute(
                "DELETE FROM sessions WHERE client_id = ?1 \
                 OR substr(client_id, 1, length(?2)) = ?2",
                params![device, format!("{device}/")],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM activity WHERE client_id = ?1 \
                 OR substr(client_id, 1, length(?2)) = ?2",
                params![device, format!("{device}/")],
            )
            .map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

/// Devices (module_id None) or the modules of `device`.
pub fn list_identities(
    c: &Connection,
    modules_of: Option<&str>,
) -> Result<Vec<Identity>, HubError> {
    let mut out = Vec::new();
    let mut push = |r: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
        let (d, m, data): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if let Some(i) = identity_from_json(d, m, &data) {
            out.push(i);
        }
        Ok(())
    };
    match modules_of {
        None => {
            let mut st = c
                .prepare(
                    "SELECT device_id, module_id, data FROM identities WHERE module_id = '' \
                     ORDER BY device_id",
                )
                .map_err(db_err)?;
            let mut rows = st.query([]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                push(r).map_err(db_err)?;
            }
        }
        Some(d) => {
            let mut st = c
                .prepare(
                    "SELECT device_id, module_id, data FROM identities WHERE device_id = ?1 \
                     AND module_id <> '' ORDER BY module_id",
                )
                .map_err(db_err)?;
            let mut rows = st.query(params![d]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                push(r).map_err(db_err)?;
            }
        }
    }
    Ok(out)
}

/// Live (not dead-lettered) queue depth.
pub fn c2d_depth(c: &Connection, device: &str) -> Result<u32, HubError> {
    c.prepare_cached("SELECT COUNT(*) FROM c2d WHERE device_id = ?1 AND dead IS NULL")
        .map_err(db_err)?
        .query_row(params![device], |r| r.get::<_, i64>(0))
        .map(|n| n as u32)
        .map_err(db_err)
}

/// Append to a queue; `Ok(None)` when the queue is already at `cap`.
pub fn c2d_enqueue(c: &mut Connection, m: &C2dMessage, cap: u32) -> Result<Option<u32>, HubError> {
    let tx = c.transaction().map_err(db_err)?;
    let depth = c2d_depth(&tx, &m.device_id)?;
    if depth >= cap {
        return Ok(None);
    }
    let data = serde_json::json!({
        "messageId": m.message_id, "correlationId": m.correlation_id,
        "contentType": m.content_type, "contentEncoding": m.content_encoding,
        "userId": m.user_id, "ack": m.ack, "properties": m.properties,
        "enqueuedMs": m.enqueued_ms,
    })
    .to_string();
    tx.execute(
        "INSERT INTO c2d (device_id, data, body, expiry_ms, delivery_count) VALUES (?1, ?2, ?3, ?4, 0)",
        params![m.device_id, data, m.body, m.expiry_ms],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Some(depth + 1))
}

/// Live messages of a device not locked by a device-side HTTPS receive, oldest first
/// (run-out locks are removed by the next receive and by the feedback sweep).
pub fn c2d_pending(c: &Connection, device: &str) -> Result<Vec<C2dMessage>, HubError> {
    let mut st = c
        .prepare_cached(
            "SELECT seq, data, body, expiry_ms, delivery_count FROM c2d \
             WHERE device_id = ?1 AND dead IS NULL \
             AND seq NOT IN (SELECT seq FROM c2d_locks WHERE device_id = ?1) ORDER BY seq",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(params![device], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, data, body, expiry_ms, dc) = row.map_err(db_err)?;
        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let properties = v
            .get("properties")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let p = p.as_array()?;
                        Some((
                            p.first()?.as_str()?.to_string(),
                            p.get(1)?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(C2dMessage {
            seq,
            device_id: device.to_string(),
            message_id: s("messageId").unwrap_or_default(),
            correlation_id: s("correlationId"),
            content_type: s("contentType"),
            content_encoding: s("contentEncoding"),
            user_id: s("userId"),
            ack: s("ack").unwrap_or_else(|| "none".into()),
            properties,
            body,
            enqueued_ms: v
                .get("enqueuedMs")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            expiry_ms,
            delivery_count: dc as u32,
        });
    }
    Ok(out)
}

pub fn c2d_mark_delivered(c: &Connection, seq: i64) -> Result<(), HubError> {
    c.prepare_cached("UPDATE c2d SET delivery_count = delivery_count + 1 WHERE seq = ?1")
        .map_err(db_err)?
        .execute(params![seq])
        .map_err(db_err)?;
    Ok(())
}

/// Complete (delete) a message; true when it was still live. Records `Success` feedback
/// (at `now_ms`) when the sender asked for it (`iothub-ack` positive or full).
pub fn c2d_complete(c: &Connection, seq: i64, now_ms: i64) -> Result<bool, HubError> {
    let Some(live) = crate::feedback::live_message(c, seq)? else {
        return Ok(false);
    };
    let n = c
        .prepare_cached("DELETE FROM c2d WHERE seq = ?1 AND dead IS NULL")
        .map_err(db_err)?
        .execute(params![seq])
        .map_err(db_err)?;
    if n > 0 {
        crate::feedback::record(c, &live, crate::feedback::Status::Success, now_ms)?;
    }
    Ok(n > 0)
}

/// Dead-letter a live message; records negative feedback (`reason` is the status code,
/// `Expired` or `DeliveryCountExceeded`; at `now_ms`) when the sender asked for it.
pub fn c2d_dead_letter(
    c: &Connection,
    seq: i64,
    reason: &str,
    now_ms: i64,
) -> Result<(), HubError> {
    let live = crate::feedback::live_message(c, seq)?;
    let n = c
        .prepare_cached("UPDATE c2d SET dead = ?2 WHERE seq = ?1 AND dead IS NULL")
        .map_err(db_err)?
        .execute(params![seq, reason])
        .map_err(db_err)?;
    if let (1.., Some(live), Some(status)) = (n, live, crate::feedback::Status::from_code(reason)) {
        crate::feedback::record(c, &live, status, now_ms)?;
    }
    Ok(())
}

/// Dead-letter every live message whose TTL has passed (all devices, or one), with
/// `Expired` feedback; returns how many.
pub fn c2d_expire_due(
    c: &Connection,
    device: Option<&str>,
    now_ms: i64,
) -> Result<usize, HubError> {
    let mut st = c
        .prepare_cached(
            "SELECT seq FROM c2d WHERE dead IS NULL AND expiry_ms <= ?1 \
             AND (?2 IS NULL OR device_id = ?2) ORDER BY seq",
        )
        .map_err(db_err)?;
    let seqs = st
        .query_map(params![now_ms, device], |r| r.get::<_, i64>(0))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    for &seq in &seqs {
        c2d_dead_letter(c, seq, "Expired", now_ms)?;
    }
    Ok(seqs.len())
}

/// Delete a device's live messages, with `Purged` feedback (at `now_ms`) where the sender
/// asked for negative feedback.
pub fn c2d_purge(c: &Connection, device: &str, now_ms: i64) -> Result<u32, HubError> {
    let mut st = c
        .prepare_cached("SELECT seq FROM c2d WHERE device_id = ?1 AND dead IS NULL")
        .map_err(db_err)?;
    let seqs = st
        .query_map(params![device], |r| r.get::<_, i64>(0))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    for &seq in &seqs {
        if let Some(live) = crate::feedback::live_message(c, seq)? {
            crate::feedback::record(c, &live, crate::feedback::Status::Purged, now_ms)?;
        }
    }
    c.execute(
        "DELETE FROM c2d WHERE device_id = ?1 AND dead IS NULL",
        params![device],
    )
    .map(|n| n as u32)
    .map_err(db_err)
}

/// Every saved activity time: `(client id, last activity us, state updated us)`.
pub fn activity_rows(c: &Connection) -> Result<Vec<(String, i64, i64)>, HubError> {
    let mut st = c
        .prepare("SELECT client_id, last_us, state_us FROM activity")
        .map_err(db_err)?;
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)
}

/// Write the activity times that changed, in one transaction.
pub fn flush_activity(c: &Connection, tracker: &crate::activity::Tracker) -> Result<(), HubError> {
    let rows = tracker.changed();
    if rows.is_empty() {
        return Ok(());
    }
    let tx = c.unchecked_transaction().map_err(db_err)?;
    {
        let mut st = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO activity (client_id, last_us, state_us) \
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(db_err)?;
        for (cid, last, state) in &rows {
            st.execute(params![cid, last, state]).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)?;
    tracker.mark_persisted(&rows);
    Ok(())
}

pub fn session_filters(c: &Connection, client_id: &str) -> Result<Vec<String>, HubError> {
    let row: Option<String> = c
        .prepare_cached("SELECT filters FROM sessions WHERE client_id = ?1")
        .map_err(db_err)?
        .query_row(params![client_id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    Ok(row
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

pub fn set_session_filters(
    c: &Connection,
    client_id: &str,
    filters: &[String],
) -> Result<(), HubError> {
    if filters.is_empty() {
        c.execute(
            "DELETE FROM sessions WHERE client_id = ?1",
            params![client_id],
        )
        .map_err(db_err)?;
    } else {
        c.execute(
            "INSERT OR REPLACE INTO sessions (client_id, filters) VALUES (?1, ?2)",
            params![
                client_id,
                serde_json::to_string(filters).unwrap_or_default()
            ],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// The newest `limit` events (oldest first), optionally for one device, as JSON text.
pub fn recent_events(
    c: &Connection,
    device: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, HubError> {
    const COLS: &str =
        "json, device_id, module_id, generation_id, enqueued_ns, props, body, auth_method";
    let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<String> {
        let json: String = r.get(0)?;
        if !json.is_empty() {
            return Ok(json);
        }
        Ok(crate::telemetry::to_json(
            &r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.as_deref(),
            &r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            crate::telemetry::AuthMethod::from_code(r.get(7)?),
            r.get::<_, Option<i64>>(4)?.unwrap_or_default(),
            &r.get::<_, Option<String>>(5)?.unwrap_or_default(),
            &r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default(),
        ))
    };
    // Segment by segment, newest first: the view `events` would sort the whole log.
    let mut out = Vec::new();
    for span in super::segments::spans(c).map_err(db_err)?.iter().rev() {
        let left = limit.saturating_sub(out.len());
        if left == 0 {
            break;
        }
        let table = span.table();
        let mut st = match device {
            Some(_) => c.prepare_cached(&format!(
                "SELECT {COLS} FROM {table} WHERE device_id = ?1 AND source IS NULL \
                 ORDER BY seq DESC LIMIT ?2"
            )),
            None => c.prepare_cached(&format!(
                "SELECT {COLS} FROM {table} WHERE source IS NULL ORDER BY seq DESC LIMIT ?1"
            )),
        }
        .map_err(db_err)?;
        let rows = match device {
            Some(d) => st.query_map(params![d, left as i64], row),
            None => st.query_map(params![left as i64], row),
        }
        .map_err(db_err)?;
        for r in rows {
            out.push(r.map_err(db_err)?);
        }
    }
    out.reverse();
    Ok(out)
}
