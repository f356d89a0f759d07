//! What the Node SDK's e2e suite (`e2etests/test/registry.js`, "Can create an edge and device
//! scope relationship") found: a leaf device's `deviceScope` may only be the scope of an IoT
//! Edge device of the hub; a PUT giving another one is refused (400, nothing stored), as on IoT
//! Hub, where the hub accepted any string.

use reqwest::Method;
use serde_json::json;

use crate::support::TestHub;

#[tokio::test]
async fn a_leaf_scope_must_be_an_edge_devices_scope() {
    let hub = TestHub::start().await;
    let (s, edge) = hub
        .rest(
            Method::PUT,
            "/devices/edge-s",
            Some(json!({"deviceId": "edge-s", "capabilities": {"iotEdge": true}})),
        )
        .await;
    assert_eq!(s, 200, "{edge}");
    let scope = edge["deviceScope"].as_str().unwrap().to_owned();

    // Created under the edge device: accepted.
    let (s, leaf) = hub
        .rest(
            Method::PUT,
            "/devices/leaf-s",
            Some(json!({"deviceId": "leaf-s", "deviceScope": scope})),
        )
        .await;
    assert_eq!(s, 200, "{leaf}");
    assert_eq!(leaf["deviceScope"], json!(scope));

    // Updated to a scope no edge device has (what registry.js sends: a uuid): refused.
    let mut changed = leaf.clone();
    changed["deviceScope"] = json!("0b5c7d2e-9f61-4c1a-8e3b-2a4d6f8b0c1e");
    let r = hub
        .http()
        .put(hub.url("/devices/leaf-s"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "*")
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err = r.text().await.unwrap();
    assert!(
        err.contains("deviceScope") && err.contains("400004"),
        "{err}"
    );
    let (s, leaf) = hub.rest(Method::GET, "/devices/leaf-s", None).await;
    assert_eq!(s, 200);
    assert_eq!(leaf["deviceScope"], json!(scope), "nothing stored");

    // Created with an unknown scope: refused, not created.
    let (s, err) = hub
        .rest(
            Method::PUT,
            "/devices/leaf-t",
            Some(json!({"deviceId": "leaf-t", "deviceScope": "ms-azure-iot-edge://nobody-1"})),
        )
        .await;
    assert_eq!(s, 400, "{err}");
    let (s, _) = hub.rest(Method::GET, "/devices/leaf-t", None).await;
    assert_eq!(s, 404);

    // An update that keeps the scope it has is accepted, and so is clearing it.
    for body in [
        json!({"deviceId": "leaf-s", "deviceScope": scope, "status": "disabled"}),
        json!({"deviceId": "leaf-s", "deviceScope": null, "parentScopes": []}),
    ] {
        let r = hub
            .http()
            .put(hub.url("/devices/leaf-s"))
            .header("Authorization", hub.service_token())
            .header("If-Match", "*")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{body}");
    }
}
