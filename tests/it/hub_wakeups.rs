//! Configurations see every twin change at once, not at the safety-net pass: the hub here runs
//! that pass once an hour (`HubConfig::config_pass_every`), so each wait below is met only by
//! the prompt evaluation of the change it waits for. Over the REST API alone, no device
//! connects: a device or module created (`PUT /devices/{id}`, its modules, the bulk registry
//! call), a twin job's tag update, and a device deleted and created again (its old statuses go
//! with it, so the content is applied to the new one).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestHub;

/// Polls `GET path` (a twin) until `done` holds for it (every 20 ms, up to 30 s); prints how
/// long it took (a number for the report, not asserted).
async fn wait_twin(hub: &TestHub, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    let mut last = Value::Null;
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (s, t) = hub.rest(Method::GET, path, None).await;
            if s == 200 && done(&t) {
                eprintln!("{path}: evaluated after {:?}", started.elapsed());
                return t;
            }
            last = t;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("{path} did not reach the awaited state: {last}"))
}

fn applied(id: &'static str, key: &'static str, value: &'static str) -> impl Fn(&Value) -> bool {
    move |t| {
        t["configurations"][id]["status"] == "Applied" && t["properties"]["desired"][key] == value
    }
}

async fn put_config(hub: &TestHub, id: &str, condition: &str, content: Value) {
    let (s, v) = hub
        .rest(
            Method::PUT,
            &format!("/configurations/{id}"),
            Some(json!({
                "id": id, "priority": 1, "targetCondition": condition, "content": content,
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

async fn delete(hub: &TestHub, path: &str) {
    let r = hub
        .http()
        .delete(hub.url(path))
        .header("Authorization", hub.service_token())
        .header("If-Match", "*")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 204, "DELETE {path}");
}

async fn bulk(hub: &TestHub, ops: Value) {
    let (s, v) = hub.rest(Method::POST, "/devices", Some(ops)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["isSuccessful"], true, "{v}");
}

#[tokio::test]
async fn created_and_recreated_identities_are_targeted_at_once() {
    let hub = TestHub::start_configured(|c| c.config_pass_every = Duration::from_secs(3600)).await;
    put_config(
        &hub,
        "dev",
        "deviceId IN ['w1', 'b1']",
        json!({"deviceContent": {"properties.desired.fw": "1.0"}}),
    )
    .await;
    put_config(
        &hub,
        "mod",
        "FROM devices.modules WHERE moduleId = 'm1'",
        json!({"moduleContent": {"properties.desired.level": "debug"}}),
    )
    .await;

    // Created after the configurations, never connected.
    hub.create_device("w1").await;
    let t = wait_twin(&hub, "/twins/w1", applied("dev", "fw", "1.0")).await;
    assert_eq!(
        t["configurations"],
        json!({"dev": {"status": "Applied"}}),
        "{t}"
    );
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/w1/modules/m1",
            Some(json!({"deviceId": "w1", "moduleId": "m1"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait_twin(
        &hub,
        "/twins/w1/modules/m1",
        applied("mod", "level", "debug"),
    )
    .await;

    // Through the bulk registry call.
    bulk(&hub, json!([{"id": "b1", "importMode": "create"}])).await;
    wait_twin(&hub, "/twins/b1", applied("dev", "fw", "1.0")).await;

    // Deleted and created again under the same id: the new twin gets the content again (its
    // predecessor's Applied status went with it).
    delete(&hub, "/devices/w1").await;
    hub.create_device("w1").await;
    let t = wait_twin(&hub, "/twins/w1", applied("dev", "fw", "1.0")).await;
    assert_eq!(t["properties"]["desired"]["$version"], 2, "{t}");
    bulk(&hub, json!([{"id": "b1", "importMode": "delete"}])).await;
    bulk(&hub, json!([{"id": "b1", "importMode": "create"}])).await;
    wait_twin(&hub, "/twins/b1", applied("dev", "fw", "1.0")).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_twin_jobs_tag_update_is_evaluated_at_once() {
    let hub = TestHub::start_configured(|c| c.config_pass_every = Duration::from_secs(3600)).await;
    put_config(
        &hub,
        "oslo",
        "tags.site = 'oslo'",
        json!({"deviceContent": {"properties.desired.region": "north"}}),
    )
    .await;
    hub.create_device("j1").await;
    let (_, t) = hub.rest(Method::GET, "/twins/j1", None).await;
    assert!(t["configurations"].get("oslo").is_none(), "{t}");
    let (s, job) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/tag1",
            Some(json!({
                "jobId": "tag1", "type": "scheduleUpdateTwin",
                "queryCondition": "deviceId = 'j1'",
                "updateTwin": {"etag": "*", "tags": {"site": "oslo"}},
                "maxExecutionTimeInSeconds": 60,
            })),
        )
        .await;
    assert_eq!(s, 200, "{job}");
    let t = wait_twin(&hub, "/twins/j1", applied("oslo", "region", "north")).await;
    assert_eq!(t["tags"]["site"], "oslo", "{t}");
    hub.stop().await;
}
