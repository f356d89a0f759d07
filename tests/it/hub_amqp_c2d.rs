//! Cloud-to-device messages and their feedback over the hub's AMQP endpoint, through an
//! independent client (fe2o3-amqp): a message sent to `/messages/devicebound` reaches an MQTT
//! device with its properties, its feedback comes back on `/messages/serviceBound/feedback`
//! (released: sent again; accepted: gone), and the hub rejects what IoT Hub rejects with
//! IoT Hub's conditions while the link keeps working. The official Python service SDK
//! (`send_c2d_message`, uamqp) is in `service_c2d_python`.

use std::time::Duration;

use azsim_emulator::clock::unix_now;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};
use fe2o3_amqp::{Session, session::SessionHandle};
use reqwest::Method;
use rumqttc::{Packet, QoS};
use serde_json::Value as Json;

use crate::hub_amqp::{authorized, open};
use crate::support::{TestHub, next_incoming};

const WAIT: Duration = Duration::from_secs(20);

/// A C2D message for `to` with a body and application properties.
fn c2d(
    to: &str,
    id: &str,
    body: &[u8],
    props: &[(&str, &str)],
) -> Message<fe2o3_amqp::types::messaging::Data> {
    let mut app = ApplicationProperties::builder();
    for (k, v) in props {
        app = app.insert(*k, *v);
    }
    Message::builder()
        .properties(Properties {
            to: Some(to.to_owned()),
            message_id: Some(MessageId::String(id.to_owned())),
            ..Properties::default()
        })
        .application_properties(app.build())
        .data(Binary::from(body.to_vec()))
        .build()
}

async fn send(tx: &mut Sender, m: Message<fe2o3_amqp::types::messaging::Data>) -> Outcome {
    tokio::time::timeout(WAIT, tx.send(m))
        .await
        .expect("settled in time")
        .expect("sent")
}

