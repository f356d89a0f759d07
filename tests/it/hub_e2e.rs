//! The local hub end to end over real TLS: a rumqttc device and the REST API.

use std::time::Duration;

use reqwest::Method;
use rumqttc::{Packet, QoS};
use serde_json::json;

use crate::support::{TestHub, next_incoming};

#[tokio::test]
async fn telemetry_is_pubacked_stamped_and_listed_in_recent_events() {
    let hub = TestHub::start().await;
    hub.create_device("d1").await;
    let key = hub.device_key("d1").await;
    let (c, mut el) = hub.connect("d1", &key, true).await;
    c.publish(
        "devices/d1/messages/events/%24.mid=m1&%24.ct=application%2Fjson&temp=21",
        QoS::AtLeastOnce,
        false,
        br#"{"t":21}"#.to_vec(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let (s, v) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=d1", None)
        .await;
    assert_eq!(s, 200);
    let ev = &v[0];
    assert_eq!(ev["type"], "telemetry");
    assert_eq!(ev["deviceId"], "d1");
    assert_eq!(ev["body"], r#"{"t":21}"#);
    assert_eq!(ev["systemProperties"]["message-id"], "m1");
    assert_eq!(ev["systemProperties"]["content-type"], "application/json");
    assert_eq!(ev["properties"]["temp"], "21");
    assert_eq!(ev["annotations"]["iothub-connection-device-id"], "d1");
    assert!(ev["annotations"]["iothub-enqueuedtime"].is_string());
    assert!(ev["annotations"]["iothub-connection-auth-generation-id"].is_string());
    hub.stop().await;
}

#[tokio::test]
async fn twin_get_and_reported_patch_bump_versions_and_desired_is_pushed() {
    let hub = TestHub::start().await;
    hub.create_device("d2").await;
    let key = hub.device_key("d2").await;
    let (c, mut el) = hub.connect("d2", &key, true).await;
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    c.subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    c.publish(
        "$iothub/twin/GET/?$rid=1",
        QoS::AtMostOnce,
        false,
        Vec::new(),
    )
    .await
    .unwrap();
    let (topic, body) = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=1");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"desired":{"$version":1},"reported":{"$version":1}})
    );

    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        QoS::AtMostOnce,
        false,
        br#"{"fw":"1.0","x":{"y":1}}"#.to_vec(),
    )
    .await
    .unwrap();
    let topic = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/res/204/?$rid=2&$version=2");

    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/d2",
            Some(json!({"properties":{"desired":{"interval":5}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["properties"]["reported"]["fw"], "1.0");
    assert_eq!(t["properties"]["desired"]["$version"], 2);
    let (topic, body) = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"interval":5,"$version":2}));
    hub.stop().await;
}

#[tokio::test]
async fn a_method_round_trips_through_the_device() {
    let hub = TestHub::start().await;
    hub.create_device("d3").await;
    let key = hub.device_key("d3").await;
    let (c, mut el) = hub.connect("d3", &key, true).await;
    c.subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let hub2 = &hub;
    let invoke = async move {
        hub2.rest(
            Method::POST,
            "/twins/d3/methods",
            Some(
                json!({"methodName":"reboot","payload":{"delay":1},"responseTimeoutInSeconds":10}),
            ),
        )
        .await
    };
    let device = async {
        let (topic, body) = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
            _ => None,
        })
        .await;
        assert!(
            topic.starts_with("$iothub/methods/POST/reboot/?$rid="),
            "{topic}"
        );
        assert_eq!(&body[..], br#"{"delay":1}"#);
        let rid = topic.rsplit("$rid=").next().unwrap().to_string();
        c.publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            br#"{"ok":true}"#.to_vec(),
        )
        .await
        .unwrap();
        // Keep the event loop running so the response goes out, until the invocation ends.
        loop {
            let _ = el.poll().await;
        }
    };
    let (s, v) = tokio::select! {
        r = invoke => r,
        _ = device => unreachable!("the device loop polls until the invocation ends"),
    };
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"status":200,"payload":{"ok":true}}));
    hub.stop().await;
}

#[tokio::test]
async fn c2d_is_delivered_with_properties_and_completed_by_puback() {
    let hub = TestHub::start().await;
    hub.create_device("d4").await;
    let key = hub.device_key("d4").await;
    let (c, mut el) = hub.connect("d4", &key, true).await;
    c.subscribe("devices/d4/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (s, v) = hub
        .rest(Method::POST, "/emulator/devices/d4/c2d", Some(json!({"body":"hello","messageId":"mid-1","contentType":"text/plain","properties":{"k":"v 1"}})))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["queueDepth"], 1);
    let (topic, body) = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        topic,
        "devices/d4/messages/devicebound/%24.mid=mid-1&%24.to=%2Fdevices%2Fd4%2Fmessages%2FdeviceBound&%24.ct=text%2Fplain&iothub-ack=none&k=v%201"
    );
    assert_eq!(&body[..], b"hello");
    // rumqttc PUBACKs automatically (while polled); the queue empties.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
            let (_, dev) = hub.rest(Method::GET, "/devices/d4", None).await;
            if dev["cloudToDeviceMessageCount"] == 0 {
                return;
            }
        }
    })
    .await
    .expect("the acknowledged message leaves the queue");
    hub.stop().await;
}
