//! The provisioning mode against scripted DPS peers and a fake clock: the exchange in order
//! (throttled, assigning, assigned, with PUBACKs before DISCONNECT), refusals, garbage and
//! silence as typed errors.

use super::*;
use core::convert::Infallible;
use core::task::Context;
use mqttrs::{Connack, ConnectReturnCode, Packet, QoS as MqttQoS, Suback, SubscribeReturnCodes};
use std::collections::VecDeque;
use std::string::ToString;
use std::vec::Vec;

const KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=";
const START: u64 = 1_700_000_000_000;

/// A DPS peer playing a script: each read returns the next chunk, an empty chunk is silence
/// (the read waits, so the timer wins), the end of the script is the end of the stream. What
/// the device writes is kept.
struct Peer {
    chunks: VecDeque<Vec<u8>>,
    written: Vec<u8>,
    connects: u32,
}

impl embedded_io_async::ErrorType for Peer {
    type Error = Infallible;
}

impl Read for Peer {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        match self.chunks.pop_front() {
            None => Ok(0),
            Some(c) if c.is_empty() => core::future::pending().await,
            Some(c) => {
                buf[..c.len()].copy_from_slice(&c);
                Ok(c.len())
            }
        }
    }
}

impl Write for Peer {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl Connector for Peer {
    type Conn<'a> = &'a mut Peer;

