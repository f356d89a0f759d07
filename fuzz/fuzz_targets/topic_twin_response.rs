//! `topic::parse_twin_response`: never panics; the fields rebuild into the canonical topic,
//! which parses the same.
#![no_main]

use azsim_proto::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = topic::parse_twin_response(t) {
        let mut rid = String::new();
        r.rid.decode_to(&mut rid).expect("rid was validated");
        let mut rebuilt = String::new();
        topic::write_twin_response(&mut rebuilt, r.status, &rid, r.version).unwrap();
        let again = topic::parse_twin_response(&rebuilt).expect("canonical topic parses");
        assert_eq!((again.status, again.version), (r.status, r.version));
        assert!(again.rid.eq_decoded(&rid));
    }
});
