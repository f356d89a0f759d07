//! X.509 attestation in the hub's DPS: an individual enrollment holding the device's
//! certificate, a group holding the CA that signs its devices' certificates; the device
//! registers over MQTT with its client certificate and no password, is assigned with its
//! certificate's thumbprint, and connects to the hub with the same certificate. Wrong
//! certificates get DPS's 401.

use std::time::Duration;

use azsim::cmd::cert::{Made, make_ca, make_device};
use azsim::tls::{ClientCert, client_config_with_cert};
use reqwest::Method;
use rumqttc::{
    AsyncClient, ConnectReturnCode, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Value, json};

use super::{assert_dps_error, service};
use crate::support::{TestHub, next_incoming, wait_connack};

fn options(hub: &TestHub, client_id: &str, username: &str, cert: &Made) -> MqttOptions {
    let client = ClientCert::load(&cert.cert_file, &cert.key_file).unwrap();
    let tls = client_config_with_cert(Some(&hub.ca_file), Some(&client)).unwrap();
    let mut o = MqttOptions::new(client_id, hub.hostname.clone(), hub.mqtt_port);
    o.set_credentials(username, "");
    o.set_keep_alive(Duration::from_secs(60));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

/// Registers `registration_id` presenting `cert`; the status and body of the final answer.
async fn register(hub: &TestHub, registration_id: &str, cert: &Made) -> (u16, Value) {
    let scope = &hub.info.id_scope;
    let user = format!("{scope}/registrations/{registration_id}/api-version=2019-03-31");
    let (c, mut el) = AsyncClient::new(options(hub, registration_id, &user, cert), 16);
    assert_eq!(
        wait_connack(&mut el).await.unwrap(),
        ConnectReturnCode::Success
    );
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut rid = 0;
    let mut topic = "$dps/registrations/PUT/iotdps-register/?$rid=1".to_string();
    loop {
        rid += 1;
        c.publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            json!({"registrationId": registration_id}).to_string(),
        )
        .await
        .unwrap();
        let (status, body) = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => {
                let r = azsim_proto::topic::parse_dps_response(&p.topic).ok()?;
                r.rid.eq_decoded(&rid.to_string()).then(|| {
                    (
                        r.status,
                        serde_json::from_slice::<Value>(&p.payload).unwrap(),
                    )
                })
            }
            _ => None,
        })
        .await;
        if status != 202 {
            let _ = c.disconnect().await;
            return (status, body);
        }
        let op = body["operationId"].as_str().unwrap();
        topic = format!(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={}&operationId={op}",
            rid + 1
        );
    }
}

#[tokio::test]
async fn x509_enrollments_provision_devices_that_connect_with_their_certificate() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dev = make_device("x509-dev", "x509-dev", None, dir.path(), 30).unwrap();
    let pem = std::fs::read_to_string(&dev.cert_file).unwrap();
    let (s, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/x509-dev",
        Some(json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}},
            "initialTwin": {"tags": {"kind": "x509"}}})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let info = &e["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert!(
        info["sha1Thumbprint"]
            .as_str()
            .is_some_and(|t| t.len() == 40),
        "{e}"
    );
    assert!(
        info["subjectName"].as_str().unwrap().contains("x509-dev"),
        "{e}"
    );

    let (s, v) = register(&hub, "x509-dev", &dev).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["registrationState"]["deviceId"], "x509-dev");
    let (s, d) = hub.rest(Method::GET, "/devices/x509-dev", None).await;
    assert_eq!(s, 200);
    assert_eq!(d["authentication"]["type"], "selfSigned", "{d}");
    // The device connects to the hub with the same certificate and no password.
    let (_c, mut el) = AsyncClient::new(
        options(&hub, "x509-dev", &hub.username("x509-dev"), &dev),
        16,
    );
    assert_eq!(
        wait_connack(&mut el).await.unwrap(),
        ConnectReturnCode::Success
    );

    // A group holding the CA: its devices' certificates are signed by it.
    let ca = make_ca("dps-ca", dir.path(), 30).unwrap();
    let ca_pem = std::fs::read_to_string(&ca.cert_file).unwrap();
    let (s, g) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/x509-grp",
        Some(json!({"attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca_pem}}}}})),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let member = make_device(
        "x509-member-1",
        "x509-member-1",
        Some(&ca.cert_file),
        dir.path(),
        30,
    )
    .unwrap();
    let (s, v) = register(&hub, "x509-member-1", &member).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["registrationState"]["deviceId"], "x509-member-1");
    let (_c2, mut el2) = AsyncClient::new(
        options(
            &hub,
            "x509-member-1",
            &hub.username("x509-member-1"),
            &member,
        ),
        16,
    );
    assert_eq!(
        wait_connack(&mut el2).await.unwrap(),
        ConnectReturnCode::Success
    );

    // Refusals: another self-signed certificate for the enrolled id, a certificate whose CN is
    // not the registration id, a device no enrollment or CA knows.
    let other_dir = tempfile::tempdir().unwrap();
    let impostor = make_device("x509-dev", "x509-dev", None, other_dir.path(), 30).unwrap();
    let (s, v) = register(&hub, "x509-dev", &impostor).await;
    assert_eq!(s, 401, "{v}");
    assert_dps_error(&v, 401002);
    assert!(v["message"].as_str().unwrap().contains("thumbprint"), "{v}");
    let (s, v) = register(&hub, "x509-member-2", &member).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("CN"), "{v}");
    let stranger = make_device("x509-stranger", "x509-stranger", None, dir.path(), 30).unwrap();
    let (s, v) = register(&hub, "x509-stranger", &stranger).await;
    assert_eq!(s, 401, "{v}");
    // A certificate for a symmetric-key enrollment is refused too.
    service(
        &hub,
        Method::PUT,
        "/enrollments/x509-stranger",
        Some(json!({})),
    )
    .await;
    let (s, v) = register(&hub, "x509-stranger", &stranger).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("symmetric"), "{v}");
    // Bad input: a group's signing certificate must be a CA, a certificate must parse.
    let (s, v) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/bad",
        Some(json!({"attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": "not a cert"}}}}})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    hub.stop().await;
}

