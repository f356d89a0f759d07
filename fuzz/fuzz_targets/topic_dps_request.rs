//! `topic::parse_dps_request`: never panics; the request rebuilds into a topic that parses the
//! same.
#![no_main]

use azsim_proto::topic::{self, DpsRequest};
use libfuzzer_sys::fuzz_target;

fn dec(e: azsim_proto::property_bag::EncodedStr<'_>) -> String {
    let mut s = String::new();
    e.decode_to(&mut s).expect("validated by the parser");
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    let mut rebuilt = String::new();
    match topic::parse_dps_request(t) {
        Ok(DpsRequest::Register { rid }) => {
            topic::write_dps_register(&mut rebuilt, &dec(rid)).unwrap();
            let ok = matches!(topic::parse_dps_request(&rebuilt),
                Ok(DpsRequest::Register { rid: r }) if dec(r) == dec(rid));
            assert!(ok);
        }
        Ok(DpsRequest::Query { rid, operation_id }) => {
            topic::write_dps_query(&mut rebuilt, &dec(rid), &dec(operation_id)).unwrap();
            let ok = matches!(topic::parse_dps_request(&rebuilt),
                Ok(DpsRequest::Query { rid: r, operation_id: o })
                    if dec(r) == dec(rid) && dec(o) == dec(operation_id));
            assert!(ok);
        }
        Err(_) => {}
    }
});
