//! SQLite persistence: identities (registry + twin in one row), C2D queues, MQTT session
//! subscriptions and the capped D2C event log.
//!
//! One connection behind a mutex; async callers go through [`Store::call`] (spawn_blocking) so
//! SQLite never runs on a runtime worker. Telemetry goes through a channel to a writer thread
//! that inserts whatever has queued up as one transaction (group commit), in WAL mode. A
//! connection does not wait for SQLite while it reads on, but it holds each PUBACK until the
//! transaction holding that message has committed: the writer tells it through the
//! connection's [`Commits`] (see [`Store::log_acked`]). So a PUBACK means stored.
//!
//! How stored depends on [`Durability`]: with `synchronous=FULL` (the default,
//! [`Durability::PowerLoss`]) the WAL is fsynced at every commit, so a committed message
//! survives the machine losing power too; with `synchronous=NORMAL`
//! ([`Durability::ProcessCrash`]) a commit is written to the WAL file but not fsynced, so it
//! survives the hub process being killed (`kill -9`, a panic, OOM) but not a power cut. Group
//! commit keeps the fsyncs to one per batch: in the load bench (1000 devices, 2 cores, a disk
//! whose fsync takes 0.08 ms) FULL and NORMAL were within run-to-run noise of each other
//! (about 5-10 %); a disk with slow fsyncs adds its fsync time to each PUBACK. Readers of the
//! log call [`Store::flush`] first, and [`Store::close`] flushes on shutdown. Telemetry rows
//! keep the message as received; its JSON is built on read.
//!
//! On disk, a checkpointer thread with its own connection copies the WAL into the database
//! (every ~10,000 telemetry rows, else every 2 s) instead of SQLite's automatic checkpoint,
//! which ran inside the commit of whichever transaction passed 1000 WAL pages and so held that
//! batch's PUBACKs for the copy and an fsync of the database file (35-400 ms, seen with strace,
//! under the load bench's 16k-message transactions).
//!
//! [`Identity`] (one registry row) is in `identity.rs`, the telemetry writer thread in
//! `event_log.rs`, the log's ring of segment tables (and the view `events` over them) in
//! `segments.rs`, and every query in [`q`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::{Connection, params};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::HubError;
use crate::telemetry::D2cRecord;

pub mod configurations;
mod event_log;
pub(crate) mod eventhub;
pub(crate) mod files;
mod identity;
pub mod q;
pub(crate) mod segments;

use event_log::{Checkpoints, event_writer, start_checkpointer};
pub use identity::{EdgeFields, Identity};

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

/// What a committed transaction means (`HubConfig::durability`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a committed message survives the hub process being
    /// killed, not a power cut or kernel crash (the last commits may roll back then).
    ProcessCrash,
    /// WAL with `synchronous=FULL`: the WAL is fsynced at every commit, so a committed message
    /// survives power loss too. Costs an fsync per transaction (one per group commit).
    #[default]
    PowerLoss,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }
}

/// One connection's telemetry as the writer has committed it: the highest of the sequence
/// numbers the connection gave its messages ([`Store::log_acked`]) whose transaction has
/// committed, and whether a transaction holding one of them failed. Sequence numbers start at
/// 1 and grow by one per message, so everything up to `committed()` is stored.
#[derive(Debug, Default)]
pub struct Commits {
    committed: AtomicU64,
    failed: AtomicBool,
    changed: Notify,
}

