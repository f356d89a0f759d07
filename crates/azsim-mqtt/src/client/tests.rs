//! The loop end to end, against scripted hubs and clocks.

use super::*;
use azsim_proto::device::{DeviceConfig, RandomWalk};
use core::convert::Infallible;
use core::pin::pin;
use core::task::{Context, Poll};
use mqttrs::Packet;
use std::vec::Vec;

/// An in-memory peer: reads come from a script, writes are kept.
struct Scripted {
    incoming: Vec<u8>,
    written: Vec<u8>,
}

impl embedded_io_async::ErrorType for Scripted {
    type Error = Infallible;
}

impl Read for Scripted {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = self.incoming.len().min(buf.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.drain(..n);
        Ok(n)
    }
}

impl Write for Scripted {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl Connector for Scripted {
    type Conn<'a> = &'a mut Scripted;

    async fn connect(&mut self) -> Result<&mut Scripted, DisconnectReason> {
        Ok(self)
    }
}

struct Fixed;

impl Clock for Fixed {
    fn now(&mut self) -> u64 {
        1_700_000_000_000
    }

    async fn sleep_until(&mut self, _: u64) {}
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_token_is_wiped_from_the_transmit_buffer_once_connect_is_written() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let device = Device::new(
        RandomWalk::new(1),
        DeviceConfig {
            interval_ms: 10_000,
            version: "0.1.0",
        },
    );
    let mut client = Client::new(
        Identity {
            host: "hub.example.net",
            device_id: "board-1",
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        device,
        SessionConfig::default(),
        7,
        &mut rx,
        &mut tx,
    )
    .unwrap();
    // CONNACK 5 (not authorized): the session gives up after this one connection.
    let mut peer = Scripted {
        incoming: std::vec![0x20, 0x02, 0x00, 0x05],
        written: Vec::new(),
    };
    let mut notes = |_: Note<'_>| {};
    let reason = block_on(client.run(&mut peer, &mut Fixed, &mut notes));
    assert_eq!(
        reason,
        Err(GiveUpReason::Refused(ConnackCode::from_u8(5).unwrap()))
    );
    drop(client);
    assert!(contains(&peer.written, b"SharedAccessSignature sr="));
    assert!(!contains(&tx, b"SharedAccessSignature"));
    assert!(!contains(&tx, b"&sig="));
}

/// A hub that plays one script per connection: each read returns the next chunk, an
/// empty chunk is silence (the read waits for the timer), the end of the script is EOF.
/// What the client writes is kept per connection.
struct Hub {
    scripts: std::collections::VecDeque<Vec<Vec<u8>>>,
    written: Vec<Vec<u8>>,
}

struct HubConn<'a> {
    chunks: std::collections::VecDeque<Vec<u8>>,
    out: &'a mut Vec<u8>,
}

impl embedded_io_async::ErrorType for HubConn<'_> {
    type Error = Infallible;
}

impl Read for HubConn<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        match self.chunks.pop_front() {
            None => Ok(0),
            Some(c) if c.is_empty() => core::future::pending().await,
            Some(mut c) => {
                // What does not fit is read next time.
                let n = c.len().min(buf.len());
                buf[..n].copy_from_slice(&c[..n]);
                if n < c.len() {
                    self.chunks.push_front(c.split_off(n));
                }
                Ok(n)
            }
        }
    }
}

impl Write for HubConn<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl Connector for Hub {
    type Conn<'a> = HubConn<'a>;

    async fn connect(&mut self) -> Result<HubConn<'_>, DisconnectReason> {
        let chunks = self
            .scripts
            .pop_front()
            .ok_or(DisconnectReason::Unreachable)?;
        self.written.push(Vec::new());
        Ok(HubConn {
            chunks: chunks.into(),
            out: self.written.last_mut().unwrap(),
        })
    }
}

/// A clock that jumps to whatever time is slept until; clones share the time.
#[derive(Clone)]
struct Jumping(std::rc::Rc<core::cell::Cell<u64>>);

