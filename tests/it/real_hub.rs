//! `azsim run` against a real Azure IoT Hub. Runs only when `IOTHUB_CONNECTION_STRING` holds a
//! service connection string (a policy with registry write and service connect, e.g.
//! `iothubowner`); otherwise prints `skipped: IOTHUB_CONNECTION_STRING not set`.
//! `.github/workflows/real-hub.yml` runs it with that secret.
//!
//! It creates a uniquely named device, runs `azsim run --count 3`, runs the device again to
//! invoke `ping` and to patch desired `telemetryInterval` and read the reported acknowledgement,
//! and deletes the device whatever happened.

use std::process::Stdio;
use std::time::Duration;

use azsim::service::client::{MethodRequest, ServiceClient};
use azsim::service::target::{Target, TargetInputs};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

fn azsim_run(cs: &str, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--connection-string", cs])
        .args(extra)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

async fn next(lines: &mut Lines, pred: &(dyn Fn(&Value) -> bool + Sync)) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("an event within 60 s")
            .unwrap()
            .expect("azsim still running");
        let v: Value = serde_json::from_str(&line).unwrap();
        if pred(&v) {
            return v;
        }
    }
}

async fn scenario(svc: &ServiceClient, device: &str, cs: &str) {
    // 1. Three acknowledged messages, then a clean exit.
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        azsim_run(cs, &["--count", "3", "--interval", "2s"]).output(),
    )
    .await
    .expect("azsim run --count 3 finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.matches("\"event\":\"telemetry_acked\"").count(),
        3,
        "{stdout}"
    );

    // 2. Online again: ping, then a desired patch acknowledged in reported properties.
    let mut child = azsim_run(cs, &["--interval", "30s"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    next(&mut lines, &|v: &Value| v["event"] == "twin").await;
    let r = svc
        .invoke(
            device,
            &MethodRequest {
                method_name: "ping".into(),
                payload: Some(json!({"from": "real-hub test"})),
                response_timeout_in_seconds: 30,
                connect_timeout_in_seconds: 10,
            },
        )
        .await
        .expect("ping");
    assert_eq!(r.status, 200);
    assert_eq!(r.payload, json!({"from": "real-hub test"}));

    let twin = svc
        .patch_twin(device, Some(&json!({"telemetryInterval": 11})), None, None)
        .await
        .expect("patch desired");
    let version = twin["properties"]["desired"]["$version"].as_u64().unwrap();
    next(&mut lines, &|v: &Value| {
        v["event"] == "desired" && v["version"] == version
    })
    .await;
    next(&mut lines, &|v: &Value| {
        v["event"] == "reported" && v["patch"]["telemetryInterval"]["av"] == version
    })
    .await;
    let twin = svc.get_twin(device).await.expect("get twin");
    let ack = &twin["properties"]["reported"]["telemetryInterval"];
    assert_eq!(ack["value"], 11);
    assert_eq!(ack["ac"], 200);
    assert_eq!(ack["av"], version);

    let pid = child.id().unwrap().to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after ctrl-c")
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_hub_sees_telemetry_answers_ping_and_acknowledges_desired_properties() {
    let Some(service_cs) = std::env::var("IOTHUB_CONNECTION_STRING")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        println!("skipped: IOTHUB_CONNECTION_STRING not set");
        return;
    };
    let target = Target::resolve_with(
        TargetInputs {
            connection_string: Some(service_cs.into()),
            ca: None,
            state_dir: None,
        },
        None,
        None,
    )
    .expect("IOTHUB_CONNECTION_STRING is a service connection string");
    let svc = ServiceClient::new(&target).expect("service client");
    let device = format!(
        "azsim-ci-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let created = svc
        .create_device(&device, None, None)
        .await
        .expect("create device");
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("primary key")
        .to_owned();
    let cs = format!(
        "HostName={};DeviceId={device};SharedAccessKey={key}",
        target.host_name()
    );

    // The device is deleted even when an assertion fails.
    let outcome = {
        let svc = ServiceClient::new(&target).expect("service client");
        let device = device.clone();
        tokio::spawn(async move { scenario(&svc, &device, &cs).await }).await
    };
    let deleted = svc.delete_device(&device).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
    deleted.expect("delete device");
}
