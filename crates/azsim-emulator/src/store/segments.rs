//! The telemetry log's tables: a ring of [`SEGMENTS`] tables `events_0` .. `events_7`. The
//! writer (`event_log.rs`) fills one segment up to its size (the cap over `SEGMENTS - 1`), then
//! empties the next one in the ring with a `DELETE` without `WHERE` (SQLite's truncate
//! optimisation: its pages go back to the free list, no row is deleted one by one) and fills
//! that. So the log keeps at least the cap's messages (the other `SEGMENTS - 1` full segments)
//! and at most a segment more, and trimming it costs about nothing per message: a range
//! `DELETE` of the oldest rows of one table (every 256 rows) cost 0.6-0.7 us per message, most
//! of the writer's time, in SQLite deleting and rebalancing rows.
//!
//! Every message keeps its sequence number (`seq`, its Event Hubs offset): the writer assigns
//! them, one more per message, from one more than the highest ever given (the highest retained,
//! or `seq_floor` in `event_log_meta`, written when a segment is emptied), so they grow across
//! restarts and are never reused. A view `events` over all segments (`UNION ALL`) keeps every
//! reader of the single table that came before (queries by `seq`, `device_id`, `source`, and
//! `sqlite3` users) working; the hot queries go to the segments themselves ([`spans`]).
//!
//! A database from before the segments (one `events` table, AUTOINCREMENT) is moved over once
//! on open: its rows go into `events_0` with their numbers, its sequence (from
//! `sqlite_sequence`) becomes the floor, and the table is dropped.

use rusqlite::{Connection, OptionalExtension, params};

/// How many segment tables the ring has.
pub(crate) const SEGMENTS: usize = 8;

/// The segment tables' names, in ring order.
pub(crate) const TABLES: [&str; SEGMENTS] = [
    "events_0", "events_1", "events_2", "events_3", "events_4", "events_5", "events_6", "events_7",
];

/// A message row's columns, in the order of the table that came before the segments (and of
/// the view `events`). `json` is '' for rows kept as received (rendered when read, see
/// `telemetry.rs`); rows of the first schema have their JSON text there.
pub(crate) const COLUMNS: &str =
    "seq, device_id, json, module_id, generation_id, enqueued_ns, props, body, source";

/// One segment's table definition (`{t}` is its name).
const SEGMENT_TABLE: &str = "CREATE TABLE IF NOT EXISTS {t} (
  seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, json TEXT NOT NULL, module_id TEXT,
  generation_id TEXT, enqueued_ns INTEGER, props TEXT, body BLOB,
  -- NULL for telemetry; the `iothub-message-source` of an event routed by the hub.
  source TEXT,
  -- How the sender's connection signed in (`telemetry::AuthMethod::code`); NULL in rows from
  -- before the column, read as a SAS token of the identity's own key.
  auth_method INTEGER);";

/// The columns the single `events` table gained after its first schema `(seq, device_id,
/// json)`: a database from then has them added before its rows move (see [`migrate`]).
const LATER_COLUMNS: [(&str, &str); 6] = [
    ("module_id", "TEXT"),
    ("generation_id", "TEXT"),
    ("enqueued_ns", "INTEGER"),
    ("props", "TEXT"),
    ("body", "BLOB"),
    ("source", "TEXT"),
];

/// The segment a message goes to and the numbers the writer goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ring {
    /// The segment being filled (an index into [`TABLES`]).
    pub slot: usize,
    /// Rows in it.
    pub rows: usize,
    /// Rows a segment takes before the writer moves to the next.
    pub per_segment: usize,
    /// The `seq` of the next message.
    pub next_seq: i64,
}

impl Ring {
    /// Rows per segment for a log of at least `cap` messages: the other `SEGMENTS - 1` full
    /// segments hold the cap.
    pub fn per_segment(cap: usize) -> usize {
        cap.max(1).div_ceil(SEGMENTS - 1)
    }
}

