//! ESP32-C3 firmware running the same Azure IoT Hub device session as `azsim run`.
//!
//! The binary is thin: Wi-Fi, DHCP, SNTP, DNS, TCP and TLS (mbedtls-rs) are set up here, then
//! the shared `azsim-mqtt` loop drives `azsim-proto`'s session and reference device behaviour,
//! the code `tests/it/firmware_loop.rs` runs against the local hub on the laptop. Credentials
//! come only from build-time environment variables (`AZSIM_WIFI_SSID`, `AZSIM_WIFI_PASSWORD`,
//! and `AZSIM_CONNECTION_STRING`, or `AZSIM_ID_SCOPE` + `AZSIM_REGISTRATION_ID` + a key to
//! provision through DPS first); without them the firmware says so and idles.
//!
//! On the host this package is an empty binary, so `cargo test --workspace` never needs the
//! esp toolchain crates.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod board;
#[cfg(all(target_os = "none", azsim_dps))]
mod dps;
#[cfg(target_os = "none")]
mod hub;
// Host-testable pieces; on the host only their tests use them.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod ntp;
#[cfg(target_os = "none")]
mod sensor;
#[cfg(target_os = "none")]
mod sntp;
#[cfg(target_os = "none")]
mod wifi;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "azsim-firmware runs on an ESP32-C3: build it with \
         `cargo build -p azsim-firmware --target riscv32imc-unknown-none-elf --profile firmware`"
    );
}