#[tokio::test]
async fn azsim_dps_enrolls_a_certificate_and_azsim_run_dps_provisions_with_it() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dev = make_device("x509-cli", "x509-cli", None, dir.path(), 30).unwrap();
    let azsim = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
        c.args(args)
            .arg("--state")
            .arg(&hub.dir)
            .env_remove("PROVISIONING_CONNECTION_STRING")
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .kill_on_drop(true);
        c
    };
    let cert = dev.cert_file.display().to_string();
    let key = dev.key_file.display().to_string();
    let o = azsim(&["dps", "enrollment", "create", "x509-cli", "--cert", &cert])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("(X.509, certificate "), "{out}");
    let o = azsim(&["dps", "enrollment", "show", "x509-cli"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("x509"), "{out}");

    let o = azsim(&[
        "run",
        "--dps",
        "--registration-id",
        "x509-cli",
        "--cert",
        &cert,
        "--cert-key",
        &key,
        "--count",
        "1",
        "--interval",
        "200ms",
        "--json",
    ])
    .output()
    .await
    .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{lines:#?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = lines.iter().find(|e| e["event"] == "provisioning").unwrap();
    assert_eq!(p["attestation"], "x509");
    let p = lines.iter().find(|e| e["event"] == "provisioned").unwrap();
    assert_eq!(p["device_id"], "x509-cli");
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["event"] == "telemetry_acked")
            .count(),
        1,
        "{lines:#?}"
    );

    // A certificate the enrollment does not hold: exit 1 with DPS's 401.
    let other = tempfile::tempdir().unwrap();
    let wrong = make_device("x509-cli", "x509-cli", None, other.path(), 30).unwrap();
    let o = azsim(&[
        "run",
        "--dps",
        "--registration-id",
        "x509-cli",
        "--cert",
        &wrong.cert_file.display().to_string(),
        "--cert-key",
        &wrong.key_file.display().to_string(),
        "--count",
        "1",
    ])
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("401 401002") && err.contains("thumbprint"),
        "{err}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn the_dps_device_https_api_takes_the_client_certificate_when_no_token_is_given() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dev = make_device("x509-http", "x509-http", None, dir.path(), 30).unwrap();
    let pem = std::fs::read_to_string(&dev.cert_file).unwrap();
    let (s, _) = service(
        &hub,
        Method::PUT,
        "/enrollments/x509-http",
        Some(json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}}})),
    )
    .await;
    assert_eq!(s, 200);
    let client = |cert: Option<&Made>| {
        let c = cert.map(|m| ClientCert::load(&m.cert_file, &m.key_file).unwrap());
        let tls = client_config_with_cert(Some(&hub.ca_file), c.as_ref()).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap()
    };
    let base = format!(
        "https://{}:{}/{}/registrations/x509-http",
        hub.hostname, hub.https_port, hub.info.id_scope
    );
    let http = client(Some(&dev));
    let r = http
        .put(format!("{base}/register?api-version=2021-06-01"))
        .json(&json!({"registrationId": "x509-http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    let op = v["operationId"].as_str().unwrap();
    let r = http
        .get(format!("{base}/operations/{op}?api-version=2021-06-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["registrationState"]["deviceId"], "x509-http", "{v}");
    // No certificate and no token: 401.
    let r = client(None)
        .put(format!("{base}/register?api-version=2021-06-01"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    hub.stop().await;
}
