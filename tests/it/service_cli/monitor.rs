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
