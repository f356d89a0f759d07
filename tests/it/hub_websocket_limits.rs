//! MQTT over WebSockets holds an unauthenticated client to the same byte cap as TCP: until its
//! CONNECT is authenticated a frame or message over `pre_auth_max_bytes` (64 KiB) is refused
//! from its header, with close code 1009, long before the connect deadline; after the CONNACK
//! a 200 KiB telemetry message goes through, and only a frame over the largest packet gets
//! 1009. Pings from a client that does not read cannot pile up pongs in the hub: before auth
//! the frames together are capped, after it a pong that does not fit waits for the one before.
//! The upgrade request's head is bounded too (431), and at most 512 upgraded WebSockets may
//! wait unauthenticated (503 beyond, a place again once one goes).

use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use bytes::BytesMut;
use futures::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::hub_websocket::{recent, tls, websocket};
use crate::support::TestHub;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A connect deadline far beyond how fast the refusals must come: a close that waited for it
/// would fail the tests' 5 s bound.
const DEADLINE: Duration = Duration::from_secs(60);
const PROMPT: Duration = Duration::from_secs(5);

/// The header of a masked client frame (mask key 0, so the payload goes as written).
fn frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Writes raw bytes under the WebSocket (frames tungstenite does not know about).
async fn raw(ws: &mut Ws, bytes: &[u8]) {
    ws.get_mut().write_all(bytes).await.unwrap();
    ws.get_mut().flush().await.unwrap();
}

/// How the hub ends the WebSocket within `PROMPT`: `Some(code)` from its close frame, `None`
/// for a close without a frame or a reset.
async fn ended(ws: &mut Ws, what: &str) -> Option<u16> {
    let start = Instant::now();
    let r = tokio::time::timeout(PROMPT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("{what}: still open after {:?}", start.elapsed()))
}

/// An authenticated MQTT connection over a WebSocket, one MQTT packet per binary message.
pub(crate) async fn connected(hub: &TestHub, device: &str, key: &str) -> Ws {
    let mut ws = websocket(hub, Some("mqtt")).await.expect("upgrade");
    let mut connect = Connect::new(device);
    connect.keep_alive = 60;
    connect.login = Some(Login::new(
        hub.username(device),
        hub.device_token(device, key, unix_now() + 3600),
    ));
    ws.send(Message::binary(packet(Packet::Connect(connect))))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws, "CONNACK").await, [0x20, 2, 0, 0]);
    ws
}

fn packet(p: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

/// The next binary message; pongs are skipped (after a ping flood the pong that waited for
/// room may come after later data).
async fn next_binary(ws: &mut Ws, what: &str) -> Vec<u8> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s"));
        match m {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Pong(_))) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

async fn alive(ws: &mut Ws) {
    ws.send(Message::binary(vec![0xC0u8, 0])).await.unwrap();
    assert_eq!(next_binary(ws, "PINGRESP").await, [0xD0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_auth_a_frame_or_message_over_the_cap_gets_1009_at_once_after_auth_200_kib_goes_through()
 {
    let hub = TestHub::start_configured(|c| c.limits.connect_deadline = DEADLINE).await;
    hub.create_device("wsl").await;
    let key = hub.device_key("wsl").await;
    let mut keep = connected(&hub, "wsl", &key).await;

    // A 100 KiB frame announced by its header alone: refused before its payload comes.
    let mut ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let mut bytes = frame_header(true, 2, 100 * 1024);
    bytes.extend_from_slice(&[0x10; 16]);
    raw(&mut ws, &bytes).await;
    assert_eq!(ended(&mut ws, "100 KiB header").await, Some(1009));

    // The same frame sent whole: closed as promptly (a reset may beat the close frame, since
    // the hub leaves the rest unread).
    let mut ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let _ = ws.send(Message::binary(vec![0x10u8; 100 * 1024])).await;
    let code = ended(&mut ws, "100 KiB frame").await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");

    // A message of two 40 KiB fragments: each frame is under the cap, the message is not.
    let mut ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let mut first = frame_header(false, 2, 40 * 1024);
    first.resize(first.len() + 40 * 1024, 0x10);
    raw(&mut ws, &first).await;
    raw(&mut ws, &frame_header(true, 0, 40 * 1024)).await;
    assert_eq!(ended(&mut ws, "two 40 KiB fragments").await, Some(1009));

    // A 60 KiB CONNECT is under the cap: it is read and judged (wrong key, CONNACK 5).
    let mut ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let mut connect = Connect::new("wsl");
    connect.login = Some(Login::new(
        hub.username("wsl"),
        hub.device_token(
            "wsl",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            unix_now() + 60,
        ),
    ));
    connect.last_will = Some(rumqttc::mqttbytes::v4::LastWill::new(
        "devices/wsl/messages/events/",
        vec![b'w'; 60 * 1024],
        QoS::AtMostOnce,
        false,
    ));
    ws.send(Message::binary(packet(Packet::Connect(connect))))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws, "CONNACK 5").await, [0x20, 2, 0, 5]);

    // Authenticated: a 200 KiB telemetry message in one WebSocket message is stored and acked.
    let body = vec![b'x'; 200 * 1024];
    let mut publish = Publish::new("devices/wsl/messages/events/", QoS::AtLeastOnce, body);
    publish.pkid = 7;
    keep.send(Message::binary(packet(Packet::Publish(publish))))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut keep, "PUBACK").await, [0x40, 2, 0, 7]);
    let events = recent(&hub, "wsl").await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "telemetry"
                && e["body"].as_str().map(str::len) == Some(200 * 1024)),
        "the 200 KiB message is in the hub"
    );
    alive(&mut keep).await;

    // After auth only a frame over the largest packet (256 KiB + 64 KiB) is too big.
    raw(&mut keep, &frame_header(true, 2, 400 * 1024)).await;
    assert_eq!(ended(&mut keep, "400 KiB after auth").await, Some(1009));

    // The hub serves on.
    let mut again = connected(&hub, "wsl", &key).await;
    alive(&mut again).await;
    hub.stop().await;
}

