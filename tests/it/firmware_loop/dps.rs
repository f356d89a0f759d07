//! The firmware loop's DPS path against the local hub, as the board runs it when built with
//! `AZSIM_ID_SCOPE`, `AZSIM_REGISTRATION_ID` and a key: the provisioning mode
//! (`azsim_mqtt::Provisioning`, no_std, over `azsim run`'s TLS connector) registers with an
//! individual enrollment and with a group enrollment (the device key derived on the device),
//! then the hub session connects to the hub it was assigned, as the device it was assigned,
//! with the same key, and its telemetry is acknowledged. Refusals are typed errors carrying
//! DPS's status and code.

use azsim_mqtt::{Assignment, DpsCredential, DpsIdentity, DpsNote, ProvisionError, Provisioning};
use azsim_proto::session::ConnackCode;

use super::*;
use crate::dps::{derive, service};

/// Registers `registration_id` with the hub's DPS on its MQTT port (`key`: `None` sends no
/// password, as an X.509 device does), with the board's buffer sizes.
async fn provision(
    hub: &TestHub,
    scope: &str,
    registration_id: &str,
    key: Option<&str>,
    notes: &mut Vec<DpsNote>,
) -> Result<Assignment, ProvisionError> {
    let (mut rx, mut tx) = buffers();
    let mut registration = Provisioning::new(
        DpsIdentity {
            id_scope: scope,
            registration_id,
            payload: Some(r#"{"fw":"host-test"}"#),
        },
        key.map_or(DpsCredential::X509, |k| DpsCredential::Key(Secret::new(k))),
        rx.as_mut_slice(),
        tx.as_mut_slice(),
    )?
    .with_timeout(20_000);
    let mut connector = TlsConnector::new(
        &hub.hostname,
        hub.mqtt_port,
        hub.tls(),
        FailureSlot::default(),
    )
    .expect("connector");
    registration
        .run(&mut connector, &mut SystemClock, &mut |n| notes.push(n))
        .await
}

/// Runs the hub session as `assigned` with `key` until the hub acknowledges two telemetry
/// messages; the number of connections it took.
async fn telemetry_to(hub: &TestHub, assigned: &Assignment, key: &str) -> u32 {
    let (host, port) = assigned.hub().expect("assigned hub is host[:port]");
    let (mut rx_buf, mut tx_buf) = buffers();
    let mut client = Client::new(
        Identity {
            host,
            device_id: &assigned.device_id,
            module_id: None,
            model_id: None,
        },
        Credential::Key(Secret::new(key)),
        Device::new(
            RandomWalk::new(9),
            DeviceConfig {
                interval_ms: 200,
                version: "fw-test",
            },
        ),
        SessionConfig::default(),
        9,
        &mut rx_buf,
        &mut tx_buf,
    )
    .expect("client");
    let mut connector = Counting {
        inner: TlsConnector::new(
            host,
            port.unwrap_or(hub.mqtt_port),
            hub.tls(),
            FailureSlot::default(),
        )
        .expect("connector"),
        connects: 0,
    };
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let mut notes = Notes::new(notes_rx);
    let mut observer = move |n: Note<'_>| {
        let _ = notes_tx.send(seen(n));
    };
    let checks = async {
        for _ in 0..2 {
            notes
                .wait_for(|s| matches!(s, Seen::TelemetryAcked(_)))
                .await;
        }
    };
    let mut clock = SystemClock;
    tokio::select! {
        reason = client.run(&mut connector, &mut clock, &mut observer) => {
            panic!("the loop gave up: {reason:?}");
        }
        () = checks => {}
    }
    connector.connects
}

