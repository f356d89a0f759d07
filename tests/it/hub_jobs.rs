//! Jobs v2 against a running hub: a twin job updates the twins its condition selects (through
//! the twin PATCH: versions and desired pushes as a PATCH does), a method job reaches a
//! connected device and records its answer and fails an offline one, a future job can be
//! cancelled and is listed by `/jobs/v2/query`, per-device results are read with
//! `FROM devices.jobs`, and jobs survive a restart (a queued one runs after it, an interrupted
//! one is failed).

use std::time::Duration;

use reqwest::Method;
use rumqttc::{Packet, QoS};
use serde_json::{Value, json};

use crate::hub_query::query_page;
use crate::support::python;
use crate::support::{TestHub, next_incoming};

/// Polls `GET /jobs/v2/{id}` until `done` holds for it (every 50 ms, up to 30 s).
async fn wait_job(hub: &TestHub, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/jobs/v2/{id}");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (s, j) = hub.rest(Method::GET, &path, None).await;
            assert_eq!(s, 200, "{j}");
            if done(&j) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job {id} did not reach the awaited state"))
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |j| j["status"] == s
}

async fn tag(hub: &TestHub, id: &str, tags: Value) {
    let (s, v) = hub
        .rest(
            Method::PATCH,
            &format!("/twins/{id}"),
            Some(json!({ "tags": tags })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_twin_job_patches_the_twins_its_condition_selects() {
    let hub = TestHub::start().await;
    for (id, site) in [("j1", "oslo"), ("j2", "oslo"), ("j3", "bergen")] {
        hub.create_device(id).await;
        tag(&hub, id, json!({ "site": site })).await;
    }
    let (s, created) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/twin1",
            Some(json!({
                "jobId": "twin1", "type": "scheduleUpdateTwin",
                "queryCondition": "tags.site = 'oslo'",
                "updateTwin": {"etag": "*", "tags": {"fw": "2.0"},
                               "properties": {"desired": {"interval": 5}}},
                "maxExecutionTimeInSeconds": 60,
            })),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["type"], "scheduleUpdateTwin");
    let done = wait_job(&hub, "twin1", status_is("completed")).await;
    assert_eq!(
        done["deviceJobStatistics"],
        json!({"deviceCount":2,"failedCount":0,"succeededCount":2,"runningCount":0,"pendingCount":0})
    );
    for (id, patched) in [("j1", true), ("j2", true), ("j3", false)] {
        let (_, t) = hub.rest(Method::GET, &format!("/twins/{id}"), None).await;
        assert_eq!(t["tags"]["fw"] == "2.0", patched, "{t}");
        assert_eq!(t["properties"]["desired"]["interval"] == 5, patched, "{t}");
    }
    let (s, rows, kind, _) = query_page(
        &hub,
        "SELECT * FROM devices.jobs WHERE jobId = 'twin1'",
        None,
        None,
    )
    .await;
    assert_eq!((s, kind.as_deref()), (200, Some("DeviceJob")));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["status"] == "completed" && r["jobType"] == "scheduleUpdateTwin")
    );

    // The same id again is refused; a bad condition is a 400 naming its place.
    let (s, _) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/twin1",
            Some(json!({"type":"scheduleUpdateTwin",
            "queryCondition":"tags.site = 'oslo'","updateTwin":{"tags":{"a":1}}})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, e) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/bad",
            Some(json!({"type":"scheduleUpdateTwin",
            "queryCondition":"tags.site = = 'oslo'","updateTwin":{"tags":{"a":1}}})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["Message"].as_str().unwrap().contains("Line 1:13"), "{e}");
    let (s, _) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/bad",
            Some(json!({"type":"export",
            "queryCondition":"tags.a = 1"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = hub.rest(Method::GET, "/jobs/v2/nope", None).await;
    assert_eq!(s, 404);
    hub.stop().await;
}

#[tokio::test]
async fn a_method_job_reaches_a_connected_device_and_fails_an_offline_one() {
    let hub = TestHub::start().await;
    for id in ["m1", "m2"] {
        hub.create_device(id).await;
        tag(&hub, id, json!({ "group": "g" })).await;
    }
    let key = hub.device_key("m1").await;
    let (c, mut el) = hub.connect("m1", &key, true).await;
    c.subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let device = tokio::spawn(async move {
        let (topic, body) = next_incoming(&mut el, |p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
            _ => None,
        })
        .await;
        assert!(
            topic.starts_with("$iothub/methods/POST/reboot/?$rid="),
            "{topic}"
        );
        assert_eq!(&body[..], br#"{"delay":2}"#);
        let rid = topic.rsplit("$rid=").next().unwrap().to_string();
        c.publish(
            format!("$iothub/methods/res/201/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            br#"{"rebooting":true}"#.to_vec(),
        )
        .await
        .unwrap();
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    });
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/reboot1",
            Some(json!({
                "type": "scheduleDeviceMethod",
                "queryCondition": "tags.group = 'g'",
                "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 2},
                    "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 0},
            })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let done = wait_job(&hub, "reboot1", status_is("completed")).await;
    assert_eq!(done["deviceJobStatistics"]["succeededCount"], 1, "{done}");
    assert_eq!(done["deviceJobStatistics"]["failedCount"], 1, "{done}");
    let (_, rows, _, _) = query_page(
        &hub,
        "SELECT * FROM devices.jobs WHERE jobId = 'reboot1'",
        None,
        None,
    )
    .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows[0]["deviceId"], "m1");
    assert_eq!(
        rows[0]["outcome"]["deviceMethodResponse"],
        json!({"status": 201, "payload": {"rebooting": true}})
    );
    assert_eq!(
        (&rows[1]["status"], &rows[1]["error"]["code"]),
        (&json!("failed"), &json!("DeviceNotOnline"))
    );
    device.abort();
    hub.stop().await;
}

#[tokio::test]
async fn a_future_job_is_listed_cancelled_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    hub.create_device("r1").await;
    let later = |secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let twin_job = |start: String| {
        json!({"type":"scheduleUpdateTwin","queryCondition":"deviceId = 'r1'",
               "updateTwin":{"properties":{"desired":{"mode":"night"}}},"startTime":start})
    };
    let (s, _) = hub
        .rest(Method::PUT, "/jobs/v2/later", Some(twin_job(later(3600))))
        .await;
    assert_eq!(s, 200);
    let (s, _) = hub
        .rest(Method::PUT, "/jobs/v2/soon", Some(twin_job(later(2))))
        .await;
    assert_eq!(s, 200);
    // A method job on an offline device waiting for it to connect is running at the stop.
    let (s, _) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/waiting",
            Some(json!({"type":"scheduleDeviceMethod",
            "queryCondition":"deviceId = 'r1'","cloudToDeviceMethod":{"methodName":"m",
            "connectTimeoutInSeconds":300}})),
        )
        .await;
    assert_eq!(s, 200);
    wait_job(&hub, "waiting", |j| {
        j["deviceJobStatistics"]["runningCount"] == 1
    })
    .await;

    let (s, listed) = hub
        .rest(
            Method::GET,
            "/jobs/v2/query?jobType=scheduleUpdateTwin&jobStatus=queued",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(listed["type"], "jobResponse");
    let ids: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["later", "soon"]);

    let (s, c) = hub.rest(Method::POST, "/jobs/v2/later/cancel", None).await;
    assert_eq!((s, &c["status"]), (200, &json!("cancelled")));
    let _keep = hub.stop_keep_dir().await;

    let hub = TestHub::start_in(dir.path()).await;
    let j = wait_job(&hub, "waiting", status_is("failed")).await;
    assert_eq!(j["deviceJobStatistics"]["failedCount"], 1, "{j}");
    wait_job(&hub, "soon", status_is("completed")).await;
    let (_, t) = hub.rest(Method::GET, "/twins/r1", None).await;
    assert_eq!(t["properties"]["desired"]["mode"], "night");
    let (_, j) = hub.rest(Method::GET, "/jobs/v2/later", None).await;
    assert_eq!(j["status"], "cancelled");
    hub.stop().await;
}

#[tokio::test]
async fn azsim_job_schedules_waits_shows_lists_and_cancels() {
    use crate::service_cli::run;
    let hub = TestHub::start().await;
    for (id, site) in [("c1", "oslo"), ("c2", "bergen")] {
        hub.create_device(id).await;
        tag(&hub, id, json!({ "site": site })).await;
    }
    let out = run(
        &hub,
        &[
            "job",
            "twin",
            r#"{"interval":7}"#,
            "--tags",
            r#"{"fw":"3"}"#,
            "--where",
            "tags.site = 'oslo'",
            "--id",
            "cli-twin",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let j = out.json();
    assert_eq!(
        (&j["status"], &j["deviceJobStatistics"]["succeededCount"]),
        (&json!("completed"), &json!(1))
    );
    let (_, t) = hub.rest(Method::GET, "/twins/c1", None).await;
    assert_eq!(
        (&t["properties"]["desired"]["interval"], &t["tags"]["fw"]),
        (&json!(7), &json!("3"))
    );

    let out = run(&hub, &["job", "show", "cli-twin", "--devices"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("job cli-twin (scheduleUpdateTwin) completed: 1 devices (1 succeeded"),
        "{out:?}"
    );
    assert!(out.stdout.contains("  c1  completed"), "{out:?}");

    let out = run(
        &hub,
        &[
            "job",
            "invoke",
            "reboot",
            "--payload",
            "{}",
            "--where",
            "deviceId = 'c2'",
            "--start",
            "1h",
            "--id",
            "cli-later",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("job cli-later (scheduleDeviceMethod) queued"),
        "{out:?}"
    );
    let out = run(&hub, &["job", "list", "--type", "method", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["jobId"], "cli-later");
    let out = run(&hub, &["job", "cancel", "cli-later", "--json"]).await;
    assert_eq!((out.code, &out.json()["status"]), (0, &json!("cancelled")));

    let out = run(&hub, &["job", "show", "nope"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let out = run(&hub, &["job", "twin", "--where", "deviceId = 'c1'"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("DESIRED"), "{out:?}");
    let out = run(
        &hub,
        &["job", "invoke", "m", "--where", "x = 1", "--start", "soon"],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--start"), "{out:?}");
    hub.stop().await;
}

#[tokio::test]
async fn the_python_service_sdk_queries_pages_bulk_creates_and_runs_jobs() {
    let Some(python) = python() else {
        crate::support::skip("no Python venv with azure-iot-hub (scripts/test makes .venv)");
        return;
    };
    let hub = TestHub::start().await;
    // The device a method job reaches: azsim run answering "reboot".
    let device_cs = hub.create_device("py-0").await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--connection-string", &device_cs, "--ca"])
        .arg(&hub.ca_file)
        .args([
            "--method",
            r#"reboot=200:{"rebooted":true}"#,
            "--interval",
            "1h",
        ])
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut device = crate::run_hub::Running::spawn(cmd);
    device.event("connected").await;

    let work = tempfile::tempdir().unwrap();
    let cs_file = work.path().join("service.cs");
    std::fs::write(&cs_file, &hub.service_connection_string).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/service_query_jobs.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&cs_file)
            .arg("py")
            .current_dir(work.path())
            .env("REQUESTS_CA_BUNDLE", &hub.ca_file)
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finished within 120 s")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events: std::collections::HashMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| (v["event"].as_str().unwrap().to_string(), v))
        .collect();
    let e = |name: &str| {
        events
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {stdout}"))
    };

    assert_eq!(
        (&e("bulk")["is_successful"], &e("bulk")["errors"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(
        (
            &e("bulk_duplicate")["is_successful"],
            &e("bulk_duplicate")["errors"]
        ),
        (&json!(false), &json!([["py-1", "DeviceAlreadyExists"]]))
    );
    assert_eq!(
        e("query_all")["ids"],
        json!(["py-0", "py-1", "py-2", "py-3", "py-4"])
    );
    assert_eq!(
        (&e("query_all")["pages"], &e("query_all")["type"]),
        (&json!(3), &json!("DeviceTwin"))
    );
    assert_eq!(
        e("query_group")["rows"],
        json!([{"odd": false, "n": 3}, {"odd": true, "n": 2}])
    );
    assert_eq!(e("bad_query")["status"], 400);
    assert!(
        e("bad_query")["message"]
            .as_str()
            .unwrap()
            .contains("Line 1:37"),
        "{}",
        e("bad_query")
    );
    assert_eq!(e("method_created")["type"], "scheduleDeviceMethod");
    assert_eq!(
        e("method_done"),
        &json!({"event":"method_done","status":"completed","devices":1,"succeeded":1,"failed":0})
    );
    assert_eq!(
        e("method_rows")["rows"],
        json!([{"device":"py-0","status":"completed",
                "outcome":{"deviceMethodResponse":{"status":200,"payload":{"rebooted":true}}}}])
    );
    assert_eq!(e("method_rows")["type"], "DeviceJob");
    assert_eq!(
        (&e("twin_done")["status"], &e("twin_done")["succeeded"]),
        (&json!("completed"), &json!(2))
    );
    assert_eq!(
        e("twin_modes")["modes"],
        json!({"py-0": null, "py-1": "eco", "py-2": null, "py-3": "eco", "py-4": null})
    );
    assert_eq!(e("cancelled")["status"], "cancelled");
    assert_eq!(e("listed")["ids"], json!(["py-twin", "py-later"]));
    assert_eq!(e("listed")["type"], "jobResponse");
    // azsim run saw the method the job sent.
    device
        .wait_for("the reboot method", |v| {
            v["event"] == "method" && v["name"] == "reboot"
        })
        .await;
    device.terminate().await;
    hub.stop().await;
}
