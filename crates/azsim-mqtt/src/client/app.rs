//! What the loop needs from its surroundings (a clock, a connector) and what it tells and asks
//! the application ([`Note`], [`Observer`], [`App`]).

use super::*;

/// Unix time for the loop, in milliseconds (the session's unit), and a way to wait for it.
pub trait Clock {
    /// Milliseconds since 1970-01-01T00:00:00Z. On a board that starts at an embedded epoch
    /// (for example 2000-01-01, 946 684 800 s later) the implementation adds the offset.
    fn now(&mut self) -> u64;

    /// Waits until Unix millisecond `unix_ms`, so that [`Clock::now`] returns at least
    /// `unix_ms` afterwards; returns at once for a time in the past.
    fn sleep_until(&mut self, unix_ms: u64) -> impl Future<Output = ()>;
}

/// Opens the byte stream (TCP, then TLS) to the hub. The loop calls it whenever the session
/// asks for a connection and drops the stream when the connection ends.
pub trait Connector {
    /// The connected stream; it may borrow the connector's socket buffers.
    type Conn<'a>: Read + Write
    where
        Self: 'a;

    /// Connects. The error says which step failed: [`DisconnectReason::Unreachable`] for DNS or
    /// TCP, [`DisconnectReason::Tls`] for the handshake.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn<'_>, DisconnectReason>>;
}

/// Something that was done or seen, for the firmware's log, `azsim run`'s events or a test's
/// assertions. Bodies are borrowed from the packet buffers; nothing here holds a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note<'a> {
    /// Opening a connection (`attempt` failed attempts before it).
    Connecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
    },
    /// TCP, TLS or CONNACK failed.
    ConnectFailed {
        /// Why.
        reason: DisconnectReason,
    },
    /// What the session reported, exactly as it did: connected (again), token renewed,
    /// disconnected, reconnect scheduled, telemetry to be sent again, the twin, a desired
    /// patch, a reported PATCH accepted, a twin request failed, a C2D message (acknowledged),
    /// a method request (answered: see [`Note::Method`]). Telemetry acknowledgements come as
    /// [`Note::TelemetryAcked`], with the message id.
    Session(Event<'a>),
    /// A telemetry message was published (again, after a reconnect, if it was unacknowledged).
    TelemetrySent {
        /// Sequence number.
        seq: u32,
        /// `$.mid`.
        message_id: &'a str,
        /// The body.
        body: &'a [u8],
        /// Sent again with DUP=1, as the same PUBLISH that went out on an earlier connection.
        redelivery: bool,
    },
    /// The hub acknowledged a telemetry message.
    TelemetryAcked {
        /// Sequence number.
        seq: u32,
        /// `$.mid`.
        message_id: &'a str,
    },
    /// The offline queue was full: the oldest message was dropped.
    TelemetryDropped {
        /// Its sequence number.
        seq: u32,
    },
    /// A direct method was answered.
    Method {
        /// Method name.
        name: &'a str,
        /// The hub's request id, as in the topic.
        rid: &'a str,
        /// Status sent.
        status: u16,
        /// The request's payload.
        request: &'a [u8],
        /// The response's payload.
        response: &'a [u8],
    },
    /// A reported-properties PATCH was sent.
    ReportedSent {
        /// Request id.
        rid: u32,
        /// The JSON patch.
        patch: &'a [u8],
    },
    /// An incoming packet was larger than the receive buffer; the connection is closed.
    PacketTooLarge {
        /// The receive buffer's size.
        buffer: usize,
    },
    /// A packet did not fit the transmit buffer and was not sent.
    NotSent {
        /// The topic.
        topic: &'a str,
    },
    /// The session stopped for good.
    GaveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

/// Receives [`Note`]s. Any `FnMut(Note<'_>)` is one.
pub trait Observer {
    /// Called for each note, in order.
    fn note(&mut self, note: Note<'_>);
}

impl<F: FnMut(Note<'_>)> Observer for F {
    fn note(&mut self, note: Note<'_>) {
        self(note);
    }
}

/// The application around the loop: it observes the [`Note`]s and may shape what the device
/// sends and when it stops. Every hook has a default that is the reference device's behaviour,
/// so an [`Observer`] closure is an `App` as it is (the firmware passes one); `azsim run`
/// overrides them for `--payload`, `--property`, `--content-type`, `--method`, `--count`,
/// `--duration` and Ctrl-C.
pub trait App: Observer {
    /// The body of telemetry message `seq`, given the reference device's JSON `reading`;
    /// `None` skips the message. Default: the reading.
    fn telemetry<'s>(&'s mut self, seq: u32, reading: &'s str) -> Option<&'s [u8]> {
        let _ = seq;
        Some(reading.as_bytes())
    }

    /// `$.ct` of telemetry messages. Default: [`TELEMETRY_CONTENT_TYPE`].
    fn content_type(&self) -> &str {
        TELEMETRY_CONTENT_TYPE
    }

    /// Application properties of every telemetry message (names and values as they are,
    /// not encoded). Default: none.
    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        core::iter::empty()
    }

    /// A canned answer to direct method `name`, status and JSON body, taking precedence over
    /// the reference device's methods. Default: none.
    fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
        let _ = name;
        None
    }

    /// Asked at every step: `true` makes the loop disconnect cleanly (DISCONNECT) and return
    /// `Ok(())`. Default: never.
    fn stop_requested(&mut self) -> bool {
        false
    }

    /// Raced against every wait and connect: when it finishes, the loop stops as for
    /// [`App::stop_requested`]. Polled anew (never after it finished) for each wait. Default:
    /// never finishes.
    fn wait_for_stop(&mut self) -> impl Future<Output = ()> {
        core::future::pending()
    }
}

impl<F: FnMut(Note<'_>)> App for F {}
