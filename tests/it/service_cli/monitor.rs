//! `azsim monitor`: telemetry printed until the event count, and the timeout passing first.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_prints_telemetry_and_exits_0_after_count_events() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("mon-dev").await;
    let cwd = tempfile::tempdir().unwrap();

    for json in [true, false] {
        let mut cmd = azsim(cwd.path());
        cmd.args([
            "monitor",
            "--device",
            "mon-dev",
            "--type",
            "telemetry",
            "--count",
            "1",
        ])
        .args(["--timeout", "30"])
        .args(json.then_some("--json"))
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        wait_monitor_ready(&mut stderr).await;

        let mut dev = RawDevice::connect(&hub, &cs).await;
        dev.send_telemetry(r#"{"temperature":21.5}"#, &[("alert", "hot")])
            .await;
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("monitor exits after one event")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        if json {
            let ev: Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(ev["type"], "telemetry");
            assert_eq!(ev["deviceId"], "mon-dev");
            assert_eq!(ev["body"], r#"{"temperature":21.5}"#);
            assert_eq!(ev["properties"]["alert"], "hot");
        } else {
            assert!(
                stdout.contains(r#"mon-dev telemetry {"temperature":21.5}"#),
                "{stdout}"
            );
            assert!(stdout.contains("alert=hot"), "{stdout}");
        }
        dev.client.disconnect().await.ok();
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_exits_1_with_a_message_when_the_timeout_passes_first() {
    let hub = TestHub::start().await;
    let out = run(&hub, &["monitor", "--count", "3", "--timeout", "1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("error: monitor: timed out after 1 s with 0 of 3 events"),
        "{out:?}"
    );
    hub.stop().await;
}

/// Spawns `azsim monitor ARGS --json` in an empty directory and waits until it is watching.
async fn spawn_monitor(args: &[&str]) -> (tokio::process::Child, tempfile::TempDir) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.arg("monitor")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut stderr).await;
    // Keep draining stderr so the child never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    (child, cwd)
}

async fn json_lines(child: tokio::process::Child) -> Vec<Value> {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("monitor exits after its events")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_reads_telemetry_from_the_event_hub_and_merges_the_hubs_other_events() {
    let hub = TestHub::start_configured(|c| c.partitions = 3).await;
    let cs = hub.create_device("eh-mon").await;
    let ca = hub.ca_file.to_string_lossy().into_owned();

    // Telemetry (over AMQP, every partition) and the connection event (SSE), merged.
    let (child, _cwd) = spawn_monitor(&[
        "--device",
        "eh-mon",
        "--type",
        "telemetry",
        "--type",
        "connection",
        "--count",
        "2",
        "--timeout",
        "30",
        "--hub-connection-string",
        &hub.service_connection_string,
        "--ca",
        &ca,
    ])
    .await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.send_telemetry(r#"{"t":1}"#, &[("color", "red")]).await;
    let events = json_lines(child).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"connected"), "{events:?}");
    let t = events
        .iter()
        .find(|e| e["type"] == "telemetry")
        .expect("telemetry");
    assert_eq!(t["deviceId"], "eh-mon");
    assert_eq!(t["body"], r#"{"t":1}"#);
    assert_eq!(t["properties"]["color"], "red");
    assert_eq!(t["systemProperties"]["content-type"], "application/json");
    // What only the Event Hubs-compatible endpoint gives.
    let ann = &t["annotations"];
    assert_eq!(ann["iothub-message-source"], "Telemetry");
    assert_eq!(ann["iothub-connection-device-id"], "eh-mon");
    assert!(ann["x-opt-sequence-number"].is_i64(), "{t}");
    assert!(ann["x-opt-offset"].is_string(), "{t}");
    assert!(
        ["0", "1", "2"].contains(&t["partition"].as_str().unwrap()),
        "{t}"
    );

    // Only the Event Hubs-compatible connection string (no hub, no hub.json), from the start:
    // the message sent before the monitor started is read back, on its partition.
    let eh_cs = hub.info.eventhub_connection_string.clone().expect("eh cs");
    let partition = t["partition"].as_str().unwrap().to_owned();
    let (child, _cwd) = spawn_monitor(&[
        "--eventhub-connection-string",
        &eh_cs,
        "--ca",
        &ca,
        "--from-start",
        "--partition",
        &partition,
        "--count",
        "1",
        "--timeout",
        "30",
    ])
    .await;
    let events = json_lines(child).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["body"], r#"{"t":1}"#);
    assert_eq!(
        events[0]["annotations"]["x-opt-sequence-number"],
        ann["x-opt-sequence-number"]
    );

    // A consumer group the hub does not have: one line naming it, exit 1.
    let out = run(
        &hub,
        &[
            "monitor",
            "--consumer-group",
            "nope",
            "--count",
            "1",
            "--timeout",
            "20",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("partition"), "{out:?}");
    assert!(!out.stderr.contains("SharedAccessKey="), "{out:?}");
    dev.client.disconnect().await.ok();
    hub.stop().await;
}

/// Given only the hub's connection string (no hub.json to say it is local), monitor asks the
/// hub's host for `messages/events` on 5671 and follows IoT Hub's redirect to the Event Hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_follows_the_messages_events_redirect_when_it_knows_only_the_hub() {
    let _port = crate::support::PORT_8883.lock().await;
    let hub = TestHub::start_configured(|c| c.amqp_port = Some(5671)).await;
    let cs = hub.create_device("redir").await;
    // The CA alone, away from the hub's state dir.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca.pem");
    std::fs::copy(&hub.ca_file, &ca).unwrap();
    let ca = ca.to_string_lossy().into_owned();
    let (child, _cwd) = spawn_monitor(&[
        "--type",
        "telemetry",
        "--count",
        "1",
        "--timeout",
        "30",
        "--hub-connection-string",
        &hub.service_connection_string,
        "--ca",
        &ca,
    ])
    .await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.send_telemetry("via redirect", &[("k", "v")]).await;
    let events = json_lines(child).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["deviceId"], "redir");
    assert_eq!(events[0]["body"], "via redirect", "{events:?}");
    assert_eq!(events[0]["properties"]["k"], "v");
    assert!(events[0]["annotations"]["x-opt-offset"].is_string());
    dev.client.disconnect().await.ok();
    hub.stop().await;
}

#[tokio::test]
async fn a_bad_event_hubs_connection_string_exits_2_naming_the_field_without_the_key() {
    let cwd = tempfile::tempdir().unwrap();
    for (cs, field) in [
        (
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0LWtleQ==",
            "Endpoint",
        ),
        (
            "Endpoint=sb://h/;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0LWtleQ==",
            "EntityPath",
        ),
    ] {
        let mut cmd = azsim(cwd.path());
        cmd.args(["monitor", "--eventhub-connection-string", cs]);
        let out = output(cmd).await;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("--eventhub-connection-string: {field}")),
            "{out:?}"
        );
        assert!(!out.stderr.contains("c2VjcmV0LWtleQ"), "{out:?}");
    }
}
