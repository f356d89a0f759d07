//! The hub is never kinder than Azure: each strict rule broken by a client, and Azure's answer
//! seen (no twin response, the QoS granted, 400 InvalidProtocolVersion, 412, 403100 on size,
//! 400 on range), plus what `lenient` turns off. Raw MQTT packets over real TLS, REST with reqwest.

use std::time::Duration;

use azsim_emulator::clock::unix_now as now;
use bytes::BytesMut;
use reqwest::Method;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, Subscribe,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::TestHub;

/// A raw MQTT client over the hub's TLS (every byte under the test's control).
pub(crate) struct Raw {
    s: TlsStream<TcpStream>,
    buf: BytesMut,
    next_pkid: u16,
}

impl Raw {
    pub(crate) async fn open(hub: &TestHub) -> Raw {
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
            next_pkid: 0,
        }
    }

    pub(crate) async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        // The hub may already have closed; a failed write shows up as a close on read.
        let _ = self.s.write_all(&b).await;
        let _ = self.s.flush().await;
    }

    /// The next packet, or `None` once the hub closed the connection.
    pub(crate) async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
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

    /// Waits until the hub closes the connection; panics on an acknowledgement.
    pub(crate) async fn expect_closed(&mut self) {
        loop {
            match self.recv().await {
                None => return,
                Some(Packet::PubAck(a)) => panic!("hub acknowledged {a:?} instead of closing"),
                Some(_) => {}
            }
        }
    }

    /// CONNECT with a clean session; the CONNACK code.
    pub(crate) async fn connect(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
        will: Option<LastWill>,
    ) -> ConnectReturnCode {
        self.connect_session(client_id, username, password, will, true)
            .await
    }

    /// CONNECT, clean or resuming the stored session; the CONNACK code.
    pub(crate) async fn connect_session(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
        will: Option<LastWill>,
        clean: bool,
    ) -> ConnectReturnCode {
        let mut c = Connect::new(client_id);
        c.keep_alive = 60;
        c.clean_session = clean;
        c.last_will = will;
        c.set_login(username, password);
        self.send(Packet::Connect(c)).await;
        match self.recv().await {
            Some(Packet::ConnAck(ConnAck { code, .. })) => code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe::new(filter, qos)))
            .await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(_)) => return,
                Some(_) => {}
                None => panic!("closed instead of SUBACK to {filter}"),
            }
        }
    }

    /// PUBLISH at QoS 1 with the next packet id; returns the id.
    pub(crate) async fn publish1(&mut self, topic: &str, body: impl Into<Vec<u8>>) -> u16 {
        self.next_pkid += 1;
        let mut p = Publish::new(topic, QoS::AtLeastOnce, body.into());
        p.pkid = self.next_pkid;
        self.send(Packet::Publish(p)).await;
        self.next_pkid
    }

    pub(crate) async fn publish0(&mut self, topic: &str, body: impl Into<Vec<u8>>) {
        self.send(Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            body.into(),
        )))
        .await;
    }

    /// The next PUBLISH from the hub (other packets skipped).
    pub(crate) async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(_) => {}
                None => panic!("closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Waits for the PUBACK of `pkid`.
    pub(crate) async fn puback(&mut self, pkid: u16) {
        loop {
            match self.recv().await {
                Some(Packet::PubAck(PubAck { pkid: p, .. })) if p == pkid => return,
                Some(_) => {}
                None => panic!("closed while waiting for PUBACK {pkid}"),
            }
        }
    }
}

/// Register `id`; its primary key.
pub(crate) async fn device(hub: &TestHub, id: &str) -> String {
    hub.create_device(id).await;
    hub.device_key(id).await
}

