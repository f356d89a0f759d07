//! AMQP over WebSockets on the hub's HTTPS listener, as IoT Hub serves it on 443: subprotocol
//! `AMQPWSB10` on `/$iothub/websocket` (the IoT Hub service SDKs) and `/$servicebus/websocket`
//! (the Event Hubs SDKs), each AMQP byte carried in binary messages, through the same AMQP
//! connection code as AMQPS.
//!
//! An independent client (fe2o3-amqp over tungstenite, through the library's `WsBytes`) sends
//! C2D with SASL PLAIN and gets its feedback and a file upload notification, reads a partition
//! after a CBS `put-token`, and sends more than the pre-auth byte cap once authenticated; a
//! wrong subprotocol gets 400, an unknown path what any unknown REST path gets; garbage, a text
//! message or an oversized message before auth close only that connection; the hub's stop
//! closes a connection that is still open; unauthenticated AMQP WebSockets hold places of the
//! WebSocket cap until their token (503 beyond) and are closed at the connect deadline; frames
//! may span messages and a message may hold several. The official SDKs: `azure-eventhub` with
//! `TransportType.AmqpOverWebsocket` (tests/python/eventhub_websocket.py), and in Node
//! `azure-iothub`'s `AmqpWs` service client sending C2D to `azure-iot-device-amqp`'s `AmqpWs`
//! device (tests/node/service_amqp_ws.js; both dial 443: that test holds `support::PORT_8883`).

use std::path::Path;
use std::time::Duration;

use azsim_emulator::WsBytes;
use azsim_emulator::clock::unix_now;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Message, MessageId, Outcome, Properties, Source,
};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Session};
use futures::{SinkExt as _, StreamExt as _};
use rumqttc::{Packet, QoS};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::hub_amqp::{Cbs, owner_token};
use crate::hub_websocket::tls;
use crate::support::script::Script;
use crate::support::{TestHub, next_incoming, python};

type Ws = WebSocketStream<TlsStream<TcpStream>>;
type Conn = fe2o3_amqp::connection::ConnectionHandle<()>;

const WAIT: Duration = Duration::from_secs(20);
const IOTHUB_PATH: &str = "/$iothub/websocket";
const SERVICEBUS_PATH: &str = "/$servicebus/websocket";

/// A WebSocket to `path` on the hub's HTTPS port offering `protocol`.
async fn websocket(hub: &TestHub, path: &str, protocol: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("wss://{}:{}{path}", hub.hostname, hub.https_port);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::client_async(req, tls(hub).await).await?;
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol),
        "the hub answers in the subprotocol offered"
    );
    Ok(ws)
}

