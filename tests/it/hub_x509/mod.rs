//! X.509 device authentication in the hub (issue 13): devices registered `selfSigned` (SHA-1 or
//! SHA-256 thumbprint) or `certificateAuthority` (a CA the hub holds, `/certificates/{name}`)
//! connect over real TLS with a client certificate whose CN is their id and an empty password;
//! every wrong certificate gets CONNACK 5 and the hub keeps serving. Certificates are made by
//! `azsim cert`'s own functions (rcgen); validity is checked at the hub's (manual) clock.
//!
//! This file: the hub over real TLS with rumqttc, and the certificates API; [`cli`]: the
//! commands end to end through the binary; [`python`]: the official Python device SDK.

mod cli;
mod python;

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

pub(super) async fn register(
    hub: &TestHub,
    path: &str,
    auth: serde_json::Value,
) -> serde_json::Value {
    let (s, v) = hub
        .rest(Method::PUT, path, Some(json!({ "authentication": auth })))
        .await;
    assert_eq!(s, 200, "PUT {path}: {v}");
    v
}

pub(super) async fn add_ca(hub: &TestHub, name: &str, ca: &Made) {
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

pub(super) fn device(dir: &Path, cn: &str, ca: Option<&Made>) -> Made {
    let stem = cn.replace('/', "-");
    make_device(cn, &stem, ca.map(|c| c.cert_file.as_path()), dir, 1).unwrap()
}

/// Presents a fixed certificate with whatever key it is given.
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

/// Connects as `dev` presenting `cert` (any bytes) signed for with the key in `key_of`.
async fn forged_certificate_connack(
    hub: &TestHub,
    cert: rustls::pki_types::CertificateDer<'static>,
    key_of: &Made,
) -> Result<ConnectReturnCode, String> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_of.key_file).unwrap();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let ck = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer));
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
async fn a_garbage_client_certificate_gets_connack_5_and_the_hub_keeps_serving() {
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
    // load it as a client certificate): it proves and authenticates nothing, CONNACK 5.
    let garbage = rustls::pki_types::CertificateDer::from((1u8..=32).collect::<Vec<u8>>());
    assert_eq!(
        forged_certificate_connack(&hub, garbage, &good).await,
        REFUSED
    );
    // The registered certificate with someone else's key: the handshake signature does not
    // verify against it, so the TLS handshake fails (a certificate alone proves nothing).
    let other_key = device(tmp.path(), "thief", None);
    let registered = rustls::pki_types::CertificateDer::from(
        std::fs::read(&good.cert_file)
            .map(|pem| {
                use rustls::pki_types::pem::PemObject as _;
                rustls::pki_types::CertificateDer::from_pem_slice(&pem)
                    .unwrap()
                    .to_vec()
            })
            .unwrap(),
    );
    let r = forged_certificate_connack(&hub, registered, &other_key).await;
    assert!(
        r.is_err(),
        "a certificate without its key must fail the handshake: {r:?}"
    );
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
