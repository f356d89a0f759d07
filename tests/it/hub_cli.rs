//! `azsim hub start | stop | status | env` through the binary: two hubs at once in two state
//! dirs, a stale hub.json (PID gone, PID reused, ports silent), the exit codes and messages of
//! bad input, and the composite action `.github/actions/azsim-hub/action.yml` run step by step
//! with a temporary `$GITHUB_ENV`, as Actions would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod action;

const AZSIM: &str = env!("CARGO_BIN_EXE_azsim");

fn azsim(args: &[&str]) -> Output {
    Command::new(AZSIM)
        .args(args)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn state_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// `azsim hub start` on free ports; its ready JSON.
fn start(dir: &Path) -> Value {
    let out = azsim(&[
        "hub",
        "start",
        "--state",
        &state_arg(dir),
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one ready line: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

fn stop(dir: &Path) -> Output {
    azsim(&["hub", "stop", "--state", &state_arg(dir)])
}

fn status(dir: &Path) -> Output {
    azsim(&["hub", "status", "--state", &state_arg(dir)])
}

/// Stops the hub of a dir when a test fails half way.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

#[test]
fn two_hubs_in_two_state_dirs_start_export_their_environment_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let _guards = (StopOnDrop(a.clone()), StopOnDrop(b.clone()));
    let ra = start(&a);
    let rb = start(&b);
    assert_ne!(ra["pid"], rb["pid"]);
    assert_ne!(ra["mqtt_port"], rb["mqtt_port"]);
    assert_eq!(ra["state"], state_arg(&a));
    for r in [&ra, &rb] {
        let ca = r["ca_file"].as_str().unwrap();
        assert!(
            Path::new(ca).is_absolute() && Path::new(ca).is_file(),
            "{r}"
        );
    }

    // Starting again in a's dir reports the running hub (same pid), exit 0.
    let again = azsim(&["hub", "start", "--state", &state_arg(&a)]);
    assert_eq!(code(&again), 0);
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );
    let again: Value = serde_json::from_str(text(&again.stdout).trim()).unwrap();
    assert_eq!(again["pid"], ra["pid"]);

    let st = status(&a);
    assert_eq!(code(&st), 0, "{}", text(&st.stderr));
    assert!(text(&st.stdout).contains(&format!("pid {}", ra["pid"])));

    // eval "$(azsim hub env --device d1)": the service commands then reach a's hub through the
    // environment alone (no --state that knows it), and see the device env registered.
    let script = r#"set -e
eval "$("$0" hub env --state "$1" --device d1)"
printf '%s\n' "$IOTHUB_CONNECTION_STRING" "$IOTHUB_DEVICE_CONNECTION_STRING" "$AZSIM_CA_FILE" \
  "$NODE_EXTRA_CA_CERTS" "$REQUESTS_CA_BUNDLE" "$SSL_CERT_FILE"
cd "$2"
"$0" device show d1 --connection-string
"#;
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = Command::new("sh")
        .args(["-c", script, AZSIM, &state_arg(&a), &state_arg(&elsewhere)])
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(lines[0], ra["service_connection_string"]);
    assert!(
        lines[1].starts_with(&format!(
            "HostName=localhost:{};DeviceId=d1;",
            ra["mqtt_port"]
        )),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], ra["ca_file"]);
    assert_eq!(lines[3], ra["ca_file"]);
    let bundle = std::fs::read_to_string(lines[4]).unwrap();
    let ca = std::fs::read_to_string(lines[2]).unwrap();
    assert!(bundle.ends_with(&ca), "the bundle ends with the hub's CA");
    assert_eq!(lines[5], lines[4]);
    assert_eq!(
        lines[6], lines[1],
        "the registry has the device env printed"
    );

    // A second env --device reuses the device (same key), b's env names b's hub.
    let again = azsim(&["hub", "env", "--state", &state_arg(&a), "--device", "d1"]);
    assert!(text(&again.stdout).contains(lines[1]), "same device key");
    let env_b = azsim(&["hub", "env", "--state", &state_arg(&b), "--shell", "github"]);
    assert_eq!(code(&env_b), 0);
    assert!(
        text(&env_b.stdout).contains(&format!(
            "IOTHUB_CONNECTION_STRING={}\n",
            rb["service_connection_string"].as_str().unwrap()
        )),
        "{}",
        text(&env_b.stdout)
    );

    // Stop a: b still runs; a's state is kept.
    let st = stop(&a);
    assert_eq!(code(&st), 0, "{}", text(&st.stderr));
    assert_eq!(code(&status(&a)), 1);
    assert!(a.join("hub.db").is_file() && a.join("ca.pem").is_file());
    assert_eq!(code(&status(&b)), 0);
    assert_eq!(code(&stop(&b)), 0);
    assert_eq!(code(&status(&b)), 1);
}

fn write_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn a_stale_state_dir_is_detected_when_its_pid_is_gone_reused_or_its_ports_are_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let _guard = StopOnDrop(dir.clone());
    start(&dir);
    let record = std::fs::read_to_string(dir.join("hub.pid")).unwrap();
    assert_eq!(code(&stop(&dir)), 0);
    // A hub killed without a clean stop leaves its record behind: put it back.
    std::fs::write(dir.join("hub.pid"), &record).unwrap();

    // 1. The recorded PID is gone.
    let st = status(&dir);
    assert_eq!(code(&st), 1);
    assert!(text(&st.stderr).contains("is gone"), "{}", text(&st.stderr));

    // 2. The PID now belongs to another process (one started after the hub).
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let other_pid = other.id();
    write_json(&dir.join("hub.json"), |v| v["pid"] = other_pid.into());
    write_json(&dir.join("hub.pid"), |v| v["pid"] = other_pid.into());
    let st = status(&dir);
    assert_eq!(code(&st), 1);
    assert!(
        text(&st.stderr).contains("another process"),
        "{}",
        text(&st.stderr)
    );
    let env = azsim(&["hub", "env", "--state", &state_arg(&dir)]);
    assert_eq!(code(&env), 1);
    assert!(env.stdout.is_empty());
    let st = stop(&dir);
    assert_eq!(code(&st), 1, "{}", text(&st.stderr));
    assert!(
        other.try_wait().unwrap().is_none(),
        "stop must not signal a process that is not the hub"
    );

    // 3. No run record (a hub.json from elsewhere): the live PID alone is not trusted, the
    //    ports are probed and do not answer.
    std::fs::remove_file(dir.join("hub.pid")).unwrap();
    let st = status(&dir);
    assert_eq!(code(&st), 1);
    assert!(
        text(&st.stderr).contains("does not accept connections"),
        "{}",
        text(&st.stderr)
    );
    let _ = other.kill();
    let _ = other.wait();

    // A new hub starts over the stale files.
    let r = start(&dir);
    assert_eq!(code(&status(&dir)), 0);
    assert_ne!(r["pid"], Value::from(other_pid));
    assert_eq!(code(&stop(&dir)), 0);
}

