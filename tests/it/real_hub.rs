//! `azsim run` against a hub given by `IOTHUB_CONNECTION_STRING` (a service connection string
//! of a policy with registry write and service connect, e.g. `iothubowner`), and `AZSIM_CA_FILE`
//! when its certificate is not signed by a public root. Two targets run the same code:
//!
//! - a real Azure IoT Hub: `.github/workflows/real-hub.yml` sets the secret;
//! - the stand-in: `.ci/run` starts `azsim hub start --mqtt-port 8883 --https-port 443` (one host
//!   name, Azure's ports, a `HostName` without a port) and runs this module after
//!   `eval "$(azsim hub env)"`, which also sets `AZSIM_CA_FILE`.
//!
//! Without `IOTHUB_CONNECTION_STRING` (plain `scripts/test`) each test prints
//! `skipped: IOTHUB_CONNECTION_STRING not set` and passes, unless `AZSIM_REAL_HUB_REQUIRED` is
//! set (as `.ci/run` does), which makes a missing target a failure. What the stand-in cannot show is in
//! tests named `..._needs_a_real_hub`, which print why when the target is not Azure.
//!
//! The scenario creates a uniquely named device, runs `azsim run --count 3`, runs the device
//! again to invoke `ping` and to patch desired `telemetryInterval` and read the reported
//! acknowledgement, and deletes the device whatever happened.

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

/// The target of this run: `IOTHUB_CONNECTION_STRING` and `AZSIM_CA_FILE`, or `None` (then the
/// caller prints why it skips).
fn target(ca_from_env: bool) -> Option<Target> {
    let Some(service_cs) = std::env::var("IOTHUB_CONNECTION_STRING")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        assert!(
            std::env::var_os("AZSIM_REAL_HUB_REQUIRED").is_none(),
            "AZSIM_REAL_HUB_REQUIRED is set (.ci/run's stand-in step) but IOTHUB_CONNECTION_STRING \
             is not"
        );
        println!("skipped: IOTHUB_CONNECTION_STRING not set");
        return None;
    };
    let ca = std::env::var_os("AZSIM_CA_FILE")
        .filter(|s| ca_from_env && !s.is_empty())
        .map(std::path::PathBuf::from);
    let nowhere = tempfile::tempdir().unwrap();
    Some(
        Target::resolve_with(
            TargetInputs {
                connection_string: Some(service_cs.into()),
                ca,
                state_dir: Some(nowhere.path().into()),
            },
            None,
            None,
        )
        .expect("IOTHUB_CONNECTION_STRING is a service connection string"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_certificate_chains_to_a_public_root_needs_a_real_hub() {
    // No AZSIM_CA_FILE: only the public roots azsim ships with.
    let Some(target) = target(false) else { return };
    if !target.is_azure() {
        println!(
            "not run against {}: the stand-in's certificate is signed by its own dev CA, \
             trusted through AZSIM_CA_FILE; only a real hub shows that azsim trusts Azure's \
             public chain without it",
            target.host()
        );
        return;
    }
    let svc = ServiceClient::new(&target).expect("service client");
    svc.list_devices()
        .await
        .expect("the registry over TLS with the public roots only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_hub_sees_telemetry_answers_ping_and_acknowledges_desired_properties() {
    let Some(target) = target(true) else { return };
    println!(
        "target: {} ({})",
        target.host(),
        if target.is_azure() {
            "Azure IoT Hub"
        } else {
            "stand-in"
        }
    );
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
