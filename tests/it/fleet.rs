//! `azsim fleet` (the real binary) against a local hub started here on ports 0 (the fleet
//! reuses it through its state dir): 200 devices all acknowledged, a method, a desired patch and
//! a C2D message reaching single devices of the fleet, three shards covering a fleet exactly
//! once, the Prometheus endpoint, the bulk registry call, and bad input.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::support::TestHub;

/// `azsim fleet --json` on the hub of `hub` (its state dir), environment cleared.
fn fleet(hub: &TestHub, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["fleet", "--json", "--state"])
        .arg(&hub.dir)
        .args(extra)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running fleet whose JSON lines are read as they come.
struct Fleet {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Fleet {
    fn spawn(mut cmd: tokio::process::Command) -> Fleet {
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
        Fleet {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first event from now on that `pred` accepts (within `secs`).
    async fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().await;
                    let err = (&mut self.stderr).await.unwrap_or_default();
                    panic!(
                        "azsim fleet ended ({status:?}) before {what}; stderr: {err}\nlast lines: {:#?}",
                        self.seen.iter().rev().take(5).collect::<Vec<_>>()
                    );
                }
                Err(_) => panic!(
                    "no {what} within {secs} s; last lines: {:#?}",
                    self.seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// SIGTERM, as Kubernetes sends.
    fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("azsim fleet exits")
            .expect("wait");
        status.code().unwrap_or(-1)
    }
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_200_is_all_acknowledged_and_its_devices_answer_methods_twin_and_c2d() {
    let hub = TestHub::start().await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "200",
            "--interval",
            "1s",
            "--connect-rate",
            "500",
            "--stats-every",
            "500ms",
        ],
    ));
    let start = f.wait_for("the fleet line", 60, event("fleet")).await;
    assert_eq!(start["devices"], 200);
    let ids = start["device_ids"].as_array().unwrap();
    assert_eq!(
        (ids[0].as_str(), ids[199].as_str()),
        (Some("sim-1"), Some("sim-200"))
    );
    f.wait_for("200 connected", 120, |v| {
        v["event"] == "stats" && v["connected"] == 200
    })
    .await;

    // Three different devices, picked at random.
    let mut picks = BTreeSet::new();
    while picks.len() < 3 {
        picks.insert(rand::random::<u32>() % 200 + 1);
    }
    let picks: Vec<String> = picks.into_iter().map(|i| format!("sim-{i}")).collect();
    let (method_dev, twin_dev, c2d_dev) = (&picks[0], &picks[1], &picks[2]);

