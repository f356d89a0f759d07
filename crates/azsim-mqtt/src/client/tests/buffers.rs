//! Growing packet buffers: packets larger than the resting size taken, then shrunk back.

use super::*;

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
