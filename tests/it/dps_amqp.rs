//! DPS over AMQP and AMQP over WebSockets (`dps/amqp.rs`) with the official Node SDK
//! (`azure-iot-provisioning-device-amqp` 1.9.1, Amqp and AmqpWs; `tests/node/dps_amqp.js`):
//! symmetric-key individual and group enrollments and an X.509 individual enrollment register,
//! each assigned device connects to the hub over AMQP and its message is stored; a wrong key
//! gets DPS's 401 and an unknown registration its 404 as the SDK reports them (the request
//! rejected with `amqp:unauthorized-access` / `amqp:not-found` and DPS's error body), and the
//! hub serves the next registration after them.
//!
//! The SDKs dial 5671 (AMQPS), 443 (AMQP over WebSockets) and 8883, so the hub listens there,
//! holding `support::PORT_8883`.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use crate::dps::{derive, service};
use crate::support::TestHub;

/// `node` with the DPS AMQP transport and the device AMQP transport in tests/node, or why not.
fn node() -> Result<PathBuf, String> {
    let node = match std::env::var_os("AZSIM_NODE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("node"),
    };
    match std::process::Command::new(&node).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("node not found ({})", node.display())),
    }
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules");
    for pkg in [
        "azure-iot-provisioning-device",
        "azure-iot-provisioning-device-amqp",
        "azure-iot-security-symmetric-key",
        "azure-iot-device",
        "azure-iot-device-amqp",
    ] {
        if !modules.join(pkg).join("package.json").is_file() {
            return Err(format!(
                "tests/node/node_modules lacks {pkg} (run scripts/test, or npm ci in tests/node)"
            ));
        }
    }
    Ok(node)
}

