//! The async driver: [`Client::run`] performs the steps the core decides.

use super::*;

impl<S: Sensor, Q: Storage, B: Buffer + ?Sized> Client<'_, S, Q, B> {
    /// Runs the device: connects through `connector` when the session asks, reconnects after
    /// failures with backoff, renews the token, sends telemetry, answers methods and desired
    /// patches, and tells `app` what happens. Returns `Ok(())` when `app` asked to stop (after
    /// a clean DISCONNECT), or the reason the session gave up (for example CONNACK 5 before the
    /// first connect, or an exhausted attempt budget).
    ///
    /// All protocol work happens in one synchronous step function; this driver only opens
    /// streams, writes what it encoded, and reads or sleeps, each at a single await point, so
    /// the stream's futures are inlined once.
    ///
    /// # Errors
    /// The [`GiveUpReason`] when the session stopped for good on its own.
    pub async fn run<C, K, A>(
        &mut self,
        connector: &mut C,
        clock: &mut K,
        app: &mut A,
    ) -> Result<(), GiveUpReason>
    where
        C: Connector,
        K: Clock,
        A: App,
    {
        let mut connect = false;
        loop {
            // Declared per round: the stream borrows the connector until the round ends.
            let mut conn = None;
            if connect {
                let stopping = self.core.stopping;
                // Opening, unless a stop is asked for first.
                let opened = {
                    let mut open = pin!(connector.connect());
                    let mut stop = pin!(app.wait_for_stop());
                    poll_fn(|cx| {
                        if let Poll::Ready(r) = open.as_mut().poll(cx) {
                            return Poll::Ready(Some(r));
                        }
                        if !stopping && stop.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        Poll::Pending
                    })
                    .await
                };
                match opened {
                    Some(Ok(c)) => {
                        conn = Some(c);
                        self.core.opened();
                    }
                    Some(Err(reason)) => self.core.failed(clock.now(), reason, app),
                    None => self.core.stop(clock.now()),
                }
            }
            match self.drive(conn.as_mut(), clock, app).await {
                Step::GiveUp(reason) => return Err(reason),
                Step::Closed => return Ok(()),
                step => connect = step == Step::Connect,
            }
        }
    }

    /// Performs steps over `conn` until the loop needs a new stream ([`Step::Connect`]), has
    /// no use for this one (a `Wait` without `read`), or stops.
    async fn drive<T, K, A>(&mut self, mut conn: Option<&mut T>, clock: &mut K, app: &mut A) -> Step
    where
        T: Read + Write,
        K: Clock,
        A: App,
    {
        loop {
            let now = clock.now();
            let step = self.core.step(now, self.rx.slice(), self.tx, app);
            match step {
                Step::Connect | Step::GiveUp(_) | Step::Closed => return step,
                Step::Wait { read: false, .. } if conn.is_some() => return step,
                Step::Write(n) => {
                    let bytes = self.tx.slice().get_mut(..n).unwrap_or_default();
                    let ok = match conn.as_deref_mut() {
                        Some(c) => c.write_all(bytes).await.is_ok() && c.flush().await.is_ok(),
                        None => false,
                    };
                    // Nothing sent stays behind: CONNECT carried the token.
                    bytes.fill(0);
                    if B::GROWS {
                        self.tx.relax();
                    }
                    if !ok {
                        self.core.failed(clock.now(), DisconnectReason::Lost, app);
                    }
                }
                Step::Wait { until, .. } => {
                    if B::GROWS && self.core.rx_len == 0 {
                        self.rx.relax();
                    }
                    let free = self
                        .rx
                        .slice()
                        .get_mut(self.core.rx_len..)
                        .unwrap_or_default();
                    let stopping = self.core.stopping;
                    let got = {
                        // Without a stream only the timer (or a stop) can finish.
                        let mut read = pin!(conn.as_deref_mut().map(|c| c.read(free)));
                        let mut sleep = pin!(clock.sleep_until(until));
                        let mut stop = pin!(app.wait_for_stop());
                        // Data first, then a stop (so a `--duration` ending with telemetry
                        // due at the same moment sends no more), then the timer.
                        poll_fn(|cx| {
                            if let Some(read) = read.as_mut().as_pin_mut()
                                && let Poll::Ready(got) = read.poll(cx)
                            {
                                // An error or the end of the stream ends the connection.
                                return Poll::Ready(Waited::Read(got.ok().filter(|&n| n > 0)));
                            }
                            if !stopping && stop.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Waited::Stop);
                            }
                            sleep.as_mut().poll(cx).map(|()| Waited::Time)
                        })
                        .await
                    };
                    match got {
                        Waited::Read(Some(n)) => {
                            self.core.rx_len += n;
                            // A packet longer than the buffer: room for all of it, if the
                            // buffer can grow (the core names it too large if not).
                            let rx = self.rx.slice();
                            if B::GROWS
                                && let Some(total) =
                                    wire::packet_len(rx.get(..self.core.rx_len).unwrap_or_default())
                                && total > rx.len()
                            {
                                self.rx.reserve(total);
                            }
                        }
                        Waited::Read(None) => {
                            self.core.failed(clock.now(), DisconnectReason::Lost, app);
                        }
                        Waited::Time => {}
                        Waited::Stop => self.core.stop(clock.now()),
                    }
                }
            }
        }
    }
}

/// What ended a wait.
pub(super) enum Waited {
    /// Bytes (their count), or the end of the stream (`None`).
    Read(Option<usize>),
    /// The deadline.
    Time,
    /// The application's stop request.
    Stop,
}
