//! Interop with the official Node.js SDKs, driven by `tests/node/sdk.js` against a real hub:
//! `azure-iot-device` over MQTT and over MQTT/WebSockets, `azure-iothub` (Registry and Twin over
//! REST, Client over AMQP) and DPS through `azure-iot-provisioning-device-mqtt`.
//!
//! The SDKs dial only Azure's ports (MQTT 8883, WebSockets and REST 443, AMQPS 5671; the REST
//! client cannot take a port in `HostName`), so the hub listens on those of 127.0.0.1 (hostname
//! `localhost`) and the test holds `support::PORT_8883`. A busy port is retried for up to 60 s:
//! a developer's `azsim hub` may hold it for a moment. Node comes from env `AZSIM_NODE` (default
//! `node`), the packages from `tests/node/node_modules` (`scripts/test` runs `npm ci` there,
//! pinned by `tests/node/package-lock.json`); without them the test prints `skipped:`.

use std::path::Path;
use std::process::Stdio;

use reqwest::Method;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use tokio::process::Command;

use crate::service_cli::{Output, azsim, output};
use crate::support::TestHub;
use crate::support::node::node_dir;
use crate::support::script::Script;

/// Starts `sdk.js` with `args`, trusting the hub's CA; `name` labels failures.
fn spawn_node(node: &Path, work: &Path, name: &str, args: &[&str], ca: &Path) -> Script {
    let mut cmd = Command::new(node);
    cmd.arg(node_dir().join("sdk.js"))
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .stdin(Stdio::null());
    Script::spawn(cmd, work, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_device_service_and_dps_sdks_work_against_the_hub() {
    let Some(fixed) = crate::support::node::hub_on_azure_ports(&[
        "azure-iot-device",
        "azure-iot-device-mqtt",
        "azure-iothub",
        "azure-iot-provisioning-device-mqtt",
        "azure-iot-security-symmetric-key",
    ])
    .await
    else {
        return;
    };
    let (node, hub, view) = (fixed.node, fixed.hub, fixed.view);
    let (work, cs_file) = (fixed.work, fixed.cs_file);

    device_and_service(&node, &view, &cs_file, "node-mqtt", "mqtt", "Mqtt").await;
    device_and_service(&node, &view, &cs_file, "node-ws", "mqttws", "MqttWs").await;
    dps(&node, &view, &work).await;
    x509_v1_devices(&node, &view, &work).await;

    hub.stop().await.expect("hub stops cleanly");
}

/// One run of `sdk.js service` (see its header), each step checked from the hub's side too.
async fn device_and_service(
    node: &Path,
    hub: &TestHub,
    cs_file: &Path,
    device: &str,
    transport: &str,
    transport_name: &str,
) {
    let cs = cs_file.to_str().unwrap();
    let work = cs_file.parent().unwrap();
    let mut s = spawn_node(
        node,
        work,
        &format!("sdk-{transport}"),
        &["service", cs, device, transport],
        &hub.ca_file,
    );
    let created = s.expect("created").await;
    assert_eq!(
        created,
        json!({"event": "created", "deviceId": device, "status": "enabled", "type": "sas",
               "hasKeys": true, "etag": true})
    );
    let got = s.expect("device").await;
    assert_eq!(got["sameKey"], true, "{got}");
    // Registry.list asks for `GET /devices/`.
    let listed = s.expect("listed").await;
    assert_eq!(listed["found"], true, "{listed}");
    // Bulk calls with azure-iothub's import modes (`create`, `Update`, `Delete`).
    let ok = json!({"ok": true, "errors": 0});
    let bulk = s.expect("bulk").await;
    assert_eq!(
        bulk,
        json!({"event": "bulk", "added": ok, "disabled": "disabled", "updated": ok,
               "enabled": "enabled", "removed": ok, "getError": "DeviceNotFoundError"})
    );

    let connected = s.expect("connected").await;
    assert_eq!(connected["transport"], transport_name, "{connected}");

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
    assert_eq!(ev["body"], r#"{"temperature":22.5}"#, "{ev}");
    assert_eq!(ev["properties"]["alert"], "hot", "{ev}");
    assert_eq!(ev["properties"]["source"], "node sdk", "{ev}");
    assert_eq!(ev["systemProperties"]["message-id"], "node-msg-1", "{ev}");
    assert_eq!(
        ev["systemProperties"]["correlation-id"], "node-corr-1",
        "{ev}"
    );
    assert_eq!(
        ev["systemProperties"]["content-type"], "application/json",
        "{ev}"
    );
    assert_eq!(ev["systemProperties"]["content-encoding"], "utf-8", "{ev}");

    let twin = s.expect("twin").await;
    assert_eq!(twin["desiredVersion"], 1, "{twin}");
    s.expect("reported_patched").await;
    let (status, shown) = hub
        .rest(Method::GET, &format!("/twins/{device}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    let reported = &shown["properties"]["reported"];
    assert_eq!(reported["firmware"], "node-1.18.4", "{shown}");
    assert_eq!(reported["sdk"]["name"], "node", "{shown}");

    s.expect("handlers_ready").await;
    let updated = s.expect("twin_updated").await;
    assert_eq!(updated["interval"], 9, "{updated}");
    let desired = s.expect("desired").await;
    assert_eq!(
        desired["patch"],
        json!({"interval": 9, "$version": updated["version"]}),
        "{desired}"
    );

    let cleared = s.expect("desired_cleared").await;
    let version = updated["version"].as_u64().unwrap() + 1;
    assert_eq!(
        cleared["patch"],
        json!({"interval": null, "$version": version}),
        "{cleared}"
    );
    assert_eq!(
        cleared["desired"],
        json!({"$version": version}),
        "{cleared}"
    );

    s.expect("c2d_sent").await;
    let c2d = s.expect("c2d").await;
    assert_eq!(c2d["data"], "hello node", "{c2d}");
    assert_eq!(c2d["messageId"], "node-c2d-1", "{c2d}");
    assert_eq!(c2d["correlationId"], "node-c2d-corr", "{c2d}");
    // Only the sender's properties: no `iothub-ack` the service did not set.
    assert_eq!(
        c2d["properties"],
        json!({"color": "blue", "note": "yes & no = maybe/ok"}),
        "{c2d}"
    );

    let method = s.expect("method").await;
    assert_eq!(method["name"], "reboot", "{method}");
    assert_eq!(method["payload"], json!({"delay": 1}), "{method}");
    let invoked = s.expect("invoked").await;
    assert_eq!(invoked["status"], 201, "{invoked}");
    assert_eq!(
        invoked["payload"],
        json!({"echo": {"delay": 1}, "method": "reboot"}),
        "{invoked}"
    );

    let deleted = s.expect("deleted").await;
    assert_eq!(
        deleted,
        json!({"event": "deleted", "getError": "DeviceNotFoundError", "status": 404})
    );
    s.expect("done").await;
    s.finish().await;
    let (status, _) = hub
        .rest(Method::GET, &format!("/devices/{device}"), None)
        .await;
    assert_eq!(status, 404, "the Registry deleted {device}");
}

/// An individual enrollment with a symmetric key (made by `azsim dps enrollment create`); the
/// Node provisioning client registers over MQTT, then its device client sends telemetry.
async fn dps(node: &Path, hub: &TestHub, work: &Path) {
    let mut cmd = azsim(work);
    cmd.args(["dps", "enrollment", "create", "node-dps-reg"])
        .args(["--device-id", "node-dps-device", "--json"])
        .arg("--dps-connection-string")
        .arg(&hub.info.provisioning_service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file);
    let out: Output = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let enrollment = out.json();
    let key = enrollment["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap_or_else(|| panic!("a generated key: {}", out.stdout));
    let key_file = work.join("dps.key");
    std::fs::write(&key_file, key).unwrap();

    let mut s = spawn_node(
        node,
        work,
        "sdk-dps",
        &[
            "dps",
            &hub.info.id_scope,
            &hub.info.provisioning_host,
            "node-dps-reg",
            key_file.to_str().unwrap(),
        ],
        &hub.ca_file,
    );
    let registered = s.expect("registered").await;
    assert_eq!(
        registered,
        json!({"event": "registered", "assignedHub": hub.hostname, "deviceId": "node-dps-device",
               "status": "assigned"})
    );
    s.expect("telemetry_sent").await;
    s.expect("done").await;
    s.finish().await;
    let (status, events) = hub
        .rest(
            Method::GET,
            "/emulator/events/recent?deviceId=node-dps-device",
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    assert!(
        events.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["systemProperties"]["message-id"] == "node-dps-1")),
        "the provisioned device's telemetry reached the hub: {events}"
    );
}

/// Runs `openssl` with `args`; `false` (after a `skipped:` line) when there is no openssl.
fn openssl(args: &[&std::ffi::OsStr]) -> bool {
    match std::process::Command::new("openssl").args(args).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            crate::support::skip(&format!("openssl not found ({e}): no X.509 v1 check"));
            false
        }
    }
}

/// X.509 v1 certificates (what `openssl x509 -req` makes, as the `pem` package under the Node e2e
/// suite and Azure's self-signed tutorial do): one self-signed with `CN=localhost`, registered
/// by thumbprint (IoT Hub checks only the thumbprint and the validity), and one with the
/// device id as CN issued by a CA the hub holds. Each device connects over MQTT and over
/// WebSockets and sends one message.
async fn x509_v1_devices(node: &Path, hub: &TestHub, work: &Path) {
    let f = |name: &str| work.join(name).into_os_string();
    let os = |s: &str| std::ffi::OsString::from(s);
    let (key, csr, cert) = (f("v1.key"), f("v1.csr"), f("v1.pem"));
    let (ca_key, ca_pem) = (f("ca.key"), f("ca.pem"));
    let (ca_leaf_key, ca_leaf_csr, ca_leaf) = (f("leaf.key"), f("leaf.csr"), f("leaf.pem"));
    let steps: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            os("req"),
            os("-new"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
        ]
        .into_iter()
        .chain([os("-subj"), os("/CN=localhost"), os("-keyout"), key.clone()])
        .chain([os("-out"), csr.clone()])
        .collect(),
        vec![
            os("x509"),
            os("-req"),
            os("-days"),
            os("1"),
            os("-in"),
            csr.clone(),
        ]
        .into_iter()
        .chain([os("-signkey"), key.clone(), os("-out"), cert.clone()])
        .collect(),
        vec![
            os("req"),
            os("-x509"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
        ]
        .into_iter()
        .chain([os("-days"), os("1"), os("-subj"), os("/CN=node-e2e-ca")])
        .chain([os("-keyout"), ca_key.clone(), os("-out"), ca_pem.clone()])
        .collect(),
        vec![
            os("req"),
            os("-new"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
        ]
        .into_iter()
        .chain([os("-subj"), os("/CN=node-x509-ca"), os("-keyout")])
        .chain([ca_leaf_key.clone(), os("-out"), ca_leaf_csr.clone()])
        .collect(),
        vec![
            os("x509"),
            os("-req"),
            os("-days"),
            os("1"),
            os("-in"),
            ca_leaf_csr,
        ]
        .into_iter()
        .chain([os("-CA"), ca_pem.clone(), os("-CAkey"), ca_key])
        .chain([os("-set_serial"), os("7"), os("-out"), ca_leaf.clone()])
        .collect(),
    ];
    for args in &steps {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        if !openssl(&args) {
            return;
        }
    }
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
    let thumbprint = azsim_emulator::x509::sha1_thumbprint(&der);
    let (status, body) = hub
        .rest(
            Method::PUT,
            "/devices/node-x509",
            Some(
                json!({"deviceId": "node-x509", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumbprint}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = hub
        .rest(
            Method::PUT,
            "/devices/node-x509-ca",
            Some(json!({"deviceId": "node-x509-ca",
                "authentication": {"type": "certificateAuthority"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Before the hub holds its CA, the CA-signed v1 leaf is refused.
    let refused = spawn_node(
        node,
        work,
        "sdk-node-x509-ca-refused",
        &[
            "x509",
            &hub.hostname,
            "node-x509-ca",
            ca_leaf.to_str().unwrap(),
            ca_leaf_key.to_str().unwrap(),
            "mqtt",
        ],
        &hub.ca_file,
    )
    .expect_error()
    .await;
    assert_eq!(refused["name"], "UnauthorizedError", "{refused}");
    let ca_text = std::fs::read_to_string(&ca_pem).unwrap();
    let (status, body) = hub
        .rest(
            Method::PUT,
            "/certificates/node-e2e-ca",
            Some(json!({"properties": {"certificate": ca_text}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    for (id, cert, key) in [
        ("node-x509", &cert, &key),
        ("node-x509-ca", &ca_leaf, &ca_leaf_key),
    ] {
        for transport in ["mqtt", "mqttws"] {
            let mut s = spawn_node(
                node,
                work,
                &format!("sdk-{id}-{transport}"),
                &[
                    "x509",
                    &hub.hostname,
                    id,
                    cert.to_str().unwrap(),
                    key.to_str().unwrap(),
                    transport,
                ],
                &hub.ca_file,
            );
            s.expect("connected").await;
            s.expect("telemetry_sent").await;
            s.expect("done").await;
            s.finish().await;
        }
        let (status, events) = hub
            .rest(
                Method::GET,
                &format!("/emulator/events/recent?deviceId={id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{events}");
        for msg in ["node-x509-mqtt", "node-x509-mqttws"] {
            assert!(
                events
                    .as_array()
                    .is_some_and(|a| a.iter().any(|e| e["systemProperties"]["message-id"] == msg)),
                "{id}: {msg} reached the hub: {events}"
            );
        }
    }
}
