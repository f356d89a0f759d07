//! What the hub sends the device: C2D messages with their properties, built-in and canned
//! methods, and the twin read, reported and updated.

use super::*;

async fn invoke(hub: &TestHub, device: &str, method: &str, payload: Value) -> (u16, Value) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/twins/{device}/methods"),
            Some(json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": 10})),
        )
        .await;
    assert_eq!(s, 200, "invoke {method}: {v}");
    (v["status"].as_u64().unwrap() as u16, v["payload"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_messages_arrive_with_their_properties_and_ctrl_c_exits_cleanly() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-c2d").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    dev.event("connected").await;
    dev.wait_for("the twin", |v| v["event"] == "twin").await;
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/run-c2d/c2d",
            Some(json!({"body": "hello device", "properties": {"colour": "blue green"}, "messageId": "m-1"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let c2d = dev.event("c2d").await;
    assert_eq!(c2d["body"], "hello device");
    assert_eq!(c2d["properties"]["colour"], "blue green");
    assert_eq!(c2d["properties"]["$.mid"], "m-1");
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "ctrl-c exits 0: {stderr}");
    assert_eq!(events(&out, "stopped")[0]["reason"], "interrupted");
    assert_eq!(events(&out, "stopped")[0]["c2d"], 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_and_canned_methods_answer_as_documented() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-m").await;
    let mut dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--interval",
            "60s",
            "--method",
            r#"selfTest=201:{"ok":true}"#,
            "--method",
            "ping=503",
        ],
    ));
    dev.wait_for("the twin", |v| v["event"] == "twin").await;

    // --method takes precedence over the built-in ping.
    assert_eq!(
        invoke(&hub, "run-m", "ping", json!({"a": [1, 2]})).await,
        (503, Value::Null)
    );
    assert_eq!(
        invoke(&hub, "run-m", "selfTest", json!(null)).await,
        (201, json!({"ok": true}))
    );
    assert_eq!(
        invoke(&hub, "run-m", "nope", json!({})).await,
        (404, json!({"message": "method not found"}))
    );
    assert_eq!(
        invoke(
            &hub,
            "run-m",
            "setTelemetryInterval",
            json!({"interval": 7})
        )
        .await,
        (200, json!({"interval": 7}))
    );
    let (st, body) = invoke(
        &hub,
        "run-m",
        "setTelemetryInterval",
        json!({"interval": 0}),
    )
    .await;
    assert_eq!(st, 400);
    assert!(body["message"].as_str().unwrap().contains("interval"));
    let m = dev
        .wait_for("the 400", |v| v["event"] == "method" && v["status"] == 400)
        .await;
    assert_eq!(m["name"], "setTelemetryInterval");

    // reboot answers, then the device reconnects.
    assert_eq!(
        invoke(&hub, "run-m", "reboot", json!(null)).await,
        (200, json!({"message": "rebooting"}))
    );
    dev.event("disconnected").await;
    let c = dev.event("connected").await;
    assert_eq!(c["reconnect"], true);
    let (status, out, _) = dev.interrupt().await;
    assert!(status.success());
    assert!(
        events(&out, "reconnecting").is_empty(),
        "a reboot is not a failure"
    );
    hub.stop().await;

    // The built-in ping echoes, on a device without overrides.
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-p").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    dev.wait_for("the twin", |v| v["event"] == "twin").await;
    assert_eq!(
        invoke(&hub, "run-p", "ping", json!({"a": [1, 2], "s": "x"})).await,
        (200, json!({"a": [1, 2], "s": "x"}))
    );
    let (status, ..) = dev.interrupt().await;
    assert!(status.success());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_is_read_reported_and_desired_updates_apply_in_order() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tw").await;
    // A desired value set before the device connects arrives in the GET.
    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/run-tw",
            Some(json!({"properties": {"desired": {"telemetryInterval": 30}}})),
        )
        .await;
    assert_eq!(s, 200);
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    let twin = dev.event("twin").await;
    assert_eq!(twin["desired"]["telemetryInterval"], 30);
    let first_ack = dev
        .wait_for("the interval ack", |v| {
            v["event"] == "reported" && v["patch"]["telemetryInterval"]["av"] == 2
        })
        .await;
    assert!(first_ack["version"].as_u64().unwrap() >= 1);

    for interval in [5, 6, 7] {
        let (s, _) = hub
            .rest(
                Method::PATCH,
                "/twins/run-tw",
                Some(json!({"properties": {"desired": {"telemetryInterval": interval}}})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut versions = Vec::new();
    for interval in [5, 6, 7] {
        let d = dev.event("desired").await;
        assert_eq!(d["patch"]["telemetryInterval"], interval);
        versions.push(d["version"].as_u64().unwrap());
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    dev.wait_for("the last ack", |v| {
        v["event"] == "reported" && v["patch"]["telemetryInterval"]["value"] == 7
    })
    .await;
    let (s, twin) = hub.rest(Method::GET, "/twins/run-tw", None).await;
    assert_eq!(s, 200);
    let ack = &twin["properties"]["reported"]["telemetryInterval"];
    assert_eq!(ack["value"], 7);
    assert_eq!(ack["ac"], 200);
    assert_eq!(ack["av"], versions[2]);
    assert_eq!(
        twin["properties"]["reported"]["azsim"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let (status, ..) = dev.interrupt().await;
    assert!(status.success());
    hub.stop().await;
}
