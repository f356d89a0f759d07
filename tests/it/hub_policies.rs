//! Azure's five shared access policies on the local hub: each one's rights over REST (401003
//! "Authorization rule '...' does not allow access for '...'" when it lacks one), device tokens
//! signed with the `device` policy over MQTT, keys kept private across restarts, and
//! `azsim hub policy list`.

use azsim_emulator::clock::unix_now as now;
use reqwest::Method;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use serde_json::{Value, json};

use crate::hub_strict::Raw;
use crate::support::TestHub;

fn policy_key(hub: &TestHub, name: &str) -> String {
    hub.info
        .policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("policy {name} in {:?}", hub.info.policies))
        .key
        .clone()
}

/// A policy token for the hub's REST endpoint (`sr` = host:port).
fn policy_token(hub: &TestHub, name: &str) -> String {
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{}:{}", hub.hostname, hub.https_port),
        &policy_key(hub, name),
        now() + 600,
        Some(name),
    )
    .unwrap();
    t
}

async fn call(
    hub: &TestHub,
    policy: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = hub
        .http()
        .request(method, hub.url(path))
        .header("Authorization", policy_token(hub, policy));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The inner error of an Azure error body.
fn inner(v: &Value) -> Value {
    serde_json::from_str(v["Message"].as_str().unwrap_or("{}")).unwrap_or(Value::Null)
}

#[tokio::test]
async fn each_default_policy_has_azure_s_rights_and_a_missing_one_gets_401003() {
    let hub = TestHub::start().await;
    hub.create_device("pol").await;
    let names: Vec<&str> = hub.info.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "iothubowner",
            "service",
            "device",
            "registryRead",
            "registryReadWrite"
        ]
    );
    // (policy, registry read, registry write, service connect)
    for (policy, read, write, service) in [
        ("iothubowner", true, true, true),
        ("service", false, false, true),
        ("device", false, false, false),
        ("registryRead", true, false, false),
        ("registryReadWrite", true, true, false),
    ] {
        let (s, v) = call(&hub, policy, Method::GET, "/devices/pol", None).await;
        assert_eq!(s == 200, read, "{policy} read: {s} {v}");
        if !read {
            assert_eq!(s, 401, "{policy}: {v}");
            let e = inner(&v);
            assert_eq!(e["errorCode"], 401003, "{v}");
            assert_eq!(
                e["message"],
                format!("Authorization rule '{policy}' does not allow access for 'RegistryRead'")
            );
        }
        let id = format!("new-{policy}");
        let (s, v) = call(
            &hub,
            policy,
            Method::PUT,
            &format!("/devices/{id}"),
            Some(json!({"deviceId": id})),
        )
        .await;
        assert_eq!(s == 200, write, "{policy} write: {s} {v}");
        if !write {
            assert!(
                inner(&v)["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("does not allow access for 'RegistryWrite'"),
                "{v}"
            );
        }
        let (s, v) = call(&hub, policy, Method::GET, "/twins/pol", None).await;
        assert_eq!(s == 200, service, "{policy} twin: {s} {v}");
    }
    // A token of an unknown policy, or signed with another policy's key, is not authenticated.
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{}:{}", hub.hostname, hub.https_port),
        &policy_key(&hub, "service"),
        now() + 600,
        Some("iothubowner"),
    )
    .unwrap();
    let r = hub
        .http()
        .get(hub.url("/devices/pol"))
        .header("Authorization", t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(inner(&v)["errorCode"], 401002, "{v}");
    hub.stop().await;
}

#[tokio::test]
async fn a_device_token_signed_with_the_device_policy_connects_over_mqtt() {
    let hub = TestHub::start().await;
    hub.create_device("pd").await;
    let sign = |key: &str, skn: Option<&str>| {
        let mut t = String::new();
        azsim_proto::sas::sign(
            &mut t,
            &format!("{}/devices/pd", hub.hostname),
            key,
            now() + 600,
            skn,
        )
        .unwrap();
        t
    };
    let device_key = hub.device_key("pd").await;
    // The device-side HTTPS C2D call takes the same token (sr with the HTTPS port here).
    let mut t = String::new();
    azsim_proto::sas::sign(
        &mut t,
        &format!("{}:{}/devices/pd", hub.hostname, hub.https_port),
        &policy_key(&hub, "device"),
        now() + 600,
        Some("device"),
    )
    .unwrap();
    let r = hub
        .http()
        .get(format!(
            "https://{}:{}/devices/pd/messages/deviceBound?api-version=2020-03-13",
            hub.hostname, hub.https_port
        ))
        .header("Authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "no C2D waiting");
    // ...but a device policy token is no service token.
    let r = hub
        .http()
        .get(hub.url("/twins/pd"))
        .header("Authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for (what, token, ok) in [
        (
            "device policy",
            sign(&policy_key(&hub, "device"), Some("device")),
            true,
        ),
        (
            "owner policy",
            sign(&policy_key(&hub, "iothubowner"), Some("iothubowner")),
            true,
        ),
        (
            "service policy (no DeviceConnect)",
            sign(&policy_key(&hub, "service"), Some("service")),
            false,
        ),
        (
            "device key claiming skn=device",
            sign(&device_key, Some("device")),
            false,
        ),
        (
            "device policy key without skn",
            sign(&policy_key(&hub, "device"), None),
            false,
        ),
    ] {
        let mut r = Raw::open(&hub).await;
        let code = r.connect("pd", &hub.username("pd"), &token, None).await;
        let expected = if ok {
            ConnectReturnCode::Success
        } else {
            ConnectReturnCode::NotAuthorized
        };
        assert_eq!(code, expected, "{what}");
    }
    hub.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn policy_keys_are_generated_once_kept_private_and_listed_without_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let hub = TestHub::start_in(&dir).await;
    let first = hub.info.policies.clone();
    hub.stop().await;
    let hub = TestHub::start_in(&dir).await;
    assert_eq!(hub.info.policies, first, "same keys after a restart");
    for p in &first {
        let mode = std::fs::metadata(dir.join(format!("{}.key", p.name)))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", p.name);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "policy", "list", "--state"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(
            |l| l.starts_with("registryReadWrite") && l.contains("RegistryRead, RegistryWrite")
        ),
        "{text}"
    );
    for p in &first {
        assert!(!text.contains(&p.key), "a key was printed: {text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "policy", "list", "--json", "--state"])
        .arg(&dir)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[1],
        json!({"name": "service", "rights": ["ServiceConnect"]})
    );
    hub.stop().await;
}

#[test]
fn a_policy_token_is_checked_for_a_right_as_the_amqp_cbs_would() {
    use azsim_emulator::auth::{Permission, Policies, check_policy_token};
    use azsim_proto::secret::Secret;
    let key = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3QtMDEyMzQ1Njc4OQ==";
    let policies = Policies::new(Secret::new(key.to_string()), |_| {
        Secret::new(key.to_string())
    });
    let mut t = String::new();
    azsim_proto::sas::sign(&mut t, "h.example", key, now() + 60, Some("service")).unwrap();
    let res = ["h.example".to_string()];
    assert!(check_policy_token(&policies, &t, &res, Permission::ServiceConnect, now()).is_ok());
    let denied = check_policy_token(&policies, &t, &res, Permission::RegistryWrite, now());
    assert_eq!(
        denied.unwrap_err().unwrap().to_string(),
        "Authorization rule 'service' does not allow access for 'RegistryWrite'"
    );
    assert!(
        check_policy_token(&policies, &t, &res, Permission::ServiceConnect, now() + 120)
            .unwrap_err()
            .is_err()
    );
}
