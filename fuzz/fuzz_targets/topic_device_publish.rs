//! Hub side, `topic::parse_device_publish`: never panics; accepted topics rebuild canonically
//! and parse the same; a topic of one identity is never accepted as another device's telemetry.
#![no_main]

use azsim_proto::property_bag::EncodedStr;
use azsim_proto::topic::{self, DeviceTopic, Identity};
use libfuzzer_sys::fuzz_target;

fn dec(e: EncodedStr<'_>) -> String {
    let mut s = String::new();
    e.decode_to(&mut s).expect("validated by the parser");
    s
}

fn check(t: &str, id: Identity<'_>) {
    let Ok(parsed) = topic::parse_device_publish(t, id) else {
        return;
    };
    let mut rebuilt = String::new();
    match parsed {
        DeviceTopic::Telemetry { bag } => {
            assert!(bag.validate().is_ok());
            topic::write_telemetry_prefix(&mut rebuilt, id).unwrap();
            rebuilt.push_str(bag.as_raw());
            let again = topic::parse_device_publish(&rebuilt, id).expect("rebuilt telemetry");
            let DeviceTopic::Telemetry { bag: b2 } = again else {
                panic!("rebuilt telemetry read as {again:?}");
            };
            assert!(bag.as_raw().contains(b2.as_raw()));
            let other = Identity::device("\u{0}not-a-device");
            if !t.starts_with("devices/\u{0}not-a-device/") {
                assert!(topic::parse_device_publish(t, other).is_err());
            }
        }
        DeviceTopic::MethodResponse { status, rid } => {
            topic::write_method_response(&mut rebuilt, status, &dec(rid)).unwrap();
            let ok = matches!(topic::parse_device_publish(&rebuilt, id),
                Ok(DeviceTopic::MethodResponse { status: s, rid: r }) if s == status && dec(r) == dec(rid));
            assert!(ok);
        }
        DeviceTopic::TwinGet { rid } => {
            topic::write_twin_get(&mut rebuilt, &dec(rid)).unwrap();
            let ok = matches!(topic::parse_device_publish(&rebuilt, id),
                Ok(DeviceTopic::TwinGet { rid: r }) if dec(r) == dec(rid));
            assert!(ok);
        }
        DeviceTopic::TwinPatchReported { rid } => {
            topic::write_twin_patch_reported(&mut rebuilt, &dec(rid)).unwrap();
            let ok = matches!(topic::parse_device_publish(&rebuilt, id),
                Ok(DeviceTopic::TwinPatchReported { rid: r }) if dec(r) == dec(rid));
            assert!(ok);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    check(t, Identity::device("dev-1"));
    check(t, Identity::module("dev-1", "mod-1"));
    // Also as the identity the topic itself names, so telemetry paths get exercised.
    if let Some(rest) = t.strip_prefix("devices/") {
        if let Some((d, rest)) = rest.split_once('/') {
            check(t, Identity::device(d));
            if let Some((m, _)) = rest
                .strip_prefix("modules/")
                .and_then(|r| r.split_once('/'))
            {
                check(t, Identity::module(d, m));
            }
        }
    }
});
