//! The entry points of the hub's cargo-fuzz targets (`fuzz/fuzz_targets/hub_*.rs`; feature
//! `fuzzing`, not part of the API): a real hub core (in-memory store, one registered device)
//! whose MQTT connection logic and REST router are driven over in-memory pipes instead of TLS
//! sockets, with the behaviour checked after every input. Each check panics, which libFuzzer
//! reports as a crash.
//!
//! MQTT (frames in, behaviour out), [`Harness::mqtt`]:
//! - without the harness's CONNECT in front (the fuzzer cannot sign a token), the hub answers
//!   at most one CONNACK and never "accepted": no way in without a key;
//! - with it, the first answer is CONNACK 0; everything after is a packet the hub may send a
//!   device (PUBACK, SUBACK, UNSUBACK, PINGRESP, PUBLISH), every PUBLISH topic parses with the
//!   device-side parser, and the PUBACKs acknowledge QoS 1 PUBLISHes the client sent, in the
//!   order it sent them (MQTT 3.1.1 4.6, with the PUBACKs held for the telemetry commit);
//! - everything the hub writes is well-formed MQTT, and every input ends (no hang).
//!
//! REST, [`Harness::rest`]: raw bytes to the HTTP/1.1 server (never a 2xx: the fuzzer holds no
//! key), or a request built from the input with the owner's token (never a 5xx: the in-memory
//! store does not fail, so a 500 is a bug).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

use crate::hub::Hub;
use crate::store::Store;
use crate::{HubConfig, clock};

/// The one device of the fuzz hub.
pub const DEVICE: &str = "fuzz-device";
/// Its primary key (base64 of 32 bytes 0x01..=0x20).
const DEVICE_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const HOST: &str = "localhost";
const MQTT_PORT: u16 = 8883;
const HTTPS_PORT: u16 = 8443;
/// How long one input may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(10);

