//! SQLite persistence: identities (registry + twin in one row), C2D queues, MQTT session
//! subscriptions and the capped D2C event log.
//!
//! One connection behind a mutex; async callers go through [`Store::call`] (spawn_blocking) so
//! SQLite never runs on a runtime worker. Telemetry never waits for SQLite: it goes through a
//! channel to a writer thread that inserts in batches, one transaction per batch, in WAL mode
//! with `synchronous=NORMAL` (no fsync per commit). The writer lets telemetry gather for 2 ms
//! before each transaction; readers of the log call [`Store::flush`] first, so a
//! message the hub has PUBACKed is in everything read after the PUBACK, and [`Store::close`]
//! flushes on shutdown. Telemetry rows keep the message as received; its JSON is built on read.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use azsim_proto::secret::Secret;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::HubError;
use crate::telemetry::D2cRecord;

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

/// A cloud-to-device message in a device queue.
#[derive(Debug, Clone)]
pub struct C2dMessage {
    pub seq: i64,
    pub device_id: String,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub user_id: Option<String>,
    pub ack: String,
    /// App properties in send order.
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub enqueued_ms: i64,
    pub expiry_ms: i64,
    pub delivery_count: u32,
}

enum WriterMsg {
    Event(D2cRecord),
    Flush(oneshot::Sender<()>),
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    events_tx: mpsc::Sender<WriterMsg>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    activity: Arc<crate::activity::Tracker>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
  device_id TEXT NOT NULL, module_id TEXT NOT NULL DEFAULT '', data TEXT NOT NULL,
  PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS c2d (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, data TEXT NOT NULL,
  body BLOB NOT NULL, expiry_ms INTEGER NOT NULL, delivery_count INTEGER NOT NULL DEFAULT 0,
  dead TEXT);
CREATE INDEX IF NOT EXISTS c2d_device ON c2d (device_id, dead, seq);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, json TEXT NOT NULL);
";

/// Activity times (see `activity.rs`) and the C2D feedback queue (see `feedback.rs`).
pub(crate) const SCHEMA_ACTIVITY_FEEDBACK: &str = "
CREATE TABLE IF NOT EXISTS activity (
  client_id TEXT PRIMARY KEY, last_us INTEGER NOT NULL, state_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, json TEXT NOT NULL,
  created_ms INTEGER NOT NULL, lock_token TEXT, locked_until_ms INTEGER,
  done INTEGER NOT NULL DEFAULT 0, deliveries INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS feedback_lock ON feedback (lock_token);
CREATE INDEX IF NOT EXISTS c2d_live_expiry ON c2d (expiry_ms) WHERE dead IS NULL;
CREATE TABLE IF NOT EXISTS c2d_locks (
  seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, lock_token TEXT NOT NULL,
  locked_until_ms INTEGER NOT NULL);
";

/// An in-memory database with the whole schema, for the unit tests of the modules that take a
/// bare `Connection`.
#[cfg(test)]
pub(crate) fn memory_db() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c.execute_batch(SCHEMA_ACTIVITY_FEEDBACK).unwrap();
    c
}

impl Store {
    /// Open (creating) the database at `path`, or an in-memory one when `path` is `None`.
    pub fn open(path: Option<&Path>, event_cap: usize) -> Result<Store, HubError> {
        let conn = match path {
            Some(p) => Connection::open(p).map_err(db_err)?,
            None => Connection::open_in_memory().map_err(db_err)?,
        };
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db_err)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        add_event_columns(&conn).map_err(db_err)?;
        conn.execute_batch(SCHEMA_ACTIVITY_FEEDBACK)
            .map_err(db_err)?;
        add_column(
            &conn,
            "feedback",
            "deliveries",
            "INTEGER NOT NULL DEFAULT 0",
        )?;
        let activity = Arc::new(crate::activity::Tracker::default());
        activity.load(q::activity_rows(&conn)?);
        let conn = Arc::new(Mutex::new(conn));
        start_activity_flusher(&conn, &activity)?;
        let (tx, rx) = mpsc::channel(16_384);
        let wconn = conn.clone();
        let handle = std::thread::Builder::new()
            .name("azsim-hub-events".into())
            .spawn(move || event_writer(wconn, rx, event_cap.max(1)))
            .map_err(|e| HubError::Store(e.to_string()))?;
        Ok(Store {
            conn,
            events_tx: tx,
            writer: Arc::new(Mutex::new(Some(handle))),
            activity,
        })
    }

    /// Run `f` on the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, HubError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| HubError::Store(format!("store task failed: {e}")))?
    }

    /// Queue a telemetry message for the log. Waits only when the writer is far behind.
    pub async fn log_event(&self, record: D2cRecord) {
        let _ = self.events_tx.send(WriterMsg::Event(record)).await;
    }

    /// Wait until every event queued so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events_tx.send(WriterMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Flush, then checkpoint the WAL so the db file is complete on its own.
    pub async fn close(&self) {
        self.flush().await;
        self.flush_activity().await;
        self.activity
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self
            .call(|c| {
                let _ = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                Ok(())
            })
            .await;
        let _ = self.writer.lock().map(|mut w| w.take());
    }
}

