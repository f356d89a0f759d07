//! The official Python device SDK's X.509 client against the hub (ports 8883 and 443).

use std::path::Path;

use reqwest::Method;
use serde_json::json;

use azsim::cmd::cert::make_ca;

use super::{add_ca, device, register};
use crate::support::TestHub;
use crate::support::python;
use crate::support::script::Script;

/// The official Python device SDK's X.509 client (`create_from_x509_certificate`) against the
/// hub on 127.0.0.1:8883 (the SDK's only port): a self-signed-thumbprint device and a
/// CA-signed device each send telemetry, answer a direct method and receive a desired patch;
/// a certificate the hub does not know is refused. One Python process drives them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_device_sdk_connects_x509_devices_self_signed_and_ca_signed() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let handle = start_hub_on_8883(&tmp.path().join("hub"), |_| {}).await;
    let hub = TestHub::attach(&handle.info);
    let dir = tmp.path();
    let root = make_ca("py-root", dir, 30).unwrap();
    let ss = device(dir, "py-ss", None);
    let by_ca = device(dir, "py-ca", Some(&root));
    let stranger = device(dir, "py-nobody", None);
    register(
        &hub,
        "/devices/py-ss",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": ss.sha1}}),
    )
    .await;
    register(
        &hub,
        "/devices/py-ca",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    register(
        &hub,
        "/devices/py-nobody",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "AB".repeat(32)}}),
    )
    .await;
    add_ca(&hub, "py-root", &root).await;

    let mut args: Vec<std::ffi::OsString> =
        vec![hub.hostname.clone().into(), hub.ca_file.clone().into()];
    // py-ca once more over MQTT over WebSockets (port 443): the HTTPS listener's client
    // certificate reaches the CONNECT.
    for (id, m) in [
        ("py-ss", &ss),
        ("py-ca", &by_ca),
        ("ws:py-ca", &by_ca),
        ("!py-nobody", &stranger),
    ] {
        args.extend([
            id.into(),
            m.cert_file.clone().into(),
            m.key_file.clone().into(),
        ]);
    }
    let mut py = spawn_json_lines(&python, "device_x509.py", &args, dir);
    for id in ["py-ss", "py-ca", "py-ca"] {
        let ready = py.expect("ready").await;
        assert_eq!(ready["device"], id);
        let (s, v) = hub
            .rest(Method::POST, &format!("/twins/{id}/methods"), Some(json!({"methodName": "hello", "payload": {"n": 1}, "responseTimeoutInSeconds": 30})))
            .await;
        assert_eq!(
            (s, &v["status"], &v["payload"]["from"]),
            (200, &json!(200), &json!(id)),
            "{v}"
        );
        assert_eq!(py.expect("method").await["payload"]["n"], 1);
        let (s, v) = hub
            .rest(
                Method::PATCH,
                &format!("/twins/{id}"),
                Some(json!({"properties": {"desired": {"mode": "x509"}}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(py.expect("desired").await["patch"]["mode"], "x509");
        py.send_line("next").await;
        assert_eq!(py.expect("done").await["device"], id);
        let (_, twin) = hub.rest(Method::GET, &format!("/twins/{id}"), None).await;
        assert_eq!(twin["properties"]["reported"]["auth"], "x509", "{twin}");
        let expected = if id == "py-ss" {
            "selfSigned"
        } else {
            "certificateAuthority"
        };
        assert_eq!(twin["authenticationType"], expected, "{twin}");
        let (_, events) = hub
            .rest(
                Method::GET,
                &format!("/emulator/events/recent?deviceId={id}"),
                None,
            )
            .await;
        let telemetry = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "telemetry")
            .cloned();
        assert_eq!(
            telemetry.map(|e| e["body"].clone()),
            Some(json!(format!("{{\"device\": \"{id}\", \"x509\": true}}")))
        );
    }
    assert_eq!(py.expect("refused").await["device"], "py-nobody");
    assert!(
        py.seen
            .iter()
            .any(|e| e["event"] == "connected" && e["websockets"] == true),
        "one run over WebSockets: {:?}",
        py.seen
    );
    py.expect("finished").await;
    py.finish().await;
    handle.stop().await.unwrap();
}

/// The hub with MQTT on 127.0.0.1:8883 and HTTPS (WebSockets) on 443, the only ports the SDK
/// dials (`f` adjusts its configuration); a busy port is retried for up to 60 s (another test
/// binary or a developer's hub may hold it for a moment).
pub(crate) async fn start_hub_on_8883(
    dir: &Path,
    f: impl Fn(&mut azsim_emulator::HubConfig),
) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(dir, 8883, 443, f, "127.0.0.1:8883 and 443").await
}

/// Starts `tests/python/{script}` with `args` in `work`, speaking JSON lines (see
/// tests/python/device_x509.py).
pub(crate) fn spawn_json_lines(
    python: &Path,
    script: &str,
    args: &[std::ffi::OsString],
    work: &Path,
) -> Script {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/python")
            .join(script),
    )
    .args(args)
    .env("PYTHONUNBUFFERED", "1")
    .stdin(std::process::Stdio::piped());
    Script::spawn(cmd, work, script)
}
