//! MQTT over WebSockets: how the hub ends a connection whose keep-alive expired. Azure's
//! WebSocket channel closes with the closing handshake (edgeHub's `ServerWebSocketChannel`:
//! `CloseAsync` with 1000 NormalClosure): a Close frame, then the TCP connection is closed once
//! the client's Close has come back, or after a bounded wait. The hub used to drop TCP right
//! behind its Close frame; paho-mqtt 1.6.1 (the Python device SDK's client) answers a Close
//! frame with a raw TLS write, which then raised `ssl.SSLEOFError` when the client still had
//! data in flight, and its network thread died without reporting a disconnect (the SDK's own
//! flaky-network stress test over WebSockets hung). A raw tungstenite client that stops sending
//! after its CONNACK (keep-alive 1 s) sees what the hub does at 1.5 times the keep-alive.

use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::hub_websocket::websocket;
use crate::support::TestHub;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long the hub waits for the client's Close frame (`CLOSE_HANDSHAKE_TIMEOUT`).
const HUB_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `device` connected over a WebSocket with a keep-alive of 1 s; the instant its CONNACK came
/// (the last packet the client sends is its CONNECT, just before).
async fn connected_quiet(hub: &TestHub, device: &str) -> (Ws, Instant) {
    hub.create_device(device).await;
    let key = hub.device_key(device).await;
    let mut ws = websocket(hub, Some("mqtt")).await.expect("upgrade");
    let mut connect = Connect::new(device);
    connect.keep_alive = 1;
    connect.login = Some(Login::new(
        hub.username(device),
        hub.device_token(device, &key, unix_now() + 3600),
    ));
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    let sent = Instant::now();
    ws.send(Message::binary(out.to_vec())).await.unwrap();
    let connack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("CONNACK within 10 s");
    match connack {
        Some(Ok(Message::Binary(b))) => assert_eq!(b.as_ref(), [0x20, 2, 0, 0], "CONNACK 0"),
        other => panic!("CONNACK: {other:?}"),
    }
    (ws, sent)
}

/// The hub's Close frame (the client sends nothing meanwhile); tungstenite queues the client's
/// answer and sends it only on the next read.
async fn hub_close(ws: &mut Ws) -> CloseFrame {
    let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the hub closes a silent connection within 30 s");
    match m {
        Some(Ok(Message::Close(Some(frame)))) => frame,
        other => panic!("expected the hub's Close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_1_5x_the_keep_alive_the_hub_sends_close_1000_and_drops_tcp_after_the_client_s_close() {
    let hub = TestHub::start().await;
    let (mut ws, quiet_since) = connected_quiet(&hub, "ws-ka").await;
    let frame = hub_close(&mut ws).await;
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1450),
        "closed after {waited:?}: before 1.5 times the keep-alive (1 s)"
    );
    assert_eq!(frame.code, CloseCode::Normal, "{frame:?}");

    // The client has not answered yet: the hub keeps the TCP connection open for its Close
    // (a hub that dropped it here made paho's answer fail).
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), ws.get_mut().read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the hub ended the TCP connection before the client's Close frame: {early:?}"
    );

    // The next read sends the client's Close; the hub then closes TCP (at once, not at the end
    // of its wait).
    let answered = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the hub ends the connection after the client's Close");
    assert!(
        matches!(end, None | Some(Err(_))),
        "nothing after the closing handshake: {end:?}"
    );
    assert!(
        answered.elapsed() < HUB_CLOSE_WAIT - Duration::from_secs(1),
        "the TCP connection ended {:?} after the client's Close: the hub did not take it",
        answered.elapsed()
    );

    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_the_close_frame_is_dropped_when_the_hub_s_wait_ends() {
    let hub = TestHub::start().await;
    let (mut ws, _) = connected_quiet(&hub, "ws-mute").await;
    let frame = hub_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Normal, "{frame:?}");
    let closed_at = Instant::now();
    // Never answer: only watch the TCP connection under the WebSocket.
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(30), ws.get_mut().read(&mut buf))
        .await
        .expect("the hub drops a client that never answers its Close within 30 s");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let waited = closed_at.elapsed();
    assert!(
        waited >= HUB_CLOSE_WAIT - Duration::from_millis(500),
        "dropped {waited:?} after the Close frame: before the hub's wait for the client's answer"
    );
    hub.stop().await;
}
