//! The one device-side MQTT 3.1.1 client loop: it drives `azsim-proto`'s sans-IO device
//! session and reference device behaviour over any `embedded-io-async` stream. The ESP32
//! firmware runs it over embassy-net and mbedtls-rs; `azsim run` (and the fleet) over tokio TCP
//! and rustls through `embedded-io-adapters`.
//!
//! `#![no_std]` and no heap: packets are framed with `mqttrs` into caller buffers, telemetry
//! waiting for a connection sits in a [`Storage`] the caller picks (a fixed `heapless`
//! [`FixedQueue`] on the board, a heap queue on a laptop), and time comes from a caller's
//! [`Clock`] in Unix milliseconds (SNTP on the board, the system clock on a laptop).
//!
//! What it does: opens connections through a [`Connector`] when the session asks (TCP + TLS
//! are the connector's business), sends CONNECT with the username and a freshly signed SAS
//! token (device, module or policy key), SUBSCRIBE, PUBLISH at QoS 0 and 1 (telemetry
//! unacknowledged when a connection ends goes out again after the next CONNACK as the same
//! PUBLISH: same packet id and `$.mid`, DUP=1), PUBACK for QoS 1 deliveries, PINGREQ
//! keep-alive, DISCONNECT, and hands everything it sees to the [`App`] as [`Note`]s. The
//! application's hooks (with defaults, so a closure is enough on the board) shape telemetry
//! bodies and properties, answer methods before the reference behaviour, and ask it to stop.
//!
//! Before the device knows its hub, [`Provisioning`] runs a Device Provisioning Service
//! registration over the same connector, clock and buffers (`azsim_proto::dps`, sans-IO):
//! the assigned hub and device id, or DPS's refusal as a typed [`ProvisionError`].
//!
//! What it does not do: TLS, DNS or sockets, QoS 2 (IoT Hub has none), packets larger than the
//! receive buffer (the connection is closed and the session reconnects), persistence across
//! reboots.
#![no_std]

#[cfg(test)]
extern crate std;

mod client;
mod provision;
mod wire;

pub use client::{
    App, Buffer, Client, ClientError, Clock, Connector, Credential, FixedBody, FixedQueue,
    Identity, Message, Note, Observer, QUEUE_LEN, Storage, TELEMETRY_CONTENT_TYPE,
};
pub use provision::{
    ASSIGNED_HUB_LEN, Assignment, DEFAULT_TIMEOUT_MS, DEVICE_ID_LEN, DpsCredential, DpsIdentity,
    DpsNote, MESSAGE_LEN, ProvisionError, Provisioning, SUBSTATUS_LEN,
};
pub use wire::{FrameLenError, frame_len};
