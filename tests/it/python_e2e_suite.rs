//! Regressions found by running the official Python device SDK's own end-to-end suites
//! (azure-iot-sdk-python `tests/e2e/iothub_e2e` and `provisioning_e2e`) against `azsim hub`
//! started as a user would (`azsim hub start --mqtt-port 8883 --https-port 443`). Each test
//! here pins one defect the suite exposed, with the real binary or the official SDK.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use azsim_proto::property_bag::SystemProperties;
use azsim_proto::topic::{Identity, write_telemetry_topic};
use rumqttc::{Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::python;
use crate::support::{TestHub, next_incoming};

const AZSIM: &str = env!("CARGO_BIN_EXE_azsim");

fn azsim(args: &[&str]) -> Output {
    Command::new(AZSIM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stops the hub of a dir when a test fails half way.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = azsim(&["hub", "stop", "--state", &self.0]);
    }
}

/// `azsim hub start ... --route R` on free ports; the started hub's ready JSON.
fn start_with_route(dir: &Path, route: &str) -> (Value, StopOnDrop) {
    let st = dir.display().to_string();
    let out = azsim(&[
        "hub",
        "start",
        "--state",
        &st,
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
        "--dashboard-port",
        "off",
        "--in-memory",
        "--route",
        route,
    ]);
    let guard = StopOnDrop(st);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    (
        serde_json::from_str(text(&out.stdout).trim()).unwrap(),
        guard,
    )
}

/// The suite's hub routes telemetry and twin change events to the built-in endpoint, nothing
/// else (its Event Hubs helper takes any other event of the device for the message it waits
/// for). `azsim hub start --route telemetry,twin` started a hub that routed everything: the
/// detached hub was not given `--route`.
#[test]
fn hub_start_passes_route_on_to_the_hub_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let (ready, _a) = start_with_route(&tmp.path().join("a"), "telemetry,twin");
    assert_eq!(
        ready["settings"]["routes"],
        serde_json::json!(["telemetry", "twin"])
    );
    let (ready, _b) = start_with_route(&tmp.path().join("b"), "connection");
    assert_eq!(
        ready["settings"]["routes"],
        serde_json::json!(["connection"])
    );
}

/// The suite sends a bare string (`client.send_message("...")`: no message id, no content
/// type) and its Event Hubs helper decodes `event.message.properties.content_type` whenever the
/// event has a properties section. IoT Hub sends none for such a message; the hub sent an empty
/// one, the helper's `None.decode()` raised, and the partition's events were lost to the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_system_properties_reaches_the_event_hubs_sdk_without_a_properties_section()
 {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let hub = TestHub::start_configured(|cfg| {
        cfg.amqp_dev_port = Some(0);
        cfg.routes = azsim_emulator::routing::Routes {
            telemetry: true,
            ..azsim_emulator::routing::Routes::NONE
        };
    })
    .await;
    hub.create_device("bare").await;
    let key = hub.device_key("bare").await;
    let (client, mut el) = hub.connect("bare", &key, true).await;
    let mut with_props = String::new();
    write_telemetry_topic(
        &mut with_props,
        Identity::device("bare"),
        &SystemProperties {
            message_id: Some("m-1"),
            content_type: Some("application/json"),
            ..Default::default()
        },
        [],
    )
    .unwrap();
    let mut bare = String::new();
    write_telemetry_topic(
        &mut bare,
        Identity::device("bare"),
        &SystemProperties::default(),
        [("app", "1")],
    )
    .unwrap();
    for (topic, body) in [(bare, "ZWEAXQ1Q27WIZZAD"), (with_props, "{\"a\":1}")] {
        client
            .publish(topic, QoS::AtLeastOnce, false, body.as_bytes().to_vec())
            .await
            .unwrap();
        next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }

    let work = tempfile::tempdir().unwrap();
    let cs_file = work.path().join("eh_dev.cs");
    std::fs::write(
        &cs_file,
        hub.info
            .eventhub_dev_connection_string
            .clone()
            .expect("dev cs"),
    )
    .unwrap();
    let stderr_file = work.path().join("eventhub_sections.stderr");
    let mut child = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/eventhub_sections.py"))
        .arg(&cs_file)
        .arg("2")
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let fail = |why: String| -> ! {
        let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        panic!(
            "{why}\nstderr:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    let mut received = Vec::new();
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Err(_) => fail("no line from eventhub_sections.py within 120 s".into()),
            Ok(Ok(Some(l))) => l,
            Ok(_) => fail(format!(
                "eventhub_sections.py ended early; saw {received:?}"
            )),
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v["event"].as_str().unwrap_or_default() {
            "received" => received.push(v),
            "done" => break,
            _ => fail(format!("eventhub_sections.py reported {v}")),
        }
    }
    let _ = child.wait().await;
    let by_body = |b: &str| {
        received
            .iter()
            .find(|v| v["body"] == b)
            .unwrap_or_else(|| panic!("no event with body {b}: {received:?}"))
    };
    let bare = by_body("ZWEAXQ1Q27WIZZAD");
    assert_eq!(bare["has_properties"], false, "{bare}");
    let full = by_body("{\"a\":1}");
    assert_eq!(full["has_properties"], true, "{full}");
    assert_eq!(full["content_type"], "application/json");
    assert_eq!(full["message_id"], "m-1");
}
