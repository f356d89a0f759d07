//! The wire rules of Azure IoT Hub's device MQTT dialect, and the device session, for every
//! azsim part: the laptop driver, the local hub and the ESP32 firmware.
//!
//! `#![no_std]`, no heap, no I/O and no clock: functions write into caller buffers
//! (`core::fmt::Write`, `&mut [u8]`) and time is passed in. The session and the device
//! behaviour take a `u64` of Unix milliseconds; the SAS functions, like the token's `se`, take
//! Unix seconds. What this crate does not do: open sockets, frame MQTT packets, read the time,
//! or allocate.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod connection_string;
pub mod device;
pub mod dps;
pub mod encoding;
pub mod endpoint;
pub mod json;
pub mod property_bag;
pub mod rng;
pub mod sas;
pub mod secret;
pub mod session;
pub mod topic;
pub mod username;
