//! Partition links through an independent AMQP client: what they need (a token, a known group
//! and partition, a filter the hub understands) and what they carry.

use std::time::Duration;

use azsim_emulator::clock::unix_now;
use fe2o3_amqp::Session;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::Value;
use rumqttc::QoS;

use super::{Cbs, WAIT, open, owner_token, refusal};
use crate::support::TestHub;

const P0: &str = "localhost/ConsumerGroups/$Default/Partitions/0";

#[tokio::test]
async fn a_partition_link_needs_a_token_a_known_group_and_partition_and_then_carries_telemetry() {
    let hub = TestHub::start_configured(|c| {
        c.partitions = 1;
        c.consumer_groups = vec!["analytics".into()];
        // Telemetry only: the first event read is the device's first message.
        c.routes = azsim_emulator::routing::Routes {
            telemetry: true,
            ..azsim_emulator::routing::Routes::NONE
        };
    })
    .await;
    // Telemetry before any consumer: a consumer that starts later reads it.
    hub.create_device("d1").await;
    let key = hub.device_key("d1").await;
    let (client, mut el) = hub.connect("d1", &key, true).await;
    client
        .publish(
            "devices/d1/messages/events/%24.mid=m1&color=red",
            QoS::AtLeastOnce,
            false,
            b"{\"t\":1}".to_vec(),
        )
        .await
        .unwrap();
    crate::support::next_incoming(&mut el, |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;

    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let c = refusal(&mut session, "no-token", P0).await;
    assert!(
        c.as_deref()
            .is_some_and(|c| c.contains("UnauthorizedAccess")),
        "{c:?}"
    );

    let mut cbs = Cbs::attach(&mut session).await;
    let aud = format!("sb://localhost:{}/localhost", hub.info.amqp_port.unwrap());
    assert_eq!(
        cbs.put_token(&aud, &owner_token(&hub, &aud, unix_now() + 600))
            .await
            .0,
        200
    );
    for (name, addr) in [
        ("group", "localhost/ConsumerGroups/nope/Partitions/0"),
        (
            "partition",
            "localhost/ConsumerGroups/$Default/Partitions/1",
        ),
        ("entity", "otherhub/ConsumerGroups/$Default/Partitions/0"),
    ] {
        let c = refusal(&mut session, name, addr).await;
        assert!(
            c.as_deref().is_some_and(|c| c.contains("NotFound")),
            "{addr}: {c:?}"
        );
    }

    // A created group (any case) reads the partition from the start.
    let mut r = Receiver::builder()
        .name("reader")
        .source(
            Source::builder()
                .address("localhost/ConsumerGroups/ANALYTICS/Partitions/0")
                .build(),
        )
        .target("me")
        .attach(&mut session)
        .await
        .expect("attach");
    let d = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
        .await
        .expect("an event in time")
        .expect("event");
    let m = d.message();
    match &m.body {
        Body::Data(b) => assert_eq!(b.iter().next().unwrap().0.to_vec(), b"{\"t\":1}"),
        other => panic!("body {other:?}"),
    }
    let ann = &m.message_annotations.as_ref().unwrap().0;
    let get = |k: &str| {
        ann.iter()
            .find(|(key, _)| format!("{key:?}").contains(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(0)));
    assert_eq!(
        get("iothub-connection-device-id"),
        Some(Value::String("d1".into()))
    );
    let app = &m.application_properties.as_ref().unwrap().0;
    assert_eq!(format!("{:?}", app.get("color")), "Some(String(\"red\"))");

    // The live tail: a message sent now arrives on the open link.
    client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"2".to_vec(),
        )
        .await
        .unwrap();
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let d = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
        .await
        .expect("the live message in time")
        .expect("event");
    match &d.message().body {
        Body::Data(b) => assert_eq!(b.iter().next().unwrap().0.to_vec(), b"2"),
        other => panic!("body {other:?}"),
    }
    r.close().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_selector_the_hub_does_not_understand_is_refused_with_invalid_field() {
    let hub = TestHub::start().await;
    let (mut conn, mut session, _cbs) = super::authorized(&hub).await;
    let mut filter = fe2o3_amqp::types::messaging::FilterSet::new();
    filter.insert(
        "apache.org:selector-filter:string".into(),
        Value::Described(Box::new(serde_amqp::described::Described {
            descriptor: serde_amqp::descriptor::Descriptor::Name(
                "apache.org:selector-filter:string".into(),
            ),
            value: Value::String("amqp.annotation.x-opt-offset < '5'".into()),
        })),
    );
    let attached = Receiver::builder()
        .name("bad-filter")
        .source(Source::builder().address(P0).filter(filter).build())
        .target("me")
        .attach(&mut session)
        .await;
    let why = match attached {
        Err(e) => format!("{e:?}"),
        Ok(mut r) => format!(
            "{:?}",
            tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
                .await
                .expect("refused in time")
        ),
    };
    assert!(why.contains("InvalidField"), "{why}");
    conn.close().await.expect("close");
    hub.stop().await;
}

#[tokio::test]
async fn messages_events_on_the_hub_host_redirects_to_the_event_hubs_compatible_endpoint() {
    let hub = TestHub::start().await;
    let port = hub.info.amqp_port.unwrap();
    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let events = "amqps://localhost/messages/events/ConsumerGroups/$Default/Partitions/0";
    let c = refusal(&mut session, "no-token", events).await;
    assert!(
        c.as_deref()
            .is_some_and(|c| c.contains("UnauthorizedAccess")),
        "{c:?}"
    );

    let mut cbs = Cbs::attach(&mut session).await;
    let token = owner_token(&hub, &hub.hostname, unix_now() + 600);
    assert_eq!(cbs.put_token(&hub.hostname, &token).await.0, 200);
    let got = refusal(&mut session, "events", events)
        .await
        .expect("redirected");
    assert!(got.contains("Redirect"), "{got}");
    let want = format!("amqps://localhost:{port}/localhost/ConsumerGroups/$Default/Partitions/0");
    assert!(got.contains(&want), "the address to follow: {got}");
    assert!(got.contains("network-host"), "{got}");
    // Following it works with the same token.
    let followed = Receiver::builder()
        .name("followed")
        .source(Source::builder().address(want).build())
        .target("me")
        .attach(&mut session)
        .await;
    assert!(followed.is_ok(), "{followed:?}");
    conn.close().await.expect("close");
    hub.stop().await;
}