impl Jumping {
    fn at(t: u64) -> Self {
        Self(std::rc::Rc::new(core::cell::Cell::new(t)))
    }
}

impl Clock for Jumping {
    fn now(&mut self) -> u64 {
        self.0.get()
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        self.0.set(self.0.get().max(unix_ms));
    }
}

const CONNACK_0: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// The packets in `bytes`, as `(first byte, packet id, topic)`.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Option<u16>, std::string::String)> {
    let mut out = Vec::new();
    while let Ok(Some(n)) = wire::frame_len(bytes) {
        let (packet, rest) = bytes.split_at(n);
        let entry = match mqttrs::decode_slice(packet).unwrap().unwrap() {
            Packet::Publish(p) => {
                let pid = match p.qospid {
                    QosPid::AtLeastOnce(pid) => Some(pid.get()),
                    _ => None,
                };
                (packet[0], pid, p.topic_name.into())
            }
            Packet::Puback(pid) => (packet[0], Some(pid.get()), std::string::String::new()),
            _ => (packet[0], None, std::string::String::new()),
        };
        out.push(entry);
        bytes = rest;
    }
    out
}

fn client<'b>(rx: &'b mut [u8], tx: &'b mut [u8], config: SessionConfig) -> Client<'b, RandomWalk> {
    let device = Device::new(
        RandomWalk::new(1),
        DeviceConfig {
            interval_ms: 3_600_000,
            version: "0.1.0",
        },
    );
    Client::new(
        Identity {
            host: "hub.example.net",
            device_id: "board-1",
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        device,
        config,
        7,
        rx,
        tx,
    )
    .unwrap()
}

fn is_telemetry(topic: &str) -> bool {
    topic.starts_with("devices/board-1/messages/events/")
}

#[test]
fn unacknowledged_telemetry_goes_out_again_as_the_same_publish_with_dup_after_a_reconnect() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(
        &mut rx,
        &mut tx,
        SessionConfig {
            max_attempts: Some(2),
            ..SessionConfig::default()
        },
    );
    let mut hub = Hub {
        // The first connection ends before the PUBACK; the second acknowledges id 1.
        scripts: std::vec![
            std::vec![CONNACK_0.to_vec()],
            std::vec![CONNACK_0.to_vec(), std::vec![0x40, 0x02, 0x00, 0x01]],
        ]
        .into(),
        written: Vec::new(),
    };
    let mut notes = Vec::new();
    let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
    let reason = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
    assert_eq!(
        reason,
        Err(GiveUpReason::Exhausted(DisconnectReason::Unreachable))
    );

    let first: Vec<_> = packets(&hub.written[0])
        .into_iter()
        .filter(|p| is_telemetry(&p.2))
        .collect();
    let again: Vec<_> = packets(&hub.written[1])
        .into_iter()
        .filter(|p| is_telemetry(&p.2))
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(again.len(), 1, "{again:?}");
    // PUBLISH, QoS 1; DUP (0x08) only on the redelivery, with the same id and topic
    // (so the same $.mid).
    assert_eq!(first[0].0, 0x32);
    assert_eq!(again[0].0, 0x3A);
    assert_eq!(first[0].1, Some(1));
    assert_eq!(again[0].1, first[0].1);
    assert_eq!(again[0].2, first[0].2);
    assert!(first[0].2.contains("%24.mid="), "{}", first[0].2);
    // The hub's PUBACK for the wire id reaches the session, which knows it by its own.
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("TelemetryAcked { seq: 1, message_id: ")),
        "{notes:?}"
    );
}

