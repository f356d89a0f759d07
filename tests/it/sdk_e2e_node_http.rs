//! The Node SDK's HTTPS device transport (`azure-iot-device-http` 1.14.4, the `Http` of the
//! SDK's e2e suite) against the hub, through `tests/node/device_http.js`: telemetry single and
//! batched with its properties as the hub stored them, a message at the 256 KiB limit and one
//! past it (MessageTooLargeError), 20 sequential sends (timed, printed), refused sends (a wrong
//! key and an expired token are UnauthorizedError, an unknown device DeviceNotFoundError as the
//! suite's authentication.js says HTTP answers), C2D polled on `messages/devicebound` and completed, rejected or abandoned
//! with the service's feedback over AMQP, and an X.509 device sending with its certificate only.
//! The SDK dials 443 (and its service client 5671): the hub runs on Azure's ports, under
//! [`crate::support::PORT_8883`].

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

/// A self-signed certificate for `id` in `dir`: its files and SHA-1 thumbprint.
fn self_signed(dir: &Path, id: &str) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, azsim_emulator::x509::sha1_thumbprint(cert.der()))
}

/// A refusal's body in IoT Hub's older error shape: `Message` starts `ErrorCode:{name};`, and
/// `ExceptionMessage` carries a tracking id.
fn assert_older_shape(refused: &Value, message_prefix: &str) {
    let body = &refused["body"];
    assert!(
        body["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message_prefix)),
        "{refused}"
    );
    assert!(
        body["ExceptionMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("Tracking ID:")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_http_transport_sends_telemetry_and_settles_c2d() {
    let Some(fixed) = crate::support::node::hub_on_azure_ports(&[
        "azure-iot-device",
        "azure-iot-device-http",
        "azure-iothub",
    ])
    .await
    else {
        return;
    };
    let (node, hub, view) = (fixed.node, fixed.hub, fixed.view);
    let (work, cs_file) = (fixed.work, fixed.cs_file);
    let (cert, key, thumb) = self_signed(&work, "node-http-x509");
    let (s, v) = view
        .rest(
            Method::PUT,
            "/devices/node-http-x509",
            Some(
                json!({"deviceId": "node-http-x509", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumb}}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let mut cmd = tokio::process::Command::new(&node);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/device_http.js"))
        .arg(&cs_file)
        .arg("node-http")
        .arg("node-http-x509")
        .arg(&cert)
        .arg(&key)
        .env("NODE_EXTRA_CA_CERTS", &view.ca_file)
        .stdin(std::process::Stdio::null());
    let mut s = crate::support::script::Script::spawn(cmd, &work, "device_http");
    s.expect("opened").await;

    // Telemetry: 204 for the single message, the batch and the one at the limit.
    for event in ["sent", "batchSent", "limitSent"] {
        let r = s.expect(event).await;
        assert_eq!(r["status"], 204, "{r}");
    }
    let r = s.expect("refused").await;
    assert_eq!(r["case"], "too large", "{r}");
    assert_eq!(r["status"], 413, "{r}");
    assert_eq!(r["tooLarge"], true, "MessageTooLargeError: {r}");
    assert_eq!(r["errorCode"], "MessageTooLarge", "{r}");
    let t = s.expect("timed").await;
    let (n, ms) = (t["count"].as_u64().unwrap(), t["ms"].as_f64().unwrap());
    println!(
        "azure-iot-device-http: {n} sequential sendEvent round trips in {ms:.0} ms ({:.1} ms each)",
        ms / n as f64
    );

    // Refused sends: the SDK's own error classes, from the hub's status codes.
    let r = s.expect("refused").await;
    assert_eq!(r["case"], "wrong key", "{r}");
    assert_eq!(
        (r["status"].as_u64(), &r["unauthorized"]),
        (Some(401), &json!(true)),
        "{r}"
    );
    assert_eq!(r["errorCode"], "IotHubUnauthorizedAccess", "{r}");
    assert_older_shape(&r, "ErrorCode:IotHubUnauthorizedAccess;Unauthorized");
    let r = s.expect("refused").await;
    assert_eq!(r["case"], "unknown device", "{r}");
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(r["name"], "DeviceNotFoundError", "{r}");
    assert_older_shape(&r, "ErrorCode:DeviceNotFound;");
    let r = s.expect("refused").await;
    assert_eq!(r["case"], "expired token", "{r}");
    assert_eq!(
        (r["status"].as_u64(), &r["unauthorized"]),
        (Some(401), &json!(true)),
        "{r}"
    );
    assert_older_shape(&r, "ErrorCode:IotHubUnauthorizedAccess;Unauthorized");

    // C2D: each message as sent, settled as the device chose; abandoned comes back once.
    let mut received = Vec::new();
    for _ in 0..4 {
        let c = s.expect("c2d").await;
        let id = c["messageId"].as_str().unwrap().to_owned();
        assert_eq!(c["data"], format!("body of {id}"), "{c}");
        assert_eq!(c["correlationId"], format!("corr-{id}"), "{c}");
        assert_eq!(c["properties"]["iothub-app-kind"], &id[4..], "{c}");
        assert_eq!(c["lockToken"], true, "{c}");
        received.push((id, c["action"].as_str().unwrap().to_owned()));
    }
    received.sort();
    assert_eq!(
        received,
        [
            ("c2d-abandon".into(), "abandon".into()),
            ("c2d-abandon".into(), "complete".into()),
            ("c2d-complete".into(), "complete".into()),
            ("c2d-reject".into(), "reject".into()),
        ],
        "{:?}",
        s.seen
    );
    let f = s.expect("feedback").await;
    assert_eq!(
        f["statuses"],
        json!({"c2d-complete": "Success", "c2d-reject": "Rejected", "c2d-abandon": "Success"}),
        "{f}"
    );

    let r = s.expect("x509Sent").await;
    assert_eq!(r["status"], 204, "{r}");
    s.expect("done").await;
    s.finish().await;

    // What the hub stored: the single message with its system and application properties, the
    // batch's three with theirs, the one at the limit; nothing of the refused sends.
    let events = view.telemetry("node-http").await;
    assert_eq!(events.len(), 5 + n as usize, "{events:?}");
    let single = &events[0];
    assert_eq!(single["body"], r#"{"temperature":21.5}"#, "{single}");
    let sys = &single["systemProperties"];
    assert_eq!(sys["message-id"], "http-single-1", "{single}");
    assert_eq!(sys["correlation-id"], "http-corr-1", "{single}");
    assert_eq!(sys["content-type"], "application/json", "{single}");
    assert_eq!(sys["content-encoding"], "utf-8", "{single}");
    assert_eq!(
        single["properties"],
        json!({"alert": "hot", "unit": "celsius"}),
        "{single}"
    );
    for (n, ev) in events[1..4].iter().enumerate() {
        let n = n + 1;
        assert_eq!(ev["body"], format!("batch-{n}"), "{ev}");
        assert_eq!(ev["properties"], json!({"n": n.to_string()}), "{ev}");
    }
    assert_eq!(events[4]["properties"], json!({"size": "limit"}));
    for (i, ev) in events[5..].iter().enumerate() {
        assert_eq!(ev["body"], format!("timed-{i}"), "{ev}");
    }
    let x509 = view.telemetry("node-http-x509").await;
    assert_eq!(x509.len(), 1, "{x509:?}");
    assert_eq!(x509[0]["systemProperties"]["message-id"], "http-x509-1");
    assert_eq!(x509[0]["body"], "from x509");
    hub.stop().await.expect("hub stops cleanly");
}
