//! `topic::parse_method_request`: never panics; name and rid rebuild into the canonical topic,
//! which parses the same.
#![no_main]

use azsim_proto::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = topic::parse_method_request(t) {
        assert!(topic::MethodName::new(r.name.as_str()).is_ok());
        let mut rid = String::new();
        r.rid.decode_to(&mut rid).expect("rid was validated");
        assert!(!rid.is_empty());
        let mut rebuilt = String::new();
        topic::write_method_request(&mut rebuilt, r.name, &rid).unwrap();
        let again = topic::parse_method_request(&rebuilt).expect("canonical topic parses");
        assert_eq!(again.name, r.name);
        assert!(again.rid.eq_decoded(&rid));
    }
});
