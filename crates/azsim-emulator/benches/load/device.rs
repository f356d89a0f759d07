//! One simulated device of the load bench: its credentials and topic (from azsim-proto's
//! writers), and its run: CONNECT, then M QoS 1 PUBLISHes timed to their PUBACKs, over a
//! hand-written client (tokio-rustls + the `mqttbytes` codec) that costs both brokers'
//! clients the same little CPU.

use super::*;
use bytes::{Buf as _, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use std::collections::VecDeque;
use std::io::Write as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub(super) fn random_key() -> String {
    azsim_emulator::state_dir::generate_key()
}

/// One simulated device's credentials and topic.
#[derive(Clone)]
pub(super) struct DeviceSpec {
    pub(super) id: String,
    pub(super) username: String,
    pub(super) password: String,
    pub(super) topic: String,
}

pub(super) fn device_spec(host: &str, id: &str, key: &str) -> DeviceSpec {
    let mut password = String::new();
    sas::sign(
        &mut password,
        &sas::Resource::Device {
            host,
            device_id: id,
        },
        key,
        unix_now() + 3600,
        None,
    )
    .expect("sign device token");
    let username = username_for(host, id);
    let mut topic_s = String::new();
    topic::write_telemetry_topic(
        &mut topic_s,
        Identity::device(id),
        &azsim_proto::property_bag::SystemProperties::default(),
        [("bench", "load")],
    )
    .expect("topic");
    DeviceSpec {
        id: id.to_owned(),
        username,
        password,
        topic: topic_s,
    }
}

/// The device's MQTT username, as azsim's own driver sends it.
pub(super) fn username_for(host: &str, id: &str) -> String {
    let mut u = String::new();
    azsim_proto::username::write_username(&mut u, host, id, None, env!("CARGO_PKG_VERSION"), None)
        .expect("username");
    u
}

pub(super) enum DeviceOutcome {
    ConnectFailed(String),
    Done {
        latencies_us: Vec<u64>,
        error: Option<String>,
        acked: usize,
    },
}

/// The most bytes one packet from the broker may take (they send PUBACKs and a CONNACK).
const MAX_INCOMING: usize = 64 * 1024;

/// One device's TLS connection after its CONNACK, and what it has read beyond it.
pub(super) struct Link {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

/// TCP + TLS + CONNECT (clean session off, keep-alive 240 s, the SAS username and password)
/// through a successful CONNACK, within 60 s.
pub(super) async fn connect_device(
    spec: &DeviceSpec,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Link, String> {
    let open = async {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let mut connect = Connect::new(spec.id.clone());
        connect.keep_alive = 240;
        connect.clean_session = false;
        connect.set_login(spec.username.clone(), spec.password.clone());
        let mut out = BytesMut::new();
        Packet::Connect(connect)
            .write(&mut out, usize::MAX)
            .map_err(|e| e.to_string())?;
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match Packet::read(&mut buf, MAX_INCOMING) {
                Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    return Ok(Link { stream, buf });
                }
                Ok(Packet::ConnAck(ack)) => return Err(format!("connack {:?}", ack.code)),
                Ok(other) => return Err(format!("expected CONNACK, got {other:?}")),
                Err(MqttError::InsufficientBytes(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("closed before CONNACK".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), open)
        .await
        .unwrap_or_else(|_| Err("no CONNACK within 60 s".into()))
}

/// The device's PUBLISH, encoded once with packet id 1, and where its packet id sits.
struct Template {
    bytes: Vec<u8>,
    pkid_at: usize,
}

impl Template {
    fn new(topic: &str, payload: usize) -> Template {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, vec![b'x'; payload]);
        p.pkid = 1;
        let mut out = BytesMut::new();
        Packet::Publish(p)
            .write(&mut out, usize::MAX)
            .expect("encode PUBLISH");
        let pkid_at = out.len() - payload - 2;
        debug_assert_eq!(&out[pkid_at..pkid_at + 2], &[0, 1]);
        Template {
            bytes: out.to_vec(),
            pkid_at,
        }
    }

    /// Appends the PUBLISH with packet id `pkid` to `out`.
    fn put(&self, out: &mut BytesMut, pkid: u16) {
        let at = out.len() + self.pkid_at;
        out.extend_from_slice(&self.bytes);
        out[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
    }
}

/// One device: connect (at most `connect_concurrency` handshakes at a time), wait for everyone,
/// then send `messages` QoS 1 PUBLISHes with up to `window` unacknowledged, each one's latency
/// from the write that carried it to its PUBACK.
///
/// The client is lean on purpose and the same for both brokers: whatever the window lets out
/// goes in one socket write, every PUBACK a read brought is handled before the next write, the
/// PUBLISH is encoded once and only its packet id changes. Each PUBLISH is its own TLS record
/// (as an SDK device's MQTT client writes them), or with `--records batch` those of one write
/// share records (up to 16 KiB each).
pub(super) async fn run_device(
    spec: DeviceSpec,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    p: Arc<Params>,
    connect_gate: Arc<Semaphore>,
    connected: Arc<Barrier>,
    start: Arc<Barrier>,
) -> DeviceOutcome {
    let connect = {
        let _permit = connect_gate.acquire().await;
        connect_device(&spec, port, &tls).await
    };
    connected.wait().await;
    start.wait().await;
    let mut link = match connect {
        Ok(l) => l,
        Err(e) => return DeviceOutcome::ConnectFailed(e),
    };
    let template = Template::new(&spec.topic, p.payload);
    let window = usize::from(p.window).min(p.messages.max(1));
    let mut out = BytesMut::with_capacity(template.bytes.len() * window);
    let mut inflight: VecDeque<(u16, Instant)> = VecDeque::with_capacity(window);
    let mut latencies_us = Vec::with_capacity(p.messages);
    let mut sent = 0usize;
    let mut error = None;
    while latencies_us.len() < p.messages {
        if sent < p.messages && inflight.len() < window {
            let now = Instant::now();
            while sent < p.messages && inflight.len() < window {
                let pkid = (sent % usize::from(u16::MAX)) as u16 + 1;
                template.put(&mut out, pkid);
                inflight.push_back((pkid, now));
                sent += 1;
                if p.record_per_message {
                    // Into the TLS session as its own record; the socket write comes below.
                    let taken = link.stream.get_mut().1.writer().write(&out).unwrap_or(0);
                    if taken == out.len() {
                        out.clear();
                    } else {
                        // The session's send buffer is full: what is left goes below.
                        out.advance(taken);
                        break;
                    }
                }
            }
            if let Err(e) = link.stream.write_all(&out).await {
                error = Some(format!("write: {e}"));
                break;
            }
            out.clear();
            if let Err(e) = link.stream.flush().await {
                error = Some(format!("write: {e}"));
                break;
            }
        }
        match link.stream.read_buf(&mut link.buf).await {
            Ok(0) => {
                error = Some("closed by the broker".into());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                error = Some(format!("read: {e}"));
                break;
            }
        }
        loop {
            match Packet::read(&mut link.buf, MAX_INCOMING) {
                Ok(Packet::PubAck(ack)) => {
                    // PUBACKs come in PUBLISH order (MQTT 3.1.1 4.6); look further if not.
                    let at = inflight.iter().position(|(id, _)| *id == ack.pkid);
                    if let Some((_, t)) = at.and_then(|i| inflight.remove(i)) {
                        latencies_us.push(t.elapsed().as_micros() as u64);
                    }
                }
                Ok(_) => {}
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if error.is_some() {
            break;
        }
    }
    let acked = latencies_us.len();
    // DISCONNECT, then close (bounded: a broken connection just ends here).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = link.stream.write_all(&[0xE0, 0x00]).await;
        let _ = link.stream.shutdown().await;
    })
    .await;
    DeviceOutcome::Done {
        latencies_us,
        error,
        acked,
    }
}
