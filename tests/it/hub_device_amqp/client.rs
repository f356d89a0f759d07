//! A device's side of AMQP through an independent client (fe2o3-amqp), on a hub whose clock
//! the test moves: token checks, renewal and expiry, case-sensitive ids, oversize telemetry.

use std::time::Duration;

use azsim_emulator::clock::ManualClock;
use fe2o3_amqp::link::Sender;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value as AmqpValue};
use fe2o3_amqp::{Session, link::delivery::Sendable};
use reqwest::Method;
use serde_json::json;

use crate::hub_amqp::{Cbs, open};
use crate::support::TestHub;

const WAIT: Duration = Duration::from_secs(20);

/// A device token for `device` (as written in `sr`) signed with `key`, valid until `se`.
fn token(hub: &TestHub, device: &str, key: &str, se: u64) -> String {
    hub.device_token(device, key, se)
}

fn now(clock: &ManualClock) -> u64 {
    clock.clock().unix_secs()
}

/// The AMQP error condition a sender link on `address` is refused with, if it is.
async fn sender_refusal(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
) -> Option<String> {
    let mut s = match Sender::attach(session, name, address).await {
        Ok(s) => s,
        Err(e) => return Some(format!("{e:?}")),
    };
    match tokio::time::timeout(Duration::from_secs(2), s.on_detach()).await {
        Ok(e) => Some(format!("{e:?}")),
        Err(_) => None,
    }
}

fn telemetry(id: &str, body: Vec<u8>) -> Sendable<fe2o3_amqp::types::messaging::Data> {
    Sendable::builder()
        .message(
            Message::builder()
                .properties(Properties {
                    message_id: Some(MessageId::String(id.into())),
                    ..Properties::default()
                })
                .data(Binary::from(body))
                .build(),
        )
        .settled(false)
        .build()
}

#[tokio::test]
async fn a_device_token_covers_its_own_id_exactly_until_it_expires_unless_renewed() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("Dev1").await;
    let key = hub.device_key("Dev1").await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/off1",
            Some(json!({"deviceId": "off1", "status": "disabled"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let off_key = hub.device_key("off1").await;

    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut cbs = Cbs::attach(&mut session).await;
    let aud = |d: &str| format!("{}/devices/{d}", hub.hostname);
    let t = token(&hub, "dev1", &key, now(&clock) + 60);
    let (status, desc) = cbs.put_token(&aud("dev1"), &t).await;
    assert_eq!((status, desc.as_str()), (401, "unknown device"));
    let t = token(&hub, "off1", &off_key, now(&clock) + 60);
    let (status, desc) = cbs.put_token(&aud("off1"), &t).await;
    assert_eq!((status, desc.as_str()), (401, "device disabled"));
    let t = token(&hub, "Dev1", &key, now(&clock) - 1);
    let (status, desc) = cbs.put_token(&aud("Dev1"), &t).await;
    assert_eq!(status, 401, "{desc}");
    assert!(desc.contains("expired"), "{desc}");
    let t = token(&hub, "Dev1", &off_key, now(&clock) + 60);
    assert_eq!(cbs.put_token(&aud("Dev1"), &t).await.0, 401, "another key");
    // An injected auth-error fault refuses the device's token, as it refuses a CONNECT.
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/Dev1/faults",
            Some(json!({"kind": "auth-error", "forSeconds": 5})),
        )
        .await;
    assert!(s < 300, "{s} {v}");
    let t = token(&hub, "Dev1", &key, now(&clock) + 60);
    let (status, desc) = cbs.put_token(&aud("Dev1"), &t).await;
    assert_eq!(status, 401, "{desc}");
    assert!(desc.contains("auth-error"), "{desc}");
    clock.advance(Duration::from_secs(6));
    // `HostName` with the AMQPS port: the SDKs sign `sr` with it.
    let with_port = format!(
        "{}:{}/devices/Dev1",
        hub.hostname,
        hub.info.amqp_port.unwrap()
    );
    let mut t = String::new();
    azsim_proto::sas::sign(&mut t, &with_port, &key, now(&clock) + 60, None).expect("sign");
    let (status, desc) = cbs.put_token(&with_port, &t).await;
    assert_eq!(status, 200, "{desc}");

    let first_expiry = now(&clock) + 60;
    let t = token(&hub, "Dev1", &key, first_expiry);
    let (status, desc) = cbs.put_token(&aud("Dev1"), &t).await;
    assert_eq!(status, 200, "{desc}");
    // Ids are case-sensitive: the token for Dev1 does not open dev1's links.
    let refused = sender_refusal(&mut session, "lower", "/devices/dev1/messages/events").await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("UnauthorizedAccess")),
        "{refused:?}"
    );

    let mut tx = Sender::attach(&mut session, "events", "/devices/Dev1/messages/events")
        .await
        .expect("telemetry link");
    let sent = tokio::time::timeout(WAIT, tx.send(telemetry("m1", b"{\"n\":1}".to_vec())))
        .await
        .expect("settled in time")
        .expect("sent");
    assert!(matches!(sent, Outcome::Accepted(_)), "{sent:?}");
    let big = tokio::time::timeout(WAIT, tx.send(telemetry("big", vec![b'x'; 300 * 1024])))
        .await
        .expect("settled in time")
        .expect("sent");
    match big {
        Outcome::Rejected(r) => {
            let e = r.error.expect("an error");
            assert_eq!(
                format!("{:?}", e.condition),
                "LinkError(MessageSizeExceeded)",
                "{e:?}"
            );
        }
        other => panic!("a message over 256 KiB is rejected: {other:?}"),
    }

    // Renewed before it runs out, the link outlives the first token.
    clock.advance(Duration::from_secs(40));
    let t = token(&hub, "Dev1", &key, now(&clock) + 60);
    assert_eq!(cbs.put_token(&aud("Dev1"), &t).await.0, 200);
    clock.advance(Duration::from_secs(30));
    assert!(now(&clock) > first_expiry);
    let sent = tokio::time::timeout(WAIT, tx.send(telemetry("m2", b"{\"n\":2}".to_vec())))
        .await
        .expect("settled in time")
        .expect("sent");
    assert!(matches!(sent, Outcome::Accepted(_)), "{sent:?}");
    let (_, events) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=Dev1", None)
        .await;
    let ids: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .filter_map(|e| e["systemProperties"]["message-id"].as_str())
        .collect();
    assert!(
        ids.contains(&"m1") && ids.contains(&"m2") && !ids.contains(&"big"),
        "{events}"
    );

    // Not renewed: the link is detached when the token runs out.
    clock.advance(Duration::from_secs(60));
    let detached = tokio::time::timeout(WAIT, tx.on_detach())
        .await
        .expect("detached in time");
    assert!(
        format!("{detached:?}").contains("UnauthorizedAccess"),
        "{detached:?}"
    );
    drop(conn);
    hub.stop().await;
}