/// One segment's retained range of `seq` (it holds every number in it: the writer numbers
/// consecutively and empties a segment only whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub slot: usize,
    pub first: i64,
    pub last: i64,
}

impl Span {
    pub fn table(&self) -> &'static str {
        TABLES[self.slot]
    }
}

/// The non-empty segments, oldest first.
pub(crate) fn spans(c: &Connection) -> rusqlite::Result<Vec<Span>> {
    let sql = TABLES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("SELECT {i}, MIN(seq), MAX(seq) FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut stmt = c.prepare_cached(&sql)?;
    let mut out: Vec<Span> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, usize>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?
        .filter_map(|r| match r {
            Ok((slot, Some(first), Some(last))) => Some(Ok(Span { slot, first, last })),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<_>>()?;
    out.sort_by_key(|s| s.first);
    Ok(out)
}

/// The segment holding `seq`, among `spans`.
pub(crate) fn segment_of(spans: &[Span], seq: i64) -> Option<&Span> {
    spans.iter().find(|s| s.first <= seq && seq <= s.last)
}

/// Creates the segments, the meta table and the view `events` (moving a single `events` table
/// over first), and finds where the writer goes on, for a log capped at `cap` messages.
pub(crate) fn open(c: &mut Connection, cap: usize) -> rusqlite::Result<Ring> {
    let tx = c.transaction()?;
    for t in TABLES {
        tx.execute_batch(&SEGMENT_TABLE.replace("{t}", t))?;
        // Segments made before `auth_method` get it (older rows read NULL).
        let has_auth: bool = tx.query_row(
            &format!(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('{t}') WHERE name = 'auth_method'"
            ),
            [],
            |r| r.get(0),
        )?;
        if !has_auth {
            tx.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN auth_method INTEGER;"))?;
        }
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS event_log_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )?;
    let old_table: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'events' AND type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if old_table {
        let moved = migrate(&tx)?;
        tracing::info!(
            messages = moved,
            "event log: moved the single events table into the segmented log (once)"
        );
    }
    let view = TABLES
        .iter()
        .map(|t| format!("SELECT {COLUMNS} FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    tx.execute_batch(&format!("CREATE VIEW IF NOT EXISTS events AS {view};"))?;
    let ring = ring(&tx, cap)?;
    tx.commit()?;
    Ok(ring)
}

/// Where the writer goes on: the segment holding the newest message (the first one when the
/// log is empty), and one past the highest number ever given.
fn ring(c: &Connection, cap: usize) -> rusqlite::Result<Ring> {
    let spans = spans(c)?;
    let floor: i64 = c
        .query_row(
            "SELECT value FROM event_log_meta WHERE name = 'seq_floor'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let newest = spans.iter().max_by_key(|s| s.last);
    let (slot, rows) = match newest {
        Some(s) => {
            let rows: i64 =
                c.query_row(&format!("SELECT COUNT(*) FROM {}", s.table()), [], |r| {
                    r.get(0)
                })?;
            (s.slot, usize::try_from(rows).unwrap_or(0))
        }
        None => (0, 0),
    };
    let last = newest.map_or(0, |s| s.last);
    Ok(Ring {
        slot,
        rows,
        per_segment: Ring::per_segment(cap),
        next_seq: last.max(floor) + 1,
    })
}

/// Records that every number up to `seq` has been given (kept when its rows are gone).
pub(crate) fn set_floor(c: &Connection, seq: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO event_log_meta (name, value) VALUES ('seq_floor', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![seq])
    .map(drop)
}

/// Moves the rows of the single `events` table into `events_0` (numbers kept), keeps its
/// sequence as the floor and drops it. Returns how many rows moved.
fn migrate(c: &Connection) -> rusqlite::Result<usize> {
    let have: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('events')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, ty) in LATER_COLUMNS {
        if !have.iter().any(|h| h == name) {
            c.execute_batch(&format!("ALTER TABLE events ADD COLUMN {name} {ty};"))?;
        }
    }
    let sequence: Option<i64> = if c.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )? {
        c.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    let max: Option<i64> = c.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    let moved = c.execute(
        &format!("INSERT INTO events_0 ({COLUMNS}) SELECT {COLUMNS} FROM events ORDER BY seq"),
        [],
    )?;
    set_floor(c, sequence.unwrap_or(0).max(max.unwrap_or(0)))?;
    c.execute_batch("DROP TABLE events;")?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_hold_the_cap_in_all_but_one() {
        assert_eq!(Ring::per_segment(10_000), 1429);
        assert!(Ring::per_segment(10_000) * (SEGMENTS - 1) >= 10_000);
        assert_eq!(Ring::per_segment(3), 1);
        assert_eq!(Ring::per_segment(0), 1);
    }

    #[test]
    fn a_single_events_table_moves_over_with_its_numbers_and_sequence() {
        let mut c = Connection::open_in_memory().unwrap();
        // The first schema, three rows of which the newest two were trimmed away: the next
        // number is still past them.
        c.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             device_id TEXT NOT NULL, json TEXT NOT NULL); \
             INSERT INTO events (device_id, json) VALUES ('a', '{}'), ('b', '{}'), ('c', '{}'); \
             DELETE FROM events WHERE seq > 1;",
        )
        .unwrap();
        let ring = open(&mut c, 100).unwrap();
        assert_eq!(ring.next_seq, 4);
        assert_eq!((ring.slot, ring.rows), (0, 1));
        let rows: Vec<(i64, String)> = c
            .prepare("SELECT seq, device_id FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, [(1, "a".to_string())]);
        let tables: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events' AND type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the old table is gone, the view took its name");
        // Opening again changes nothing.
        assert_eq!(open(&mut c, 100).unwrap(), ring);
    }

    #[test]
    fn segments_from_before_auth_method_get_the_column_and_keep_their_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE events_0 (seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, \
             json TEXT NOT NULL, module_id TEXT, generation_id TEXT, enqueued_ns INTEGER, \
             props TEXT, body BLOB, source TEXT); \
             INSERT INTO events_0 (seq, device_id, json) VALUES (5, 'old', '');",
        )
        .unwrap();
        assert_eq!(open(&mut c, 70).unwrap().next_seq, 6);
        let old: Option<i64> = c
            .query_row("SELECT auth_method FROM events_0 WHERE seq = 5", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(old, None, "an older row reads NULL");
        c.execute_batch(
            "INSERT INTO events_1 (seq, device_id, json, auth_method) VALUES (6, 'x', '', 2);",
        )
        .unwrap();
        open(&mut c, 70).unwrap();
    }

    #[test]
    fn the_writer_goes_on_in_the_segment_of_the_newest_message() {
        let mut c = Connection::open_in_memory().unwrap();
        open(&mut c, 70).unwrap();
        c.execute_batch(
            "INSERT INTO events_6 (seq, device_id, json) VALUES (20, 'a', ''), (21, 'a', ''); \
             INSERT INTO events_7 (seq, device_id, json) VALUES (30, 'a', '');",
        )
        .unwrap();
        set_floor(&c, 25).unwrap();
        let ring = open(&mut c, 70).unwrap();
        assert_eq!(
            ring,
            Ring {
                slot: 7,
                rows: 1,
                per_segment: 10,
                next_seq: 31
            }
        );
        let s = spans(&c).unwrap();
        assert_eq!(s.iter().map(|s| s.slot).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(segment_of(&s, 21).map(|s| s.table()), Some("events_6"));
        assert_eq!(segment_of(&s, 25), None);
        assert_eq!(s[0].first, 20);
        // With everything gone, the floor keeps the numbers from being given again.
        c.execute_batch("DELETE FROM events_6; DELETE FROM events_7;")
            .unwrap();
        assert_eq!(open(&mut c, 70).unwrap().next_seq, 26);
    }
}
