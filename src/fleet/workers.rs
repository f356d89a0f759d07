//! The threads the fleet's devices run on: one single-threaded tokio runtime per thread, each
//! device task on one of them for its whole life (round robin).
//!
//! Why not the process's multi-threaded runtime: a device is a few microseconds of work per
//! message, and under work stealing most of a message's cost was the runtime's, not the
//! device's: a parked worker woken with a futex for each timer or PUBACK another worker's
//! driver saw (about 0.8 futex calls per message at 1,000 devices x 1/s, a third of the
//! fleet's system time). On its own thread a device's timer, socket readiness and task all
//! live with one driver, and nothing wakes another thread. Devices share nothing per message
//! but relaxed atomic counters.

use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Single-threaded runtimes on their own threads (or the caller's runtime); dropping this lets them finish (their
/// threads drop what is left of their tasks).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    next: usize,
}

/// `--threads` when not given: one. Measured at 100 and 1,000 devices sending every second
/// or every 100 ms, one thread costs the least CPU per message (no counter or channel cache
/// line moving between cores; bigger batches per wake-up); one thread carries well over the
/// 10,000 messages a second a hub on the same machine takes.
pub fn default_threads() -> usize {
    1
}

impl Workers {
    /// `n` threads named `fleet-{i}`; with 0, the devices share the calling (multi-threaded)
    /// runtime, as they did before these threads (kept to measure the two side by side).
    ///
    /// # Errors
    /// A runtime or thread could not be made (out of memory or threads), in words.
    pub fn new(n: usize) -> Result<Self, String> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        if n == 0 {
            handles.push(Handle::current());
        }
        for i in 0..n {
            let rt = Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a fleet runtime: {e}"))?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stops.push(tx);
            thread::Builder::new()
                .name(format!("fleet-{i}"))
                .spawn(move || {
                    // Drives the tasks spawned on this runtime until the pool is dropped.
                    let _ = rt.block_on(rx);
                })
                .map_err(|e| format!("cannot start a fleet thread: {e}"))?;
        }
        Ok(Self {
            handles,
            stops,
            next: 0,
        })
    }

    /// The runtime the next device goes to.
    pub fn next_handle(&mut self) -> &Handle {
        let i = self.next % self.handles.len();
        self.next = self.next.wrapping_add(1);
        &self.handles[i]
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_spread_over_the_threads_and_finish() {
        let mut w = Workers::new(2).unwrap();
        let mut names = std::collections::HashSet::new();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            set.spawn_on(
                async {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    thread::current().name().map(str::to_owned)
                },
                w.next_handle(),
            );
        }
        while let Some(r) = set.join_next().await {
            names.insert(r.unwrap().unwrap());
        }
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("fleet-")));
    }
}
