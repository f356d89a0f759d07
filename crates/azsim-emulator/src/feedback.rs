//! C2D feedback, as IoT Hub keeps it for the service: when a message whose sender asked for it
//! (`iothub-ack` positive/full) is completed, or (negative/full) expires, runs out of
//! deliveries, is rejected (device-side HTTPS) or is purged, a record goes into one hub-wide
//! feedback queue in SQLite. The service reads it with `GET /messages/serviceBound/feedback` (a
//! batch under a lock token, sent as the `ETag`), then completes (`DELETE .../{lockToken}`) or
//! abandons it; a batch that is neither becomes visible again when its lock times out. Records
//! live for the feedback TTL (1 h by default) and are handed out at most `maxDeliveryCount`
//! (10) times.
//!
//! The queue functions take `now_ms` so their timing rules are tested with a fake clock; the
//! background [`maintain`] task expires overdue C2D messages (Azure does this without the
//! device connecting) and announces new records on the event stream. A completed record is
//! only marked `done` until the task has announced it, so a service that completes feedback
//! faster than the sweep runs does not hide it from the stream.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::{Value, json};

use crate::HubError;
use crate::hub::Hub;

/// How often overdue C2D messages are expired and new feedback is announced.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most records handed out in one batch.
pub const BATCH_MAX: usize = 64;

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// Azure's feedback `statusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Expired,
    DeliveryCountExceeded,
    Rejected,
    Purged,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Success => "Success",
            Status::Expired => "Expired",
            Status::DeliveryCountExceeded => "DeliveryCountExceeded",
            Status::Rejected => "Rejected",
            Status::Purged => "Purged",
        }
    }

    /// The dead-letter reasons that are feedback status codes.
    pub fn from_code(s: &str) -> Option<Status> {
        Some(match s {
            "Success" => Status::Success,
            "Expired" => Status::Expired,
            "DeliveryCountExceeded" => Status::DeliveryCountExceeded,
            "Rejected" => Status::Rejected,
            "Purged" => Status::Purged,
            _ => return None,
        })
    }

    /// Whether a message sent with `iothub-ack: ack` gets this feedback.
    fn wanted_by(self, ack: &str) -> bool {
        match self {
            Status::Success => matches!(ack, "positive" | "full"),
            _ => matches!(ack, "negative" | "full"),
        }
    }
}

/// What feedback needs of a live C2D message.
#[derive(Debug)]
pub struct LiveMessage {
    device_id: String,
    pub message_id: String,
    ack: String,
}

/// The live (not dead-lettered) message `seq`, if any.
pub fn live_message(c: &Connection, seq: i64) -> Result<Option<LiveMessage>, HubError> {
    let row: Option<(String, String)> = c
        .prepare_cached("SELECT device_id, data FROM c2d WHERE seq = ?1 AND dead IS NULL")
        .map_err(db_err)?
        .query_row(params![seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db_err)?;
    Ok(row.map(|(device_id, data)| {
        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        LiveMessage {
            device_id,
            message_id: s("messageId"),
            ack: s("ack"),
        }
    }))
}

/// Queue a feedback record for `m` if its sender asked for `status`, enqueued at `now_ms`.
pub fn record(
    c: &Connection,
    m: &LiveMessage,
    status: Status,
    now_ms: i64,
) -> Result<(), HubError> {
    if !status.wanted_by(&m.ack) {
        return Ok(());
    }
    let generation_id = crate::store::q::get_identity(c, &m.device_id, None)?
        .map(|i| i.generation_id)
        .unwrap_or_default();
    let now = now_ms;
    // Azure's description is "the string value of the status code".
    let rec = json!({
        "originalMessageId": m.message_id,
        "description": status.code(),
        "deviceGenerationId": generation_id,
        "deviceId": m.device_id,
        "enqueuedTimeUtc": crate::clock::azure_time_ms(now),
        "statusCode": status.code(),
    });
    c.prepare_cached("INSERT INTO feedback (device_id, json, created_ms) VALUES (?1, ?2, ?3)")
        .map_err(db_err)?
        .execute(params![m.device_id, rec.to_string(), now])
        .map_err(db_err)?;
    tracing::debug!(device = %m.device_id, message_id = %crate::untrusted::Untrusted(&m.message_id), status = status.code(), "c2d feedback recorded");
    Ok(())
}

/// Drop records older than `ttl_ms`.
pub fn drop_expired(c: &Connection, now_ms: i64, ttl_ms: i64) -> Result<usize, HubError> {
    c.prepare_cached("DELETE FROM feedback WHERE created_ms <= ?1")
        .map_err(db_err)?
        .execute(params![now_ms - ttl_ms])
        .map_err(db_err)
}

/// The feedback queue's settings (Azure's hub properties `feedback.ttlAsIso8601`,
/// `lockDurationAsIso8601`, `maxDeliveryCount`, plus the batch size).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub ttl_ms: i64,
    pub lock_ms: i64,
    pub batch_max: usize,
    pub max_deliveries: u32,
}

