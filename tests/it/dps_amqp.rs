//! DPS over AMQP and AMQP over WebSockets (`dps/amqp.rs`) with the official Node SDK
//! (`azure-iot-provisioning-device-amqp` 1.9.1, Amqp and AmqpWs; `tests/node/dps_amqp.js`):
//! symmetric-key individual and group enrollments and an X.509 individual enrollment register,
//! each assigned device connects to the hub over AMQP and its message is stored; a wrong key
//! gets DPS's 401 and an unknown registration its 404 as the SDK reports them (the request
//! rejected with `amqp:unauthorized-access` / `amqp:not-found` and DPS's error body), and the
//! hub serves the next registration after them. [`independent_client`] sends what the C# SDK
//! sends and what the Node SDK cannot (a 429 on polls, an unknown operation, a link on another
//! registration, a password that is no token).
//!
//! The SDKs dial 5671 (AMQPS), 443 (AMQP over WebSockets) and 8883, so the hub listens there,
//! holding `support::PORT_8883`.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use crate::dps::{derive, service};
use crate::support::TestHub;

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
    let Some(fixed) = crate::support::node::hub_on_azure_ports(&[
        "azure-iot-provisioning-device",
        "azure-iot-provisioning-device-amqp",
        "azure-iot-security-symmetric-key",
        "azure-iot-device",
        "azure-iot-device-amqp",
    ])
    .await
    else {
        return;
    };
    let (node, hub, view, work) = (fixed.node, fixed.hub, fixed.view, fixed.work);

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

pub(crate) mod independent_client {
    //! The same endpoint through an independent client (fe2o3-amqp's connection side), with the
    //! shapes the C# SDK sends (`ProvisioningTransportHandlerAmqp`): an empty data section as
    //! the register body, the status request's body an `amqp-value` string, `Retry-After` read
    //! from the answer; and what the Node test cannot reach: a 429 on polls (`--tier`), an
    //! unknown operation, a link on another registration than the SASL login's, a password
    //! that is no token. Each refusal ends only its request or connection.

    use std::time::Duration;

