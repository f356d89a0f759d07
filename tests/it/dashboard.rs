//! The web dashboard (`azsim hub --dashboard-port`): its listener and the bridge's guard over
//! plain HTTP on loopback and over TLS beyond it, the flags that choose its port, and the page
//! itself in headless Chromium driving `azsim run` devices (`tests/python/dashboard_browser.py`,
//! Selenium + chromedriver from the test venv; skipped without them).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use azsim_emulator::{DashboardPort, HubConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::run_hub::Running;
use crate::support::python;
use crate::support::{TestHub, skip};

async fn hub_with_dashboard() -> (TestHub, String) {
    let hub = TestHub::start_configured(|c| c.dashboard = DashboardPort::Port(0)).await;
    let url = hub.info.dashboard_url.clone().expect("a dashboard url");
    assert!(url.starts_with("http://localhost:"), "{url}");
    (hub, url.trim_end_matches('/').to_string())
}

fn plain() -> reqwest::Client {
    let tls = azsim::tls::client_config(None).expect("tls config");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .expect("client")
}

async fn text(r: reqwest::RequestBuilder) -> (u16, String) {
    let r = r.send().await.expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_dashboard_serves_its_page_and_bridges_the_rest_api_on_loopback() {
    let (hub, base) = hub_with_dashboard().await;
    let c = plain();
    let (s, page) = text(c.get(format!("{base}/"))).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("/assets/app.js") && page.contains("uPlot"),
        "{page}"
    );
    for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        let (s, body) = text(c.get(format!("{base}/assets/{asset}"))).await;
        assert_eq!(s, 200, "{asset}");
        assert!(body.len() > 100, "{asset}");
    }
    // The page needs no credentials: the bridge signs the call.
    hub.create_device("dash-d1").await;
    let (s, body) = text(c.get(format!("{base}/api/devices"))).await;
    assert_eq!(s, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["deviceId"], "dash-d1");
    // Whatever Authorization the browser sends is replaced, not trusted or needed.
    let (s, _) = text(
        c.get(format!("{base}/api/devices/dash-d1"))
            .header("Authorization", "SharedAccessSignature sr=x&sig=y&se=1"),
    )
    .await;
    assert_eq!(s, 200);
    // The REST API's own rules and error shape come through.
    let (s, body) = text(
        c.put(format!("{base}/api/devices/bad%20id"))
            .header("Content-Type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("is invalid"), "{body}");
    // What the hub view shows, the CA download and a device's connection string.
    let (_, info) = text(c.get(format!("{base}/hub"))).await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["auth"], "loopback");
    assert_eq!(
        info["serviceConnectionString"],
        hub.service_connection_string
    );
    assert_eq!(info["idScope"], hub.info.id_scope);
    assert_eq!(
        info["eventHubConnectionString"],
        serde_json::json!(hub.info.eventhub_connection_string)
    );
    let (s, ca) = text(c.get(format!("{base}/hub/ca.pem"))).await;
    assert_eq!(s, 200);
    assert_eq!(ca, std::fs::read_to_string(&hub.ca_file).unwrap());
    let (s, cs) = text(c.get(format!("{base}/hub/devices/dash-d1/connection-string"))).await;
    assert_eq!(s, 200, "{cs}");
    let cs: Value = serde_json::from_str(&cs).unwrap();
    let key = hub.device_key("dash-d1").await;
    assert_eq!(
        cs["connectionString"],
        hub.info.device_connection_string("dash-d1", &key).unwrap()
    );
    hub.stop().await;
}

