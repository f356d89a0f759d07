//! The step machine: [`Core::step`] decides, synchronously, the one piece of I/O to do next.

use super::*;

/// Room for `{host}/{device}/{module}/?api-version=..&DeviceClientType=..&model-id=..`.
pub(super) const USERNAME_LEN: usize = 1024;
/// Room for a SAS token: the encoded resource (ids may triple when percent-encoded), the
/// encoded signature, a 20-digit expiry and a policy name.
pub(super) const TOKEN_LEN: usize = 1280;
/// Topics the session writes (telemetry with its property bag, method responses) plus the
/// small bodies the behaviour writes behind them.
pub(super) const SCRATCH_LEN: usize = 1024;
/// Milliseconds to wait for CONNACK.
pub(super) const CONNACK_TIMEOUT_MS: u64 = 30_000;
/// Milliseconds to wait, after DISCONNECT, for the hub to close the connection (it reads the
/// DISCONNECT before the connection goes; closing first could reset it unread).
pub(super) const CLOSE_WAIT_MS: u64 = 2_000;
/// The session hands out QoS 1 packet ids up to here; SUBSCRIBE uses the ids above, so the
/// two never collide on one connection.
pub(super) const SESSION_MAX_PACKET_ID: u16 = 60_000;
/// Shortest wait for a PINGRESP, in milliseconds.
pub(super) const MIN_PING_WAIT_MS: u64 = 5_000;
/// Longest the loop sleeps when nothing is scheduled, in milliseconds (an hour).
pub(super) const IDLE_WAKE_MS: u64 = 3_600_000;

#[derive(Clone, Copy, Debug)]
pub(super) struct ConnectParams {
    pub(super) token_expiry: Option<u64>,
    pub(super) clean_session: bool,
    pub(super) keep_alive: u16,
}

/// Where the connection stands, from the loop's side.
#[derive(Clone, Copy, Debug)]
pub(super) enum Phase {
    /// No stream: the session runs on timers alone.
    Offline,
    /// The driver is opening the stream.
    Opening(ConnectParams),
    /// The stream is open: CONNECT goes out next.
    Opened(ConnectParams),
    /// CONNECT was sent; CONNACK is due by this Unix millisecond.
    Handshake(u64),
    /// Connected.
    Up,
    /// DISCONNECT was sent; the hub closes the connection by this Unix millisecond, or the loop
    /// does.
    Closing(u64),
}

/// What the driver does next: the only I/O the loop performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Drop any stream and open a new one, then report `opened` or `failed`.
    Connect,
    /// Write `tx[..n]` and flush; report `failed` if that fails.
    Write(usize),
    /// Wait until this Unix millisecond, reading into the free end of the receive buffer when
    /// `read` (a stream is open); without `read` any stream is dropped.
    Wait { until: u64, read: bool },
    /// Stop for good: the session gave up.
    GiveUp(GiveUpReason),
    /// Stop for good: the application asked, and the connection is closed.
    Closed,
}

/// Everything but the packet buffers, so an event borrowing the receive buffer can be handled
/// by methods on this. All of it is synchronous: [`Client::run`] performs the [`Step`]s.
// `repr(C)` keeps the declared order: the small fields the loop touches on every step come
// first, where RISC-V's compressed loads and stores reach them (offsets below 128 bytes), and
// the kilobyte buffers last.
#[repr(C)]
pub(super) struct Core<'b, S, Q: Storage> {
    pub(super) phase: Phase,
    /// Bytes received and not yet consumed at the front of the receive buffer.
    pub(super) rx_len: usize,
    pub(super) sub_pid: u16,
    pub(super) wire_pid: u16,
    /// A QoS 1 delivery to acknowledge before anything else.
    pub(super) puback: Option<Pid>,
    pub(super) keep_alive: u16,
    /// The application asked to stop; the session is closing.
    pub(super) stopping: bool,
    pub(super) last_tx: u64,
    pub(super) ping_deadline: Option<u64>,
    pub(super) rng: XorShift64,
    pub(super) identity: Identity<'b>,
    pub(super) credential: Credential<'b>,
    pub(super) session: Session,
    pub(super) device: Device<S>,
    /// The decoded key, when the credential is one.
    pub(super) key: Option<Key>,
    pub(super) queue: Q,
    pub(super) in_flight: Vec<Message<Q::Body>, MAX_IN_FLIGHT>,
    pub(super) scratch: [u8; SCRATCH_LEN],
}

