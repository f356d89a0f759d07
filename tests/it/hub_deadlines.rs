//! Every connection has a deadline until it is authenticated (issue 11 item 4): a client that
//! trickles its CONNECT, never starts TLS, announces a CONNECT bigger than the pre-auth cap,
//! sits idle on the HTTPS port, half-sends its headers or stalls its request body (408) is
//! closed; at the cap on unauthenticated connections new ones wait in the backlog; stalled
//! clients do not keep a real device or a REST call out; and a hub out of file descriptors
//! backs off instead of spinning.
//!
//! Real sockets against a hub with short deadlines. Each test measures when the hub closed the
//! socket and checks it against the configured deadline (not before it, and within a generous
//! margin after it); the client's own pauses only pace its trickle.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::support::{TestHub, wait_connack};

/// How late after its deadline the hub may close a socket and still pass (a loaded 2-core CI
/// machine; the deadlines under test are 1-2 s).
const MARGIN: Duration = Duration::from_secs(4);

/// How long a test waits for a close at all before it fails (the longest deadline a test
/// configures is 30 s, for the deadlines it does not test).
const GIVE_UP: Duration = Duration::from_secs(20);

/// An in-memory hub with `f` applied to its limits.
async fn hub_with(f: impl FnOnce(&mut azsim_emulator::HubLimits)) -> TestHub {
    TestHub::start_configured(|cfg| f(&mut cfg.limits)).await
}

async fn tcp(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

async fn tls(hub: &TestHub, port: u16) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(hub.tls());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp(port).await).await.unwrap()
}

/// The bytes of an MQTT 3.1.1 CONNECT.
fn connect_bytes(client_id: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut c = Connect::new(client_id);
    c.set_login("localhost/d/?api-version=2021-04-12", "x".repeat(200));
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

/// Sends `bytes` one byte per `every` until the peer closes the connection (read EOF, a read
/// or write error); returns when it did, and how many bytes had gone out.
async fn trickle_until_closed(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    bytes: &[u8],
    every: Duration,
) -> (Instant, usize) {
    let mut sent = 0;
    let mut buf = [0u8; 256];
    let mut next = Instant::now();
    let give_up = tokio::time::sleep(GIVE_UP);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (Instant::now(), sent),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(next), if sent < bytes.len() => {
                if s.write_all(&bytes[sent..=sent]).await.is_err() || s.flush().await.is_err() {
                    return (Instant::now(), sent);
                }
                sent += 1;
                next += every;
            }
            () = &mut give_up => panic!("still open after {GIVE_UP:?} of trickling"),
        }
    }
}

/// Reads until the peer closes; when it did.
async fn until_closed(s: &mut (impl AsyncRead + Unpin)) -> Instant {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(GIVE_UP, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.unwrap_or_else(|_| panic!("still open after {GIVE_UP:?}"))
}

/// `closed - start` lies in `[deadline, deadline + MARGIN]` (less a few ms of timer slack).
fn assert_closed_at(what: &str, start: Instant, closed: Instant, deadline: Duration) {
    let took = closed - start;
    assert!(
        took + Duration::from_millis(50) >= deadline,
        "{what}: closed after {took:?}, before its deadline of {deadline:?}"
    );
    assert!(
        took <= deadline + MARGIN,
        "{what}: closed only after {took:?} (deadline {deadline:?})"
    );
}

#[tokio::test]
async fn a_client_trickling_its_connect_is_closed_at_the_total_connect_deadline() {
    let deadline = Duration::from_secs(2);
    let hub = hub_with(|l| l.connect_deadline = deadline).await;
    let start = Instant::now();
    let mut s = tls(&hub, hub.mqtt_port).await;
    // One byte every 200 ms: every read is quick, only the total is late (the CONNECT would
    // take ~50 s).
    let bytes = connect_bytes("trickler");
    let (closed, sent) = trickle_until_closed(&mut s, &bytes, Duration::from_millis(200)).await;
    assert!(
        sent < bytes.len(),
        "the whole CONNECT went out ({sent} bytes)"
    );
    assert_closed_at("trickled CONNECT", start, closed, deadline);
    hub.stop().await;
}

#[tokio::test]
async fn a_client_that_never_starts_tls_is_closed_at_the_connect_deadline_on_both_ports() {
    let deadline = Duration::from_secs(1);
    let hub = hub_with(|l| {
        l.connect_deadline = deadline;
        l.http_header_timeout = Duration::from_secs(30);
        l.http_idle_timeout = Duration::from_secs(30);
    })
    .await;
    for port in [hub.mqtt_port, hub.https_port] {
        let start = Instant::now();
        let mut s = tcp(port).await;
        let closed = until_closed(&mut s).await;
        assert_closed_at(&format!("silent TCP on {port}"), start, closed, deadline);
        // And one that finishes TLS but never sends a packet or a request.
        let start = Instant::now();
        let mut s = tls(&hub, port).await;
        let closed = until_closed(&mut s).await;
        assert_closed_at(&format!("silent TLS on {port}"), start, closed, deadline);
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_connect_bigger_than_the_pre_auth_cap_is_closed_before_its_body_arrives() {
    let hub = hub_with(|l| {
        l.pre_auth_max_bytes = 4096;
        l.connect_deadline = Duration::from_secs(30);
    })
    .await;
    let mut s = tls(&hub, hub.mqtt_port).await;
    // A CONNECT fixed header announcing 100 KiB (remaining length 102400: over the cap, under
    // the limit on an authenticated connection's packets), and nothing more.
    s.write_all(&[0x10, 0x80, 0xA0, 0x06]).await.unwrap();
    s.flush().await.unwrap();
    let start = Instant::now();
    let closed = until_closed(&mut s).await;
    assert!(
        closed - start < Duration::from_secs(5),
        "still open after {:?} with a 30 s deadline",
        closed - start
    );
    // A CONNECT under the cap still gets its answer (CONNACK 5: the token is nonsense).
    let mut s = tls(&hub, hub.mqtt_port).await;
    s.write_all(&connect_bytes("small")).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x05], "CONNACK 5");
    hub.stop().await;
}

#[tokio::test]
async fn an_idle_https_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_secs(1);
    let hub = hub_with(|l| {
        l.http_idle_timeout = idle;
        l.http_header_timeout = Duration::from_secs(30);
        l.connect_deadline = Duration::from_secs(30);
    })
    .await;
    let mut s = tls(&hub, hub.https_port).await;
    let req = format!(
        "GET /devices?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
        hub.service_token()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the whole response (200 with an empty JSON array), then stay idle.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"[]") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let start = Instant::now();
    let closed = until_closed(&mut s).await;
    assert_closed_at("idle keep-alive connection", start, closed, idle);
    hub.stop().await;
}