impl Rules {
    pub fn of(limits: &crate::HubLimits) -> Rules {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Rules {
            ttl_ms: ms(limits.feedback_ttl),
            lock_ms: ms(limits.feedback_lock_timeout),
            batch_max: BATCH_MAX,
            max_deliveries: limits.feedback_max_delivery_count,
        }
    }
}

/// Lock up to `rules.batch_max` visible records (never locked, or whose lock ran out) under
/// `token` until `now_ms + rules.lock_ms`; returns them (JSON objects), oldest first. A record
/// handed out `max_deliveries` times without being completed is dropped.
pub fn receive(
    c: &Connection,
    now_ms: i64,
    rules: &Rules,
    token: &str,
) -> Result<Vec<Value>, HubError> {
    drop_expired(c, now_ms, rules.ttl_ms)?;
    c.prepare_cached(
        "DELETE FROM feedback WHERE done = 0 AND deliveries >= ?2 \
         AND (locked_until_ms IS NULL OR locked_until_ms <= ?1)",
    )
    .map_err(db_err)?
    .execute(params![now_ms, rules.max_deliveries])
    .map_err(db_err)?;
    let (max, lock_ms) = (rules.batch_max, rules.lock_ms);
    let rows: Vec<(i64, String)> = c
        .prepare_cached(
            "SELECT seq, json FROM feedback \
             WHERE done = 0 AND (locked_until_ms IS NULL OR locked_until_ms <= ?1) \
             ORDER BY seq LIMIT ?2",
        )
        .map_err(db_err)?
        .query_map(params![now_ms, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let mut lock = c
        .prepare_cached(
            "UPDATE feedback SET lock_token = ?2, locked_until_ms = ?3, \
             deliveries = deliveries + 1 WHERE seq = ?1",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, text) in rows {
        lock.execute(params![seq, token, now_ms + lock_ms])
            .map_err(db_err)?;
        out.push(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    Ok(out)
}

/// Complete the batch locked under `token` (gone for receivers; deleted once announced); 0 when
/// the lock is unknown or ran out.
pub fn complete(c: &Connection, token: &str, now_ms: i64) -> Result<usize, HubError> {
    c.prepare_cached(
        "UPDATE feedback SET done = 1 \
         WHERE lock_token = ?1 AND locked_until_ms > ?2 AND done = 0",
    )
    .map_err(db_err)?
    .execute(params![token, now_ms])
    .map_err(db_err)
}

/// Release the batch locked under `token` so the next receive gets it; 0 when the lock is
/// unknown or ran out.
pub fn abandon(c: &Connection, token: &str, now_ms: i64) -> Result<usize, HubError> {
    c.prepare_cached(
        "UPDATE feedback SET lock_token = NULL, locked_until_ms = NULL \
         WHERE lock_token = ?1 AND locked_until_ms > ?2 AND done = 0",
    )
    .map_err(db_err)?
    .execute(params![token, now_ms])
    .map_err(db_err)
}

/// Delete completed records up to `seq` (they have been announced).
fn purge_done(c: &Connection, seq: i64) -> Result<usize, HubError> {
    c.prepare_cached("DELETE FROM feedback WHERE done = 1 AND seq <= ?1")
        .map_err(db_err)?
        .execute(params![seq])
        .map_err(db_err)
}

/// Records after `seq`: `(seq, device id, record)`.
fn since(c: &Connection, seq: i64) -> Result<Vec<(i64, String, Value)>, HubError> {
    c.prepare_cached("SELECT seq, device_id, json FROM feedback WHERE seq > ?1 ORDER BY seq")
        .map_err(db_err)?
        .query_map(params![seq], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))
        })
        .map_err(db_err)?
        .map(|r| {
            r.map(|(s, d, j)| (s, d, serde_json::from_str(&j).unwrap_or(Value::Null)))
                .map_err(db_err)
        })
        .collect()
}

fn last_seq(c: &Connection) -> Result<i64, HubError> {
    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM feedback", [], |r| {
        r.get(0)
    })
    .map_err(db_err)
}

