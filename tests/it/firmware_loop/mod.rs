//! The ESP32 firmware's protocol code, proven on the laptop: the `azsim-mqtt` client loop (the
//! exact code the firmware runs, `no_std`, mqttrs framing, here with its board defaults: the
//! fixed queue and no application hooks) over TCP + rustls adapted to `embedded-io-async` by
//! `azsim run`'s connector, the way mbedtls-rs is on the board, against the real local hub.

use std::time::Duration;

use azsim::device::net::{FailureSlot, SystemClock, TlsConnector};
use azsim_mqtt::{Client, Clock, Connector, Credential, Identity, Note};
use azsim_proto::connection_string::ConnectionString;
use azsim_proto::device::{Device, DeviceConfig, RandomWalk};
use azsim_proto::secret::Secret;
use azsim_proto::session::{ConnackCode, DisconnectReason, Event, GiveUpReason, SessionConfig};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::TestHub;

mod dps;

/// `azsim run`'s TCP + TLS connector to the hub, counting the connections it opens.
struct Counting {
    inner: TlsConnector,
    connects: u32,
}

impl Counting {
    fn to(hub: &TestHub) -> Counting {
        Counting {
            inner: TlsConnector::new(
                "localhost",
                hub.mqtt_port,
                hub.tls(),
                FailureSlot::default(),
            )
            .expect("connector"),
            connects: 0,
        }
    }
}

impl Connector for Counting {
    type Conn<'a> = <TlsConnector as Connector>::Conn<'a>;

    async fn connect(&mut self) -> Result<Self::Conn<'_>, DisconnectReason> {
        self.connects += 1;
        self.inner.connect().await
    }
}

/// Unix milliseconds on tokio's clock: under `start_paused` time moves only when every task
/// (the loop and the in-process hub) waits, so hours pass in no real time and nothing races
/// the wall clock. It starts at the system time, so the hub accepts the tokens' expiry.
struct PausedClock {
    unix_ms_at_start: u64,
    start: tokio::time::Instant,
}

