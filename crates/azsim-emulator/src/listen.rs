//! What both listeners (MQTT and HTTPS) do before a connection is anyone's: accept without
//! spinning when the process is out of file descriptors, and admit at most
//! `HubLimits::max_pre_auth_connections` connections that have not authenticated yet.
//!
//! An accept error such as `EMFILE` repeats at once for as long as the descriptors are used up,
//! so the loop sleeps between attempts (10 ms doubling to 1 s, back to 10 ms after a success)
//! and logs the first error and then at most one line per [`LOG_EVERY`] with the number of
//! failures since.
//!
//! At the pre-auth cap the gate stops accepting until a place frees (a connection
//! authenticates, fails or reaches its connect deadline): new connections wait in the kernel's
//! listen backlog, where they hold none of the hub's descriptors or memory, and are served in
//! the order they came. A burst of devices (a fleet starting, 1,000 SDK clients opened at once)
//! is served a little later instead of being refused, as Azure serves it; clients that stall
//! before authenticating delay others by at most the connect deadline. Reaching the cap is
//! logged the same throttled way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// At most one log line per this long for repeated accept errors or refusals.
const LOG_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Counts a repeating condition and says so in the log at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct Throttled {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Throttled {
    /// Counts one occurrence; `Some(n)` when it is time to log, `n` counting this one and those
    /// not logged since the last line.
    fn hit(&mut self) -> Option<u64> {
        self.since_log += 1;
        let now = Instant::now();
        if self.last_log.is_some_and(|t| now < t + LOG_EVERY) {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.since_log))
    }
}

/// One listener, its pre-auth cap and its error backoff.
#[derive(Debug)]
pub(crate) struct Gate {
    listener: TcpListener,
    /// `mqtt` or `https`, for the log.
    name: &'static str,
    pre_auth: Arc<Semaphore>,
    backoff: Duration,
    errors: Throttled,
    /// Times the cap was reached (new connections left waiting in the backlog).
    at_cap: Throttled,
}

/// An accepted connection and its place among the unauthenticated ones; drop the permit once
/// the connection has authenticated.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

impl Gate {
    pub(crate) fn new(listener: TcpListener, name: &'static str, max_pre_auth: usize) -> Gate {
        Gate {
            listener,
            name,
            pre_auth: Arc::new(Semaphore::new(max_pre_auth.min(Semaphore::MAX_PERMITS))),
            backoff: BACKOFF_MIN,
            errors: Throttled::default(),
            at_cap: Throttled::default(),
        }
    }

    /// The next connection, accepted once it fits under the pre-auth cap (until then the
    /// listener is not read: see the module docs).
    pub(crate) async fn next(&mut self) -> Admitted {
        let permit = match self.pre_auth.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(n) = self.at_cap.hit() {
                    tracing::warn!(
                        listener = self.name,
                        times = n,
                        "at the cap on unauthenticated connections: new connections wait in the listen backlog until one authenticates, fails or times out"
                    );
                }
                match self.pre_auth.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // The gate owns the semaphore and never closes it.
                    Err(_) => unreachable!("the pre-auth semaphore is never closed"),
                }
            }
        };
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if let Some(n) = self.errors.hit() {
                        tracing::warn!(listener = self.name, error = %e, failures = n, retry_ms = self.backoff.as_millis() as u64, "accept failed; backing off");
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            self.backoff = BACKOFF_MIN;
            // Without NODELAY every TLS handshake stalls ~40 ms on delayed ACKs.
            let _ = tcp.set_nodelay(true);
            return Admitted { tcp, peer, permit };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeating_condition_is_logged_once_per_period_with_its_count() {
        let mut t = Throttled::default();
        assert_eq!(t.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(t.hit(), None);
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(t.hit(), Some(100));
        assert_eq!(t.hit(), None);
    }
}
