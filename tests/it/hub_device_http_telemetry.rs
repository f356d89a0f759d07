//! Device telemetry over HTTPS (`POST /devices/{id}/messages/events`): a single message with
//! its system and application properties from headers, a batch in the SDKs' JSON shape, the
//! 256 KiB limit and the device-token checks (401 in IoT Hub's older error shape, an unknown
//! device 404), seen through the hub's event log.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestHub;

fn se() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

fn events_url(hub: &TestHub, device: &str) -> String {
    format!(
        "https://{}:{}/devices/{device}/messages/events?api-version=2020-03-13",
        hub.hostname, hub.https_port
    )
}

#[tokio::test]
async fn a_device_sends_telemetry_over_https_single_and_batched() {
    let hub = TestHub::start().await;
    hub.create_device("ht1").await;
    hub.create_device("ht2").await;
    let token = hub.device_token("ht1", &hub.device_key("ht1").await, se());
    let other = hub.device_token("ht2", &hub.device_key("ht2").await, se());
    let url = events_url(&hub, "ht1");

    // One message: the body as sent, properties from the headers; 204 once stored.
    let r = hub
        .http()
        .post(&url)
        .header("Authorization", &token)
        .header("iothub-to", "/devices/ht1/messages/events")
        .header("IoTHub-MessageId", "http-msg-1")
        .header("iothub-correlationid", "http-corr-1")
        .header("iothub-contenttype", "application/json")
        .header("iothub-contentencoding", "utf-8")
        .header("iothub-app-alert", "hot")
        .body(r#"{"temperature":21.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let events = hub.telemetry("ht1").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["body"], r#"{"temperature":21.5}"#, "{ev}");
    assert_eq!(ev["properties"]["alert"], "hot", "{ev}");
    let sys = &ev["systemProperties"];
    assert_eq!(sys["message-id"], "http-msg-1", "{ev}");
    assert_eq!(sys["correlation-id"], "http-corr-1", "{ev}");
    assert_eq!(sys["content-type"], "application/json", "{ev}");
    assert_eq!(sys["content-encoding"], "utf-8", "{ev}");
    let ann = &ev["annotations"];
    assert_eq!(ann["iothub-connection-device-id"], "ht1", "{ev}");
    assert!(
        ann["iothub-connection-auth-method"]
            .as_str()
            .is_some_and(|m| m.contains(r#""scope":"device""#)),
        "{ev}"
    );

    // A batch as the Node SDK writes it (no base64Encoded) and as the C SDK does.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let batch = json!([
        {"body": b64("first"), "properties": {"iothub-app-n": "1"}},
        {"body": b64("second"), "base64Encoded": true,
         "properties": {"iothub-app-n": "2", "iothub-messageid": "b2"}},
    ]);
    let r = hub
        .http()
        .post(&url)
        .header("Authorization", &token)
        .header("Content-Type", "application/vnd.microsoft.iothub.json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let events = hub.telemetry("ht1").await;
    let first = events.iter().find(|e| e["body"] == "first");
    let second = events.iter().find(|e| e["body"] == "second");
    let (Some(first), Some(second)) = (first, second) else {
        panic!("both batch messages stored: {events:?}");
    };
    assert_eq!(first["properties"]["n"], "1", "{first}");
    assert_eq!(second["properties"]["n"], "2", "{second}");
    assert_eq!(second["systemProperties"]["message-id"], "b2", "{second}");

    // Over 256 KiB: 413 MessageTooLarge, nothing stored.
    let r = hub
        .http()
        .post(&url)
        .header("Authorization", &token)
        .body(vec![b'x'; 256 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["iothub-errorcode"], "MessageTooLarge");
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 413001, "{inner}");
    let big_batch = json!([
        {"body": b64(&"y".repeat(200 * 1024))},
        {"body": b64(&"z".repeat(100 * 1024))},
    ]);
    let r = hub
        .http()
        .post(&url)
        .header("Authorization", &token)
        .header("Content-Type", "application/vnd.microsoft.iothub.json")
        .body(big_batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a batch counts in total");

    // A bad token, another device's token, no token: 401, nothing stored.
    for auth in [
        Some(token.replace("sig=", "sig=AA")),
        Some(other.clone()),
        None,
    ] {
        let mut req = hub.http().post(&url).body("nope");
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        // IoT Hub's older error shape on the device API (`ErrorCode:{name};{message}`).
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(
            body["Message"], "ErrorCode:IotHubUnauthorizedAccess;Unauthorized",
            "{body}"
        );
        assert!(
            body["ExceptionMessage"]
                .as_str()
                .is_some_and(|m| m.starts_with("Tracking ID:")),
            "{body}"
        );
    }
    // A device the hub does not know, with a well-formed token: 404 DeviceNotFound (as IoT Hub
    // answers over HTTPS, where MQTT and AMQP refuse the connection).
    let r = hub
        .http()
        .post(events_url(&hub, "ht-none"))
        .header(
            "Authorization",
            hub.device_token("ht-none", &hub.device_key("ht1").await, se()),
        )
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["iothub-errorcode"], "DeviceNotFound");
    // ht2's token is good for ht2.
    let r = hub
        .http()
        .post(events_url(&hub, "ht2"))
        .header("Authorization", &other)
        .body("from ht2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hub.telemetry("ht2").await.len(), 1);
    assert_eq!(hub.telemetry("ht1").await.len(), 3, "nothing else stored");
    hub.stop().await;
}

#[tokio::test]
async fn injected_throttle_and_quota_refuse_https_telemetry() {
    let hub = TestHub::start().await;
    hub.create_device("hf1").await;
    let token = hub.device_token("hf1", &hub.device_key("hf1").await, se());
    let url = events_url(&hub, "hf1");
    let post = |body: &'static str| {
        hub.http()
            .post(&url)
            .header("Authorization", &token)
            .body(body)
            .send()
    };
    // Sequential round trips, each answered once committed (printed, not asserted).
    let n = 50;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        assert_eq!(post("tick").await.unwrap().status(), 204);
    }
    println!(
        "https telemetry: {n} sequential messages in {:?} ({:?} each)",
        t0.elapsed(),
        t0.elapsed() / n
    );
    // A fault on one device refuses its telemetry (and only its).
    for (device, kind, status, code) in [
        ("hf2", "throttle", 429, "ThrottlingException"),
        ("hf3", "quota", 403, "IoTHubQuotaExceeded"),
    ] {
        hub.create_device(device).await;
        let t = hub.device_token(device, &hub.device_key(device).await, se());
        let (s, v) = hub
            .rest(
                Method::POST,
                &format!("/emulator/devices/{device}/faults"),
                Some(json!({"kind": kind, "forSeconds": 600})),
            )
            .await;
        assert!(s < 300, "{s} {v}");
        let r = hub
            .http()
            .post(events_url(&hub, device))
            .header("Authorization", &t)
            .body("refused")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{kind}");
        assert_eq!(r.headers()["iothub-errorcode"], code, "{kind}");
        assert!(hub.telemetry(device).await.is_empty(), "{kind}");
        assert_eq!(post("tick").await.unwrap().status(), 204, "hf1 unaffected");
    }
    let events = hub.telemetry("hf1").await;
    assert_eq!(events.len(), n as usize + 2, "{events:?}");
    hub.stop().await;
}

/// An X.509 device sends no Authorization header (the Node SDK's HTTP transport): its TLS
/// client certificate authenticates it; without one, or on another device's path, 401.
#[tokio::test]
async fn an_x509_device_sends_https_telemetry_with_its_client_certificate() {
    use azsim::tls::{ClientCert, client_config_with_cert};

    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hxt1");
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.path().join("hxt1.pem"), dir.path().join("hxt1.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = client_config_with_cert(Some(&hub.ca_file), Some(&ClientCert::load(&c, &k).unwrap()))
        .unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let thumb = azsim_emulator::x509::sha1_thumbprint(cert.der());
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/devices/hxt1",
            Some(
                json!({"deviceId": "hxt1", "authentication": {"type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumb}}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    hub.create_device("hxt2").await;
    let post = |c: &reqwest::Client, id: &str| c.post(events_url(&hub, id)).body("x509").send();
    assert_eq!(post(&hub.http(), "hxt1").await.unwrap().status(), 401);
    assert_eq!(post(&http, "hxt2").await.unwrap().status(), 401);
    assert_eq!(post(&http, "hxt1").await.unwrap().status(), 204);
    let events = hub.telemetry("hxt1").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["body"], "x509");
    assert!(hub.telemetry("hxt2").await.is_empty());
    hub.stop().await;
}
