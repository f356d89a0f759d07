//! The telemetry log's writer thread: whatever telemetry has queued up while the last
//! transaction committed goes in as multi-row INSERTs in the next one (group commit), the
//! connections waiting for those messages are told (their PUBACKs go out then), and the log is
//! capped at its size by emptying its oldest segment whole (see `segments.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, watch};

use super::segments::{Ring, SEGMENTS, TABLES, set_floor};
use super::{AckNote, Commits, WriterMsg};
use crate::telemetry::D2cRecord;

/// The most messages in one transaction (a batch may pass it by one connection's read): a bound
/// on the writer's memory and on how long the first message of a batch waits for its PUBACK.
/// As large as the queue: with a disk whose fsync is slow (a busy machine: 5-100 ms), the
/// commit rate is what bounds the ingest, so a transaction takes everything that queued up.
const MAX_BATCH: usize = super::QUEUE_MESSAGES;

/// Telemetry rows per multi-row INSERT: one statement run per this many messages.
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO {table} ... VALUES (...)` with `rows` rows of [`bind_event`]'s 9 parameters.
fn insert_events_sql(table: &str, rows: usize) -> String {
    let mut sql = format!(
        "INSERT INTO {table} (seq, device_id, json, module_id, generation_id, enqueued_ns, \
         props, body, source, auth_method) VALUES "
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, '', ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// Binds message number `seq` to parameters `base + 1 ..= base + 9` of an insert from
/// [`insert_events_sql`].
fn bind_event(
    stmt: &mut rusqlite::CachedStatement<'_>,
    base: usize,
    seq: i64,
    (r, _): &(D2cRecord, Option<AckNote>),
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(base + 1, seq)?;
    stmt.raw_bind_parameter(base + 2, &r.origin.device_id)?;
    stmt.raw_bind_parameter(base + 3, &r.origin.module_id)?;
    stmt.raw_bind_parameter(base + 4, &r.origin.generation_id)?;
    stmt.raw_bind_parameter(base + 5, r.enqueued_ns)?;
    stmt.raw_bind_parameter(base + 6, &r.properties)?;
    stmt.raw_bind_parameter(base + 7, &r.body)?;
    stmt.raw_bind_parameter(base + 8, r.source.column())?;
    stmt.raw_bind_parameter(base + 9, r.origin.auth.code())
}

/// Each segment's two inserts: [`ROWS_PER_INSERT`] rows, and one.
struct Inserts([(String, String); SEGMENTS]);

impl Inserts {
    fn new() -> Inserts {
        Inserts(TABLES.map(|t| {
            (
                insert_events_sql(t, ROWS_PER_INSERT),
                insert_events_sql(t, 1),
            )
        }))
    }
}

/// Writes `events` into the log from where `ring` is, moving to (and emptying) the next
/// segment whenever one is full; `ring` is left where the next message goes.
fn insert(
    tx: &rusqlite::Transaction<'_>,
    sql: &Inserts,
    ring: &mut Ring,
    events: &[(D2cRecord, Option<AckNote>)],
) -> rusqlite::Result<()> {
    let mut rest = events;
    while !rest.is_empty() {
        if ring.rows >= ring.per_segment {
            // Every number so far stays given, also once the segments holding it are emptied.
            set_floor(tx, ring.next_seq - 1)?;
            ring.slot = (ring.slot + 1) % SEGMENTS;
            ring.rows = 0;
            // No WHERE: SQLite's truncate optimisation frees the table's pages whole.
            tx.prepare_cached(&format!("DELETE FROM {}", TABLES[ring.slot]))?
                .execute([])?;
        }
        let n = rest.len().min(ring.per_segment - ring.rows);
        let (now, later) = rest.split_at(n);
        let (many_sql, one_sql) = &sql.0[ring.slot];
        let mut many = tx.prepare_cached(many_sql)?;
        let mut chunks = now.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut chunks {
            for (i, r) in chunk.iter().enumerate() {
                bind_event(&mut many, i * 9, ring.next_seq + i as i64, r)?;
            }
            many.raw_execute()?;
            ring.next_seq += ROWS_PER_INSERT as i64;
        }
        let mut one = tx.prepare_cached(one_sql)?;
        for r in chunks.remainder() {
            bind_event(&mut one, 0, ring.next_seq, r)?;
            one.raw_execute()?;
            ring.next_seq += 1;
        }
        ring.rows += n;
        rest = later;
    }
    Ok(())
}

pub(super) fn event_writer(
    conn: Arc<Mutex<Connection>>,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    room: Arc<Semaphore>,
    mut ring: Ring,
    committed: watch::Sender<u64>,
    checkpoints: Arc<Checkpoints>,
) {
    let sql = Inserts::new();
    let mut events = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    // No waiting for more to gather: while one transaction commits, the next batch queues up
    // in the channel, so the batches grow with the load and a lone message is not delayed.
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                WriterMsg::Event(r, note) => {
                    events.push((r, note));
                    room.add_permits(1);
                }
                WriterMsg::Events(mut v) => {
                    room.add_permits(v.len());
                    events.append(&mut v);
                }
                WriterMsg::Flush(f) => flushes.push(f),
            }
            if events.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty() {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let before = ring.clone();
            let result = (|| -> rusqlite::Result<()> {
                let tx = guard.transaction()?;
                insert(&tx, &sql, &mut ring, &events)?;
                tx.commit()
            })();
            if result.is_err() {
                // Rolled back: the segment emptied (if any) is whole again, the numbers free.
                ring = before;
            }
            if let Err(e) = &result {
                tracing::warn!(error = %e, "event log write failed");
            }
            drop(guard);
            if result.is_ok() {
                checkpoints
                    .rows
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                committed.send_modify(|n| *n = n.wrapping_add(1));
            }
            tell_waiters(&events, result.is_ok());
            events.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// After a batch's transaction: raise each waiting connection's committed number (or mark it
/// failed) and wake it, once per run of its messages. A connection's messages come in its own
/// order, so its numbers only grow within the batch.
fn tell_waiters(events: &[(D2cRecord, Option<AckNote>)], committed: bool) {
    let mut prev: Option<&Arc<Commits>> = None;
    for note in events.iter().filter_map(|(_, n)| n.as_ref()) {
        if committed {
            note.commits.committed.fetch_max(note.seq, Ordering::AcqRel);
        } else {
            note.commits.failed.store(true, Ordering::Release);
        }
        if let Some(p) = prev
            && !Arc::ptr_eq(p, &note.commits)
        {
            p.changed.notify_one();
        }
        prev = Some(&note.commits);
    }
    if let Some(p) = prev {
        p.changed.notify_one();
    }
}

/// What the checkpointer thread ([`start_checkpointer`]) goes by: telemetry rows committed
/// since its last checkpoint, and whether the store has closed.
#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    rows: AtomicU64,
    pub(super) stopped: AtomicBool,
}

/// Telemetry rows after which the checkpointer copies the WAL into the database: about the
/// 1000 pages of SQLite's own automatic checkpoint, which it replaces.
const CHECKPOINT_ROWS: u64 = 10_000;

/// Every write is checkpointed within this long, also with little telemetry (registry, twins).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// A thread with its own connection to the database file at `path` that checkpoints the WAL
/// (`PRAGMA wal_checkpoint(PASSIVE)`: copy what it can, never wait for a writer), so the
/// telemetry writer's commits do not run SQLite's automatic checkpoint (a copy of the WAL into
/// the database and an fsync of it) before their PUBACKs go out; the hub's connection has
/// `wal_autocheckpoint` off. Durability is the same: a commit is in the WAL (fsynced with
/// `synchronous=FULL`) before it is reported. The thread ends when the store closes or is
/// dropped.
pub(super) fn start_checkpointer(path: PathBuf, state: &Arc<Checkpoints>) -> std::io::Result<()> {
    let state: Weak<Checkpoints> = Arc::downgrade(state);
    std::thread::Builder::new()
        .name("azsim-hub-ckpt".into())
        .spawn(move || {
            let conn = match Connection::open(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpointer: cannot open the database");
                    return;
                }
            };
            let _ = conn.busy_timeout(Duration::from_secs(5));
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let Some(st) = state.upgrade() else { return };
                if st.stopped.load(Ordering::Acquire) {
                    return;
                }
                let rows = st.rows.load(Ordering::Relaxed);
                if rows < CHECKPOINT_ROWS && last.elapsed() < CHECKPOINT_EVERY {
                    continue;
                }
                st.rows.fetch_sub(rows, Ordering::Relaxed);
                drop(st);
                last = Instant::now();
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map(drop)
}