    async fn connect(&mut self) -> Result<&mut Peer, DisconnectReason> {
        self.connects += 1;
        Ok(self)
    }
}

/// Time that jumps to whatever the loop waits for.
struct Jump(u64);

impl Clock for Jump {
    fn now(&mut self) -> u64 {
        self.0
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        self.0 = self.0.max(unix_ms);
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(core::task::Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(x) = f.as_mut().poll(&mut cx) {
            return x;
        }
    }
}

fn bytes(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = std::vec![0u8; 8192];
    let n = mqttrs::encode_slice(p, &mut buf).expect("encode");
    buf[..n].to_vec()
}

fn connack(code: ConnectReturnCode) -> Vec<u8> {
    bytes(&Packet::Connack(Connack {
        session_present: false,
        code,
    }))
}

fn suback(ok: bool) -> Vec<u8> {
    bytes(&Packet::Suback(Suback {
        pid: Pid::try_from(1).unwrap(),
        return_codes: core::iter::once(if ok {
            SubscribeReturnCodes::Success(MqttQoS::AtLeastOnce)
        } else {
            SubscribeReturnCodes::Failure
        })
        .collect(),
    }))
}

/// A DPS answer at QoS 1 with packet id `pid` (0: QoS 0).
fn answer(topic: &str, body: &str, pid: u16) -> Vec<u8> {
    bytes(&Packet::Publish(mqttrs::Publish {
        dup: false,
        qospid: match pid {
            0 => QosPid::AtMostOnce,
            n => QosPid::AtLeastOnce(Pid::try_from(n).unwrap()),
        },
        retain: false,
        topic_name: topic,
        payload: body.as_bytes(),
    }))
}

/// The packets the device wrote, decoded.
fn sent(written: &[u8]) -> Vec<std::string::String> {
    let mut out = Vec::new();
    let mut rest = written;
    while let Ok(Some(n)) = wire::frame_len(rest) {
        out.push(match mqttrs::decode_slice(&rest[..n]) {
            Ok(Some(Packet::Connect(c))) => std::format!(
                "CONNECT {} {} {}",
                c.client_id,
                c.username.unwrap_or(""),
                c.password.map_or("-", |p| {
                    if p.starts_with(
                        b"SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1&sig=",
                    ) {
                        "token"
                    } else {
                        "?"
                    }
                })
            ),
            Ok(Some(Packet::Subscribe(s))) => {
                std::format!("SUBSCRIBE {}", s.topics[0].topic_path.as_str())
            }
            Ok(Some(Packet::Publish(p))) => std::format!(
                "PUBLISH {} {}",
                p.topic_name,
                core::str::from_utf8(p.payload).unwrap()
            ),
            Ok(Some(Packet::Puback(pid))) => std::format!("PUBACK {}", pid.get()),
            Ok(Some(Packet::Disconnect)) => "DISCONNECT".into(),
            other => std::format!("{other:?}"),
        });
        rest = &rest[n..];
    }
    out
}

fn run(
    chunks: Vec<Vec<u8>>,
    credential: DpsCredential<'_>,
) -> (
    Result<Assignment, ProvisionError>,
    Vec<std::string::String>,
    u64,
    Vec<DpsNote>,
) {
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut p = Provisioning::<[u8]>::new(
        DpsIdentity {
            id_scope: "0ne00000001",
            registration_id: "dev-1",
            payload: Some(r#"{"fw":"1"}"#),
        },
        credential,
        &mut rx,
        &mut tx,
    )
    .expect("provisioning");
    let mut peer = Peer {
        chunks: chunks.into(),
        written: Vec::new(),
        connects: 0,
    };
    let mut clock = Jump(START);
    let mut notes = Vec::new();
    let r = block_on(p.run(&mut peer, &mut clock, &mut |n| notes.push(n)));
    assert_eq!(peer.connects, 1);
    (r, sent(&peer.written), clock.0 - START, notes)
}

#[test]
fn throttled_then_assigning_then_assigned_with_pubacks_before_disconnect() {
    let assigned = r#"{"operationId":"op.1","status":"assigned","registrationState":{"registrationId":"dev-1","assignedHub":"hub.example:8884","deviceId":"d-1","status":"assigned","substatus":"initialAssignment"}}"#;
    let (r, sent, elapsed, notes) = run(
        std::vec![
            connack(ConnectReturnCode::Accepted),
            suback(true),
            answer("$dps/registrations/res/429/?$rid=1&retry-after=2", "", 0),
            Vec::new(),
            answer(
                "$dps/registrations/res/202/?$rid=2&retry-after=1",
                r#"{"operationId":"op.1","status":"assigning"}"#,
                11,
            ),
            Vec::new(),
            answer("$dps/registrations/res/200/?$rid=3", assigned, 12),
        ],
        DpsCredential::Key(Secret::new(KEY)),
    );
    let a = r.expect("assigned");
    assert_eq!(a.assigned_hub.as_str(), "hub.example:8884");
    assert_eq!(a.hub(), Some(("hub.example", Some(8884))));
    assert_eq!(a.device_id.as_str(), "d-1");
    assert_eq!(a.substatus.as_deref(), Some("initialAssignment"));
    assert_eq!(
        sent,
        [
            "CONNECT dev-1 0ne00000001/registrations/dev-1/api-version=2019-03-31 token",
            "SUBSCRIBE $dps/registrations/res/#",
            r#"PUBLISH $dps/registrations/PUT/iotdps-register/?$rid=1 {"registrationId":"dev-1","payload":{"fw":"1"}}"#,
            r#"PUBLISH $dps/registrations/PUT/iotdps-register/?$rid=2 {"registrationId":"dev-1","payload":{"fw":"1"}}"#,
            "PUBACK 11",
            "PUBLISH $dps/registrations/GET/iotdps-get-operationstatus/?$rid=3&operationId=op.1 {}",
            "PUBACK 12",
            "DISCONNECT",
        ]
    );
    assert_eq!(elapsed, 3_000, "2 s after the 429, 1 s after the 202");
    assert_eq!(
        notes,
        [
            DpsNote::Connecting,
            DpsNote::Connected,
            DpsNote::Throttled {
                status: 429,
                retry_after_s: 2
            },
            DpsNote::Assigning { retry_after_s: 1 },
        ]
    );
}

#[test]
fn refusals_garbage_and_silence_are_typed_errors() {
    let up = || std::vec![connack(ConnectReturnCode::Accepted), suback(true)];
    // DPS's 401 with its body: status, code and message; DISCONNECT after it.
    let mut script = up();
    script.push(answer(
        "$dps/registrations/res/401/?$rid=1",
        r#"{"errorCode":401002,"trackingId":"t","message":"Unauthorized","timestampUtc":"x"}"#,
        0,
    ));
    let (r, sent, _, _) = run(script, DpsCredential::Key(Secret::new(KEY)));
    let e = r.unwrap_err();
    assert_eq!(
        e.to_string(),
        "dps refused the registration: 401 401002: Unauthorized"
    );
    assert_eq!(sent.last().map(|s| s.as_str()), Some("DISCONNECT"));
    // X.509: CONNECT without a password; CONNACK 5.
    let (r, sent, _, _) = run(
        std::vec![connack(ConnectReturnCode::NotAuthorized)],
        DpsCredential::X509,
    );
    assert_eq!(
        r.unwrap_err(),
        ProvisionError::Connect(DisconnectReason::Refused(ConnackCode::NotAuthorized))
    );
    assert_eq!(
        sent,
        ["CONNECT dev-1 0ne00000001/registrations/dev-1/api-version=2019-03-31 -"]
    );
    // A refused subscription.
    let (r, _, _, _) = run(
        std::vec![connack(ConnectReturnCode::Accepted), suback(false)],
        DpsCredential::X509,
    );
    assert_eq!(r.unwrap_err(), ProvisionError::SubscribeRefused);
    // Bytes that are not MQTT.
    let mut script = up();
    script.push(std::vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_eq!(
        run(script, DpsCredential::X509).0.unwrap_err(),
        ProvisionError::NotMqtt
    );
    // A 202 without an operation id.
    let mut script = up();
    script.push(answer(
        "$dps/registrations/res/202/?$rid=1",
        r#"{"status":"assigning"}"#,
        0,
    ));
    assert_eq!(
        run(script, DpsCredential::X509).0.unwrap_err(),
        ProvisionError::Response(DpsError::Body)
    );
    // The stream ends before an answer.
    assert_eq!(
        run(up(), DpsCredential::X509).0.unwrap_err(),
        ProvisionError::Connect(DisconnectReason::Lost)
    );
    // Silence after the register request: the timeout, on the loop's clock.
    let mut script = up();
    script.push(Vec::new());
    let (r, _, elapsed, _) = run(script, DpsCredential::X509);
    assert_eq!(r.unwrap_err(), ProvisionError::TimedOut);
    assert_eq!(elapsed, DEFAULT_TIMEOUT_MS);
    // An answer too large for the receive buffer.
    let mut script = up();
    let big = std::format!(r#"{{"status":"{}"}}"#, "x".repeat(2000));
    let mut big = answer("$dps/registrations/res/202/?$rid=1", &big, 0);
    big.truncate(1024);
    script.push(big);
    assert_eq!(
        run(script, DpsCredential::X509).0.unwrap_err(),
        ProvisionError::PacketTooLarge
    );
}

#[test]
fn a_refusal_is_final_and_network_trouble_is_transient() {
    let e = ProvisionError::Refused {
        status: 404,
        error_code: Some(404201),
        message: Some(clip("not found")),
    };
    assert_eq!(
        e.to_string(),
        "dps refused the registration: 404 404201: not found"
    );
    assert!(!e.is_transient());
    assert!(ProvisionError::Connect(DisconnectReason::Unreachable).is_transient());
    assert!(ProvisionError::TimedOut.is_transient());
    assert!(
        !ProvisionError::Connect(DisconnectReason::Refused(ConnackCode::NotAuthorized))
            .is_transient()
    );
    // Messages are cut at a character boundary.
    let c: String<MESSAGE_LEN> = clip(&"é".repeat(200));
    assert_eq!(c.len(), 256);
    let c: String<4> = clip("aéé");
    assert_eq!(c.as_str(), "aé");
}

#[test]
fn an_unusable_key_small_buffers_or_a_huge_id_are_refused_up_front() {
    let id = DpsIdentity {
        id_scope: "0ne00000001",
        registration_id: "dev-1",
        payload: None,
    };
    let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
    let e = Provisioning::<[u8]>::new(
        id,
        DpsCredential::Key(Secret::new("not base64!")),
        &mut rx,
        &mut tx,
    )
    .unwrap_err();
    assert!(matches!(e, ProvisionError::Key(_)), "{e:?}");
    let (mut small, mut tx) = ([0u8; 100], [0u8; 512]);
    let e = Provisioning::<[u8]>::new(id, DpsCredential::X509, &mut small, &mut tx).unwrap_err();
    assert_eq!(e, ProvisionError::BufferTooSmall);
    let long = "r".repeat(600);
    let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
    let e = Provisioning::<[u8]>::new(
        DpsIdentity {
            registration_id: &long,
            ..id
        },
        DpsCredential::X509,
        &mut rx,
        &mut tx,
    )
    .unwrap_err();
    assert_eq!(e, ProvisionError::IdTooLong);
    // Debug shows no key.
    let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
    let p = Provisioning::<[u8]>::new(id, DpsCredential::Key(Secret::new(KEY)), &mut rx, &mut tx)
        .unwrap();
    assert!(!std::format!("{p:?}").contains(KEY));
}