/// Masked pings of 125 bytes, `total` bytes of them or a little more.
fn pings(total: usize) -> Vec<u8> {
    let mut ping = frame_header(true, 9, 125);
    ping.resize(ping.len() + 125, b'p');
    ping.repeat(total.div_ceil(ping.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_from_a_client_that_does_not_read_pile_up_no_pongs_before_or_after_auth() {
    let hub = TestHub::start_configured(|c| c.limits.connect_deadline = DEADLINE).await;
    hub.create_device("wsp").await;
    let key = hub.device_key("wsp").await;

    // Before auth: 1 MiB of pings, nothing read; closed once they pass twice the 64 KiB cap.
    let mut ws = websocket(&hub, Some("mqtt")).await.unwrap();
    let flood = pings(1024 * 1024);
    let _ = tokio::time::timeout(PROMPT, ws.get_mut().write_all(&flood)).await;
    let code = ended(&mut ws, "a pre-auth ping flood").await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");

    // After auth: 24 MiB of pings sent without reading, then everything read. A pong that
    // finds the hub's write buffer full is dropped (RFC 6455 5.5.3 lets a pong answer only
    // the latest ping), so most never come; before, every one was queued in the hub.
    let mut ws = connected(&hub, "wsp", &key).await;
    let flood = pings(24 * 1024 * 1024);
    let sent = flood.len() / 131;
    let mut rd_ws = ws;
    let writer = {
        tokio::spawn(async move {
            rd_ws.get_mut().write_all(&flood).await.unwrap();
            rd_ws.get_mut().flush().await.unwrap();
            rd_ws
        })
    };
    ws = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the hub takes every ping without the client reading")
        .unwrap();
    ws.send(Message::binary(vec![0xC0u8, 0])).await.unwrap();
    let mut pongs = 0usize;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) => pongs += 1,
                Some(Ok(Message::Binary(b))) if b[..] == [0xD0, 0] => return,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("PINGRESP behind the pongs");
    assert!(pongs < sent / 2, "{pongs} pongs for {sent} pings");
    alive(&mut ws).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_head_over_the_cap_is_refused_and_one_under_it_upgrades() {
    let hub = TestHub::start().await;
    let request = |pad: usize| {
        format!(
            "GET /$iothub/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\
             X-Pad: {}\r\n\r\n",
            hub.hostname,
            "a".repeat(pad)
        )
    };
    // The status line of the answer, or "" if the connection ended without one.
    let answer = |req: String| {
        let hub = &hub;
        async move {
            let mut s = tls(hub).await;
            let (mut rd, mut wr) = tokio::io::split(&mut s);
            let write = async {
                let _ = wr.write_all(req.as_bytes()).await;
                let _ = wr.flush().await;
            };
            let read = async {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(2).any(|w| w == b"\r\n") {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                String::from_utf8_lossy(&got)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            };
            let ((), line) = tokio::time::timeout(PROMPT, async { tokio::join!(write, read) })
                .await
                .expect("answered or closed within 5 s");
            line
        }
    };
    let small = answer(request(4 * 1024)).await;
    assert!(small.starts_with("HTTP/1.1 101"), "{small:?}");
    let big = answer(request(100 * 1024)).await;
    assert!(
        big.is_empty() || big.starts_with("HTTP/1.1 431"),
        "a 100 KiB head: {big:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_512_websockets_wait_unauthenticated_and_a_freed_place_is_taken_again() {
    let hub = TestHub::start_configured(|c| c.limits.connect_deadline = DEADLINE).await;
    assert_eq!(hub_limit(), 512);
    let mut waiting = Vec::new();
    for chunk in 0..16 {
        let batch = futures::future::join_all((0..32).map(|_| websocket(&hub, Some("mqtt")))).await;
        for (i, ws) in batch.into_iter().enumerate() {
            waiting.push(ws.unwrap_or_else(|e| panic!("upgrade {}: {e}", chunk * 32 + i)));
        }
    }
    match websocket(&hub, Some("mqtt")).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("the 513th: expected 503, got {:?}", other.map(|_| "101")),
    }
    // One goes away: its place is free again once the hub has seen it close.
    let mut gone = waiting.pop().unwrap();
    gone.close(None).await.unwrap();
    drop(gone);
    let start = Instant::now();
    loop {
        match websocket(&hub, Some("mqtt")).await {
            Ok(ws) => {
                waiting.push(ws);
                break;
            }
            Err(tungstenite::Error::Http(r)) if r.status().as_u16() == 503 => {
                assert!(start.elapsed() < PROMPT, "no place freed within 5 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Authenticated connections are not counted: a device connects over TCP meanwhile.
    hub.create_device("wsl-tcp").await;
    let key = hub.device_key("wsl-tcp").await;
    let (_c, _el) = hub.connect("wsl-tcp", &key, true).await;
    drop(waiting);
    hub.stop().await;
}

fn hub_limit() -> usize {
    azsim_emulator::HubLimits::default().max_pre_auth_connections
}