/// `id` connected over raw MQTT with its own key.
pub(crate) async fn connected(hub: &TestHub, id: &str, key: &str) -> Raw {
    let mut r = Raw::open(hub).await;
    let code = r
        .connect(
            id,
            &hub.username(id),
            &hub.device_token(id, key, now() + 3600),
            None,
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    r
}

#[tokio::test]
async fn twin_requests_are_answered_only_to_a_client_subscribed_to_twin_res() {
    let hub = TestHub::start().await;
    let key = device(&hub, "tw-strict").await;
    let mut r = connected(&hub, "tw-strict", &key).await;
    // Not subscribed: the GET gets nothing back, the reported patch is applied silently.
    r.publish0("$iothub/twin/GET/?$rid=1", Vec::new()).await;
    r.publish0(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        br#"{"fw":"1.2"}"#.to_vec(),
    )
    .await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    r.publish0("$iothub/twin/GET/?$rid=3", Vec::new()).await;
    // Requests are handled in order: had rid 1 or 2 been answered, it would come first.
    let p = r.next_publish().await;
    assert!(
        p.topic.starts_with("$iothub/twin/res/200/?$rid=3"),
        "{}",
        p.topic
    );
    let twin: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(twin["reported"]["fw"], "1.2", "{twin}");
    hub.stop().await;

    // Lenient (not Azure): answered without the subscription.
    let hub = TestHub::start_configured(|c| c.lenient = true).await;
    let key = device(&hub, "tw-lenient").await;
    let mut r = connected(&hub, "tw-lenient", &key).await;
    r.publish0("$iothub/twin/GET/?$rid=9", Vec::new()).await;
    let p = r.next_publish().await;
    assert!(p.topic.starts_with("$iothub/twin/res/200/?$rid=9"));
    hub.stop().await;
}

async fn send_c2d(hub: &TestHub, id: &str, body: &str) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/emulator/devices/{id}/c2d"),
            Some(json!({"body": body})),
        )
        .await;
    assert!(s == 200 || s == 202 || s == 204, "{s} {v}");
}

async fn c2d_count(hub: &TestHub, id: &str) -> u64 {
    let (_, v) = hub.rest(Method::GET, &format!("/devices/{id}"), None).await;
    v["cloudToDeviceMessageCount"].as_u64().unwrap()
}

#[tokio::test]
async fn c2d_to_a_qos_0_subscription_is_delivered_at_qos_0_and_to_qos_1_at_qos_1() {
    let hub = TestHub::start().await;
    let key = device(&hub, "c2d0").await;
    let mut r = connected(&hub, "c2d0", &key).await;
    r.subscribe("devices/c2d0/messages/devicebound/#", QoS::AtMostOnce)
        .await;
    send_c2d(&hub, "c2d0", "zero").await;
    let p = r.next_publish().await;
    assert_eq!(p.qos, QoS::AtMostOnce, "{p:?}");
    assert_eq!(&p.payload[..], b"zero");
    // At most once: nothing to acknowledge, the message is complete once sent.
    assert_eq!(c2d_count(&hub, "c2d0").await, 0);

    let key = device(&hub, "c2d1").await;
    let mut r = connected(&hub, "c2d1", &key).await;
    r.subscribe("devices/c2d1/messages/devicebound/#", QoS::AtLeastOnce)
        .await;
    send_c2d(&hub, "c2d1", "one").await;
    let p = r.next_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(c2d_count(&hub, "c2d1").await, 1, "in flight until PUBACK");

    // A persistent session keeps the subscription's QoS 0 across a reconnect.
    let key = device(&hub, "c2dp").await;
    let token = hub.device_token("c2dp", &key, now() + 3600);
    let mut r = Raw::open(&hub).await;
    let code = r
        .connect_session("c2dp", &hub.username("c2dp"), &token, None, false)
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    r.subscribe("devices/c2dp/messages/devicebound/#", QoS::AtMostOnce)
        .await;
    r.send(Packet::Disconnect).await;
    assert!(r.recv().await.is_none(), "closed after DISCONNECT");
    send_c2d(&hub, "c2dp", "later").await;
    let mut r = Raw::open(&hub).await;
    let code = r
        .connect_session("c2dp", &hub.username("c2dp"), &token, None, false)
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let p = r.next_publish().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtMostOnce, &b"later"[..]));
    hub.stop().await;
}

#[tokio::test]
async fn rest_without_api_version_gets_400_invalid_protocol_version() {
    let hub = TestHub::start().await;
    hub.create_device("av").await;
    let url = format!("https://localhost:{}/devices/av", hub.https_port);
    let r = hub
        .http()
        .get(&url)
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.headers()["iothub-errorcode"], "InvalidProtocolVersion");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["Message"], "ErrorCode:InvalidProtocolVersion;BadRequest");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .starts_with("Tracking ID:"),
        "{v}"
    );
    // The same call with it works.
    let (s, _) = hub.rest(Method::GET, "/devices/av", None).await;
    assert_eq!(s, 200);
    hub.stop().await;

    let hub = TestHub::start_configured(|c| c.lenient = true).await;
    hub.create_device("av").await;
    let url = format!("https://localhost:{}/devices/av", hub.https_port);
    let r = hub
        .http()
        .get(&url)
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "lenient: no api-version needed");
    hub.stop().await;
}