impl Commits {
    /// Every message numbered up to this one is committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// A transaction holding one of this connection's messages failed: they are not stored.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Completes after the writer committed (or failed) a transaction holding one of this
    /// connection's messages since the last call; a change before the call counts too.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Who is waiting for a message's commit, and its number.
struct AckNote {
    commits: Arc<Commits>,
    seq: u64,
}

enum WriterMsg {
    Event(D2cRecord, Option<AckNote>),
    /// One connection's messages from one read, in order (see [`EventBatch`]).
    Events(Vec<(D2cRecord, Option<AckNote>)>),
    Flush(oneshot::Sender<()>),
}

/// The most telemetry messages queued for the writer and not yet taken by it: past this,
/// senders wait (bounds the hub's memory when the disk is slower than the devices).
const QUEUE_MESSAGES: usize = 16_384;

/// Telemetry messages a connection gathers while it handles one read, handed to the writer in
/// one go by [`Store::log_batch`]: one queue operation and one wake-up of the writer per read
/// instead of per message.
#[derive(Default)]
pub struct EventBatch(Vec<(D2cRecord, Option<AckNote>)>);

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventBatch({} messages)", self.0.len())
    }
}

impl EventBatch {
    /// The most messages a batch holds; [`EventBatch::is_full`] says when to send it.
    pub const MAX: usize = 64;

    /// Add a message nobody waits for (`commit` `None`: a will, QoS 0), or one whose commit
    /// `commits` reports as number `seq` (one more than the last number it was given).
    pub fn push(&mut self, record: D2cRecord, commit: Option<(&Arc<Commits>, u64)>) {
        let note = commit.map(|(c, seq)| AckNote {
            commits: c.clone(),
            seq,
        });
        self.0.push((record, note));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.0.len() >= Self::MAX
    }
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    events_tx: mpsc::UnboundedSender<WriterMsg>,
    /// Room in the writer's queue, in messages (of [`QUEUE_MESSAGES`]); the writer gives it
    /// back as it takes messages out.
    queue_room: Arc<Semaphore>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    activity: Arc<crate::activity::Tracker>,
    /// Counts the writer's committed telemetry transactions (wakes Event Hubs readers).
    events_committed: watch::Receiver<u64>,
    /// Tells the WAL checkpointer thread to stop (on close).
    checkpoints: Arc<Checkpoints>,
    /// Places for [`Store::call`]s on the blocking pool, of [`CALLS_AT_ONCE`].
    calls: Arc<Semaphore>,
}

/// [`Store::call`]s on the blocking pool at once: one running and one waiting for the
/// connection, ready the moment it frees. More gain nothing (every call takes the one
/// connection's mutex), and each would hold a blocking thread: 1,000 devices connecting 200 at
/// a time (an identity lookup each) grew the pool to ~190 threads, their stacks and malloc
/// arenas resident afterwards (about 2 KiB per connected device in the load bench).
const CALLS_AT_ONCE: usize = 2;

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
    let mut c = Connection::open_in_memory().unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c.execute_batch(SCHEMA_ACTIVITY_FEEDBACK).unwrap();
    segments::open(&mut c, 1000).unwrap();
    c
}

impl Store {
    /// Open (creating) the database at `path`, or an in-memory one when `path` is `None`, with
    /// commits as durable as [`Durability::PowerLoss`].
    pub fn open(path: Option<&Path>, event_cap: usize) -> Result<Store, HubError> {
        Store::open_with(path, event_cap, Durability::default())
    }