/// The HTTP status (and body) with which the hub refuses an upgrade.
async fn refused(hub: &TestHub, path: &str, protocol: &str) -> (u16, String) {
    match websocket(hub, path, protocol).await {
        Err(tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("{path} {protocol}: {e}"),
        Ok(_) => panic!("{path} {protocol}: upgraded"),
    }
}

/// An AMQP connection over a WebSocket to `path` with `sasl`.
async fn open(
    hub: &TestHub,
    path: &str,
    sasl: SaslProfile,
) -> Result<Conn, fe2o3_amqp::connection::OpenError> {
    let ws = websocket(hub, path, "AMQPWSB10").await.expect("upgrade");
    tokio::time::timeout(
        WAIT,
        Connection::builder()
            .container_id("azsim-ws-test")
            .hostname("localhost")
            .sasl_profile(sasl)
            .open_with_stream(WsBytes::new(ws)),
    )
    .await
    .expect("open in time")
}

fn plain(hub: &TestHub) -> SaslProfile {
    SaslProfile::Plain {
        username: "iothubowner@sas.root.localhost".into(),
        password: owner_token(hub, &hub.hostname, unix_now() + 600),
    }
}

/// A C2D message to `device` asking for full feedback.
fn c2d(device: &str, id: &str, body: Vec<u8>) -> Message<fe2o3_amqp::types::messaging::Data> {
    Message::builder()
        .properties(Properties {
            to: Some(format!("/devices/{device}/messages/devicebound")),
            message_id: Some(MessageId::String(id.to_owned())),
            ..Properties::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("iothub-ack", "full")
                .build(),
        )
        .data(Binary::from(body))
        .build()
}

/// How the hub ends the WebSocket: `Some(code)` from its close frame, `None` for a close without
/// one or a reset; fails if it is still open after `WAIT`.
async fn ended(ws: &mut Ws, what: &str) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: still open after {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_feedback_and_partitions_over_amqp_websockets_and_the_stop_closes_them() {
    let hub = TestHub::start_configured(|c| {
        c.partitions = 1;
        c.routes = azsim_emulator::routing::Routes {
            telemetry: true,
            ..azsim_emulator::routing::Routes::NONE
        };
    })
    .await;
    hub.create_device("ws-c2d").await;
    let key = hub.device_key("ws-c2d").await;
    let (device, mut el) = hub.connect("ws-c2d", &key, true).await;
    device
        .subscribe("devices/ws-c2d/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    device
        .publish(
            "devices/ws-c2d/messages/events/%24.mid=t1",
            QoS::AtLeastOnce,
            false,
            b"{\"t\":1}".to_vec(),
        )
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;

    // The IoT Hub path, SASL PLAIN: C2D out, its feedback back.
    let mut conn = open(&hub, IOTHUB_PATH, plain(&hub))
        .await
        .expect("PLAIN over websockets");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut tx = Sender::attach(&mut session, "c2d", "/messages/devicebound")
        .await
        .expect("c2d sender");
    // Three 60 KiB messages: more than an unauthenticated client may send in all (twice the
    // 64 KiB pre-auth cap), so the hub lifted that cap once the connection had its token.
    for i in 0..3 {
        let body = vec![b'a' + i; 60 * 1024];
        let id = format!("ws-{i}");
        let sent = tokio::time::timeout(WAIT, tx.send(c2d("ws-c2d", &id, body)))
            .await
            .expect("settled in time")
            .expect("sent");
        assert!(matches!(sent, Outcome::Accepted(_)), "{id}: {sent:?}");
        let got = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got.len(), 60 * 1024);
        assert!(got.iter().all(|b| *b == b'a' + i), "{id}'s body");
    }
    let mut feedback = Receiver::attach(&mut session, "fb", "/messages/serviceBound/feedback")
        .await
        .expect("feedback receiver");
    let poll_device = async {
        loop {
            let _ = el.poll().await;
        }
    };
    let batch = tokio::select! {
        d = tokio::time::timeout(WAIT, feedback.recv::<Body<Value>>()) => d.expect("feedback in time").expect("feedback"),
        () = poll_device => unreachable!(),
    };
    let text = match batch.body() {
        Body::Data(d) => String::from_utf8(d.iter().flat_map(|d| d.0.to_vec()).collect()).unwrap(),
        other => panic!("feedback body {other:?}"),
    };
    assert!(
        text.contains("\"originalMessageId\":\"ws-0\"") && text.contains("Success"),
        "{text}"
    );
    feedback.accept(&batch).await.expect("accept");

    // A file upload's notification on the same connection.
    let token = hub.device_token("ws-c2d", &key, unix_now() + 600);
    let up: serde_json::Value = hub
        .http()
        .post(hub.url("/devices/ws-c2d/files"))
        .header("Authorization", &token)
        .json(&serde_json::json!({ "blobName": "ws.txt" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = |k: &str| up[k].as_str().unwrap_or_else(|| panic!("{k} in {up}"));
    let blob = format!(
        "https://{}/{}/{}{}",
        text("hostName"),
        text("containerName"),
        text("blobName"),
        text("sasToken")
    );
    let put = hub
        .http()
        .put(blob)
        .header("x-ms-blob-type", "BlockBlob")
        .body(b"over websockets".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let notified = hub
        .http()
        .post(hub.url("/devices/ws-c2d/files/notifications"))
        .header("Authorization", &token)
        .json(&serde_json::json!({
            "correlationId": text("correlationId"), "isSuccess": true, "statusCode": 201,
            "statusDescription": "ok"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status().as_u16(), 204);
    let mut files = Receiver::attach(
        &mut session,
        "files",
        "/messages/serviceBound/filenotifications",
    )
    .await
    .expect("file notification receiver");
    let n = tokio::time::timeout(WAIT, files.recv::<Body<Value>>())
        .await
        .expect("a notification in time")
        .expect("a notification");
    let text = match n.body() {
        Body::Data(d) => String::from_utf8(d.iter().flat_map(|d| d.0.to_vec()).collect()).unwrap(),
        other => panic!("notification body {other:?}"),
    };
    assert!(text.contains("\"blobName\":\"ws-c2d/ws.txt\""), "{text}");
    files.accept(&n).await.expect("accept");

    // The Service Bus path, SASL ANONYMOUS and CBS: the partition holds the telemetry.
    let mut eh = open(&hub, SERVICEBUS_PATH, SaslProfile::Anonymous)
        .await
        .expect("ANONYMOUS over websockets");
    let mut eh_session = Session::begin(&mut eh).await.expect("session");
    let mut cbs = Cbs::attach(&mut eh_session).await;
    let aud = format!("sb://localhost:{}/localhost", hub.info.amqp_port.unwrap());
    let (status, desc) = cbs
        .put_token(&aud, &owner_token(&hub, &aud, unix_now() + 600))
        .await;
    assert_eq!(status, 200, "{desc}");
    let mut part = Receiver::builder()
        .name("p0")
        .source(
            Source::builder()
                .address("localhost/ConsumerGroups/$Default/Partitions/0")
                .build(),
        )
        .target("ws-reader")
        .attach(&mut eh_session)
        .await
        .expect("partition receiver");
    let ev = tokio::time::timeout(WAIT, part.recv::<Body<Value>>())
        .await
        .expect("event in time")
        .expect("event");
    match ev.body() {
        Body::Data(d) => assert_eq!(d.iter().next().unwrap().0.to_vec(), b"{\"t\":1}"),
        other => panic!("event body {other:?}"),
    }
    part.accept(&ev).await.expect("accept");

    // The hub stops with both connections open: they are closed, and the stop does not wait
    // for them.
    let stopping = tokio::spawn(hub.stop());
    let closed = tokio::time::timeout(WAIT, part.recv::<Body<Value>>())
        .await
        .expect("the partition link ends when the hub stops");
    assert!(closed.is_err(), "{closed:?}");
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the hub stops")
        .unwrap();
    let _ = conn.close().await;
    let _ = eh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_and_bad_input_close_only_that_connection() {
    let hub = TestHub::start().await;
    let (status, body) = refused(&hub, SERVICEBUS_PATH, "mqtt").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("AMQPWSB10"), "{body}");
    let (status, body) = refused(&hub, IOTHUB_PATH, "amqp").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mqtt or AMQPWSB10"), "{body}");
    // Another path is a REST request: without an api-version IoT Hub's 400
    // InvalidProtocolVersion (what it answers such an upgrade too).
    let (status, body) = refused(&hub, "/$amqp/websocket", "AMQPWSB10").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidProtocolVersion"), "{body}");

    // Not AMQP: the hub answers with its (SASL) protocol header and closes.
    let mut ws = websocket(&hub, SERVICEBUS_PATH, "AMQPWSB10").await.unwrap();
    ws.send(WsMessage::binary(b"GET / HTTP/1.1\r\n\r\n".to_vec()))
        .await
        .unwrap();
    ended(&mut ws, "garbage").await;
    // AMQP over WebSockets is binary.
    let mut ws = websocket(&hub, IOTHUB_PATH, "AMQPWSB10").await.unwrap();
    ws.send(WsMessage::text("AMQP\u{3}\u{1}\u{0}\u{0}"))
        .await
        .unwrap();
    ended(&mut ws, "text").await;
    // Over the pre-auth cap in one message: 1009 from its header alone (a masked binary frame
    // announcing 100 KiB, written under tungstenite).
    let mut ws = websocket(&hub, SERVICEBUS_PATH, "AMQPWSB10").await.unwrap();
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(100u64 * 1024).to_be_bytes());
    head.extend_from_slice(&[0, 0, 0, 0]);
    head.extend_from_slice(b"AMQP\x03\x01\x00\x00");
    ws.get_mut().write_all(&head).await.unwrap();
    ws.get_mut().flush().await.unwrap();
    assert_eq!(ended(&mut ws, "oversized").await, Some(1009));

    // The others are served all along; with a trailing `/` too, as uamqp (azure-iot-hub's
    // AMQP stack) opens `/$servicebus/websocket/`.
    for path in [IOTHUB_PATH, "/$servicebus/websocket/"] {
        let mut conn = open(&hub, path, plain(&hub)).await.expect("still serving");
        conn.close().await.expect("close");
    }
    hub.stop().await;

    // A hub without AMQP has no AMQP over WebSockets either.
    let hub = TestHub::start_configured(|c| c.amqp_port = None).await;
    let (status, body) = refused(&hub, SERVICEBUS_PATH, "AMQPWSB10").await;
    assert_eq!(status, 404, "{body}");
    hub.stop().await;
}

/// Publishes telemetry `{"n": n}` (property `n`) as `device` and waits for its PUBACK.
async fn telemetry(device: &rumqttc::AsyncClient, el: &mut rumqttc::EventLoop, id: &str, n: u32) {
    device
        .publish(
            format!("devices/{id}/messages/events/n={n}"),
            QoS::AtLeastOnce,
            false,
            format!("{{\"n\": {n}}}").into_bytes(),
        )
        .await
        .unwrap();
    next_incoming(el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_event_hubs_sdk_reads_telemetry_over_amqp_websockets() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let hub = TestHub::start_configured(|c| {
        c.consumer_groups = vec!["ws-group".into()];
        c.routes = azsim_emulator::routing::Routes {
            telemetry: true,
            ..azsim_emulator::routing::Routes::NONE
        };
    })
    .await;
    hub.create_device("eh-ws").await;
    let key = hub.device_key("eh-ws").await;
    let (device, mut el) = hub.connect("eh-ws", &key, true).await;
    telemetry(&device, &mut el, "eh-ws", 1).await;
    telemetry(&device, &mut el, "eh-ws", 2).await;

    let work = hub.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cs_file = work.join("eh.cs");
    std::fs::write(
        &cs_file,
        hub.info.eventhub_connection_string.as_ref().unwrap(),
    )
    .unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/eventhub_websocket.py"))
        .arg(&cs_file)
        // The SDK dials 443 unless the custom endpoint names a port.
        .arg(format!("sb://localhost:{}", hub.https_port))
        .arg(&hub.ca_file)
        .arg("ws-group")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::null());
    let mut s = Script::spawn(cmd, &work, "eventhub_websocket");

    let parts = s.expect("partitions").await;
    assert_eq!(parts["ids"], serde_json::json!(["0", "1", "2", "3"]));
    let busy = parts["busy"].as_array().unwrap();
    assert_eq!(busy.len(), 1, "one device, one partition: {parts}");
    let props = &parts["props"][busy[0].as_str().unwrap()];
    assert_eq!(props["last_enqueued_sequence_number"], "1", "{props}");

    let first = s.expect("from_start").await;
    let events = first["events"].as_array().unwrap();
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["body"], format!("{{\"n\": {}}}", i + 1), "{ev}");
        assert_eq!(ev["properties"]["n"], (i + 1).to_string(), "{ev}");
        assert_eq!(ev["device"], "eh-ws", "{ev}");
        assert_eq!(ev["sequence_number"], i as u64, "{ev}");
    }
    let after = s.expect("after_first").await;
    assert_eq!(after["group"], "ws-group");
    assert_eq!(after["events"][0]["sequence_number"], 1, "{after}");

    // The "@latest" receiver gets only what the device sends once it runs: 3, 4, ... until it
    // has one (its link may attach a moment after it reports starting). Over WebSockets pyAMQP
    // reads with a 1 s socket timeout and hands events to `on_event` only after a read times
    // out, so the messages are 1.5 s apart.
    s.expect("latest_started").await;
    let sending = async {
        for n in 3.. {
            telemetry(&device, &mut el, "eh-ws", n).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    };
    let latest = tokio::select! {
        v = s.expect("latest") => v,
        () = sending => unreachable!(),
    };
    let n: u32 = latest["events"][0]["properties"]["n"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 3, "@latest gets only what was sent after it: {latest}");
    s.expect("done").await;
    s.finish().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdks_send_c2d_receive_it_and_read_its_feedback_over_amqp_websockets() {
    // AmqpWs (service and device) dials wss://{host}:443 and nothing else; 5671 too: only with
    // both of Azure's ports is the connection string's HostName bare.
    let Some(fixed) = crate::support::node::hub_on_fixed_ports(
        &["azure-iothub", "azure-iot-device", "azure-iot-device-amqp"],
        0,
        443,
        5671,
        "127.0.0.1:443 and 5671 (AmqpWs needs 443 and a bare HostName)",
    )
    .await
    else {
        return;
    };
    let (node, handle, hub) = (fixed.node, fixed.hub, fixed.view);
    let (work, cs_file) = (fixed.work, fixed.cs_file);
    hub.create_device("node-ws").await;
    let key = hub.device_key("node-ws").await;

    // The device's string without the MQTT port: AmqpWs appends :443 to HostName.
    let device_cs_file = work.join("device.cs");
    std::fs::write(
        &device_cs_file,
        format!("HostName=localhost;DeviceId=node-ws;SharedAccessKey={key}"),
    )
    .unwrap();
    let mut cmd = Command::new(node);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/service_amqp_ws.js"))
        .arg(&cs_file)
        .arg(&device_cs_file)
        .arg("2")
        .env("NODE_EXTRA_CA_CERTS", &hub.ca_file)
        .stdin(std::process::Stdio::null());
    let mut s = Script::spawn(cmd, &work, "service_amqp_ws");
    s.expect("device_opened").await;
    s.expect("opened").await;
    s.expect("done").await;
    let events = |name: &str| -> Vec<serde_json::Value> {
        s.seen
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    };
    let mut got: Vec<String> = events("c2d")
        .iter()
        .map(|e| {
            assert_eq!(
                e["messageId"],
                format!("node-ws-{}", e["properties"]["n"].as_str().unwrap()),
                "{e}"
            );
            e["data"].as_str().unwrap().to_string()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, ["node over amqp-ws 1", "node over amqp-ws 2"]);
    let records: Vec<serde_json::Value> = events("feedback")
        .iter()
        .flat_map(|e| e["records"].as_array().unwrap().clone())
        .collect();
    for r in &records {
        assert_eq!(r["deviceId"], "node-ws", "{r}");
        assert_eq!(r["statusCode"], "Success", "{r}");
    }
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["originalMessageId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["node-ws-1", "node-ws-2"]);
    s.finish().await;
    handle.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_amqp_websockets_count_against_the_cap_until_their_token_and_meet_the_deadline()
 {
    let hub = TestHub::start_configured(|c| {
        c.limits.max_pre_auth_connections = 2;
        c.limits.connect_deadline = Duration::from_secs(5);
    })
    .await;
    // Two places: a silent WebSocket and an AMQP connection without a token yet.
    let mut silent = websocket(&hub, SERVICEBUS_PATH, "AMQPWSB10").await.unwrap();
    let mut conn = open(&hub, IOTHUB_PATH, SaslProfile::Anonymous)
        .await
        .expect("ANONYMOUS");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut cbs = Cbs::attach(&mut session).await;
    let (status, _) = refused(&hub, SERVICEBUS_PATH, "AMQPWSB10").await;
    assert_eq!(
        status, 503,
        "a third unauthenticated WebSocket waits for a place"
    );
    // Its token gives its place back (the hub notices it a moment after the reply).
    let token = owner_token(&hub, &hub.hostname, unix_now() + 600);
    assert_eq!(cbs.put_token(&hub.hostname, &token).await.0, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut late = loop {
        match websocket(&hub, IOTHUB_PATH, "AMQPWSB10").await {
            Ok(ws) => break ws,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {
                assert!(tokio::time::Instant::now() < deadline, "no place freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("upgrade: {e}"),
        }
    };
    // The silent ones are closed at the connect deadline; the authenticated one stays.
    ended(&mut silent, "silent").await;
    ended(&mut late, "late").await;
    let tx = Sender::attach(&mut session, "after-deadline", "/messages/devicebound")
        .await
        .expect("an authenticated connection outlives the deadline");
    tx.close().await.expect("detach");
    conn.close().await.expect("close");
    hub.stop().await;
}

// Frames across and within WebSocket messages (hub_amqp_websocket/frames.rs).
mod frames;
