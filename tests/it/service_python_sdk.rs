//! Interop with the official Python SDKs: `azure-iot-device` (device side, MQTT) and
//! `azure-iot-hub` (service side, REST), driven by `tests/python/*.py`, against a real hub, with
//! the azsim service CLI on the other end.
//!
//! The device SDK only connects to port 8883, so the hub here listens on 127.0.0.1:8883
//! (hostname `localhost`). One test drives every scenario in turn, holding
//! `support::PORT_8883` so the other test that needs the port (`azsim run`'s embedded hub) waits. Python comes from env `AZSIM_PYTHON`, default `.venv/bin/python`
//! (`scripts/test` creates it with the pinned SDKs); without it the test prints a `skipped:`
//! line and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::service_cli::{Output, azsim, output, wait_monitor_ready};
use crate::support::python;
use crate::support::script::Script;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The hub's service connection string and CA, for the CLI.
struct Target {
    cs: String,
    ca: PathBuf,
    work: PathBuf,
}

impl Target {
    async fn azsim(&self, args: &[&str]) -> Output {
        let mut cmd = azsim(&self.work);
        cmd.args(args)
            .arg("--hub-connection-string")
            .arg(&self.cs)
            .arg("--ca")
            .arg(&self.ca);
        output(cmd).await
    }
}

/// A running Python script speaking JSON lines.
type Py = Script;

/// Starts `tests/python/{name}` with `args`, trusting the hub's CA for REST.
fn spawn_py(python: &Path, work: &Path, name: &str, args: &[&OsStrLike], ca: &Path) -> Py {
    let mut cmd = Command::new(python);
    cmd.arg(script(name))
        .args(args.iter().map(|a| a.as_os()))
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped());
    Script::spawn(cmd, work, name)
}

/// Paths and strings as process arguments.
enum OsStrLike {
    Path(PathBuf),
    Str(String),
}

impl OsStrLike {
    fn as_os(&self) -> &std::ffi::OsStr {
        match self {
            Self::Path(p) => p.as_os_str(),
            Self::Str(s) => s.as_ref(),
        }
    }
}

fn p(path: &Path) -> OsStrLike {
    OsStrLike::Path(path.to_path_buf())
}

fn s(text: &str) -> OsStrLike {
    OsStrLike::Str(text.to_owned())
}

/// Starts the hub with MQTT on 127.0.0.1:8883. A developer's `azsim hub` or `azsim run` may hold
/// the port for a moment on a shared machine, so a busy port is retried for up to 60 s before
/// the test fails.
async fn start_hub_on_8883(dir: &Path) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(
        dir,
        8883,
        0,
        |_| {},
        "127.0.0.1:8883, which the Python device SDK needs (is another hub or broker using the port?)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_device_and_service_sdks_work_against_the_hub() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub_on_8883(&tmp.path().join("hub")).await;
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let target = Target {
        cs: hub.info.service_connection_string.clone(),
        ca: hub.info.ca_file.clone(),
        work: work.clone(),
    };

    device_sdk_scenario(&python, &target).await;
    service_sdk_scenario(&python, &target).await;

    hub.stop().await.expect("hub stops cleanly");
}