    use fe2o3_amqp::link::delivery::Sendable;
    use fe2o3_amqp::link::{Receiver, Sender};
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::session::SessionHandle;
    use fe2o3_amqp::types::definitions::ErrorCondition;
    use fe2o3_amqp::types::messaging::{
        AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
    };
    use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value as AmqpValueT};
    use fe2o3_amqp::{Connection, Session};
    use reqwest::Method;
    use serde_json::Value;

    use crate::dps::{registration_token, service};
    use crate::support::TestHub;

    const WAIT: Duration = Duration::from_secs(20);

    type Conn = fe2o3_amqp::connection::ConnectionHandle<()>;

    /// A SASL PLAIN connection as a symmetric-key device opens it.
    async fn open(hub: &TestHub, user: &str, password: &str) -> Result<Conn, String> {
        // No Nagle delay on the client's small frames (the hub sets TCP_NODELAY on its side), so
        // the printed round trips are the hub's.
        let port = hub.info.amqp_port.expect("amqp port");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp");
        tcp.set_nodelay(true).expect("nodelay");
        let stream = tokio_rustls::TlsConnector::from(hub.tls())
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .expect("tls");
        tokio::time::timeout(
            WAIT,
            Connection::builder()
                .container_id("dps-test")
                .hostname("localhost")
                .sasl_profile(SaslProfile::Plain {
                    username: user.to_string(),
                    password: password.to_string(),
                })
                .open_with_stream(stream),
        )
        .await
        .expect("open in time")
        .map_err(|e| e.to_string())
    }

    /// The device's two links on `address`: its receiver first, as the SDKs attach them.
    async fn links(session: &mut SessionHandle<()>, address: &str) -> (Sender, Receiver) {
        let rx = Receiver::attach(session, format!("rx-{address}"), address)
            .await
            .expect("receiver");
        let tx = Sender::attach(session, format!("tx-{address}"), address)
            .await
            .expect("sender");
        (tx, rx)
    }

    fn request(
        correlation: &str,
        props: &[(&str, &str)],
        body: Body<AmqpValueT>,
    ) -> Sendable<Body<AmqpValueT>> {
        let mut app = ApplicationProperties::builder();
        for (k, v) in props {
            app = app.insert(*k, *v);
        }
        let mut m = Message::builder()
            .properties(Properties {
                correlation_id: Some(MessageId::String(correlation.into())),
                ..Properties::default()
            })
            .application_properties(app.build())
            .body(body)
            .build();
        if let Some(a) = m.application_properties.as_mut() {
            a.0.insert("iotdps-forceRegistration".into(), SimpleValue::Bool(false));
        }
        Sendable::builder().message(m).settled(false).build()
    }

    /// C#'s register without a payload: an empty data section.
    pub(crate) fn register(correlation: &str) -> Sendable<Body<AmqpValueT>> {
        request(
            correlation,
            &[("iotdps-operation-type", "iotdps-register")],
            Body::Data(vec![Data(Binary::from(Vec::new()))].into()),
        )
    }

    /// C#'s status request: the operation as an `amqp-value` string body.
    pub(crate) fn status(correlation: &str, operation_id: &str) -> Sendable<Body<AmqpValueT>> {
        request(
            correlation,
            &[
                ("iotdps-operation-type", "iotdps-get-operationstatus"),
                ("iotdps-operation-id", operation_id),
            ],
            Body::Value(AmqpValue(AmqpValueT::String(
                "iotdps-get-operationstatus".into(),
            ))),
        )
    }

    pub(crate) async fn send(tx: &mut Sender, s: Sendable<Body<AmqpValueT>>) -> Outcome {
        tokio::time::timeout(WAIT, tx.send(s))
            .await
            .expect("settled in time")
            .expect("sent")
    }

    /// The next answer: its correlation id, `Retry-After`, JSON body.
    pub(crate) async fn answer(rx: &mut Receiver) -> (Option<MessageId>, Option<String>, Value) {
        let d = tokio::time::timeout(WAIT, rx.recv::<Body<AmqpValueT>>())
            .await
            .expect("an answer in time")
            .expect("an answer");
        rx.accept(&d).await.expect("accept");
        let m = d.into_message();
        let retry = m
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get("Retry-After"))
            .map(|v| match v {
                SimpleValue::String(s) => s.clone(),
                other => format!("{other:?}"),
            });
        let Body::Data(batch) = m.body else {
            panic!("the answer is a data section: {:?}", m.body);
        };
        let bytes: Vec<u8> = batch.iter().flat_map(|d| d.0.to_vec()).collect();
        let json = serde_json::from_slice(&bytes).expect("JSON");
        (m.properties.and_then(|p| p.correlation_id), retry, json)
    }

    /// A rejection's condition, DPS's error body (its description) and `retry-after` info.
    fn rejected(o: Outcome) -> (ErrorCondition, Value, Option<String>) {
        let Outcome::Rejected(r) = o else {
            panic!("expected a rejection, got {o:?}");
        };
        let e = r.error.expect("a rejection carries an error");
        let body = serde_json::from_str(e.description.as_deref().unwrap_or_default())
            .expect("DPS's error body as the description");
        let retry = e.info.as_ref().and_then(|i| {
            i.iter()
                .find(|(k, _)| k.as_str() == "retry-after")
                .map(|(_, v)| format!("{v:?}"))
        });
        (e.condition, body, retry)
    }

    fn custom(s: &str) -> ErrorCondition {
        ErrorCondition::Custom(s.into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn csharp_shaped_requests_are_answered_and_bad_ones_refused_alone() {
        let clock = azsim_emulator::clock::ManualClock::at_system_now();
        let c = clock.clock();
        let hub = TestHub::start_configured(move |cfg| {
            cfg.clock = c;
            cfg.tier = Some(azsim_emulator::fault::Tier::S1);
        })
        .await;
        let (s, e) = service(
            &hub,
            Method::PUT,
            "/enrollments/cs-dev",
            Some(serde_json::json!({"attestation": {"type": "symmetricKey"}})),
        )
        .await;
        assert_eq!(s, 200, "{e}");
        let key = e["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_string();
        let scope = hub.info.id_scope.clone();
        let address = format!("{scope}/registrations/cs-dev");
        let se = azsim_emulator::clock::unix_now() + 3600;
        let token = registration_token(&scope, "cs-dev", &key, se);

        // A DPS user name with a password that is no token: SASL refuses the connection.
        let refused = open(&hub, &address, "not a token").await;
        assert!(
            refused.is_err(),
            "SASL refuses a DPS password that is no token"
        );

        let mut conn = open(&hub, &address, &token).await.expect("SASL PLAIN");
        let mut session = Session::begin(&mut conn).await.expect("session");
        let (mut tx, mut rx) = links(&mut session, &address).await;

        let started = std::time::Instant::now();
        let o = send(&mut tx, register("reg-1")).await;
        assert!(matches!(o, Outcome::Accepted(_)), "{o:?}");
        let (corr, retry, body) = answer(&mut rx).await;
        eprintln!(
            "register over AMQP: answered in {} us",
            started.elapsed().as_micros()
        );
        assert_eq!(corr, Some(MessageId::String("reg-1".into())));
        assert_eq!(retry.as_deref(), Some("1"), "Retry-After while assigning");
        assert_eq!(body["status"], "assigning", "{body}");
        let op = body["operationId"]
            .as_str()
            .expect("operationId")
            .to_string();

        // An unknown operation: rejected 400, the link goes on.
        let o = send(
            &mut tx,
            request(
                "bogus",
                &[("iotdps-operation-type", "iotdps-bogus")],
                Body::Empty,
            ),
        )
        .await;
        let (cond, err, _) = rejected(o);
        assert_eq!(cond, custom("com.microsoft:argument-error"));
        assert_eq!(
            err["errorCode"].as_u64().map(|c| c / 1000),
            Some(400),
            "{err}"
        );

        // Five polls in the 10 s window (S1), the sixth 429 with retry-after.
        let started = std::time::Instant::now();
        for i in 0..5 {
            let o = send(&mut tx, status(&format!("poll-{i}"), &op)).await;
            assert!(matches!(o, Outcome::Accepted(_)), "poll {i}: {o:?}");
            let (corr, retry, body) = answer(&mut rx).await;
            assert_eq!(corr, Some(MessageId::String(format!("poll-{i}"))));
            assert_eq!(retry, None, "no Retry-After once assigned");
            assert_eq!(body["status"], "assigned", "{body}");
            assert_eq!(body["registrationState"]["deviceId"], "cs-dev", "{body}");
            assert_eq!(
                body["registrationState"]["assignedHub"],
                hub.info.provisioning_host.as_str(),
                "the hub's host with its MQTT port"
            );
        }
        eprintln!(
            "operation status over AMQP: {} us a poll (5 in a row)",
            started.elapsed().as_micros() / 5
        );
        let (cond, err, retry) = rejected(send(&mut tx, status("poll-5", &op)).await);
        assert_eq!(cond, custom("com.microsoft:device-container-throttled"));
        assert_eq!(
            err["errorCode"].as_u64().map(|c| c / 1000),
            Some(429),
            "{err}"
        );
        assert!(retry.is_some(), "a 429 says when to come back");
        clock.advance(Duration::from_secs(10));
        let o = send(&mut tx, status("poll-6", &op)).await;
        assert!(
            matches!(o, Outcome::Accepted(_)),
            "the next window serves: {o:?}"
        );
        let (_, _, body) = answer(&mut rx).await;
        assert_eq!(body["status"], "assigned", "{body}");

        // A link on another registration than the SASL login's: its requests are 401.
        let other = format!("{scope}/registrations/someone-else");
        let (mut tx2, _rx2) = links(&mut session, &other).await;
        let (cond, err, _) = rejected(send(&mut tx2, register("other")).await);
        assert_eq!(
            cond,
            ErrorCondition::AmqpError(
                fe2o3_amqp::types::definitions::AmqpError::UnauthorizedAccess
            )
        );
        assert_eq!(err["errorCode"], 401002, "{err}");
        let _ = conn.close().await;

        // The device is in the registry with the enrollment's key.
        let (s, d) = hub.rest(Method::GET, "/devices/cs-dev", None).await;
        assert_eq!(s, 200, "{d}");
        assert_eq!(
            d["authentication"]["symmetricKey"]["primaryKey"],
            key.as_str()
        );
    }
}
