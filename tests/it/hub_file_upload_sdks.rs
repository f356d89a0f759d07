//! File upload with the official SDKs: Python azure-iot-device + azure-storage-blob (Put Blob
//! and Put Block/Put Block List, read back) on free ports; Node azure-iot-device's
//! `uploadToBlob` and azure-iothub's `getFileNotificationReceiver` on Azure's ports (the Node
//! SDKs dial only 443 and 5671), holding `support::PORT_8883`. The plain-HTTPS cases are in
//! `hub_file_upload.rs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::hub_file_upload::{begin, blob_call};
use crate::support::TestHub;
use crate::support::node::node_dir;
use crate::support::script::Script;

fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/file_upload.py")
}

/// Whether the venv has azure-storage-blob (the blob SDK the device SDK's samples use).
fn has_storage_blob(python: &Path) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import azure.storage.blob"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdks_upload_read_back_and_notify() {
    let Some(python) = crate::support::python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    if !has_storage_blob(&python) {
        crate::support::skip("azure-storage-blob not in the venv (run scripts/test)");
        return;
    }
    let hub = TestHub::start().await;
    let cs = hub.create_device("py-files").await;
    assert!(
        cs.contains(&format!("HostName=localhost:{};", hub.mqtt_port)),
        "{cs}"
    );
    // The device SDK's HTTPS calls go to HostName: give it the HTTPS port.
    let cs = cs.replace(
        &format!("HostName=localhost:{};", hub.mqtt_port),
        &format!("HostName=localhost:{};", hub.https_port),
    );
    let work = tempfile::tempdir().unwrap();
    let cs_file = work.path().join("device.cs");
    std::fs::write(&cs_file, &cs).unwrap();
    let mut events = hub
        .http()
        .get(format!(
            "https://localhost:{}/emulator/events",
            hub.https_port
        ))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    let mut cmd = Command::new(&python);
    cmd.arg(python_script())
        .arg(&cs_file)
        .arg(&hub.ca_file)
        .env("REQUESTS_CA_BUNDLE", &hub.ca_file)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    let mut py = Script::spawn(cmd, work.path(), "file_upload.py");
    let info = py.expect("storage_info").await;
    assert_eq!(
        info["host_name"],
        format!("localhost:{}/azsimfiles", hub.https_port)
    );
    assert_eq!(info["blob_name"], "py-files/small.txt");
    let small = py.expect("small_done").await;
    assert_eq!(small["equal"], true, "{small}");
    py.expect("storage_info").await;
    let blocks = py.expect("blocks_done").await;
    assert_eq!(blocks["equal"], true, "{blocks}");
    assert_eq!(blocks["range_equal"], true, "{blocks}");
    assert_eq!(blocks["size"], 40 * 1024, "{blocks}");
    assert_eq!(blocks["properties_size"], 40 * 1024, "{blocks}");
    py.expect("storage_info").await;
    py.expect("failed_done").await;
    let reuse = py.expect("reuse_refused").await;
    // The SDK's error for a 4xx answer.
    assert_eq!(reuse["error"], "ClientError", "{reuse}");
    py.expect("storage_info").await;
    let tampered = py.expect("tampered_refused").await;
    assert_eq!(tampered["status"], 403, "{tampered}");
    assert_eq!(tampered["code"], "AuthenticationFailed", "{tampered}");
    py.expect("done").await;
    py.finish().await;

    // The hub saw four notices: the two successes with a notification queued, the failure and
    // the refused upload without.
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 4 {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("file upload events within 30 s")
            .unwrap()
            .expect("event stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            if let Some(data) = line.trim().strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if v["type"] == "fileUpload" {
                    seen.push(v);
                }
            }
        }
    }
    let summary: Vec<(String, bool, bool)> = seen
        .iter()
        .map(|v| {
            (
                v["blobName"].as_str().unwrap_or("").to_owned(),
                v["isSuccess"] == true,
                v["notification"] == true,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("py-files/small.txt".to_owned(), true, true),
            ("py-files/dir/blocks.bin".to_owned(), true, true),
            ("py-files/never-written.txt".to_owned(), false, false),
            ("py-files/tampered.txt".to_owned(), false, false),
        ]
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdks_upload_to_blob_and_the_service_receives_the_file_notification() {
    let Some(fixed) = crate::support::node::hub_on_azure_ports(&[
        "azure-iot-device",
        "azure-iot-device-mqtt",
        "azure-iothub",
        "@azure/storage-blob",
    ])
    .await
    else {
        return;
    };
    let (node, handle, hub) = (fixed.node, fixed.hub, fixed.view);
    let (work, service_cs) = (fixed.work, fixed.cs_file);
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/node-files",
            Some(json!({"deviceId": "node-files"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let key = v["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let device_cs = work.join("device.cs");
    std::fs::write(
        &device_cs,
        format!("HostName=localhost;DeviceId=node-files;SharedAccessKey={key}"),
    )
    .unwrap();

    // 5 MiB: more than one of uploadStream's 4 MiB blocks.
    let size = 5 * 1024 * 1024 + 123;
    let mut cmd = Command::new(&node);
    cmd.arg(node_dir().join("file_upload.js"))
        .arg(&service_cs)
        .arg(&device_cs)
        .arg("node/big.bin")
        .arg(size.to_string())
        .env("NODE_EXTRA_CA_CERTS", &handle.info.ca_file)
        .stdin(Stdio::null());
    let mut js = Script::spawn(cmd, &work, "file_upload.js");
    js.expect("receiver_attached").await;
    let uploaded = js.expect("uploaded").await;
    assert_eq!(uploaded["size"], size);
    let n = js.expect("notification").await;
    let body = &n["body"];
    assert_eq!(body["deviceId"], "node-files", "{n}");
    assert_eq!(body["blobName"], "node-files/node/big.bin", "{n}");
    assert_eq!(body["blobSizeInBytes"], size, "{n}");
    assert_eq!(
        body["blobUri"], "https://localhost/azsimfiles/fileuploads/node-files/node/big.bin",
        "{n}"
    );
    for field in ["lastUpdatedTime", "enqueuedTimeUtc"] {
        assert!(
            body[field].as_str().is_some_and(|t| t.len() >= 20),
            "{field}: {n}"
        );
    }
    js.expect("done").await;
    js.finish().await;

    // The bytes on the hub are the ones Node sent (the listing has the size; the digest is
    // checked through a fresh SAS).
    let (s, list) = hub.rest(Method::GET, "/emulator/files", None).await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["sizeInBytes"], size, "{list}");
    let up = begin(&hub, "node-files", key, "node/big.bin").await;
    let (s, _, bytes) = blob_call(&hub, Method::GET, &up.url(), b"").await;
    assert_eq!(s, 200);
    let expected: Vec<u8> = (0..size)
        .map(|i| ((i * 13 + (i >> 8)) % 251) as u8)
        .collect();
    assert!(
        bytes == expected,
        "the blob's bytes differ from what Node uploaded"
    );
    handle.stop().await.unwrap();
}
