//! The service CLI (`azsim device | invoke | twin | c2d | monitor`) through the real binary
//! against a real hub (TLS, port 0), with raw rumqttc devices on the other side.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azsim_proto::topic::{self, Identity, SubscriptionKind};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::TestHub;

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one json value ({e}): {self:?}"))
    }
}

/// `azsim ARGS` in an empty directory (no `.azsim/hub`), with the service env vars cleared.
pub fn azsim(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.current_dir(cwd)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub async fn output(mut cmd: Command) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("azsim did not finish within 90 s")
        .expect("run azsim");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `azsim ARGS --hub-connection-string CS --ca CA` against `hub`.
pub async fn run(hub: &TestHub, args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(args)
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file);
    output(cmd).await
}

/// Reads `azsim monitor`'s stderr until its "monitoring events of ..." line (the stream is live).
pub async fn wait_monitor_ready(
    stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
            .await
            .expect("monitor ready within 20 s")
            .unwrap();
        match line {
            Some(l) if l.starts_with("monitoring events of") => return,
            Some(l) => seen.push(l),
            None => panic!("monitor exited before it was ready: {seen:?}"),
        }
    }
}

/// The service policy key in the hub's connection string.
fn service_key(hub: &TestHub) -> String {
    hub.service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key in service connection string")
        .to_owned()
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !out.stdout.contains(s) && !out.stderr.contains(s),
            "a secret leaked into the output: {out:?}"
        );
    }
}

fn cs_field<'a>(cs: &'a str, name: &str) -> &'a str {
    cs.split(';')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{name} missing in connection string"))
}

/// A raw MQTT device (or module, for a module connection string) of the test hub: rumqttc over
/// TLS with a SAS token from azsim-proto.
pub struct RawDevice {
    pub id: String,
    pub module: Option<String>,
    pub client: AsyncClient,
    pub events: EventLoop,
}

