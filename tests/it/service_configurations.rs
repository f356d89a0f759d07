//! Configurations (automatic device management) through the official Python SDKs:
//! `azure-iot-hub`'s IoTHubConfigurationManager on the service side and `azure-iot-device` as
//! the targeted device (over MQTT, so the hub listens on 127.0.0.1:8883 and the test holds
//! `support::PORT_8883`). One script run drives every scenario (`tests/python/
//! service_configurations.py`); then the hub restarts on the same state directory and a second
//! run checks what survived. Python comes from env `AZSIM_PYTHON`, default `.venv/bin/python`;
//! without it the test prints a `skipped:` line.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::python;
use crate::support::script::Script;

fn spawn_py(python: &Path, work: &Path, action: &str, cs_file: &Path, ca: &Path) -> Script {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/service_configurations.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(action)
        .arg(cs_file)
        .arg(ca)
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    Script::spawn(cmd, work, &format!("service_configurations-{action}"))
}

async fn start(dir: &Path) -> azsim_emulator::HubHandle {
    crate::support::start_on_fixed_ports(
        dir,
        8883,
        0,
        // On disk: the second half restarts the hub on the same state.
        |cfg| cfg.in_memory = false,
        "127.0.0.1:8883, which the Python device SDK needs (is another hub or broker using the port?)",
    )
    .await
}

/// The service connection string, in a file (it holds a key: not on a command line).
fn cs_file(work: &Path, hub: &azsim_emulator::HubHandle) -> PathBuf {
    let f = work.join("service.cs");
    std::fs::write(&f, &hub.info.service_connection_string).unwrap();
    f
}

