//! `topic::parse_module_input`: never panics; the parts rebuild into a topic that parses the same.
#![no_main]

use azsim_proto::property_bag::SystemProperties;
use azsim_proto::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = topic::parse_module_input(t) {
        let mut input = String::new();
        m.input
            .decode_to(&mut input)
            .expect("input name was validated");
        assert!(!input.is_empty());
        let mut rebuilt = String::new();
        topic::write_module_input_topic(
            &mut rebuilt,
            m.device_id,
            m.module_id,
            &input,
            &SystemProperties::default(),
            [],
        )
        .unwrap();
        let again = topic::parse_module_input(&rebuilt).expect("rebuilt topic parses");
        assert_eq!(
            (again.device_id, again.module_id),
            (m.device_id, m.module_id)
        );
        assert!(again.input.eq_decoded(&input));
    }
});
