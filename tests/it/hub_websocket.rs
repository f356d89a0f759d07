//! MQTT over WebSockets: `wss://{host}:{https port}/$iothub/websocket` (subprotocol `mqtt`) on
//! the hub's HTTPS listener. `azsim run --websockets` (the real binary) runs telemetry, a method
//! and a twin patch through it; an upgrade without the subprotocol gets 400; garbage, a text
//! frame or silence after the upgrade closes only that connection; and the official Python
//! device SDK with `websockets=True` (which dials port 443) works unchanged.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use azsim_emulator::WsBytes;
use azsim_emulator::clock::unix_now;
use bytes::BytesMut;
use reqwest::Method;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::run_hub::Running;
use crate::support::TestHub;
use crate::support::python;

/// TLS to the hub's HTTPS port.
pub(crate) async fn tls(hub: &TestHub) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", hub.https_port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(hub.tls())
        .connect(
            rustls::pki_types::ServerName::try_from(hub.hostname.clone()).unwrap(),
            tcp,
        )
        .await
        .expect("tls")
}

/// A WebSocket to `/$iothub/websocket` offering `protocol`, with no `Authorization` header.
pub(crate) async fn websocket(
    hub: &TestHub,
    protocol: Option<&str>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, tungstenite::Error> {
    let url = format!(
        "wss://{}:{}/$iothub/websocket",
        hub.hostname, hub.https_port
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    tokio_tungstenite::client_async(req, tls(hub).await)
        .await
        .map(|(ws, _)| ws)
}

/// An MQTT connection over a WebSocket, CONNACK 0 received.
async fn mqtt_over_websocket(
    hub: &TestHub,
    device: &str,
    key: &str,
) -> WsBytes<TlsStream<TcpStream>> {
    let ws = websocket(hub, Some("mqtt")).await.expect("upgrade");
    let mut io = WsBytes::new(ws);
    let mut connect = Connect::new(device);
    connect.keep_alive = 60;
    connect.login = Some(Login::new(
        hub.username(device),
        hub.device_token(device, key, unix_now() + 3600),
    ));
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    io.write_all(&out).await.unwrap();
    io.flush().await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut connack))
        .await
        .expect("CONNACK within 10 s")
        .expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK 0");
    io
}

/// PINGREQ answered by PINGRESP: the connection is alive.
async fn ping(io: &mut WsBytes<TlsStream<TcpStream>>) {
    io.write_all(&[0xC0, 0]).await.unwrap();
    io.flush().await.unwrap();
    let mut resp = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut resp))
        .await
        .expect("PINGRESP within 10 s")
        .expect("PINGRESP");
    assert_eq!(resp, [0xD0, 0]);
}

/// Reads until the hub ends the WebSocket (close or EOF); panics if it stays open 30 s.
async fn wait_ws_closed(ws: &mut WebSocketStream<TlsStream<TcpStream>>) {
    use futures::StreamExt as _;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the hub closes the websocket");
}