impl PausedClock {
    fn new() -> PausedClock {
        PausedClock {
            unix_ms_at_start: azsim_emulator::clock::unix_now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for PausedClock {
    fn now(&mut self) -> u64 {
        self.unix_ms_at_start + self.start.elapsed().as_millis() as u64
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        let after = unix_ms.saturating_sub(self.unix_ms_at_start);
        tokio::time::sleep_until(self.start + Duration::from_millis(after)).await;
    }
}

/// The notes the tests look at, owned so they can cross a channel.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Connected,
    Twin,
    TelemetryAcked(u32),
    Method(String, u16),
    ReportedAccepted,
    DisconnectedBy(DisconnectReason),
    TokenRenewed,
    Other,
}

fn seen(n: Note<'_>) -> Seen {
    match n {
        Note::Session(Event::Connected { .. }) => Seen::Connected,
        Note::Session(Event::Twin { .. }) => Seen::Twin,
        Note::TelemetryAcked { seq, .. } => Seen::TelemetryAcked(seq),
        Note::Method { name, status, .. } => Seen::Method(name.to_owned(), status),
        Note::Session(Event::ReportedAccepted { .. }) => Seen::ReportedAccepted,
        Note::Session(Event::Disconnected { reason }) => Seen::DisconnectedBy(reason),
        Note::Session(Event::TokenRenewed { .. }) => Seen::TokenRenewed,
        _ => Seen::Other,
    }
}

/// What the loop reported, in order; each wait takes the first matching note, past or future.
struct Notes {
    rx: mpsc::UnboundedReceiver<Seen>,
    past: Vec<Seen>,
}

impl Notes {
    fn new(rx: mpsc::UnboundedReceiver<Seen>) -> Notes {
        Notes {
            rx,
            past: Vec::new(),
        }
    }

    async fn wait_for(&mut self, f: impl Fn(&Seen) -> bool) -> Seen {
        self.wait_within(Duration::from_secs(20), f).await
    }

    /// [`Notes::wait_for`] with another limit (tokio time: virtual under `start_paused`).
    async fn wait_within(&mut self, limit: Duration, f: impl Fn(&Seen) -> bool) -> Seen {
        if let Some(i) = self.past.iter().position(&f) {
            return self.past.remove(i);
        }
        tokio::time::timeout(limit, async {
            loop {
                let s = self.rx.recv().await.expect("client loop ended");
                if f(&s) {
                    return s;
                }
                self.past.push(s);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected note within {limit:?}"))
    }
}

struct Parts {
    host: String,
    device_id: String,
    key: String,
}

fn parts(cs: &str) -> Parts {
    let c = ConnectionString::parse(cs).expect("device connection string");
    Parts {
        host: c.host().to_owned(),
        device_id: c.device_id().expect("device id").to_owned(),
        key: c.shared_access_key().expect("key").to_owned(),
    }
}

fn buffers() -> (Vec<u8>, Vec<u8>) {
    (vec![0u8; 4096], vec![0u8; 4096])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_loop_sends_telemetry_answers_ping_and_acknowledges_a_desired_patch() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("fw-loop").await;
    let p = parts(&cs);
    let (mut rx_buf, mut tx_buf) = buffers();
    let device = Device::new(
        RandomWalk::new(42),
        DeviceConfig {
            interval_ms: 1_000,
            version: "fw-test",
        },
    );
    let mut client = Client::new(
        Identity {
            host: &p.host,
            device_id: &p.device_id,
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new(&p.key)),
        device,
        SessionConfig {
            keep_alive: 30,
            ..SessionConfig::default()
        },
        7,
        &mut rx_buf,
        &mut tx_buf,
    )
    .expect("client");
    let mut connector = Counting::to(&hub);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut notes = Notes::new(notes_rx);
    let mut observer = move |n: Note<'_>| {
        let _ = notes_tx.send(seen(n));
    };

    let checks = async {
        // Telemetry: acknowledged by the hub, and there in its event log with our properties.
        let Seen::TelemetryAcked(seq) = notes
            .wait_for(|s| matches!(s, Seen::TelemetryAcked(_)))
            .await
        else {
            unreachable!()
        };
        let (status, events) = hub
            .rest(
                Method::GET,
                "/emulator/events/recent?deviceId=fw-loop",
                None,
            )
            .await;
        assert_eq!(status, 200, "{events}");
        let telemetry: Vec<&Value> = events
            .as_array()
            .expect("event array")
            .iter()
            .filter(|e| e["type"] == "telemetry")
            .collect();
        let body: Value = telemetry
            .iter()
            .find_map(|e| {
                let b: Value = serde_json::from_str(e["body"].as_str()?).ok()?;
                (b["seq"] == seq).then_some(b)
            })
            .unwrap_or_else(|| panic!("telemetry #{seq} not in the hub's events: {events}"));
        assert!(
            body["temperature"].is_number() && body["humidity"].is_number(),
            "{body}"
        );
        let e = telemetry[0];
        assert_eq!(
            e["systemProperties"]["content-type"], "application/json",
            "{e}"
        );
        assert_eq!(e["systemProperties"]["content-encoding"], "utf-8", "{e}");
        assert_eq!(
            e["systemProperties"]["message-id"].as_str().map(str::len),
            Some(36),
            "{e}"
        );

        // The twin GET answered means the subscriptions went out before it.
        notes.wait_for(|s| *s == Seen::Twin).await;

        // A direct method through the hub's REST API.
        let (status, reply) = hub
            .rest(
                Method::POST,
                "/twins/fw-loop/methods",
                Some(json!({"methodName":"ping","payload":{"hello":"board"},"responseTimeoutInSeconds":15})),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply, json!({"status":200,"payload":{"hello":"board"}}));
        notes
            .wait_for(|s| *s == Seen::Method("ping".into(), 200))
            .await;

        // A desired patch, acknowledged in reported properties (Plug and Play convention).
        let (status, twin) = hub
            .rest(
                Method::PATCH,
                "/twins/fw-loop",
                Some(json!({"properties":{"desired":{"telemetryInterval":7}}})),
            )
            .await;
        assert_eq!(status, 200, "{twin}");
        let desired_version = twin["properties"]["desired"]["$version"]
            .as_u64()
            .expect("desired $version");
        let want = json!({"value":7,"ac":200,"av":desired_version});
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                notes.wait_for(|s| *s == Seen::ReportedAccepted).await;
                let (_, twin) = hub.rest(Method::GET, "/twins/fw-loop", None).await;
                if twin["properties"]["reported"]["telemetryInterval"] == want {
                    assert_eq!(
                        twin["properties"]["reported"]["azsim"]["version"], "fw-test",
                        "{twin}"
                    );
                    return;
                }
            }
        })
        .await
        .expect("telemetryInterval acknowledged in reported properties");
    };

    let mut clock = SystemClock;
    tokio::select! {
        reason = client.run(&mut connector, &mut clock, &mut observer) => {
            panic!("the loop gave up: {reason:?}");
        }
        () = checks => {}
    }
    assert_eq!(client.device().interval_ms(), 7_000);
    assert_eq!(connector.connects, 1, "one connection for the whole test");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_loop_gives_up_on_a_wrong_key_with_connack_5() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("fw-wrong-key").await;
    let p = parts(&cs);
    let (mut rx_buf, mut tx_buf) = buffers();
    let wrong_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_ne!(p.key, wrong_key);
    let mut client = Client::new(
        Identity {
            host: &p.host,
            device_id: &p.device_id,
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new(wrong_key)),
        Device::new(
            RandomWalk::new(1),
            DeviceConfig {
                interval_ms: 60_000,
                version: "fw-test",
            },
        ),
        SessionConfig::default(),
        1,
        &mut rx_buf,
        &mut tx_buf,
    )
    .expect("client");
    let mut connector = Counting::to(&hub);
    let mut notes = Vec::new();
    let mut observer = |n: Note<'_>| notes.push(format!("{n:?}"));
    let reason = tokio::time::timeout(
        Duration::from_secs(20),
        client.run(&mut connector, &mut SystemClock, &mut observer),
    )
    .await
    .expect("gives up within 20 s");
    assert_eq!(
        reason,
        Err(GiveUpReason::Refused(ConnackCode::NotAuthorized))
    );
    assert_eq!(connector.connects, 1);
    // Nothing the loop reports carries the key or a signature.
    let text = notes.join("\n");
    assert!(
        !text.contains(wrong_key) && !text.contains("sig="),
        "{text}"
    );
    assert!(!format!("{client:?}").contains(wrong_key));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_loop_reconnects_after_the_hub_restarts_and_resends_telemetry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let hub = TestHub::start_in(&dir).await;
    let cs = hub.create_device("fw-restart").await;
    let p = parts(&cs);
    let port = hub.mqtt_port;
    let tls = hub.tls();
    let (mut rx_buf, mut tx_buf) = buffers();
    let mut client = Client::new(
        Identity {
            host: &p.host,
            device_id: &p.device_id,
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new(&p.key)),
        Device::new(
            RandomWalk::new(3),
            DeviceConfig {
                interval_ms: 1_000,
                version: "fw-test",
            },
        ),
        SessionConfig {
            backoff_min_ms: 1_000,
            backoff_max_ms: 2_000,
            ..SessionConfig::default()
        },
        3,
        &mut rx_buf,
        &mut tx_buf,
    )
    .expect("client");
    let mut connector = Counting {
        inner: TlsConnector::new("localhost", port, tls, FailureSlot::default())
            .expect("connector"),
        connects: 0,
    };
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut notes = Notes::new(notes_rx);
    let mut observer = move |n: Note<'_>| {
        let _ = notes_tx.send(seen(n));
    };