/// Add `column` to `table` when a database from an older build lacks it.
fn add_column(c: &Connection, table: &str, column: &str, decl: &str) -> Result<(), HubError> {
    let have: bool = c
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if !have {
        c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl};"))
            .map_err(db_err)?;
    }
    Ok(())
}

/// Activity times: the hot path updates atomics, this writes them (see `activity.rs`).
impl Store {
    /// Every identity's activity times.
    pub fn activity(&self) -> &Arc<crate::activity::Tracker> {
        &self.activity
    }

    /// Write the activity times that changed since the last flush.
    pub async fn flush_activity(&self) {
        let tracker = self.activity.clone();
        if let Err(e) = self.call(move |c| q::flush_activity(c, &tracker)).await {
            tracing::warn!(error = %e, "saving activity times failed");
        }
    }
}

/// A thread that writes changed activity times every `FLUSH_EVERY`; it ends when the store is
/// closed or dropped.
fn start_activity_flusher(
    conn: &Arc<Mutex<Connection>>,
    tracker: &Arc<crate::activity::Tracker>,
) -> Result<(), HubError> {
    let (conn, tracker) = (Arc::downgrade(conn), Arc::downgrade(tracker));
    std::thread::Builder::new()
        .name("azsim-hub-activity".into())
        .spawn(move || {
            loop {
                std::thread::sleep(crate::activity::FLUSH_EVERY);
                let (Some(conn), Some(tracker)) = (conn.upgrade(), tracker.upgrade()) else {
                    return;
                };
                if tracker.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = q::flush_activity(&guard, &tracker) {
                    tracing::warn!(error = %e, "saving activity times failed");
                }
            }
        })
        .map(drop)
        .map_err(|e| HubError::Store(e.to_string()))
}

/// The columns telemetry rows have beyond the first schema's `(seq, device_id, json)`. A row
/// with an empty `json` keeps the message as received and is rendered when read (see
/// `telemetry.rs`); rows written by older versions keep their JSON text.
const EVENT_COLUMNS: [(&str, &str); 5] = [
    ("module_id", "TEXT"),
    ("generation_id", "TEXT"),
    ("enqueued_ns", "INTEGER"),
    ("props", "TEXT"),
    ("body", "BLOB"),
];

/// Adds the [`EVENT_COLUMNS`] an existing `events` table lacks.
fn add_event_columns(c: &Connection) -> rusqlite::Result<()> {
    let have: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('events')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, ty) in EVENT_COLUMNS {
        if !have.iter().any(|h| h == name) {
            c.execute_batch(&format!("ALTER TABLE events ADD COLUMN {name} {ty};"))?;
        }
    }
    Ok(())
}

/// How long the writer lets telemetry gather before a transaction, unless a flush is waiting:
/// one wake-up and one commit per window instead of per message.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
const MAX_BATCH: usize = 4096;