    let (status, body) = hub
        .rest(
            Method::POST,
            &format!("/twins/{method_dev}/methods"),
            Some(
                json!({"methodName": "ping", "payload": {"n": 7}, "responseTimeoutInSeconds": 20}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["payload"], json!({"n": 7}), "{body}");
    let m = f
        .wait_for("the method event", 30, |v| {
            v["event"] == "method" && v["device_id"] == method_dev.as_str()
        })
        .await;
    assert_eq!(m["name"], "ping");

    let (status, body) = hub
        .rest(
            Method::PATCH,
            &format!("/twins/{twin_dev}"),
            Some(json!({"properties": {"desired": {"telemetryInterval": 2}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    f.wait_for("the desired patch", 30, |v| {
        v["event"] == "desired" && v["device_id"] == twin_dev.as_str()
    })
    .await;
    f.wait_for("the reported acknowledgement", 30, |v| {
        v["event"] == "reported" && v["device_id"] == twin_dev.as_str()
    })
    .await;
    let (_, twin) = hub
        .rest(Method::GET, &format!("/twins/{twin_dev}"), None)
        .await;
    assert!(
        !twin["properties"]["reported"]["telemetryInterval"].is_null(),
        "the device acknowledged the desired interval: {twin}"
    );

    let (status, body) = hub
        .rest(
            Method::POST,
            &format!("/emulator/devices/{c2d_dev}/c2d"),
            Some(json!({"body": "hello fleet", "properties": {"k": "v"}})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let c2d = f
        .wait_for("the c2d event", 30, |v| {
            v["event"] == "c2d" && v["device_id"] == c2d_dev.as_str()
        })
        .await;
    assert_eq!(c2d["body"], "hello fleet");
    assert_eq!(c2d["properties"]["k"], "v");

    f.wait_for("every device acknowledged", 120, |v| {
        v["event"] == "stats" && v["devices_acked"] == 200
    })
    .await;
    f.terminate();
    let summary = f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);
    assert_eq!(summary["reason"], "interrupted");
    assert_eq!(summary["ever_connected"], 200, "{summary}");
    assert_eq!(summary["devices_acked"], 200, "{summary}");
    assert_eq!(
        summary["connected"], 0,
        "every device disconnected: {summary}"
    );
    assert!(summary["acked"].as_u64().unwrap() >= 200, "{summary}");
    assert!(summary["latency_ms"]["p99"].as_f64().is_some(), "{summary}");
    assert!(summary["connect_ms"]["p50"].as_f64().is_some(), "{summary}");
    assert!(summary["methods"].as_u64().unwrap() >= 1);
    assert!(summary["c2d"].as_u64().unwrap() >= 1);
    let errors = summary["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|k| !k.starts_with("refused") && !k.starts_with("gave_up")),
        "{summary}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_cover_the_fleet_exactly_once() {
    let hub = TestHub::start().await;
    let mut shards: Vec<Fleet> = (0..3)
        .map(|i| {
            Fleet::spawn(fleet(
                &hub,
                &[
                    "--devices",
                    "31",
                    "--shard",
                    &format!("{i}/3"),
                    "--count",
                    "2",
                    "--interval",
                    "200ms",
                ],
            ))
        })
        .collect();
    let mut seen = Vec::new();
    for f in &mut shards {
        let start = f.wait_for("the fleet line", 60, event("fleet")).await;
        let ids: Vec<String> = start["device_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(start["devices"], ids.len());
        let summary = f.wait_for("the summary", 120, event("summary")).await;
        assert_eq!(summary["reason"], "count", "{summary}");
        assert_eq!(summary["devices_acked"], ids.len(), "{summary}");
        assert_eq!(f.exit_code().await, 0);
        seen.extend(ids);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a device ran in two shards: {seen:?}"
    );
    let fleet: BTreeSet<String> = (1..=31).map(|i| format!("sim-{i}")).collect();
    assert_eq!(sorted.into_iter().collect::<BTreeSet<_>>(), fleet);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_fleet_figures_as_prometheus_text() {
    let hub = TestHub::start().await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "5",
            "--interval",
            "200ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--stats-every",
            "200ms",
        ],
    ));
    let m = f
        .wait_for("the metrics address", 60, event("metrics"))
        .await;
    let addr = m["addr"].as_str().unwrap().to_owned();
    f.wait_for("5 acknowledged", 60, |v| {
        v["event"] == "stats" && v["devices_acked"] == 5
    })
    .await;
    // A plain HTTP/1.0 GET, as a Prometheus scraper sends it.
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: fleet\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let (head, text) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("azsim_fleet_devices"), 5.0);
    assert_eq!(value("azsim_fleet_devices_connected"), 5.0);
    assert_eq!(value("azsim_fleet_devices_acked"), 5.0);
    assert!(value("azsim_fleet_messages_acked_total") >= 5.0);
    assert!(text.contains("azsim_fleet_publish_ack_seconds{quantile=\"0.99\"}"));
    f.terminate();
    f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_connection_strings_run_as_given() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::from("# two existing devices\n");
    for id in ["listed-a", "listed-b"] {
        lines.push_str(&hub.create_device(id).await);
        lines.push('\n');
    }
    let file = dir.path().join("devices.txt");
    std::fs::write(&file, lines).unwrap();
    let mut cmd = fleet(&hub, &["--count", "1", "--interval", "200ms", "--ca"]);
    cmd.arg(&hub.ca_file).arg("--connection-strings").arg(&file);
    let mut f = Fleet::spawn(cmd);
    let start = f.wait_for("the fleet line", 60, event("fleet")).await;
    assert_eq!(start["device_ids"], json!(["listed-a", "listed-b"]));
    let summary = f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(summary["devices_acked"], 2, "{summary}");
    assert_eq!(f.exit_code().await, 0);
    hub.stop().await;
}

#[tokio::test]
async fn the_bulk_registry_call_reports_each_device() {
    let hub = TestHub::start().await;
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "bulk-1", "importMode": "create", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}},
                {"id": "bulk-2", "importMode": "create"},
            ])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    assert_eq!(hub.device_key("bulk-1").await, key);

    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "bulk-1", "importMode": "create"},
                {"id": "bulk-3", "importMode": "update"},
                {"id": "bulk-2", "importMode": "delete"},
                {"id": "bulk-4", "importMode": "createOrUpdate"},
            ])),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["isSuccessful"], false);
    let codes: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap().to_owned(),
                e["errorCode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("bulk-1".to_owned(), "DeviceAlreadyExists".to_owned()),
            ("bulk-3".to_owned(), "DeviceNotFound".to_owned()),
        ]
    );
    let (s, _) = hub.rest(Method::GET, "/devices/bulk-2", None).await;
    assert_eq!(s, 404, "deleted");
    let (s, _) = hub.rest(Method::GET, "/devices/bulk-4", None).await;
    assert_eq!(s, 200, "created");

    let many: Vec<Value> = (0..101).map(|i| json!({"id": format!("m-{i}")})).collect();
    let (s, body) = hub
        .rest(Method::POST, "/devices", Some(Value::Array(many)))
        .await;
    assert_eq!(s, 400, "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    for (args, flag) in [
        (vec!["--devices", "0"], "--devices"),
        (vec!["--devices", "10", "--shard", "3/3"], "--shard"),
        (
            vec!["--connection-strings", missing],
            "--connection-strings",
        ),
        (
            vec!["--devices", "10", "--connect-rate", "0"],
            "--connect-rate",
        ),
        (
            vec!["--devices", "10", "--connect-rate", "lots"],
            "--connect-rate",
        ),
        (vec!["--devices", "10", "--interval", "0s"], "--interval"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("fleet")
            .args(&args)
            .arg("--state")
            .arg(dir.path().join("hub"))
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("hub").exists(), "bad input starts no hub");
}

