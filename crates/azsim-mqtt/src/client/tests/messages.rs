//! What goes out and comes in: C2D acknowledgement, message ids, canned method answers and
//! the application's telemetry body, content type and properties.

use super::*;

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