/// A hub core for fuzzing (see the module docs).
pub struct Harness {
    rt: tokio::runtime::Runtime,
    hub: Arc<Hub>,
    app: axum::Router,
    /// A CONNECT that authenticates as [`DEVICE`].
    connect: Vec<u8>,
    /// `SharedAccessSignature ...` for `iothubowner`.
    service_auth: String,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// A hub with an in-memory store and [`DEVICE`] registered (through the REST router).
    ///
    /// # Panics
    /// If the store cannot open or the device cannot be registered.
    pub fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let owner_key = crate::state_dir::generate_key();
        let mut cfg = HubConfig::new(std::env::temp_dir().join("azsim-fuzz-unused"));
        cfg.in_memory = true;
        cfg.limits.event_log_cap = 256;
        let far = clock::unix_now() + 10 * 365 * 86_400;
        let mut service_auth = String::new();
        azsim_proto::sas::sign(
            &mut service_auth,
            &format!("{HOST}:{HTTPS_PORT}"),
            &owner_key,
            far,
            Some("iothubowner"),
        )
        .expect("service token");
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            &format!("{HOST}/devices/{DEVICE}"),
            DEVICE_KEY,
            far,
            None,
        )
        .expect("device token");
        let mut c = Connect::new(DEVICE);
        c.keep_alive = 60;
        c.set_login(format!("{HOST}/{DEVICE}/?api-version=2021-04-12"), token);
        let mut connect = BytesMut::new();
        Packet::Connect(c)
            .write(&mut connect, usize::MAX)
            .expect("connect");
        let (hub, app) = rt.block_on(async {
            let store = Store::open(None, cfg.limits.event_log_cap).expect("store");
            let hub = Arc::new(Hub::new(
                cfg,
                owner_key.into(),
                store,
                MQTT_PORT,
                HTTPS_PORT,
            ));
            let app = crate::rest::router(hub.clone());
            (hub, app)
        });
        let h = Harness {
            rt,
            hub,
            app,
            connect: connect.to_vec(),
            service_auth,
        };
        let body = serde_json::json!({
            "deviceId": DEVICE,
            "authentication": {"type": "sas",
                "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}},
        });
        let status = h.rt.block_on(h.call(
            "PUT",
            &format!("/devices/{DEVICE}?api-version=2021-04-12"),
            body.to_string().into_bytes(),
        ));
        assert_eq!(status, Some(200), "registering {DEVICE}");
        h
    }

    /// One MQTT connection: the harness's valid CONNECT first when `authenticated`, then
    /// `frames`, then the client's end closes; the hub's answers are checked (module docs).
    /// Returns how many packets the hub sent.
    ///
    /// # Panics
    /// When the hub's behaviour breaks a rule of the module docs.
    pub fn mqtt(&self, authenticated: bool, frames: &[u8]) -> usize {
        let out = self.rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let hub = self.hub.clone();
            let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
            let task = tokio::spawn(async move {
                if let Some(o) = crate::mqtt::open_stream(&hub, server, peer).await {
                    crate::mqtt::connection(hub, o, peer).await;
                }
            });
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async {
                if authenticated {
                    let _ = wr.write_all(&self.connect).await;
                }
                let _ = wr.write_all(frames).await;
                let _ = wr.shutdown().await;
            };
            let read = async {
                let mut out = Vec::new();
                let _ = rd.read_to_end(&mut out).await;
                out
            };
            let run = async {
                let ((), out) = tokio::join!(write, read);
                let _ = task.await;
                out
            };
            tokio::time::timeout(LIMIT, run)
                .await
                .expect("an MQTT connection did not end")
        });
        check_mqtt(authenticated, frames, &out)
    }

    /// One REST exchange. `input[0]` picks the form: even, the rest are raw bytes for the
    /// HTTP/1.1 server; odd, the rest is `METHOD PATH\n` and a body, sent with the owner's
    /// token.
    ///
    /// # Panics
    /// A 2xx without a key, or a 5xx with one.
    pub fn rest(&self, input: &[u8]) {
        let Some((&form, rest)) = input.split_first() else {
            return;
        };
        if form % 2 == 0 {
            self.rt.block_on(self.raw_http(rest));
            return;
        }
        let (head, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(head) = std::str::from_utf8(head) else {
            return;
        };
        let Some((method, path)) = head.split_once(' ') else {
            return;
        };
        // Calls that wait on the hub's clock or stream forever are not request parsing.
        if path.contains("/methods")
            || path.starts_with("/emulator/events?")
            || path == "/emulator/events"
        {
            return;
        }
        let status = self.rt.block_on(async {
            tokio::time::timeout(LIMIT, self.call(method, path, body.to_vec())).await
        });
        if let Ok(Some(s)) = status {
            assert!(s < 500, "{method} {path}: {s} with a valid token");
        }
    }

    /// `method path` with the owner's token through the router; its status, or `None` when
    /// the request cannot be built (a method or path that is not HTTP).
    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> Option<u16> {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", &self.service_auth)
            .header("Content-Type", "application/json")
            .body(axum::body::Body::from(body))
            .ok()?;
        let resp = self.app.clone().oneshot(req).await.ok()?;
        let status = resp.status().as_u16();
        // Read the body, as a client would (a streaming body could fail only here).
        let _ = axum::body::to_bytes(resp.into_body(), 1 << 20).await;
        Some(status)
    }

    /// Raw bytes to the HTTP/1.1 server, no TLS; every response status line is checked.
    async fn raw_http(&self, bytes: &[u8]) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper_util::service::TowerToHyperService::new(self.app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let serve = tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            let _ = wr.write_all(bytes).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let run = async {
            let ((), out) = tokio::join!(write, read);
            let _ = serve.await;
            out
        };
        let out = tokio::time::timeout(LIMIT, run)
            .await
            .expect("an HTTP connection did not end");
        for status in response_statuses(&out) {
            assert!(
                !(200..300).contains(&status),
                "{status} to a request without a key: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

/// The status of every `HTTP/1.1 NNN` status line at the start of a line in `out`.
fn response_statuses(out: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(out);
    text.split("\r\n")
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect()
}

/// The packets in `bytes` while they parse; the rest (a packet cut short, garbage) is left.
fn packets(bytes: &[u8], max: usize) -> (Vec<Packet>, usize) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(p) = Packet::read(&mut buf, max) {
        out.push(p);
    }
    (out, buf.len())
}

/// The rules of the module docs for one connection: `frames` sent (after the harness's
/// CONNECT when `authenticated`), `out` received. Returns how many packets `out` holds.
fn check_mqtt(authenticated: bool, frames: &[u8], out: &[u8]) -> usize {
    let (answers, left) = packets(out, usize::MAX);
    assert_eq!(left, 0, "the hub wrote a malformed packet: {out:?}");
    let Some((first, rest)) = answers.split_first() else {
        return 0;
    };
    let Packet::ConnAck(ack) = first else {
        panic!("the hub's first packet is {first:?}, not CONNACK");
    };
    if !authenticated {
        assert_ne!(
            ack.code,
            ConnectReturnCode::Success,
            "CONNACK 0 without a key"
        );
        assert!(rest.is_empty(), "packets after a refusal: {rest:?}");
        return answers.len();
    }
    assert_eq!(
        ack.code,
        ConnectReturnCode::Success,
        "the harness's own CONNECT was refused"
    );
    // The QoS 1 PUBLISHes the client sent, in order (the codec stops where the input stops
    // parsing, as the hub does).
    let (sent, _) = packets(frames, usize::MAX);
    let qos1: Vec<u16> = sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => Some(p.pkid),
            _ => None,
        })
        .collect();
    let mut next = 0;
    for p in rest {
        match p {
            Packet::PubAck(a) => {
                // Each PUBACK answers the next unanswered QoS 1 PUBLISH with its id (order kept).
                let at = qos1[next..].iter().position(|&id| id == a.pkid);
                let Some(at) = at else {
                    panic!(
                        "PUBACK {} is not for a later QoS 1 PUBLISH (sent {qos1:?}, {next} answered)",
                        a.pkid
                    );
                };
                next += at + 1;
            }
            Packet::Publish(p) => {
                assert!(
                    azsim_proto::topic::parse_hub_publish(&p.topic).is_ok(),
                    "the hub published on {:?}, which a device cannot parse",
                    p.topic
                );
            }
            Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {}
            other => panic!("the hub sent a device {other:?}"),
        }
    }
    answers.len()
}

#[cfg(test)]
mod tests {
    use rumqttc::mqttbytes::v4::{PubAck, Publish, Subscribe};

    use super::*;

    fn frames(ps: Vec<Packet>) -> Vec<u8> {
        let mut b = BytesMut::new();
        for p in ps {
            p.write(&mut b, usize::MAX).unwrap();
        }
        b.to_vec()
    }

    fn publish(topic: &str, qos: QoS, pkid: u16) -> Packet {
        let mut p = Publish::new(topic, qos, b"{\"t\":1}".to_vec());
        p.pkid = pkid;
        Packet::Publish(p)
    }

    #[test]
    fn the_harness_runs_a_session_and_its_checks_hold() {
        let h = Harness::new();
        let session = frames(vec![
            Packet::Subscribe(Subscribe::new("$iothub/twin/res/#", QoS::AtMostOnce)),
            Packet::Subscribe(Subscribe::new(
                "devices/fuzz-device/messages/devicebound/#",
                QoS::AtLeastOnce,
            )),
            publish(
                "devices/fuzz-device/messages/events/a=1",
                QoS::AtLeastOnce,
                1,
            ),
            publish("$iothub/twin/GET/?$rid=1", QoS::AtLeastOnce, 2),
            publish("devices/fuzz-device/messages/events/", QoS::AtLeastOnce, 3),
            publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=2",
                QoS::AtMostOnce,
                0,
            ),
            Packet::PingReq,
        ]);
        // CONNACK, 2 SUBACKs, the twin and PINGRESP at least (the PUBACKs may not have been
        // committed before the client's end closed).
        let n = h.mqtt(true, &session);
        assert!(n >= 5, "{n} packets");
        // Without the harness's CONNECT: a CONNECT with a made-up token gets CONNACK 5.
        let mut c = Connect::new(DEVICE);
        c.set_login(
            "localhost/fuzz-device/?api-version=2021-04-12",
            "SharedAccessSignature sr=localhost%2Fdevices%2Ffuzz-device&sig=eA%3D%3D&se=4102444800",
        );
        assert_eq!(h.mqtt(false, &frames(vec![Packet::Connect(c)])), 1);
        h.mqtt(false, b"\x10\xff\xff\xff\x7fgarbage");
        h.mqtt(
            true,
            &frames(vec![publish(
                "devices/other/messages/events/",
                QoS::AtLeastOnce,
                9,
            )]),
        );
        h.mqtt(true, b"\x30");
        // REST: raw bytes without a key, a built request with it.
        h.rest(b"\x00GET /devices?api-version=2021-04-12 HTTP/1.1\r\nHost: x\r\n\r\n");
        h.rest(b"\x01GET /devices/fuzz-device?api-version=2021-04-12\n");
        h.rest(b"\x01PATCH /twins/fuzz-device?api-version=2021-04-12\n{\"properties\":{\"desired\":{\"a\":1}}}");
        h.rest(b"\x01PUT /devices/x%2Fy?api-version=2021-04-12\n{\"deviceId\":\"x/y\"}");
    }

    /// The committed seed inputs of the fuzz targets (`fuzz/hub_seeds.py`) pass the checks.
    #[test]
    fn the_fuzz_seeds_pass() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        let h = Harness::new();
        let read = |target: &str| -> Vec<Vec<u8>> {
            std::fs::read_dir(seeds.join(target))
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect()
        };
        let mut n = 0;
        for d in read("hub_mqtt_connection") {
            if let Some((&f, rest)) = d.split_first() {
                let _ = h.mqtt(f % 2 == 1, rest);
            }
            n += 1;
        }
        for d in read("hub_rest_request") {
            h.rest(&d);
            n += 1;
        }
        assert!(n >= 20, "{n} seeds");
    }

    #[test]
    #[should_panic(expected = "is not for a later QoS 1 PUBLISH")]
    fn a_puback_out_of_order_breaks_the_check() {
        let sent = frames(vec![
            publish("devices/fuzz-device/messages/events/", QoS::AtLeastOnce, 1),
            publish("devices/fuzz-device/messages/events/", QoS::AtLeastOnce, 2),
        ]);
        let out = frames(vec![
            Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )),
            Packet::PubAck(PubAck::new(2)),
            Packet::PubAck(PubAck::new(1)),
        ]);
        let _ = check_mqtt(true, &sent, &out);
    }
}
