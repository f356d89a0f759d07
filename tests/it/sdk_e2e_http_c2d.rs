//! What the Node SDK's e2e suite (`device_service.js` over `Http`) found: azure-iot-device-http
//! 1.14.4 polls `GET /devices/{id}/messages/devicebound` (lowercase, as azure-iot-common's
//! `endpoint.deviceMessagePath`) and settles with `.../devicebound/{lockToken}[/abandon]`;
//! the hub served only `deviceBound`, so the device's polls were refused (401: routed as a
//! service call) and its C2D never came. Here a device settles C2D over those paths with its own
//! token, another device's token is refused, and a path that only starts alike is not a device
//! call.

use reqwest::Method;
use serde_json::json;

use crate::support::TestHub;

async fn call(hub: &TestHub, method: Method, path: &str, auth: &str) -> reqwest::Response {
    hub.http()
        .request(method, hub.url(&format!("{path}?api-version=2021-04-12")))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap()
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

#[tokio::test]
async fn a_device_settles_c2d_on_the_lowercase_devicebound_paths() {
    let hub = TestHub::start().await;
    hub.create_device("lc1").await;
    hub.create_device("lc2").await;
    let se = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hub.device_token("lc1", &hub.device_key("lc1").await, se);
    let other = hub.device_token("lc2", &hub.device_key("lc2").await, se);
    let inbox = "/devices/lc1/messages/devicebound";

    assert_eq!(call(&hub, Method::GET, inbox, &token).await.status(), 204);
    for (body, id) in [("one", "m1"), ("two", "m2")] {
        let (s, v) = hub
            .rest(
                Method::POST,
                "/emulator/devices/lc1/c2d",
                Some(json!({"body": body, "messageId": id})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    assert_eq!(call(&hub, Method::GET, inbox, &other).await.status(), 401);

    // Received, abandoned, received again, completed.
    let r = call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["iothub-messageid"], "m1");
    let first = etag(&r);
    let r = call(
        &hub,
        Method::POST,
        &format!("{inbox}/{first}/abandon"),
        &token,
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(r.headers()["iothub-messageid"], "m1");
    assert_eq!(r.headers()["iothub-deliverycount"], "2");
    let again = etag(&r);
    let path = format!("{inbox}/{again}");
    assert_eq!(
        call(&hub, Method::DELETE, &path, &token).await.status(),
        204
    );
    assert_eq!(
        call(&hub, Method::DELETE, &path, &token).await.status(),
        412
    );

    // Rejected with `?reject` (the Node SDK's reject), then the queue is empty.
    let r = call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(r.headers()["iothub-messageid"], "m2");
    let m2 = etag(&r);
    let r = hub
        .http()
        .delete(hub.url(&format!("{inbox}/{m2}?reject&api-version=2021-04-12")))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(call(&hub, Method::GET, inbox, &token).await.status(), 204);

    // Only `messages/devicebound` itself or below it is a device call.
    let r = call(
        &hub,
        Method::GET,
        "/devices/lc1/messages/deviceboundx",
        &token,
    )
    .await;
    assert!(r.status() == 401 || r.status() == 404, "{}", r.status());
}
