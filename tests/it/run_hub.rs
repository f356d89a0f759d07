//! `azsim run` (the real binary) against the local hub over TLS: telemetry, C2D, methods, twin,
//! token renewal, a hub restart, and a wrong key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::support::TestHub;

/// `azsim run --json` for `cs` against `hub`, with the environment cleared of azsim variables.
fn azsim_run(hub: &TestHub, cs: &str, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--connection-string", cs, "--ca"])
        .arg(&hub.ca_file)
        .args(extra)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `azsim run` whose JSON lines are read as they come.
pub(crate) struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Running {
    pub(crate) fn spawn(mut cmd: tokio::process::Command) -> Running {
        let mut child = cmd.spawn().expect("azsim runs");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for the first event (from now on) that `pred` accepts.
    pub(crate) async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => panic!("azsim ended before {what}: {:#?}", self.seen),
                Err(_) => panic!("no {what} within 30 s: {:#?}", self.seen),
            }
        }
    }

    pub(crate) async fn event(&mut self, name: &str) -> Value {
        self.wait_for(name, |v| v["event"] == name).await
    }

    /// Ctrl-C, then everything it printed.
    pub(crate) async fn interrupt(self) -> (ExitStatus, Vec<Value>, String) {
        self.signal("-INT").await
    }

    /// SIGTERM (`docker stop`, systemd), then everything it printed.
    pub(crate) async fn terminate(self) -> (ExitStatus, Vec<Value>, String) {
        self.signal("-TERM").await
    }

    async fn signal(self, sig: &str) -> (ExitStatus, Vec<Value>, String) {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        self.finish().await
    }

    async fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("azsim exits")
            .unwrap();
        while let Some(v) = self.lines.recv().await {
            self.seen.push(v);
        }
        let stderr = self.stderr.await.unwrap();
        (status, self.seen, stderr)
    }
}

fn events<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["event"] == name).collect()
}

