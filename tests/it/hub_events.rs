//! The emulator-only event stream, will messages, retain, twin errors over MQTT, modules, and the
//! `azsim hub` command itself.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use rumqttc::{AsyncClient, LastWill, Packet, QoS};
use serde_json::{Value, json};

use crate::support::{TestHub, next_incoming, wait_connack};

/// Read SSE `data:` lines until one satisfies `f`.
pub(crate) async fn sse_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    pending: &mut String,
    mut f: impl FnMut(&str) -> bool,
) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                let line = line.trim_end();
                if f(line) {
                    return line.to_string();
                }
            }
            let chunk = stream.next().await.expect("stream open").expect("chunk");
            pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("expected SSE line within 10 s")
}

#[tokio::test]
async fn the_event_stream_says_ready_then_carries_filtered_telemetry_and_twin_changes() {
    let hub = TestHub::start().await;
    hub.create_device("s1").await;
    hub.create_device("s2").await;
    let resp = hub
        .http()
        .get(hub.url("/emulator/events?deviceId=s1"))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut pending = String::new();
    sse_until(&mut stream, &mut pending, |l| l == ": ready").await;

    for id in ["s2", "s1"] {
        let key = hub.device_key(id).await;
        let (c, mut el) = hub.connect(id, &key, true).await;
        c.publish(
            format!("devices/{id}/messages/events/"),
            QoS::AtLeastOnce,
            false,
            format!("from {id}").into_bytes(),
        )
        .await
        .unwrap();
        next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    let line = sse_until(&mut stream, &mut pending, |l| {
        l.starts_with("data:") && l.contains("\"telemetry\"")
    })
    .await;
    let ev: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(ev["deviceId"], "s1", "the filter drops s2");
    assert_eq!(ev["body"], "from s1");

    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/s1",
            Some(json!({"properties":{"desired":{"k":1}}})),
        )
        .await;
    assert_eq!(s, 200);
    let line = sse_until(&mut stream, &mut pending, |l| l.contains("twinDesired")).await;
    let ev: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(ev["version"], 2);
    assert_eq!(ev["patch"], json!({"k":1}));
    hub.stop().await;
}

#[tokio::test]
async fn a_will_is_sent_as_telemetry_on_an_ungraceful_close_and_retain_is_a_property() {
    let hub = TestHub::start().await;
    hub.create_device("w1").await;
    let key = hub.device_key("w1").await;
    let mut opts = hub.device_options("w1", &key, true);
    opts.set_last_will(LastWill::new(
        "devices/w1/messages/events/reason=gone",
        "bye",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, mut el) = AsyncClient::new(opts, 16);
    wait_connack(&mut el).await.unwrap();
    c.publish(
        "devices/w1/messages/events/",
        QoS::AtLeastOnce,
        true,
        b"kept?".to_vec(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    // Breaking the client's own rules (QoS 2) makes the hub close the connection: ungraceful.
    c.publish(
        "devices/w1/messages/events/",
        QoS::ExactlyOnce,
        false,
        b"x".to_vec(),
    )
    .await
    .unwrap();
    crate::support::wait_closed(&mut el).await;
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, v) = hub
                .rest(Method::GET, "/emulator/events/recent?deviceId=w1", None)
                .await;
            if v.as_array().is_some_and(|a| a.len() >= 2) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("will arrives");
    assert_eq!(events[0]["properties"]["mqtt-retain"], "true");
    assert_eq!(events[1]["body"], "bye");
    assert_eq!(events[1]["properties"]["iothub-MessageType"], "Will");
    assert_eq!(events[1]["properties"]["reason"], "gone");
    hub.stop().await;
}

#[tokio::test]
async fn a_bad_reported_patch_gets_400004_and_the_connection_stays() {
    let hub = TestHub::start().await;
    hub.create_device("tp").await;
    let key = hub.device_key("tp").await;
    let (c, mut el) = hub.connect("tp", &key, true).await;
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    for (rid, body) in [
        ("a", "not json".to_string()),
        ("b", format!("{{\"s\":\"{}\"}}", "x".repeat(5000))),
        ("c", "{\"$bad\":1}".into()),
    ] {
        c.publish(
            format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            body.into_bytes(),
        )
        .await
        .unwrap();
        let (topic, payload) = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
            _ => None,
        })
        .await;
        assert_eq!(topic, format!("$iothub/twin/res/400/?$rid={rid}"));
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["errorCode"], 400004);
    }
    c.publish(
        "$iothub/twin/GET/?$rid=z",
        QoS::AtMostOnce,
        false,
        Vec::new(),
    )
    .await
    .unwrap();
    let topic = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=z");
    hub.stop().await;
}

