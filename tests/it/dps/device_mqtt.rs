//! DPS over the hub's MQTT listener, with a plain MQTT client (rumqttc) speaking the topics:
//! register, 202, poll, 200 with the registration state; then the device connects to the hub it
//! was assigned. Refusals are DPS statuses on the response topic; garbage closes only that
//! connection.

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use rumqttc::{AsyncClient, ConnectReturnCode, EventLoop, Packet, QoS};
use serde_json::{Value, json};

use super::{assert_dps_error, derive, registration_token, service};
use crate::support::{TestHub, next_incoming, wait_closed, wait_connack};

/// A DPS MQTT connection for `registration_id` with `token` (CONNACK awaited, subscribed).
async fn dps_connect(
    hub: &TestHub,
    scope: &str,
    registration_id: &str,
    token: &str,
) -> (AsyncClient, EventLoop) {
    let user = format!("{scope}/registrations/{registration_id}/api-version=2019-03-31");
    let o = hub.options_with(registration_id, &user, token, true);
    let (c, mut el) = AsyncClient::new(o, 16);
    assert_eq!(
        wait_connack(&mut el).await.expect("connack"),
        ConnectReturnCode::Success
    );
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    (c, el)
}

/// Publishes a DPS request and waits for its answer: status, retry-after, body.
async fn call(
    c: &AsyncClient,
    el: &mut EventLoop,
    topic: &str,
    rid: &str,
    body: &Value,
) -> (u16, Option<u32>, Value) {
    c.publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
    next_incoming(el, |p| match p {
        Packet::Publish(p) => {
            let r = azsim_proto::topic::parse_dps_response(&p.topic).ok()?;
            r.rid.eq_decoded(rid).then(|| {
                (
                    r.status,
                    r.retry_after,
                    serde_json::from_slice(&p.payload).unwrap(),
                )
            })
        }
        _ => None,
    })
    .await
}

/// Register and poll once; the poll's status and body (or the register's, when it failed).
async fn provision(
    c: &AsyncClient,
    el: &mut EventLoop,
    registration_id: &str,
    payload: Option<Value>,
) -> (u16, Value) {
    let mut body = json!({"registrationId": registration_id});
    if let Some(p) = payload {
        body["payload"] = p;
    }
    let (s, retry, v) = call(
        c,
        el,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        "1",
        &body,
    )
    .await;
    if s != 202 {
        return (s, v);
    }
    assert_eq!(v["status"], "assigning", "{v}");
    assert!(retry.is_some(), "a 202 says when to poll");
    let op = v["operationId"].as_str().unwrap();
    let (s, _, v) = call(
        c,
        el,
        &format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
        "2",
        &json!({}),
    )
    .await;
    (s, v)
}

async fn twin(hub: &TestHub, device: &str) -> Value {
    let (s, t) = hub
        .rest(Method::GET, &format!("/twins/{device}"), None)
        .await;
    assert_eq!(s, 200, "{t}");
    t
}

