//! The hub's MQTT connection handling, frames in and behaviour out (see
//! `azsim_emulator::fuzzing`): byte 0 says whether the harness's valid CONNECT goes first (odd)
//! or not; the rest is sent as is. Checked: no way in without a key, only well-formed packets a
//! device may receive, PUBACKs for the QoS 1 PUBLISHes sent and in their order, no hang.
#![no_main]

use std::sync::OnceLock;

use azsim_emulator::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HUB: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&flags, frames)) = data.split_first() else {
        return;
    };
    let _ = HUB.get_or_init(Harness::new).mqtt(flags % 2 == 1, frames);
});