/// The `c2dFeedback` event-stream object for a record.
pub fn event(rec: &Value) -> Value {
    json!({
        "type": "c2dFeedback",
        "deviceId": rec["deviceId"],
        "messageId": rec["originalMessageId"],
        "statusCode": rec["statusCode"],
        "description": rec["description"],
        "enqueuedTime": rec["enqueuedTimeUtc"],
    })
}

/// Until shutdown: every [`SWEEP_EVERY`], dead-letter overdue C2D messages (with `Expired`
/// feedback), drop feedback past its TTL and announce new feedback records on the event stream.
///
/// The sweep's cadence is tokio time (it only bounds how late expiry is noticed); what is due is
/// decided by the hub's clock, so a test that advances a manual clock sees expiry at the next
/// sweep, or at once through any call that expires (C2D send, receive, feedback receive).
pub(crate) async fn maintain(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown.subscribe();
    let mut seen = match hub.store.call(|c| last_seq(c)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "feedback sweep disabled");
            return;
        }
    };
    let ttl_ms = Rules::of(&hub.cfg.limits).ttl_ms;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = crate::hub::until_shutdown(&mut shutdown) => return,
        }
        let after = seen;
        let now = hub.now_ms();
        let r = hub
            .store
            .call(move |c| {
                let expired = crate::store::q::c2d_expire_due(c, None, now)?;
                drop_expired(c, now, ttl_ms)?;
                // Device-side HTTPS locks that ran out: MQTT may deliver those messages again.
                c.prepare_cached("DELETE FROM c2d_locks WHERE locked_until_ms <= ?1")
                    .map_err(db_err)?
                    .execute(params![now])
                    .map_err(db_err)?;
                let new = since(c, after)?;
                purge_done(c, new.last().map_or(after, |r| r.0))?;
                Ok((expired, new))
            })
            .await;
        match r {
            Ok((expired, new)) => {
                if expired > 0 {
                    tracing::info!(count = expired, "c2d messages dead-lettered: Expired");
                }
                for (seq, device, rec) in new {
                    seen = seen.max(seq);
                    hub.emit(&device, event(&rec));
                }
            }
            Err(e) => tracing::warn!(error = %e, "feedback sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::memory_db as db;

    fn rules(batch_max: usize) -> Rules {
        Rules {
            ttl_ms: 3_600_000,
            lock_ms: 60_000,
            batch_max,
            max_deliveries: 10,
        }
    }

    fn insert(c: &Connection, id: &str, created_ms: i64) {
        c.execute(
            "INSERT INTO feedback (device_id, json, created_ms) VALUES ('d', ?1, ?2)",
            params![json!({"originalMessageId": id}).to_string(), created_ms],
        )
        .unwrap();
    }

    fn ids(v: &[Value]) -> Vec<&str> {
        v.iter()
            .map(|r| r["originalMessageId"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_locked_batch_is_invisible_until_its_lock_runs_out() {
        let c = db();
        insert(&c, "a", 1_000);
        insert(&c, "b", 1_000);
        let got = receive(&c, 2_000, &rules(64), "t1").unwrap();
        assert_eq!(ids(&got), ["a", "b"]);
        assert!(receive(&c, 61_999, &rules(64), "t2").unwrap().is_empty());
        // The lock ran out: completing with it fails, the batch comes back under a new lock.
        assert_eq!(complete(&c, "t1", 62_000).unwrap(), 0);
        let again = receive(&c, 62_000, &rules(64), "t3").unwrap();
        assert_eq!(ids(&again), ["a", "b"]);
        assert_eq!(complete(&c, "t3", 62_001).unwrap(), 2);
        assert!(receive(&c, 200_000, &rules(64), "t4").unwrap().is_empty());
    }

    #[test]
    fn abandon_releases_a_batch_and_batches_are_capped() {
        let c = db();
        for i in 0..5 {
            insert(&c, &format!("m{i}"), 1_000);
        }
        let first = receive(&c, 2_000, &rules(3), "t1").unwrap();
        assert_eq!(ids(&first), ["m0", "m1", "m2"]);
        let second = receive(&c, 2_000, &rules(3), "t2").unwrap();
        assert_eq!(ids(&second), ["m3", "m4"]);
        assert_eq!(abandon(&c, "t1", 2_001).unwrap(), 3);
        assert_eq!(abandon(&c, "t1", 2_001).unwrap(), 0);
        let third = receive(&c, 2_002, &rules(64), "t3").unwrap();
        assert_eq!(ids(&third), ["m0", "m1", "m2"]);
    }

    #[test]
    fn a_record_handed_out_max_delivery_count_times_is_dropped() {
        let c = db();
        insert(&c, "stuck", 1_000);
        let mut r = rules(64);
        r.max_deliveries = 2;
        assert_eq!(ids(&receive(&c, 2_000, &r, "t1").unwrap()), ["stuck"]);
        assert_eq!(abandon(&c, "t1", 2_001).unwrap(), 1);
        assert_eq!(ids(&receive(&c, 2_002, &r, "t2").unwrap()), ["stuck"]);
        // Second lock still held: not dropped yet, just invisible.
        assert!(receive(&c, 2_003, &r, "t3").unwrap().is_empty());
        assert_eq!(
            complete(&c, "t2", 2_004).unwrap(),
            1,
            "completable while locked"
        );
        insert(&c, "again", 3_000);
        receive(&c, 3_001, &r, "t4").unwrap();
        receive(&c, 3_001 + 60_000, &r, "t5").unwrap();
        // Its second lock ran out: gone.
        assert!(receive(&c, 3_002 + 120_000, &r, "t6").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_database_from_before_delivery_counts_opens_and_serves_its_feedback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(crate::store::SCHEMA).unwrap();
            c.execute_batch(
                "CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                   device_id TEXT NOT NULL, json TEXT NOT NULL, created_ms INTEGER NOT NULL,
                   lock_token TEXT, locked_until_ms INTEGER, done INTEGER NOT NULL DEFAULT 0);",
            )
            .unwrap();
            insert(&c, "old", 1_000);
        }
        let store = crate::store::Store::open(Some(&path), 10).unwrap();
        let got = store
            .call(|c| receive(c, 2_000, &rules(64), "t"))
            .await
            .unwrap();
        assert_eq!(ids(&got), ["old"]);
        store.close().await;
    }

    #[test]
    fn records_past_the_ttl_are_dropped() {
        let c = db();
        insert(&c, "old", 1_000);
        insert(&c, "new", 5_000);
        let got = receive(&c, 1_000 + 3_600_000, &rules(64), "t").unwrap();
        assert_eq!(ids(&got), ["new"]);
    }

    #[test]
    fn feedback_follows_the_requested_ack() {
        assert!(Status::Success.wanted_by("positive"));
        assert!(Status::Success.wanted_by("full"));
        assert!(!Status::Success.wanted_by("negative"));
        assert!(!Status::Expired.wanted_by("positive"));
        assert!(Status::DeliveryCountExceeded.wanted_by("negative"));
        assert!(Status::Purged.wanted_by("full"));
        assert!(!Status::Purged.wanted_by("none"));
    }
}
