//! The registry keeps `capabilities.iotEdge`, `deviceScope` and `parentScopes` as a device PUT
//! or a bulk entry gives them (an edge device without a scope gets its own, as IoT Hub makes it)
//! and returns them on GET, list and query; they survive a hub restart.

use reqwest::Method;
use serde_json::{Value, json};

use crate::hub_query::query_page;
use crate::support::TestHub;

async fn get(hub: &TestHub, id: &str) -> Value {
    let (s, d) = hub.rest(Method::GET, &format!("/devices/{id}"), None).await;
    assert_eq!(s, 200, "{d}");
    d
}

#[tokio::test]
async fn edge_capability_and_scopes_are_stored_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    let (s, edge) = hub
        .rest(
            Method::PUT,
            "/devices/edge-1",
            Some(json!({"deviceId": "edge-1", "capabilities": {"iotEdge": true}})),
        )
        .await;
    assert_eq!(s, 200, "{edge}");
    assert_eq!(edge["capabilities"], json!({"iotEdge": true}));
    let scope = edge["deviceScope"].as_str().expect("a scope").to_owned();
    let gen_id = edge["generationId"].as_str().unwrap();
    assert_eq!(scope, format!("ms-azure-iot-edge://edge-1-{gen_id}"));
    assert_eq!(edge["parentScopes"], json!([]));

    // A leaf under it: its scope and parent scopes as given.
    let (s, leaf) = hub
        .rest(
            Method::PUT,
            "/devices/leaf-1",
            Some(json!({"deviceId": "leaf-1", "deviceScope": scope, "parentScopes": [scope]})),
        )
        .await;
    assert_eq!(s, 200, "{leaf}");
    assert_eq!(leaf["capabilities"], json!({"iotEdge": false}));
    assert_eq!(
        (&leaf["deviceScope"], &leaf["parentScopes"]),
        (&json!(scope), &json!([scope]))
    );

    // A leaf given only its scope: the hub copies it into parentScopes.
    let (s, leaf2) = hub
        .rest(
            Method::PUT,
            "/devices/leaf-2",
            Some(json!({"deviceId": "leaf-2", "deviceScope": scope})),
        )
        .await;
    assert_eq!(s, 200, "{leaf2}");
    assert_eq!(leaf2["parentScopes"], json!([scope]));

    // Bulk: an edge device with its parent's scope.
    let (s, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([{"id": "edge-2", "importMode": "create",
                "capabilities": {"iotEdge": true}, "parentScopes": [scope]}])),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let edge2 = get(&hub, "edge-2").await;
    assert_eq!(edge2["capabilities"]["iotEdge"], true);
    assert_eq!(edge2["parentScopes"], json!([scope]));
    assert!(
        edge2["deviceScope"]
            .as_str()
            .is_some_and(|s| s.starts_with("ms-azure-iot-edge://edge-2-")),
        "{edge2}"
    );

    // An update without the fields keeps them; one that sets them changes them.
    let etag = leaf["etag"].as_str().unwrap().to_owned();
    let r = hub
        .http()
        .put(hub.url("/devices/leaf-1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", &etag)
        .json(&json!({"deviceId": "leaf-1", "status": "enabled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let leaf = get(&hub, "leaf-1").await;
    assert_eq!(leaf["deviceScope"], json!(scope));
    let r = hub
        .http()
        .put(hub.url("/devices/leaf-1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", leaf["etag"].as_str().unwrap())
        .json(&json!({"deviceId": "leaf-1", "deviceScope": null, "parentScopes": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let leaf = get(&hub, "leaf-1").await;
    assert_eq!(
        (&leaf["deviceScope"], &leaf["parentScopes"]),
        (&Value::Null, &json!([]))
    );

    // Wrong types: 400 naming the field, nothing stored.
    for (body, field) in [
        (
            json!({"capabilities": {"iotEdge": "yes"}}),
            "capabilities.iotEdge",
        ),
        (json!({"deviceScope": 5}), "deviceScope"),
        (json!({"parentScopes": [1]}), "parentScopes"),
    ] {
        let (s, err) = hub.rest(Method::PUT, "/devices/bad-1", Some(body)).await;
        assert_eq!(s, 400, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    let (s, _) = hub.rest(Method::GET, "/devices/bad-1", None).await;
    assert_eq!(s, 404);

    // List and query carry them; the twin has capabilities.
    let (s, list) = hub.rest(Method::GET, "/devices", None).await;
    assert_eq!(s, 200);
    let edges: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["capabilities"]["iotEdge"] == true)
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(edges.len(), 2, "{list}");
    let (s, rows, _, _) = query_page(
        &hub,
        "SELECT * FROM devices WHERE capabilities.iotEdge = true",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{rows}");
    let mut ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["edge-1", "edge-2"], "{rows}");
    assert_eq!(rows[0]["capabilities"], json!({"iotEdge": true}));

    // A restart reads them back from hub.db.
    let _dir = hub.stop_keep_dir().await;
    let hub = TestHub::start_in(dir.path()).await;
    let edge = get(&hub, "edge-1").await;
    assert_eq!(
        (&edge["capabilities"]["iotEdge"], &edge["deviceScope"]),
        (&json!(true), &json!(scope))
    );
    hub.stop().await;
}