impl<S: Sensor, Q: Storage> Core<'_, S, Q> {
    /// A random number for reconnect jitter (nothing secret).
    pub(super) fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    /// A random (version 4) UUID for `$.mid`, in its 36-character text form.
    pub(super) fn message_id(&mut self) -> [u8; 36] {
        let mut random = [0u8; 16];
        self.rng.fill(&mut random);
        let mut id = [0u8; 36];
        uuid::Builder::from_random_bytes(random)
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut id);
        id
    }

    /// The driver opened the stream the last [`Step::Connect`] asked for.
    pub(super) fn opened(&mut self) {
        if let Phase::Opening(params) = self.phase {
            self.phase = Phase::Opened(params);
        }
    }

    /// Opening, the handshake or the connection failed (or the stream ended). Nothing to do
    /// once the session let the connection go; after a DISCONNECT the end of the stream is
    /// the close the session asked for.
    pub(super) fn failed<A: App>(&mut self, now: u64, reason: DisconnectReason, app: &mut A) {
        let reason = match self.phase {
            Phase::Offline => return,
            Phase::Up => reason,
            Phase::Closing(_) => DisconnectReason::Requested,
            Phase::Opening(_) | Phase::Opened(_) | Phase::Handshake(_) => {
                app.note(Note::ConnectFailed { reason });
                reason
            }
        };
        self.phase = Phase::Offline;
        let entropy = self.next_u32();
        self.session.handle_disconnected(now, reason, entropy);
    }

    /// The application asked to stop: the session closes (DISCONNECT if connected) and never
    /// connects again. A connection still being opened is dropped.
    pub(super) fn stop(&mut self, now: u64) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.session.close(now);
        if let Phase::Opening(_) | Phase::Opened(_) | Phase::Handshake(_) = self.phase {
            self.phase = Phase::Offline;
        }
    }

    /// Everything the loop decides for `now`: it runs until there is I/O to perform.
    pub(super) fn step<A: App, T: Buffer + ?Sized>(
        &mut self,
        now: u64,
        rx: &mut [u8],
        tx: &mut T,
        app: &mut A,
    ) -> Step {
        if !self.stopping && app.stop_requested() {
            self.stop(now);
        }
        loop {
            // Every complete packet first, so none waits behind the timer; but a pending PUBACK
            // goes out before the next packet may ask for another.
            if let Phase::Up | Phase::Handshake(_) | Phase::Closing(_) = self.phase
                && self.puback.is_none()
            {
                match self.next_packet(rx, app) {
                    Ok(Some(len)) => {
                        let handled =
                            self.on_packet(now, rx.get(..len).unwrap_or_default(), tx, app);
                        self.consume(rx, len);
                        match handled {
                            Ok(Some(n)) => return Step::Write(n),
                            Ok(None) => {}
                            Err(reason) => self.failed(now, reason, app),
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(()) => {
                        self.failed(now, DisconnectReason::Lost, app);
                        continue;
                    }
                }
            }
            match self.phase {
                Phase::Opened(params) => match self.encode_connect(params, tx) {
                    Some(n) => {
                        self.phase = Phase::Handshake(now + CONNACK_TIMEOUT_MS);
                        return Step::Write(n);
                    }
                    None => self.failed(now, DisconnectReason::Lost, app),
                },
                Phase::Handshake(deadline) | Phase::Closing(deadline) if now < deadline => {
                    return Step::Wait {
                        until: deadline,
                        read: true,
                    };
                }
                Phase::Handshake(_) | Phase::Closing(_) => {
                    self.failed(now, DisconnectReason::Lost, app);
                }
                Phase::Up if self.ping_deadline.is_some_and(|d| now >= d) => {
                    self.failed(now, DisconnectReason::Lost, app);
                }
                Phase::Up | Phase::Offline | Phase::Opening(_) => {
                    let up = matches!(self.phase, Phase::Up);
                    if !up {
                        self.phase = Phase::Offline;
                    }
                    // Offline these encode nothing.
                    if let Some(pid) = self.puback.take()
                        && let Some(n) =
                            self.encode(now, wire::encode_bare(wire::Bare::Puback(pid), tx.slice()))
                    {
                        return Step::Write(n);
                    }
                    self.tick(now, app);
                    if self.ping_due(now)
                        && let Some(n) =
                            self.encode(now, wire::encode_bare(wire::Bare::Pingreq, tx.slice()))
                    {
                        self.ping_deadline = Some(now + self.ping_interval().max(MIN_PING_WAIT_MS));
                        return Step::Write(n);
                    }
                    if let Some(step) = self.pump(now, tx, app) {
                        return step;
                    }
                    if self.session.state() == State::Closed {
                        return Step::Closed;
                    }
                    // Still as it was (a requested disconnect changes it).
                    if matches!(self.phase, Phase::Up) == up {
                        return Step::Wait {
                            until: self.wake(now),
                            read: up,
                        };
                    }
                }
            }
        }
    }

    /// Session timeouts and, unless stopping, telemetry production for `now`.
    pub(super) fn tick<A: App>(&mut self, now: u64, app: &mut A) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        if self.stopping {
            return;
        }
        let mut tbuf = [0u8; TELEMETRY_BUFFER_LEN];
        while let Some(t) = self.device.poll_telemetry(now, &mut tbuf) {
            let seq = t.seq;
            let body = match app.telemetry(seq, t.body) {
                Some(bytes) => self.queue.body(bytes),
                None => continue,
            };
            let Some(body) = body else {
                app.note(Note::TelemetryDropped { seq });
                continue;
            };
            self.make_room(app);
            let id = self.message_id();
            let m = Message {
                seq,
                id,
                body,
                wire: 0,
                pkid: 0,
                resend: false,
            };
            if self.queue.push(m).is_err() {
                app.note(Note::TelemetryDropped { seq });
            }
        }
    }

    /// Drops the oldest messages held offline (queued, or unacknowledged and to be sent again)
    /// until one more fits.
    pub(super) fn make_room<A: App>(&mut self, app: &mut A) {
        loop {
            let resend = self.in_flight.iter().filter(|m| m.resend).count();
            if self.queue.queued() + resend < self.queue.capacity() {
                return;
            }
            // Unacknowledged ones are older than anything queued.
            let seq = match self.in_flight.iter().position(|m| m.resend) {
                Some(i) => self.in_flight.remove(i).seq,
                None => match self.queue.pop() {
                    Some(m) => m.seq,
                    None => return,
                },
            };
            app.note(Note::TelemetryDropped { seq });
        }
    }

    pub(super) fn ping_due(&self, now: u64) -> bool {
        self.keep_alive > 0
            && self.ping_deadline.is_none()
            && now >= self.last_tx + self.ping_interval()
    }

    /// Half the keep-alive (seconds on the wire), in milliseconds: well inside the 1.5 times
    /// it the hub allows.
    pub(super) fn ping_interval(&self) -> u64 {
        u64::from(self.keep_alive) * 500
    }

    /// When the loop must next step without news from the hub.
    pub(super) fn wake(&self, now: u64) -> u64 {
        let up = matches!(self.phase, Phase::Up);
        let ping = (up && self.keep_alive > 0).then(|| match self.ping_deadline {
            Some(d) => d,
            None => self.last_tx + self.ping_interval(),
        });
        let telemetry = if self.stopping {
            None
        } else {
            self.device.poll_timeout()
        };
        earliest(earliest(self.session.poll_timeout(), telemetry), ping)
            .unwrap_or(now + IDLE_WAKE_MS)
    }
}

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
