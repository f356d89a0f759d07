//! Faults on demand: the SDKs' in-band `AzIoTHub_FaultOperation*` telemetry (one test per kind
//! that applies to MQTT, after its delay on a manual clock), the same from outside through
//! `/emulator/devices/{id}/faults` and `azsim hub fault`, and the tier's daily quota and REST
//! throttles.

use std::time::Duration;

use azsim_emulator::clock::{ManualClock, unix_now as now};
use reqwest::Method;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill};
use serde_json::{Value, json};

use crate::hub_strict::{Raw, connected, device};
use crate::support::TestHub;

/// The property bag the C# SDK's `FaultInjection.ComposeErrorInjectionProperties` sends.
fn fault_topic(device: &str, kind: &str, delay: u64, duration: u64) -> String {
    // FaultInjection.cs: "boom" for an ungraceful disconnect, "byebye" for a graceful one.
    let reason = if kind == "ShutDownMqtt" {
        "byebye"
    } else {
        "boom"
    };
    format!(
        "devices/{device}/messages/events/AzIoTHub_FaultOperationType={kind}&AzIoTHub_FaultOperationCloseReason={reason}&AzIoTHub_FaultOperationDelayInSecs={delay}&AzIoTHub_FaultOperationDurationInSecs={duration}"
    )
}

async fn telemetry_bodies(hub: &TestHub, device: &str) -> Vec<Value> {
    let (_, v) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}"),
            None,
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .cloned()
        .collect()
}

/// Sends the fault message. With a delay the connection stays up until it has passed (a later
/// message is acknowledged, the fault message never is) and the hub's timer is waiting.
async fn request_fault(r: &mut Raw, clock: &ManualClock, id: &str, kind: &str, delay: u64) {
    let from = clock.unix_ms() + delay * 1000;
    r.publish1(&fault_topic(id, kind, delay, 10), "fault").await;
    if delay > 0 {
        let ok = r
            .publish1(&format!("devices/{id}/messages/events/"), "still up")
            .await;
        r.puback(ok).await;
        clock.sleeper_at(from).await;
    }
}

#[tokio::test]
async fn kill_tcp_drops_the_connection_after_its_delay_and_the_will_is_sent() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "fk").await;
    let mut r = Raw::open(&hub).await;
    let will = LastWill::new(
        "devices/fk/messages/events/",
        "gone",
        QoS::AtLeastOnce,
        false,
    );
    let code = r
        .connect(
            "fk",
            &hub.username("fk"),
            &hub.device_token("fk", &key, now() + 3600),
            Some(will),
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    request_fault(&mut r, &clock, "fk", "KillTcp", 2).await;
    clock.advance(Duration::from_secs(2));
    r.expect_closed().await;
    // The fault message is not routed; the will is.
    let bodies = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let b = telemetry_bodies(&hub, "fk").await;
            if b.iter().any(|e| e["body"] == "gone") {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the will arrives");
    assert!(bodies.iter().all(|e| e["body"] != "fault"), "{bodies:?}");
    hub.stop().await;
}

#[tokio::test]
async fn shut_down_mqtt_closes_gracefully_without_the_will() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "fs").await;
    let mut r = Raw::open(&hub).await;
    let will = LastWill::new(
        "devices/fs/messages/events/",
        "gone",
        QoS::AtLeastOnce,
        false,
    );
    let code = r
        .connect(
            "fs",
            &hub.username("fs"),
            &hub.device_token("fs", &key, now() + 3600),
            Some(will),
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    request_fault(&mut r, &clock, "fs", "ShutDownMqtt", 1).await;
    clock.advance(Duration::from_secs(1));
    r.expect_closed().await;
    // The events log is written in order: a marker sent after the close comes after any will.
    let key2 = device(&hub, "fs-marker").await;
    let mut m = connected(&hub, "fs-marker", &key2).await;
    let id = m
        .publish1("devices/fs-marker/messages/events/", "marker")
        .await;
    m.puback(id).await;
    let bodies = telemetry_bodies(&hub, "fs").await;
    assert!(bodies.iter().all(|e| e["body"] != "gone"), "{bodies:?}");
    hub.stop().await;
}

