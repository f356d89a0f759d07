//! The MQTT 3.1.1 client loop of the ESP32 firmware: it drives `azsim-proto`'s sans-IO device
//! session and reference device behaviour over any `embedded-io-async` stream, the way
//! `azsim run` drives them over rumqttc on a laptop.
//!
//! `#![no_std]` and no heap: packets are framed with `mqttrs` into caller buffers, telemetry
//! waiting for a connection sits in a fixed `heapless` queue, and time comes from a caller's
//! [`Clock`] in Unix milliseconds (SNTP on the board, the system clock in host tests).
//!
//! What it does: opens connections through a [`Connector`] when the session asks (TCP + TLS
//! are the connector's business), sends CONNECT with the username and a freshly signed SAS
//! token, SUBSCRIBE, PUBLISH at QoS 0 and 1 (telemetry unacknowledged when a connection ends
//! goes out again after the next CONNACK as the same PUBLISH: same packet id and `$.mid`,
//! DUP=1), PUBACK for QoS 1 deliveries, PINGREQ keep-alive, DISCONNECT, and hands everything
//! it sees to an [`Observer`] for logging.
//!
//! What it does not do: TLS, DNS or sockets, QoS 2 (IoT Hub has none), packets larger than the
//! receive buffer (the connection is closed and the session reconnects), persistence across
//! reboots.
#![no_std]

#[cfg(test)]
extern crate std;

mod client;
mod select;
mod wire;

pub use client::{
    Client, ClientError, Clock, Connector, Credential, Identity, Note, Observer, QUEUE_LEN,
    TELEMETRY_CONTENT_TYPE,
};
pub use select::{Either, select};
pub use wire::{FrameLenError, frame_len};
