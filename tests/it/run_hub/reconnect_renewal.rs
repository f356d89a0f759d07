//! Staying connected: short-lived tokens renewed with every message acknowledged once, and a
//! reconnect with backoff after a hub restart losing nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_and_every_message_is_acknowledged_exactly_once() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-ttl").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--token-ttl", "6", "--interval", "1s", "--duration", "20s"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}");
    let renewed = events(&out, "token_renewed").len();
    assert!(renewed >= 2, "renewed {renewed} times: {out:#?}");
    assert!(
        events(&out, "reconnecting").is_empty(),
        "renewal happens before the hub closes the connection: {out:#?}"
    );
    let acked: Vec<&str> = events(&out, "telemetry_acked")
        .iter()
        .map(|a| a["message_id"].as_str().unwrap())
        .collect();
    assert!(acked.len() >= 15, "{} acked", acked.len());
    let mut at_hub: HashMap<String, usize> = HashMap::new();
    for t in recent_telemetry(&hub, "run-ttl").await {
        *at_hub
            .entry(
                t["systemProperties"]["message-id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(at_hub.get(*id), Some(&1), "message {id} at the hub");
    }
    assert_eq!(
        at_hub.len(),
        acked.len(),
        "nothing unacknowledged reached the hub"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hub_restart_the_device_reconnects_with_backoff_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let (mqtt_port, https_port) = (hub.mqtt_port, hub.https_port);
    let cs = hub.create_device("run-rs").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "1s"]));
    for _ in 0..3 {
        dev.event("telemetry_acked").await;
    }
    hub.stop().await;
    dev.event("disconnected").await;
    let r = dev.event("reconnecting").await;
    assert!(r["attempt"].as_u64().unwrap() >= 1);
    // Down until a second attempt failed: messages queue up offline meanwhile.
    dev.wait_for("a second reconnect attempt", |v| {
        v["event"] == "reconnecting" && v["attempt"].as_u64() >= Some(2)
    })
    .await;
    let handle = azsim_emulator::start(
        azsim_emulator::HubConfig::new(dir.path()),
        IpAddr::from([127, 0, 0, 1]),
        mqtt_port,
        https_port,
    )
    .await
    .expect("the hub restarts on the same ports");
    let c = dev.event("connected").await;
    assert_eq!(c["reconnect"], true);
    let last_sent = dev.event("telemetry_sent").await["seq"].as_u64().unwrap();
    dev.wait_for("the newest message acked", |v| {
        v["event"] == "telemetry_acked" && v["seq"].as_u64() >= Some(last_sent + 2)
    })
    .await;
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "{stderr}");
    let attempts: Vec<u64> = events(&out, "reconnecting")
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert!(!attempts.is_empty());
    // Every message acknowledged, or produced (queued) before the end, reached the hub.
    let acked_max = events(&out, "telemetry_acked")
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let stopped = events(&out, "stopped")[0].clone();
    assert_eq!(stopped["dropped"], 0);

    let restarted = TestHubView {
        https_port,
        ca: dir.path().join("ca.pem"),
    };
    let tel = restarted
        .recent(&handle.info.service_connection_string)
        .await;
    // Count at the hub by $.mid. A message whose PUBACK the stopping hub never sent is sent
    // again (same PUBLISH, DUP=1) and may be stored twice: only ever under its own $.mid.
    let sent: HashMap<String, u64> = events(&out, "telemetry_sent")
        .iter()
        .map(|t| {
            (
                t["message_id"].as_str().unwrap().to_owned(),
                t["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut at_hub: HashMap<String, (u64, usize)> = HashMap::new();
    for t in &tel {
        let mid = t["systemProperties"]["message-id"]
            .as_str()
            .unwrap()
            .to_owned();
        let seq = serde_json::from_str::<Value>(t["body"].as_str().unwrap()).unwrap()["seq"]
            .as_u64()
            .unwrap();
        assert_eq!(
            sent.get(&mid),
            Some(&seq),
            "{mid} carries #{seq} at the hub"
        );
        at_hub.entry(mid).or_insert((seq, 0)).1 += 1;
    }
    for a in events(&out, "telemetry_acked") {
        let mid = a["message_id"].as_str().unwrap();
        assert!(at_hub.contains_key(mid), "acknowledged {mid} is at the hub");
    }
    let mut seqs: Vec<u64> = at_hub.values().map(|(seq, _)| *seq).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=acked_max).collect();
    assert_eq!(
        seqs[..acked_max as usize],
        expected[..],
        "one $.mid per message: {seqs:?}"
    );
    let duplicates: usize = at_hub.values().map(|(_, n)| n - 1).sum();
    println!(
        "{} messages at the hub, {duplicates} stored twice (same $.mid)",
        at_hub.len()
    );
    handle.stop().await.unwrap();
}

/// REST access to a hub started with `azsim_emulator::start` directly (not a `TestHub`).
struct TestHubView {
    https_port: u16,
    ca: std::path::PathBuf,
}

impl TestHubView {
    async fn recent(&self, service_cs: &str) -> Vec<Value> {
        let key = service_cs
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .unwrap();
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            &format!("localhost:{}", self.https_port),
            key,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600,
            Some("iothubowner"),
        )
        .unwrap();
        let tls = azsim::tls::client_config(Some(&self.ca)).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let v: Value = http
            .get(format!(
                "https://localhost:{}/emulator/events/recent?deviceId=run-rs&limit=1000&api-version=2021-04-12",
                self.https_port
            ))
            .header("Authorization", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "telemetry")
            .cloned()
            .collect()
    }
}