fn code_of(refused: &Value) -> (u64, String) {
    (
        refused["status"].as_u64().unwrap_or_default(),
        refused["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_target_twins_by_priority_and_survive_a_restart() {
    let Some(python) = python() else {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    };
    let _port = crate::support::PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    let hub = start(&state).await;
    let ca = hub.info.ca_file.clone();
    let mut py = spawn_py(&python, &work, "main", &cs_file(&work, &hub), &ca);
    py.expect("device_connected").await;

    let created = py.expect("created").await;
    assert_eq!(created["id"], "cfg-low", "{created}");
    assert_eq!(created["priority"], 1, "{created}");
    assert_eq!(created["created"], true, "{created}");
    assert_eq!(created["labels"], json!({"team": "azsim"}), "{created}");
    assert!(
        created["etag"].as_str().is_some_and(|e| !e.is_empty()),
        "{created}"
    );
    assert_eq!(
        created["system_queries"],
        json!({
            "targetedCount": "select deviceId from devices where tags.env='prod'",
            "appliedCount": "select deviceId from devices where configurations.[[cfg-low]].status = 'Applied'",
        }),
        "{created}"
    );

    // The device gets the content as a desired-properties patch over MQTT.
    let low = py.expect("low_applied").await;
    assert_eq!(
        low["desired"]["settings"],
        json!({"mode": "low", "interval": 10}),
        "{low}"
    );
    assert_eq!(
        low["configurations"],
        json!({"cfg-low": {"status": "Applied"}}),
        "{low}"
    );
    assert_eq!(low["patch"]["settings"]["interval"], 10, "{low}");
    assert!(low["patch"]["$version"].is_number(), "{low}");

    // The higher priority wins; the lower stays targeted.
    let high = py.expect("high_wins").await;
    assert_eq!(high["desired"]["settings"]["mode"], "high", "{high}");
    // A configuration sets what its content names; the rest stays.
    assert_eq!(high["desired"]["settings"]["interval"], 10, "{high}");
    assert_eq!(
        high["configurations"],
        json!({"cfg-high": {"status": "Applied"}, "cfg-low": {"status": "Targeted"}}),
        "{high}"
    );

    let upd = py.expect("priority_updated").await;
    assert_eq!(upd["priority"], 10, "{upd}");
    assert_eq!(upd["etag_changed"], true, "{upd}");
    assert_eq!(upd["desired"]["settings"]["mode"], "low", "{upd}");
    assert_eq!(
        upd["configurations"],
        json!({"cfg-high": {"status": "Targeted"}, "cfg-low": {"status": "Applied"}}),
        "{upd}"
    );

    let cond = py.expect("condition_updated").await;
    assert_eq!(cond["test_desired"]["settings"]["mode"], "high", "{cond}");
    assert_eq!(
        cond["test_configurations"],
        json!({"cfg-high": {"status": "Applied"}}),
        "{cond}"
    );
    assert_eq!(
        cond["prod_configurations"],
        json!({"cfg-low": {"status": "Applied"}}),
        "{cond}"
    );

    let r = py.expect("refused").await;
    let expect = [
        (
            "immutable",
            400,
            "CannotModifyImmutableConfigurationContent",
        ),
        ("conflict", 412, "PreconditionFailed"),
        ("exists", 409, "GenericConflict"),
        ("bad_id", 400, "ArgumentInvalid"),
        ("bad_key", 400, "InvalidConfigurationContent"),
        ("bad_cond", 400, "InvalidConfigurationTargetCondition"),
        ("bad_metric", 400, "InvalidConfigurationCustomMetricsQuery"),
        ("negative", 400, "ArgumentInvalid"),
        ("missing", 404, "ConfigurationNotFound"),
    ];
    for (k, status, code) in expect {
        assert_eq!(code_of(&r[k]), (status, code.to_owned()), "{k}: {}", r[k]);
    }
    assert!(
        r["immutable"]["body"].as_str().unwrap().contains("400403"),
        "{r}"
    );

    let tested = py.expect("tested").await;
    let cond_err = tested["target_condition_error"]
        .as_str()
        .unwrap_or_default();
    assert!(!cond_err.is_empty(), "{tested}");
    assert_eq!(tested["custom_metric_query_errors"]["good"], "", "{tested}");
    assert!(
        !tested["custom_metric_query_errors"]["bad"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{tested}"
    );

    let m = py.expect("metrics").await;
    assert_eq!(m["custom"], json!({"reportedLow": 1}), "{m}");
    assert_eq!(
        m["system"],
        json!({"targetedCount": 1, "appliedCount": 1}),
        "{m}"
    );

    let listed = py.expect("listed").await;
    assert_eq!(listed["ids"], json!(["cfg-high", "cfg-low"]), "{listed}");
    assert_eq!(listed["top1"], 1, "{listed}");

    let del = py.expect("deleted").await;
    assert_eq!(code_of(&del["delete_stale"]).0, 412, "{del}");
    assert_eq!(
        code_of(&del["gone"]),
        (404, "ConfigurationNotFound".to_owned()),
        "{del}"
    );
    // Deleting a configuration leaves the desired properties it set (as Azure does).
    assert_eq!(del["test_desired"]["settings"]["mode"], "high", "{del}");
    assert_eq!(del["test_configurations"], Value::Null, "{del}");

    // An edge device: applyConfigurationContent puts each module's content on its twin (the
    // whole desired section); a module the registry does not have yet is skipped.
    let edge = py.expect("applied_on_edge").await;
    assert_eq!(
        edge["agent"]["modules"]["filter"]["version"], "1.0",
        "{edge}"
    );
    assert_eq!(
        edge["hub"]["routes"]["all"], "FROM /messages/* INTO $upstream",
        "{edge}"
    );
    assert_eq!(edge["filter"]["threshold"], 5, "{edge}");
    assert_eq!(code_of(&edge["not_edge"]).0, 400, "{edge}");
    // An automatic edge deployment: its modulesContent reaches the targeted device's modules.
    let dep = py.expect("deployed").await;
    assert_eq!(
        dep["configurations"],
        json!({"deploy-edge": {"status": "Applied"}}),
        "{dep}"
    );
    assert_eq!(dep["filter"]["threshold"], 9, "{dep}");
    py.finish().await;
    hub.stop().await.expect("hub stops cleanly");

    // The same state directory: configurations and twin statuses are back.
    let hub = start(&state).await;
    let ca = hub.info.ca_file.clone();
    let mut py = spawn_py(&python, &work, "restarted", &cs_file(&work, &hub), &ca);
    let back = py.expect("restarted").await;
    assert_eq!(back["ids"], json!(["cfg-low", "deploy-edge"]), "{back}");
    assert_eq!(back["priority"], 11, "{back}");
    assert_eq!(
        back["system"],
        json!({"targetedCount": 1, "appliedCount": 1}),
        "{back}"
    );
    assert_eq!(
        back["configurations"],
        json!({"cfg-low": {"status": "Applied"}}),
        "{back}"
    );
    let new = py.expect("new_device").await;
    assert_eq!(
        new["desired"]["settings"],
        json!({"mode": "low", "interval": 10}),
        "{new}"
    );
    py.finish().await;
    hub.stop().await.expect("hub stops cleanly");
}

/// A token of one of the hub's shared access policies for its REST endpoint.
fn policy_token(hub: &crate::support::TestHub, name: &str) -> String {
    let key = &hub
        .info
        .policies
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .key;
    let mut t = String::new();
    let sr = format!("{}:{}", hub.hostname, hub.https_port);
    let expiry = azsim_emulator::clock::unix_now() + 600;
    azsim_proto::sas::sign(&mut t, &sr, key, expiry, Some(name)).unwrap();
    t
}

async fn call(
    hub: &crate::support::TestHub,
    policy: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut rb = hub
        .http()
        .request(method, hub.url(path))
        .header("Authorization", policy_token(hub, policy));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let code = r
        .headers()
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, r.json().await.unwrap_or(Value::Null), code)
}

/// The registry's rights guard configurations: RegistryRead reads them, RegistryWrite changes
/// them, ServiceConnect alone does neither; bad input gets Azure's error shape.
#[tokio::test]
async fn configurations_need_registry_rights_and_refuse_bad_input_in_azure_s_shape() {
    use reqwest::Method;
    let hub = crate::support::TestHub::start().await;
    let cfg = json!({
        "id": "rights",
        "content": {"deviceContent": {"properties.desired.a": 1}},
        "targetCondition": "tags.x = 1",
        "priority": 1,
    });
    let put = |p: &'static str| {
        call(
            &hub,
            p,
            Method::PUT,
            "/configurations/rights",
            Some(cfg.clone()),
        )
    };
    assert_eq!(put("registryRead").await.0, 401);
    assert_eq!(put("service").await.0, 401);
    let (s, created, _) = put("registryReadWrite").await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(
        created["systemMetrics"]["results"],
        json!({"targetedCount": 0, "appliedCount": 0})
    );
    assert_eq!(created["contentType"], "assignment", "{created}");
    let (s, list, _) = call(&hub, "registryRead", Method::GET, "/configurations", None).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (s, _, _) = call(&hub, "service", Method::GET, "/configurations/rights", None).await;
    assert_eq!(s, 401);
    let (s, body, code) = call(
        &hub,
        "iothubowner",
        Method::GET,
        "/configurations?top=x",
        None,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "ArgumentInvalid"), "{body}");
    let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 400004, "{body}");
    // A PUT with an etag of a configuration that does not exist is 404; a module configuration
    // needs `FROM devices.modules WHERE`.
    let missing = hub
        .http()
        .put(hub.url("/configurations/nope"))
        .header("Authorization", policy_token(&hub, "iothubowner"))
        .header("If-Match", "\"AAAAAAAAAAE=\"")
        .json(&json!({"id": "nope", "content": {"deviceContent": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let module_cfg = json!({"id": "m", "content": {"moduleContent": {"properties.desired.a": 1}},
        "targetCondition": "tags.x = 1"});
    let (s, _, code) = call(
        &hub,
        "iothubowner",
        Method::PUT,
        "/configurations/m",
        Some(module_cfg),
    )
    .await;
    assert_eq!(
        (s, code.as_str()),
        (400, "InvalidConfigurationTargetCondition")
    );
    // applyConfigurationContent: an unknown device, and content without modulesContent.
    let content = json!({"modulesContent": {"m": {"properties.desired": {"a": 1}}}});
    let path = "/devices/ghost/applyConfigurationContent";
    let (s, _, code) = call(&hub, "iothubowner", Method::POST, path, Some(content)).await;
    assert_eq!((s, code.as_str()), (404, "DeviceNotFound"));
    let (s, _, code) = call(
        &hub,
        "iothubowner",
        Method::POST,
        path,
        Some(json!({"deviceContent": {}})),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "InvalidConfigurationContent"));
    let (s, _, _) = call(
        &hub,
        "registryReadWrite",
        Method::DELETE,
        "/configurations/rights",
        None,
    )
    .await;
    assert_eq!(s, 204);
}