async fn delete(hub: &TestHub, path: &str, if_match: Option<&str>) -> (u16, Value) {
    let mut rb = hub
        .http()
        .delete(hub.url(path))
        .header("Authorization", hub.service_token());
    if let Some(m) = if_match {
        rb = rb.header("If-Match", m);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn deleting_a_device_needs_if_match_and_a_wrong_etag_gets_412() {
    let hub = TestHub::start().await;
    hub.create_device("del").await;
    let (s, v) = delete(&hub, "/devices/del", None).await;
    assert_eq!(s, 412, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("412001"), "{v}");
    let (s, _) = delete(&hub, "/devices/del", Some("\"AAAAAAAAAAk=\"")).await;
    assert_eq!(s, 412);
    let (_, dev) = hub.rest(Method::GET, "/devices/del", None).await;
    let etag = format!("\"{}\"", dev["etag"].as_str().unwrap());
    let (s, _) = delete(&hub, "/devices/del", Some(&etag)).await;
    assert_eq!(s, 204);
    hub.create_device("del2").await;
    let (s, _) = delete(&hub, "/devices/del2", Some("\"*\"")).await;
    assert_eq!(s, 204);
    hub.stop().await;
}

#[tokio::test]
async fn twin_size_is_counted_as_azure_counts_it_and_integers_stay_in_azure_s_range() {
    let hub = TestHub::start().await;
    hub.create_device("sz").await;
    // 2600 properties `"kNNNN": 1`: about 26 KB of JSON, but 2600 x (5 + 8) = 33,800 bytes as
    // IoT Hub counts them (numbers are 8 bytes), over the 32 KB of desired properties.
    let mut big = serde_json::Map::new();
    for i in 0..2600 {
        big.insert(format!("k{i:04}"), json!(1));
    }
    assert!(serde_json::to_vec(&big).unwrap().len() < 32 * 1024);
    let (s, v) = hub
        .rest(
            Method::PATCH,
            "/twins/sz",
            Some(json!({"properties": {"desired": big}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let inner: Value = serde_json::from_str(v["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 403100, "{v}");
    assert_eq!(
        inner["message"],
        "'Properties.Desired' size should be less than 32768 bytes."
    );
    let fits: serde_json::Map<String, Value> = big.into_iter().take(2520).collect();
    let (s, v) = hub
        .rest(
            Method::PATCH,
            "/twins/sz",
            Some(json!({"properties": {"desired": fits}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // "Integers can have a minimum value of -4503599627370496 and a maximum value of
    // 4503599627370495."
    for (n, ok) in [
        (json!(4503599627370495_i64), true),
        (json!(4503599627370496_i64), false),
        (json!(-4503599627370496_i64), true),
        (json!(-4503599627370497_i64), false),
    ] {
        let (s, v) = hub
            .rest(Method::PATCH, "/twins/sz", Some(json!({"tags": {"n": n}})))
            .await;
        assert_eq!(s == 200, ok, "{n}: {s} {v}");
    }

    // The device's reported patch is counted the same way: 400 on the response topic.
    let key = hub.device_key("sz").await;
    let mut r = connected(&hub, "sz", &key).await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    let mut rep = serde_json::Map::new();
    for i in 0..2600 {
        rep.insert(format!("r{i:04}"), json!(true));
    }
    // 2600 x (5 + 4) = 23,400: fits. Then 1,100 more numbers of 13: 37,700: does not.
    r.publish0(
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        serde_json::to_vec(&rep).unwrap(),
    )
    .await;
    let p = r.next_publish().await;
    assert!(p.topic.starts_with("$iothub/twin/res/204/"), "{}", p.topic);
    let more: serde_json::Map<String, Value> =
        (0..1100).map(|i| (format!("n{i:04}"), json!(1))).collect();
    r.publish0(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        serde_json::to_vec(&more).unwrap(),
    )
    .await;
    let p = r.next_publish().await;
    assert!(p.topic.starts_with("$iothub/twin/res/403/"), "{}", p.topic);
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body["errorCode"], 403100, "{body}");
    assert_eq!(
        body["message"],
        "'Properties.Reported' size should be less than 32768 bytes."
    );
    hub.stop().await;
}

#[tokio::test]
async fn metadata_is_kept_per_property_at_every_level_of_desired_and_reported() {
    let hub = TestHub::start().await;
    let key = device(&hub, "md").await;
    for patch in [json!({"o": {"x": 1}, "top": 1}), json!({"o": {"y": 2}})] {
        let (s, v) = hub
            .rest(
                Method::PATCH,
                "/twins/md",
                Some(json!({"properties": {"desired": patch}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, twin) = hub.rest(Method::GET, "/twins/md", None).await;
    let meta = &twin["properties"]["desired"]["$metadata"];
    // Created at version 1; the patches made versions 2 and 3.
    assert_eq!(meta["$lastUpdatedVersion"], 3, "{meta}");
    assert_eq!(meta["top"]["$lastUpdatedVersion"], 2, "{meta}");
    assert_eq!(meta["o"]["$lastUpdatedVersion"], 3, "{meta}");
    assert_eq!(meta["o"]["x"]["$lastUpdatedVersion"], 2, "{meta}");
    assert_eq!(meta["o"]["y"]["$lastUpdatedVersion"], 3, "{meta}");
    assert!(meta["o"]["x"]["$lastUpdated"].is_string(), "{meta}");

    let mut r = connected(&hub, "md", &key).await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    for (rid, patch) in [(1, json!({"a": {"b": 1}})), (2, json!({"c": true}))] {
        r.publish0(
            &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            patch.to_string(),
        )
        .await;
        let p = r.next_publish().await;
        assert!(p.topic.starts_with("$iothub/twin/res/204/"), "{}", p.topic);
    }
    let (_, twin) = hub.rest(Method::GET, "/twins/md", None).await;
    let meta = &twin["properties"]["reported"]["$metadata"];
    assert_eq!(meta["$lastUpdatedVersion"], 3, "{meta}");
    assert_eq!(meta["a"]["b"]["$lastUpdatedVersion"], 2, "{meta}");
    assert_eq!(meta["c"]["$lastUpdatedVersion"], 3, "{meta}");
    hub.stop().await;
}

#[tokio::test]
async fn a_device_announcing_a_model_id_has_it_on_its_twin_and_its_telemetry_stamped() {
    let hub = TestHub::start().await;
    let key = device(&hub, "pnp").await;
    let model = "dtmi:com:example:Thermostat;1";
    let username = format!(
        "{}/pnp/?api-version=2021-04-12&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1",
        hub.hostname
    );
    let mut r = Raw::open(&hub).await;
    let code = r
        .connect(
            "pnp",
            &username,
            &hub.device_token("pnp", &key, now() + 3600),
            None,
        )
        .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let id = r
        .publish1("devices/pnp/messages/events/", "{\"t\":1}")
        .await;
    r.puback(id).await;
    let (_, twin) = hub.rest(Method::GET, "/twins/pnp", None).await;
    assert_eq!(twin["modelId"], model, "{twin}");
    let (_, events) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=pnp", None)
        .await;
    let last = events
        .as_array()
        .and_then(|a| a.iter().rev().find(|e| e["type"] == "telemetry"))
        .cloned()
        .unwrap_or_else(|| panic!("no telemetry in {events}"));
    assert_eq!(last["systemProperties"]["dt-dataschema"], model, "{last}");
    // A device without a model has neither.
    let key = device(&hub, "plain").await;
    let mut r = connected(&hub, "plain", &key).await;
    let id = r.publish1("devices/plain/messages/events/", "x").await;
    r.puback(id).await;
    let (_, twin) = hub.rest(Method::GET, "/twins/plain", None).await;
    assert!(twin.get("modelId").is_none(), "{twin}");
    hub.stop().await;
}

#[tokio::test]
async fn azsim_hub_start_lenient_serves_rest_without_api_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(args)
            .arg("--state")
            .arg(&dir)
            .env_remove("IOTHUB_CONNECTION_STRING")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[
        "hub",
        "start",
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
        "--dashboard-port",
        "off",
        "--in-memory",
        "--lenient",
    ]);
    assert!(out.status.success(), "{out:?}");
    let info = azsim_emulator::HubInfo::load(&dir).unwrap();
    let hub = TestHub::attach(&info);
    let r = hub
        .http()
        .get(format!("https://localhost:{}/devices", hub.https_port))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let stopped = run(&["hub", "stop"]);
    assert_eq!(status, 200, "a lenient hub needs no api-version");
    assert!(stopped.status.success(), "{stopped:?}");
}
