//! The client loop: one [`Client`] owns the session, the device behaviour, the telemetry queue
//! and the packet buffers, and [`Client::run`] performs what the session decides until it
//! gives up or is told to stop.
//!
//! Each round: handle what arrived, check timeouts, produce telemetry, pump actions / events /
//! behaviour publishes / queued telemetry, then wait for a packet, the next deadline or a stop
//! request. The same loop runs on the board (fixed buffers, a [`FixedQueue`]) and on a laptop
//! (`azsim run`: a heap queue and the [`App`] hooks for templates, properties and canned
//! methods).
//!
//! Sans-IO inside too: `Core::step` is synchronous and returns the one piece of I/O to do next
//! (open a stream, write `tx[..n]`, or read while waiting for a deadline); `run` only performs
//! it. Every `.await` on the stream inlines the stream's futures (mbedtls on the board) and
//! adds state, so there is one of each.

mod app;
mod buffer;
mod connect;
mod identity;
mod incoming;
mod machine;
mod outgoing;
mod run;
mod storage;
#[cfg(test)]
mod tests;

pub use app::{App, Clock, Connector, Note, Observer};
pub use buffer::Buffer;
pub use identity::{ClientError, Credential, Identity};
pub use storage::{FixedBody, FixedQueue, Message, Storage};

// Every child starts with `use super::*`: these imports are the whole client's vocabulary.
use connect::*;
use identity::*;
use machine::*;

use core::fmt;
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

use azsim_proto::device::{Device, Sensor, TELEMETRY_BUFFER_LEN};
use azsim_proto::property_bag::SystemProperties;
use azsim_proto::rng::XorShift64;
use azsim_proto::sas::{self, Key, KeyError, Resource};
use azsim_proto::secret::Secret;
use azsim_proto::session::{
    self, ACTION_BUFFER_LEN, Action, ConnackCode, DisconnectReason, Event, GiveUpReason,
    IdentityError, MAX_IN_FLIGHT, Publish, PublishKind, SendError, Session, SessionConfig, State,
};
use azsim_proto::username;
use embedded_io_async::{Read, Write};
use heapless::{Deque, String, Vec};
use mqttrs::{Pid, QosPid};

use crate::wire;

/// Telemetry messages a [`FixedQueue`] keeps while offline; when full the oldest is dropped.
pub const QUEUE_LEN: usize = 16;
/// `$.ct` of every telemetry message unless [`App::content_type`] says otherwise.
pub const TELEMETRY_CONTENT_TYPE: &str = "application/json";

/// The MQTT client loop around a [`Session`] and a [`Device`], keeping queued telemetry in `Q`
/// and packets in `B`s (fixed slices unless [`Client::with_buffers`] says otherwise).
#[repr(C)]
pub struct Client<'b, S, Q: Storage = FixedQueue, B: Buffer + ?Sized = [u8]> {
    rx: &'b mut B,
    tx: &'b mut B,
    core: Core<'b, S, Q>,
}

