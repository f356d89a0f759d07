//! `topic::parse_desired_patch`: never panics; the version rebuilds into a topic with the same
//! version.
#![no_main]

use azsim_proto::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = topic::parse_desired_patch(t) {
        let mut rebuilt = String::new();
        topic::write_desired_patch(&mut rebuilt, v).unwrap();
        assert_eq!(topic::parse_desired_patch(&rebuilt), Ok(v));
    }
});
