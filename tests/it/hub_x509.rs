//! X.509 device authentication in the hub (issue 13): devices registered `selfSigned` (SHA-1 or
//! SHA-256 thumbprint) or `certificateAuthority` (a CA the hub holds, `/certificates/{name}`)
//! connect over real TLS with a client certificate whose CN is their id and an empty password;
//! every wrong certificate gets CONNACK 5 and the hub keeps serving. Certificates are made by
//! `azsim cert`'s own functions (rcgen); validity is checked at the hub's (manual) clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use rumqttc::{
    AsyncClient, ConnectReturnCode, EventLoop, MqttOptions, QoS, TlsConfiguration, Transport,
};
use serde_json::json;

use azsim::cmd::cert::{Made, make_ca, make_device};
use azsim::tls::{ClientCert, client_config_with_cert};

use crate::support::{TestHub, next_incoming, wait_connack};

/// rumqttc options for `client_id` presenting `cert` (if any), with `password`.
fn x509_options(
    hub: &TestHub,
    client_id: &str,
    cert: Option<&Made>,
    password: &str,
) -> MqttOptions {
    let device = client_id.split('/').next().unwrap();
    let module = client_id.split('/').nth(1);
    let username = match module {
        Some(m) => format!("{}/{device}/{m}/?api-version=2021-04-12", hub.hostname),
        None => hub.username(device),
    };
    let client = cert.map(|m| ClientCert::load(&m.cert_file, &m.key_file).unwrap());
    let tls = client_config_with_cert(Some(&hub.ca_file), client.as_ref()).unwrap();
    let mut o = MqttOptions::new(client_id, hub.hostname.clone(), hub.mqtt_port);
    o.set_credentials(username, password);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

async fn connack(
    hub: &TestHub,
    client_id: &str,
    cert: Option<&Made>,
    password: &str,
) -> Result<ConnectReturnCode, String> {
    let (_c, mut el) = AsyncClient::new(x509_options(hub, client_id, cert, password), 16);
    match wait_connack(&mut el).await {
        Ok(code) => Ok(code),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Ok(code),
        Err(e) => Err(e.to_string()),
    }
}

async fn connect(hub: &TestHub, client_id: &str, cert: &Made) -> (AsyncClient, EventLoop) {
    let (c, mut el) = AsyncClient::new(x509_options(hub, client_id, Some(cert), ""), 16);
    assert_eq!(
        wait_connack(&mut el).await.unwrap(),
        ConnectReturnCode::Success,
        "{client_id}"
    );
    (c, el)
}

async fn register(hub: &TestHub, path: &str, auth: serde_json::Value) -> serde_json::Value {
    let (s, v) = hub
        .rest(Method::PUT, path, Some(json!({ "authentication": auth })))
        .await;
    assert_eq!(s, 200, "PUT {path}: {v}");
    v
}

async fn add_ca(hub: &TestHub, name: &str, ca: &Made) {
    let pem = std::fs::read_to_string(&ca.cert_file).unwrap();
    let (s, v) = hub
        .rest(
            Method::PUT,
            &format!("/certificates/{name}"),
            Some(json!({"properties": {"certificate": pem}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

fn device(dir: &Path, cn: &str, ca: Option<&Made>) -> Made {
    let stem = cn.replace('/', "-");
    make_device(cn, &stem, ca.map(|c| c.cert_file.as_path()), dir, 1).unwrap()
}

/// Sends `key`'s device with a certificate that is not DER at all.
#[derive(Debug)]
struct Garbage(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Garbage {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

async fn garbage_certificate_connack(
    hub: &TestHub,
    key_of: &Made,
) -> Result<ConnectReturnCode, String> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_of.key_file).unwrap();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let garbage = rustls::pki_types::CertificateDer::from((1u8..=32).collect::<Vec<u8>>());
    let ck = Arc::new(rustls::sign::CertifiedKey::new(vec![garbage], signer));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(azsim::tls::root_store(Some(&hub.ca_file)).unwrap())
        .with_client_cert_resolver(Arc::new(Garbage(ck)));
    let mut o = x509_options(hub, "dev", None, "");
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (_c, mut el) = AsyncClient::new(o, 16);
    match wait_connack(&mut el).await {
        Ok(code) => Ok(code),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Ok(code),
        Err(e) => Err(e.to_string()),
    }
}

const REFUSED: Result<ConnectReturnCode, String> = Ok(ConnectReturnCode::NotAuthorized);

#[tokio::test]
async fn self_signed_and_ca_signed_devices_connect_with_their_certificate_and_nothing_else() {
    let (hub, clock) = TestHub::start_manual().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = make_ca("root", dir, 30).unwrap();
    let stranger = make_ca("stranger", dir, 30).unwrap();
    let ss1 = device(dir, "ss-1", None);
    let ss2 = device(dir, "ss-2", None);
    let by_ca = device(dir, "ca-1", Some(&root));
    let by_ca_module = device(dir, "ca-1/m1", Some(&root));
    let by_stranger = device(dir, "ca-2", Some(&stranger));

    // SHA-1 as the primary, SHA-256 (lower case, with colons) as the secondary thumbprint.
    let v = register(
        &hub,
        "/devices/ss-1",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": ss1.sha1}}),
    )
    .await;
    assert_eq!(v["authentication"]["type"], "selfSigned");
    assert_eq!(
        v["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        ss1.sha1
    );
    assert_eq!(
        v["authentication"]["symmetricKey"]["primaryKey"],
        serde_json::Value::Null
    );
    let colons = ss2
        .sha256
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    register(&hub, "/devices/ss-2", json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "00".repeat(20), "secondaryThumbprint": colons}})).await;
    register(
        &hub,
        "/devices/ca-1",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    register(
        &hub,
        "/devices/ca-1/modules/m1",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    register(
        &hub,
        "/devices/ca-2",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    hub.create_device("sas-1").await;
    let sas_key = hub.device_key("sas-1").await;

    // Before the hub holds the root, a CA-signed device is refused.
    assert_eq!(connack(&hub, "ca-1", Some(&by_ca), "").await, REFUSED);
    add_ca(&hub, "root", &root).await;

    for (id, cert) in [
        ("ss-1", &ss1),
        ("ss-2", &ss2),
        ("ca-1", &by_ca),
        ("ca-1/m1", &by_ca_module),
    ] {
        let (c, mut el) = connect(&hub, id, cert).await;
        let topic = match id.split_once('/') {
            Some((d, m)) => format!("devices/{d}/modules/{m}/messages/events/"),
            None => format!("devices/{id}/messages/events/"),
        };
        c.publish(topic, QoS::AtLeastOnce, false, b"{\"t\":1}".to_vec())
            .await
            .unwrap();
        next_incoming(&mut el, |p| {
            matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
        })
        .await;
        c.disconnect().await.unwrap();
    }

    // Each refusal: CONNACK 5.
    assert_eq!(
        connack(&hub, "ss-1", Some(&ss2), "").await,
        REFUSED,
        "wrong thumbprint"
    );
    assert_eq!(
        connack(&hub, "ca-2", Some(&by_stranger), "").await,
        REFUSED,
        "unknown CA"
    );
    assert_eq!(
        connack(&hub, "ca-1/m1", Some(&by_ca), "").await,
        REFUSED,
        "wrong CN (the device's certificate for its module)"
    );
    let other_cn = device(dir, "someone-else", Some(&root));
    assert_eq!(
        connack(&hub, "ca-1", Some(&other_cn), "").await,
        REFUSED,
        "wrong CN"
    );
    assert_eq!(
        connack(&hub, "ss-1", None, "").await,
        REFUSED,
        "no certificate"
    );
    let token = hub.device_token("ss-1", &sas_key, azsim_emulator::clock::unix_now() + 600);
    assert_eq!(
        connack(&hub, "ss-1", Some(&ss1), &token).await,
        REFUSED,
        "a token for an x509 device"
    );
    // A SAS device: its token, with or without a certificate; a certificate alone is refused.
    let token = hub.device_token("sas-1", &sas_key, azsim_emulator::clock::unix_now() + 600);
    assert_eq!(
        connack(&hub, "sas-1", None, &token).await,
        Ok(ConnectReturnCode::Success)
    );
    assert_eq!(
        connack(&hub, "sas-1", Some(&ss1), &token).await,
        Ok(ConnectReturnCode::Success)
    );
    let sas_cert = device(dir, "sas-1", None);
    assert_eq!(
        connack(&hub, "sas-1", Some(&sas_cert), "").await,
        REFUSED,
        "certificate for a sas device"
    );

    // Validity at the hub's clock: before notBefore, after notAfter (the certificates hold 1 day).
    let now = clock.unix_ms();
    clock.set_unix_ms(now - 3_600_000);
    assert_eq!(
        connack(&hub, "ss-1", Some(&ss1), "").await,
        REFUSED,
        "not yet valid"
    );
    clock.set_unix_ms(now + 2 * 86_400_000);
    assert_eq!(
        connack(&hub, "ss-1", Some(&ss1), "").await,
        REFUSED,
        "expired"
    );
    assert_eq!(
        connack(&hub, "ca-1", Some(&by_ca), "").await,
        REFUSED,
        "expired"
    );
    clock.set_unix_ms(now);

    // Deleting the CA refuses its devices again; the hub served everyone throughout.
    let (s, _) = hub.rest(Method::DELETE, "/certificates/root", None).await;
    assert_eq!(s, 400, "If-Match is required");
    let del = hub
        .http()
        .delete(hub.url("/certificates/root"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 200);
    assert_eq!(connack(&hub, "ca-1", Some(&by_ca), "").await, REFUSED);
    let (_c, _el) = connect(&hub, "ss-1", &ss1).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_garbage_client_certificate_fails_its_handshake_and_the_hub_keeps_serving() {
    let hub = TestHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let good = device(tmp.path(), "dev", None);
    register(
        &hub,
        "/devices/dev",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": good.sha256}}),
    )
    .await;
    // A "certificate" of random bytes with a real key, sent by a resolver (rustls will not
    // load it as a client certificate): the hub cannot check the handshake signature against
    // it, so the handshake fails.
    let r = garbage_certificate_connack(&hub, &good).await;
    assert!(r.is_err(), "handshake should fail: {r:?}");
    // A well-formed certificate nobody registered: CONNACK 5.
    let stranger = device(tmp.path(), "dev2", None);
    let renamed = make_device("dev", "dev-other", None, tmp.path(), 1).unwrap();
    assert_eq!(connack(&hub, "dev", Some(&renamed), "").await, REFUSED);
    assert_eq!(
        connack(&hub, "dev2", Some(&stranger), "").await,
        REFUSED,
        "unknown device"
    );
    let (_c, _el) = connect(&hub, "dev", &good).await;
    hub.stop().await;
}

#[tokio::test]
async fn the_certificates_api_keeps_cas_with_etags_and_refuses_bad_input() {
    let hub = TestHub::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = make_ca("root", tmp.path(), 30).unwrap();
    let pem = std::fs::read_to_string(&root.cert_file).unwrap();
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/certificates/root",
            Some(json!({"properties": {"certificate": pem}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "root");
    assert_eq!(v["properties"]["subject"], "root");
    assert_eq!(v["properties"]["thumbprint"], root.sha1);
    assert_eq!(v["properties"]["isVerified"], true);
    let (s, list) = hub.rest(Method::GET, "/certificates", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (s, got) = hub.rest(Method::GET, "/certificates/root", None).await;
    assert_eq!((s, &got["etag"]), (200, &v["etag"]));
    // Replacing needs If-Match.
    let (s, _) = hub
        .rest(
            Method::PUT,
            "/certificates/root",
            Some(json!({"certificate": pem})),
        )
        .await;
    assert_eq!(s, 412);
    for (name, body, field) in [
        ("bad/name", json!({"certificate": pem}), ""),
        (
            "x",
            json!({"certificate": "not a certificate"}),
            "properties.certificate",
        ),
        ("x", json!({}), "properties.certificate"),
    ] {
        let (s, v) = hub
            .rest(Method::PUT, &format!("/certificates/{name}"), Some(body))
            .await;
        assert!(s == 400 || s == 404, "{name}: {s} {v}");
        if s == 400 {
            assert!(v["Message"].as_str().unwrap().contains(field), "{v}");
        }
    }
    let (s, _) = hub.rest(Method::GET, "/certificates/nope", None).await;
    assert_eq!(s, 404);
    // Registering a selfSigned device needs a thumbprint of the right shape.
    for auth in [
        json!({"type": "selfSigned"}),
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "abc"}}),
        json!({"type": "none"}),
    ] {
        let (s, v) = hub
            .rest(
                Method::PUT,
                "/devices/d",
                Some(json!({"authentication": auth})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
    }
    hub.stop().await;
}

/// The CLI end to end with the real binary: `azsim hub`, `azsim cert ca|device`, `azsim hub ca
/// add`, `azsim device create --x509`, `azsim run --cert` (with an `x509=true` connection
/// string, and with the certificate alone against the local hub); a wrong certificate exits 1
/// and the hub's log has the reason.
#[cfg(unix)]
#[test]
fn the_cli_makes_certificates_registers_x509_devices_and_runs_them() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let certs = tmp.path().join("certs");
    let azsim = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(args)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut hub = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--dashboard-port",
            "off",
            "--json",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(hub.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "the hub printed nothing");
    let mut stderr = hub.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let st = state.to_str().unwrap();
    let dir = certs.to_str().unwrap();

    let (code, out, err) = azsim(&["cert", "ca", "fleet-root", "--out", dir, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let ca: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ca["subject"], "fleet-root");
    for args in [
        vec!["cert", "device", "ss-1", "--out", dir],
        vec!["cert", "device", "ca-1", "--ca", "fleet-root", "--out", dir],
        vec![
            "cert",
            "device",
            "ca-1",
            "--ca",
            &format!("{dir}/fleet-root.pem"),
            "--out",
            &format!("{dir}/other"),
        ],
    ] {
        let (code, out, err) = azsim(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("SHA-256 thumbprint:"), "{out}");
    }
    let (code, out, err) = azsim(&[
        "hub",
        "ca",
        "add",
        &format!("{dir}/fleet-root.pem"),
        "--state",
        st,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("CA fleet-root added"), "{out}");
    let (code, out, _) = azsim(&["hub", "ca", "list", "--state", st]);
    assert_eq!(code, Some(0));
    assert!(out.contains("fleet-root"), "{out}");

    let (code, out, err) = azsim(&[
        "device",
        "create",
        "ss-1",
        "--x509",
        "self-signed",
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--state",
        st,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ss_cs = created["connectionString"].as_str().unwrap().to_owned();
    assert!(ss_cs.ends_with(";x509=true"), "{ss_cs}");
    assert_eq!(created["device"]["authentication"]["type"], "selfSigned");
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "ca-1",
        "--x509",
        "ca",
        "--cert",
        &format!("{dir}/ca-1.pem"),
        "--state",
        st,
    ]);
    assert_eq!(code, Some(0), "{err}");
    // Bad input: exit 2 naming the field.
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "x-1",
        "--x509",
        "self-signed",
        "--state",
        st,
    ]);
    assert_eq!((code, err.contains("--cert")), (Some(2), true), "{err}");
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "x-1",
        "--x509",
        "ca",
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--state",
        st,
    ]);
    assert_eq!((code, err.contains("subject CN")), (Some(2), true), "{err}");
    let (code, _, err) = azsim(&["device", "create", "x-1", "--x509", "rsa", "--state", st]);
    assert_eq!((code, err.contains("--x509")), (Some(2), true), "{err}");

    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    let ca_file = info.ca_file.to_str().unwrap().to_owned();
    let run = |cs: Option<&str>, cert: &str| {
        let mut args = vec![
            "run",
            "--json",
            "--count",
            "2",
            "--interval",
            "200ms",
            "--state",
            st,
            "--ca",
            &ca_file,
        ];
        if let Some(cs) = cs {
            args.extend(["--connection-string", cs]);
        }
        let (cert, key) = (format!("{cert}.pem"), format!("{cert}.key.pem"));
        args.extend(["--cert", &cert, "--cert-key", &key]);
        azsim(&args)
    };
    let (code, out, err) = run(Some(&ss_cs), &format!("{dir}/ss-1"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"acked\":2"), "{out}");
    // Over MQTT over WebSockets (the hub's HTTPS port): the same certificate, the same check.
    let https_port = info.https_port.to_string();
    let (code, out, err) = azsim(&[
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "200ms",
        "--state",
        st,
        "--ca",
        &ca_file,
        "--connection-string",
        &ss_cs,
        "--websockets",
        "--port",
        &https_port,
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--cert-key",
        &format!("{dir}/ss-1.key.pem"),
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"acked\":1"), "{out}");
    // The certificate alone: the local hub, as the id in its CN.
    let (code, out, err) = run(None, &format!("{dir}/ca-1"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("ca-1"), "{out}");
    // Another certificate for ss-1's id: refused, exit 1.
    let (code, out, err) = azsim(&["cert", "device", "ss-1", "--out", &format!("{dir}/other")]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(Some(&ss_cs), &format!("{dir}/other/ss-1"));
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("did not accept the device certificate"),
        "{err}"
    );
    // An x509 string without a certificate: exit 2.
    let (code, _, err) = azsim(&["run", "--connection-string", &ss_cs, "--count", "1"]);
    assert_eq!((code, err.contains("--cert")), (Some(2), true), "{err}");

    Command::new("kill")
        .args(["-INT", &hub.id().to_string()])
        .status()
        .unwrap();
    assert!(hub.wait().unwrap().success());
    let log = log.join().unwrap();
    assert!(
        log.contains("matches neither registered thumbprint"),
        "{log}"
    );
}

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
    let mut py = JsonLines::spawn(&python, "device_x509.py", &args, dir);
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

fn python() -> Option<std::path::PathBuf> {
    let p = match std::env::var_os("AZSIM_PYTHON") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    p.exists().then_some(p)
}

/// The hub with MQTT on 127.0.0.1:8883 and HTTPS (WebSockets) on 443, the only ports the SDK
/// dials (`f` adjusts its configuration); a busy port is retried for up to 60 s (another test
/// binary or a developer's hub may hold it for a moment).
pub(crate) async fn start_hub_on_8883(
    dir: &Path,
    f: impl Fn(&mut azsim_emulator::HubConfig),
) -> azsim_emulator::HubHandle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cfg = azsim_emulator::HubConfig::new(dir);
        cfg.in_memory = true;
        f(&mut cfg);
        match azsim_emulator::start(cfg, "127.0.0.1".parse().unwrap(), 8883, 443).await {
            Ok(hub) => return hub,
            Err(azsim_emulator::HubError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the hub cannot start on 127.0.0.1:8883 and 443: {e}"),
        }
    }
}

/// A Python script speaking JSON lines (see tests/python/device_x509.py).
pub(crate) struct JsonLines {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr_file: std::path::PathBuf,
    seen: Vec<serde_json::Value>,
}

impl JsonLines {
    pub(crate) fn spawn(
        python: &Path,
        script: &str,
        args: &[std::ffi::OsString],
        work: &Path,
    ) -> JsonLines {
        use tokio::io::AsyncBufReadExt as _;
        let stderr_file = work.join(format!("{script}.stderr"));
        let mut child = tokio::process::Command::new(python)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python")
                    .join(script),
            )
            .args(args)
            .current_dir(work)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        JsonLines {
            child,
            lines,
            stderr_file,
            seen: Vec::new(),
        }
    }

    fn fail(&self, why: &str) -> ! {
        let stderr = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "{why}\nevents so far: {:?}\nstderr (last lines):\n{}",
            self.seen,
            tail.join("\n")
        );
    }

    /// Reads events until one named `event`; fails on `error`/`timeout`, EOF or 60 s.
    pub(crate) async fn expect(&mut self, event: &str) -> serde_json::Value {
        loop {
            let line =
                match tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await {
                    Err(_) => self.fail(&format!("no {event:?} event within 60 s")),
                    Ok(Err(e)) => self.fail(&format!("reading stdout: {e}")),
                    Ok(Ok(None)) => self.fail(&format!("exited before the {event:?} event")),
                    Ok(Ok(Some(line))) => line,
                };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            self.seen.push(v.clone());
            let name = v["event"].as_str().unwrap_or_default().to_owned();
            if name == event {
                return v;
            }
            if name == "error" || name == "timeout" {
                self.fail(&format!("reported {v}"));
            }
        }
    }

    pub(crate) async fn send_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    pub(crate) async fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| self.fail("did not exit within 30 s"))
            .unwrap();
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
    }
}
