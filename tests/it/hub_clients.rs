//! MQTT clients that are not azsim's, against the local hub, as a device developer points them at
//! Azure IoT Hub:
//! - the packets of azure-sdk-for-c (the Embedded C SDK behind the ESP-IDF and Arduino samples),
//!   replayed with rumqttc: its C2D filter `devices/+/messages/devicebound/#`, its streaming JSON
//!   reader that stops at a twin section's `$version`, and its PnP sample's NUL-padded reported
//!   patch (each of which the hub once got wrong, found running the SDK's Paho samples);
//! - Debian's `mosquitto_pub` and `mosquitto_sub` (package mosquitto-clients) with a SAS
//!   password: telemetry with properties in the topic, a C2D message sent by `azsim c2d send`, a
//!   reported patch (a twin GET needs one connection that subscribes and publishes, which no
//!   mosquitto command-line client is against IoT Hub's rules; see the test);
//! - Python paho-mqtt (in the venv as the Python device SDK's transport): telemetry, C2D, a twin
//!   GET and a direct method invoked with `azsim invoke`.
//!
//! Every hub listens on 127.0.0.1:0 (these clients take any port). A missing client prints
//! `skipped: ...` (a failure under AZSIM_REQUIRE_TOOLS=1).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use rumqttc::{Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::service_cli::run;
use crate::support::python;
use crate::support::{TestHub, next_incoming, skip, wait_connack};

/// The MQTT username azure-sdk-for-c 1.6.0-beta.1 sends (`az_iot_hub_client_get_user_name`).
fn c_sdk_username(hub: &TestHub, device: &str) -> String {
    format!(
        "{}/{device}/?api-version=2020-09-30&DeviceClientType=azsdk-c%2F1.6.0-beta.1",
        hub.hostname
    )
}

