//! Routing to the built-in endpoint through an independent AMQP client: twin change, device
//! lifecycle and connection state events arrive on the Event Hubs-compatible endpoint with
//! their source, properties and body as IoT Hub gives them; `routes` turns them off.

use std::collections::HashMap;
use std::time::Duration;

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, Source};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use reqwest::Method;
use rumqttc::{Packet, QoS};
use serde_json::json;

use super::WAIT;
use crate::support::{TestHub, next_incoming};

const P0: &str = "localhost/ConsumerGroups/$Default/Partitions/0";

/// One event as the test looks at it.
#[derive(Debug)]
struct Ev {
    source: String,
    ann: HashMap<String, Value>,
    app: HashMap<String, String>,
    content_type: Option<String>,
    body: serde_json::Value,
    raw: Vec<u8>,
}

fn ev(m: &Message<Body<Value>>) -> Ev {
    let ann: HashMap<String, Value> = m
        .message_annotations
        .as_ref()
        .map(|a| {
            a.0.iter()
                .filter_map(|(k, v)| match k {
                    OwnedKey::Symbol(s) => Some((s.as_str().to_string(), v.clone())),
                    OwnedKey::Ulong(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let app = m
        .application_properties
        .as_ref()
        .map(|a| {
            a.0.iter()
                .filter_map(|(k, v)| match v {
                    SimpleValue::String(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let raw: Vec<u8> = match &m.body {
        Body::Data(b) => b.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("body {other:?}"),
    };
    let source = match ann.get("iothub-message-source") {
        Some(Value::String(s)) => s.clone(),
        other => panic!("iothub-message-source {other:?}"),
    };
    Ev {
        source,
        content_type: m
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_ref().map(|c| c.as_str().to_string())),
        body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        ann,
        app,
        raw,
    }
}

/// A receiver of partition 0 from its start.
async fn reader(
    hub: &TestHub,
) -> (
    super::Conn,
    fe2o3_amqp::session::SessionHandle<()>,
    Receiver,
) {
    let (conn, mut session, _cbs) = super::authorized(hub).await;
    let r = Receiver::builder()
        .name("routing-reader")
        .source(Source::builder().address(P0).build())
        .target("me")
        .attach(&mut session)
        .await
        .expect("attach");
    (conn, session, r)
}

async fn next(r: &mut Receiver) -> Ev {
    let d = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
        .await
        .expect("an event in time")
        .expect("event");
    r.accept(&d).await.expect("accept");
    ev(d.message())
}

async fn delete_device(hub: &TestHub, id: &str) {
    let r = hub
        .http()
        .delete(hub.url(&format!("/devices/{id}")))
        .header("Authorization", hub.service_token())
        .header("If-Match", "\"*\"")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test]
async fn twin_lifecycle_and_connection_events_reach_the_built_in_endpoint() {
    let hub = TestHub::start_configured(|c| c.partitions = 1).await;
    hub.create_device("r1").await;
    let key = hub.device_key("r1").await;
    let (client, mut el) = hub.connect("r1", &key, true).await;
    client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            QoS::AtMostOnce,
            false,
            br#"{"fw":"1.0"}"#.to_vec(),
        )
        .await
        .unwrap();
    let topic = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");
    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/r1",
            Some(json!({"properties":{"desired":{"interval":5}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = hub
        .rest(
            Method::PUT,
            "/twins/r1",
            Some(json!({"properties":{"desired":{"mode":"eco"}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    client
        .publish(
            "devices/r1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while el.poll().await.is_ok() {}
    })
    .await;

    let (mut conn, _session, mut r) = reader(&hub).await;
    // Created, connected, reported, desired, replaced, telemetry, disconnected; the routed ones
    // in this order.
    let mut got = Vec::new();
    while got.len() < 7 {
        let e = next(&mut r).await;
        let done = e.app.get("opType").map(String::as_str) == Some("deviceDisconnected");
        got.push(e);
        if done {
            break;
        }
    }
    delete_device(&hub, "r1").await;
    got.push(next(&mut r).await);

    let routed: Vec<(&str, &str)> = got
        .iter()
        .filter(|e| e.source != "Telemetry")
        .map(|e| (e.source.as_str(), e.app["opType"].as_str()))
        .collect();
    assert_eq!(
        routed,
        [
            ("deviceLifecycleEvents", "createDeviceIdentity"),
            ("deviceConnectionStateEvents", "deviceConnected"),
            ("twinChangeEvents", "updateTwin"),
            ("twinChangeEvents", "updateTwin"),
            ("twinChangeEvents", "replaceTwin"),
            ("deviceConnectionStateEvents", "deviceDisconnected"),
            ("deviceLifecycleEvents", "deleteDeviceIdentity"),
        ],
        "{got:#?}"
    );
    let telemetry: Vec<&Ev> = got.iter().filter(|e| e.source == "Telemetry").collect();
    assert_eq!(telemetry.len(), 1, "{got:#?}");
    assert_eq!(telemetry[0].raw, b"hello");
    assert!(
        telemetry[0]
            .ann
            .contains_key("iothub-connection-auth-method")
    );

    for e in got.iter().filter(|e| e.source != "Telemetry") {
        assert_eq!(e.app["hubName"], "localhost", "{e:?}");
        assert_eq!(e.app["deviceId"], "r1", "{e:?}");
        assert!(!e.app.contains_key("moduleId"), "{e:?}");
        assert!(e.app["operationTimestamp"].ends_with('Z'), "{e:?}");
        let schema = match e.source.as_str() {
            "twinChangeEvents" => "twinChangeNotification",
            "deviceLifecycleEvents" => "deviceLifecycleNotification",
            _ => "deviceConnectionStateNotification",
        };
        assert_eq!(e.app["iothub-message-schema"], schema, "{e:?}");
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            e.ann.get("iothub-connection-device-id"),
            Some(&Value::String("r1".into()))
        );
        // The hub raised it: no device authentication to name.
        assert!(
            !e.ann.contains_key("iothub-connection-auth-method"),
            "{e:?}"
        );
        assert!(e.ann.contains_key("x-opt-sequence-number"));
    }
    let routed: Vec<&Ev> = got.iter().filter(|e| e.source != "Telemetry").collect();
    assert_eq!(
        routed[0].body["deviceId"], "r1",
        "the twin: {:?}",
        routed[0]
    );
    assert!(routed[0].body["properties"]["desired"].is_object());
    assert!(
        routed[1].body["sequenceNumber"].is_string(),
        "{:?}",
        routed[1]
    );
    assert_eq!(
        routed[2].body["properties"]["reported"],
        json!({"fw":"1.0"})
    );
    assert!(routed[2].body["version"].is_u64());
    assert_eq!(
        routed[3].body["properties"]["desired"],
        json!({"interval":5})
    );
    let (a, b) = (
        routed[1].body["sequenceNumber"].as_str().unwrap(),
        routed[5].body["sequenceNumber"].as_str().unwrap(),
    );
    assert!(a < b, "connection sequence numbers increase: {a} {b}");
    // The replacement as a patch: the old desired property removed, the new one set.
    assert_eq!(
        routed[4].body["properties"]["desired"],
        json!({"interval":null,"mode":"eco"}),
        "{:?}",
        routed[4]
    );
    assert_eq!(routed[6].body["deviceId"], "r1");

    // The emulator's own readers of the log see telemetry only.
    let (s, recent) = hub.rest(Method::GET, "/emulator/events/recent", None).await;
    assert_eq!(s, 200, "{recent}");
    let all = recent.as_array().cloned().unwrap_or_default();
    assert!(
        !all.is_empty() && all.iter().all(|e| e["type"] == "telemetry"),
        "{recent}"
    );
    r.close().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    hub.stop().await;
}

#[tokio::test]
async fn routing_only_telemetry_leaves_the_other_events_out() {
    let hub = TestHub::start_configured(|c| {
        c.partitions = 1;
        c.routes = azsim_emulator::routing::Routes::parse("telemetry").unwrap();
    })
    .await;
    hub.create_device("r2").await;
    let key = hub.device_key("r2").await;
    let (client, mut el) = hub.connect("r2", &key, true).await;
    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/r2",
            Some(json!({"properties":{"desired":{"interval":5}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    for body in [b"one".to_vec(), b"two".to_vec()] {
        client
            .publish("devices/r2/messages/events/", QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
        next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    let (mut conn, _session, mut r) = reader(&hub).await;
    for (want, seq) in [(&b"one"[..], 0), (&b"two"[..], 1)] {
        let e = next(&mut r).await;
        assert_eq!(e.source, "Telemetry", "{e:?}");
        assert_eq!(e.raw, want);
        assert_eq!(e.ann.get("x-opt-sequence-number"), Some(&Value::Long(seq)));
    }
    r.close().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    drop(client);
    hub.stop().await;
}

#[tokio::test]
async fn routing_without_telemetry_numbers_only_the_hub_s_events() {
    let hub = TestHub::start_configured(|c| {
        c.partitions = 1;
        c.routes = azsim_emulator::routing::Routes::parse("twin").unwrap();
    })
    .await;
    hub.create_device("r3").await;
    let key = hub.device_key("r3").await;
    let (client, mut el) = hub.connect("r3", &key, true).await;
    client
        .publish(
            "devices/r3/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"not routed".to_vec(),
        )
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/r3",
            Some(json!({"properties":{"desired":{"interval":7}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (mut conn, _session, mut r) = reader(&hub).await;
    let e = next(&mut r).await;
    assert_eq!(e.source, "twinChangeEvents", "{e:?}");
    assert_eq!(e.body["properties"]["desired"], json!({"interval":7}));
    assert_eq!(e.ann.get("x-opt-sequence-number"), Some(&Value::Long(0)));
    // The device's telemetry is still the emulator's own to show.
    let (_, recent) = hub.rest(Method::GET, "/emulator/events/recent", None).await;
    assert_eq!(recent[0]["body"], "not routed", "{recent}");
    r.close().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    drop(client);
    hub.stop().await;
}

#[test]
fn an_unknown_route_source_is_a_usage_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--in-memory",
            "--mqtt-port",
            "0",
            "--route",
            "twin,bogus",
        ])
        .arg("--state")
        .arg(dir.path())
        .output()
        .expect("azsim runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--route") && err.contains("bogus"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_module_s_events_name_the_module() {
    let hub = TestHub::start_configured(|c| c.partitions = 1).await;
    hub.create_device("r4").await;
    let (s, t) = hub
        .rest(
            Method::PUT,
            "/devices/r4/modules/m1",
            Some(json!({"deviceId":"r4","moduleId":"m1"})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/r4/modules/m1",
            Some(json!({"tags":{"site":"b7"},"properties":{"desired":{"level":2}}})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let (mut conn, _session, mut r) = reader(&hub).await;
    let device = next(&mut r).await;
    assert_eq!(device.app["opType"], "createDeviceIdentity");
    assert!(!device.app.contains_key("moduleId"), "{device:?}");
    for op in ["createDeviceIdentity", "updateTwin"] {
        let e = next(&mut r).await;
        assert_eq!(e.app["opType"], op, "{e:?}");
        assert_eq!(e.app["deviceId"], "r4");
        assert_eq!(e.app["moduleId"], "m1");
        assert_eq!(
            e.ann.get("iothub-connection-module-id"),
            Some(&Value::String("m1".into()))
        );
        if op == "updateTwin" {
            assert_eq!(e.body["tags"], json!({"site":"b7"}), "{e:?}");
            assert_eq!(e.body["properties"]["desired"], json!({"level":2}));
        }
    }
    r.close().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    hub.stop().await;
}