#[tokio::test]
async fn half_sent_http_headers_are_closed_at_the_header_timeout() {
    let header = Duration::from_secs(1);
    let hub = hub_with(|l| {
        l.http_header_timeout = header;
        l.http_idle_timeout = Duration::from_secs(30);
        l.connect_deadline = Duration::from_secs(30);
    })
    .await;
    let mut s = tls(&hub, hub.https_port).await;
    let start = Instant::now();
    let head = b"GET /devices?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    s.write_all(head).await.unwrap();
    // ... then one more header byte every 200 ms, never the blank line.
    let (closed, _) = trickle_until_closed(&mut s, &[b'a'; 1000], Duration::from_millis(200)).await;
    assert_closed_at("half-sent headers", start, closed, header);
    hub.stop().await;
}

/// A request whose headers are in but whose body trickles (or stalls): 408 at the body
/// deadline, then the connection closes; the hub keeps serving (the same request sent whole
/// creates the device).
#[tokio::test]
async fn a_request_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    let body_limit = Duration::from_secs(1);
    let hub = hub_with(|l| {
        l.http_body_timeout = body_limit;
        l.http_header_timeout = Duration::from_secs(30);
        l.http_idle_timeout = Duration::from_secs(30);
        l.connect_deadline = Duration::from_secs(30);
    })
    .await;
    let body = br#"{"deviceId":"slow-body","authentication":{"type":"sas"}}"#;
    let head = format!(
        "PUT /devices/slow-body?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        hub.service_token(),
        body.len()
    );
    for (what, every) in [
        // Ten bytes then nothing.
        ("stalled body", None),
        // One byte every 200 ms: every read is quick, only the total is late (~11 s).
        ("trickled body", Some(Duration::from_millis(200))),
    ] {
        let mut s = tls(&hub, hub.https_port).await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..10]).await.unwrap();
        s.flush().await.unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut sent = 10;
        let mut buf = [0u8; 4096];
        let mut next = Instant::now();
        let closed = tokio::time::timeout(GIVE_UP, async {
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    },
                    () = tokio::time::sleep_until(next), if every.is_some() && sent < body.len() => {
                        if s.write_all(&body[sent..=sent]).await.is_err() || s.flush().await.is_err() {
                            return Instant::now();
                        }
                        sent += 1;
                        next += every.unwrap_or_default();
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {GIVE_UP:?}"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{what}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{what}: {text}"
        );
        assert!(sent < body.len(), "{what}: the whole body went out");
        assert_closed_at(what, start, closed, body_limit);
    }
    let (status, v) = hub
        .rest(reqwest::Method::GET, "/devices/slow-body", None)
        .await;
    assert_eq!(status, 404, "a timed-out PUT created the device: {v}");
    let (status, v) = hub
        .rest(
            reqwest::Method::PUT,
            "/devices/slow-body",
            Some(serde_json::from_slice(body).unwrap()),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    hub.stop().await;
}