#[test]
fn a_qos1_c2d_message_is_noted_and_acknowledged() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(
        &mut rx,
        &mut tx,
        SessionConfig {
            max_attempts: Some(1),
            ..SessionConfig::default()
        },
    );
    let mut hub = Hub {
        scripts: std::vec![std::vec![CONNACK_0.to_vec(), c2d(7)]].into(),
        written: Vec::new(),
    };
    let mut notes = Vec::new();
    let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
    let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Session(C2d {") && n.contains("body: [104, 101, 108")),
        "{notes:?}"
    );
    assert!(
        packets(&hub.written[0]).contains(&(0x40, Some(7), std::string::String::new())),
        "no PUBACK 7"
    );
}

#[test]
fn an_idle_connection_pings_and_one_without_a_pingresp_is_dropped() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(
        &mut rx,
        &mut tx,
        SessionConfig {
            keep_alive: 4,
            max_attempts: Some(2),
            ..SessionConfig::default()
        },
    );
    let silence = Vec::new;
    let mut hub = Hub {
        scripts: std::vec![std::vec![
            CONNACK_0.to_vec(),
            silence(),
            silence(),
            silence()
        ]]
        .into(),
        written: Vec::new(),
    };
    let mut notes = Vec::new();
    let mut obs = |n: Note<'_>| notes.push(std::format!("{n:?}"));
    let reason = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut obs));
    assert_eq!(
        reason,
        Err(GiveUpReason::Exhausted(DisconnectReason::Unreachable))
    );
    let pings = packets(&hub.written[0])
        .iter()
        .filter(|p| p.0 == 0xC0)
        .count();
    assert_eq!(
        pings, 1,
        "one PINGREQ, then the wait for its answer runs out"
    );
    assert!(
        notes
            .iter()
            .any(|n| n == "Session(Disconnected { reason: Lost })"),
        "{notes:?}"
    );
}

fn c2d(pid: u16) -> Vec<u8> {
    let mut buf = std::vec![0u8; 128];
    let n = wire::encode_publish(
        "devices/board-1/messages/devicebound/%24.mid=m1",
        b"hello",
        QosPid::AtLeastOnce(wire::pid(pid).unwrap()),
        false,
        &mut buf,
    )
    .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn packets_arriving_together_are_all_handled_before_the_loop_waits() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(
        &mut rx,
        &mut tx,
        SessionConfig {
            keep_alive: 4,
            max_attempts: Some(1),
            ..SessionConfig::default()
        },
    );
    // A packet that needs no answer (SUBACK) between two that do.
    let mut both = c2d(7);
    both.extend_from_slice(&[0x90, 0x03, 0xEA, 0x61, 0x00]);
    both.extend_from_slice(&c2d(8));
    let mut hub = Hub {
        scripts: std::vec![std::vec![CONNACK_0.to_vec(), both, Vec::new()]].into(),
        written: Vec::new(),
    };
    let clock = Jumping::at(1_700_000_000_000);
    let seen_at = clock.clone();
    let mut c2d_times = Vec::new();
    let mut obs = |n: Note<'_>| {
        if let Note::Session(Event::C2d { .. }) = n {
            c2d_times.push(seen_at.0.get());
        }
    };
    let _ = block_on(client.run(&mut hub, &mut clock.clone(), &mut obs));
    assert_eq!(c2d_times.len(), 2);
    assert_eq!(
        c2d_times[0], c2d_times[1],
        "the second waited for the timer"
    );
    let pubacks: Vec<_> = packets(&hub.written[0])
        .into_iter()
        .filter(|p| p.0 == 0x40)
        .map(|p| p.1)
        .collect();
    assert_eq!(pubacks, [Some(7), Some(8)]);
}

#[test]
fn message_ids_are_version_4_uuids() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(&mut rx, &mut tx, SessionConfig::default());
    let a = client.core.message_id();
    let b = client.core.message_id();
    assert_ne!(a, b);
    for id in [a, b] {
        let text = core::str::from_utf8(&id).unwrap();
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{text}"
        );
        assert!(
            text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{text}"
        );
        assert!(groups[2].starts_with('4'), "{text}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{text}"
        );
    }
}

/// A heap queue, as a laptop keeps one.
struct VecQueue(std::collections::VecDeque<Message<Vec<u8>>>);

impl Storage for VecQueue {
    type Body = Vec<u8>;

    fn body(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }

    fn queued(&self) -> usize {
        self.0.len()
    }

    fn capacity(&self) -> usize {
        100
    }

