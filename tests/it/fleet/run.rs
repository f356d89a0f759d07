//! Running fleets: 200 devices all acknowledged and answering a method, a desired patch and C2D,
//! three shards covering a fleet exactly once, the Prometheus endpoint, listed connection
//! strings, and every device reconnecting without loss after the hub is killed and restarted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_200_is_all_acknowledged_and_its_devices_answer_methods_twin_and_c2d() {
    let hub = TestHub::start().await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "200",
            "--interval",
            "1s",
            "--connect-rate",
            "500",
            "--stats-every",
            "500ms",
        ],
    ));
    let start = f.wait_for("the fleet line", 60, event("fleet")).await;
    assert_eq!(start["devices"], 200);
    let ids = start["device_ids"].as_array().unwrap();
    assert_eq!(
        (ids[0].as_str(), ids[199].as_str()),
        (Some("sim-1"), Some("sim-200"))
    );
    f.wait_for("200 connected", 120, |v| {
        v["event"] == "stats" && v["connected"] == 200
    })
    .await;

    // Three different devices, picked at random.
    let mut picks = BTreeSet::new();
    while picks.len() < 3 {
        picks.insert(rand::random::<u32>() % 200 + 1);
    }
    let picks: Vec<String> = picks.into_iter().map(|i| format!("sim-{i}")).collect();
    let (method_dev, twin_dev, c2d_dev) = (&picks[0], &picks[1], &picks[2]);

    let (status, body) = hub
        .rest(
            Method::POST,
            &format!("/twins/{method_dev}/methods"),
            Some(
                json!({"methodName": "ping", "payload": {"n": 7}, "responseTimeoutInSeconds": 20}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["payload"], json!({"n": 7}), "{body}");
    let m = f
        .wait_for("the method event", 30, |v| {
            v["event"] == "method" && v["device_id"] == method_dev.as_str()
        })
        .await;
    assert_eq!(m["name"], "ping");

    let (status, body) = hub
        .rest(
            Method::PATCH,
            &format!("/twins/{twin_dev}"),
            Some(json!({"properties": {"desired": {"telemetryInterval": 2}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    f.wait_for("the desired patch", 30, |v| {
        v["event"] == "desired" && v["device_id"] == twin_dev.as_str()
    })
    .await;
    f.wait_for("the reported acknowledgement", 30, |v| {
        v["event"] == "reported" && v["device_id"] == twin_dev.as_str()
    })
    .await;
    let (_, twin) = hub
        .rest(Method::GET, &format!("/twins/{twin_dev}"), None)
        .await;
    assert!(
        !twin["properties"]["reported"]["telemetryInterval"].is_null(),
        "the device acknowledged the desired interval: {twin}"
    );

    let (status, body) = hub
        .rest(
            Method::POST,
            &format!("/emulator/devices/{c2d_dev}/c2d"),
            Some(json!({"body": "hello fleet", "properties": {"k": "v"}})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let c2d = f
        .wait_for("the c2d event", 30, |v| {
            v["event"] == "c2d" && v["device_id"] == c2d_dev.as_str()
        })
        .await;
    assert_eq!(c2d["body"], "hello fleet");
    assert_eq!(c2d["properties"]["k"], "v");

    f.wait_for("every device acknowledged", 120, |v| {
        v["event"] == "stats" && v["devices_acked"] == 200
    })
    .await;
    f.terminate();
    let summary = f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);
    assert_eq!(summary["reason"], "interrupted");
    assert_eq!(summary["ever_connected"], 200, "{summary}");
    assert_eq!(summary["devices_acked"], 200, "{summary}");
    assert_eq!(
        summary["connected"], 0,
        "every device disconnected: {summary}"
    );
    assert!(summary["acked"].as_u64().unwrap() >= 200, "{summary}");
    assert!(summary["latency_ms"]["p99"].as_f64().is_some(), "{summary}");
    assert!(summary["connect_ms"]["p50"].as_f64().is_some(), "{summary}");
    assert!(summary["methods"].as_u64().unwrap() >= 1);
    assert!(summary["c2d"].as_u64().unwrap() >= 1);
    let errors = summary["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|k| !k.starts_with("refused") && !k.starts_with("gave_up")),
        "{summary}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_cover_the_fleet_exactly_once() {
    let hub = TestHub::start().await;
    let mut shards: Vec<Fleet> = (0..3)
        .map(|i| {
            Fleet::spawn(fleet(
                &hub,
                &[
                    "--devices",
                    "31",
                    "--shard",
                    &format!("{i}/3"),
                    "--count",
                    "2",
                    "--interval",
                    "200ms",
                ],
            ))
        })
        .collect();
    let mut seen = Vec::new();
    for f in &mut shards {
        let start = f.wait_for("the fleet line", 60, event("fleet")).await;
        let ids: Vec<String> = start["device_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(start["devices"], ids.len());
        let summary = f.wait_for("the summary", 120, event("summary")).await;
        assert_eq!(summary["reason"], "count", "{summary}");
        assert_eq!(summary["devices_acked"], ids.len(), "{summary}");
        assert_eq!(f.exit_code().await, 0);
        seen.extend(ids);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a device ran in two shards: {seen:?}"
    );
    let fleet: BTreeSet<String> = (1..=31).map(|i| format!("sim-{i}")).collect();
    assert_eq!(sorted.into_iter().collect::<BTreeSet<_>>(), fleet);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_fleet_figures_as_prometheus_text() {
    let hub = TestHub::start().await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "5",
            "--interval",
            "200ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--stats-every",
            "200ms",
        ],
    ));
    let m = f
        .wait_for("the metrics address", 60, event("metrics"))
        .await;
    let addr = m["addr"].as_str().unwrap().to_owned();
    f.wait_for("5 acknowledged", 60, |v| {
        v["event"] == "stats" && v["devices_acked"] == 5
    })
    .await;
    // A plain HTTP/1.0 GET, as a Prometheus scraper sends it.
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: fleet\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let (head, text) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("azsim_fleet_devices"), 5.0);
    assert_eq!(value("azsim_fleet_devices_connected"), 5.0);
    assert_eq!(value("azsim_fleet_devices_acked"), 5.0);
    assert!(value("azsim_fleet_messages_acked_total") >= 5.0);
    assert!(text.contains("azsim_fleet_publish_ack_seconds{quantile=\"0.99\"}"));
    f.terminate();
    f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_connection_strings_run_as_given() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::from("# two existing devices\n");
    for id in ["listed-a", "listed-b"] {
        lines.push_str(&hub.create_device(id).await);
        lines.push('\n');
    }
    let file = dir.path().join("devices.txt");
    std::fs::write(&file, lines).unwrap();
    let mut cmd = fleet(&hub, &["--count", "1", "--interval", "200ms", "--ca"]);
    cmd.arg(&hub.ca_file).arg("--connection-strings").arg(&file);
    let mut f = Fleet::spawn(cmd);
    let start = f.wait_for("the fleet line", 60, event("fleet")).await;
    assert_eq!(start["device_ids"], json!(["listed-a", "listed-b"]));
    let summary = f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(summary["devices_acked"], 2, "{summary}");
    assert_eq!(f.exit_code().await, 0);
    hub.stop().await;
}

/// `azsim hub` as its own process on `state` (ports 0: free ones; then the same again). The
/// AMQP ports are always free ones: with a given MQTT port `azsim hub` would take 5671 and
/// 5672, which another hub or a parallel test may hold, and the restart would fail.
fn hub_process(state: &std::path::Path, mqtt: u16, https: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "--mqtt-port", &mqtt.to_string()])
        .args(["--https-port", &https.to_string()])
        .args([
            "--amqp-port",
            "0",
            "--amqp-dev-port",
            "0",
            "--dashboard-port",
            "0",
        ])
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("azsim hub starts")
}

/// The hub's record once the process `pid` wrote it.
async fn hub_info(state: &std::path::Path, pid: u32) -> azsim_emulator::HubInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(i) = azsim_emulator::HubInfo::load(state)
            && i.pid == pid
        {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {pid} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_hub_is_killed_and_restarted_every_device_reconnects_and_no_acknowledged_message_is_lost()
 {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let mut hub = hub_process(&state, 0, 0);
    let info = hub_info(&state, hub.id()).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["fleet", "--json", "--print-acks", "--devices", "20"])
        .args(["--interval", "200ms", "--stats-every", "200ms", "--state"])
        .arg(&state)
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut f = Fleet::spawn(cmd);
    f.wait_for("every device acknowledged", 60, |v| {
        v["event"] == "stats" && v["devices_acked"] == 20
    })
    .await;

    // SIGKILL mid-stream, then the same ports again.
    hub.kill().unwrap();
    hub.wait().unwrap();
    let mut hub = hub_process(&state, info.mqtt_port, info.https_port);
    let info = hub_info(&state, hub.id()).await;
    let back = f
        .wait_for("every device back", 90, |v| {
            v["event"] == "stats" && v["reconnects"].as_u64() >= Some(20) && v["connected"] == 20
        })
        .await;
    let acked_then = back["acked"].as_u64().unwrap();
    f.wait_for("more acknowledgements", 60, |v| {
        v["event"] == "stats" && v["acked"].as_u64() >= Some(acked_then + 40)
    })
    .await;
    f.terminate();
    f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);

    // Every $.mid the fleet saw acknowledged is in the hub's telemetry log.
    let mut acked: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for v in f.seen.iter().filter(|v| v["event"] == "acked") {
        acked
            .entry(v["device_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(acked.len(), 20);
    let tls = azsim::tls::client_config(Some(&info.ca_file)).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let key = info
        .service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .unwrap();
    let mut token = String::new();
    azsim_proto::sas::sign(
        &mut token,
        &format!("{}:{}", info.hostname, info.https_port),
        key,
        azsim_emulator::clock::unix_now() + 600,
        Some("iothubowner"),
    )
    .unwrap();
    for (device, mids) in &acked {
        let url = format!(
            "https://{}:{}/emulator/events/recent?deviceId={device}&limit=10000&api-version=2021-04-12",
            info.hostname, info.https_port
        );
        let stored: Value = http
            .get(url)
            .header("Authorization", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored: BTreeSet<&str> = stored
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["systemProperties"]["message-id"].as_str())
            .collect();
        let lost: Vec<&String> = mids
            .iter()
            .filter(|m| !stored.contains(m.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{device}: acknowledged but not stored: {lost:?}"
        );
    }
    hub.kill().unwrap();
    hub.wait().unwrap();
}
