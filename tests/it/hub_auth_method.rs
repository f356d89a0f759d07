//! `iothub-connection-auth-method`: every telemetry message says how its sender's connection
//! signed in, as Azure stamps it (`telemetry::AuthMethod`): a SAS token of the identity's own key
//! `{"scope":"device"|"module","type":"sas","issuer":"iothub",...}`, a token of a shared access
//! policy with DeviceConnect `{"scope":"hub",...}`, an X.509 client certificate (registered by
//! thumbprint or CA-signed) `{"scope":"device"|"module","type":"x509Certificate",
//! "issuer":"external",...}`.
//!
//! Devices and a module send over MQTT, AMQP and HTTPS with independent clients (rumqttc,
//! fe2o3-amqp, reqwest); each message is read back from the hub's Event Hubs-compatible endpoint
//! (fe2o3-amqp) and from `/emulator/events/recent`, before and after a restart of the hub on the
//! same state (the event log keeps the method per message).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azsim::cmd::cert::{Made, make_ca};
use azsim::tls::{ClientCert, client_config_with_cert};
use azsim_emulator::HubConfig;
use azsim_emulator::clock::unix_now;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Message, Outcome, Source};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Session};
use reqwest::Method;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;

use crate::hub_amqp::{Cbs, owner_key, owner_token};
use crate::hub_x509::{add_ca, device, register};
use crate::support::{TestHub, next_incoming, wait_connack};

const WAIT: Duration = Duration::from_secs(20);

const SAS_DEVICE: &str =
    r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;
const SAS_MODULE: &str =
    r#"{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;
const POLICY: &str =
    r#"{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#;
const X509_DEVICE: &str = r#"{"scope":"device","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#;
const X509_MODULE: &str = r#"{"scope":"module","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#;

/// One Event Hubs partition, telemetry only, state on disk in `dir` (restartable).
fn config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::new(dir);
    cfg.partitions = 1;
    cfg.routes = azsim_emulator::routing::Routes {
        telemetry: true,
        ..azsim_emulator::routing::Routes::NONE
    };
    cfg
}

/// A SAS token for `resource` (`{host}/devices/{d}[/modules/{m}]`) with `key`, of policy `skn`.
fn token(resource: &str, key: &str, skn: Option<&str>) -> String {
    let mut t = String::new();
    azsim_proto::sas::sign(&mut t, resource, key, unix_now() + 600, skn).expect("sign");
    t
}

/// TLS to the hub trusting its CA, presenting `cert` if any.
fn tls(hub: &TestHub, cert: Option<&Made>) -> Arc<rustls::ClientConfig> {
    let client = cert.map(|m| ClientCert::load(&m.cert_file, &m.key_file).unwrap());
    client_config_with_cert(Some(&hub.ca_file), client.as_ref()).unwrap()
}

/// Sends `body` over MQTT as `client_id` (`d` or `d/m`) with `password` (empty for X.509) and
/// waits for its PUBACK.
async fn mqtt(hub: &TestHub, client_id: &str, cert: Option<&Made>, password: &str, body: &str) {
    let (d, m) = match client_id.split_once('/') {
        Some((d, m)) => (d, Some(m)),
        None => (client_id, None),
    };
    let username = match m {
        Some(m) => format!("{}/{d}/{m}/?api-version=2021-04-12", hub.hostname),
        None => hub.username(d),
    };
    let mut o = MqttOptions::new(client_id, hub.hostname.clone(), hub.mqtt_port);
    o.set_credentials(username, password);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
        hub, cert,
    ))));
    let (c, mut el) = AsyncClient::new(o, 16);
    wait_connack(&mut el).await.expect(client_id);
    let topic = match m {
        Some(m) => format!("devices/{d}/modules/{m}/messages/events/"),
        None => format!("devices/{d}/messages/events/"),
    };
    c.publish(topic, QoS::AtLeastOnce, false, body.as_bytes().to_vec())
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    c.disconnect().await.unwrap();
}

/// An AMQPS connection (SASL ANONYMOUS) presenting `cert` if any, and a session.
async fn amqp_session(
    hub: &TestHub,
    cert: Option<&Made>,
) -> (
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
) {
    let port = hub.info.amqp_port.expect("amqp port");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let stream = tokio_rustls::TlsConnector::from(tls(hub, cert))
        .connect(
            rustls_pki_types::ServerName::try_from(hub.hostname.clone()).unwrap(),
            tcp,
        )
        .await
        .expect("tls");
    let mut conn = tokio::time::timeout(
        WAIT,
        Connection::builder()
            .container_id("auth-method-test")
            .hostname(hub.hostname.as_str())
            .sasl_profile(SaslProfile::Anonymous)
            .open_with_stream(stream),
    )
    .await
    .expect("open in time")
    .expect("open");
    let session = Session::begin(&mut conn).await.expect("session");
    (conn, session)
}

