//! Device side, `topic::parse_hub_publish`: never panics and agrees with the specific parser of
//! the kind it reports.
#![no_main]

use azsim_proto::topic::{self, HubTopic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    match topic::parse_hub_publish(t) {
        Ok(HubTopic::C2d(c)) => assert_eq!(topic::parse_c2d(t), Ok(c)),
        Ok(HubTopic::ModuleInput(m)) => assert_eq!(topic::parse_module_input(t), Ok(m)),
        Ok(HubTopic::MethodRequest(r)) => assert_eq!(topic::parse_method_request(t), Ok(r)),
        Ok(HubTopic::TwinResponse(r)) => assert_eq!(topic::parse_twin_response(t), Ok(r)),
        Ok(HubTopic::DesiredPatch { version }) => {
            assert_eq!(topic::parse_desired_patch(t), Ok(version));
        }
        Err(_) => {
            assert!(topic::parse_method_request(t).is_err());
            assert!(topic::parse_twin_response(t).is_err());
            assert!(topic::parse_desired_patch(t).is_err());
        }
    }
});