#[tokio::test]
async fn invoke_throttling_gives_429_to_twin_and_rest_and_closes_on_telemetry_for_its_duration() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "ft").await;
    let mut r = connected(&hub, "ft", &key).await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    request_fault(&mut r, &clock, "ft", "InvokeThrottling", 0).await;
    r.publish0("$iothub/twin/GET/?$rid=1", Vec::new()).await;
    let p = r.next_publish().await;
    assert!(
        p.topic.starts_with("$iothub/twin/res/429/?$rid=1"),
        "{}",
        p.topic
    );
    let (s, v) = hub.rest(Method::GET, "/twins/ft", None).await;
    assert_eq!(s, 429, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("429001"), "{v}");
    r.publish1("devices/ft/messages/events/", "x").await;
    r.expect_closed().await;
    // After the duration (10 s) all is well again.
    clock.advance(Duration::from_secs(10));
    let (s, _) = hub.rest(Method::GET, "/twins/ft", None).await;
    assert_eq!(s, 200);
    let mut r = connected(&hub, "ft", &key).await;
    let id = r.publish1("devices/ft/messages/events/", "y").await;
    r.puback(id).await;
    hub.stop().await;
}

#[tokio::test]
async fn invoke_max_message_quota_closes_on_telemetry_until_the_window_ends() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "fq").await;
    let mut r = connected(&hub, "fq", &key).await;
    request_fault(&mut r, &clock, "fq", "InvokeMaxMessageQuota", 0).await;
    r.publish1("devices/fq/messages/events/", "x").await;
    r.expect_closed().await;
    clock.advance(Duration::from_secs(10));
    let mut r = connected(&hub, "fq", &key).await;
    let id = r.publish1("devices/fq/messages/events/", "y").await;
    r.puback(id).await;
    hub.stop().await;
}

#[tokio::test]
async fn invoke_auth_error_closes_after_its_delay_and_refuses_connects_for_its_duration() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "fa").await;
    let mut r = connected(&hub, "fa", &key).await;
    request_fault(&mut r, &clock, "fa", "InvokeAuthError", 1).await;
    clock.advance(Duration::from_secs(1));
    r.expect_closed().await;
    let token = hub.device_token("fa", &key, now() + 3600);
    let mut r = Raw::open(&hub).await;
    let code = r.connect("fa", &hub.username("fa"), &token, None).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    clock.advance(Duration::from_secs(10));
    let mut r = Raw::open(&hub).await;
    let code = r.connect("fa", &hub.username("fa"), &token, None).await;
    assert_eq!(code, ConnectReturnCode::Success);
    hub.stop().await;
}

#[tokio::test]
async fn amqp_fault_kinds_do_not_apply_to_mqtt_and_are_plain_telemetry() {
    let hub = TestHub::start().await;
    let key = device(&hub, "fm").await;
    let mut r = connected(&hub, "fm", &key).await;
    let id = r
        .publish1(&fault_topic("fm", "KillAmqpSession", 0, 5), "amqp")
        .await;
    r.puback(id).await;
    let bodies = telemetry_bodies(&hub, "fm").await;
    let e = bodies.iter().find(|e| e["body"] == "amqp").expect("routed");
    assert_eq!(
        e["properties"]["AzIoTHub_FaultOperationType"],
        "KillAmqpSession"
    );
    hub.stop().await;
}