/// `key: value` of the first line of `yaml` whose key is `key` (the manifests are plain YAML).
fn yaml_value<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
        .trim()
        .trim_matches('"')
}

/// The argument after `flag` in the container's `args` list.
fn yaml_arg<'a>(yaml: &'a str, flag: &str) -> &'a str {
    let mut lines = yaml.lines().map(str::trim);
    lines
        .find(|l| *l == format!("- {flag}"))
        .unwrap_or_else(|| panic!("no {flag} in the args"));
    lines
        .next()
        .and_then(|l| l.strip_prefix("- "))
        .unwrap()
        .trim_matches('"')
}

#[test]
fn the_kubernetes_job_runs_one_shard_per_pod_with_memory_for_its_devices() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let job = std::fs::read_to_string(dir.join("fleet-job.yaml")).unwrap();
    assert_eq!(yaml_value(&job, "completionMode"), "Indexed");
    let completions: u64 = yaml_value(&job, "completions").parse().unwrap();
    let parallelism: u64 = yaml_value(&job, "parallelism").parse().unwrap();
    let shards: u64 = yaml_arg(&job, "--shards").parse().unwrap();
    assert_eq!((completions, parallelism), (shards, shards));
    let devices: u64 = yaml_arg(&job, "--devices").parse().unwrap();
    // The measured cost of a device (README: ~31 KiB) plus the process must fit the request.
    let request_mib: u64 = yaml_value(&job, "memory")
        .strip_suffix("Mi")
        .unwrap()
        .parse()
        .unwrap();
    let need_mib = (devices / shards) * 31 / 1024 + 20;
    assert!(request_mib >= need_mib, "{request_mib} Mi < {need_mib} Mi");
    assert!(
        job.contains("AZSIM_FLEET_HUB_CONNECTION_STRING") && job.contains("secretKeyRef"),
        "the connection string comes from a Secret"
    );

    // Schema validation, offline: kubernetes-validate from PyPI carries the schemas.
    let python = std::env::var_os("AZSIM_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        std::path::PathBuf::from,
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    match std::process::Command::new(&python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&files)
        .output()
    {
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            crate::support::skip(&format!(
                "schema check: kubernetes-validate is not installed in {python:?}"
            ));
        }
        Ok(out) => assert!(
            out.status.success(),
            "kubernetes-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => crate::support::skip(&format!("schema check: {python:?}: {e}")),
    }
}

/// `azsim hub` as its own process on `state` (ports 0: free ones; then the same again).
fn hub_process(state: &std::path::Path, mqtt: u16, https: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "--mqtt-port", &mqtt.to_string()])
        .args(["--https-port", &https.to_string()])
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("azsim hub starts")
}

