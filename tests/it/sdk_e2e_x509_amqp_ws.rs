//! What the Node SDK's e2e suite (`device_service.js` over `AmqpWs` with
//! `createDeviceWithX509SelfSignedCert` / `...CASignedCert`) found: an X.509 device over AMQP
//! over WebSockets presents its certificate in the TLS handshake of the HTTPS connection that
//! carries the upgrade, and the hub did not pass that chain on to the AMQP connection (the
//! device's links were refused). Here `azure-iot-device-amqp` 1.14.4's `AmqpWs` (which dials
//! only `wss://{host}:443/$iothub/websocket`, hence Azure's ports and
//! [`crate::support::PORT_8883`]) connects a self-signed device with its certificate, sends
//! telemetry and reads its twin; a SAS device presenting a certificate is still refused.

use std::process::Stdio;

use reqwest::Method;
use serde_json::json;
use tokio::process::Command;

use crate::support::node::node_dir;
use crate::support::script::Script;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_over_amqp_websockets_is_authenticated_by_its_client_certificate() {
    let Some(fixed) = crate::support::node::hub_on_fixed_ports(
        &["azure-iot-device", "azure-iot-device-amqp", "azure-iothub"],
        0,
        443,
        0,
        "127.0.0.1:443, which the Node SDK's AmqpWs needs (is another hub using it?)",
    )
    .await
    else {
        return;
    };
    let (node, handle, hub) = (fixed.node, fixed.hub, fixed.view);

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-amqpws-x509");
    let cert = params.self_signed(&key).unwrap();
    let work = fixed.work.as_path();
    let (cert_file, key_file) = (work.join("x509.pem"), work.join("x509.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let thumbprint = azsim_emulator::x509::sha1_thumbprint(cert.der());
    let (status, body) = hub
        .rest(
            Method::PUT,
            "/devices/node-amqpws-x509",
            Some(
                json!({"deviceId": "node-amqpws-x509", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumbprint}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    hub.create_device("node-amqpws-sas").await;

    let spawn = |id: &str| {
        let mut cmd = Command::new(&node);
        cmd.arg(node_dir().join("device_amqp.js"))
            .args(["x509", &hub.hostname, id])
            .args([&cert_file, &key_file])
            .arg("amqpws")
            .env("NODE_EXTRA_CA_CERTS", &hub.ca_file)
            .stdin(Stdio::null());
        Script::spawn(cmd, work, &format!("device_amqpws-x509-{id}"))
    };
    let mut s = spawn("node-amqpws-x509");
    s.expect("connected").await;
    s.expect("telemetry_sent").await;
    s.expect("twin").await;
    s.expect("done").await;
    s.finish().await;
    let (_, events) = hub
        .rest(
            Method::GET,
            "/emulator/events/recent?deviceId=node-amqpws-x509",
            None,
        )
        .await;
    assert!(
        events.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["systemProperties"]["message-id"] == "amqp-x509-amqpws")),
        "{events}"
    );
    let refused = spawn("node-amqpws-sas").expect_error().await;
    assert_eq!(refused["step"], "sendEvent", "{refused}");
    handle.stop().await.unwrap();
}