/// The CLI, run without blocking the runtime the in-process hub serves on.
async fn azsim(args: &[&str], state: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(args)
        .arg("--state")
        .arg(state)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn azsim_hub_fault_drops_expires_and_throttles_from_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let hub = TestHub::start_in(&dir).await;
    let key = device(&hub, "fc").await;

    let mut r = connected(&hub, "fc", &key).await;
    let out = azsim(&["hub", "fault", "fc", "drop"], &dir).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "drop");
    assert_eq!(v["deviceId"], "fc");
    r.expect_closed().await;

    let mut r = connected(&hub, "fc", &key).await;
    let out = azsim(&["hub", "fault", "fc", "expire-token"], &dir).await;
    assert!(out.status.success(), "{out:?}");
    r.expect_closed().await;
    // A fresh token connects at once.
    let _r = connected(&hub, "fc", &key).await;

    let out = azsim(&["hub", "fault", "fc", "throttle", "--for", "600"], &dir).await;
    assert!(out.status.success(), "{out:?}");
    let (s, _) = hub.rest(Method::GET, "/twins/fc", None).await;
    assert_eq!(s, 429);

    // Bad input: exit 2 naming the field; an unknown device: exit 1.
    let out = azsim(&["hub", "fault", "fc", "explode"], &dir).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KIND"),
        "{out:?}"
    );
    let out = azsim(&["hub", "fault", "nobody", "drop"], &dir).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/fc/faults",
            Some(json!({"kind": "drop", "afterSeconds": -1})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    hub.stop().await;
}

#[test]
fn bad_tier_and_units_are_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (&["hub", "--tier", "S9"][..], "--tier"),
        (&["hub", "--tier", "F1", "--units", "2"][..], "--units"),
        (&["hub", "--tier", "S1", "--units", "0"][..], "--units"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(args)
            .arg("--state")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn the_f1_daily_quota_closes_the_connection_with_403002_until_the_next_utc_day() {
    let clock = ManualClock::at_system_now();
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::F1);
        cfg.units = 1;
    })
    .await;
    let key = device(&hub, "q1").await;
    let mut r = connected(&hub, "q1", &key).await;
    // 8,000 messages of 0.5 KB a day: a message just under 256 KB counts as 512 of them.
    let big = vec![b'x'; 256 * 1024 - 64];
    for _ in 0..15 {
        let id = r.publish1("devices/q1/messages/events/", big.clone()).await;
        r.puback(id).await;
    }
    r.publish1("devices/q1/messages/events/", big.clone()).await;
    r.expect_closed().await;
    // Still used up today; a small message fits in what is left (7,680 of 8,000).
    let mut r = connected(&hub, "q1", &key).await;
    let id = r.publish1("devices/q1/messages/events/", "small").await;
    r.puback(id).await;
    // The next UTC day starts afresh (a token valid on the hub's new day to reconnect with:
    // the old one expired with the jump).
    let day = 86_400_000;
    clock.set_unix_ms((clock.unix_ms() / day + 1) * day);
    r.expect_closed().await;
    let mut r = Raw::open(&hub).await;
    let token = hub.device_token("q1", &key, clock.unix_ms() / 1000 + 3600);
    let code = r.connect("q1", &hub.username("q1"), &token, None).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let id = r.publish1("devices/q1/messages/events/", big).await;
    r.puback(id).await;
    hub.stop().await;
}

#[tokio::test]
async fn the_tier_s_registry_throttle_answers_429_until_the_minute_is_over() {
    let clock = ManualClock::at_system_now();
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::S1);
        cfg.units = 1;
    })
    .await;
    hub.create_device("rt").await;
    // S1: 100 identity registry operations a minute per unit; the PUT above was one.
    let mut ok = 1;
    loop {
        let (s, v) = hub.rest(Method::GET, "/devices/rt", None).await;
        if s == 429 {
            assert!(v["Message"].as_str().unwrap().contains("429001"), "{v}");
            break;
        }
        assert_eq!(s, 200, "{v}");
        ok += 1;
        assert!(ok <= 100, "no throttle after {ok} calls");
    }
    assert_eq!(ok, 100);
    clock.advance(Duration::from_secs(60));
    let (s, _) = hub.rest(Method::GET, "/devices/rt", None).await;
    assert_eq!(s, 200);
    hub.stop().await;
}