/// The hub's record once the process `pid` wrote it.
async fn hub_info(state: &std::path::Path, pid: u32) -> azsim_emulator::HubInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(i) = azsim_emulator::HubInfo::load(state)
            && i.pid == pid
        {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {pid} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_hub_is_killed_and_restarted_every_device_reconnects_and_no_acknowledged_message_is_lost()
 {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let mut hub = hub_process(&state, 0, 0);
    let info = hub_info(&state, hub.id()).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["fleet", "--json", "--print-acks", "--devices", "20"])
        .args(["--interval", "200ms", "--stats-every", "200ms", "--state"])
        .arg(&state)
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut f = Fleet::spawn(cmd);
    f.wait_for("every device acknowledged", 60, |v| {
        v["event"] == "stats" && v["devices_acked"] == 20
    })
    .await;

    // SIGKILL mid-stream, then the same ports again.
    hub.kill().unwrap();
    hub.wait().unwrap();
    let mut hub = hub_process(&state, info.mqtt_port, info.https_port);
    let info = hub_info(&state, hub.id()).await;
    let back = f
        .wait_for("every device back", 90, |v| {
            v["event"] == "stats" && v["reconnects"].as_u64() >= Some(20) && v["connected"] == 20
        })
        .await;
    let acked_then = back["acked"].as_u64().unwrap();
    f.wait_for("more acknowledgements", 60, |v| {
        v["event"] == "stats" && v["acked"].as_u64() >= Some(acked_then + 40)
    })
    .await;
    f.terminate();
    f.wait_for("the summary", 60, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);

    // Every $.mid the fleet saw acknowledged is in the hub's telemetry log.
    let mut acked: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for v in f.seen.iter().filter(|v| v["event"] == "acked") {
        acked
            .entry(v["device_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(acked.len(), 20);
    let tls = azsim::tls::client_config(Some(&info.ca_file)).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let key = info
        .service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .unwrap();
    let mut token = String::new();
    azsim_proto::sas::sign(
        &mut token,
        &format!("{}:{}", info.hostname, info.https_port),
        key,
        azsim_emulator::clock::unix_now() + 600,
        Some("iothubowner"),
    )
    .unwrap();
    for (device, mids) in &acked {
        let url = format!(
            "https://{}:{}/emulator/events/recent?deviceId={device}&limit=10000&api-version=2021-04-12",
            info.hostname, info.https_port
        );
        let stored: Value = http
            .get(url)
            .header("Authorization", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored: BTreeSet<&str> = stored
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["systemProperties"]["message-id"].as_str())
            .collect();
        let lost: Vec<&String> = mids
            .iter()
            .filter(|m| !stored.contains(m.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{device}: acknowledged but not stored: {lost:?}"
        );
    }
    hub.kill().unwrap();
    hub.wait().unwrap();
}

/// The official Python service SDK's `bulk_create_or_update_devices` against the local hub's bulk
/// call: created devices, then per-device errors read back by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_bulk_call_works_against_the_local_hub() {
    let python = std::env::var_os("AZSIM_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        std::path::PathBuf::from,
    );
    if !python.exists() {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    }
    let hub = TestHub::start().await;
    let script = r#"
import os
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice, AuthenticationMechanism, SymmetricKey
rm = IoTHubRegistryManager(os.environ["CS"])
key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="
auth = AuthenticationMechanism(type="sas", symmetric_key=SymmetricKey(primary_key=key, secondary_key=key))
devs = [ExportImportDevice(id=f"py-{i}", import_mode="create", authentication=auth) for i in range(3)]
r = rm.bulk_create_or_update_devices(devs)
print("first", r.is_successful, len(r.errors))
r = rm.bulk_create_or_update_devices([devs[0], ExportImportDevice(id="py-9", import_mode="delete")])
print("second", r.is_successful, " ".join(f"{e.device_id}={e.error_code}" for e in r.errors))
print("key", rm.get_device("py-2").authentication.symmetric_key.primary_key == key)
"#;
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .env("CS", &hub.service_connection_string)
        .env("REQUESTS_CA_BUNDLE", &hub.ca_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "first True 0",
            "second False py-0=DeviceAlreadyExists py-9=DeviceNotFound",
            "key True"
        ]
    );
    hub.stop().await;
}