#[tokio::test]
async fn a_module_identity_connects_with_its_own_token_and_sends_telemetry() {
    let hub = TestHub::start().await;
    hub.create_device("md").await;
    let (s, m) = hub
        .rest(
            Method::PUT,
            "/devices/md/modules/mod1",
            Some(json!({"deviceId":"md","moduleId":"mod1"})),
        )
        .await;
    assert_eq!(s, 200, "{m}");
    let key = m["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut token = String::new();
    azsim_proto::sas::sign(
        &mut token,
        &format!("{}/devices/md/modules/mod1", hub.hostname),
        &key,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600,
        None,
    )
    .unwrap();
    let opts = hub.options_with(
        "md/mod1",
        &format!("{}/md/mod1/?api-version=2021-04-12", hub.hostname),
        &token,
        true,
    );
    let (c, mut el) = AsyncClient::new(opts, 16);
    wait_connack(&mut el).await.unwrap();
    c.publish(
        "devices/md/modules/mod1/messages/events/",
        QoS::AtLeastOnce,
        false,
        b"m".to_vec(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let (_, v) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=md", None)
        .await;
    assert_eq!(v[0]["moduleId"], "mod1");
    assert_eq!(v[0]["annotations"]["iothub-connection-module-id"], "mod1");
    let (s, t) = hub.rest(Method::GET, "/twins/md/modules/mod1", None).await;
    assert_eq!(s, 200);
    assert_eq!(t["moduleId"], "mod1");
    hub.stop().await;
}

#[test]
fn hub_info_debug_redacts_the_service_key() {
    let info = azsim_emulator::HubInfo {
        hostname: "localhost".into(),
        mqtt_port: 8883,
        https_port: 8443,
        ca_file: "/x/ca.pem".into(),
        service_connection_string:
            "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0"
                .into(),
        pid: 1,
        dashboard_url: None,
        amqp_port: None,
        eventhub_connection_string: None,
        amqp_dev_port: None,
        eventhub_dev_connection_string: None,
        id_scope: String::new(),
        provisioning_host: String::new(),
        provisioning_service_connection_string: String::new(),
        policies: Vec::new(),
        settings: None,
    };
    let d = format!("{info:?}");
    assert!(!d.contains("c2VjcmV0"), "{d}");
}

#[test]
fn azsim_hub_prints_one_json_line_writes_hub_json_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--json",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).expect("one JSON line");
    assert!(v["mqtt_port"].as_u64().unwrap() > 0);
    assert!(
        v["service_connection_string"]
            .as_str()
            .unwrap()
            .starts_with("HostName=localhost:")
    );
    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    assert_eq!(
        u64::from(info.https_port),
        v["https_port"].as_u64().unwrap()
    );
    assert_eq!(
        info.ca_file,
        std::path::PathBuf::from(v["ca_file"].as_str().unwrap())
    );
    assert!(info.ca_file.exists());
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let key = info
        .service_connection_string
        .rsplit("SharedAccessKey=")
        .next()
        .unwrap();
    assert!(!stderr.contains(key), "key leaked to stderr");
}

#[test]
fn azsim_hub_rejects_a_bad_bind_address_with_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "--bind", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--bind"), "{err}");
}