/// An individual symmetric-key enrollment for `reg` (device `device`); its generated key.
async fn individual(hub: &TestHub, reg: &str, device: &str) -> String {
    let (s, e) = service(
        hub,
        Method::PUT,
        &format!("/enrollments/{reg}"),
        Some(json!({"registrationId": reg, "deviceId": device,
            "attestation": {"type": "symmetricKey"}})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("a generated key")
        .to_string()
}

/// The stored telemetry message ids of `device`.
async fn stored_ids(hub: &TestHub, device: &str) -> Vec<String> {
    let (status, events) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["systemProperties"]["message-id"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// DPS's error body in a refusal's description, its `errorCode`.
fn error_code(refused: &Value) -> Value {
    let d = refused["description"].as_str().unwrap_or_default();
    let body: Value = serde_json::from_str(d)
        .unwrap_or_else(|e| panic!("DPS's error body as the description ({e}): {refused}"));
    assert!(body["trackingId"].is_string(), "{body}");
    body["errorCode"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_provisions_over_amqp_and_amqp_websockets_then_sends_telemetry() {
    let node = match node() {
        Ok(n) => n,
        Err(why) => {
            crate::support::skip(&why);
            return;
        }
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let hub = crate::support::start_on_fixed_ports(
        &tmp.path().join("hub"),
        8883,
        443,
        |cfg| cfg.amqp_port = Some(5671),
        "127.0.0.1:8883/443/5671, which the Node SDKs need (is another hub or broker using them?)",
    )
    .await;
    let view = TestHub::attach(&hub.info);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    let ind_key = individual(&view, "amqp-ind", "amqp-ind-dev").await;
    let ws_key = individual(&view, "amqpws-ind", "amqpws-ind-dev").await;
    let group_key = azsim_emulator::state_dir::generate_key();
    let (s, g) = service(
        &view,
        Method::PUT,
        "/enrollmentGroups/amqp-grp",
        Some(
            json!({"enrollmentGroupId": "amqp-grp", "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let x509 = azsim::cmd::cert::make_device("amqp-x509", "amqp-x509", None, &work, 30).unwrap();
    let pem = std::fs::read_to_string(&x509.cert_file).unwrap();
    let (s, e) = service(
        &view,
        Method::PUT,
        "/enrollments/amqp-x509",
        Some(
            json!({"attestation": {"type": "x509", "x509": {"clientCertificates":
            {"primary": {"certificate": pem}}}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{e}");

    let wrong_key = azsim_emulator::state_dir::generate_key();
    let cases = json!([
        {"name": "individual-amqp", "transport": "amqp", "registrationId": "amqp-ind",
         "key": ind_key, "payload": {"modelId": "dtmi:azsim:amqp;1"}, "expect": "assigned"},
        {"name": "individual-amqpws", "transport": "amqpws", "registrationId": "amqpws-ind",
         "key": ws_key, "expect": "assigned"},
        {"name": "group-amqp", "transport": "amqp", "registrationId": "amqp-grp-1",
         "key": derive(&group_key, "amqp-grp-1"), "expect": "assigned"},
        {"name": "group-amqpws", "transport": "amqpws", "registrationId": "amqp-grp-2",
         "key": derive(&group_key, "amqp-grp-2"), "expect": "assigned"},
        {"name": "x509-amqp", "transport": "amqp", "registrationId": "amqp-x509",
         "certFile": x509.cert_file, "keyFile": x509.key_file, "expect": "assigned"},
        {"name": "x509-amqpws", "transport": "amqpws", "registrationId": "amqp-x509",
         "certFile": x509.cert_file, "keyFile": x509.key_file, "expect": "assigned"},
        {"name": "wrong-key-amqp", "transport": "amqp", "registrationId": "amqp-ind",
         "key": wrong_key, "expect": "refused"},
        {"name": "unknown-amqpws", "transport": "amqpws", "registrationId": "amqp-nobody",
         "key": wrong_key, "expect": "refused"},
        {"name": "after-refusals", "transport": "amqp", "registrationId": "amqp-grp-3",
         "key": derive(&group_key, "amqp-grp-3"), "expect": "assigned"},
    ]);
    let cases_file = work.join("cases.json");
    std::fs::write(&cases_file, cases.to_string()).unwrap();

    let mut cmd = tokio::process::Command::new(&node);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/dps_amqp.js"))
        .arg(&hub.info.id_scope)
        .arg(&hub.info.provisioning_host)
        .arg(&cases_file)
        .env("NODE_EXTRA_CA_CERTS", &view.ca_file)
        .stdin(std::process::Stdio::null());
    let mut s = crate::support::script::Script::spawn(cmd, &work, "dps_amqp");

    // (case, device id, substatus) of each registration, in order.
    let assigned = [
        ("individual-amqp", "amqp-ind-dev", "initialAssignment"),
        ("individual-amqpws", "amqpws-ind-dev", "initialAssignment"),
        ("group-amqp", "amqp-grp-1", "initialAssignment"),
        ("group-amqpws", "amqp-grp-2", "initialAssignment"),
        ("x509-amqp", "amqp-x509", "initialAssignment"),
        ("x509-amqpws", "amqp-x509", "deviceDataMigrated"),
    ];
    for (name, device, substatus) in assigned {
        let r = s.expect("registered").await;
        assert_eq!(r["name"], name, "{r}");
        assert_eq!(r["assignedHub"], view.hostname, "{r}");
        assert_eq!(r["deviceId"], device, "{r}");
        assert_eq!(r["status"], "assigned", "{r}");
        assert_eq!(r["substatus"], substatus, "{r}");
        eprintln!("{name}: registered in {} ms", r["ms"]);
        let t = s.expect("telemetry_sent").await;
        assert_eq!(t["name"], name, "{t}");
    }
    let wrong = s.expect("refused").await;
    assert_eq!(wrong["name"], "wrong-key-amqp", "{wrong}");
    assert_eq!(wrong["condition"], "amqp:unauthorized-access", "{wrong}");
    assert_eq!(error_code(&wrong), 401002, "{wrong}");
    let unknown = s.expect("refused").await;
    assert_eq!(unknown["name"], "unknown-amqpws", "{unknown}");
    assert_eq!(unknown["condition"], "amqp:not-found", "{unknown}");
    assert_eq!(error_code(&unknown), 404201, "{unknown}");
    let after = s.expect("registered").await;
    assert_eq!(
        (&after["name"], &after["deviceId"], &after["status"]),
        (
            &json!("after-refusals"),
            &json!("amqp-grp-3"),
            &json!("assigned")
        ),
        "{after}"
    );
    s.expect("telemetry_sent").await;
    s.expect("done").await;
    s.finish().await;

    // The custom payload is in the registration record; every device's message is stored.
    let (st, rec) = service(&view, Method::GET, "/registrations/amqp-ind", None).await;
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["payload"]["modelId"], "dtmi:azsim:amqp;1", "{rec}");
    assert_eq!(rec["status"], "assigned", "{rec}");
    let stored = [
        ("amqp-ind-dev", vec!["individual-amqp"]),
        ("amqpws-ind-dev", vec!["individual-amqpws"]),
        ("amqp-grp-1", vec!["group-amqp"]),
        ("amqp-grp-2", vec!["group-amqpws"]),
        ("amqp-x509", vec!["x509-amqp", "x509-amqpws"]),
        ("amqp-grp-3", vec!["after-refusals"]),
    ];
    for (device, names) in stored {
        let ids = stored_ids(&view, device).await;
        for n in names {
            let id = format!("dps-amqp-{n}");
            assert!(ids.contains(&id), "{id} stored for {device}: {ids:?}");
        }
    }
    // The refused registration made nothing.
    let (st, _) = service(&view, Method::GET, "/registrations/amqp-nobody", None).await;
    assert_eq!(st, 404);
    hub.stop().await.expect("hub stops cleanly");
}