async fn recent_telemetry(hub: &TestHub, device: &str) -> Vec<Value> {
    let (s, v) = hub
        .rest(
            Method::GET,
            &format!("/emulator/events/recent?deviceId={device}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .cloned()
        .collect()
}

async fn invoke(hub: &TestHub, device: &str, method: &str, payload: Value) -> (u16, Value) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/twins/{device}/methods"),
            Some(json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": 10})),
        )
        .await;
    assert_eq!(s, 200, "invoke {method}: {v}");
    (v["status"].as_u64().unwrap() as u16, v["payload"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_acknowledged_and_reaches_the_hub_with_its_properties() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tel").await;
    let key = hub.device_key("run-tel").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--count",
            "3",
            "--interval",
            "1s",
            "--property",
            "site=lab 7",
            "--property",
            "kind=sim",
            "--content-type",
            "application/json",
            "--payload",
            r#"{"n":{{ seq }},"dev":"{{ device_id }}","t":{{ temperature }}}"#,
        ],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let acked = events(&out, "telemetry_acked");
    assert_eq!(acked.len(), 3);
    assert_eq!(events(&out, "stopped")[0]["acked"], 3);
    let ids: Vec<&str> = acked
        .iter()
        .map(|a| a["message_id"].as_str().unwrap())
        .collect();

    let tel = recent_telemetry(&hub, "run-tel").await;
    assert_eq!(tel.len(), 3, "{tel:#?}");
    for (i, t) in tel.iter().enumerate() {
        assert!(ids.contains(&t["systemProperties"]["message-id"].as_str().unwrap()));
        assert_eq!(t["systemProperties"]["content-type"], "application/json");
        assert_eq!(t["systemProperties"]["content-encoding"], "utf-8");
        assert_eq!(t["properties"]["site"], "lab 7");
        assert_eq!(t["properties"]["kind"], "sim");
        let body: Value = serde_json::from_str(t["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["n"], i as u64 + 1);
        assert_eq!(body["dev"], "run-tel");
        assert!(body["t"].is_number());
    }
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    assert!(!all.contains(&key), "the key leaked");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_messages_arrive_with_their_properties_and_ctrl_c_exits_cleanly() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-c2d").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    dev.event("connected").await;
    dev.wait_for("the twin", |v| v["event"] == "twin").await;
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/run-c2d/c2d",
            Some(json!({"body": "hello device", "properties": {"colour": "blue green"}, "messageId": "m-1"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let c2d = dev.event("c2d").await;
    assert_eq!(c2d["body"], "hello device");
    assert_eq!(c2d["properties"]["colour"], "blue green");
    assert_eq!(c2d["properties"]["$.mid"], "m-1");
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "ctrl-c exits 0: {stderr}");
    assert_eq!(events(&out, "stopped")[0]["reason"], "interrupted");
    assert_eq!(events(&out, "stopped")[0]["c2d"], 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_and_canned_methods_answer_as_documented() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-m").await;
    let mut dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--interval",
            "60s",
            "--method",
            r#"selfTest=201:{"ok":true}"#,
            "--method",
            "ping=503",
        ],
    ));
    dev.wait_for("the twin", |v| v["event"] == "twin").await;

    // --method takes precedence over the built-in ping.
    assert_eq!(
        invoke(&hub, "run-m", "ping", json!({"a": [1, 2]})).await,
        (503, Value::Null)
    );
    assert_eq!(
        invoke(&hub, "run-m", "selfTest", json!(null)).await,
        (201, json!({"ok": true}))
    );
    assert_eq!(
        invoke(&hub, "run-m", "nope", json!({})).await,
        (404, json!({"message": "method not found"}))
    );
    assert_eq!(
        invoke(
            &hub,
            "run-m",
            "setTelemetryInterval",
            json!({"interval": 7})
        )
        .await,
        (200, json!({"interval": 7}))
    );
    let (st, body) = invoke(
        &hub,
        "run-m",
        "setTelemetryInterval",
        json!({"interval": 0}),
    )
    .await;
    assert_eq!(st, 400);
    assert!(body["message"].as_str().unwrap().contains("interval"));
    let m = dev
        .wait_for("the 400", |v| v["event"] == "method" && v["status"] == 400)
        .await;
    assert_eq!(m["name"], "setTelemetryInterval");

    // reboot answers, then the device reconnects.
    assert_eq!(
        invoke(&hub, "run-m", "reboot", json!(null)).await,
        (200, json!({"message": "rebooting"}))
    );
    dev.event("disconnected").await;
    let c = dev.event("connected").await;
    assert_eq!(c["reconnect"], true);
    let (status, out, _) = dev.interrupt().await;
    assert!(status.success());
    assert!(
        events(&out, "reconnecting").is_empty(),
        "a reboot is not a failure"
    );
    hub.stop().await;

    // The built-in ping echoes, on a device without overrides.
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-p").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    dev.wait_for("the twin", |v| v["event"] == "twin").await;
    assert_eq!(
        invoke(&hub, "run-p", "ping", json!({"a": [1, 2], "s": "x"})).await,
        (200, json!({"a": [1, 2], "s": "x"}))
    );
    let (status, ..) = dev.interrupt().await;
    assert!(status.success());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_is_read_reported_and_desired_updates_apply_in_order() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tw").await;
    // A desired value set before the device connects arrives in the GET.
    let (s, _) = hub
        .rest(
            Method::PATCH,
            "/twins/run-tw",
            Some(json!({"properties": {"desired": {"telemetryInterval": 30}}})),
        )
        .await;
    assert_eq!(s, 200);
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "60s"]));
    let twin = dev.event("twin").await;
    assert_eq!(twin["desired"]["telemetryInterval"], 30);
    let first_ack = dev
        .wait_for("the interval ack", |v| {
            v["event"] == "reported" && v["patch"]["telemetryInterval"]["av"] == 2
        })
        .await;
    assert!(first_ack["version"].as_u64().unwrap() >= 1);

    for interval in [5, 6, 7] {
        let (s, _) = hub
            .rest(
                Method::PATCH,
                "/twins/run-tw",
                Some(json!({"properties": {"desired": {"telemetryInterval": interval}}})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let mut versions = Vec::new();
    for interval in [5, 6, 7] {
        let d = dev.event("desired").await;
        assert_eq!(d["patch"]["telemetryInterval"], interval);
        versions.push(d["version"].as_u64().unwrap());
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    dev.wait_for("the last ack", |v| {
        v["event"] == "reported" && v["patch"]["telemetryInterval"]["value"] == 7
    })
    .await;
    let (s, twin) = hub.rest(Method::GET, "/twins/run-tw", None).await;
    assert_eq!(s, 200);
    let ack = &twin["properties"]["reported"]["telemetryInterval"];
    assert_eq!(ack["value"], 7);
    assert_eq!(ack["ac"], 200);
    assert_eq!(ack["av"], versions[2]);
    assert_eq!(
        twin["properties"]["reported"]["azsim"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let (status, ..) = dev.interrupt().await;
    assert!(status.success());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_and_every_message_is_acknowledged_exactly_once() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-ttl").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--token-ttl", "6", "--interval", "1s", "--duration", "20s"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}");
    let renewed = events(&out, "token_renewed").len();
    assert!(renewed >= 2, "renewed {renewed} times: {out:#?}");
    assert!(
        events(&out, "reconnecting").is_empty(),
        "renewal happens before the hub closes the connection: {out:#?}"
    );
    let acked: Vec<&str> = events(&out, "telemetry_acked")
        .iter()
        .map(|a| a["message_id"].as_str().unwrap())
        .collect();
    assert!(acked.len() >= 15, "{} acked", acked.len());
    let mut at_hub: HashMap<String, usize> = HashMap::new();
    for t in recent_telemetry(&hub, "run-ttl").await {
        *at_hub
            .entry(
                t["systemProperties"]["message-id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(at_hub.get(*id), Some(&1), "message {id} at the hub");
    }
    assert_eq!(
        at_hub.len(),
        acked.len(),
        "nothing unacknowledged reached the hub"
    );
    hub.stop().await;
}

/// `--interval 200ms`: the messages' own production times (the template's `now`, the
/// system clock when the loop made each one) are 200 ms apart. A loaded machine can only
/// delay a message, and each is due at least 200 ms after the one before was due, so ten
/// messages span at least nine intervals (less the first one's own delay); the typical gap
/// (the median) is the interval itself, where one second would be five times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_every_200_ms_is_produced_at_that_rate() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-fast").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--interval",
            "200ms",
            "--count",
            "10",
            "--payload",
            r#"{"n":{{ seq }},"at":"{{ now }}"}"#,
        ],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    assert_eq!(events(&out, "telemetry_acked").len(), 10);
    let mut at: Vec<(u64, time::OffsetDateTime)> = events(&out, "telemetry_sent")
        .iter()
        .filter(|t| t["redelivery"] == false)
        .map(|t| {
            let when = t["body"]["at"].as_str().unwrap();
            let when =
                time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{when}: {e}"));
            (t["body"]["n"].as_u64().unwrap(), when)
        })
        .collect();
    at.sort_by_key(|(n, _)| *n);
    assert!(at.len() >= 10, "{at:?}");
    let at = &at[..10];
    assert_eq!(at[0].0, 1);
    assert_eq!(at[9].0, 10);
    let span = at[9].1 - at[0].1;
    assert!(
        span >= time::Duration::milliseconds(1_590),
        "ten messages in {span}: faster than every 200 ms"
    );
    let mut gaps: Vec<time::Duration> = at.windows(2).map(|w| w[1].1 - w[0].1).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median < time::Duration::milliseconds(600),
        "the typical gap is {median}, not 200 ms: {gaps:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hub_restart_the_device_reconnects_with_backoff_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let (mqtt_port, https_port) = (hub.mqtt_port, hub.https_port);
    let cs = hub.create_device("run-rs").await;
    let mut dev = Running::spawn(azsim_run(&hub, &cs, &["--interval", "1s"]));
    for _ in 0..3 {
        dev.event("telemetry_acked").await;
    }
    hub.stop().await;
    dev.event("disconnected").await;
    let r = dev.event("reconnecting").await;
    assert!(r["attempt"].as_u64().unwrap() >= 1);
    // Down until a second attempt failed: messages queue up offline meanwhile.
    dev.wait_for("a second reconnect attempt", |v| {
        v["event"] == "reconnecting" && v["attempt"].as_u64() >= Some(2)
    })
    .await;
    let handle = azsim_emulator::start(
        azsim_emulator::HubConfig::new(dir.path()),
        IpAddr::from([127, 0, 0, 1]),
        mqtt_port,
        https_port,
    )
    .await
    .expect("the hub restarts on the same ports");
    let c = dev.event("connected").await;
    assert_eq!(c["reconnect"], true);
    let last_sent = dev.event("telemetry_sent").await["seq"].as_u64().unwrap();
    dev.wait_for("the newest message acked", |v| {
        v["event"] == "telemetry_acked" && v["seq"].as_u64() >= Some(last_sent + 2)
    })
    .await;
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "{stderr}");
    let attempts: Vec<u64> = events(&out, "reconnecting")
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert!(!attempts.is_empty());
    // Every message acknowledged, or produced (queued) before the end, reached the hub.
    let acked_max = events(&out, "telemetry_acked")
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let stopped = events(&out, "stopped")[0].clone();
    assert_eq!(stopped["dropped"], 0);

    let restarted = TestHubView {
        https_port,
        ca: dir.path().join("ca.pem"),
    };
    let tel = restarted
        .recent(&handle.info.service_connection_string)
        .await;
    // Count at the hub by $.mid. A message whose PUBACK the stopping hub never sent is sent
    // again (same PUBLISH, DUP=1) and may be stored twice: only ever under its own $.mid.
    let sent: HashMap<String, u64> = events(&out, "telemetry_sent")
        .iter()
        .map(|t| {
            (
                t["message_id"].as_str().unwrap().to_owned(),
                t["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut at_hub: HashMap<String, (u64, usize)> = HashMap::new();
    for t in &tel {
        let mid = t["systemProperties"]["message-id"]
            .as_str()
            .unwrap()
            .to_owned();
        let seq = serde_json::from_str::<Value>(t["body"].as_str().unwrap()).unwrap()["seq"]
            .as_u64()
            .unwrap();
        assert_eq!(
            sent.get(&mid),
            Some(&seq),
            "{mid} carries #{seq} at the hub"
        );
        at_hub.entry(mid).or_insert((seq, 0)).1 += 1;
    }
    for a in events(&out, "telemetry_acked") {
        let mid = a["message_id"].as_str().unwrap();
        assert!(at_hub.contains_key(mid), "acknowledged {mid} is at the hub");
    }
    let mut seqs: Vec<u64> = at_hub.values().map(|(seq, _)| *seq).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=acked_max).collect();
    assert_eq!(
        seqs[..acked_max as usize],
        expected[..],
        "one $.mid per message: {seqs:?}"
    );
    let duplicates: usize = at_hub.values().map(|(_, n)| n - 1).sum();
    println!(
        "{} messages at the hub, {duplicates} stored twice (same $.mid)",
        at_hub.len()
    );
    handle.stop().await.unwrap();
}

/// REST access to a hub started with `azsim_emulator::start` directly (not a `TestHub`).
struct TestHubView {
    https_port: u16,
    ca: std::path::PathBuf,
}

impl TestHubView {
    async fn recent(&self, service_cs: &str) -> Vec<Value> {
        let key = service_cs
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .unwrap();
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            &format!("localhost:{}", self.https_port),
            key,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600,
            Some("iothubowner"),
        )
        .unwrap();
        let tls = azsim::tls::client_config(Some(&self.ca)).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let v: Value = http
            .get(format!(
                "https://localhost:{}/emulator/events/recent?deviceId=run-rs&limit=1000&api-version=2021-04-12",
                self.https_port
            ))
            .header("Authorization", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "telemetry")
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_exits_1_saying_the_key_is_wrong() {
    let hub = TestHub::start().await;
    hub.create_device("run-bad").await;
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cs = format!(
        "HostName=localhost:{};DeviceId=run-bad;SharedAccessKey={wrong}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    // With service credentials for the same hub, azsim checks the token against the registry.
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the hub refused the connection: not authorized"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong key"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    assert!(
        !all.contains(wrong) && !all.contains("sig="),
        "secret leaked: {all}"
    );

    // An unknown device is named as such.
    let cs = format!(
        "HostName=localhost:{};DeviceId=ghost;SharedAccessKey={wrong}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let (status, _, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not registered"), "{stderr}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hosts_and_untrusted_certificates_are_named() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-net").await;
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, _, stderr) = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--count", "1", "--port", &closed.to_string()],
    ))
    .finish()
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("localhost:{closed}")) && stderr.contains("connection refused"),
        "{stderr}"
    );

    // A host name that cannot resolve (.invalid never does, RFC 6761) is named.
    let cs_dns = "HostName=no-such-hub.invalid;DeviceId=d;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, _, stderr) = Running::spawn(azsim_run(&hub, cs_dns, &["--count", "1"]))
        .finish()
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot resolve host no-such-hub.invalid"),
        "{stderr}"
    );

    // Without the hub's CA the certificate is not trusted.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--count", "1", "--connection-string", &cs])
        .env_remove("AZSIM_CA_FILE")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, _, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("unknown certificate authority"), "{stderr}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_naming_the_field_without_the_key() {
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    let cases: &[(&[&str], &str)] = &[
        (&["--keep-alive", "2000"], "--keep-alive"),
        (&["--interval", "50ms"], "--interval"),
        (&["--interval", "2days"], "--interval"),
        (&["--method", "ping=abc"], "--method"),
        (&["--method", "ping"], "--method"),
        (&["--method", "re/set=200"], "--method"),
        (&["--method", "reset=200:{nope"], "--method"),
        (&["--property", "novalue"], "--property"),
        (&["--property", "=v"], "--property"),
        (&["--payload", "{{ seq "], "--payload"),
        (&["--payload", "{{ nosuchvar }}"], "--payload"),
        (&["--payload", "@/nonexistent/payload.j2"], "--payload"),
        (&["--max-queue", "0"], "--max-queue"),
        (&["--count", "0"], "--count"),
        (&["--duration", "soon"], "--duration"),
        (&["--duration", "0s"], "--duration"),
        (&["--token-ttl", "1"], "--token-ttl"),
        (&["--model-id", "thermostat"], "--model-id"),
        (&["--port", "0"], "--port"),
        (&["--content-type", " "], "--content-type"),
        (&["--ca", "/nonexistent/ca.pem"], "--ca"),
    ];
    for &(args, field) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .arg("--connection-string")
            .arg(format!(
                "HostName=h.example;DeviceId=d;SharedAccessKey={key}"
            ))
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {field}:")), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1);
        assert!(!stderr.contains(key));
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["run", "--connection-string"])
        .arg(format!(
            "HostName=h.example;SharedAccessKeyName=x;SharedAccessKey={key}"
        ))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --connection-string:"),
        "{stderr}"
    );
    assert!(!stderr.contains(key));
    // The environment variables the flags fall back to are named when they are wrong.
    let bad_cs = format!("HostName=h.example;DeviceId=d;SharedAccessKey={key};Extra=1");
    for (var, value, field) in [
        (
            "IOTHUB_DEVICE_CONNECTION_STRING",
            &bad_cs[..],
            "IOTHUB_DEVICE_CONNECTION_STRING",
        ),
        ("AZSIM_CA_FILE", "/nonexistent/ca.pem", "AZSIM_CA_FILE"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .env(var, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {field}:")), "{stderr}");
        assert!(!stderr.contains(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_queue_drops_the_oldest_messages_and_says_so() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-q").await;
    let mut dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--interval", "1s", "--max-queue", "2"],
    ));
    dev.event("telemetry_acked").await;
    hub.stop().await;
    dev.event("disconnected").await;
    let d = dev.event("dropped").await;
    assert_eq!(d["count"], 1);
    assert_eq!(d["max_queue"], 2);
    let d2 = dev.event("dropped").await;
    assert_eq!(d2["total"], 2);
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "ctrl-c while offline exits 0: {stderr}");
    let stopped = events(&out, "stopped")[0].clone();
    assert!(stopped["dropped"].as_u64().unwrap() >= 2, "{stopped}");
    assert_eq!(stopped["queued"], 2, "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connection_string_it_runs_sim_device_1_on_the_live_local_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args([
        "run",
        "--json",
        "--count",
        "2",
        "--interval",
        "1s",
        "--state",
    ])
    .arg(dir.path())
    .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
    .env_remove("IOTHUB_CONNECTION_STRING")
    .env_remove("AZSIM_CA_FILE")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-1");
    assert_eq!(events(&out, "telemetry_acked").len(), 2);
    // The hub in hub.json (this test's) registered the device and got the telemetry.
    let (s, _) = hub.rest(Method::GET, "/devices/sim-device-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(recent_telemetry(&hub, "sim-device-1").await.len(), 2);
    hub.stop().await;
}

/// `azsim run --json --count 2` with no connection string in `cwd`, so it starts the local hub in
/// `cwd/.azsim/hub` on the default ports. A process outside this test binary (a developer's hub)
/// may hold 127.0.0.1:8883 for a moment on a shared machine: a busy port is retried for up to
/// 60 s, as the Python SDK test does.
async fn run_embedded(cwd: &std::path::Path) -> (ExitStatus, Vec<Value>, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
        cmd.args(["run", "--json", "--count", "2", "--interval", "1s"])
            .current_dir(cwd)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let (status, out, stderr) = Running::spawn(cmd).finish().await;
        if status.code() == Some(1)
            && stderr.contains("is in use")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        return (status, out, stderr);
    }
}

fn acked_ids(out: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events(out, "telemetry_acked")
        .iter()
        .map(|a| a["message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_connection_string_and_no_hub_it_starts_one_on_8883_and_keeps_its_state() {
    let _port = crate::support::PORT_8883.lock().await;
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join(".azsim/hub");

    let (status, out, stderr) = run_embedded(cwd.path()).await;
    assert!(status.success(), "{stderr}");
    let local = events(&out, "local_hub")[0].clone();
    assert_eq!(local["started"], true, "{local}");
    assert_eq!(local["state"], ".azsim/hub");
    assert_eq!(
        (local["mqtt_port"].as_u64(), local["https_port"].as_u64()),
        (Some(8883), Some(8443))
    );
    assert!(
        local["try"][0]
            .as_str()
            .unwrap()
            .starts_with("azsim invoke sim-device-1 ping"),
        "{local}"
    );
    let connected = events(&out, "connected")[0].clone();
    assert_eq!(connected["device_id"], "sim-device-1");
    assert_eq!(connected["host"], "localhost:8883");
    let first = acked_ids(&out);
    assert_eq!(first.len(), 2, "{out:#?}");
    for f in ["hub.json", "ca.pem", "hub.db", "iothubowner.key"] {
        assert!(state.join(f).is_file(), "{f} in .azsim/hub");
    }
    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    assert_eq!(info.mqtt_port, 8883);

    // The saved state, opened by a hub on free ports: sim-device-1 is registered and the hub
    // stored both acknowledged messages.
    let view = TestHub::start_in(&state).await;
    let key = view.device_key("sim-device-1").await;
    let mut stored: Vec<String> = recent_telemetry(&view, "sim-device-1")
        .await
        .iter()
        .map(|t| {
            t["systemProperties"]["message-id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, first);
    view.stop().await;

    // A second run starts the hub again on the same state: same device, same key.
    let (status, out2, stderr) = run_embedded(cwd.path()).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out2, "local_hub")[0]["started"], true);
    let second = acked_ids(&out2);
    assert_eq!(second.len(), 2);
    let view = TestHub::start_in(&state).await;
    assert_eq!(
        view.device_key("sim-device-1").await,
        key,
        "the device was not re-created"
    );
    assert_eq!(recent_telemetry(&view, "sim-device-1").await.len(), 4);
    view.stop().await;
    let all = serde_json::to_string(&out).unwrap() + &serde_json::to_string(&out2).unwrap();
    assert!(
        !all.contains(&key) && !all.contains("sig="),
        "secret leaked"
    );
}

/// `azsim run` that must be refused: exit 1 with one line on stderr naming the refusal, and
/// neither `secrets` nor any `sig=` in anything it printed. Returns stderr.
async fn refused(mut cmd: tokio::process::Command, secrets: &[&str]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    cmd.current_dir(cwd.path());
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: the hub refused the connection: not authorized: "),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    for s in secrets {
        assert!(!all.contains(s), "secret leaked: {all}");
    }
    assert!(!all.contains("sig="), "signature leaked: {all}");
    stderr
}

/// The `sig` value of a token (a secret the output must not contain).
fn sig_of(token: &str) -> String {
    token
        .split(['&', ' '])
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_misaddressed_fixed_token_is_refused_and_named() {
    let hub = TestHub::start().await;
    hub.create_device("run-sas").await;
    let key = hub.device_key("run-sas").await;
    let host = format!("localhost:{}", hub.mqtt_port);

    // Expired a minute ago: `azsim token inspect` says so, with or without registry access.
    let expired = hub.device_token("run-sas", &key, unix_now() - 60);
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={expired}");
    let stderr = refused(
        azsim_run(&hub, &cs, &["--count", "1"]),
        &[&key, &sig_of(&expired)],
    )
    .await;
    assert!(
        stderr.contains("the connection string's SharedAccessSignature: expired: se "),
        "{stderr}"
    );
    assert!(stderr.contains("(expired 1m"), "{stderr}");
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key, &sig_of(&expired)]).await;
    assert!(stderr.contains("expired: se "), "{stderr}");
    assert!(
        stderr.contains("signed with the device's registered key, so the key is right"),
        "the key itself is fine: {stderr}"
    );

    // `azsim token` signs `sr=localhost:PORT/devices/..` for a local hub on another port; the
    // hub accepts that form, so only the expiry is named.
    let mut with_port = String::new();
    azsim_proto::sas::sign(
        &mut with_port,
        &format!("{host}/devices/run-sas"),
        &key,
        unix_now() - 60,
        None,
    )
    .unwrap();
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={with_port}");
    let stderr = refused(
        azsim_run(&hub, &cs, &["--count", "1"]),
        &[&key, &sig_of(&with_port)],
    )
    .await;
    assert!(stderr.contains("expired: se "), "{stderr}");
    assert!(!stderr.contains("sr is for host"), "{stderr}");

    // Signed with the right key, but for another device.
    hub.create_device("run-other").await;
    let other_key = hub.device_key("run-other").await;
    let other = hub.device_token("run-other", &other_key, unix_now() + 600);
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={other}");
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key, &other_key, &sig_of(&other)]).await;
    assert!(
        stderr.contains("sr names device 'run-other', expected device 'run-sas'"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong key"), "{stderr}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_host_name_is_named_as_the_wrong_resource() {
    let hub = TestHub::start().await;
    hub.create_device("run-host").await;
    let key = hub.device_key("run-host").await;
    // The right key, but the hub is `localhost`: the token's sr names 127.0.0.1.
    let cs = format!(
        "HostName=127.0.0.1:{};DeviceId=run-host;SharedAccessKey={key}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1", "--state"]);
    cmd.arg(&hub.dir);
    let stderr = refused(cmd, &[&key]).await;
    assert!(
        stderr.contains(
            "wrong resource: the token is signed for host 127.0.0.1, but the local hub in"
        ) && stderr.contains("is localhost (use HostName=localhost"),
        "{stderr}"
    );
    hub.stop().await;
}

/// libfaketime's preload library, when Debian's `libfaketime` is installed (scripts/test does).
fn libfaketime() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_two_hours_slow_is_named_as_clock_skew() {
    let Some(faketime) = libfaketime() else {
        crate::support::skip("libfaketime not installed (apt-get install libfaketime)");
        return;
    };
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-skew").await;
    let key = hub.device_key("run-skew").await;
    // azsim's clock runs two hours behind the hub's: its one-hour tokens are already expired
    // when the hub checks them.
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("LD_PRELOAD", &faketime)
        .env("FAKETIME", "-2h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key]).await;
    let skew: u64 = stderr
        .split("clock skew: this machine's clock is ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock skew finding: {stderr}"));
    assert!((7190..=7210).contains(&skew), "{stderr}");
    assert!(
        stderr
            .contains(" s behind the hub's, so by the hub's clock the token was already expired "),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "azsim could not check the key: the hub refuses its service token for the same reason"
        ),
        "{stderr}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_file_template_renders_every_message_and_duration_ends_the_run() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tpl").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("payload.j2");
    std::fs::write(
        &file,
        "{\"n\": {{ seq }}, \"id\": \"{{ uuid }}\", \"at\": \"{{ now }}\", \"ts\": {{ ts }},\n \
         \"dice\": {{ randint(1, 6) }}, \"x\": {{ uniform(0, 1) }}, \"dev\": \"{{ device_id }}\"}\n",
    )
    .unwrap();
    let payload = format!("@{}", file.display());
    let args = [
        "--interval",
        "1s",
        "--duration",
        "3s",
        "--seed",
        "42",
        "--payload",
        &payload,
        "--property",
        "batch=a=b",
    ];
    let started = std::time::Instant::now();
    let (status, out, stderr) = Running::spawn(azsim_run(&hub, &cs, &args)).finish().await;
    let took = started.elapsed();
    assert!(status.success(), "{stderr}");
    let stopped = events(&out, "stopped")[0].clone();
    assert_eq!(stopped["reason"], "duration", "{stopped}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "--duration 3s took {took:?}"
    );
    let tel = recent_telemetry(&hub, "run-tpl").await;
    assert!(tel.len() >= 2, "{tel:#?}");
    let mut dice = Vec::new();
    for t in &tel {
        let body: Value = serde_json::from_str(t["body"].as_str().unwrap()).unwrap();
        assert!(body["n"].as_u64().unwrap() >= 1);
        assert!(
            uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok(),
            "{body}"
        );
        assert!(body["at"].as_str().unwrap().ends_with('Z'), "{body}");
        assert!(body["ts"].as_u64().unwrap() > 1_700_000_000);
        let x = body["x"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&x));
        assert_eq!(body["dev"], "run-tpl");
        dice.push(body["dice"].as_u64().unwrap());
        assert_eq!(t["properties"]["batch"], "a=b", "the value keeps its '='");
    }
    assert!(dice.iter().all(|d| (1..=6).contains(d)), "{dice:?}");

    // The same --seed draws the same numbers.
    let cs2 = hub.create_device("run-tpl2").await;
    let args2 = [
        "--count",
        "2",
        "--interval",
        "1s",
        "--seed",
        "42",
        "--payload",
        &payload,
    ];
    let (status, _, stderr) = Running::spawn(azsim_run(&hub, &cs2, &args2)).finish().await;
    assert!(status.success(), "{stderr}");
    let dice2: Vec<u64> = recent_telemetry(&hub, "run-tpl2")
        .await
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t["body"].as_str().unwrap()).unwrap()["dice"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(dice2[..], dice[..2], "same seed, same draws");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_local_hub_takes_sim_device_2_instead_of_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let local_run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
        cmd.args(["run", "--json", "--interval", "1s", "--state"])
            .arg(dir.path())
            .args(extra)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let mut first = Running::spawn(local_run(&[]));
    let c = first.event("connected").await;
    assert_eq!(c["device_id"], "sim-device-1");
    first.event("telemetry_acked").await;

    let (status, out, stderr) = Running::spawn(local_run(&["--count", "2"])).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "local_hub")[0]["device_id"], "sim-device-2");
    assert_eq!(events(&out, "local_hub")[0]["started"], false);
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-2");
    assert_eq!(events(&out, "telemetry_acked").len(), 2);

    // SIGTERM ends a run as cleanly as Ctrl-C.
    let (status, out, stderr) = first.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(
        events(&out, "reconnecting").is_empty(),
        "the first run kept its connection: {out:#?}"
    );
    assert_eq!(events(&out, "stopped")[0]["reason"], "interrupted");
    assert_eq!(
        events(&out, "disconnected").last().unwrap()["reason"],
        "closed by the device"
    );
    // Once sim-device-1 is free again, a run takes it.
    let (status, out, stderr) = Running::spawn(local_run(&["--count", "1"])).finish().await;
    assert!(status.success(), "{stderr}");
    assert_eq!(events(&out, "connected")[0]["device_id"], "sim-device-1");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_run_names_its_module_in_the_connected_event() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-edge").await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/run-edge/modules/filter",
            Some(json!({"deviceId": "run-edge", "moduleId": "filter"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let module_key = v["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let (head, _) = cs.split_once(";SharedAccessKey=").unwrap();
    let module_cs = format!("{head};ModuleId=filter;SharedAccessKey={module_key}");
    let dev = Running::spawn(azsim_run(
        &hub,
        &module_cs,
        &["--count", "1", "--interval", "200ms"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let connected = events(&out, "connected")[0];
    assert_eq!(connected["device_id"], "run-edge");
    assert_eq!(connected["module_id"], "filter");
    // A device run has no module_id field at all.
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--count", "1", "--interval", "200ms"],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let connected = events(&out, "connected")[0];
    assert_eq!(connected["device_id"], "run-edge");
    assert!(connected.get("module_id").is_none(), "{connected}");
    // The human line says `as device/module`.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "run",
            "--count",
            "1",
            "--interval",
            "200ms",
            "--connection-string",
        ])
        .arg(&module_cs)
        .arg("--ca")
        .arg(&hub.ca_file)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" as run-edge/filter"), "{text}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_module_ids_with_mqtt_wildcards_exit_2_before_connecting() {
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    for (ids, want) in [
        (
            "DeviceId=a+b",
            "error: --connection-string: DeviceId 'a+b' contains '+', which MQTT topics cannot \
             carry; IoT Hub accepts it, but only over HTTPS/AMQP",
        ),
        (
            "DeviceId=dev#1",
            "error: --connection-string: DeviceId 'dev#1' contains '#'",
        ),
        (
            "DeviceId=edge;ModuleId=m+1",
            "error: --connection-string: ModuleId 'm+1' contains '+'",
        ),
    ] {
        // A host nothing listens on: the refusal comes before any connection attempt.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .arg("--connection-string")
            .arg(format!("HostName=127.0.0.1:1;{ids};SharedAccessKey={key}"))
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ids}: {stderr}");
        assert!(stderr.starts_with(want), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(key));
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
