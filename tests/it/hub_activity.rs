//! Registry and twin activity fields over real TLS: `lastActivityTime`,
//! `connectionStateUpdatedTime` and the twin's `cloudToDeviceMessageCount`.

use std::time::Duration;

use reqwest::Method;
use rumqttc::{Event, Packet, QoS};
use serde_json::{Value, json};

use azsim_emulator::HubConfig;
use azsim_emulator::clock::ManualClock;

use crate::support::{TestHub, next_incoming};

const NEVER: &str = "0001-01-01T00:00:00Z";

/// Azure's format: `YYYY-MM-DDTHH:MM:SS.fffffffZ` (7 fraction digits).
fn assert_azure_time(t: &str) {
    let b = t.as_bytes();
    assert_eq!(b.len(), 28, "{t}");
    assert_eq!((b[4], b[10], b[19], b[27]), (b'-', b'T', b'.', b'Z'), "{t}");
    assert!(b[20..27].iter().all(u8::is_ascii_digit), "{t}");
}

async fn device(hub: &TestHub, id: &str) -> Value {
    let (s, v) = hub.rest(Method::GET, &format!("/devices/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn twin(hub: &TestHub, id: &str) -> Value {
    let (s, v) = hub.rest(Method::GET, &format!("/twins/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn field(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing: {v}"))
        .to_string()
}

/// Polls the registry until `device`'s connectionState is `state` (the hub notices a close
/// asynchronously).
async fn wait_state(hub: &TestHub, id: &str, state: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v = device(hub, id).await;
            if v["connectionState"] == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never became {state}"))
}

/// The hub's time on `clock` in Azure's format.
fn at(clock: &ManualClock) -> String {
    azsim_emulator::clock::azure_time_ms(i64::try_from(clock.unix_ms()).unwrap())
}

/// A persistent hub in `dir` on `clock`.
async fn start_on(dir: &std::path::Path, clock: &ManualClock) -> TestHub {
    let mut cfg = HubConfig::new(dir);
    cfg.clock = clock.clock();
    TestHub::start_with(cfg).await
}

#[tokio::test]
async fn last_activity_moves_forward_with_telemetry_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_system_now();
    let hub = start_on(dir.path(), &clock).await;
    hub.create_device("act").await;
    let key = hub.device_key("act").await;
    let fresh = device(&hub, "act").await;
    assert_eq!(fresh["lastActivityTime"], NEVER);
    assert_eq!(fresh["connectionStateUpdatedTime"], NEVER);

    let (c, mut el) = hub.connect("act", &key, true).await;
    let connected = device(&hub, "act").await;
    assert_eq!(connected["connectionState"], "Connected");
    let t_connect = field(&connected, "lastActivityTime");
    let s_connect = field(&connected, "connectionStateUpdatedTime");
    assert_azure_time(&t_connect);
    assert_eq!(
        t_connect,
        at(&clock),
        "the connect is activity, on the hub's clock"
    );
    assert_eq!(s_connect, t_connect);

    clock.advance(Duration::from_millis(1500));

    c.publish(
        "devices/act/messages/events/",
        QoS::AtLeastOnce,
        false,
        b"1".to_vec(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let after = device(&hub, "act").await;
    let t_telemetry = field(&after, "lastActivityTime");
    assert_eq!(t_telemetry, at(&clock));
    assert_eq!(field(&after, "connectionStateUpdatedTime"), s_connect);
    assert_eq!(twin(&hub, "act").await["lastActivityTime"], t_telemetry);

    clock.advance(Duration::from_secs(2));
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            el.poll().await,
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
    let gone = wait_state(&hub, "act", "Disconnected").await;
    let s_disconnect = field(&gone, "connectionStateUpdatedTime");
    assert_eq!(s_disconnect, at(&clock));
    assert_eq!(field(&gone, "lastActivityTime"), t_telemetry);
    hub.stop().await;

    clock.advance(Duration::from_secs(60));
    let hub = start_on(dir.path(), &clock).await;
    let back = device(&hub, "act").await;
    assert_eq!(back["connectionState"], "Disconnected");
    assert_eq!(field(&back, "lastActivityTime"), t_telemetry);
    assert_eq!(field(&back, "connectionStateUpdatedTime"), s_disconnect);
    hub.stop().await;
}

#[tokio::test]
async fn twin_requests_count_as_activity_and_a_deleted_device_starts_fresh() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("tw").await;
    let key = hub.device_key("tw").await;
    let (c, mut el) = hub.connect("tw", &key, true).await;
    let t0 = field(&device(&hub, "tw").await, "lastActivityTime");
    assert_eq!(t0, at(&clock));
    clock.advance(Duration::from_millis(1));
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    c.publish(
        "$iothub/twin/GET/?$rid=1",
        QoS::AtMostOnce,
        false,
        Vec::new(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::Publish(_)).then_some(())).await;
    let t1 = field(&device(&hub, "tw").await, "lastActivityTime");
    assert_eq!(t1, at(&clock), "after {t0}");
    drop(c);
    drop(el);

    // As a correct client deletes (IoT Hub needs If-Match on DELETE).
    let r = hub
        .http()
        .delete(hub.url("/devices/tw"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "\"*\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    hub.create_device("tw").await;
    let again = device(&hub, "tw").await;
    assert_eq!(again["lastActivityTime"], NEVER, "{again}");
    assert_eq!(again["connectionStateUpdatedTime"], NEVER, "{again}");
    hub.stop().await;
}

#[tokio::test]
async fn the_twin_shows_the_c2d_queue_depth() {
    let hub = TestHub::start().await;
    hub.create_device("q").await;
    assert_eq!(twin(&hub, "q").await["cloudToDeviceMessageCount"], 0);
    for i in 0..3 {
        let (s, v) = hub
            .rest(
                Method::POST,
                "/emulator/devices/q/c2d",
                Some(json!({"body": format!("m{i}")})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    assert_eq!(twin(&hub, "q").await["cloudToDeviceMessageCount"], 3);
    assert_eq!(device(&hub, "q").await["cloudToDeviceMessageCount"], 3);

    // The device takes one and acknowledges it (rumqttc acks QoS 1 automatically).
    let key = hub.device_key("q").await;
    let (c, mut el) = hub.connect("q", &key, true).await;
    c.subscribe("devices/q/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    for _ in 0..3 {
        next_incoming(&mut el, |p| matches!(p, Packet::Publish(_)).then_some(())).await;
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Keep polling so the automatic PUBACKs go out.
            let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
            if twin(&hub, "q").await["cloudToDeviceMessageCount"] == 0 {
                return;
            }
        }
    })
    .await
    .expect("the completed messages leave the queue");
    drop(c);
    hub.stop().await;
}