impl RawDevice {
    pub async fn connect(hub: &TestHub, device_cs: &str) -> RawDevice {
        let id = cs_field(device_cs, "DeviceId").to_owned();
        let module = device_cs
            .split(';')
            .find_map(|p| p.strip_prefix("ModuleId="))
            .map(str::to_owned);
        let key = cs_field(device_cs, "SharedAccessKey");
        let host = "localhost";
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let resource = match &module {
            None => azsim_proto::sas::Resource::Device {
                host,
                device_id: &id,
            },
            Some(m) => azsim_proto::sas::Resource::Module {
                host,
                device_id: &id,
                module_id: m,
            },
        };
        let mut password = String::new();
        azsim_proto::sas::sign(&mut password, &resource, key, expiry, None).unwrap();
        let mut client_id = String::new();
        azsim_proto::username::write_client_id(&mut client_id, &id, module.as_deref()).unwrap();
        let tls = azsim::tls::client_config(Some(&hub.ca_file)).unwrap();
        let mut opts = MqttOptions::new(client_id.clone(), host, hub.mqtt_port);
        let mut username = String::new();
        azsim_proto::username::write_username(
            &mut username,
            host,
            &id,
            module.as_deref(),
            "test",
            None,
        )
        .unwrap();
        opts.set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(60))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut events) = AsyncClient::new(opts, 16);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .expect("connack within 10 s")
            {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{client_id}");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{client_id} cannot connect: {e}"),
            }
        }
        RawDevice {
            id,
            module,
            client,
            events,
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            device_id: &self.id,
            module_id: self.module.as_deref(),
        }
    }

    pub async fn subscribe(&mut self, kind: SubscriptionKind) {
        let mut filter = String::new();
        topic::write_filter(&mut filter, kind, self.identity()).unwrap();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Packet::SubAck(_) = self.next_packet().await {
                return;
            }
        }
    }

    /// The next incoming packet (drives the event loop), within 20 s.
    pub async fn next_packet(&mut self) -> Packet {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.events.poll())
                .await
                .expect("no packet within 20 s")
            {
                Ok(Event::Incoming(p)) => return p,
                Ok(Event::Outgoing(_)) => {}
                Err(e) => panic!("{}: connection failed: {e}", self.id),
            }
        }
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let Packet::Publish(p) = self.next_packet().await {
                return p;
            }
        }
    }

    pub async fn send_telemetry(&mut self, body: &str, app: &[(&str, &str)]) {
        let mut t = String::new();
        topic::write_telemetry_topic(
            &mut t,
            self.identity(),
            &azsim_proto::property_bag::SystemProperties {
                content_type: Some("application/json"),
                ..Default::default()
            },
            app.iter().copied(),
        )
        .unwrap();
        self.client
            .publish(t, QoS::AtLeastOnce, false, body.as_bytes().to_vec())
            .await
            .unwrap();
        loop {
            if let Packet::PubAck(_) = self.next_packet().await {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_create_show_list_and_delete_work_end_to_end() {
    let hub = TestHub::start().await;
    let key = service_key(&hub);

    let out = run(&hub, &["device", "create", "cli-dev-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("created device cli-dev-1"), "{out:?}");
    let cs_line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("connection string: "))
        .expect("connection string line");
    assert!(cs_line.starts_with("HostName=localhost"), "{cs_line}");
    assert_eq!(cs_field(cs_line, "DeviceId"), "cli-dev-1");
    assert!(out.stdout.contains("azsim run"), "{out:?}");
    assert_no_secret(&out, &[&key]);

    let pk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let sk = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";
    let out = run(
        &hub,
        &[
            "device",
            "create",
            "cli-dev-2",
            "--primary-key",
            pk,
            "--secondary-key",
            sk,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["deviceId"], "cli-dev-2");
    let cs = v["connectionString"].as_str().unwrap();
    assert_eq!(cs_field(cs, "SharedAccessKey"), pk);
    assert!(
        !out.stdout.contains(sk),
        "the secondary key is printed: {out:?}"
    );

    let out = run(&hub, &["device", "show", "cli-dev-2", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["deviceId"], "cli-dev-2");
    assert_no_secret(&out, &[pk, sk, &key]);

    let out = run(
        &hub,
        &["device", "show", "cli-dev-2", "--connection-string"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(cs_field(out.stdout.trim(), "SharedAccessKey"), pk);

    let out = run(&hub, &["device", "list", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let ids: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"cli-dev-1".to_owned()) && ids.contains(&"cli-dev-2".to_owned()),
        "{ids:?}"
    );
    assert_no_secret(&out, &[pk, sk, &key]);

    let out = run(&hub, &["device", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("DEVICE"), "{out:?}");
    assert!(out.stdout.contains("cli-dev-2"), "{out:?}");

    let out = run(&hub, &["device", "create", "cli-dev-2"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 409001"), "{out:?}");

    let out = run(&hub, &["device", "delete", "cli-dev-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&hub, &["device", "show", "cli-dev-1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404001"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_prints_the_devices_status_and_payload_and_exits_0() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("m-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::Methods).await;

    let invoke = tokio::spawn({
        let cs = hub.service_connection_string.clone();
        let ca = hub.ca_file.clone();
        async move {
            let cwd = tempfile::tempdir().unwrap();
            let mut cmd = azsim(cwd.path());
            cmd.args([
                "invoke",
                "m-dev",
                "reboot",
                "--payload",
                r#"{"delay":3}"#,
                "--json",
            ])
            .arg("--hub-connection-string")
            .arg(cs)
            .arg("--ca")
            .arg(ca);
            output(cmd).await
        }
    });
    let req = dev.next_publish().await;
    let parsed = topic::parse_method_request(&req.topic).expect("method request topic");
    assert_eq!(parsed.name.as_str(), "reboot");
    let request_payload: Value = serde_json::from_slice(&req.payload).unwrap();
    assert_eq!(request_payload, serde_json::json!({"delay": 3}));
    let mut res = String::new();
    topic::write_method_response(&mut res, 418, parsed.rid.as_raw()).unwrap();
    dev.client
        .publish(res, QoS::AtMostOnce, false, br#"{"teapot":true}"#.to_vec())
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            if dev.events.poll().await.is_err() {
                break;
            }
        }
    });
    let out = invoke.await.unwrap();
    assert_eq!(
        out.code, 0,
        "a device answer of any status exits 0: {out:?}"
    );
    assert_eq!(
        out.json(),
        serde_json::json!({"status": 418, "payload": {"teapot": true}})
    );
    driver.abort();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_on_an_offline_device_exits_1_with_azures_device_not_online_error() {
    let hub = TestHub::start().await;
    hub.create_device("offline-dev").await;
    let out = run(&hub, &["invoke", "offline-dev", "ping", "--timeout", "5"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("error: 404103 DeviceNotOnline: "),
        "{out:?}"
    );
    assert_eq!(out.stdout, "", "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_on_a_silent_device_exits_1_with_gateway_timeout() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("silent-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::Methods).await;
    let driver = tokio::spawn(async move { while dev.events.poll().await.is_ok() {} });
    let out = run(&hub, &["invoke", "silent-dev", "ping", "--timeout", "5"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 504101"), "{out:?}");
    driver.abort();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_patch_updates_desired_and_tags_and_twin_show_reads_them_back() {
    let hub = TestHub::start().await;
    hub.create_device("twin-dev").await;

    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "twin-dev",
            r#"{"interval":5,"mode":"eco"}"#,
            "--tags",
            r#"{"site":"lab"}"#,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("updated twin of twin-dev: desired $version"),
        "{out:?}"
    );

    let out = run(&hub, &["twin", "show", "twin-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert_eq!(twin["properties"]["desired"]["interval"], 5);
    assert_eq!(twin["properties"]["desired"]["mode"], "eco");
    assert_eq!(twin["tags"]["site"], "lab");
    let etag = twin["etag"].as_str().unwrap().to_owned();

    // null deletes, and the right etag is accepted.
    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "twin-dev",
            r#"{"mode":null}"#,
            "--etag",
            &etag,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert!(
        twin["properties"]["desired"].get("mode").is_none(),
        "{twin}"
    );

    // The old etag no longer matches.
    let out = run(
        &hub,
        &["twin", "patch", "twin-dev", r#"{"x":1}"#, "--etag", &etag],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 412001"), "{out:?}");

    let out = run(&hub, &["twin", "show", "twin-dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("\"interval\": 5"),
        "human output is pretty json: {out:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_send_reaches_a_connected_device_with_its_properties() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("c2d-dev").await;
    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::C2d).await;

    let out = run(
        &hub,
        &[
            "c2d",
            "send",
            "c2d-dev",
            "hello device",
            "--property",
            "color=blue",
            "--property",
            "shape=round square",
            "--content-type",
            "text/plain",
            "--message-id",
            "mid-42",
            "--correlation-id",
            "cid-7",
            "--ack",
            "full",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["messageId"], "mid-42");

    let msg = dev.next_publish().await;
    assert_eq!(msg.payload.as_ref(), b"hello device");
    let parsed = topic::parse_c2d(&msg.topic).expect("c2d topic");
    assert_eq!(parsed.device_id, "c2d-dev");
    let mut props = std::collections::BTreeMap::new();
    for p in parsed.bag.iter() {
        let mut k = [0u8; 256];
        let mut v = [0u8; 256];
        props.insert(
            p.name.decode(&mut k).unwrap().to_owned(),
            p.value
                .map(|v2| v2.decode(&mut v).unwrap().to_owned())
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        props.get("color").map(String::as_str),
        Some("blue"),
        "{props:?}"
    );
    assert_eq!(
        props.get("shape").map(String::as_str),
        Some("round square"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.mid").map(String::as_str),
        Some("mid-42"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.cid").map(String::as_str),
        Some("cid-7"),
        "{props:?}"
    );
    assert_eq!(
        props.get("$.ct").map(String::as_str),
        Some("text/plain"),
        "{props:?}"
    );
    assert_eq!(
        props.get("iothub-ack").map(String::as_str),
        Some("full"),
        "{props:?}"
    );

    let out = run(&hub, &["c2d", "send", "no-such-device", "x"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_prints_telemetry_and_exits_0_after_count_events() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("mon-dev").await;
    let cwd = tempfile::tempdir().unwrap();

    for json in [true, false] {
        let mut cmd = azsim(cwd.path());
        cmd.args([
            "monitor",
            "--device",
            "mon-dev",
            "--type",
            "telemetry",
            "--count",
            "1",
        ])
        .args(["--timeout", "30"])
        .args(json.then_some("--json"))
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        wait_monitor_ready(&mut stderr).await;

        let mut dev = RawDevice::connect(&hub, &cs).await;
        dev.send_telemetry(r#"{"temperature":21.5}"#, &[("alert", "hot")])
            .await;
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("monitor exits after one event")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        if json {
            let ev: Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(ev["type"], "telemetry");
            assert_eq!(ev["deviceId"], "mon-dev");
            assert_eq!(ev["body"], r#"{"temperature":21.5}"#);
            assert_eq!(ev["properties"]["alert"], "hot");
        } else {
            assert!(
                stdout.contains(r#"mon-dev telemetry {"temperature":21.5}"#),
                "{stdout}"
            );
            assert!(stdout.contains("alert=hot"), "{stdout}");
        }
        dev.client.disconnect().await.ok();
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_exits_1_with_a_message_when_the_timeout_passes_first() {
    let hub = TestHub::start().await;
    let out = run(&hub, &["monitor", "--count", "3", "--timeout", "1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("error: monitor: timed out after 1 s with 0 of 3 events"),
        "{out:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_hub_is_found_through_its_state_dir() {
    let hub = TestHub::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "create", "found-dev", "--json", "--state"])
        .arg(&hub.dir);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["deviceId"], "found-dev");
    // Off port 8883 the device connection string carries the MQTT port, for `azsim run`.
    let cs = v["connectionString"].as_str().unwrap();
    assert!(
        cs.starts_with(&format!(
            "HostName=localhost:{};DeviceId=found-dev;",
            hub.mqtt_port
        )),
        "{cs}"
    );
    assert_eq!(
        v["caFile"].as_str().map(Path::new),
        Some(hub.ca_file.as_path())
    );
    // And the device can connect with it.
    let mut dev = RawDevice::connect(&hub, cs).await;
    dev.send_telemetry("{}", &[]).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_with_one_line_naming_the_field_and_no_secret() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "c2VjcmV0LXNlcnZpY2Uta2V5LWRvLW5vdC1sZWFrLTEyMzQ=";
    let good =
        format!("HostName=localhost:1;SharedAccessKeyName=iothubowner;SharedAccessKey={key}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--payload".into(),
                "{bad".into(),
            ],
            "error: --payload: ",
        ),
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--timeout".into(),
                "2".into(),
            ],
            "error: --timeout: ",
        ),
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--connect-timeout".into(),
                "301".into(),
            ],
            "error: --connect-timeout: ",
        ),
        (
            vec!["twin".into(), "patch".into(), "d".into(), "[1]".into()],
            "error: DESIRED: ",
        ),
        (
            vec!["twin".into(), "patch".into(), "d".into()],
            "error: DESIRED: ",
        ),
        (
            vec![
                "c2d".into(),
                "send".into(),
                "d".into(),
                "b".into(),
                "--property".into(),
                "novalue".into(),
            ],
            "error: --property: ",
        ),
        (
            vec!["device".into(), "create".into(), "".into()],
            "error: DEVICE: ",
        ),
        (
            vec![
                "device".into(),
                "create".into(),
                "d".into(),
                "--primary-key".into(),
                "not base64!".into(),
            ],
            "error: --primary-key: ",
        ),
        (
            vec!["monitor".into(), "--count".into(), "0".into()],
            "error: --count: ",
        ),
    ];
    for (args, prefix) in cases {
        let mut cmd = azsim(cwd.path());
        cmd.args(&args).arg("--hub-connection-string").arg(&good);
        let out = output(cmd).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(prefix), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert_no_secret(&out, &[key]);
    }

    // A malformed connection string, from the flag and from the env var.
    let bad = format!("HostName=localhost;SharedAccessKey={key}");
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &bad]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with("error: --hub-connection-string: "),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list"])
        .env("IOTHUB_CONNECTION_STRING", &bad);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with("error: IOTHUB_CONNECTION_STRING: "),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);

    // Nothing names a hub.
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list"]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("azsim hub"), "{out:?}");

    // A missing device id is clap's usage error: exit 2 too.
    let mut cmd = azsim(cwd.path());
    cmd.args(["invoke", "--hub-connection-string", &good]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_no_secret(&out, &[key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_send_and_monitor_refuse_an_azure_hub_clearly() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "c2VjcmV0LXNlcnZpY2Uta2V5LWRvLW5vdC1sZWFrLTEyMzQ=";
    let azure = format!(
        "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={key}"
    );
    for args in [vec!["c2d", "send", "d", "hello"], vec!["monitor"]] {
        let mut cmd = azsim(cwd.path());
        cmd.args(&args).env("IOTHUB_CONNECTION_STRING", &azure);
        let out = output(cmd).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("myhub.azure-devices.net is an Azure IoT Hub"),
            "{out:?}"
        );
        assert!(out.stderr.contains("AMQP"), "{out:?}");
        assert_no_secret(&out, &[key]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_service_key_is_refused_with_azures_unauthorized_error() {
    let hub = TestHub::start().await;
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTI=";
    let cs = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={wrong_key}",
        hub.https_port
    );
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &cs, "--ca"])
        .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 401"), "{out:?}");
    assert_no_secret(&out, &[wrong_key, &service_key(&hub)]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_feedback_prints_and_completes_the_feedback_of_acked_messages() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("fb-cli").await;

    let out = run(&hub, &["c2d", "feedback"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(out.stderr.contains("no c2d feedback pending"), "{out:?}");
    let out = run(&hub, &["c2d", "feedback", "--timeout", "1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("none arrived within 1 s"), "{out:?}");
    let out = run(&hub, &["c2d", "feedback", "--timeout", "0"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--timeout"), "{out:?}");

    // The event stream announces the feedback too.
    let cwd = tempfile::tempdir().unwrap();
    let mut mon = azsim(cwd.path());
    mon.args([
        "monitor",
        "--type",
        "c2d",
        "--count",
        "3",
        "--timeout",
        "60",
        "--json",
    ])
    .arg("--hub-connection-string")
    .arg(&hub.service_connection_string)
    .arg("--ca")
    .arg(&hub.ca_file)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut mon = mon.spawn().unwrap();
    let mut mon_err = BufReader::new(mon.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut mon_err).await;

    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.subscribe(SubscriptionKind::C2d).await;
    for (id, ack) in [("m-none", "none"), ("m-cli", "full")] {
        let out = run(
            &hub,
            &[
                "c2d",
                "send",
                "fb-cli",
                "hi",
                "--ack",
                ack,
                "--message-id",
                id,
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        dev.next_publish().await;
    }
    // Keep the device's event loop running so its automatic PUBACKs go out.
    let device = tokio::spawn(async move { while dev.events.poll().await.is_ok() {} });

    let out = run(&hub, &["c2d", "feedback", "--timeout", "20"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].ends_with(" fb-cli m-cli Success"), "{out:?}");

    let mon = tokio::time::timeout(Duration::from_secs(30), mon.wait_with_output())
        .await
        .expect("monitor sees two completions and one feedback")
        .unwrap();
    let mon_out = String::from_utf8_lossy(&mon.stdout).into_owned();
    assert_eq!(mon.status.code(), Some(0), "{mon_out}");
    let events: Vec<Value> = mon_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fb = events
        .iter()
        .find(|e| e["type"] == "c2dFeedback")
        .unwrap_or_else(|| panic!("no c2dFeedback event: {mon_out}"));
    assert_eq!(fb["deviceId"], "fb-cli");
    assert_eq!(fb["messageId"], "m-cli");
    assert_eq!(fb["statusCode"], "Success");

    // Completed: nothing left. A purged message asked for negative feedback: --json shows it.
    let out = run(&hub, &["c2d", "feedback"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    device.abort();
    let (s, _) = hub
        .rest(
            reqwest::Method::POST,
            "/emulator/devices/fb-cli/c2d",
            Some(serde_json::json!({"body": "x", "messageId": "m-purged", "ack": "negative"})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = hub
        .rest(reqwest::Method::DELETE, "/devices/fb-cli/commands", None)
        .await;
    assert_eq!(s, 200);
    let out = run(&hub, &["c2d", "feedback", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rec = out.json();
    assert_eq!(rec["originalMessageId"], "m-purged", "{rec}");
    assert_eq!(rec["statusCode"], "Purged", "{rec}");
    assert_eq!(rec["deviceId"], "fb-cli", "{rec}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_string_with_the_csharp_sdks_extra_keys_works() {
    let hub = TestHub::start().await;
    let key = service_key(&hub);
    // `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` as the C# SDK writes it.
    let (host, rest) = hub
        .service_connection_string
        .split_once(';')
        .expect("HostName first");
    let csharp =
        format!("{host};CredentialScope=IotHub;CredentialType=SharedAccessSignature;{rest}");
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "device",
        "list",
        "--json",
        "--hub-connection-string",
        &csharp,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.json().is_array(), "{out:?}");
    assert_no_secret(&out, &[&key]);

    // A typo is still refused, naming the key and the known ones, without the secret.
    let typo = format!("{host};CredentialScop=IotHub;{rest}");
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &typo]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "error: --hub-connection-string: unknown key 'CredentialScop'; known: HostName, "
        ),
        "{out:?}"
    );
    assert_no_secret(&out, &[&key]);
    hub.stop().await;
}

/// The `name: value` line of `azsim token --mqtt`'s output.
fn mqtt_field(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"))
}

/// Connects a raw rumqttc client with exactly the CONNECT fields `azsim token --mqtt` printed for
/// `cs`, and returns the CONNACK code.
async fn connect_as_token_mqtt_prints(hub: &TestHub, cs: &str) -> rumqttc::ConnectReturnCode {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["token", "--mqtt", "--connection-string", cs]);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let port: u16 = mqtt_field(&out.stdout, "port").parse().unwrap();
    let mut opts = MqttOptions::new(
        mqtt_field(&out.stdout, "client id"),
        mqtt_field(&out.stdout, "host"),
        port,
    );
    opts.set_credentials(
        mqtt_field(&out.stdout, "username"),
        mqtt_field(&out.stdout, "password"),
    )
    .set_keep_alive(Duration::from_secs(60))
    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        hub.tls(),
    )));
    let (_client, mut events) = AsyncClient::new(opts, 4);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("connack within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.code,
            Ok(_) => {}
            Err(e) => panic!("cannot connect as printed ({port}): {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_devices_connection_string_connects_as_printed_off_port_8883() {
    let hub = TestHub::start().await;
    assert_ne!(hub.mqtt_port, 8883);
    let key = service_key(&hub);
    let host_name = format!("HostName=localhost:{};", hub.mqtt_port);

    // Named by connection string: the hub's CA file leads to its hub.json and MQTT port.
    let out = run(&hub, &["device", "create", "port-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    let cs = v["connectionString"].as_str().unwrap().to_owned();
    assert!(cs.starts_with(&host_name), "{cs}");
    assert_eq!(v["hostname"], "localhost");
    assert_eq!(v["mqttPort"], hub.mqtt_port);
    assert_eq!(out.stderr, "", "{out:?}");
    assert_no_secret(&out, &[&key]);

    let out = run(&hub, &["device", "create", "port-dev-2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "export IOTHUB_DEVICE_CONNECTION_STRING='{host_name}"
        )),
        "{out:?}"
    );
    let out = run(&hub, &["device", "show", "port-dev", "--connection-string"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), cs);

    // `azsim token --mqtt` with it prints host and port that the hub accepts as they are.
    assert_eq!(
        connect_as_token_mqtt_prints(&hub, &cs).await,
        rumqttc::ConnectReturnCode::Success
    );

    // `azsim run` with it connects and gets its telemetry acknowledged.
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "1s",
        "--connection-string",
        &cs,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "azsim run with the printed string: {out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_mqtt_port_is_said_and_can_be_given() {
    let hub = TestHub::start().await;
    // A copy of the CA away from the hub's state dir: nothing leads to its hub.json.
    let elsewhere = tempfile::tempdir().unwrap();
    let ca = elsewhere.path().join("ca.pem");
    std::fs::copy(&hub.ca_file, &ca).unwrap();
    let create = |args: &[&str]| {
        let mut cmd = azsim(elsewhere.path());
        cmd.args(["device", "create"])
            .args(args)
            .arg("--hub-connection-string")
            .arg(&hub.service_connection_string)
            .arg("--ca")
            .arg(&ca);
        output(cmd)
    };
    let out = create(&["guess-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["mqttPort"], 8883);
    assert!(
        out.json()["connectionString"]
            .as_str()
            .unwrap()
            .starts_with("HostName=localhost;"),
        "{out:?}"
    );
    assert!(
        out.stderr.starts_with("note: the MQTT port of localhost:")
            && out.stderr.contains("--mqtt-port"),
        "{out:?}"
    );

    let port = hub.mqtt_port.to_string();
    let out = create(&["given-dev", "--json", "--mqtt-port", &port]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["mqttPort"], hub.mqtt_port);
    assert_eq!(out.stderr, "", "{out:?}");
    let cs = out.json()["connectionString"].as_str().unwrap().to_owned();
    assert_eq!(
        connect_as_token_mqtt_prints(&hub, &cs).await,
        rumqttc::ConnectReturnCode::Success
    );

    let out = create(&["zero-dev", "--mqtt-port", "0"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.starts_with("error: --mqtt-port: "), "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_identities_are_created_shown_invoked_patched_and_deleted_end_to_end() {
    let hub = TestHub::start().await;
    let service = service_key(&hub);
    let out = run(&hub, &["device", "create", "edge-dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // A module needs its device.
    let out = run(&hub, &["device", "create", "no-dev", "--module", "m"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 404001"), "{out:?}");

    let out = run(
        &hub,
        &[
            "device", "create", "edge-dev", "--module", "filter", "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(
        (&v["deviceId"], &v["moduleId"]),
        (&"edge-dev".into(), &"filter".into())
    );
    assert_eq!(v["module"]["moduleId"], "filter");
    assert_eq!(v["mqttPort"], hub.mqtt_port);
    let cs = v["connectionString"].as_str().unwrap().to_owned();
    assert!(
        cs.starts_with(&format!(
            "HostName=localhost:{};DeviceId=edge-dev;ModuleId=filter;SharedAccessKey=",
            hub.mqtt_port
        )),
        "{cs}"
    );
    let module_key = cs_field(&cs, "SharedAccessKey").to_owned();
    assert_eq!(
        v["module"]["authentication"]["symmetricKey"]["primaryKey"],
        "<redacted>"
    );
    assert_no_secret(&out, &[&service]);

    let out = run(
        &hub,
        &["device", "create", "edge-dev", "--module", "filter"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 409301"), "{out:?}");
    let out = run(&hub, &["device", "create", "edge-dev", "--module", "other"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("created module other of device edge-dev in localhost:"),
        "{out:?}"
    );

    // show: the entry (key redacted), readable or JSON, or the connection string itself.
    let out = run(
        &hub,
        &["device", "show", "edge-dev", "--module", "filter", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["moduleId"], "filter");
    assert_no_secret(&out, &[&module_key, &service]);
    let out = run(&hub, &["device", "show", "edge-dev", "--module", "filter"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\nmodule         filter\n"), "{out:?}");
    assert_no_secret(&out, &[&module_key]);
    let out = run(
        &hub,
        &[
            "device",
            "show",
            "edge-dev",
            "--module",
            "filter",
            "--connection-string",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), cs);

    // Connect as the module with that string.
    let mut module = RawDevice::connect(&hub, &cs).await;
    module.subscribe(SubscriptionKind::Methods).await;
    module.subscribe(SubscriptionKind::DesiredPatches).await;

    // twin patch --module reaches the module, and only the module's twin.
    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "edge-dev",
            r#"{"threshold":3}"#,
            "--module",
            "filter",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("updated twin of module filter of device edge-dev: desired $version"),
        "{out:?}"
    );
    let patch = module.next_publish().await;
    assert!(
        topic::parse_desired_patch(&patch.topic).is_ok(),
        "{}",
        patch.topic
    );
    let desired: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(desired["threshold"], 3, "{desired}");
    let out = run(
        &hub,
        &["twin", "show", "edge-dev", "--module", "filter", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert_eq!(
        (
            &twin["moduleId"],
            &twin["properties"]["desired"]["threshold"]
        ),
        (&"filter".into(), &3.into()),
        "{twin}"
    );
    let out = run(&hub, &["twin", "show", "edge-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.json()["properties"]["desired"]
            .get("threshold")
            .is_none(),
        "the device's own twin changed: {out:?}"
    );

    // invoke --module: the module gets the request and its answer comes back.
    let invoke = tokio::spawn({
        let cs = hub.service_connection_string.clone();
        let ca = hub.ca_file.clone();
        async move {
            let cwd = tempfile::tempdir().unwrap();
            let mut cmd = azsim(cwd.path());
            cmd.args([
                "invoke",
                "edge-dev",
                "recalibrate",
                "--module",
                "filter",
                "--payload",
                r#"{"step":2}"#,
                "--json",
                "--hub-connection-string",
            ])
            .arg(cs)
            .arg("--ca")
            .arg(ca);
            output(cmd).await
        }
    });
    let req = module.next_publish().await;
    let parsed = topic::parse_method_request(&req.topic).expect("method request topic");
    assert_eq!(parsed.name.as_str(), "recalibrate");
    assert_eq!(
        serde_json::from_slice::<Value>(&req.payload).unwrap(),
        serde_json::json!({"step": 2})
    );
    let mut res = String::new();
    topic::write_method_response(&mut res, 200, parsed.rid.as_raw()).unwrap();
    module
        .client
        .publish(
            res,
            QoS::AtMostOnce,
            false,
            br#"{"module":"filter"}"#.to_vec(),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(async move { while module.events.poll().await.is_ok() {} });
    let out = invoke.await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        serde_json::json!({"status": 200, "payload": {"module": "filter"}})
    );
    driver.abort();

    // delete --module removes the module only.
    let out = run(
        &hub,
        &["device", "delete", "edge-dev", "--module", "filter"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "deleted module filter of device edge-dev from localhost:{}",
            hub.https_port
        )
    );
    let out = run(&hub, &["device", "show", "edge-dev", "--module", "filter"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 404"), "{out:?}");
    let out = run(&hub, &["device", "show", "edge-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azsim_run_connects_with_a_printed_module_connection_string() {
    let hub = TestHub::start().await;
    assert_eq!(run(&hub, &["device", "create", "run-dev"]).await.code, 0);
    let out = run(
        &hub,
        &[
            "device", "create", "run-dev", "--module", "sensor", "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let cs = out.json()["connectionString"].as_str().unwrap().to_owned();
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "1s",
        "--connection-string",
        &cs,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "azsim run as a module: {out:?}");
    assert!(
        out.stdout.contains(r#""event":"telemetry_acked""#),
        "{out:?}"
    );
    // The hub saw the module, not the device, connect and send.
    let out = run(
        &hub,
        &["device", "show", "run-dev", "--module", "sensor", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_ne!(
        out.json()["lastActivityTime"],
        "0001-01-01T00:00:00Z",
        "the hub saw no activity from the module: {out:?}"
    );
    let out = run(&hub, &["device", "show", "run-dev", "--json"]).await;
    assert_eq!(
        out.json()["lastActivityTime"],
        "0001-01-01T00:00:00Z",
        "the device itself was active: {out:?}"
    );
    hub.stop().await;
}