/// The hub's stored telemetry of `device_id`.
async fn telemetry_count(hub: &TestHub, device_id: &str) -> usize {
    let (status, events) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .expect("event array")
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_loop_provisions_through_dps_then_sends_telemetry_to_the_assigned_hub() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();

    // An individual enrollment with its own device id.
    let (s, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/fw-dps",
        Some(json!({"deviceId": "fw-dps-device"})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("enrollment key")
        .to_string();
    let mut notes = Vec::new();
    let a = provision(&hub, &scope, "fw-dps", Some(&key), &mut notes)
        .await
        .expect("assigned");
    assert_eq!(a.device_id.as_str(), "fw-dps-device");
    assert_eq!(a.assigned_hub.as_str(), hub.info.provisioning_host.as_str());
    assert_eq!(
        a.substatus.as_ref().map(|s| s.as_str()),
        Some("initialAssignment")
    );
    assert_eq!(notes.first(), Some(&DpsNote::Connecting));
    assert!(notes.contains(&DpsNote::Connected), "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| matches!(n, DpsNote::Assigning { retry_after_s: 1 })),
        "the hub answers 202 with retry-after=1 and the loop polls: {notes:?}"
    );
    assert_eq!(telemetry_to(&hub, &a, &key).await, 1);
    assert!(telemetry_count(&hub, "fw-dps-device").await >= 2);
    // The register request's payload reached DPS.
    let (s, r) = service(&hub, Method::GET, "/registrations/fw-dps", None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["deviceId"], "fw-dps-device", "{r}");
    assert_eq!(r["payload"], json!({"fw": "host-test"}), "{r}");

    // A group enrollment: the device derives its key from the group key, as the board does
    // from AZSIM_GROUP_KEY.
    let group_key = azsim_emulator::state_dir::generate_key();
    let (s, g) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/fw-grp",
        Some(json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}})),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let mut device_key = String::new();
    azsim_proto::sas::derive_group_key(&mut device_key, &group_key, "fw-grp-1").expect("derive");
    assert_eq!(device_key, derive(&group_key, "fw-grp-1"));
    let a = provision(&hub, &scope, "fw-grp-1", Some(&device_key), &mut Vec::new())
        .await
        .expect("assigned through the group");
    assert_eq!(a.device_id.as_str(), "fw-grp-1");
    assert_eq!(telemetry_to(&hub, &a, &device_key).await, 1);
    assert!(telemetry_count(&hub, "fw-grp-1").await >= 2);

    // Refusals, typed: a wrong key (401), an unknown registration (404), a disabled
    // enrollment (401), the group key itself instead of the derived one, no password and no
    // certificate (CONNACK 5).
    let wrong = azsim_emulator::state_dir::generate_key();
    let (s, _) = service(
        &hub,
        Method::PUT,
        "/enrollments/fw-off",
        Some(json!({"provisioningStatus": "disabled", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}})),
    )
    .await;
    assert_eq!(s, 200);
    for (reg, k, status, code) in [
        ("fw-dps", Some(wrong.as_str()), 401, Some(401002)),
        ("fw-nobody", Some(key.as_str()), 404, Some(404201)),
        ("fw-off", Some(key.as_str()), 401, None),
        // No group's derived key signs it: the local hub says 404, as its README documents.
        ("fw-grp-2", Some(group_key.as_str()), 404, Some(404201)),
    ] {
        let e = provision(&hub, &scope, reg, k, &mut Vec::new())
            .await
            .expect_err(reg);
        let ProvisionError::Refused {
            status: got,
            error_code,
            ref message,
        } = e
        else {
            panic!("{reg}: {e:?}");
        };
        assert_eq!(got, status, "{reg}: {e}");
        if code.is_some() {
            assert_eq!(error_code, code, "{reg}: {e}");
        }
        assert!(message.is_some(), "{reg}: DPS's message: {e}");
        if reg == "fw-off" {
            assert!(e.to_string().contains("disabled"), "{e}");
        }
        assert!(!e.is_transient(), "{reg}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&key) && !text.contains(&wrong), "{text}");
    }
    let e = provision(&hub, &scope, "fw-dps", None, &mut Vec::new())
        .await
        .expect_err("no credential");
    assert_eq!(
        e,
        ProvisionError::Connect(DisconnectReason::Refused(ConnackCode::NotAuthorized))
    );
    // Nothing reached the registry for the refused ones.
    let (s, _) = hub.rest(Method::GET, "/devices/fw-nobody", None).await;
    assert_eq!(s, 404);
    hub.stop().await;
}