#[tokio::test]
async fn at_the_cap_on_unauthenticated_connections_new_ones_wait_and_are_served_when_a_place_frees()
{
    let hub = hub_with(|l| {
        l.max_pre_auth_connections = 3;
        l.connect_deadline = Duration::from_secs(30);
    })
    .await;
    // Three TLS connections that never send a CONNECT: each holds a pre-auth place (their
    // handshake finished, so the hub has accepted them).
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(tls(&hub, hub.mqtt_port).await);
    }
    let key = {
        // REST has its own cap: unaffected by the MQTT one.
        hub.create_device("capped").await;
        hub.device_key("capped").await
    };
    // A device now waits in the listen backlog: not accepted (no TLS handshake, so no
    // CONNACK), and not refused either.
    let mut opts = hub.device_options("capped", &key, true);
    opts.set_keep_alive(Duration::from_secs(60));
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 4);
    let mut net = el.network_options();
    net.set_connection_timeout(60);
    el.set_network_options(net);
    let waiting = tokio::spawn(async move { wait_connack(&mut el).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "over the cap a device was answered before a place freed: {:?}",
        waiting.await
    );
    // One stalled client leaves: its place frees and the waiting device gets in.
    drop(stalled.pop());
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting device is served once a place frees")
        .expect("task");
    assert!(
        matches!(answer, Ok(rumqttc::ConnectReturnCode::Success)),
        "{answer:?}"
    );
    drop(stalled);
    hub.stop().await;
}

#[tokio::test]
async fn while_stalled_clients_hold_both_ports_a_device_connects_and_rest_works() {
    let hub = hub_with(|l| {
        l.connect_deadline = Duration::from_secs(30);
        l.http_header_timeout = Duration::from_secs(30);
        l.http_idle_timeout = Duration::from_secs(30);
    })
    .await;
    let conn_string = hub.create_device("real").await;
    assert!(!conn_string.is_empty());
    let key = hub.device_key("real").await;
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for port in [hub.mqtt_port, hub.https_port] {
        for _ in 0..20 {
            held.push(Box::new(tcp(port).await));
        }
        for _ in 0..20 {
            held.push(Box::new(tls(&hub, port).await));
        }
    }
    // And some that have sent half a CONNECT or half a request head.
    for _ in 0..10 {
        let mut s = tls(&hub, hub.mqtt_port).await;
        s.write_all(&connect_bytes("half")[..20]).await.unwrap();
        held.push(Box::new(s));
        let mut s = tls(&hub, hub.https_port).await;
        s.write_all(b"GET /devices HTTP/1.1\r\nHost: l")
            .await
            .unwrap();
        held.push(Box::new(s));
    }
    let (_c, mut el) = rumqttc::AsyncClient::new(hub.device_options("real", &key, true), 4);
    assert_eq!(
        wait_connack(&mut el).await.unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
    let (status, v) = hub.rest(reqwest::Method::GET, "/devices/real", None).await;
    assert_eq!(status, 200, "{v}");
    drop(held);
    hub.stop().await;
}

/// `azsim hub` under a 64-descriptor limit (util-linux `prlimit`): 150 clients that connect and
/// say nothing use up its descriptors. The accept errors (EMFILE) are logged once, not once per
/// retry, and once the clients leave the hub serves a device and a REST call again.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_out_of_file_descriptors_backs_off_and_serves_again_once_they_free() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    if Command::new("prlimit").arg("--version").output().is_err() {
        return crate::support::skip("prlimit (util-linux) is not installed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let log_path = tmp.path().join("hub.stderr");
    let mut child = Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--json",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    let hub = TestHub::attach(&info);
    hub.create_device("fd-dev").await;
    let key = hub.device_key("fd-dev").await;

    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(tcp(info.mqtt_port).await);
    }
    let accept_failures = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    // The first failure is logged at once; then 2 s of a listener out of descriptors.
    let until = Instant::now() + GIVE_UP;
    while accept_failures() == 0 {
        assert!(
            Instant::now() < until,
            "the hub never ran out of descriptors"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = accept_failures();
    assert_eq!(
        logged,
        1,
        "{logged} accept-failure lines in 2 s:\n{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    drop(held);
    let until = Instant::now() + GIVE_UP;
    loop {
        let (_c, mut el) = rumqttc::AsyncClient::new(hub.device_options("fd-dev", &key, true), 4);
        match wait_connack(&mut el).await {
            Ok(rumqttc::ConnectReturnCode::Success) => break,
            other => assert!(
                Instant::now() < until,
                "no device connected after the descriptors freed: {other:?}"
            ),
        }
    }
    let (status, v) = hub
        .rest(reqwest::Method::GET, "/devices/fd-dev", None)
        .await;
    assert_eq!(status, 200, "{v}");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
