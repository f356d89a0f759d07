//! Who a run connects as: sim-device-1 on the live local hub without a connection string, a hub
//! started on 8883 keeping its state, sim-device-2 for a second run, and a module.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connection_string_it_runs_sim_device_1_on_the_live_local_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args([
        "run",
        "--json",
        "--count",
        "2",
        "--interval",
        "1s",
        "--state",
    ])
    .arg(dir.path())
    .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
    .env_remove("IOTHUB_CONNECTION_STRING")
    .env_remove("AZSIM_CA_FILE")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-1");
    assert_eq!(events(&out, "telemetry_acked").len(), 2);
    // The hub in hub.json (this test's) registered the device and got the telemetry.
    let (s, _) = hub.rest(Method::GET, "/devices/sim-device-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(recent_telemetry(&hub, "sim-device-1").await.len(), 2);
    hub.stop().await;
}

/// `azsim run --json --count 2` with no connection string in `cwd`, so it starts the local hub in
/// `cwd/.azsim/hub` on the default ports. A process outside this test binary (a developer's hub)
/// may hold 127.0.0.1:8883 for a moment on a shared machine: a busy port is retried for up to
/// 60 s, as the Python SDK test does.
async fn run_embedded(cwd: &std::path::Path) -> (ExitStatus, Vec<Value>, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
        cmd.args(["run", "--json", "--count", "2", "--interval", "1s"])
            .current_dir(cwd)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let (status, out, stderr) = Running::spawn(cmd).finish().await;
        if status.code() == Some(1)
            && stderr.contains("is in use")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        return (status, out, stderr);
    }
}

fn acked_ids(out: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events(out, "telemetry_acked")
        .iter()
        .map(|a| a["message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_connection_string_and_no_hub_it_starts_one_on_8883_and_keeps_its_state() {
    let _port = crate::support::PORT_8883.lock().await;
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join(".azsim/hub");

    let (status, out, stderr) = run_embedded(cwd.path()).await;
    assert!(status.success(), "{stderr}");
    let local = events(&out, "local_hub")[0].clone();
    assert_eq!(local["started"], true, "{local}");
    assert_eq!(local["state"], ".azsim/hub");
    assert_eq!(
        (local["mqtt_port"].as_u64(), local["https_port"].as_u64()),
        (Some(8883), Some(8443))
    );
    assert!(
        local["try"][0]
            .as_str()
            .unwrap()
            .starts_with("azsim invoke sim-device-1 ping"),
        "{local}"
    );
    let connected = events(&out, "connected")[0].clone();
    assert_eq!(connected["device_id"], "sim-device-1");
    assert_eq!(connected["host"], "localhost:8883");
    let first = acked_ids(&out);
    assert_eq!(first.len(), 2, "{out:#?}");
    for f in ["hub.json", "ca.pem", "hub.db", "iothubowner.key"] {
        assert!(state.join(f).is_file(), "{f} in .azsim/hub");
    }
    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    assert_eq!(info.mqtt_port, 8883);

    // The saved state, opened by a hub on free ports: sim-device-1 is registered and the hub
    // stored both acknowledged messages.
    let view = TestHub::start_in(&state).await;
    let key = view.device_key("sim-device-1").await;
    let mut stored: Vec<String> = recent_telemetry(&view, "sim-device-1")
        .await
        .iter()
        .map(|t| {
            t["systemProperties"]["message-id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, first);
    view.stop().await;

    // A second run starts the hub again on the same state: same device, same key.
    let (status, out2, stderr) = run_embedded(cwd.path()).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out2, "local_hub")[0]["started"], true);
    let second = acked_ids(&out2);
    assert_eq!(second.len(), 2);
    let view = TestHub::start_in(&state).await;
    assert_eq!(
        view.device_key("sim-device-1").await,
        key,
        "the device was not re-created"
    );
    assert_eq!(recent_telemetry(&view, "sim-device-1").await.len(), 4);
    view.stop().await;
    let all = serde_json::to_string(&out).unwrap() + &serde_json::to_string(&out2).unwrap();
    assert!(
        !all.contains(&key) && !all.contains("sig="),
        "secret leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_local_hub_takes_sim_device_2_instead_of_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let local_run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
        cmd.args(["run", "--json", "--interval", "1s", "--state"])
            .arg(dir.path())
            .args(extra)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let mut first = Running::spawn(local_run(&[]));
    let c = first.event("connected").await;
    assert_eq!(c["device_id"], "sim-device-1");
    first.event("telemetry_acked").await;

    let (status, out, stderr) = Running::spawn(local_run(&["--count", "2"])).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "local_hub")[0]["device_id"], "sim-device-2");
    assert_eq!(events(&out, "local_hub")[0]["started"], false);
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-2");
    assert_eq!(events(&out, "telemetry_acked").len(), 2);

    // SIGTERM ends a run as cleanly as Ctrl-C.
    let (status, out, stderr) = first.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(
        events(&out, "reconnecting").is_empty(),
        "the first run kept its connection: {out:#?}"
    );
    assert_eq!(events(&out, "stopped")[0]["reason"], "interrupted");
    assert_eq!(
        events(&out, "disconnected").last().unwrap()["reason"],
        "closed by the device"
    );
    // Once sim-device-1 is free again, a run takes it.
    let (status, out, stderr) = Running::spawn(local_run(&["--count", "1"])).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-1");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_run_names_its_module_in_the_connected_event() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-edge").await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/run-edge/modules/filter",
            Some(json!({"deviceId": "run-edge", "moduleId": "filter"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let module_key = v["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let (head, _) = cs.split_once(";SharedAccessKey=").unwrap();
    let module_cs = format!("{head};ModuleId=filter;SharedAccessKey={module_key}");
    let dev = Running::spawn(azsim_run(
        &hub,
        &module_cs,
        &["--count", "1", "--interval", "200ms"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let connected = events(&out, "connected")[0];
    assert_eq!(connected["device_id"], "run-edge");
    assert_eq!(connected["module_id"], "filter");
    // A device run has no module_id field at all.
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--count", "1", "--interval", "200ms"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let connected = events(&out, "connected")[0];
    assert_eq!(connected["device_id"], "run-edge");
    assert!(connected.get("module_id").is_none(), "{connected}");
    // The human line says `as device/module`.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "run",
            "--count",
            "1",
            "--interval",
            "200ms",
            "--connection-string",
        ])
        .arg(&module_cs)
        .arg("--ca")
        .arg(&hub.ca_file)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" as run-edge/filter"), "{text}");
    hub.stop().await;
}