#[tokio::test]
async fn a_device_registers_over_mqtt_connects_to_its_hub_and_reprovisioning_follows_the_policy() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();
    let (_, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/dev-m",
        Some(json!({"deviceId": "dev-m-device",
            "initialTwin": {"tags": {"site": "lab"}, "properties": {"desired": {"interval": 5}}}})),
    )
    .await;
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();

    let token = registration_token(&scope, "dev-m", &key, unix_now() + 600);
    let (c, mut el) = dps_connect(&hub, &scope, "dev-m", &token).await;
    let (s, v) = provision(&c, &mut el, "dev-m", Some(json!({"fw": "1.0"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "assigned");
    let state = &v["registrationState"];
    assert_eq!(state["deviceId"], "dev-m-device");
    assert_eq!(state["registrationId"], "dev-m");
    assert_eq!(state["assignedHub"], hub.info.provisioning_host.as_str());
    assert_eq!(state["substatus"], "initialAssignment");
    assert_eq!(state["payload"], json!({"fw": "1.0"}));
    for f in ["etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"] {
        assert!(state[f].is_string(), "{f}: {state}");
    }

    // The assigned device connects with the enrollment's key and has the initial twin.
    let (_dev, _el) = hub.connect("dev-m-device", &key, true).await;
    let t = twin(&hub, "dev-m-device").await;
    assert_eq!(t["tags"]["site"], "lab", "{t}");
    assert_eq!(t["properties"]["desired"]["interval"], 5, "{t}");
    let (s, st) = service(&hub, Method::GET, "/registrations/dev-m", None).await;
    assert_eq!((s, &st["deviceId"]), (200, &json!("dev-m-device")), "{st}");

    // Re-registration keeps the twin (migrateDeviceData) ...
    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/dev-m-device",
            Some(json!({"properties": {"desired": {"interval": 9}}})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = provision(&c, &mut el, "dev-m", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["registrationState"]["substatus"], "deviceDataMigrated");
    assert_eq!(
        v["registrationState"]["createdDateTimeUtc"],
        state["createdDateTimeUtc"]
    );
    assert_eq!(
        twin(&hub, "dev-m-device").await["properties"]["desired"]["interval"],
        9
    );
    // ... or resets it to the initial twin when the policy says not to migrate.
    let mut e2 = e.clone();
    e2["reprovisionPolicy"] = json!({"updateHubAssignment": true, "migrateDeviceData": false});
    let (s, _) = service(&hub, Method::PUT, "/enrollments/dev-m", Some(e2)).await;
    assert_eq!(s, 200);
    let (s, v) = provision(&c, &mut el, "dev-m", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["registrationState"]["substatus"], "deviceDataReset");
    assert_eq!(
        twin(&hub, "dev-m-device").await["properties"]["desired"]["interval"],
        5
    );
    c.disconnect().await.unwrap();

    // A group: the device signs with the key derived for its registration id.
    let group_key = azsim_emulator::state_dir::generate_key();
    let (s, _) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/fleet",
        Some(json!({"attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}})),
    )
    .await;
    assert_eq!(s, 200);
    let device_key = derive(&group_key, "fleet-7");
    let token = registration_token(&scope, "fleet-7", &device_key, unix_now() + 600);
    let (c, mut el) = dps_connect(&hub, &scope, "fleet-7", &token).await;
    let (s, v) = provision(&c, &mut el, "fleet-7", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["registrationState"]["deviceId"], "fleet-7");
    let (_dev, _el) = hub.connect("fleet-7", &device_key, true).await;
    // The group's registrations (the individual enrollment's are not among them).
    let (s, q) = service(&hub, Method::POST, "/registrations/fleet/query", None).await;
    assert_eq!(s, 200, "{q}");
    let ids: Vec<_> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["registrationId"].clone())
        .collect();
    assert_eq!(ids, [json!("fleet-7")]);
    let (s, _) = service(&hub, Method::POST, "/registrations/nogroup/query", None).await;
    assert_eq!(s, 404);
    hub.stop().await;
}

#[tokio::test]
async fn dps_refusals_are_dps_statuses_and_garbage_closes_only_that_connection() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();
    let (_, e) = service(&hub, Method::PUT, "/enrollments/ok", Some(json!({}))).await;
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, d) = service(
        &hub,
        Method::PUT,
        "/enrollments/off",
        Some(json!({"provisioningStatus": "disabled"})),
    )
    .await;
    let off_key = d["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong = azsim_emulator::state_dir::generate_key();
    let soon = unix_now() + 600;

    // A healthy session stays up through all of this.
    let (good, mut good_el) = dps_connect(
        &hub,
        &scope,
        "ok",
        &registration_token(&scope, "ok", &key, soon),
    )
    .await;

    let cases = [
        (
            "ok",
            scope.as_str(),
            registration_token(&scope, "ok", &wrong, soon),
            401,
            401002,
        ),
        (
            "ok",
            scope.as_str(),
            registration_token(&scope, "ok", &key, unix_now() - 10),
            401,
            401002,
        ),
        (
            "off",
            scope.as_str(),
            registration_token(&scope, "off", &off_key, soon),
            401,
            401002,
        ),
        (
            "nobody",
            scope.as_str(),
            registration_token(&scope, "nobody", &key, soon),
            404,
            404201,
        ),
        (
            "ok",
            "0ne00000000",
            registration_token("0ne00000000", "ok", &key, soon),
            401,
            401002,
        ),
    ];
    for (reg, sc, token, status, code) in cases {
        let (c, mut el) = dps_connect(&hub, sc, reg, &token).await;
        let (s, v) = provision(&c, &mut el, reg, None).await;
        assert_eq!(s, status, "{reg} in {sc}: {v}");
        assert_dps_error(&v, code);
        c.disconnect().await.unwrap();
    }
    // The disabled enrollment's message says so (the hub's diagnosis, no secret).
    let (c, mut el) = dps_connect(
        &hub,
        &scope,
        "off",
        &registration_token(&scope, "off", &off_key, soon),
    )
    .await;
    let (_, v) = provision(&c, &mut el, "off", None).await;
    assert!(v["message"].as_str().unwrap().contains("disabled"), "{v}");
    assert!(!v.to_string().contains(&off_key));

    // Client id other than the registration id: CONNACK 5.
    let user = format!("{scope}/registrations/ok/api-version=2019-03-31");
    let o = hub.options_with(
        "someone-else",
        &user,
        &registration_token(&scope, "ok", &key, soon),
        true,
    );
    let (_c, mut el) = AsyncClient::new(o, 16);
    assert!(
        wait_connack(&mut el)
            .await
            .is_err_and(|e| format!("{e:?}").contains("NotAuthorized"))
    );

    // Garbage: a hub topic, a malformed DPS topic: the connection closes.
    for topic in [
        "$iothub/twin/GET/?$rid=1",
        "$dps/registrations/PUT/iotdps-register",
        "$dps/whatever",
    ] {
        let (c, mut el) = dps_connect(
            &hub,
            &scope,
            "ok",
            &registration_token(&scope, "ok", &key, soon),
        )
        .await;
        c.publish(topic, QoS::AtMostOnce, false, "{").await.unwrap();
        wait_closed(&mut el).await;
    }
    // Not JSON on the register topic: DPS's 400, connection kept.
    let (s, _, v) = call(
        &good,
        &mut good_el,
        "$dps/registrations/PUT/iotdps-register/?$rid=9",
        "9",
        &json!("x"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = provision(&good, &mut good_el, "ok", None).await;
    assert_eq!(s, 200, "{v}");
    // The hub still serves devices.
    let (_d, _e) = hub.connect("ok", &key, true).await;
    hub.stop().await;
}