/// The next PUBLISH the hub sends: topic and payload.
async fn next_publish(el: &mut rumqttc::EventLoop) -> (String, Vec<u8>) {
    next_incoming(el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn embedded_c_sdk_packets_get_c2d_twin_patches_ending_in_version_and_nul_padded_patches_accepted()
 {
    let hub = TestHub::start().await;
    hub.create_device("c-dev").await;
    hub.create_device("c-other").await;
    let key = hub.device_key("c-dev").await;
    let token = hub.device_token("c-dev", &key, unix_now() + 3600);
    // The samples connect with CleanSession 0 and subscribe at QoS 1.
    let opts = hub.options_with("c-dev", &c_sdk_username(&hub, "c-dev"), &token, false);
    let (c, mut el) = rumqttc::AsyncClient::new(opts, 16);
    wait_connack(&mut el).await.expect("connack");
    for f in [
        "devices/+/messages/devicebound/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/twin/res/#",
    ] {
        c.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        let codes = next_incoming(&mut el, |p| match p {
            Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "SUBACK for {f}"
        );
    }

    // C2D under the `+` filter: this device's message, never another's.
    let out = run(&hub, &["c2d", "send", "c-other", "not for c-dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&hub, &["c2d", "send", "c-dev", "hello c"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (topic, payload) = next_publish(&mut el).await;
    assert!(
        topic.starts_with("devices/c-dev/messages/devicebound/"),
        "{topic}"
    );
    assert_eq!(payload, b"hello c");

    // paho_iot_pnp_component_sample's device-information patch: the JSON, then the rest of its
    // zero-filled buffer.
    let mut patch = br#"{"deviceInformation":{"__t":"c","totalMemory":128}}"#.to_vec();
    patch.resize(512, 0);
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=reported_prop",
        QoS::AtMostOnce,
        false,
        patch,
    )
    .await
    .unwrap();
    let (topic, _) = next_publish(&mut el).await;
    assert_eq!(topic, "$iothub/twin/res/204/?$rid=reported_prop&$version=2");

    // A desired patch, and a twin GET: `$version` last in each section, where the C SDK's
    // samples stop reading.
    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "c-dev",
            r#"{"device_count":42,"a":{"b":1}}"#,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let (topic, payload) = next_publish(&mut el).await;
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"a":{"b":1},"device_count":42,"$version":2}"#
    );
    c.publish(
        "$iothub/twin/GET/?$rid=get_twin",
        QoS::AtMostOnce,
        false,
        Vec::new(),
    )
    .await
    .unwrap();
    let (topic, payload) = next_publish(&mut el).await;
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=get_twin");
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"desired":{"a":{"b":1},"device_count":42,"$version":2},"reported":{"deviceInformation":{"__t":"c","totalMemory":128},"$version":2}}"#
    );

    // CleanSession 0 keeps the `+` C2D subscription: a message queued while the device was away
    // arrives on its next connection before any SUBSCRIBE (as the C2D sample expects).
    c.disconnect().await.unwrap();
    crate::support::wait_closed(&mut el).await;
    let out = run(&hub, &["c2d", "send", "c-dev", "while away"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let opts = hub.options_with("c-dev", &c_sdk_username(&hub, "c-dev"), &token, false);
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 16);
    wait_connack(&mut el).await.expect("connack");
    let (topic, payload) = next_publish(&mut el).await;
    assert!(
        topic.starts_with("devices/c-dev/messages/devicebound/"),
        "{topic}"
    );
    assert_eq!(payload, b"while away");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// mosquitto clients

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One mosquitto client run to its end, successfully: its stdout.
async fn mosquitto(bin: &Path, args: &[String]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} did not finish within 60 s", bin.display()))
    .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}): {stderr}",
        bin.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn mosquitto_clients_send_telemetry_and_a_reported_patch_and_receive_c2d_with_a_sas_password()
{
    let (Some(publ), Some(sub)) = (on_path("mosquitto_pub"), on_path("mosquitto_sub")) else {
        return skip("mosquitto_pub/mosquitto_sub not installed (mosquitto-clients)");
    };
    let hub = TestHub::start().await;
    hub.create_device("mq-dev").await;
    let key = hub.device_key("mq-dev").await;
    let token = hub.device_token("mq-dev", &key, unix_now() + 3600);
    let port = hub.mqtt_port.to_string();
    let ca = hub.ca_file.to_str().unwrap().to_owned();
    let user = hub.username("mq-dev");
    // The connection arguments of every run, then `extra`.
    let with = |extra: &[&str]| -> Vec<String> {
        let conn = [
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-V",
            "mqttv311",
            "-i",
            "mq-dev",
            "-u",
            &user,
            "-P",
            &token,
        ];
        conn.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };

    // Telemetry with system and application properties in the topic, at QoS 1.
    let args = with(&[
        "-q",
        "1",
        "-t",
        "devices/mq-dev/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&temp=21&note=a%20b",
        "-m",
        r#"{"t":21}"#,
    ]);
    mosquitto(&publ, &args).await;
    let (s, v) = hub
        .rest(Method::GET, "/emulator/events/recent?deviceId=mq-dev", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let ev = &v[0];
    assert_eq!(ev["body"], r#"{"t":21}"#, "{ev}");
    assert_eq!(ev["systemProperties"]["content-type"], "application/json");
    assert_eq!(ev["systemProperties"]["content-encoding"], "utf-8");
    assert_eq!(ev["properties"]["temp"], "21", "{ev}");
    assert_eq!(ev["properties"]["note"], "a b", "{ev}");

    // C2D: mosquitto_sub on the device's C2D topic gets what `azsim c2d send` queued.
    let args = with(&[
        "-q",
        "1",
        "-t",
        "devices/mq-dev/messages/devicebound/#",
        "-C",
        "1",
        "-W",
        "60",
        "-v",
    ]);
    let sub_task = tokio::spawn(async move { mosquitto(&sub, &args).await });
    let out = run(
        &hub,
        &[
            "c2d",
            "send",
            "mq-dev",
            "hello mosquitto",
            "--property",
            "color=blue",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let line = sub_task.await.unwrap();
    let (topic, body) = line.trim_end().split_once(' ').expect("topic and payload");
    assert!(
        topic.starts_with("devices/mq-dev/messages/devicebound/"),
        "{line}"
    );
    assert!(topic.contains("color=blue"), "{line}");
    assert_eq!(body, "hello mosquitto");
    let (_, twin) = hub.rest(Method::GET, "/devices/mq-dev", None).await;
    assert_eq!(twin["cloudToDeviceMessageCount"], 0, "completed: {twin}");

    // Twin: a reported patch from mosquitto_pub (QoS 1: it waits for the PUBACK) lands in the
    // twin. A twin GET cannot be shown with these tools: IoT Hub answers on the requesting
    // connection only, to a subscription to exactly `$iothub/twin/res/#`, and mosquitto_rr
    // refuses a wildcard response topic (mosquitto_pub never reads).
    let args = with(&[
        "-q",
        "1",
        "-t",
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        "-m",
        r#"{"fw":"mosquitto"}"#,
    ]);
    mosquitto(&publ, &args).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, twin) = hub.rest(Method::GET, "/twins/mq-dev", None).await;
        if twin["properties"]["reported"]["fw"] == "mosquitto" {
            assert_eq!(twin["properties"]["reported"]["$version"], 2, "{twin}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reported patch not in the twin within 30 s: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Python paho-mqtt

/// A paho-mqtt 1.x device: subscribes to C2D, methods and twin responses, sends telemetry and a
/// twin GET, answers every method with 200 and its payload echoed, and prints each event as a
/// JSON line; disconnects when stdin closes. argv: host port ca device username password.
const PAHO_DEVICE: &str = r#"
import json, sys
import paho.mqtt.client as mqtt

host, port, ca, device, username, password = sys.argv[1:7]
def say(event, **kw):
    print(json.dumps(dict(event=event, **kw)), flush=True)

c = mqtt.Client(client_id=device, clean_session=True, protocol=mqtt.MQTTv311)
c.tls_set(ca_certs=ca)
c.username_pw_set(username, password)
filters = ["devices/%s/messages/devicebound/#" % device, "$iothub/methods/POST/#", "$iothub/twin/res/#"]
pending = {}

def on_connect(client, userdata, flags, rc):
    if rc != 0:
        say("error", why="connack %d" % rc)
        return
    for f in filters:
        mid = client.subscribe(f, qos=1)[1]
        pending[mid] = f

def on_subscribe(client, userdata, mid, granted):
    if granted[0] not in (0, 1):
        say("error", why="subscribe %s refused" % pending.get(mid))
    pending.pop(mid, None)
    if not pending:
        say("ready")
        props = "%24.ct=application%2Fjson&%24.ce=utf-8&sensor=paho"
        body = json.dumps({"t": 22}, separators=(",", ":"))
        info = client.publish("devices/%s/messages/events/%s" % (device, props), body, qos=1)
        pending["telemetry"] = info.mid
        client.publish("$iothub/twin/GET/?$rid=42", b"", qos=0)

def on_publish(client, userdata, mid):
    if pending.get("telemetry") == mid:
        say("telemetry_acked")

def on_message(client, userdata, msg):
    t = msg.topic
    if t.startswith("devices/%s/messages/devicebound/" % device):
        say("c2d", topic=t, payload=msg.payload.decode())
    elif t.startswith("$iothub/methods/POST/"):
        name, query = t[len("$iothub/methods/POST/"):].split("/?", 1)
        rid = dict(p.split("=", 1) for p in query.split("&"))["$rid"]
        client.publish("$iothub/methods/res/200/?$rid=" + rid, json.dumps({"echo": json.loads(msg.payload)}), qos=0)
        say("method", name=name)
    elif t.startswith("$iothub/twin/res/"):
        say("twin", topic=t, body=json.loads(msg.payload))
    else:
        say("error", why="unexpected topic " + t)

c.on_connect, c.on_subscribe, c.on_publish, c.on_message = on_connect, on_subscribe, on_publish, on_message
c.connect(host, int(port), keepalive=60)
c.loop_start()
sys.stdin.read()
c.disconnect()
c.loop_stop()
"#;

/// Reads JSON lines until the event named `event`; fails on an `error` event, EOF or a minute.
async fn expect_event(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {event:?} event from the paho device within 60 s"))
            .expect("read the paho device's stdout")
            .unwrap_or_else(|| panic!("the paho device exited before {event:?}"));
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        assert_ne!(v["event"], "error", "paho device: {v}");
        if v["event"] == event {
            return v;
        }
    }
}

#[tokio::test]
async fn python_paho_device_sends_telemetry_gets_c2d_the_twin_and_answers_a_method() {
    let Some(py) = python() else {
        return skip("no Python venv (.venv or AZSIM_PYTHON) for paho-mqtt");
    };
    let has_paho = Command::new(&py)
        .args(["-c", "import paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_paho {
        return skip("paho-mqtt is not installed in the Python venv");
    }
    let hub = TestHub::start().await;
    hub.create_device("paho-dev").await;
    let key = hub.device_key("paho-dev").await;
    let token = hub.device_token("paho-dev", &key, unix_now() + 3600);
    let mut child = Command::new(&py)
        .arg("-c")
        .arg(PAHO_DEVICE)
        .arg(&hub.hostname)
        .arg(hub.mqtt_port.to_string())
        .arg(&hub.ca_file)
        .arg("paho-dev")
        .arg(hub.username("paho-dev"))
        .arg(&token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    expect_event(&mut lines, "ready").await;
    expect_event(&mut lines, "telemetry_acked").await;
    let twin = expect_event(&mut lines, "twin").await;
    assert_eq!(twin["topic"], "$iothub/twin/res/200/?$rid=42", "{twin}");
    assert_eq!(
        twin["body"],
        json!({"desired":{"$version":1},"reported":{"$version":1}})
    );
    let (_, v) = hub
        .rest(
            Method::GET,
            "/emulator/events/recent?deviceId=paho-dev",
            None,
        )
        .await;
    assert_eq!(v[0]["body"], r#"{"t":22}"#, "{v}");
    assert_eq!(v[0]["properties"]["sensor"], "paho", "{v}");

    let out = run(&hub, &["c2d", "send", "paho-dev", "hello paho"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let c2d = expect_event(&mut lines, "c2d").await;
    assert_eq!(c2d["payload"], "hello paho", "{c2d}");

    let out = run(
        &hub,
        &[
            "invoke",
            "paho-dev",
            "reboot",
            "--payload",
            r#"{"delay":3}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        json!({"status":200,"payload":{"echo":{"delay":3}}})
    );
    let m = expect_event(&mut lines, "method").await;
    assert_eq!(m["name"], "reboot");

    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the paho device exits when stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
    hub.stop().await;
}