/// Sends `body` as device `d` over AMQP: after a CBS `put-token` of `(audience, token)` if
/// given, else authenticated by the connection's client certificate.
async fn amqp(hub: &TestHub, d: &str, cert: Option<&Made>, put: Option<(&str, &str)>, body: &str) {
    let (mut conn, mut session) = amqp_session(hub, cert).await;
    if let Some((audience, token)) = put {
        let mut cbs = Cbs::attach(&mut session).await;
        let (status, desc) = cbs.put_token(audience, token).await;
        assert_eq!(status, 200, "{desc}");
    }
    let mut tx = Sender::attach(
        &mut session,
        format!("events-{body}"),
        format!("/devices/{d}/messages/events"),
    )
    .await
    .expect("telemetry link");
    let m = Message::builder()
        .data(Binary::from(body.as_bytes().to_vec()))
        .build();
    let o = tokio::time::timeout(WAIT, tx.send(m))
        .await
        .expect("settled in time")
        .expect("sent");
    assert!(matches!(o, Outcome::Accepted(_)), "{body}: {o:?}");
    let _ = tx.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
}

/// POSTs `body` as device `d`'s telemetry over HTTPS with `auth` (an `Authorization` header)
/// or `cert`.
async fn https(hub: &TestHub, d: &str, cert: Option<&Made>, auth: Option<&str>, body: &str) {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls(hub, cert)).clone())
        .build()
        .unwrap();
    let mut req = client
        .post(format!(
            "https://{}:{}/devices/{d}/messages/events?api-version=2020-09-30",
            hub.hostname, hub.https_port
        ))
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 204, "{body}");
}

/// Each stored message's body and `iothub-connection-auth-method`, read from partition 0 of the
/// Event Hubs-compatible endpoint from the start, until `n` are in.
async fn from_event_hubs(hub: &TestHub, n: usize) -> BTreeMap<String, String> {
    let (mut conn, mut session) = amqp_session(hub, None).await;
    let mut cbs = Cbs::attach(&mut session).await;
    let aud = format!(
        "sb://{}:{}/{}",
        hub.hostname,
        hub.info.amqp_port.unwrap(),
        hub.hostname
    );
    let (status, desc) = cbs
        .put_token(&aud, &owner_token(hub, &aud, unix_now() + 600))
        .await;
    assert_eq!(status, 200, "{desc}");
    let mut r = Receiver::builder()
        .name("reader")
        .source(
            Source::builder()
                .address(format!(
                    "{}/ConsumerGroups/$Default/Partitions/0",
                    hub.hostname
                ))
                .build(),
        )
        .target("me")
        .attach(&mut session)
        .await
        .expect("attach");
    let mut out = BTreeMap::new();
    while out.len() < n {
        let d = tokio::time::timeout(WAIT, r.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| panic!("{n} events in time; have {out:?}"))
            .expect("event");
        r.accept(&d).await.expect("accept");
        let m = d.message();
        let body = match &m.body {
            Body::Data(b) => String::from_utf8(b.iter().flat_map(|d| d.0.to_vec()).collect())
                .expect("utf-8 body"),
            other => panic!("body {other:?}"),
        };
        let ann = &m.message_annotations.as_ref().expect("annotations").0;
        let method = ann
            .iter()
            .find(|(k, _)| format!("{k:?}").contains("iothub-connection-auth-method"))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => panic!("auth method {other:?}"),
            })
            .unwrap_or_else(|| panic!("{body}: no auth method"));
        out.insert(body, method);
    }
    let _ = r.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    out
}

