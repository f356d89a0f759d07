//! Devices over AMQP, with the official Node SDK's `azure-iot-device-amqp` as the device and
//! `azure-iothub` as the service, driven by `tests/node/device_amqp.js` (see its header): each
//! step is checked from the hub's side too (the event log, the twin, C2D feedback).
//!
//! The SDK dials only Azure's AMQPS port (5671; the service SDK's REST calls 443), so the hub
//! listens on those of 127.0.0.1 and the test holds `support::PORT_8883`. Node and the packages
//! are found by `support::node`; without them the test prints `skipped:`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::TestHub;
use crate::support::node::{node, node_dir};
use crate::support::script::Script;

/// What `device_amqp.js` needs in tests/node.
const PACKAGES: &[&str] = &["azure-iot-device", "azure-iot-device-amqp", "azure-iothub"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_device_sdk_over_amqp_sends_receives_answers_and_keeps_its_twin() {
    let Some(fixed) = crate::support::node::hub_on_azure_ports(PACKAGES).await else {
        return;
    };
    let (node, hub, view, cs_file) = (fixed.node, fixed.hub, fixed.view, fixed.cs_file);

    scenario(&node, &view, &cs_file, "node-amqp", "amqp", "Amqp").await;
    scenario(&node, &view, &cs_file, "node-amqpws", "amqpws", "AmqpWs").await;

    hub.stop().await.expect("hub stops cleanly");
}

/// One run of `device_amqp.js` over `transport`.
async fn scenario(
    node: &Path,
    hub: &TestHub,
    cs_file: &Path,
    device: &str,
    transport: &str,
    transport_name: &str,
) {
    let work = cs_file.parent().unwrap();
    let mut cmd = Command::new(node);
    cmd.arg(node_dir().join("device_amqp.js"))
        .args([cs_file.to_str().unwrap(), device, transport])
        .env("NODE_EXTRA_CA_CERTS", &hub.ca_file)
        .stdin(Stdio::null());
    let mut s = Script::spawn(cmd, work, &format!("device_amqp-{transport}"));

    let connected = s.expect("connected").await;
    assert_eq!(connected["transport"], transport_name, "{connected}");

    // Telemetry: stored with its properties and the hub's annotations.
    s.expect("telemetry_sent").await;
    let (status, events) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    let ev = events
        .as_array()
        .and_then(|a| a.iter().find(|e| e["type"] == "telemetry"))
        .unwrap_or_else(|| panic!("the hub logged the telemetry: {events}"));
    assert_eq!(ev["body"], r#"{"temperature":21.5}"#, "{ev}");
    assert_eq!(ev["properties"]["alert"], "hot", "{ev}");
    assert_eq!(ev["properties"]["source"], "node amqp", "{ev}");
    let sys = &ev["systemProperties"];
    assert_eq!(sys["message-id"], "amqp-msg-1", "{ev}");
    assert_eq!(sys["correlation-id"], "amqp-corr-1", "{ev}");
    assert_eq!(sys["content-type"], "application/json", "{ev}");
    assert_eq!(sys["content-encoding"], "utf-8", "{ev}");
    assert_eq!(
        ev["annotations"]["iothub-connection-device-id"], device,
        "{ev}"
    );
    let too_large = s.expect("too_large").await;
    assert_eq!(too_large["name"], "MessageTooLargeError", "{too_large}");

    // Twin.
    let twin = s.expect("twin").await;
    assert_eq!(twin["desiredVersion"], 1, "{twin}");
    s.expect("reported_patched").await;
    let (status, shown) = hub
        .rest(Method::GET, &format!("/twins/{device}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["properties"]["reported"]["firmware"], "amqp-1.14.4",
        "{shown}"
    );
    assert_eq!(
        shown["properties"]["reported"]["sdk"]["transport"], transport,
        "{shown}"
    );
    let updated = s.expect("twin_updated").await;
    let desired = s.expect("desired").await;
    assert_eq!(
        desired["patch"],
        json!({"interval": 7, "$version": updated["version"]}),
        "{desired}"
    );

    // C2D: one completed, one abandoned then completed on its redelivery, one rejected.
    s.expect("handlers_ready").await;
    let c2d = s.expect("c2d").await;
    let seen = c2d["seen"].as_array().unwrap();
    let hows = |body: &str| -> Vec<&str> {
        seen.iter()
            .filter(|m| m["data"] == body)
            .map(|m| m["how"].as_str().unwrap())
            .collect()
    };
    assert_eq!(hows("complete me"), ["complete"], "{c2d}");
    assert_eq!(hows("abandon me"), ["abandon", "complete"], "{c2d}");
    assert_eq!(hows("reject me"), ["reject"], "{c2d}");
    assert!(
        seen.iter()
            .all(|m| m["properties"] == json!({"color": "blue"}) && m["ack"] == "full"),
        "the sender's properties and iothub-ack: {c2d}"
    );
    let feedback = feedback_records(hub, 3).await;
    let status_of = |mid: &str| {
        feedback
            .iter()
            .find(|r| r["originalMessageId"] == mid)
            .map(|r| r["statusCode"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(status_of("amqp-c2d-1"), "Success", "{feedback:?}");
    assert_eq!(status_of("amqp-c2d-2"), "Success", "{feedback:?}");
    assert_eq!(status_of("amqp-c2d-3"), "Rejected", "{feedback:?}");

    // A direct method.
    let method = s.expect("method").await;
    assert_eq!(method["name"], "reboot", "{method}");
    assert_eq!(method["payload"], json!({"delay": 2}), "{method}");
    let invoked = s.expect("invoked").await;
    assert_eq!(invoked["status"], 201, "{invoked}");
    assert_eq!(
        invoked["payload"],
        json!({"echo": {"delay": 2}, "method": "reboot"}),
        "{invoked}"
    );

    // A wrong key is refused at put-token; a second client takes over from the first.
    let bad = s.expect("bad_token").await;
    assert_eq!(bad["name"], "UnauthorizedError", "{bad}");
    let kicked = s.expect("kicked").await;
    assert_eq!(
        kicked["inner"]["condition"], "amqp:link:stolen",
        "the first client's links are detached as another connection took over: {kicked}"
    );
    s.expect("done").await;
    s.finish().await;
}

/// A self-signed X.509 device (registered by thumbprint) over AMQPS: its TLS client
/// certificate authenticates its links, no put-token; a SAS device presenting a certificate is
/// still refused. The device SDK dials the port in `HostName`: no fixed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_over_amqp_is_authenticated_by_its_client_certificate() {
    let node = match node(PACKAGES) {
        Ok(n) => n,
        Err(why) => {
            crate::support::skip(&why);
            return;
        }
    };
    let hub = TestHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    x509_device(&node, &hub, tmp.path()).await;
    hub.stop().await;
}

async fn x509_device(node: &Path, hub: &TestHub, work: &Path) {
    let host = format!(
        "{}:{}",
        hub.hostname,
        hub.info.amqp_port.expect("amqp port")
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-amqp-x509");
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (work.join("amqp-x509.pem"), work.join("amqp-x509.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let thumbprint = azsim_emulator::x509::sha1_thumbprint(cert.der());
    let (status, body) = hub
        .rest(
            Method::PUT,
            "/devices/node-amqp-x509",
            Some(
                json!({"deviceId": "node-amqp-x509", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumbprint}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    hub.create_device("node-amqp-sas").await;
    let spawn = |id: &str| {
        let mut cmd = Command::new(node);
        cmd.arg(node_dir().join("device_amqp.js"))
            .args(["x509", &host, id])
            .args([&cert_file, &key_file])
            .arg("amqp")
            .env("NODE_EXTRA_CA_CERTS", &hub.ca_file)
            .stdin(Stdio::null());
        Script::spawn(cmd, work, &format!("device_amqp-x509-{id}"))
    };
    let mut s = spawn("node-amqp-x509");
    s.expect("connected").await;
    s.expect("telemetry_sent").await;
    s.expect("twin").await;
    s.expect("done").await;
    s.finish().await;
    let (_, events) = hub
        .rest(
            Method::GET,
            "/emulator/events/recent?deviceId=node-amqp-x509",
            None,
        )
        .await;
    assert!(
        events.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["systemProperties"]["message-id"] == "amqp-x509-amqp")),
        "{events}"
    );
    let refused = spawn("node-amqp-sas").expect_error().await;
    assert_eq!(refused["step"], "sendEvent", "{refused}");
}

/// The C2D feedback records, once there are `n` (REST receive, completed).
async fn feedback_records(hub: &TestHub, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < n {
        let (status, batch) = hub
            .rest(Method::GET, "/messages/serviceBound/feedback", None)
            .await;
        match (status, batch.as_array()) {
            (200, Some(b)) => records.extend(b.iter().cloned()),
            (204, _) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{n} feedback records within 30 s: {records:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("feedback receive: {status} {batch}"),
        }
    }
    records
}

// The independent fe2o3-amqp client's cases (hub_device_amqp/client.rs).
mod client;