    fn push(&mut self, m: Message<Vec<u8>>) -> Result<(), Message<Vec<u8>>> {
        self.0.push_back(m);
        Ok(())
    }

    fn pop(&mut self) -> Option<Message<Vec<u8>>> {
        self.0.pop_front()
    }
}

/// An application with every hook: its own bodies (longer than the reference JSON), a
/// content type, a property, a canned `ping`, and a stop once connected when asked.
#[derive(Default)]
struct Laptop {
    notes: Vec<std::string::String>,
    stop_once_connected: bool,
    connected: bool,
    body: std::string::String,
}

impl Observer for Laptop {
    fn note(&mut self, n: Note<'_>) {
        if let Note::Session(Event::Connected { .. }) = n {
            self.connected = true;
        }
        self.notes.push(std::format!("{n:?}"));
    }
}

impl App for Laptop {
    fn telemetry<'s>(&'s mut self, seq: u32, _: &'s str) -> Option<&'s [u8]> {
        self.body = std::format!("{{\"n\":{seq},\"pad\":\"{}\"}}", "x".repeat(300));
        Some(self.body.as_bytes())
    }

    fn content_type(&self) -> &str {
        "text/plain"
    }

    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        [("site", "lab 1")].into_iter()
    }

    fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
        (name == "ping").then_some((503, b"{\"busy\":true}"))
    }

    fn stop_requested(&mut self) -> bool {
        self.stop_once_connected && self.connected
    }
}

/// PUBLISH packets in `bytes`: `(topic, payload)`.
fn publishes(mut bytes: &[u8]) -> Vec<(std::string::String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some(n)) = wire::frame_len(bytes) {
        let (packet, rest) = bytes.split_at(n);
        if let Ok(Some(Packet::Publish(p))) = mqttrs::decode_slice(packet) {
            out.push((p.topic_name.into(), p.payload.to_vec()));
        }
        bytes = rest;
    }
    out
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut buf = std::vec![0u8; 512];
    let n = wire::encode_publish(topic, payload, QosPid::AtMostOnce, false, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_stop_request_sends_disconnect_and_returns_once_the_hub_closed() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(&mut rx, &mut tx, SessionConfig::default());
    let mut hub = Hub {
        // The hub closes the connection after the DISCONNECT (the end of the script).
        scripts: std::vec![std::vec![CONNACK_0.to_vec()]].into(),
        written: Vec::new(),
    };
    let mut app = Laptop {
        stop_once_connected: true,
        ..Laptop::default()
    };
    let ended = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    assert_eq!(ended, Ok(()));
    assert_eq!(hub.written.len(), 1, "no reconnect after a stop");
    let sent = packets(&hub.written[0]);
    assert_eq!(
        sent.last().map(|p| p.0),
        Some(0xE0),
        "DISCONNECT last: {sent:?}"
    );
    assert!(
        app.notes
            .iter()
            .any(|n| n == "Session(Disconnected { reason: Requested })"),
        "{:?}",
        app.notes
    );
    assert_eq!(client.session().state(), State::Closed);
}

#[test]
fn a_canned_method_answer_takes_precedence_over_the_built_in_one() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = client(
        &mut rx,
        &mut tx,
        SessionConfig {
            max_attempts: Some(1),
            ..SessionConfig::default()
        },
    );
    let mut hub = Hub {
        scripts: std::vec![std::vec![
            CONNACK_0.to_vec(),
            publish_packet("$iothub/methods/POST/ping/?$rid=9", b"{\"a\":1}"),
        ]]
        .into(),
        written: Vec::new(),
    };
    let mut app = Laptop::default();
    let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    let answer = publishes(&hub.written[0])
        .into_iter()
        .find(|p| p.0.starts_with("$iothub/methods/res/"))
        .expect("a method response");
    assert_eq!(answer.0, "$iothub/methods/res/503/?$rid=9");
    assert_eq!(answer.1, b"{\"busy\":true}");
    assert!(
        app.notes.iter().any(|n| n.starts_with(
            "Method { name: \"ping\", rid: \"9\", status: 503, request: [123, 34, 97"
        )),
        "{:?}",
        app.notes
    );
}

