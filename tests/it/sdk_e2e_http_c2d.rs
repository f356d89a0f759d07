//! What the Node SDK's e2e suite (`device_service.js` over `Http`) found: azure-iot-device-http
//! 1.14.4 polls `GET /devices/{id}/messages/devicebound` (lowercase, as azure-iot-common's
//! `endpoint.deviceMessagePath`) and settles with `.../devicebound/{lockToken}[/abandon]`;
//! the hub served only `deviceBound`, so the device's polls were refused (401: routed as a
//! service call) and its C2D never came. Here a device settles C2D over those paths with its own
//! token, another device's token is refused, and a path that only starts alike is not a device
//! call. With an X.509 device the same transport sends no Authorization header at all, only its
//! TLS client certificate, which the hub did not take on the device HTTPS API (401, missing
//! header): now it authenticates the device as its MQTT CONNECT or AMQP links do.

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

/// The Node SDK's HTTP transport with an X.509 device sends no Authorization header: its TLS
/// client certificate authenticates it (as its MQTT CONNECT or AMQP links); a wrong certificate,
/// none, or another device's path is refused.
#[tokio::test]
async fn an_x509_device_polls_c2d_over_https_with_its_client_certificate() {
    use azsim::tls::{ClientCert, client_config_with_cert};

    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let tls =
            client_config_with_cert(Some(&hub.ca_file), Some(&ClientCert::load(&c, &k).unwrap()))
                .unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        (azsim_emulator::x509::sha1_thumbprint(cert.der()), http)
    };
    let (thumb, http) = make("hx1");
    let (_, stranger) = make("hx-other");
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/hx1",
            Some(
                json!({"deviceId": "hx1", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumb}}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    hub.create_device("hx2").await;
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/hx1/c2d",
            Some(json!({"body": "x", "messageId": "x1"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let get = |c: &reqwest::Client, id: &str| {
        c.get(hub.url(&format!(
            "/devices/{id}/messages/devicebound?api-version=2021-04-12"
        )))
        .send()
    };
    assert_eq!(get(&stranger, "hx1").await.unwrap().status(), 401);
    assert_eq!(get(&hub.http(), "hx1").await.unwrap().status(), 401);
    assert_eq!(
        get(&http, "hx2").await.unwrap().status(),
        401,
        "a SAS device"
    );
    let r = get(&http, "hx1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["iothub-messageid"], "x1");
    let lock = etag(&r);
    let r = http
        .delete(hub.url(&format!(
            "/devices/hx1/messages/devicebound/{lock}?api-version=2021-04-12"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}
