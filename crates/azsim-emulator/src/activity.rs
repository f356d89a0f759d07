//! Per-identity activity times for the registry and twin JSON: `lastActivityTime` (the identity
//! connected, sent anything or acknowledged a C2D message) and `connectionStateUpdatedTime`
//! (the last connect or disconnect, kept after the device goes away).
//!
//! The hot path (every D2C publish) stores one timestamp (read from the hub's clock by the
//! caller) into an atomic of the connection's [`Cell`]; nothing touches SQLite there. The store writes the cells that changed in one
//! transaction every [`FLUSH_EVERY`] and once more when it closes, and loads them on open, so
//! a restart keeps the times and at most one flush interval is lost on a crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often changed activity times are written to the database.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// The activity times of one identity (device or module), shared by its live connection.
#[derive(Debug, Default)]
pub struct Cell {
    last_us: AtomicI64,
    state_us: AtomicI64,
}

impl Cell {
    /// The identity sent or acknowledged something at `now_us` (Unix microseconds, from the
    /// hub's clock).
    pub fn touch(&self, now_us: i64) {
        self.last_us.store(now_us, Ordering::Relaxed);
    }

    /// The identity connected at `now_us` (a connect is also activity).
    pub fn connected(&self, now_us: i64) {
        self.state_us.store(now_us, Ordering::Relaxed);
        self.last_us.store(now_us, Ordering::Relaxed);
    }

    /// The identity's connection ended at `now_us`.
    pub fn disconnected(&self, now_us: i64) {
        self.state_us.store(now_us, Ordering::Relaxed);
    }

    /// `(last activity, connection state updated)` in microseconds; 0 when never.
    pub fn times(&self) -> (i64, i64) {
        (
            self.last_us.load(Ordering::Relaxed),
            self.state_us.load(Ordering::Relaxed),
        )
    }
}

/// Every identity's [`Cell`], by client id (`device` or `device/module`).
#[derive(Debug, Default)]
pub struct Tracker {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    /// What the database holds, so a flush writes only what changed.
    persisted: Mutex<HashMap<String, (i64, i64)>>,
    pub(crate) stopped: AtomicBool,
}

impl Tracker {
    /// The cell of `client_id`, created on first use.
    pub fn cell(&self, client_id: &str) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cells.get(client_id) {
            return c.clone();
        }
        let c = Arc::new(Cell::default());
        cells.insert(client_id.to_string(), c.clone());
        c
    }

    /// `(last activity, connection state updated)` of `client_id` in microseconds; 0 when never.
    pub fn times(&self, client_id: &str) -> (i64, i64) {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .map_or((0, 0), |c| c.times())
    }

    /// Drop a deleted device (with its modules) or one module, so a new identity with the same
    /// id starts without history.
    pub fn forget(&self, device: &str, module: Option<&str>) {
        let hit = |cid: &str| match module {
            Some(m) => azsim_proto::username::parse_client_id(cid) == Some((device, Some(m))),
            None => crate::hub::is_device_or_its_module(cid, device),
        };
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !hit(k));
        self.persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !hit(k));
    }

    /// Fill from the database at start.
    pub(crate) fn load(&self, rows: Vec<(String, i64, i64)>) {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        for (cid, last, state) in rows {
            let c = Cell::default();
            c.last_us.store(last, Ordering::Relaxed);
            c.state_us.store(state, Ordering::Relaxed);
            cells.insert(cid.clone(), Arc::new(c));
            persisted.insert(cid, (last, state));
        }
    }

    /// The cells whose times differ from what the database holds.
    pub(crate) fn changed(&self) -> Vec<(String, i64, i64)> {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .iter()
            .filter_map(|(k, c)| {
                let t = c.times();
                (t != (0, 0) && persisted.get(k) != Some(&t)).then(|| (k.clone(), t.0, t.1))
            })
            .collect()
    }

    /// Record that `rows` are now in the database.
    pub(crate) fn mark_persisted(&self, rows: &[(String, i64, i64)]) {
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        for (k, l, s) in rows {
            persisted.insert(k.clone(), (*l, *s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_times_load_back_into_a_new_tracker() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(crate::store::SCHEMA).unwrap();
        c.execute_batch(crate::store::SCHEMA_ACTIVITY_FEEDBACK)
            .unwrap();
        let t = Tracker::default();
        t.cell("d1").connected(1_700_000_000_001_000);
        t.cell("d1").touch(1_700_000_000_002_000);
        t.cell("d2/m").disconnected(1_700_000_000_003_000);
        crate::store::q::flush_activity(&c, &t).unwrap();
        let again = Tracker::default();
        again.load(crate::store::q::activity_rows(&c).unwrap());
        assert_eq!(again.times("d1"), t.times("d1"));
        assert_eq!(again.times("d2/m"), t.times("d2/m"));
        assert!(again.changed().is_empty(), "loaded times count as saved");
        // A later change is written over the saved row.
        t.cell("d1").disconnected(1_700_000_000_004_000);
        crate::store::q::flush_activity(&c, &t).unwrap();
        let third = Tracker::default();
        third.load(crate::store::q::activity_rows(&c).unwrap());
        assert_eq!(third.times("d1"), t.times("d1"));
    }

    #[test]
    fn only_changed_cells_are_flushed_and_forget_spares_similar_ids() {
        let t = Tracker::default();
        t.cell("d1").connected(1_700_000_000_005_000);
        t.cell("d1/m").touch(1_700_000_000_006_000);
        t.cell("d10").touch(1_700_000_000_007_000);
        assert_eq!(t.changed().len(), 3);
        let rows = t.changed();
        t.mark_persisted(&rows);
        assert!(t.changed().is_empty());
        t.cell("d10").disconnected(1_700_000_000_008_000);
        assert_eq!(t.changed().len(), 1);
        t.forget("d1", None);
        assert_eq!(t.times("d1"), (0, 0));
        assert_eq!(t.times("d1/m"), (0, 0));
        assert_ne!(t.times("d10"), (0, 0));
    }
}