#[test]
fn telemetry_carries_the_application_body_content_type_and_properties() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = Client::with_storage(
        Identity {
            host: "hub.example.net",
            device_id: "board-1",
            module_id: None,
            model_id: None,
        },
        Credential::PolicyKey {
            policy: "device",
            key: Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        },
        Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval_ms: 3_600_000,
                version: "0.1.0",
            },
        ),
        SessionConfig {
            max_attempts: Some(1),
            ..SessionConfig::default()
        },
        7,
        &mut rx,
        &mut tx,
        VecQueue(Default::default()),
    )
    .unwrap();
    let mut hub = Hub {
        scripts: std::vec![std::vec![
            CONNACK_0.to_vec(),
            std::vec![0x40, 0x02, 0x00, 0x01]
        ]]
        .into(),
        written: Vec::new(),
    };
    let mut app = Laptop::default();
    let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    let written = &hub.written[0];
    assert!(
        contains(written, b"&skn=device"),
        "a policy key's token names it"
    );
    let (topic, body) = publishes(written)
        .into_iter()
        .find(|p| is_telemetry(&p.0))
        .expect("telemetry");
    assert!(
        topic.contains("&%24.ct=text%2Fplain&%24.ce=utf-8&site=lab%201"),
        "{topic}"
    );
    assert!(body.len() > TELEMETRY_BUFFER_LEN, "{}", body.len());
    assert!(body.starts_with(b"{\"n\":1,\"pad\":\"xxx"));
    assert!(
        app.notes
            .iter()
            .any(|n| n.starts_with("TelemetryAcked { seq: 1, ")),
        "{:?}",
        app.notes
    );
}

/// Stops after the third dropped message.
#[derive(Default)]
struct DropWatch(Vec<u32>);

impl Observer for DropWatch {
    fn note(&mut self, n: Note<'_>) {
        if let Note::TelemetryDropped { seq } = n {
            self.0.push(seq);
        }
    }
}

impl App for DropWatch {
    fn stop_requested(&mut self) -> bool {
        self.0.len() >= 3
    }
}

#[test]
fn a_full_offline_queue_drops_the_oldest_message_first() {
    let (mut rx, mut tx) = (std::vec![0u8; 1024], std::vec![0u8; 1024]);
    let mut client = Client::with_storage(
        Identity {
            host: "hub.example.net",
            device_id: "board-1",
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval_ms: 1_000,
                version: "0.1.0",
            },
        ),
        SessionConfig::default(),
        7,
        &mut rx,
        &mut tx,
        FixedQueue::<2>::new(),
    )
    .unwrap();
    // No hub at all: every attempt fails, and the loop keeps trying.
    let mut hub = Hub {
        scripts: Default::default(),
        written: Vec::new(),
    };
    let mut app = DropWatch::default();
    let ended = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    assert_eq!(ended, Ok(()));
    assert_eq!(app.0, [1, 2, 3]);
    assert_eq!(client.queued(), 2);
}

/// A heap packet buffer resting at 512 bytes that grows up to `max` when asked, as a host's.
struct Growing {
    bytes: Vec<u8>,
    max: usize,
    largest: usize,
}

impl Growing {
    fn new(max: usize) -> Self {
        Growing {
            bytes: std::vec![0; 512],
            max,
            largest: 512,
        }
    }
}

impl Buffer for Growing {
    const GROWS: bool = true;

    fn slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn reserve(&mut self, len: usize) {
        if len > self.bytes.len() {
            self.bytes.resize(len.min(self.max), 0);
            self.largest = self.largest.max(self.bytes.len());
        }
    }

    fn relax(&mut self) {
        self.bytes.truncate(512);
    }
}

/// Notes C2D body lengths and answers `big` with a 3000-byte body.
struct BigAnswers {
    c2d: Vec<usize>,
    too_large: bool,
    answer: Vec<u8>,
}