/// The same from `/emulator/events/recent`.
async fn from_recent(hub: &TestHub) -> BTreeMap<String, String> {
    let (s, v) = hub
        .rest(Method::GET, "/emulator/events/recent?limit=100", None)
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            (
                e["body"].as_str().expect("text body").to_string(),
                e["annotations"]["iothub-connection-auth-method"]
                    .as_str()
                    .expect("auth method")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_says_how_its_connection_signed_in_over_every_transport_and_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let hub = TestHub::start_with(config(&state)).await;

    // A SAS device and its SAS module; a self-signed (thumbprint) device; a CA-signed device
    // and module.
    hub.create_device("sas-dev").await;
    let key = hub.device_key("sas-dev").await;
    let (s, m) = hub
        .rest(
            Method::PUT,
            "/devices/sas-dev/modules/mod1",
            Some(json!({"deviceId": "sas-dev", "moduleId": "mod1"})),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    let module_key = m["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let root = make_ca("root", &certs, 30).unwrap();
    let ss = device(&certs, "ss-dev", None);
    let by_ca = device(&certs, "ca-dev", Some(&root));
    let by_ca_module = device(&certs, "ca-dev/m1", Some(&root));
    register(
        &hub,
        "/devices/ss-dev",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": ss.sha1}}),
    )
    .await;
    register(
        &hub,
        "/devices/ca-dev",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    register(
        &hub,
        "/devices/ca-dev/modules/m1",
        json!({"type": "certificateAuthority"}),
    )
    .await;
    add_ca(&hub, "root", &root).await;

    let host = hub.hostname.clone();
    let own = token(&format!("{host}/devices/sas-dev"), &key, None);
    let policy = token(
        &format!("{host}/devices/sas-dev"),
        &owner_key(&hub),
        Some("iothubowner"),
    );
    let module = token(
        &format!("{host}/devices/sas-dev/modules/mod1"),
        &module_key,
        None,
    );

    mqtt(&hub, "sas-dev", None, &own, "mqtt-sas").await;
    mqtt(&hub, "sas-dev", None, &policy, "mqtt-policy").await;
    mqtt(&hub, "sas-dev/mod1", None, &module, "mqtt-module").await;
    mqtt(&hub, "ss-dev", Some(&ss), "", "mqtt-x509-thumbprint").await;
    mqtt(&hub, "ca-dev", Some(&by_ca), "", "mqtt-x509-ca").await;
    mqtt(
        &hub,
        "ca-dev/m1",
        Some(&by_ca_module),
        "",
        "mqtt-x509-module",
    )
    .await;
    let aud = format!("{host}/devices/sas-dev");
    amqp(&hub, "sas-dev", None, Some((&aud, &own)), "amqp-sas").await;
    let hub_wide = owner_token(&hub, &host, unix_now() + 600);
    amqp(
        &hub,
        "sas-dev",
        None,
        Some((&host, &hub_wide)),
        "amqp-policy",
    )
    .await;
    amqp(&hub, "ss-dev", Some(&ss), None, "amqp-x509-thumbprint").await;
    amqp(&hub, "ca-dev", Some(&by_ca), None, "amqp-x509-ca").await;
    https(&hub, "sas-dev", None, Some(&own), "https-sas").await;
    https(
        &hub,
        "sas-dev",
        None,
        Some(&hub.service_token()),
        "https-policy",
    )
    .await;
    https(&hub, "ss-dev", Some(&ss), None, "https-x509-thumbprint").await;
    https(&hub, "ca-dev", Some(&by_ca), None, "https-x509-ca").await;

    let want: BTreeMap<String, String> = [
        ("mqtt-sas", SAS_DEVICE),
        ("mqtt-policy", POLICY),
        ("mqtt-module", SAS_MODULE),
        ("mqtt-x509-thumbprint", X509_DEVICE),
        ("mqtt-x509-ca", X509_DEVICE),
        ("mqtt-x509-module", X509_MODULE),
        ("amqp-sas", SAS_DEVICE),
        ("amqp-policy", POLICY),
        ("amqp-x509-thumbprint", X509_DEVICE),
        ("amqp-x509-ca", X509_DEVICE),
        ("https-sas", SAS_DEVICE),
        ("https-policy", POLICY),
        ("https-x509-thumbprint", X509_DEVICE),
        ("https-x509-ca", X509_DEVICE),
    ]
    .into_iter()
    .map(|(b, m)| (b.to_string(), m.to_string()))
    .collect();
    assert_eq!(from_event_hubs(&hub, want.len()).await, want, "Event Hubs");
    assert_eq!(from_recent(&hub).await, want, "/emulator/events/recent");

    // The event log keeps each message's method across a restart.
    hub.stop().await;
    let hub = TestHub::start_with(config(&state)).await;
    assert_eq!(
        from_event_hubs(&hub, want.len()).await,
        want,
        "Event Hubs after a restart"
    );
    assert_eq!(
        from_recent(&hub).await,
        want,
        "/emulator/events/recent after a restart"
    );
    hub.stop().await;
}
