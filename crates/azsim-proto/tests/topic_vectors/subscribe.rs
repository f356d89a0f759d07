//! The `subscribe_filters` section: the topic filters a device subscribes to, per kind.

use super::*;

#[test]
fn subscribe_filters() {
    let cases = section(&vectors(), "subscribe_filters");
    let mut checked = 0;
    for c in &cases {
        let purpose = c["purpose"].as_str().unwrap();
        let expected = c["expected"].as_str().unwrap();
        let device = c["device_id"].as_str();
        let module = c["module_id"].as_str();
        let mut built = String::new();
        if purpose.starts_with("c2d") {
            let ident = Identity::device(device.unwrap());
            topic::write_filter(&mut built, SubscriptionKind::C2d, ident).unwrap();
            assert_eq!(
                topic::classify_subscription(expected, ident),
                Ok(SubscriptionKind::C2d)
            );
        } else if purpose.starts_with("module_inputs") {
            let ident = Identity::module(device.unwrap(), module.unwrap());
            topic::write_filter(&mut built, SubscriptionKind::ModuleInputs, ident).unwrap();
            assert_eq!(
                topic::classify_subscription(expected, ident),
                Ok(SubscriptionKind::ModuleInputs)
            );
            // Another module of the same device may not subscribe to it.
            assert_eq!(
                topic::classify_subscription(expected, Identity::module(device.unwrap(), "other")),
                Err(TopicError::NotAllowed)
            );
        } else if purpose == "twin_responses" {
            let ident = Identity::device("d");
            topic::write_filter(&mut built, SubscriptionKind::TwinResponses, ident).unwrap();
            assert_eq!(
                topic::classify_subscription(expected, ident),
                Ok(SubscriptionKind::TwinResponses)
            );
        } else if purpose == "dps_responses" {
            built.push_str(topic::DPS_RESPONSE_FILTER);
            // The IoT Hub endpoint does not serve DPS.
            assert_eq!(
                topic::classify_subscription(expected, Identity::device("d")),
                Err(TopicError::NotAllowed)
            );
        } else {
            panic!("unknown purpose {purpose}");
        }
        assert_eq!(built, expected, "{purpose}");
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}

/// The filters azure-sdk-for-c (the Embedded C SDK) subscribes with, from
/// `sdk/inc/azure/iot/az_iot_hub_client.h` at commit 19d99b758986eed912112786cc17ae6523bb24a5
/// (`AZ_IOT_HUB_CLIENT_*_SUBSCRIBE_TOPIC`; commands and properties reuse the methods and twin
/// ones). The hub accepts each from a device; the C2D one, with `+` for the device id, only from a
/// device (the SDK has no module C2D).
#[test]
fn embedded_c_sdk_subscribe_filters_are_accepted_from_a_device() {
    let dev = Identity::device("my_device");
    for (filter, kind) in [
        ("devices/+/messages/devicebound/#", SubscriptionKind::C2d),
        ("$iothub/methods/POST/#", SubscriptionKind::Methods),
        ("$iothub/twin/res/#", SubscriptionKind::TwinResponses),
        (
            "$iothub/twin/PATCH/properties/desired/#",
            SubscriptionKind::DesiredPatches,
        ),
    ] {
        assert_eq!(
            topic::classify_subscription(filter, dev),
            Ok(kind),
            "{filter}"
        );
    }
    assert_eq!(
        topic::classify_subscription(
            "devices/+/messages/devicebound/#",
            Identity::module("my_device", "my_module_id")
        ),
        Err(TopicError::NotAllowed)
    );
}