/// azure-iot-device: connect, telemetry (seen by `azsim monitor`), twin get, reported patch
/// (seen by `azsim twin show`), C2D from `azsim c2d send`, a method from `azsim invoke`, a
/// desired patch from `azsim twin patch`.
async fn device_sdk_scenario(python: &Path, t: &Target) {
    let out = t.azsim(&["device", "create", "py-device", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let device_cs = out.json()["connectionString"].as_str().unwrap().to_owned();
    assert!(
        device_cs.starts_with("HostName=localhost;DeviceId=py-device;"),
        "on port 8883 the connection string has no port: {device_cs}"
    );
    let cs_file = t.work.join("py-device.cs");
    std::fs::write(&cs_file, &device_cs).unwrap();

    // The monitor is live before the device sends anything.
    let mut mon = azsim(&t.work);
    mon.args(["monitor", "--device", "py-device", "--type", "telemetry"])
        .args(["--count", "1", "--timeout", "90", "--json"])
        .arg("--hub-connection-string")
        .arg(&t.cs)
        .arg("--ca")
        .arg(&t.ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut mon = mon.spawn().unwrap();
    let mut mon_err = BufReader::new(mon.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut mon_err).await;

    let mut dev = spawn_py(
        python,
        &t.work,
        "device_sdk.py",
        &[&s("full"), &p(&cs_file), &p(&t.ca)],
        &t.ca,
    );
    dev.expect("connected").await;
    dev.expect("telemetry_sent").await;

    let mon = tokio::time::timeout(Duration::from_secs(30), mon.wait_with_output())
        .await
        .expect("monitor sees the telemetry")
        .unwrap();
    let mon_out = String::from_utf8_lossy(&mon.stdout).into_owned();
    assert_eq!(mon.status.code(), Some(0), "{mon_out}");
    let ev: Value = serde_json::from_str(mon_out.trim()).expect("one json event");
    assert_eq!(ev["type"], "telemetry");
    assert_eq!(ev["deviceId"], "py-device");
    let body: Value = serde_json::from_str(ev["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"temperature": 21.5}));
    assert_eq!(ev["properties"]["alert"], "hot", "{ev}");
    assert_eq!(ev["properties"]["source"], "python sdk", "{ev}");
    assert_eq!(ev["systemProperties"]["message-id"], "py-msg-1", "{ev}");
    assert_eq!(
        ev["systemProperties"]["correlation-id"], "py-corr-1",
        "{ev}"
    );
    assert_eq!(
        ev["systemProperties"]["content-type"], "application/json",
        "{ev}"
    );
    assert_eq!(ev["systemProperties"]["content-encoding"], "utf-8", "{ev}");

    let twin = dev.expect("twin").await;
    assert!(twin["twin"]["desired"]["$version"].is_number(), "{twin}");
    assert!(twin["twin"]["reported"]["$version"].is_number(), "{twin}");
    dev.expect("reported_patched").await;

    let out = t.azsim(&["twin", "show", "py-device", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown = out.json();
    assert_eq!(
        shown["properties"]["reported"]["firmware"], "py-2.14.0",
        "{shown}"
    );
    assert_eq!(
        shown["properties"]["reported"]["sdk"]["name"], "python",
        "{shown}"
    );

    dev.expect("handlers_ready").await;
    let out = t
        .azsim(&[
            "c2d",
            "send",
            "py-device",
            "hello python",
            "--property",
            "color=blue",
            "--property",
            "note=yes & no = maybe/ok",
            "--content-type",
            "text/plain",
            "--content-encoding",
            "utf-8",
            "--message-id",
            "c2d-1",
            "--correlation-id",
            "corr-1",
            "--ack",
            "full",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let c2d = dev.expect("c2d").await;
    assert_eq!(c2d["data"], "hello python", "{c2d}");
    assert_eq!(c2d["message_id"], "c2d-1", "{c2d}");
    assert_eq!(c2d["correlation_id"], "corr-1", "{c2d}");
    assert_eq!(c2d["content_type"], "text/plain", "{c2d}");
    assert_eq!(c2d["custom_properties"]["color"], "blue", "{c2d}");
    assert_eq!(
        c2d["custom_properties"]["note"], "yes & no = maybe/ok",
        "{c2d}"
    );

    let out = t
        .azsim(&[
            "invoke",
            "py-device",
            "reboot",
            "--payload",
            r#"{"delay":1}"#,
            "--json",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        json!({"status": 201, "payload": {"echo": {"delay": 1}, "method": "reboot"}})
    );
    let m = dev.expect("method").await;
    assert_eq!(m["payload"], json!({"delay": 1}), "{m}");

    let out = t
        .azsim(&["twin", "patch", "py-device", r#"{"interval":9}"#, "--json"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let version = out.json()["properties"]["desired"]["$version"].clone();
    let d = dev.expect("desired").await;
    assert_eq!(d["patch"]["interval"], 9, "{d}");
    assert_eq!(d["patch"]["$version"], version, "{d}");

    dev.expect("done").await;
    dev.finish().await;
}

/// azure-iot-hub: create a device, read it, read and update its twin, invoke a method on it
/// while the device SDK answers.
async fn service_sdk_scenario(python: &Path, t: &Target) {
    let svc_cs = t.work.join("service.cs");
    std::fs::write(&svc_cs, &t.cs).unwrap();
    let dev_cs = t.work.join("py-svc-device.cs");

    let mut svc = spawn_py(
        python,
        &t.work,
        "service_sdk.py",
        &[
            &s("registry"),
            &p(&svc_cs),
            &s("py-svc-device"),
            &p(&dev_cs),
            &s("localhost"),
        ],
        &t.ca,
    );
    let created = svc.expect("created").await;
    assert_eq!(created["device_id"], "py-svc-device", "{created}");
    assert_eq!(created["status"], "enabled", "{created}");
    assert_eq!(created["auth_type"], "sas", "{created}");
    assert_eq!(created["has_keys"], true, "{created}");
    let device = svc.expect("device").await;
    assert_eq!(device["device_id"], "py-svc-device", "{device}");
    svc.expect("twin").await;
    let updated = svc.expect("twin_updated").await;
    assert_eq!(updated["desired"]["telemetryInterval"], 7, "{updated}");
    let edge = svc.expect("edge").await;
    let scope = edge["device_scope"].as_str().unwrap_or_default();
    assert!(
        scope.starts_with("ms-azure-iot-edge://py-svc-device-edge-"),
        "{edge}"
    );
    assert_eq!(
        (
            &edge["iot_edge"],
            &edge["leaf_iot_edge"],
            &edge["leaf_scope"]
        ),
        (&json!(true), &json!(false), &json!(scope)),
        "{edge}"
    );
    assert_eq!(edge["leaf_parents"], json!([scope]), "{edge}");
    svc.finish().await;

    let out = t.azsim(&["twin", "show", "py-svc-device", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["properties"]["desired"]["mode"], "python");

    let mut responder = spawn_py(
        python,
        &t.work,
        "device_sdk.py",
        &[&s("responder"), &p(&dev_cs), &p(&t.ca)],
        &t.ca,
    );
    responder.expect("handlers_ready").await;

    let mut inv = spawn_py(
        python,
        &t.work,
        "service_sdk.py",
        &[&s("invoke"), &p(&svc_cs), &s("py-svc-device"), &s("ping")],
        &t.ca,
    );
    let res = inv.expect("invoked").await;
    assert_eq!(res["status"], 201, "{res}");
    assert_eq!(
        res["payload"],
        json!({"echo": {"from": "python"}, "method": "ping"}),
        "{res}"
    );
    inv.finish().await;
    responder.expect("method").await;

    // The device SDK completed c2d-1 (sent with --ack full): its feedback, through
    // IoTHubHttpRuntimeManager (receive, abandon, receive again, complete).
    let mut fb = spawn_py(
        python,
        &t.work,
        "service_sdk.py",
        &[&s("feedback"), &p(&svc_cs), &s("py-device")],
        &t.ca,
    );
    let got = fb.expect("feedback").await;
    assert_eq!(
        got["content_type"], "application/vnd.microsoft.iothub.feedback.json",
        "{got}"
    );
    assert_eq!(got["etag_quoted"], true, "{got}");
    let recs = got["records"].as_array().expect("records");
    assert_eq!(recs.len(), 1, "{got}");
    assert_eq!(recs[0]["originalMessageId"], "c2d-1", "{got}");
    assert_eq!(recs[0]["statusCode"], "Success", "{got}");
    fb.expect("abandoned").await;
    let done = fb.expect("completed").await;
    assert_eq!(done["same"], true, "{done}");
    assert_eq!(done["new_lock"], true, "{done}");
    fb.expect("empty").await;
    // The SDK parses the activity times (Azure's 7-digit fractions) into real datetimes.
    let act = fb.expect("activity").await;
    for k in [
        "last_activity_time",
        "connection_state_updated_time",
        "twin_last_activity_time",
    ] {
        let t = act[k].as_str().unwrap_or_default();
        assert!(t.starts_with("20"), "{k} is a real time: {act}");
    }
    assert_eq!(
        act["last_activity_time"], act["twin_last_activity_time"],
        "{act}"
    );
    assert_eq!(act["twin_c2d_count"], 0, "{act}");
    fb.finish().await;
    if let Some(mut stdin) = responder.child.stdin.take() {
        let _ = stdin.shutdown().await;
    }
    responder.expect("done").await;
    responder.finish().await;
}
