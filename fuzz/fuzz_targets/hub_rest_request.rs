//! The hub's REST request handling (see `azsim_emulator::fuzzing`): byte 0 even, the rest is raw
//! bytes for its HTTP/1.1 server (never a 2xx: no key); odd, the rest is `METHOD PATH\n` and a
//! body, sent with the owner's token through the router (never a 5xx). No hang, no panic.
#![no_main]

use std::sync::OnceLock;

use azsim_emulator::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HUB: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HUB.get_or_init(Harness::new).rest(data);
});
