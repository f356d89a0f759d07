//! The local hub's service side: REST registry/twin/method rules and C2D delivery guarantees
//! (redelivery after reconnect and after a hub restart).

use std::time::Duration;

use reqwest::Method;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;

use crate::support::{TestHub, next_incoming};

#[tokio::test]
async fn rest_crud_uses_etags_and_azure_error_shapes() {
    let hub = TestHub::start().await;
    let (s, created) = hub.rest(Method::PUT, "/devices/r1", Some(json!({"deviceId":"r1","authentication":{"type":"sas","symmetricKey":{"primaryKey":null,"secondaryKey":null}}}))).await;
    assert_eq!(s, 200);
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["connectionState"], "Disconnected");
    assert!(
        created["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .len()
            >= 44
    );
    let etag = created["etag"].as_str().unwrap().to_string();

    let (s, err) = hub
        .rest(Method::PUT, "/devices/r1", Some(json!({"deviceId":"r1"})))
        .await;
    assert_eq!(s, 409);
    let inner: serde_json::Value = serde_json::from_str(err["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 409001);
    assert_eq!(err["ExceptionMessage"], "");

    let client = hub.http();
    let r = client
        .delete(hub.url("/devices/r1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "\"AAAAAAAAAAA=\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["iothub-errorcode"], "PreconditionFailed");

    let (s, list) = hub.rest(Method::GET, "/devices", None).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let r = client
        .delete(hub.url("/devices/r1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, err) = hub.rest(Method::GET, "/devices/r1", None).await;
    assert_eq!(s, 404);
    // Azure's older shape for an unknown device (what azure-iothub reads as DeviceNotFoundError).
    assert!(
        err["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:DeviceNotFound;"),
        "{err}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn rest_without_a_valid_token_is_401_and_bad_json_is_400() {
    let hub = TestHub::start().await;
    let client = hub.http();
    let r = client.get(hub.url("/devices")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let forged = hub.service_token().replace("sig=", "sig=A");
    let r = client
        .get(hub.url("/devices"))
        .header("Authorization", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .put(hub.url("/devices/j1"))
        .header("Authorization", hub.service_token())
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["iothub-errorcode"], "ArgumentInvalid");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["Message"].as_str().unwrap().contains("400004"));
    // The hub keeps serving.
    hub.create_device("j2").await;
    hub.stop().await;
}

#[tokio::test]
async fn twin_patch_checks_the_etag_and_the_limits() {
    let hub = TestHub::start().await;
    hub.create_device("t1").await;
    let client = hub.http();
    let r = client
        .patch(hub.url("/twins/t1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "\"bogus\"")
        .json(&json!({"properties":{"desired":{"a":1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"properties":{"desired":{"bad.key":1}}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"properties":{"desired":{"big":"x".repeat(5000)}}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, t) = hub
        .rest(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"tags":{"site":"lab"},"properties":{"desired":{"a":{"b":1}}}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["properties"]["desired"]["$version"], 2);
    let etag = t["etag"].as_str().unwrap().to_string();
    let r = client
        .patch(hub.url("/twins/t1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", format!("\"{etag}\""))
        .json(&json!({"properties":{"desired":{"a":{"b":null,"c":2}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: serde_json::Value = r.json().await.unwrap();
    assert_eq!(t["properties"]["desired"]["a"], json!({"c":2}));
    assert_eq!(t["properties"]["desired"]["$version"], 3);
    assert_eq!(t["tags"]["site"], "lab");
    hub.stop().await;
}

#[tokio::test]
async fn methods_answer_404103_when_offline_and_400_for_bad_timeouts() {
    let hub = TestHub::start().await;
    hub.create_device("m1").await;
    let (s, v) = hub
        .rest(
            Method::POST,
            "/twins/m1/methods",
            Some(json!({"methodName":"x","responseTimeoutInSeconds":5})),
        )
        .await;
    assert_eq!(s, 404);
    let inner: serde_json::Value = serde_json::from_str(v["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 404103);
    assert_eq!(inner["message"], "Timed out waiting for device to connect.");
    for bad in [4, 301] {
        let (s, _) = hub
            .rest(
                Method::POST,
                "/twins/m1/methods",
                Some(json!({"methodName":"x","responseTimeoutInSeconds":bad})),
            )
            .await;
        assert_eq!(s, 400, "responseTimeoutInSeconds {bad}");
    }
    // Connected but not subscribed to methods is not online for methods.
    let key = hub.device_key("m1").await;
    let (_c, mut el) = hub.connect("m1", &key, true).await;
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let (s, _) = hub
        .rest(
            Method::POST,
            "/twins/m1/methods",
            Some(json!({"methodName":"x"})),
        )
        .await;
    assert_eq!(s, 404);
    poll.abort();
    hub.stop().await;
}

/// The `errorCode` inside an error body's `Message`.
fn error_code(v: &serde_json::Value) -> serde_json::Value {
    let inner: serde_json::Value = serde_json::from_str(v["Message"].as_str().unwrap()).unwrap();
    inner["errorCode"].clone()
}

#[tokio::test]
async fn a_method_waits_for_the_device_until_connect_timeout_on_the_hub_clock() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("m3").await;
    let t0 = clock.unix_ms();
    let invoke = hub.rest(
        Method::POST,
        "/twins/m3/methods",
        Some(json!({"methodName":"x","connectTimeoutInSeconds":30})),
    );
    let driver = async {
        // The hub waits for the device until t0 + 30 s on its clock; then it gives up.
        clock.sleeper_at(t0 + 30_000).await;
        clock.advance(Duration::from_secs(30));
    };
    let ((s, v), ()) = tokio::join!(invoke, driver);
    assert_eq!(s, 404, "{v}");
    assert_eq!(error_code(&v), 404103);
    let inner: serde_json::Value = serde_json::from_str(v["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["info"]["timeout"], "00:00:30");
    // The error body is stamped by the hub's clock, not the system's.
    let stamped = inner["timestampUtc"].as_str().unwrap();
    assert_eq!(
        stamped,
        azsim_emulator::clock::rfc3339_ns(i64::try_from(clock.unix_ms()).unwrap() * 1_000_000),
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_method_the_device_ignores_times_out_with_504101_and_connect_timeout_waits() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("m2").await;
    let key = hub.device_key("m2").await;
    let t0 = clock.unix_ms();
    let invoke = hub.rest(
        Method::POST,
        "/twins/m2/methods",
        Some(
            json!({"methodName":"slow","responseTimeoutInSeconds":5,"connectTimeoutInSeconds":30}),
        ),
    );
    let device = async {
        // 29 of the 30 s connect timeout pass on the hub's clock before the device comes:
        // the invocation still reaches it.
        clock.sleeper_at(t0 + 30_000).await;
        clock.advance(Duration::from_secs(29));
        let (c, mut el) = hub.connect("m2", &key, true).await;
        c.subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
            .await
            .unwrap();
        let topic = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => Some(p.topic.clone()),
            _ => None,
        })
        .await;
        assert!(topic.starts_with("$iothub/methods/POST/slow/"));
        // The device does not answer: the 5 s response timeout runs out on the hub's clock.
        clock.sleeper_at(t0 + 29_000 + 5_000).await;
        clock.advance(Duration::from_secs(5));
        (c, el, topic)
    };
    let ((s, v), (c, mut el, topic)) = tokio::join!(invoke, device);
    assert_eq!(s, 504, "{v}");
    assert_eq!(error_code(&v), 504101);
    // A late answer is dropped; the connection stays up (the hub answers a twin GET after it).
    let rid = topic.rsplit("$rid=").next().unwrap().to_string();
    c.publish(
        format!("$iothub/methods/res/200/?$rid={rid}"),
        QoS::AtMostOnce,
        false,
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    c.publish(
        "$iothub/twin/GET/?$rid=7",
        QoS::AtMostOnce,
        false,
        Vec::new(),
    )
    .await
    .unwrap();
    let twin = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) if p.topic.starts_with("$iothub/twin/res/") => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert!(twin.starts_with("$iothub/twin/res/200/?$rid=7"), "{twin}");
    hub.stop().await;
}

async fn send_c2d(hub: &TestHub, device: &str, body: &str) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/emulator/devices/{device}/c2d"),
            Some(json!({"body": body})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
}

async fn next_c2d(el: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    next_incoming(el, |p| match p {
        Packet::Publish(p) if p.topic.contains("/messages/devicebound/") => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn unacked_c2d_is_redelivered_with_dup_after_reconnect() {
    let hub = TestHub::start().await;
    hub.create_device("c1").await;
    let key = hub.device_key("c1").await;
    let mut opts = hub.device_options("c1", &key, false);
    opts.set_manual_acks(true);
    let (c, mut el) = AsyncClient::new(opts, 16);
    c.subscribe("devices/c1/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    send_c2d(&hub, "c1", "once").await;
    let first = next_c2d(&mut el).await;
    assert!(!first.dup);
    drop(el);
    drop(c);

    // Persistent session: no new SUBSCRIBE needed; the message comes back marked DUP.
    let (c, mut el) = hub.connect("c1", &key, false).await;
    let again = next_c2d(&mut el).await;
    assert!(again.dup);
    assert_eq!(&again.payload[..], b"once");
    drop(c);
    hub.stop().await;
}

#[tokio::test]
async fn queued_c2d_survives_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    hub.create_device("c2").await;
    let key = hub.device_key("c2").await;
    {
        let (c, mut el) = hub.connect("c2", &key, false).await;
        c.subscribe("devices/c2/messages/devicebound/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) = el.poll().await
                {
                    break;
                }
            }
        })
        .await;
    }
    send_c2d(&hub, "c2", "kept").await;
    hub.stop().await;

    let hub = TestHub::start_in(dir.path()).await;
    assert_eq!(hub.device_key("c2").await, key, "registry survives");
    let (_c, mut el) = hub.connect("c2", &key, false).await;
    let m = next_c2d(&mut el).await;
    assert_eq!(&m.payload[..], b"kept");
    hub.stop().await;
}

#[tokio::test]
async fn the_c2d_queue_is_capped_at_50_and_purge_empties_it() {
    let hub = TestHub::start().await;
    hub.create_device("cap").await;
    for i in 0..50 {
        send_c2d(&hub, "cap", &format!("m{i}")).await;
    }
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/cap/c2d",
            Some(json!({"body":"x"})),
        )
        .await;
    assert_eq!(s, 403);
    assert!(v["Message"].as_str().unwrap().contains("403004"));
    let (s, v) = hub
        .rest(Method::DELETE, "/devices/cap/commands", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"totalMessagesPurged":50,"deviceId":"cap"}));
    let (s, _) = hub
        .rest(
            Method::POST,
            "/emulator/devices/nobody/c2d",
            Some(json!({"body":"x"})),
        )
        .await;
    assert_eq!(s, 404);
    hub.stop().await;
}
