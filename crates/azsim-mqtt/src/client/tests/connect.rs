//! Connecting and stopping: the token wiped from the transmit buffer once CONNECT is written,
//! and a stop request ending in DISCONNECT.

use super::*;

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
