//! The official Python SDKs against the hub's DPS (`tests/python/dps_sdk.py`): the DPS service
//! SDK (azure-iothub-provisioningserviceclient) manages the enrollments, azure-iot-device's
//! ProvisioningDeviceClient registers with an individual and a group enrollment, over MQTT and
//! over MQTT on WebSockets, and its IoTHubDeviceClient sends telemetry to the assigned hub; an
//! X.509 individual enrollment (a self-signed certificate) the same way.
//!
//! The device SDK dials port 8883 (443 for WebSockets), so the hub listens there, holding
//! `support::PORT_8883`. Python comes from env `AZSIM_PYTHON`, default `.venv/bin/python`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::TestHub;
use crate::support::python;

/// A hub on 127.0.0.1:8883 (MQTT) and `https_port`; a busy port is retried for up to 60 s.
async fn start_hub(dir: &Path, https_port: u16) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(dir, 8883, https_port, |_| {}, "127.0.0.1:8883").await
}

/// Runs the script to its end; its events by name (the last of each), failing on `error`.
async fn run_script(
    python: &Path,
    work: &Path,
    info: &azsim_emulator::HubInfo,
    websockets: bool,
    x509: &azsim::cmd::cert::Made,
) -> Vec<Value> {
    let cs_file = work.join("dps.cs");
    std::fs::write(&cs_file, &info.provisioning_service_connection_string).unwrap();
    let stderr_file = work.join(format!(
        "dps_sdk{}.stderr",
        if websockets { "_ws" } else { "" }
    ));
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dps_sdk.py"))
        .arg(&cs_file)
        .arg(&info.ca_file)
        .arg(&info.id_scope)
        .arg(&info.hostname);
    cmd.arg(if websockets { "websockets" } else { "mqtt" })
        .arg(&x509.cert_file)
        .arg(&x509.key_file);
    cmd.current_dir(work)
        .env("REQUESTS_CA_BUNDLE", &info.ca_file)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start dps_sdk.py");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let fail = |seen: &Vec<Value>, why: &str| -> ! {
        let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "dps_sdk.py: {why}\nevents: {seen:#?}\nstderr:\n{}",
            tail.join("\n")
        );
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Err(_) => fail(&seen, "no event within 120 s"),
            Ok(Ok(Some(line))) => {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let done = v["event"] == "done";
                let error = v["event"] == "error";
                seen.push(v);
                if error {
                    fail(&seen, "reported an error");
                }
                if done {
                    break;
                }
            }
            Ok(_) => fail(&seen, "exited before done"),
        }
    }
    let status = child.wait().await.unwrap();
    if !status.success() {
        fail(&seen, &format!("exited with {status}"));
    }
    seen
}

fn event<'a>(seen: &'a [Value], name: &str) -> &'a Value {
    seen.iter()
        .find(|v| v["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {seen:#?}"))
}

fn check(seen: &[Value], hub: &azsim_emulator::HubInfo) {
    let e = event(seen, "enrollment_created");
    assert_eq!(e["has_keys"], true, "{e}");
    assert_eq!(e["device_id"], "py-dps-device");
    assert_eq!(event(seen, "enrollment_shown")["same_etag"], true);
    assert_eq!(
        event(seen, "enrollment_shown")["tags"],
        json!({"site": "lab"})
    );
    assert_eq!(event(seen, "attestation_shown")["same_key"], true);
    let r = event(seen, "registered_individual");
    assert_eq!(r["status"], "assigned", "{r}");
    assert_eq!(r["device_id"], "py-dps-device");
    assert_eq!(r["assigned_hub"], hub.provisioning_host.as_str());
    assert_eq!(r["substatus"], "initialAssignment");
    assert_eq!(r["payload"], json!({"firmware": "1.2.3"}));
    assert_eq!(r["twin"]["desired"]["interval"], 5, "{r}");
    assert_eq!(
        event(seen, "reregistered_individual")["substatus"],
        "deviceDataMigrated"
    );
    assert_eq!(event(seen, "registration_state")["status"], "assigned");
    for (name, status) in [
        ("refused_wrong_key", "401"),
        ("refused_disabled", "401"),
        ("refused_unknown", "404"),
    ] {
        let v = event(seen, name);
        assert!(v["error"].as_str().unwrap().contains(status), "{name}: {v}");
    }
    assert_eq!(event(seen, "enrollment_query")["ids"], json!(["py-dps-1"]));
    let b = event(seen, "bulk");
    assert_eq!(
        (&b["ok"], &b["again_ok"]),
        (&json!(true), &json!(false)),
        "{b}"
    );
    assert_eq!(b["again_errors"], json!(["py-bulk-1", "py-bulk-2"]));
    assert!(
        event(seen, "enrollment_deleted")["error"]
            .as_str()
            .unwrap()
            .contains("404")
    );
    let g = event(seen, "registered_group");
    assert_eq!(
        (&g["status"], &g["device_id"]),
        (&json!("assigned"), &json!("py-grp-dev-1")),
        "{g}"
    );
    assert_eq!(event(seen, "group_query")["ids"], json!(["py-group"]));
    assert_eq!(
        event(seen, "group_registrations")["ids"],
        json!(["py-grp-dev-1"])
    );
    let x = event(seen, "x509_enrollment_created");
    assert_eq!(
        (&x["attestation"], &x["has_thumbprint"]),
        (&json!("x509"), &json!(true))
    );
    let r = event(seen, "registered_x509");
    assert_eq!(
        (&r["status"], &r["device_id"]),
        (&json!("assigned"), &json!("py-x509-dev")),
        "{r}"
    );
    assert!(
        event(seen, "group_deleted")["error"]
            .as_str()
            .unwrap()
            .contains("404")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_dps_sdks_provision_devices_that_then_send_telemetry() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    // HTTPS on 443 too: the SDKs' WebSocket transport dials it.
    let handle = start_hub(&tmp.path().join("hub"), 443).await;
    let info = handle.info.clone();
    let hub = TestHub::attach(&info);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // An X.509 device: a self-signed certificate whose CN is its registration id.
    let x509 =
        azsim::cmd::cert::make_device("py-x509-dev", "py-x509-dev", None, &work, 30).unwrap();

    let seen = run_script(&python, &work, &info, false, &x509).await;
    check(&seen, &info);
    // Telemetry from both provisioned devices reached the hub.
    let (s, ev) = hub
        .rest(Method::GET, "/emulator/events/recent?limit=1000", None)
        .await;
    assert_eq!(s, 200, "{ev}");
    for device in ["py-dps-device", "py-grp-dev-1", "py-x509-dev"] {
        assert!(
            ev.as_array()
                .unwrap()
                .iter()
                .any(|e| e["deviceId"] == device && e["type"] == "telemetry"),
            "no telemetry from {device}: {ev}"
        );
    }

    if std::env::var_os("AZSIM_DPS_WEBSOCKETS_SKIP").is_none() {
        let seen = run_script(&python, &work, &info, true, &x509).await;
        check(&seen, &info);
    }
    handle.stop().await.expect("hub stops cleanly");
}