#[test]
fn stop_with_nothing_running_exits_1_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = stop(tmp.path());
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert!(err.contains("nothing to stop"), "{err}");
    assert!(err.contains("no hub has run in"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn env_without_a_hub_exits_1_and_an_unknown_shell_exits_2_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = azsim(&["hub", "env", "--state", &state_arg(tmp.path())]);
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("azsim hub start"),
        "{}",
        text(&out.stderr)
    );

    let out = azsim(&["hub", "env", "--shell", "tcsh"]);
    assert_eq!(code(&out), 2);
    let err = text(&out.stderr);
    assert!(err.contains("--shell"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = azsim(&["hub", "env", "--device", "a;b"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("--device"));
}

/// The container's case: `azsim hub --bind 0.0.0.0` in the foreground (PID 1 there), and its
/// health check `azsim hub status` run next to it.
#[test]
fn status_sees_a_foreground_hub_bound_to_all_addresses_and_not_after_sigterm() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let mut hub = Command::new(AZSIM)
        .args([
            "hub",
            "--bind",
            "0.0.0.0",
            "--json",
            "--state",
            &state_arg(&dir),
        ])
        .args(["--mqtt-port", "0", "--https-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(hub.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let ready: Value = serde_json::from_str(&ready).expect("the ready line");
    let st = status(&dir);
    let killed = Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status();
    let exit = hub.wait().unwrap();
    assert_eq!(code(&st), 0, "{}", text(&st.stderr));
    assert!(
        text(&st.stdout).contains(&format!("mqtts://localhost:{}", ready["mqtt_port"])),
        "{}",
        text(&st.stdout)
    );
    assert!(killed.unwrap().success());
    assert!(exit.success(), "{exit}");
    assert!(
        !dir.join("hub.pid").exists(),
        "a clean stop removes its record"
    );
    assert_eq!(code(&status(&dir)), 1);
}

#[test]
fn start_on_a_port_in_use_exits_1_with_the_hubs_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let out = azsim(&[
        "hub",
        "start",
        "--state",
        &state_arg(&dir),
        "--mqtt-port",
        &port,
        "--https-port",
        "0",
    ]);
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("exited during start"), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(code(&status(&dir)), 1);
}

/// What a hub runs with is recorded (issue 11): `azsim hub start` with non-default settings and
/// limits passes every one to its detached hub, whose `hub.json`, ready JSON and
/// `status --json` all show them; `status` names the TLS profile, durability, strictness and
/// tier; a limit is really in force (`--c2d-queue-cap 1` refuses a second queued message);
/// and a `hub.json` from before the settings were recorded still reads.
#[test]
fn a_started_hub_records_the_settings_and_limits_it_runs_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let st = state_arg(&dir);
    let _guard = StopOnDrop(dir.clone());
    let out = azsim(&[
        "hub",
        "start",
        "--state",
        &st,
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
        "--dashboard-port",
        "off",
        "--tls",
        "modern",
        "--durability",
        "process-crash",
        "--lenient",
        "--tier",
        "S2",
        "--units",
        "3",
        "--in-memory",
        "--connect-deadline",
        "7",
        "--max-pre-auth",
        "9",
        "--pre-auth-max-bytes",
        "4096",
        "--http-header-timeout",
        "3",
        "--http-idle-timeout",
        "44",
        "--http-body-timeout",
        "5",
        "--c2d-ttl",
        "120",
        "--c2d-max-delivery-count",
        "3",
        "--feedback-ttl",
        "600",
        "--feedback-lock",
        "30",
        "--feedback-max-delivery-count",
        "2",
        "--c2d-queue-cap",
        "1",
        "--c2d-max-bytes",
        "2048",
        "--d2c-max-bytes",
        "8192",
        "--max-subscriptions",
        "6",
        "--max-keep-alive",
        "600",
        "--event-log-cap",
        "500",
        "--consumer-group",
        "cg-a",
        "--file-upload-container",
        "my-files",
        "--file-upload-sas-ttl",
        "600",
        "--file-upload-notifications",
        "off",
        "--file-upload-notification-ttl",
        "7200",
        "--file-upload-notification-lock",
        "30",
        "--file-upload-notification-max-delivery",
        "7",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let ready: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let expected = serde_json::json!({
        "tls": "modern", "durability": "process-crash", "strict": false, "in_memory": true,
        "tier": "S2", "units": 3, "partitions": 4,
        "routes": ["telemetry", "twin", "lifecycle", "connection"],
        "consumer_groups": ["cg-a"],
        "limits": {
            "connect_deadline_ms": 7000, "max_pre_auth_connections": 9,
            "pre_auth_max_bytes": 4096, "http_header_timeout_ms": 3000,
            "http_idle_timeout_ms": 44000, "http_body_timeout_ms": 5000,
            "c2d_default_ttl_ms": 120000, "c2d_max_delivery_count": 3,
            "feedback_ttl_ms": 600000, "feedback_lock_timeout_ms": 30000,
            "feedback_max_delivery_count": 2, "c2d_queue_cap": 1, "c2d_max_bytes": 2048,
            "d2c_max_bytes": 8192, "max_subscriptions": 6, "max_keep_alive_secs": 600,
            "event_log_cap": 500,
        },
        "file_upload": {
            "container": "my-files", "sas_ttl_ms": 600000, "notifications": false,
            "notification_ttl_ms": 7200000, "notification_lock_ms": 30000,
            "notification_max_delivery_count": 7, "max_active_per_device": 10,
            "max_blob_bytes": 268435456,
        },
    });
    assert_eq!(ready["settings"], expected, "ready JSON");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hub.json")).unwrap()).unwrap();
    assert_eq!(json["settings"], expected, "hub.json");
    let s = azsim(&["hub", "status", "--state", &st, "--json"]);
    assert_eq!(code(&s), 0, "{}", text(&s.stderr));
    let sj: Value = serde_json::from_str(text(&s.stdout).trim()).unwrap();
    assert_eq!(sj["settings"], expected, "status --json");
    let s = status(&dir);
    let line = text(&s.stdout);
    assert!(
        line.contains("tls modern, durability process-crash, lenient, tier S2 x 3, in-memory"),
        "{line}"
    );

    // The queue cap is in force: one message queued, the second refused.
    let d = azsim(&["device", "create", "capped", "--state", &st]);
    assert_eq!(code(&d), 0, "{}", text(&d.stderr));
    let first = azsim(&["c2d", "send", "capped", "one", "--state", &st]);
    assert_eq!(code(&first), 0, "{}", text(&first.stderr));
    let second = azsim(&["c2d", "send", "capped", "two", "--state", &st]);
    assert_eq!(code(&second), 1, "a second message over --c2d-queue-cap 1");

    // A hub.json written before the settings were recorded still reads.
    write_json(&dir.join("hub.json"), |v| {
        v.as_object_mut().unwrap().remove("settings");
    });
    let s = azsim(&["hub", "status", "--state", &st, "--json"]);
    assert_eq!(code(&s), 0, "{}", text(&s.stderr));
    let sj: Value = serde_json::from_str(text(&s.stdout).trim()).unwrap();
    assert!(sj["settings"].is_null(), "{sj}");
    assert_eq!(code(&status(&dir)), 0);
    assert_eq!(code(&stop(&dir)), 0);
}

/// Every limit flag refuses a value out of its range with one line naming it and exit 2, in
/// the foreground and for `azsim hub start`, before anything starts.
#[test]
fn a_limit_out_of_range_is_one_line_naming_its_flag_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let st = state_arg(&tmp.path().join("hub"));
    for (flag, bad) in [
        ("--pre-auth-max-bytes", "100"),
        ("--http-header-timeout", "0"),
        ("--http-idle-timeout", "86401"),
        ("--http-body-timeout", "soon"),
        ("--c2d-ttl", "59"),
        ("--c2d-max-delivery-count", "101"),
        ("--feedback-ttl", "172801"),
        ("--feedback-lock", "4"),
        ("--feedback-max-delivery-count", "0"),
        ("--c2d-queue-cap", "0"),
        ("--c2d-max-bytes", "1023"),
        ("--d2c-max-bytes", "1048577"),
        ("--max-subscriptions", "1001"),
        ("--max-keep-alive", "0"),
        ("--event-log-cap", "99"),
    ] {
        for start in [false, true] {
            let mut args = vec!["hub"];
            if start {
                args.push("start");
            }
            args.extend([
                "--state",
                &st,
                "--mqtt-port",
                "0",
                "--https-port",
                "0",
                flag,
                bad,
            ]);
            let out = azsim(&args);
            let err = text(&out.stderr);
            assert_eq!(code(&out), 2, "{flag} {bad}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }
    assert!(!tmp.path().join("hub").exists(), "nothing started");
}
