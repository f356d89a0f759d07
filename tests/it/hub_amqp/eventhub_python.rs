//! The Event Hubs-compatible endpoint through the official SDKs: `azure-iot-device` sends,
//! `azure-eventhub`'s `EventHubConsumerClient` reads from the printed connection strings
//! (AMQPS on 5671 with the hub's CA, and development mode on plain AMQP), driven by
//! `tests/python/eventhub_sdk.py`. The device SDK dials 8883 and the Event Hubs SDK 5671, so
//! the test holds `support::PORT_8883`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::TestHub;
use crate::support::python;

/// Start a hub with MQTT on 8883 and AMQPS on 5671 (what the SDKs dial), retrying a busy port
/// for a while (a developer's hub may hold it).
async fn start_hub(dir: &Path) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(
        dir,
        8883,
        0,
        |cfg| {
            cfg.amqp_port = Some(5671);
            cfg.amqp_dev_port = Some(0);
            // Telemetry only: the sequence numbers below count the device's messages.
            cfg.routes = azsim_emulator::routing::Routes {
                telemetry: true,
                ..azsim_emulator::routing::Routes::NONE
            };
        },
        "8883 and 5671",
    )
    .await
}

fn ann<'a>(ev: &'a Value, key: &str) -> &'a Value {
    &ev["system"][key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_event_hubs_sdk_reads_device_telemetry_as_iot_hub_routes_it() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let handle = start_hub(&tmp.path().join("hub")).await;
    let info = handle.info.clone();
    let hub = TestHub::attach(&info);
    let cs = hub.create_device("eh-dev").await;
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let write = |name: &str, text: &str| {
        let p = work.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let eh_cs = info.eventhub_connection_string.clone().expect("eh cs");
    assert!(
        eh_cs.starts_with("Endpoint=sb://localhost/;SharedAccessKeyName=iothubowner;")
            && eh_cs.ends_with(";EntityPath=localhost"),
        "on 5671 the endpoint has no port"
    );
    let files = [
        write("eh.cs", &eh_cs),
        write(
            "eh_dev.cs",
            &info.eventhub_dev_connection_string.clone().expect("dev cs"),
        ),
        write("device.cs", &cs),
    ];
    let stderr_file = work.join("eventhub_sdk.stderr");
    let mut child = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/eventhub_sdk.py"))
        .args(&files)
        .arg(&info.ca_file)
        .current_dir(&work)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = std::collections::HashMap::new();
    let fail = |why: String| -> ! {
        let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        panic!(
            "{why}\nstderr:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Err(_) => fail("no line from eventhub_sdk.py within 120 s".into()),
            Ok(Ok(Some(l))) => l,
            Ok(_) => fail(format!(
                "eventhub_sdk.py ended early; saw {:?}",
                events.keys()
            )),
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let name = v["event"].as_str().unwrap_or_default().to_string();
        if name == "error" || name == "timeout" {
            fail(format!("eventhub_sdk.py reported {v}"));
        }
        events.insert(name.clone(), v);
        if name == "done" {
            break;
        }
    }
    let _ = child.wait().await;

    assert_eq!(
        events["partition_ids"]["ids"],
        serde_json::json!(["0", "1", "2", "3"])
    );
    let busy = events["partitions"]["busy"].as_array().unwrap();
    assert_eq!(
        busy.len(),
        1,
        "one device, one partition: {}",
        events["partitions"]
    );
    let part = busy[0].as_str().unwrap();
    let props = &events["partitions"]["props"][part];
    assert_eq!(props["beginning_sequence_number"], "0");
    assert_eq!(props["last_enqueued_sequence_number"], "1");
    assert_eq!(props["is_empty"], "False");

    let from_start = events["from_start"]["events"].as_array().unwrap();
    for (i, ev) in from_start.iter().enumerate() {
        let n = i + 1;
        assert_eq!(ev["body"], format!("{{\"n\": {n}}}"));
        assert_eq!(ev["sequence_number"], i as u64);
        assert_eq!(ev["properties"]["n"], n.to_string());
        assert_eq!(ev["properties"]["source"], "python sdk");
        assert_eq!(ann(ev, "message-id"), &format!("eh-msg-{n}"));
        assert_eq!(ann(ev, "correlation-id"), &format!("eh-corr-{n}"));
        assert_eq!(ann(ev, "user-id"), "eh-user");
        assert_eq!(ann(ev, "content-type"), "application/json");
        assert_eq!(ann(ev, "content-encoding"), "utf-8");
        assert_eq!(ann(ev, "iothub-connection-device-id"), "eh-dev");
        assert_eq!(ann(ev, "iothub-message-source"), "Telemetry");
        assert!(
            ann(ev, "iothub-connection-auth-method")
                .as_str()
                .is_some_and(|m| m.contains("\"scope\":\"device\"")),
            "{ev}"
        );
        assert!(
            ann(ev, "iothub-connection-auth-generation-id").is_string(),
            "{ev}"
        );
        assert!(!ann(ev, "iothub-enqueuedtime").is_null(), "{ev}");
        assert_eq!(ann(ev, "x-opt-sequence-number"), i as u64);
        assert!(ev["offset"].is_string(), "{ev}");
        assert!(ev["enqueued_time"].is_string(), "{ev}");
    }
    let after = &events["after_first"]["events"][0];
    assert_eq!(after["sequence_number"], 1, "after the first: the second");
    let latest = &events["latest"]["events"][0];
    let n: u64 = latest["properties"]["n"].as_str().unwrap().parse().unwrap();
    assert!(n >= 3, "@latest gets only what was sent after it: {latest}");
    assert_eq!(events["dev_mode"]["events"][0]["body"], "{\"n\": 1}");
    handle.stop().await.expect("stop");
}
