//! The local hub's Device Provisioning Service: the service REST API ([`service_api`]), the
//! device flow over MQTT ([`device_mqtt`]) and HTTPS ([`device_https`]), and the official
//! Python SDKs against it ([`python_sdk`]). Shared here: DPS tokens and requests.

mod cli;
mod device_https;
mod device_mqtt;
mod python_sdk;
mod run;
mod service_api;
mod x509;

use azsim_emulator::clock::unix_now;
use serde_json::Value;

use crate::support::TestHub;

/// The hub's `provisioningserviceowner` key, from its DPS connection string.
pub fn service_key(hub: &TestHub) -> String {
    hub.info
        .provisioning_service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("dps service key")
        .to_string()
}

/// A DPS service token (`sr={host}:{https}`, `skn=provisioningserviceowner`) signed with `key`.
pub fn service_token_with(hub: &TestHub, key: &str) -> String {
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{}:{}", hub.hostname, hub.https_port),
        key,
        unix_now() + 600,
        Some("provisioningserviceowner"),
    )
    .expect("sign");
    t
}

/// A registration token (`sr={scope}/registrations/{id}`, `skn=registration`).
pub fn registration_token(scope: &str, registration_id: &str, key: &str, se: u64) -> String {
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{scope}/registrations/{registration_id}"),
        key,
        se,
        Some("registration"),
    )
    .expect("sign");
    t
}

/// The device key a group key derives for `registration_id`.
pub fn derive(group_key: &str, registration_id: &str) -> String {
    let mut out = String::new();
    azsim_proto::sas::derive_group_key(&mut out, group_key, registration_id).expect("derive");
    out
}

/// A DPS request with any `Authorization` (none when `auth` is `None`) and `If-Match`.
pub async fn request(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    auth: Option<&str>,
    if_match: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!(
        "https://{}:{}{path}?api-version=2021-10-01",
        hub.hostname, hub.https_port
    );
    let mut req = hub.http().request(method, url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A DPS service request signed with the hub's `provisioningserviceowner` key.
pub async fn service(
    hub: &TestHub,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let token = service_token_with(hub, &service_key(hub));
    request(hub, method, path, Some(&token), None, body).await
}

/// Asserts DPS's error body: `errorCode`, a `trackingId`, a `message`, a `timestampUtc`.
pub fn assert_dps_error(v: &Value, code: u64) {
    assert_eq!(v["errorCode"], code, "{v}");
    assert!(
        v["trackingId"].as_str().is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert!(v["message"].is_string(), "{v}");
    assert!(
        v["timestampUtc"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
}
