//! Delivery over a shaky link: unacknowledged telemetry sent again with DUP after a reconnect,
//! keep-alive pings, packets arriving together, and the full offline queue dropping the oldest.

use super::*;

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