impl<S, Q: Storage, B: Buffer + ?Sized> fmt::Debug for Client<'_, S, Q, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.core.identity.device_id)
            .field("module_id", &self.core.identity.module_id)
            .field("credential", &self.core.credential)
            .field("state", &self.core.session.state())
            .field("queued", &self.core.queue.queued())
            .field("in_flight", &self.core.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<'b, S: Sensor> Client<'b, S> {
    /// A client for `identity` running `device`, queueing telemetry in a [`FixedQueue`] (see
    /// [`Client::with_storage`]).
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    pub fn new(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        config: SessionConfig,
        seed: u64,
        rx: &'b mut [u8],
        tx: &'b mut [u8],
    ) -> Result<Self, ClientError> {
        Self::with_storage(
            identity,
            credential,
            device,
            config,
            seed,
            rx,
            tx,
            FixedQueue::new(),
        )
    }
}

impl<'b, S: Sensor, Q: Storage> Client<'b, S, Q> {
    /// A client for `identity` running `device`, queueing telemetry in `queue`. `config` is
    /// the session's; its packet-id range is narrowed (SUBSCRIBE ids live above it) and a
    /// fixed token turns renewal off. `seed` seeds message ids and reconnect jitter (use the
    /// hardware RNG on a board). `rx` must hold the largest packet the hub may send (the twin
    /// document, a C2D message, a method request); `tx` the largest the device sends (a
    /// telemetry message, a method response echoing its request).
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    #[allow(clippy::too_many_arguments)]
    pub fn with_storage(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        config: SessionConfig,
        seed: u64,
        rx: &'b mut [u8],
        tx: &'b mut [u8],
        queue: Q,
    ) -> Result<Self, ClientError> {
        Client::with_buffers(identity, credential, device, config, seed, rx, tx, queue)
    }
}

impl<'b, S: Sensor, Q: Storage, B: Buffer + ?Sized> Client<'b, S, Q, B> {
    /// [`Client::with_storage`] with packet buffers of the caller's type: ones that grow on
    /// demand ([`Buffer::reserve`]) let thousands of devices in one process start at a
    /// kilobyte each and still take a 256 KB message. Each must be at least 512 bytes long at
    /// the start.
    ///
    /// # Errors
    /// [`ClientError`] for an unusable id or key, or buffers too small.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub fn with_buffers(
        identity: Identity<'b>,
        credential: Credential<'b>,
        device: Device<S>,
        mut config: SessionConfig,
        seed: u64,
        rx: &'b mut B,
        tx: &'b mut B,
        queue: Q,
    ) -> Result<Self, ClientError> {
        if rx.slice().len() < 512 || tx.slice().len() < 512 {
            return Err(ClientError::BufferTooSmall);
        }
        let session_id = match identity.module_id {
            Some(m) => session::Identity::module(identity.device_id, m),
            None => session::Identity::device(identity.device_id),
        }
        .map_err(ClientError::Identity)?;
        if let Some(e) = wildcard(&identity) {
            return Err(e);
        }
        // The username and each token are written when CONNECT is; here they are only
        // measured, so that one that cannot fit fails now, not at the first connect.
        username::write_username(
            &mut Measure(USERNAME_LEN) as &mut dyn fmt::Write,
            identity.host,
            identity.device_id,
            identity.module_id,
            env!("CARGO_PKG_VERSION"),
            identity.model_id,
        )
        .map_err(|_| ClientError::UsernameTooLong)?;
        let key = match credential {
            Credential::Key(key) | Credential::PolicyKey { key, .. } => {
                let key = Key::from_base64(key.expose()).map_err(ClientError::Key)?;
                // The longest expiry makes the longest token.
                sas::sign_with_key(
                    &mut Measure(TOKEN_LEN) as &mut dyn fmt::Write,
                    &resource(&identity),
                    &key,
                    u64::MAX,
                    policy(credential),
                )
                .map_err(|_| ClientError::TokenTooLong)?;
                Some(key)
            }
            Credential::Token(_) => {
                config.token_ttl = None;
                None
            }
        };
        config.max_packet_id = config.max_packet_id.min(SESSION_MAX_PACKET_ID);
        Ok(Self {
            rx,
            tx,
            core: Core {
                phase: Phase::Offline,
                rx_len: 0,
                sub_pid: SESSION_MAX_PACKET_ID,
                wire_pid: 0,
                puback: None,
                keep_alive: 0,
                stopping: false,
                last_tx: 0,
                ping_deadline: None,
                rng: XorShift64::new(seed),
                identity,
                credential,
                session: Session::new(session_id, config),
                device,
                key,
                queue,
                in_flight: Vec::new(),
                scratch: [0; SCRATCH_LEN],
            },
        })
    }

    /// The session (state, token expiry, in-flight count).
    pub fn session(&self) -> &Session {
        &self.core.session
    }

    /// The device behaviour (interval, last sequence number).
    pub fn device(&self) -> &Device<S> {
        &self.core.device
    }

    /// Telemetry messages the loop still holds: queued, in flight, or to be sent again.
    pub fn queued(&self) -> usize {
        self.core.queue.queued() + self.core.in_flight.len()
    }
}
