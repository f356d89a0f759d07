//! IoT Hub's MQTT rules on the local hub, driven over real TLS with raw `mqttbytes` packets
//! (so the tests control every byte) and with rumqttc.

use std::time::Duration;

use azsim_emulator::clock::unix_now as now;

use bytes::BytesMut;
use reqwest::Method;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::TestHub;

struct Raw {
    s: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    async fn open(hub: &TestHub) -> Raw {
        let tcp = TcpStream::connect(("127.0.0.1", hub.mqtt_port))
            .await
            .unwrap();
        let s = TlsConnector::from(hub.tls())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.send_bytes(&b).await;
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        // The hub may already have closed; a failed write shows up as a close on read.
        let _ = self.s.write_all(b).await;
        let _ = self.s.flush().await;
    }

    /// The next packet, or `None` once the hub closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(Duration::from_secs(10)).await
    }

    async fn recv_within(&mut self, limit: Duration) -> Option<Packet> {
        tokio::time::timeout(limit, async {
            loop {
                match Packet::read(&mut self.buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(MqttError::InsufficientBytes(_)) => {
                        match self.s.read_buf(&mut self.buf).await {
                            Ok(n) if n > 0 => {}
                            _ => return None,
                        }
                    }
                    Err(e) => panic!("hub sent a malformed packet: {e}"),
                }
            }
        })
        .await
        .expect("hub neither answered nor closed in time")
    }

    async fn expect_closed(&mut self) {
        self.expect_closed_within(Duration::from_secs(10)).await;
    }

    async fn expect_closed_within(&mut self, limit: Duration) {
        loop {
            match self.recv_within(limit).await {
                None => return,
                Some(Packet::PubAck(_) | Packet::SubAck(_)) => {
                    panic!("hub acknowledged instead of closing")
                }
                Some(_) => {}
            }
        }
    }

    /// CONNECT as `client_id` with `username`/`password`; returns the CONNACK code.
    async fn connect_as(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> ConnectReturnCode {
        let mut c = Connect::new(client_id);
        c.keep_alive = 60;
        c.clean_session = true;
        c.set_login(username, password);
        self.send(Packet::Connect(c)).await;
        match self.recv().await {
            Some(Packet::ConnAck(ConnAck { code, .. })) => code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

async fn device(hub: &TestHub, id: &str) -> String {
    hub.create_device(id).await;
    hub.device_key(id).await
}

async fn connected(hub: &TestHub, id: &str, key: &str) -> Raw {
    let mut r = Raw::open(hub).await;
    let code = r
        .connect_as(
            id,
            &hub.username(id),
            &hub.device_token(id, key, now() + 3600),
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    r
}

#[tokio::test]
async fn each_bad_credential_gets_connack_5() {
    let hub = TestHub::start().await;
    let key = device(&hub, "good").await;
    let other_key = device(&hub, "other").await;
    let u = hub.username("good");
    let cases = [
        (
            "unknown device",
            "ghost",
            hub.username("ghost"),
            hub.device_token("ghost", &key, now() + 600),
        ),
        (
            "bad signature",
            "good",
            u.clone(),
            hub.device_token("good", &other_key, now() + 600),
        ),
        (
            "expired token",
            "good",
            u.clone(),
            hub.device_token("good", &key, now() - 10),
        ),
        (
            "token for another device",
            "good",
            u.clone(),
            hub.device_token("other", &key, now() + 600),
        ),
        (
            "username for another device",
            "good",
            hub.username("other"),
            hub.device_token("good", &key, now() + 600),
        ),
        ("not a token", "good", u.clone(), "password".to_string()),
    ];
    for (what, cid, user, pass) in cases {
        let mut r = Raw::open(&hub).await;
        assert_eq!(
            r.connect_as(cid, &user, &pass).await,
            ConnectReturnCode::NotAuthorized,
            "{what}"
        );
    }
    // The secondary key works too.
    let (_, d) = hub.rest(Method::GET, "/devices/good", None).await;
    let secondary = d["authentication"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut r = Raw::open(&hub).await;
    assert_eq!(
        r.connect_as(
            "good",
            &u,
            &hub.device_token("good", &secondary, now() + 600)
        )
        .await,
        ConnectReturnCode::Success
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_disabled_device_is_dropped_and_then_refused() {
    let hub = TestHub::start().await;
    let key = device(&hub, "dis").await;
    let mut live = connected(&hub, "dis", &key).await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/dis",
            Some(json!({"deviceId":"dis","status":"disabled"})),
        )
        .await;
    assert_eq!(s, 409, "PUT without If-Match is a create: {v}");
    let r = hub
        .http()
        .put(hub.url("/devices/dis"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "\"*\"")
        .json(&json!({"deviceId":"dis","status":"disabled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    live.expect_closed().await;
    let mut again = Raw::open(&hub).await;
    let code = again
        .connect_as(
            "dis",
            &hub.username("dis"),
            &hub.device_token("dis", &key, now() + 600),
        )
        .await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    hub.stop().await;
}

#[tokio::test]
async fn mqtt_5_connect_gets_connack_1() {
    let hub = TestHub::start().await;
    let mut r = Raw::open(&hub).await;
    let mut c = Connect::new("x");
    c.protocol = Protocol::V5;
    r.send(Packet::Connect(c)).await;
    match r.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::RefusedProtocolVersion),
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
    hub.stop().await;
}

#[tokio::test]
async fn publishing_to_another_devices_topic_closes_the_connection() {
    let hub = TestHub::start().await;
    let key = device(&hub, "a1").await;
    let mut r = connected(&hub, "a1", &key).await;
    let mut p = Publish::new(
        "devices/b1/messages/events/",
        QoS::AtLeastOnce,
        b"x".to_vec(),
    );
    p.pkid = 1;
    r.send(Packet::Publish(p)).await;
    r.expect_closed().await;
    hub.stop().await;
}

#[tokio::test]
async fn subscribing_to_another_devices_c2d_closes_without_suback() {
    let hub = TestHub::start().await;
    let key = device(&hub, "a2").await;
    let mut r = connected(&hub, "a2", &key).await;
    r.send(Packet::Subscribe(Subscribe::new(
        "devices/b2/messages/devicebound/#",
        QoS::AtLeastOnce,
    )))
    .await;
    r.expect_closed().await;
    hub.stop().await;
}

#[tokio::test]
async fn qos_2_publish_closes_but_qos_2_subscribe_is_granted_1() {
    let hub = TestHub::start().await;
    let key = device(&hub, "q2").await;
    let mut r = connected(&hub, "q2", &key).await;
    let mut s = Subscribe::new("$iothub/methods/POST/#", QoS::ExactlyOnce);
    s.pkid = 7;
    r.send(Packet::Subscribe(s)).await;
    match r.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(
            a.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let mut p = Publish::new(
        "devices/q2/messages/events/",
        QoS::ExactlyOnce,
        b"x".to_vec(),
    );
    p.pkid = 2;
    r.send(Packet::Publish(p)).await;
    r.expect_closed().await;
    hub.stop().await;
}

#[tokio::test]
async fn telemetry_over_256_kb_closes_the_connection_and_smaller_is_acked() {
    let hub = TestHub::start().await;
    let key = device(&hub, "big").await;
    let mut r = connected(&hub, "big", &key).await;
    let mut ok = Publish::new(
        "devices/big/messages/events/",
        QoS::AtLeastOnce,
        vec![b'a'; 200 * 1024],
    );
    ok.pkid = 1;
    r.send(Packet::Publish(ok)).await;
    assert_eq!(r.recv().await, Some(Packet::PubAck(PubAck::new(1))));
    let mut big = Publish::new(
        "devices/big/messages/events/",
        QoS::AtLeastOnce,
        vec![b'a'; 256 * 1024 + 1],
    );
    big.pkid = 2;
    r.send(Packet::Publish(big)).await;
    r.expect_closed().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_closes_the_first() {
    let hub = TestHub::start().await;
    let key = device(&hub, "dup").await;
    let mut first = connected(&hub, "dup", &key).await;
    let mut second = connected(&hub, "dup", &key).await;
    first.expect_closed().await;
    let mut p = Publish::new(
        "devices/dup/messages/events/",
        QoS::AtLeastOnce,
        b"x".to_vec(),
    );
    p.pkid = 3;
    second.send(Packet::Publish(p)).await;
    assert_eq!(second.recv().await, Some(Packet::PubAck(PubAck::new(3))));
    hub.stop().await;
}

#[tokio::test]
async fn garbage_truncated_and_huge_packets_only_fail_their_own_connection() {
    let hub = TestHub::start().await;
    let key = device(&hub, "calm").await;
    let mut calm = connected(&hub, "calm", &key).await;

    let mut garbage = Raw::open(&hub).await;
    garbage
        .send_bytes(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x01])
        .await;
    garbage.expect_closed().await;

    let mut huge = Raw::open(&hub).await;
    huge.send_bytes(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await;
    huge.expect_closed().await;

    let mut truncated = connected(&hub, "calm2", &device(&hub, "calm2").await).await;
    truncated.send_bytes(&[0x30, 0x20, 0x00, 0x05, b'd']).await;
    let _ = truncated.s.shutdown().await;

    let mut after_connect = connected(&hub, "calm3", &device(&hub, "calm3").await).await;
    after_connect.send_bytes(&[0xe0, 0x05, 1, 2, 3, 4, 5]).await;
    after_connect.expect_closed().await;

    let mut p = Publish::new(
        "devices/calm/messages/events/",
        QoS::AtLeastOnce,
        b"still here".to_vec(),
    );
    p.pkid = 9;
    calm.send(Packet::Publish(p)).await;
    assert_eq!(calm.recv().await, Some(Packet::PubAck(PubAck::new(9))));
    let (s, _) = hub.rest(Method::GET, "/devices/calm", None).await;
    assert_eq!(s, 200);
    hub.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_one_and_a_half_keep_alives() {
    let hub = TestHub::start().await;
    let key = device(&hub, "ka").await;
    let mut r = Raw::open(&hub).await;
    let mut c = Connect::new("ka");
    c.keep_alive = 20;
    c.set_login(
        hub.username("ka"),
        hub.device_token("ka", &key, now() + 3600),
    );
    r.send(Packet::Connect(c)).await;
    assert!(matches!(r.recv().await, Some(Packet::ConnAck(_))));
    let start = tokio::time::Instant::now();
    // Traffic resets the timer.
    tokio::time::sleep(Duration::from_secs(25)).await;
    r.send(Packet::PingReq).await;
    assert_eq!(r.recv().await, Some(Packet::PingResp));
    r.expect_closed_within(Duration::from_secs(300)).await;
    let silent = start.elapsed();
    assert!(
        silent >= Duration::from_secs(25 + 30),
        "closed too early: {silent:?}"
    );
    assert!(
        silent < Duration::from_secs(25 + 31),
        "closed too late: {silent:?}"
    );
    hub.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_connection_is_closed_when_the_token_expires() {
    let hub = TestHub::start().await;
    let key = device(&hub, "exp").await;
    let mut r = Raw::open(&hub).await;
    let code = r
        .connect_as(
            "exp",
            &hub.username("exp"),
            &hub.device_token("exp", &key, now() + 60),
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    // se is a minute away, before the 90 s keep-alive timeout.
    let start = tokio::time::Instant::now();
    r.expect_closed_within(Duration::from_secs(300)).await;
    let t = start.elapsed();
    assert!(
        t >= Duration::from_secs(58) && t <= Duration::from_secs(61),
        "closed after {t:?}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn token_expiry_follows_the_hub_clock_not_the_system_clock() {
    let (hub, clock) = TestHub::start_manual().await;
    let key = device(&hub, "exp2").await;
    let se = clock.unix_ms() / 1000 + 60;
    let token = hub.device_token("exp2", &key, se);
    let mut r = Raw::open(&hub).await;
    let code = r.connect_as("exp2", &hub.username("exp2"), &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    // The connection waits for se on the hub's clock; until the clock gets there it is served.
    clock.sleeper_at(se * 1000).await;
    clock.advance(Duration::from_secs(59));
    r.send(Packet::PingReq).await;
    assert_eq!(r.recv().await, Some(Packet::PingResp));
    clock.advance(Duration::from_secs(1));
    r.expect_closed().await;
    // The same token is now refused at CONNECT, although the system clock says it is valid.
    assert!(now() < se);
    let mut again = Raw::open(&hub).await;
    let code = again
        .connect_as("exp2", &hub.username("exp2"), &token)
        .await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    hub.stop().await;
}

/// Device and module ids with `+` or `#`, which IoT Hub's registry accepts but MQTT 3.1.1 forbids
/// inside topic names and filter levels (see the hub's `mqtt` module docs): the identity
/// connects and its twin works (`$iothub/` topics carry no id), but its telemetry PUBLISH and its
/// C2D SUBSCRIBE are malformed MQTT and close the connection, storing nothing.
#[tokio::test]
async fn an_id_with_a_wildcard_connects_and_uses_its_twin_but_its_telemetry_and_c2d_topics_close_the_connection()
 {
    let hub = TestHub::start().await;
    for (id, path) in [("dev+1", "dev%2B1"), ("dev#1", "dev%231")] {
        let (status, v) = hub
            .rest(
                Method::PUT,
                &format!("/devices/{path}"),
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(status, 200, "{id}: {v}");
        assert_eq!(v["deviceId"], id);
        let key = v["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_string();

        let mut r = connected(&hub, id, &key).await;
        r.send(Packet::Subscribe(Subscribe::new(
            "$iothub/twin/res/#",
            QoS::AtMostOnce,
        )))
        .await;
        assert!(matches!(r.recv().await, Some(Packet::SubAck(_))), "{id}");
        r.send(Packet::Publish(Publish::new(
            "$iothub/twin/GET/?$rid=7",
            QoS::AtMostOnce,
            Vec::new(),
        )))
        .await;
        match r.recv().await {
            Some(Packet::Publish(p)) => assert!(
                p.topic.starts_with("$iothub/twin/res/200/?$rid=7"),
                "{id}: {}",
                p.topic
            ),
            other => panic!("{id}: expected the twin, got {other:?}"),
        }
        let mut p = Publish::new(
            format!("devices/{id}/messages/events/"),
            QoS::AtLeastOnce,
            b"x".to_vec(),
        );
        p.pkid = 1;
        r.send(Packet::Publish(p)).await;
        r.expect_closed().await;

        let mut r = connected(&hub, id, &key).await;
        r.send(Packet::Subscribe(Subscribe::new(
            format!("devices/{id}/messages/devicebound/#"),
            QoS::AtLeastOnce,
        )))
        .await;
        r.expect_closed().await;

        let (status, events) = hub
            .rest(
                Method::GET,
                &format!("/emulator/events/recent?deviceId={path}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(events, json!([]), "{id}: telemetry stored");
    }

    // A module id with a wildcard: the same for its telemetry topic.
    hub.create_device("plain").await;
    let (status, v) = hub
        .rest(
            Method::PUT,
            "/devices/plain/modules/m%2B1",
            Some(json!({"deviceId": "plain", "moduleId": "m+1"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mkey = v["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut token = String::new();
    azsim_proto::sas::sign(
        &mut token,
        &format!("{}/devices/plain/modules/m+1", hub.hostname),
        &mkey,
        now() + 3600,
        None,
    )
    .unwrap();
    let mut r = Raw::open(&hub).await;
    let code = r
        .connect_as(
            "plain/m+1",
            &format!("{}/plain/m+1/?api-version=2021-04-12", hub.hostname),
            &token,
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let mut p = Publish::new(
        "devices/plain/modules/m+1/messages/events/",
        QoS::AtLeastOnce,
        b"x".to_vec(),
    );
    p.pkid = 1;
    r.send(Packet::Publish(p)).await;
    r.expect_closed().await;
    hub.stop().await;
}

/// A client may send packets right behind its CONNECT without waiting for the CONNACK (MQTT
/// 3.1.1 3.1.4); those that arrive in the same TLS read as the CONNECT are answered at once,
/// not after the client's next packet.
#[tokio::test]
async fn packets_pipelined_behind_the_connect_are_answered_without_waiting_for_more() {
    let hub = TestHub::start().await;
    let key = device(&hub, "pipe").await;
    let mut c = Connect::new("pipe");
    c.keep_alive = 60;
    c.set_login(
        hub.username("pipe"),
        hub.device_token("pipe", &key, now() + 3600),
    );
    let mut b = BytesMut::new();
    Packet::Connect(c).write(&mut b, usize::MAX).unwrap();
    Packet::Subscribe(Subscribe::new("$iothub/twin/res/#", QoS::AtMostOnce))
        .write(&mut b, usize::MAX)
        .unwrap();
    Packet::PingReq.write(&mut b, usize::MAX).unwrap();
    let mut r = Raw::open(&hub).await;
    r.send_bytes(&b).await;
    assert!(matches!(
        r.recv().await,
        Some(Packet::ConnAck(ConnAck {
            code: ConnectReturnCode::Success,
            ..
        }))
    ));
    assert!(matches!(r.recv().await, Some(Packet::SubAck(_))));
    assert_eq!(r.recv().await, Some(Packet::PingResp));
    hub.stop().await;
}