    /// [`Store::open`] with the given durability.
    pub fn open_with(
        path: Option<&Path>,
        event_cap: usize,
        durability: Durability,
    ) -> Result<Store, HubError> {
        let mut conn = match path {
            Some(p) => Connection::open(p).map_err(db_err)?,
            None => Connection::open_in_memory().map_err(db_err)?,
        };
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db_err)?;
            // The checkpointer thread checkpoints instead, off the commit path.
            conn.pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(db_err)?;
        }
        conn.pragma_update(None, "synchronous", durability.synchronous())
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        // Each log segment has its own inserts and reads (see `segments.rs`): room for them
        // and everyone else's statements, so none is prepared again on the hot path.
        conn.set_prepared_statement_cache_capacity(128);
        // A page cache (16 MiB at most, grown as used) that holds the log's segments, the
        // Event Hubs numbers and the registry: with SQLite's 2 MiB the indexer read pages back
        // from the file after every commit (pread, seen with perf; at window 1 in the load
        // bench the hub took 12.2-13.5 us of CPU per message with 16 MiB against 13.0-14.9
        // without, 3 interleaved pairs).
        conn.pragma_update(None, "cache_size", -16384)
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let ring = segments::open(&mut conn, event_cap).map_err(db_err)?;
        conn.execute_batch(SCHEMA_ACTIVITY_FEEDBACK)
            .map_err(db_err)?;
        conn.execute_batch(configurations::SCHEMA).map_err(db_err)?;
        add_column(
            &conn,
            "feedback",
            "deliveries",
            "INTEGER NOT NULL DEFAULT 0",
        )?;
        conn.execute_batch(files::SCHEMA).map_err(db_err)?;
        let activity = Arc::new(crate::activity::Tracker::default());
        activity.load(q::activity_rows(&conn)?);
        let conn = Arc::new(Mutex::new(conn));
        start_activity_flusher(&conn, &activity)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queue_room = Arc::new(Semaphore::new(QUEUE_MESSAGES));
        let (wconn, room) = (conn.clone(), queue_room.clone());
        let (committed_tx, events_committed) = watch::channel(0);
        let checkpoints = Arc::new(Checkpoints::default());
        if let Some(p) = path {
            start_checkpointer(p.to_path_buf(), &checkpoints)
                .map_err(|e| HubError::Store(e.to_string()))?;
        }
        let ckpt = checkpoints.clone();
        let handle = std::thread::Builder::new()
            .name("azsim-hub-events".into())
            .spawn(move || event_writer(wconn, rx, room, ring, committed_tx, ckpt))
            .map_err(|e| HubError::Store(e.to_string()))?;
        Ok(Store {
            conn,
            events_tx: tx,
            queue_room,
            writer: Arc::new(Mutex::new(Some(handle))),
            activity,
            events_committed,
            checkpoints,
            calls: Arc::new(Semaphore::new(CALLS_AT_ONCE)),
        })
    }

    /// Run `f` on the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, HubError> + Send + 'static,
    {
        let conn = self.conn.clone();
        // Waits for a place without a thread (see `CALLS_AT_ONCE`).
        let place = self
            .calls
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HubError::Store("store closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _place = place;
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| HubError::Store(format!("store task failed: {e}")))?
    }

    /// Queue a telemetry message for the log, nobody waiting for its commit (a will, a QoS 0
    /// message). Waits only when the writer is far behind; false when the writer is gone.
    pub async fn log_event(&self, record: D2cRecord) -> bool {
        self.queue(1).await && self.events_tx.send(WriterMsg::Event(record, None)).is_ok()
    }

    /// Waits for room for `n` messages in the writer's queue and takes it.
    async fn queue(&self, n: usize) -> bool {
        match self.queue_room.acquire_many(n as u32).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Queue the messages of `batch` (emptying it) in their order. Waits only when the writer
    /// is far behind; false when the writer is gone (they will never be committed).
    pub async fn log_batch(&self, batch: &mut EventBatch) -> bool {
        let events = std::mem::take(&mut batch.0);
        if events.is_empty() {
            return true;
        }
        self.queue(events.len()).await && self.events_tx.send(WriterMsg::Events(events)).is_ok()
    }

    /// Queue a telemetry message whose commit `commits` reports as number `seq` (one more than
    /// the last number this `commits` was given). Waits only when the writer is far behind;
    /// false when the writer is gone (the message will never be committed).
    pub async fn log_acked(&self, record: D2cRecord, commits: &Arc<Commits>, seq: u64) -> bool {
        let note = AckNote {
            commits: commits.clone(),
            seq,
        };
        self.queue(1).await
            && self
                .events_tx
                .send(WriterMsg::Event(record, Some(note)))
                .is_ok()
    }

    /// Changes after each committed telemetry transaction.
    pub fn events_committed(&self) -> watch::Receiver<u64> {
        self.events_committed.clone()
    }

    /// Wait until every event queued so far is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.events_tx.send(WriterMsg::Flush(tx)).is_ok() {
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
        self.checkpoints.stopped.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Origin;

    fn record(n: i64) -> D2cRecord {
        D2cRecord {
            origin: Arc::new(Origin {
                device_id: "d1".into(),
                module_id: None,
                generation_id: "g".into(),
                auth: crate::telemetry::AuthMethod::IdentityKey,
            }),
            enqueued_ns: n,
            properties: String::new(),
            body: n.to_string().into_bytes(),
            source: crate::routing::Source::Telemetry,
        }
    }

    /// 50 calls queued behind one that holds the connection: without the places of
    /// `CALLS_AT_ONCE` each would take a blocking thread of its own at once (51 threads, seen
    /// as 51 distinct thread ids); with them, a few threads serve all in turn.
    #[tokio::test]
    async fn calls_waiting_for_the_connection_do_not_each_take_a_thread() {
        let store = Arc::new(Store::open(None, 100).unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (holding_tx, holding) = oneshot::channel();
        let holder = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(move |_| {
                        let _ = holding_tx.send(());
                        let _ = held.recv();
                        Ok(std::thread::current().id())
                    })
                    .await
            }
        });
        holding.await.unwrap();
        let (polled_tx, mut polled) = mpsc::unbounded_channel();
        let waiting: Vec<_> = (0..50)
            .map(|_| {
                let (store, polled_tx) = (store.clone(), polled_tx.clone());
                tokio::spawn(async move {
                    let mut call = Box::pin(store.call(|_| Ok(std::thread::current().id())));
                    let first =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx)))
                            .await;
                    let _ = polled_tx.send(());
                    match first {
                        std::task::Poll::Ready(r) => r,
                        std::task::Poll::Pending => call.await,
                    }
                })
            })
            .collect();
        // Every call has started (and, without the places, been handed to a thread).
        for _ in 0..50 {
            polled.recv().await.unwrap();
        }
        release.send(()).unwrap();
        let mut threads = std::collections::HashSet::new();
        threads.insert(holder.await.unwrap().unwrap());
        for w in waiting {
            threads.insert(w.await.unwrap().unwrap());
        }
        assert!(threads.len() < 25, "{} blocking threads", threads.len());
    }

    #[tokio::test]
    async fn a_connection_hears_of_its_messages_once_their_transaction_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(&dir.path().join("hub.db")), 100).unwrap();
        let (a, b) = (Arc::new(Commits::default()), Arc::new(Commits::default()));
        assert_eq!(a.committed(), 0);
        for seq in 1..=3 {
            assert!(store.log_acked(record(seq), &a, seq as u64).await);
        }
        assert!(store.log_acked(record(9), &b, 1).await);
        assert!(store.log_event(record(10)).await);
        for (commits, last) in [(&a, 3), (&b, 1)] {
            while commits.committed() < last {
                commits.changed().await;
            }
            assert!(!commits.failed());
        }
        // What the writer reported committed is in the log, read on another connection.
        let n: i64 = rusqlite::Connection::open(dir.path().join("hub.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert!(n >= 4, "{n} rows");
        store.close().await;
    }

    #[tokio::test]
    async fn batches_past_the_queue_size_are_all_committed_in_order() {
        let store = Store::open(None, 100_000).unwrap();
        let a = Arc::new(Commits::default());
        let n = QUEUE_MESSAGES as u64 + 100;
        let mut batch = EventBatch::default();
        for seq in 1..=n {
            // A QoS 0 message between acknowledged ones takes no number.
            if seq % 100 == 0 {
                batch.push(record(-1), None);
            }
            batch.push(record(seq as i64), Some((&a, seq)));
            if batch.is_full() || seq == n {
                // Waits for room once the queue is full: the writer must give it back.
                let sent = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    store.log_batch(&mut batch),
                );
                assert!(sent.await.expect("queue room given back"));
                assert!(batch.is_empty());
            }
        }
        while a.committed() < n {
            a.changed().await;
        }
        assert!(!a.failed());
        let (rows, in_order): (i64, bool) = store
            .call(|c| {
                let mut st = c
                    .prepare("SELECT body FROM events ORDER BY seq")
                    .map_err(db_err)?;
                let bodies: Vec<i64> = st
                    .query_map([], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(db_err)?
                    .map(|b| String::from_utf8(b.unwrap()).unwrap().parse().unwrap())
                    .filter(|&b| b >= 0)
                    .collect();
                Ok((bodies.len() as i64, bodies.windows(2).all(|w| w[0] < w[1])))
            })
            .await
            .unwrap();
        assert_eq!(rows, n as i64);
        assert!(in_order);
        store.close().await;
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_telemetry_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let store = Store::open(Some(&db), 100_000).unwrap();
        let a = Arc::new(Commits::default());
        let n = 12_000u64;
        let mut batch = EventBatch::default();
        let body = "x".repeat(200);
        for seq in 1..=n {
            let mut r = record(seq as i64);
            r.body = body.clone().into_bytes();
            batch.push(r, Some((&a, seq)));
            if batch.is_full() || seq == n {
                assert!(store.log_batch(&mut batch).await);
            }
        }
        while a.committed() < n {
            a.changed().await;
        }
        // The hub's connection never checkpoints (wal_autocheckpoint=0): only the checkpointer
        // thread moves the ~2.4 MB of rows from the WAL into hub.db.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
            if size > 2_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hub.db still {size} bytes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.close().await;
    }

    /// The numbers (`seq`) of the retained messages, oldest first, read through the view.
    async fn retained(store: &Store) -> Vec<i64> {
        store
            .call(|c| {
                let mut st = c
                    .prepare("SELECT seq FROM events ORDER BY seq")
                    .map_err(db_err)?;
                st.query_map([], |r| r.get(0))
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(db_err)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_log_keeps_its_cap_by_emptying_whole_segments_and_numbers_on_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let cap = 70; // 10 rows per segment
        let store = Store::open(Some(&db), cap).unwrap();
        let a = Arc::new(Commits::default());
        // Batches of odd sizes, so inserts span segment ends.
        let mut seq = 0u64;
        for size in [1, 7, 33, 64, 5, 64, 64, 2, 41] {
            let mut batch = EventBatch::default();
            for _ in 0..size {
                seq += 1;
                batch.push(record(seq as i64), Some((&a, seq)));
            }
            assert!(store.log_batch(&mut batch).await);
            store.flush().await;
            let kept = retained(&store).await;
            assert!(
                kept.len() >= cap.min(seq as usize) && kept.len() <= cap + 10,
                "{} kept after {seq}",
                kept.len()
            );
            // The newest, numbered one after another from 1.
            assert_eq!(*kept.last().unwrap(), seq as i64);
            assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        }
        assert!(seq > 3 * cap as u64, "the ring went round");
        store.close().await;
        drop(store);

        // Reopened (with another cap): the numbers go on, none is given twice.
        let store = Store::open(Some(&db), 20).unwrap();
        assert!(store.log_event(record(0)).await);
        store.flush().await;
        let kept = retained(&store).await;
        assert_eq!(*kept.last().unwrap(), seq as i64 + 1);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        // The messages themselves, newest first through the REST query.
        let recent = store
            .call(|c| q::recent_events(c, Some("d1"), 3))
            .await
            .unwrap();
        assert_eq!(recent.len(), 3);
        let last: serde_json::Value = serde_json::from_str(&recent[2]).unwrap();
        assert_eq!(last["body"], "0");
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_transaction_is_reported_and_nothing_counts_as_committed() {
        let store = Store::open(None, 100).unwrap();
        // Make the insert fail: the tables it writes are gone.
        store
            .call(|c| {
                for t in segments::TABLES {
                    c.execute_batch(&format!("DROP TABLE {t};"))
                        .map_err(db_err)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let a = Arc::new(Commits::default());
        assert!(store.log_acked(record(1), &a, 1).await);
        a.changed().await;
        assert!(a.failed());
        assert_eq!(a.committed(), 0);
    }
}
