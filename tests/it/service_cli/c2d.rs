//! `azsim c2d`: a message reaching a connected device with its properties, and the feedback of
//! acknowledged messages printed and completed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_send_reaches_a_connected_device_with_its_properties() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("c2d-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::C2d).await;

    let out = run(
        &hub,
        &[
            "c2d",
            "send",
            "c2d-dev",
            "hello device",
            "--property",
            "color=blue",
            "--property",
            "shape=round square",
            "--content-type",
            "text/plain",
            "--message-id",
            "mid-42",
            "--correlation-id",
            "cid-7",
            "--ack",
            "full",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["messageId"], "mid-42");

    let msg = dev.next_publish().await;
    assert_eq!(msg.payload.as_ref(), b"hello device");
    let parsed = topic::parse_c2d(&msg.topic).expect("c2d topic");
    assert_eq!(parsed.device_id, "c2d-dev");
    let mut props = std::collections::BTreeMap::new();
    for p in parsed.bag.iter() {
        let mut k = [0u8; 256];
        let mut v = [0u8; 256];
        props.insert(
            p.name.decode(&mut k).unwrap().to_owned(),
            p.value
                .map(|v2| v2.decode(&mut v).unwrap().to_owned())
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        props.get("color").map(String::as_str),
        Some("blue"),
        "{props:?}"
    );
    assert_eq!(
        props.get("shape").map(String::as_str),
        Some("round square"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.mid").map(String::as_str),
        Some("mid-42"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.cid").map(String::as_str),
        Some("cid-7"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.ct").map(String::as_str),
        Some("text/plain"),
        "{props:?}"
    );
    assert_eq!(
        props.get("iothub-ack").map(String::as_str),
        Some("full"),
        "{props:?}"
    );

    let out = run(&hub, &["c2d", "send", "no-such-device", "x"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_feedback_prints_and_completes_the_feedback_of_acked_messages() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("fb-cli").await;

    let out = run(&hub, &["c2d", "feedback"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(out.stderr.contains("no c2d feedback pending"), "{out:?}");
    let out = run(&hub, &["c2d", "feedback", "--timeout", "1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("none arrived within 1 s"), "{out:?}");
    let out = run(&hub, &["c2d", "feedback", "--timeout", "0"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--timeout"), "{out:?}");

    // The event stream announces the feedback too.
    let cwd = tempfile::tempdir().unwrap();
    let mut mon = azsim(cwd.path());
    mon.args([
        "monitor",
        "--type",
        "c2d",
        "--count",
        "3",
        "--timeout",
        "60",
        "--json",
    ])
    .arg("--hub-connection-string")
    .arg(&hub.service_connection_string)
    .arg("--ca")
    .arg(&hub.ca_file)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut mon = mon.spawn().unwrap();
    let mut mon_err = BufReader::new(mon.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut mon_err).await;

    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::C2d).await;
    for (id, ack) in [("m-none", "none"), ("m-cli", "full")] {
        let out = run(
            &hub,
            &[
                "c2d",
                "send",
                "fb-cli",
                "hi",
                "--ack",
                ack,
                "--message-id",
                id,
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        dev.next_publish().await;
    }
    // Keep the device's event loop running so its automatic PUBACKs go out.
    let device = tokio::spawn(async move { while dev.events.poll().await.is_ok() {} });

    let out = run(&hub, &["c2d", "feedback", "--timeout", "20"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].ends_with(" fb-cli m-cli Success"), "{out:?}");

    let mon = tokio::time::timeout(Duration::from_secs(30), mon.wait_with_output())
        .await
        .expect("monitor sees two completions and one feedback")
        .unwrap();
    let mon_out = String::from_utf8_lossy(&mon.stdout).into_owned();
    assert_eq!(mon.status.code(), Some(0), "{mon_out}");
    let events: Vec<Value> = mon_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fb = events
        .iter()
        .find(|e| e["type"] == "c2dFeedback")
        .unwrap_or_else(|| panic!("no c2dFeedback event: {mon_out}"));
    assert_eq!(fb["deviceId"], "fb-cli");
    assert_eq!(fb["messageId"], "m-cli");
    assert_eq!(fb["statusCode"], "Success");

    // Completed: nothing left. A purged message asked for negative feedback: --json shows it.
    let out = run(&hub, &["c2d", "feedback"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    device.abort();
    let (s, _) = hub
        .rest(
            reqwest::Method::POST,
            "/emulator/devices/fb-cli/c2d",
            Some(serde_json::json!({"body": "x", "messageId": "m-purged", "ack": "negative"})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = hub
        .rest(reqwest::Method::DELETE, "/devices/fb-cli/commands", None)
        .await;
    assert_eq!(s, 200);
    let out = run(&hub, &["c2d", "feedback", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rec = out.json();
    assert_eq!(rec["originalMessageId"], "m-purged", "{rec}");
    assert_eq!(rec["statusCode"], "Purged", "{rec}");
    assert_eq!(rec["deviceId"], "fb-cli", "{rec}");
    hub.stop().await;
}