/// The condition and description of a rejection.
fn rejected(o: Outcome) -> (ErrorCondition, String) {
    match o {
        Outcome::Rejected(r) => {
            let e = r.error.expect("a rejection carries an error");
            (e.condition, e.description.unwrap_or_default())
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_sent_over_amqp_reaches_an_mqtt_device_with_its_properties_and_its_feedback_comes_back()
{
    let hub = TestHub::start().await;
    hub.create_device("amqp-c2d").await;
    let key = hub.device_key("amqp-c2d").await;
    let (c, mut el) = hub.connect("amqp-c2d", &key, true).await;
    c.subscribe("devices/amqp-c2d/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

    let (mut conn, mut session, _cbs) = authorized(&hub).await;
    let mut tx = Sender::attach(&mut session, "c2d-sender", "/messages/devicebound")
        .await
        .expect("c2d sender attached");
    let mut m = c2d(
        "/devices/amqp-c2d/messages/devicebound",
        "amqp-1",
        b"hello over amqp",
        &[("color", "blue green"), ("iothub-ack", "full")],
    );
    let p = m.properties.as_mut().unwrap();
    p.correlation_id = Some(MessageId::String("corr-1".into()));
    p.content_type = Some(Symbol::from("text/plain"));
    p.content_encoding = Some(Symbol::from("utf-8"));
    p.absolute_expiry_time = Some(Timestamp::from_milliseconds(
        i64::try_from(unix_now() + 600).unwrap() * 1000,
    ));
    assert!(matches!(send(&mut tx, m).await, Outcome::Accepted(_)));

    let (topic, body) = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(&body[..], b"hello over amqp");
    for part in [
        "%24.mid=amqp-1",
        "%24.cid=corr-1",
        "%24.ct=text%2Fplain",
        "%24.ce=utf-8",
        "iothub-ack=full",
        "color=blue%20green",
    ] {
        assert!(topic.contains(part), "{part} in {topic}");
    }

    // rumqttc PUBACKs (completes) the message while polled; its Success feedback is queued.
    let mut rx = Receiver::attach(&mut session, "feedback", "/messages/serviceBound/feedback")
        .await
        .expect("feedback receiver attached");
    let poll_device = async {
        loop {
            let _ = el.poll().await;
        }
    };
    let first = tokio::select! {
        d = tokio::time::timeout(WAIT, rx.recv::<Body<Value>>()) => d.expect("a batch in time").expect("a batch"),
        () = poll_device => unreachable!(),
    };
    let (lock1, records) = batch(&first);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["originalMessageId"], "amqp-1", "{r}");
    assert_eq!(r["deviceId"], "amqp-c2d", "{r}");
    assert_eq!(r["statusCode"], "Success", "{r}");
    // Released: the same records come again under a new lock.
    rx.release(&first).await.expect("release");
    let second = tokio::time::timeout(WAIT, rx.recv::<Body<Value>>())
        .await
        .expect("again in time")
        .expect("again");
    let (lock2, again) = batch(&second);
    assert_ne!(lock1, lock2);
    assert_eq!(again, records);
    // Accepted: completed, so nothing is pending any more (REST sees an empty queue).
    rx.accept(&second).await.expect("accept");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = hub
            .http()
            .get(hub.url("/messages/serviceBound/feedback"))
            .header("Authorization", hub.service_token())
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 204 {
            break;
        }
        // The completion is stored after the disposition arrives.
        assert!(
            tokio::time::Instant::now() < deadline,
            "feedback not completed: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.expect("close");
    hub.stop().await;
}

/// A feedback batch's lock token (its message id) and records; checks its content type.
fn batch(d: &fe2o3_amqp::link::delivery::Delivery<Body<Value>>) -> (String, Vec<Json>) {
    let m = d.message();
    let p = m.properties.as_ref().expect("properties");
    assert_eq!(
        p.content_type.as_ref().map(|s| s.as_str()),
        Some("application/vnd.microsoft.iothub.feedback.json")
    );
    let lock = match &p.message_id {
        Some(MessageId::String(s)) => s.clone(),
        other => panic!("message id {other:?}"),
    };
    let bytes: Vec<u8> = match &m.body {
        Body::Data(b) => b.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("body {other:?}"),
    };
    let records: Json = serde_json::from_slice(&bytes).expect("json");
    (lock, records.as_array().expect("array").clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_rejects_what_iot_hub_rejects_and_the_link_keeps_working() {
    let hub = TestHub::start_configured(|c| c.limits.c2d_queue_cap = 2).await;
    hub.create_device("full").await;
    hub.create_device("ok").await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/ok/modules/m1",
            Some(serde_json::json!({"deviceId": "ok", "moduleId": "m1"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (mut conn, mut session, _cbs) = authorized(&hub).await;
    let mut tx = Sender::attach(&mut session, "c2d-sender", "/messages/devicebound")
        .await
        .expect("attached");
    let to = |d: &str| format!("/devices/{d}/messages/devicebound");

    let (cond, desc) = rejected(send(&mut tx, c2d(&to("nobody"), "a", b"x", &[])).await);
    assert_eq!(
        cond,
        ErrorCondition::AmqpError(AmqpError::NotFound),
        "{desc}"
    );
    assert!(desc.contains("nobody"), "{desc}");

    for id in ["q1", "q2"] {
        assert!(matches!(
            send(&mut tx, c2d(&to("full"), id, b"x", &[])).await,
            Outcome::Accepted(_)
        ));
    }
    let (cond, desc) = rejected(send(&mut tx, c2d(&to("full"), "q3", b"x", &[])).await);
    assert_eq!(
        cond,
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
    );
    assert_eq!(desc, "Device Queue depth cannot exceed 2 messages");

    let (cond, desc) = rejected(
        send(
            &mut tx,
            c2d(
                "/devices/ok/modules/m1/messages/devicebound",
                "m",
                b"x",
                &[],
            ),
        )
        .await,
    );
    assert_eq!(
        cond,
        ErrorCondition::AmqpError(AmqpError::NotImplemented),
        "{desc}"
    );
    let (cond, _) = rejected(
        send(
            &mut tx,
            c2d(
                "/devices/ok/modules/nope/messages/devicebound",
                "m",
                b"x",
                &[],
            ),
        )
        .await,
    );
    assert_eq!(cond, ErrorCondition::AmqpError(AmqpError::NotFound));

    let (cond, desc) = rejected(send(&mut tx, c2d("/twins/ok", "t", b"x", &[])).await);
    assert_eq!(
        cond,
        ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")),
        "{desc}"
    );
    let (cond, _) = rejected(
        send(
            &mut tx,
            c2d(&to("ok"), "k", b"x", &[("iothub-ack", "sometimes")]),
        )
        .await,
    );
    assert_eq!(
        cond,
        ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error"))
    );

    let big = vec![b'x'; 64 * 1024 + 1];
    let (cond, _) = rejected(send(&mut tx, c2d(&to("ok"), "big", &big, &[])).await);
    assert_eq!(
        cond,
        ErrorCondition::LinkError(LinkError::MessageSizeExceeded)
    );

    // Nothing rejected reached a queue; the link still takes a good message.
    assert!(matches!(
        send(&mut tx, c2d(&to("ok"), "fine", b"x", &[])).await,
        Outcome::Accepted(_)
    ));
    let (_, dev) = hub.rest(Method::GET, "/devices/ok", None).await;
    assert_eq!(dev["cloudToDeviceMessageCount"], 1, "{dev}");
    let (_, dev) = hub.rest(Method::GET, "/devices/full", None).await;
    assert_eq!(dev["cloudToDeviceMessageCount"], 2, "{dev}");
    conn.close().await.expect("close");

    // Without a token the links are refused.
    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session: SessionHandle<()> = Session::begin(&mut conn).await.expect("session");
    let refused = Sender::attach(&mut session, "no-token", "/messages/devicebound").await;
    match refused {
        Err(fe2o3_amqp::link::SenderAttachError::RemoteClosedWithError(e)) => assert_eq!(
            e.condition,
            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
        ),
        Ok(mut s) => {
            let e = s.on_detach().await;
            assert!(format!("{e:?}").contains("UnauthorizedAccess"), "{e:?}");
        }
        Err(e) => panic!("refused otherwise: {e:?}"),
    }
    let _ = conn.close().await;
    hub.stop().await;
}

/// The hub with HTTPS on 127.0.0.1:443 and AMQPS on 127.0.0.1:5671 (where the SDKs dial for a
/// port-less `HostName`); busy ports are retried for up to 60 s.
async fn start_hub_on_443_and_5671(dir: &std::path::Path) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(
        dir,
        0,
        443,
        |cfg| cfg.amqp_port = Some(5671),
        "127.0.0.1:443 and :5671",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_service_sdk_sends_c2d_over_amqp_to_the_python_device_sdk_and_the_feedback_arrives()
 {
    let Some(python) = crate::support::python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let handle = start_hub_on_443_and_5671(&tmp.path().join("hub")).await;
    let cs = handle.info.service_connection_string.clone();
    assert!(
        cs.starts_with("HostName=localhost;"),
        "with HTTPS on 443 and AMQPS on 5671 the service string names the host alone"
    );
    let hub = TestHub::attach(&handle.info);
    hub.create_device("py-c2d").await;
    let key = hub.device_key("py-c2d").await;
    let svc_file = tmp.path().join("service.cs");
    std::fs::write(&svc_file, &cs).unwrap();
    let dev_file = tmp.path().join("device.cs");
    std::fs::write(
        &dev_file,
        format!("HostName=localhost;DeviceId=py-c2d;SharedAccessKey={key}"),
    )
    .unwrap();
    let stderr = tmp.path().join("service_c2d_amqp.stderr");
    let mut child = tokio::process::Command::new(&python)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python/service_c2d_amqp.py"),
        )
        .arg(&svc_file)
        .arg(&dev_file)
        .arg(&handle.info.ca_file)
        .arg("py-c2d")
        .env("PYTHONUNBUFFERED", "1")
        .env("SSL_CERT_FILE", &handle.info.ca_file)
        .env("REQUESTS_CA_BUNDLE", &handle.info.ca_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut seen = Vec::new();
    use crate::hub_websocket::expect;
    expect(&mut lines, &mut seen, &stderr, "sent").await;
    // The device may get the message before or after the refused send returns.
    expect(&mut lines, &mut seen, &stderr, "done").await;
    let find = |name: &str| {
        seen.iter()
            .find(|v| v["event"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} event: {seen:?}"))
    };
    let refused = find("refused");
    assert!(refused["message"].as_str().is_some(), "{refused}");
    let m = find("c2d");
    assert_eq!(m["data"], "hello from uamqp", "{m}");
    assert_eq!(m["message_id"], "py-amqp-1", "{m}");
    assert_eq!(m["correlation_id"], "py-corr-1", "{m}");
    assert_eq!(m["content_type"], "text/plain", "{m}");
    assert_eq!(m["content_encoding"], "utf-8", "{m}");
    assert_eq!(m["custom_properties"]["color"], "blue", "{m}");
    assert!(
        m["custom_properties"].get("iothub-ack").is_none(),
        "the ack is the hub's, not an application property: {m}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the script exits")
        .unwrap();
    assert!(status.success(), "{seen:?}");

    // The device completed the message: its Success feedback (iothub-ack full) arrives over
    // AMQP, read by `azsim c2d feedback` with the printed (port-less) service string.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["c2d", "feedback", "--timeout", "30", "--json"])
        .arg("--hub-connection-string")
        .arg(&cs)
        .arg("--ca")
        .arg(&handle.info.ca_file)
        .current_dir(tmp.path())
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Json> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["originalMessageId"] == "py-amqp-1" && r["statusCode"] == "Success"),
        "{records:?}"
    );
    handle.stop().await.expect("hub stops cleanly");
}