#[tokio::test]
async fn the_bridge_refuses_other_hosts_and_other_origins() {
    let (hub, base) = hub_with_dashboard().await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let c = plain();
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own Host.
    let (s, body) = text(
        c.get(format!("{base}/api/devices"))
            .header("Host", format!("evil.example:{port}")),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("Host"), "{body}");
    // Another site's page posting to the dashboard: refused, nothing created.
    let put = |origin: &str| {
        c.put(format!("{base}/api/devices/dash-x"))
            .header("Content-Type", "application/json")
            .header("Origin", origin.to_string())
            .body("{}")
    };
    let (s, _) = text(put("http://evil.example")).await;
    assert_eq!(s, 403);
    let (s, _) = text(put("null")).await;
    assert_eq!(s, 403);
    let (s, _) = text(c.get(format!("{base}/api/devices/dash-x"))).await;
    assert_eq!(s, 404, "nothing was created");
    let (s, _) = text(
        c.get(format!("{base}/api/messages/serviceBound/feedback"))
            .header("Sec-Fetch-Site", "cross-site"),
    )
    .await;
    assert_eq!(s, 403, "a cross-site GET is refused too");
    // The dashboard's own origin may.
    let (s, body) = text(put(&format!("http://localhost:{port}"))).await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = text(
        c.delete(format!("{base}/api/devices/dash-x"))
            .header("If-Match", "*")
            .header("Origin", format!("http://127.0.0.1:{port}"))
            .header("Host", format!("127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(s, 204);
    // Pages cannot frame it.
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    hub.stop().await;
}

#[tokio::test]
async fn beyond_loopback_the_dashboard_is_tls_and_every_call_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = HubConfig::new(tmp.path().join("hub"));
    cfg.in_memory = true;
    cfg.dashboard = DashboardPort::Port(0);
    let handle = azsim_emulator::start(cfg, "0.0.0.0".parse().unwrap(), 0, 0)
        .await
        .expect("hub starts");
    let hub = TestHub::attach(&handle.info);
    let url = handle.info.dashboard_url.clone().expect("dashboard url");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let base = url.trim_end_matches('/');
    let c = hub.http();
    let (s, page) = text(c.get(format!("{base}/"))).await;
    assert_eq!(s, 200);
    assert!(page.contains("login-form"));
    let (_, info) = text(c.get(format!("{base}/hub"))).await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["auth"], "token");
    for secret in ["serviceConnectionString", "eventHubConnectionString"] {
        assert!(info.get(secret).is_none(), "no key without a token: {info}");
    }
    let (s, _) = text(c.get(format!("{base}/api/devices"))).await;
    assert_eq!(s, 401);
    let (s, _) = text(c.get(format!("{base}/hub/devices/x/connection-string"))).await;
    assert_eq!(s, 401);
    let (s, body) = text(
        c.get(format!("{base}/api/devices"))
            .header("Authorization", hub.service_token()),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // Plain HTTP is not served there.
    assert!(
        plain()
            .get(base.replace("https:", "http:"))
            .send()
            .await
            .is_err()
    );
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn the_library_serves_no_dashboard_unless_asked() {
    let hub = TestHub::start().await;
    assert_eq!(hub.info.dashboard_url, None);
    hub.stop().await;
}

fn azsim(dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `azsim hub --json` with `extra`, running, and its ready line.
async fn hub_ready(dir: &Path, extra: &[&str]) -> (tokio::process::Child, Value) {
    let mut child = azsim(dir)
        .args([
            "hub",
            "--in-memory",
            "--json",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
        ])
        .args(extra)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("ready in time")
        .unwrap()
        .expect("a ready line");
    (child, serde_json::from_str(&line).unwrap())
}

#[tokio::test]
async fn dashboard_port_flag_picks_a_port_or_turns_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, v) = hub_ready(tmp.path(), &["--state", "a", "--dashboard-port", "0"]).await;
    let url = v["dashboard_url"].as_str().expect("a url");
    assert!(
        url.starts_with("http://localhost:") && url.ends_with('/'),
        "{url}"
    );
    assert!(!url.ends_with(":8880/"), "port 0 is a free port: {url}");
    let (s, page) = text(plain().get(url)).await;
    assert_eq!(s, 200);
    assert!(page.contains("azsim hub"));
    child.kill().await.unwrap();
    let info = azsim_emulator::HubInfo::load(&tmp.path().join("a")).unwrap();
    assert_eq!(
        info.dashboard_url.as_deref(),
        Some(url),
        "hub.json names it too"
    );
    let (mut child, v) = hub_ready(tmp.path(), &["--state", "b", "--dashboard-port", "off"]).await;
    child.kill().await.unwrap();
    assert_eq!(v["dashboard_url"], Value::Null, "{v}");
    // The human summary has the line too.
    let mut child = azsim(tmp.path())
        .args(["hub", "--in-memory", "--state", "c", "--mqtt-port", "0"])
        .args(["--https-port", "0", "--dashboard-port", "0"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("  dashboard: ") {
                return l;
            }
        }
        panic!("no dashboard line");
    })
    .await
    .expect("the summary in time");
    let url = line.trim_start().strip_prefix("dashboard: ").unwrap();
    assert_eq!(text(plain().get(url)).await.0, 200, "{line}");
    child.kill().await.unwrap();
    for (bad, why) in [
        (vec!["--dashboard-port", "http"], "--dashboard-port"),
        (vec!["--dashboard-port", "70000"], "--dashboard-port"),
        (
            vec!["--dashboard-port", "9001", "--mqtt-port", "9001"],
            "--dashboard-port",
        ),
    ] {
        let out = azsim(tmp.path())
            .args(["hub", "--in-memory"])
            .args(&bad)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Which of the browser tools is missing, if any.
fn browser_missing(python: &Path) -> Option<String> {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        let env = if tool.ends_with("driver") {
            "AZSIM_CHROMEDRIVER"
        } else {
            "AZSIM_CHROMIUM"
        };
        let path = std::env::var(env).unwrap_or_else(|_| tool.to_string());
        if !Path::new(&path).exists() {
            return Some(format!("{path} not installed"));
        }
    }
    let ok = std::process::Command::new(python)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "selenium not in the test venv".to_string())
}

#[tokio::test]
async fn the_dashboard_drives_an_azsim_run_device_in_a_browser() {
    let Some(python) = python() else {
        skip("no test venv (.venv/bin/python or AZSIM_PYTHON) for the dashboard browser test");
        return;
    };
    if let Some(why) = browser_missing(&python) {
        skip(&format!("dashboard browser test: {why}"));
        return;
    }
    let (hub, base) = hub_with_dashboard().await;
    let device = "dash-sim-1";
    let cs = hub.create_device(device).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args([
        "run",
        "--json",
        "--interval",
        "300ms",
        "--connection-string",
        &cs,
    ])
    .arg("--ca")
    .arg(&hub.ca_file)
    .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
    .env_remove("IOTHUB_CONNECTION_STRING")
    .env_remove("AZSIM_CA_FILE")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut run = Running::spawn(cmd);
    run.event("connected").await;

    // A second hub bound beyond loopback: its dashboard is TLS and asks for credentials.
    let tls_tmp = tempfile::tempdir().unwrap();
    let mut cfg = HubConfig::new(tls_tmp.path().join("hub"));
    cfg.in_memory = true;
    cfg.dashboard = DashboardPort::Port(0);
    let tls_handle = azsim_emulator::start(cfg, "0.0.0.0".parse().unwrap(), 0, 0)
        .await
        .expect("hub starts");
    let tls_hub = TestHub::attach(&tls_handle.info);
    tls_hub.create_device("dash-tls-1").await;

    let shots = tempfile::tempdir().unwrap();
    let nonce = format!("{:x}", azsim_emulator::clock::unix_now());
    let mut py = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dashboard_browser.py"))
        .args([&format!("{base}/"), device, &nonce])
        .arg(shots.path())
        .env("PYTHONUNBUFFERED", "1")
        .env(
            "AZSIM_DASH_TLS_URL",
            tls_handle.info.dashboard_url.clone().unwrap(),
        )
        .env("AZSIM_DASH_TLS_CS", &tls_hub.service_connection_string)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut stdout = BufReader::new(py.stdout.take().unwrap()).lines();
    let mut steps: Vec<Value> = Vec::new();
    let read = async {
        while let Ok(Some(line)) = stdout.next_line().await {
            println!("browser: {line}");
            steps.push(serde_json::from_str(&line).expect("a JSON step line"));
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read)
        .await
        .expect("the browser script finishes within 240 s");
    let out = py.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed: {stderr}\nsteps: {steps:#?}"
    );
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for want in [
        "device_connected",
        "controls_labelled",
        "bad_device_id_refused",
        "device_created_disabled_deleted",
        "chart_has_points",
        "method_ping_200",
        "method_timeout_refused",
        "desired_acknowledged",
        "invalid_twin_json_refused",
        "conflict_reported",
        "c2d_sent",
        "hub_view",
        "tls_login",
        "done",
    ] {
        assert!(names.contains(&want), "no {want} step in {names:?}");
    }
    let step = |n: &str| steps.iter().find(|s| s["step"] == n).unwrap().clone();
    assert_eq!(step("method_ping_200")["response"]["nonce"], nonce);
    assert!(
        step("method_timeout_refused")["error"]
            .as_str()
            .unwrap()
            .contains("responseTimeoutInSeconds"),
        "the hub's own message"
    );
    assert!(
        step("invalid_twin_json_refused")["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    assert!(
        step("bad_device_id_refused")["error"]
            .as_str()
            .unwrap()
            .contains("is invalid")
    );
    assert_eq!(
        step("desired_acknowledged")["reported"]["telemetryInterval"]["ac"],
        200
    );
    // The C2D message sent from the page reached `azsim run`.
    let body = format!("dashboard-c2d-{nonce}");
    let c2d = run
        .wait_for("the page's c2d", |v| {
            v["event"] == "c2d" && v["body"] == body
        })
        .await;
    assert_eq!(c2d["properties"]["color"], "blue", "{c2d}");
    run.interrupt().await;

    for shot in ["devices.png", "device.png", "device-actions.png", "hub.png"] {
        let p = shots.path().join(shot);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{shot}"
        );
        if let Some(dir) = std::env::var_os("AZSIM_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&p, Path::new(&dir).join(shot)).unwrap();
        }
    }
    hub.stop().await;
    tls_handle.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_flag_the_dashboard_takes_8880_or_a_free_port_when_8880_is_taken() {
    // 8880 is a fixed port: held under the lock for every well-known port.
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    // Taken, by this test or by whatever else holds it.
    let _held = std::net::TcpListener::bind("127.0.0.1:8880");
    let (mut child, v) = hub_ready(tmp.path(), &["--state", "d"]).await;
    let url = v["dashboard_url"].as_str().expect("a url").to_string();
    assert!(!url.ends_with(":8880/"), "{url}");
    assert_eq!(text(plain().get(&url)).await.0, 200, "{url}");
    child.kill().await.unwrap();
}