pub(crate) async fn recent(hub: &TestHub, device: &str) -> Vec<Value> {
    let (s, v) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

async fn invoke(hub: &TestHub, device: &str, method: &str, payload: Value) -> (u16, Value) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/twins/{device}/methods"),
            Some(json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": 20, "connectTimeoutInSeconds": 20})),
        )
        .await;
    assert_eq!(s, 200, "invoke {method}: {v}");
    (v["status"].as_u64().unwrap() as u16, v["payload"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azsim_run_over_websockets_sends_telemetry_answers_a_method_and_applies_a_twin_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    // A hub serving the state dir: `azsim run` without a connection string uses it (hub.json)
    // and, with --websockets, dials its HTTPS port.
    let hub = TestHub::start_in(&state).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args([
        "run",
        "--json",
        "--websockets",
        "--interval",
        "1s",
        "--state",
    ])
    .arg(&state)
    .args(["--method", r#"selfTest=201:{"ws":true}"#])
    .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
    .env_remove("IOTHUB_CONNECTION_STRING")
    .env_remove("AZSIM_CA_FILE")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut dev = Running::spawn(cmd);
    let connected = dev.event("connected").await;
    assert_eq!(
        connected["host"],
        format!("{}:{}", hub.hostname, hub.https_port),
        "over the HTTPS port: {connected}"
    );
    let device = connected["device_id"].as_str().unwrap().to_owned();
    // The twin and the first acknowledgement, in whichever order they come.
    let mut mid = None;
    let mut twin_seen = false;
    while mid.is_none() || !twin_seen {
        let v = dev
            .wait_for("the twin and an acknowledged message", |v| {
                v["event"] == "twin" || v["event"] == "telemetry_acked"
            })
            .await;
        if v["event"] == "twin" {
            twin_seen = true;
        } else {
            mid = v["message_id"].as_str().map(str::to_owned);
        }
    }
    let mid = mid.unwrap();

    assert_eq!(
        invoke(&hub, &device, "selfTest", json!({"a": 1})).await,
        (201, json!({"ws": true}))
    );
    dev.wait_for("the method", |v| {
        v["event"] == "method" && v["name"] == "selfTest"
    })
    .await;

    let (s, v) = hub
        .rest(
            Method::PATCH,
            &format!("/twins/{device}"),
            Some(json!({"properties": {"desired": {"telemetryInterval": 3}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let d = dev.event("desired").await;
    assert_eq!(d["patch"]["telemetryInterval"], 3, "{d}");
    dev.wait_for("the reported ack", |v| {
        v["event"] == "reported" && v["patch"]["telemetryInterval"]["value"] == 3
    })
    .await;
    let (_, twin) = hub
        .rest(Method::GET, &format!("/twins/{device}"), None)
        .await;
    assert_eq!(
        twin["properties"]["reported"]["telemetryInterval"]["ac"], 200,
        "{twin}"
    );

    let events = recent(&hub, &device).await;
    assert!(
        events.iter().any(
            |e| e["type"] == "telemetry" && e["systemProperties"]["message-id"] == mid.as_str()
        ),
        "the acknowledged message is in the hub: {events:#?}"
    );
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_websockets_is_all_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let hub = TestHub::start_in(&state).await;
    // hub.json names an MQTT port that accepts and never answers: a fleet that dialled MQTT
    // would acknowledge nothing.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let _mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let json_path = state.join("hub.json");
    let mut info: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    info["mqtt_port"] = json!(mute_port);
    std::fs::write(&json_path, info.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["fleet", "--json", "--websockets", "--state"])
        .arg(&state)
        .args(["--devices", "5", "--count", "2", "--interval", "200ms"])
        .args(["--prefix", "wsf-", "--connect-rate", "100"])
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut fleet = Running::spawn(cmd);
    let summary = fleet
        .wait_for("the summary", |v| v["event"] == "summary")
        .await;
    assert_eq!(summary["devices_acked"], 5, "{summary}");
    assert!(summary["acked"].as_u64().unwrap() >= 10, "{summary}");
    let events = recent(&hub, "wsf-1").await;
    assert!(
        events.iter().any(|e| e["type"] == "telemetry"),
        "{events:#?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_the_mqtt_subprotocol_gets_400_and_the_hub_keeps_serving() {
    let hub = TestHub::start().await;
    hub.create_device("ws-a").await;
    hub.create_device("ws-b").await;
    let key = hub.device_key("ws-a").await;
    let mut a = mqtt_over_websocket(&hub, "ws-a", &key).await;

    for protocol in [None, Some("mqttv3.1"), Some("MQTT")] {
        match websocket(&hub, protocol).await {
            Err(tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 400, "{protocol:?}")
            }
            other => panic!("{protocol:?}: expected 400, got {:?}", other.map(|_| "101")),
        }
    }
    // A plain GET of the path (no upgrade) is refused the same way, without needing auth.
    let r = hub
        .http()
        .get(format!(
            "https://{}:{}/$iothub/websocket",
            hub.hostname, hub.https_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The device connected before is still served, and new ones connect.
    ping(&mut a).await;
    let key_b = hub.device_key("ws-b").await;
    let mut b = mqtt_over_websocket(&hub, "ws-b", &key_b).await;
    ping(&mut b).await;
    // The REST API still wants its token.
    let r = hub
        .http()
        .get(hub.url("/devices/ws-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_a_text_frame_or_silence_after_the_upgrade_closes_only_that_connection() {
    let hub = TestHub::start_configured(|c| {
        c.limits.connect_deadline = Duration::from_secs(2);
        // An upgraded connection is MQTT's, not an idle HTTPS one: it outlives this.
        c.limits.http_idle_timeout = Duration::from_secs(1);
    })
    .await;
    hub.create_device("ws-keep").await;
    let key = hub.device_key("ws-keep").await;
    let mut keep = mqtt_over_websocket(&hub, "ws-keep", &key).await;

    // Bytes that are no MQTT packet.
    let mut g = websocket(&hub, Some("mqtt")).await.unwrap();
    futures::SinkExt::send(&mut g, Message::binary(vec![0xFFu8; 64]))
        .await
        .unwrap();
    wait_ws_closed(&mut g).await;

    // MQTT over WebSockets is binary.
    let mut t = websocket(&hub, Some("mqtt")).await.unwrap();
    futures::SinkExt::send(&mut t, Message::text("CONNECT"))
        .await
        .unwrap();
    wait_ws_closed(&mut t).await;

    // Nothing after the upgrade: closed at the connect deadline.
    let mut s = websocket(&hub, Some("mqtt")).await.unwrap();
    wait_ws_closed(&mut s).await;

    // A wrong key gets CONNACK 5, as over TCP.
    let ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let mut bad = WsBytes::new(ws);
    let mut connect = Connect::new("ws-keep");
    connect.login = Some(Login::new(
        hub.username("ws-keep"),
        hub.device_token(
            "ws-keep",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            unix_now() + 60,
        ),
    ));
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    bad.write_all(&out).await.unwrap();
    bad.flush().await.unwrap();
    let mut connack = [0u8; 4];
    bad.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 5], "CONNACK 5");

    ping(&mut keep).await;
    let events = recent(&hub, "ws-keep").await;
    assert!(
        !events.iter().any(|e| e["type"] == "disconnected"),
        "the good connection stayed up: {events:#?}"
    );
    hub.stop().await;
}

// ---- the official Python device SDK over WebSockets (port 443) ----

/// The hub with its HTTPS listener on 127.0.0.1:443 (where the SDK dials WebSockets) and MQTT
/// on a free port; a busy port is retried for up to 60 s.
async fn start_hub_on_443(dir: &Path) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(
        dir,
        0,
        443,
        // No AMQP here: then HTTPS on 443 alone makes the service string port-less.
        |cfg| cfg.amqp_port = None,
        "with https on 127.0.0.1:443",
    )
    .await
}

/// The script's JSON lines, until the event named `event`.
pub(crate) async fn expect(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<Value>,
    stderr: &Path,
    event: &str,
) -> Value {
    let fail = |why: String, seen: &Vec<Value>| -> ! {
        let err = std::fs::read_to_string(stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{}: {why}\nevents: {seen:?}\nstderr:\n{}",
            stderr.display(),
            tail.join("\n")
        )
    };
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
            Err(_) => fail(format!("no {event:?} within 60 s"), seen),
            Ok(Err(e)) => fail(format!("reading stdout: {e}"), seen),
            Ok(Ok(None)) => fail(format!("exited before {event:?}"), seen),
            Ok(Ok(Some(l))) => l,
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        seen.push(v.clone());
        if v["event"] == event {
            return v;
        }
        if v["event"] == "error" || v["event"] == "timeout" {
            fail(format!("reported {v}"), seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_device_sdk_with_websockets_runs_telemetry_a_method_and_a_twin_patch() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let handle = start_hub_on_443(&tmp.path().join("hub")).await;
    let hub = TestHub::attach(&handle.info);
    assert!(
        handle
            .info
            .service_connection_string
            .starts_with("HostName=localhost;"),
        "with https on 443 the service string names the host alone"
    );
    hub.create_device("py-ws").await;
    let key = hub.device_key("py-ws").await;
    // The SDK dials wss://{HostName}:443, so HostName carries no port.
    let cs_file = tmp.path().join("py-ws.cs");
    std::fs::write(
        &cs_file,
        format!("HostName=localhost;DeviceId=py-ws;SharedAccessKey={key}"),
    )
    .unwrap();
    let stderr = tmp.path().join("py.stderr");
    let mut child = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/device_websockets.py"))
        .arg(&cs_file)
        .arg(&handle.info.ca_file)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    expect(&mut lines, &mut seen, &stderr, "connected").await;
    expect(&mut lines, &mut seen, &stderr, "telemetry_sent").await;
    let events = recent(&hub, "py-ws").await;
    let t = events
        .iter()
        .find(|e| e["type"] == "telemetry")
        .unwrap_or_else(|| panic!("telemetry in the hub: {events:#?}"));
    assert_eq!(t["systemProperties"]["message-id"], "py-ws-1", "{t}");
    assert_eq!(t["properties"]["transport"], "websockets", "{t}");
    let body: Value = serde_json::from_str(t["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"temperature": 22.5}));

    expect(&mut lines, &mut seen, &stderr, "handlers_ready").await;
    assert_eq!(
        invoke(&hub, "py-ws", "reboot", json!({"delay": 2})).await,
        (201, json!({"echo": {"delay": 2}, "method": "reboot"}))
    );
    let (s, v) = hub
        .rest(
            Method::PATCH,
            "/twins/py-ws",
            Some(json!({"properties": {"desired": {"interval": 11}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let d = expect(&mut lines, &mut seen, &stderr, "desired").await;
    assert_eq!(d["patch"]["interval"], 11, "{d}");
    let r = expect(&mut lines, &mut seen, &stderr, "reported_patched").await;
    assert_eq!(r["interval"], 11, "{r}");
    let (_, twin) = hub.rest(Method::GET, "/twins/py-ws", None).await;
    assert_eq!(twin["properties"]["reported"]["interval"], 11, "{twin}");
    expect(&mut lines, &mut seen, &stderr, "done").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the script exits")
        .unwrap();
    assert!(status.success(), "{seen:?}");
    handle.stop().await.expect("hub stops cleanly");
}
