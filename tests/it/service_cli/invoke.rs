//! `azsim invoke`: the device's status and payload, an offline device, and a silent one.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_prints_the_devices_status_and_payload_and_exits_0() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("m-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::Methods).await;

    let invoke = tokio::spawn({
        let cs = hub.service_connection_string.clone();
        let ca = hub.ca_file.clone();
        async move {
            let cwd = tempfile::tempdir().unwrap();
            let mut cmd = azsim(cwd.path());
            cmd.args([
                "invoke",
                "m-dev",
                "reboot",
                "--payload",
                r#"{"delay":3}"#,
                "--json",
            ])
            .arg("--hub-connection-string")
            .arg(cs)
            .arg("--ca")
            .arg(ca);
            output(cmd).await
        }
    });
    let req = dev.next_publish().await;
    let parsed = topic::parse_method_request(&req.topic).expect("method request topic");
    assert_eq!(parsed.name.as_str(), "reboot");
    let request_payload: Value = serde_json::from_slice(&req.payload).unwrap();
    assert_eq!(request_payload, serde_json::json!({"delay": 3}));
    let mut res = String::new();
    topic::write_method_response(&mut res, 418, parsed.rid.as_raw()).unwrap();
    dev.client
        .publish(res, QoS::AtMostOnce, false, br#"{"teapot":true}"#.to_vec())
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            if dev.events.poll().await.is_err() {
                break;
            }
        }
    });
    let out = invoke.await.unwrap();
    assert_eq!(
        out.code, 0,
        "a device answer of any status exits 0: {out:?}"
    );
    assert_eq!(
        out.json(),
        serde_json::json!({"status": 418, "payload": {"teapot": true}})
    );
    driver.abort();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_on_an_offline_device_exits_1_with_azures_device_not_online_error() {
    let hub = TestHub::start().await;
    hub.create_device("offline-dev").await;
    let out = run(&hub, &["invoke", "offline-dev", "ping", "--timeout", "5"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("error: 404103 DeviceNotOnline: "),
        "{out:?}"
    );
    assert_eq!(out.stdout, "", "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_on_a_silent_device_exits_1_with_gateway_timeout() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("silent-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::Methods).await;
    let driver = tokio::spawn(async move { while dev.events.poll().await.is_ok() {} });
    let out = run(&hub, &["invoke", "silent-dev", "ping", "--timeout", "5"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 504101"), "{out:?}");
    driver.abort();
    hub.stop().await;
}
