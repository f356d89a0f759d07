//! `topic::parse_dps_response`: never panics; the fields rebuild into the canonical topic,
//! which parses the same.
#![no_main]

use azsim_proto::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = topic::parse_dps_response(t) {
        let mut rid = String::new();
        r.rid.decode_to(&mut rid).expect("rid was validated");
        let mut rebuilt = String::new();
        topic::write_dps_response(&mut rebuilt, r.status, &rid, r.retry_after).unwrap();
        let again = topic::parse_dps_response(&rebuilt).expect("canonical topic parses");
        assert_eq!((again.status, again.retry_after), (r.status, r.retry_after));
        assert!(again.rid.eq_decoded(&rid));
    }
});