    let checks = async {
        notes
            .wait_for(|s| matches!(s, Seen::TelemetryAcked(_)))
            .await;
        hub.stop().await;
        notes
            .wait_for(|s| matches!(s, Seen::DisconnectedBy(_)))
            .await;
        // Only what happens after the restart counts from here.
        notes.past.clear();
        // Same state dir and the same port, so the device finds it again.
        let mut cfg = azsim_emulator::HubConfig::new(&dir);
        cfg.in_memory = false;
        let again = azsim_emulator::start(cfg, "127.0.0.1".parse().expect("ip"), port, 0)
            .await
            .expect("hub restarts on the same port");
        notes.wait_for(|s| *s == Seen::Connected).await;
        notes
            .wait_for(|s| matches!(s, Seen::TelemetryAcked(_)))
            .await;
        again.stop().await.expect("stops");
    };

    let mut clock = SystemClock;
    tokio::select! {
        reason = client.run(&mut connector, &mut clock, &mut observer) => {
            panic!("the loop gave up: {reason:?}");
        }
        () = checks => {}
    }
    assert!(connector.connects >= 2, "{} connects", connector.connects);
}

/// Token renewal and keep-alive in virtual time: the whole test (the hub too) runs on tokio's
/// paused clock, which moves only when every task waits, so a 60 s token renewed at 80 % and
/// 2 s keep-alive pings pass in no real time, and a loaded machine cannot make the hub's
/// keep-alive timer fire first. The sockets and TLS are real.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_firmware_loop_renews_its_token_and_pings_to_keep_an_idle_connection() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("fw-renew").await;
    let p = parts(&cs);
    let (mut rx_buf, mut tx_buf) = buffers();
    let mut client = Client::new(
        Identity {
            host: &p.host,
            device_id: &p.device_id,
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new(&p.key)),
        // One message at start, then silence: only PINGREQ keeps the connection alive.
        Device::new(
            RandomWalk::new(5),
            DeviceConfig {
                interval_ms: 3_600_000,
                version: "fw-test",
            },
        ),
        SessionConfig {
            token_ttl: Some(60),
            renew_at_percent: 80,
            keep_alive: 2,
            ..SessionConfig::default()
        },
        5,
        &mut rx_buf,
        &mut tx_buf,
    )
    .expect("client");
    let mut connector = Counting::to(&hub);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut notes = Notes::new(notes_rx);
    let mut clock = PausedClock::new();
    let started = clock.now();
    let mut observer = move |n: Note<'_>| {
        let _ = notes_tx.send(seen(n));
    };
    let checks = async {
        notes.wait_for(|s| *s == Seen::Connected).await;
        let connected_at = tokio::time::Instant::now();
        // Renewal is due 48 s in; the hub closes a connection silent for 3 s.
        let first = notes
            .wait_within(Duration::from_secs(120), |s| {
                matches!(s, Seen::DisconnectedBy(_) | Seen::TokenRenewed)
            })
            .await;
        let renewing_after = connected_at.elapsed();
        assert_eq!(
            first,
            Seen::DisconnectedBy(DisconnectReason::Requested),
            "the first disconnect is the planned renewal, after {renewing_after:?}"
        );
        assert!(
            (Duration::from_secs(47)..Duration::from_secs(50)).contains(&renewing_after),
            "renewed at 80 % of 60 s, not {renewing_after:?}"
        );
        notes.wait_for(|s| *s == Seen::TokenRenewed).await;
    };
    tokio::select! {
        reason = client.run(&mut connector, &mut clock, &mut observer) => {
            panic!("the loop gave up: {reason:?}");
        }
        () = checks => {}
    }
    assert_eq!(connector.connects, 2, "one connection per token");
    assert!(
        clock.now() - started >= 48_000,
        "the loop's clock is tokio's: {} ms passed",
        clock.now() - started
    );
    hub.stop().await;
}