#[tokio::test]
async fn a_released_c2d_message_comes_again_until_the_max_delivery_count_a_module_sends_as_itself_and_mqtt_and_amqp_take_over_from_each_other()
 {
    let hub = TestHub::start_configured(|cfg| cfg.limits.c2d_max_delivery_count = 2).await;
    hub.create_device("d1").await;
    let key = hub.device_key("d1").await;
    let (s, m) = hub
        .rest(
            Method::PUT,
            "/devices/d1/modules/m1",
            Some(json!({"deviceId": "d1", "moduleId": "m1"})),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    let module_key = m["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let se = azsim_emulator::clock::unix_now() + 600;
    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut cbs = Cbs::attach(&mut session).await;
    let t = token(&hub, "d1", &key, se);
    let (status, desc) = cbs
        .put_token(&format!("{}/devices/d1", hub.hostname), &t)
        .await;
    assert_eq!(status, 200, "{desc}");

    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/d1/c2d",
            Some(json!({"body": "again", "messageId": "c-1", "ack": "full"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let mut rx = fe2o3_amqp::link::Receiver::builder()
        .name("c2d")
        .source("/devices/d1/messages/devicebound")
        .target("here")
        .auto_accept(false)
        .attach(&mut session)
        .await
        .expect("c2d link");
    for count in 0..2u32 {
        let d = tokio::time::timeout(WAIT, rx.recv::<Body<AmqpValue>>())
            .await
            .expect("delivered in time")
            .expect("delivery");
        let m = d.message();
        assert_eq!(
            m.properties.as_ref().and_then(|p| p.message_id.clone()),
            Some(MessageId::String("c-1".into()))
        );
        assert_eq!(
            m.header.as_ref().map(|h| h.delivery_count),
            Some(count),
            "{m:?}"
        );
        rx.release(&d).await.expect("released");
    }
    // Delivered twice, the maximum: dead-lettered, with its feedback.
    let records = super::feedback_records(&hub, 1).await;
    assert_eq!(
        records[0]["statusCode"], "DeliveryCountExceeded",
        "{records:?}"
    );
    assert_eq!(records[0]["originalMessageId"], "c-1", "{records:?}");
    // A module's own token and telemetry link: its messages name it.
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{}/devices/d1/modules/m1", hub.hostname),
        &module_key,
        se,
        None,
    )
    .expect("sign");
    let (status, desc) = cbs
        .put_token(&format!("{}/devices/d1/modules/m1", hub.hostname), &t)
        .await;
    assert_eq!(status, 200, "{desc}");
    let mut tx = Sender::attach(
        &mut session,
        "module-events",
        "/devices/d1/modules/m1/messages/events",
    )
    .await
    .expect("module telemetry link");
    let sent = tokio::time::timeout(WAIT, tx.send(telemetry("from-m1", b"{}".to_vec())))
        .await
        .expect("settled in time")
        .expect("sent");
    assert!(matches!(sent, Outcome::Accepted(_)), "{sent:?}");
    let (_, events) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=d1", None)
        .await;
    let ev = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["systemProperties"]["message-id"] == "from-m1")
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(ev["moduleId"], "m1", "{ev}");
    assert_eq!(
        ev["annotations"]["iothub-connection-module-id"], "m1",
        "{ev}"
    );

    // The twin: a GET sent before the receiver link is attached is answered on it (the
    // SDKs attach both links at once and send at once).
    let mut twin_tx = Sender::attach(&mut session, "twin-req", "/devices/d1/twin")
        .await
        .expect("twin sender link");
    let get = Message::builder()
        .properties(Properties {
            correlation_id: Some(MessageId::String("get-1".into())),
            ..Properties::default()
        })
        .message_annotations(
            fe2o3_amqp::types::messaging::MessageAnnotations::builder()
                .insert(
                    fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol("operation".into()),
                    AmqpValue::String("GET".into()),
                )
                .build(),
        )
        .data(Binary::from(b" ".to_vec()))
        .build();
    let sent = tokio::time::timeout(WAIT, twin_tx.send(get))
        .await
        .expect("settled in time")
        .expect("sent");
    assert!(matches!(sent, Outcome::Accepted(_)), "{sent:?}");
    let mut twin_rx = fe2o3_amqp::link::Receiver::builder()
        .name("twin-res")
        .source("/devices/d1/twin")
        .target("twin-here")
        .attach(&mut session)
        .await
        .expect("twin receiver link");
    let res = tokio::time::timeout(WAIT, twin_rx.recv::<Body<AmqpValue>>())
        .await
        .expect("answered in time")
        .expect("response");
    let m = res.message();
    assert_eq!(
        m.properties.as_ref().and_then(|p| p.correlation_id.clone()),
        Some(MessageId::String("get-1".into()))
    );
    let status = m.message_annotations.as_ref().and_then(|a| {
        a.0.get(&fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol("status".into()))
            .cloned()
    });
    assert_eq!(status, Some(AmqpValue::Int(200)), "{m:?}");
    twin_rx.accept(&res).await.expect("accept");

    // One connection per device, whichever transport: MQTT takes over from AMQP (the C2D
    // link is detached as stolen), and a new AMQP link takes over from MQTT.
    let (_mqtt, mut el) = hub.connect("d1", &key, true).await;
    let stolen = tokio::time::timeout(WAIT, rx.recv::<Body<AmqpValue>>())
        .await
        .expect("detached in time");
    assert!(format!("{stolen:?}").contains("Stolen"), "{stolen:?}");
    let _rx2 = fe2o3_amqp::link::Receiver::builder()
        .name("c2d-again")
        .source("/devices/d1/messages/devicebound")
        .target("here-again")
        .attach(&mut session)
        .await
        .expect("c2d link again");
    crate::support::wait_closed(&mut el).await;

    // Under throttling and over the quota telemetry is rejected with IoT Hub's conditions;
    // the link stays.
    for (kind, condition) in [
        ("throttle", "com.microsoft:device-container-throttled"),
        ("quota", "com.microsoft:quota-exceeded"),
    ] {
        let (s, v) = hub
            .rest(
                Method::POST,
                "/emulator/devices/d1/faults",
                Some(json!({"kind": kind, "forSeconds": 600})),
            )
            .await;
        assert!(s < 300, "{s} {v}");
        let out = tokio::time::timeout(WAIT, tx.send(telemetry(kind, b"{}".to_vec())))
            .await
            .expect("settled in time")
            .expect("sent");
        match out {
            Outcome::Rejected(r) => {
                let e = r.error.expect("an error");
                assert!(format!("{:?}", e.condition).contains(condition), "{e:?}");
            }
            other => panic!("{kind}: rejected, not {other:?}"),
        }
    }
    drop(conn);
    hub.stop().await;
}
