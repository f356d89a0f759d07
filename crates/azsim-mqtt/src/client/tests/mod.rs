//! The loop end to end, against scripted hubs and clocks.
//!
//! One module per concern (`connect`, `delivery`, `messages`, `buffers`); the scripted peers,
//! clocks, applications and packet helpers they share are here.

use super::*;
use azsim_proto::device::{DeviceConfig, RandomWalk};
use core::convert::Infallible;
use core::pin::pin;
use core::task::{Context, Poll};
use mqttrs::Packet;
use std::vec::Vec;

mod buffers;
mod connect;
mod delivery;
mod messages;

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