impl Observer for BigAnswers {
    fn note(&mut self, n: Note<'_>) {
        match n {
            Note::Session(Event::C2d { body, .. }) => self.c2d.push(body.len()),
            Note::PacketTooLarge { .. } => self.too_large = true,
            _ => {}
        }
    }
}

impl App for BigAnswers {
    fn method(&mut self, name: &str) -> Option<(u16, &[u8])> {
        (name == "big").then_some((200, &self.answer[..]))
    }
}

/// CONNACK, a 3000-byte C2D message arriving 400 bytes at a time, and a call of `big`.
fn big_packets_script() -> Vec<Vec<u8>> {
    let mut c2d = std::vec![0u8; 4096];
    let n = wire::encode_publish(
        "devices/board-1/messages/devicebound/%24.mid=m1",
        "y".repeat(3000).as_bytes(),
        QosPid::AtLeastOnce(wire::pid(7).unwrap()),
        false,
        &mut c2d,
    )
    .unwrap();
    c2d.truncate(n);
    let mut script = std::vec![CONNACK_0.to_vec()];
    script.extend(c2d.chunks(400).map(<[u8]>::to_vec));
    script.push(publish_packet("$iothub/methods/POST/big/?$rid=4", b"{}"));
    script
}

fn big_answers() -> BigAnswers {
    BigAnswers {
        c2d: Vec::new(),
        too_large: false,
        answer: std::format!("\"{}\"", "z".repeat(2998)).into_bytes(),
    }
}

fn device() -> Device<RandomWalk> {
    Device::new(
        RandomWalk::new(1),
        DeviceConfig {
            interval_ms: 3_600_000,
            version: "0.1.0",
        },
    )
}

fn identity() -> Identity<'static> {
    Identity {
        host: "hub.example.net",
        device_id: "board-1",
        module_id: None,
        model_id: None,
    }
}

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[test]
fn growing_buffers_take_packets_larger_than_they_rest_at_and_shrink_back() {
    let config = SessionConfig {
        max_attempts: Some(1),
        ..SessionConfig::default()
    };
    let (mut rx, mut tx) = (Growing::new(8192), Growing::new(8192));
    let mut client = Client::with_buffers(
        identity(),
        Credential::Key(Secret::new(KEY)),
        device(),
        config,
        7,
        &mut rx,
        &mut tx,
        VecQueue(Default::default()),
    )
    .unwrap();
    let mut hub = Hub {
        scripts: std::vec![big_packets_script()].into(),
        written: Vec::new(),
    };
    let mut app = big_answers();
    let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    drop(client);
    assert_eq!(app.c2d, [3000]);
    assert!(!app.too_large);
    let sent = publishes(&hub.written[0]);
    let answer = sent
        .iter()
        .find(|p| p.0 == "$iothub/methods/res/200/?$rid=4")
        .expect("the method answer");
    assert_eq!(answer.1, app.answer);
    assert!(
        packets(&hub.written[0]).contains(&(0x40, Some(7), std::string::String::new())),
        "no PUBACK 7"
    );
    assert!(rx.largest >= 3000 && tx.largest >= 3000);
    // Back at rest once the loop held nothing in them.
    assert_eq!((rx.bytes.len(), tx.bytes.len()), (512, 512));

    // Fixed buffers of the same resting size cannot take the C2D message.
    let (mut rx, mut tx) = (std::vec![0u8; 512], std::vec![0u8; 512]);
    let mut client = Client::with_storage(
        identity(),
        Credential::Key(Secret::new(KEY)),
        device(),
        config,
        7,
        &mut rx,
        &mut tx,
        VecQueue(Default::default()),
    )
    .unwrap();
    let mut hub = Hub {
        scripts: std::vec![big_packets_script()].into(),
        written: Vec::new(),
    };
    let mut app = big_answers();
    let _ = block_on(client.run(&mut hub, &mut Jumping::at(1_700_000_000_000), &mut app));
    assert!(app.too_large);
    assert!(app.c2d.is_empty());
}