/// Telemetry rows per multi-row INSERT: one statement run (and one AUTOINCREMENT bookkeeping
/// update) per this many messages.
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO events ... VALUES (...)` with `rows` rows of [`bind_event`]'s 6 parameters.
fn insert_events_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (device_id, json, module_id, generation_id, enqueued_ns, props, body) \
         VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, '', ?, ?, ?, ?, ?)");
    }
    sql
}

/// Binds one message to parameters `base + 1 ..= base + 6` of an insert from
/// [`insert_events_sql`].
fn bind_event(
    stmt: &mut rusqlite::CachedStatement<'_>,
    base: usize,
    r: &D2cRecord,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(base + 1, &r.origin.device_id)?;
    stmt.raw_bind_parameter(base + 2, &r.origin.module_id)?;
    stmt.raw_bind_parameter(base + 3, &r.origin.generation_id)?;
    stmt.raw_bind_parameter(base + 4, r.enqueued_ns)?;
    stmt.raw_bind_parameter(base + 5, &r.properties)?;
    stmt.raw_bind_parameter(base + 6, &r.body)
}

fn event_writer(conn: Arc<Mutex<Connection>>, mut rx: mpsc::Receiver<WriterMsg>, cap: usize) {
    let (insert_many, insert_one) = (insert_events_sql(ROWS_PER_INSERT), insert_events_sql(1));
    let mut since_trim = 0usize;
    let mut events = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        if !matches!(first, WriterMsg::Flush(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                WriterMsg::Event(r) => events.push(r),
                WriterMsg::Flush(f) => flushes.push(f),
            }
            if events.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty() {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let result = (|| -> rusqlite::Result<()> {
                let tx = guard.transaction()?;
                {
                    let mut many = tx.prepare_cached(&insert_many)?;
                    let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
                    for chunk in &mut chunks {
                        for (i, r) in chunk.iter().enumerate() {
                            bind_event(&mut many, i * 6, r)?;
                        }
                        many.raw_execute()?;
                    }
                    let mut one = tx.prepare_cached(&insert_one)?;
                    for r in chunks.remainder() {
                        bind_event(&mut one, 0, r)?;
                        one.raw_execute()?;
                    }
                }
                since_trim += events.len();
                if since_trim >= 256 {
                    since_trim = 0;
                    tx.prepare_cached(
                        "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1",
                    )?
                    .execute(params![cap as i64])?;
                }
                tx.commit()
            })();
            if let Err(e) = result {
                tracing::warn!(error = %e, "event log write failed");
            }
            drop(guard);
            events.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

fn mid_key(m: Option<&str>) -> &str {
    m.unwrap_or("")
}

fn identity_to_json(i: &Identity) -> String {
    // Maps of JSON values and plain fields: serialising cannot fail.
    serde_json::to_string(i).unwrap_or_default()
}

/// The identity in a row; `None` (the row is skipped) when its JSON does not parse.
fn identity_from_json(device_id: String, module_id: String, data: &str) -> Option<Identity> {
    let mut i: Identity = serde_json::from_str(data).ok()?;
    i.device_id = device_id;
    i.module_id = (!module_id.is_empty()).then_some(module_id);
    Some(i)
}

/// Synchronous queries, run inside [`Store::call`].
pub mod q {
    use super::*;

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
        Ok(row
            .and_then(|d| identity_from_json(device.to_string(), mid_key(module).to_string(), &d)))
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
    pub fn c2d_enqueue(
        c: &mut Connection,
        m: &C2dMessage,
        cap: u32,
    ) -> Result<Option<u32>, HubError> {
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
        if let (1.., Some(live), Some(status)) =
            (n, live, crate::feedback::Status::from_code(reason))
        {
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
    pub fn flush_activity(
        c: &Connection,
        tracker: &crate::activity::Tracker,
    ) -> Result<(), HubError> {
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
        const COLS: &str = "json, device_id, module_id, generation_id, enqueued_ns, props, body";
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<String> {
            let json: String = r.get(0)?;
            if !json.is_empty() {
                return Ok(json);
            }
            Ok(crate::telemetry::to_json(
                &r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?.as_deref(),
                &r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                r.get::<_, Option<i64>>(4)?.unwrap_or_default(),
                &r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                &r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default(),
            ))
        };
        let mut out = Vec::new();
        match device {
            Some(d) => {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COLS} FROM events WHERE device_id = ?1 ORDER BY seq DESC LIMIT ?2"
                    ))
                    .map_err(db_err)?;
                for r in st
                    .query_map(params![d, limit as i64], row)
                    .map_err(db_err)?
                {
                    out.push(r.map_err(db_err)?);
                }
            }
            None => {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COLS} FROM events ORDER BY seq DESC LIMIT ?1"
                    ))
                    .map_err(db_err)?;
                for r in st.query_map(params![limit as i64], row).map_err(db_err)? {
                    out.push(r.map_err(db_err)?);
                }
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
