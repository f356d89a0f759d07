//! The bulk registry call: each device reported, through the CLI's client and through the
//! official Python service SDK.

use super::*;

#[tokio::test]
async fn the_bulk_registry_call_reports_each_device() {
    let hub = TestHub::start().await;
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "bulk-1", "importMode": "create", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}},
                {"id": "bulk-2", "importMode": "create"},
            ])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    assert_eq!(hub.device_key("bulk-1").await, key);

    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "bulk-1", "importMode": "create"},
                {"id": "bulk-3", "importMode": "update"},
                {"id": "bulk-2", "importMode": "delete"},
                {"id": "bulk-4", "importMode": "createOrUpdate"},
            ])),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["isSuccessful"], false);
    let codes: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap().to_owned(),
                e["errorCode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("bulk-1".to_owned(), "DeviceAlreadyExists".to_owned()),
            ("bulk-3".to_owned(), "DeviceNotFound".to_owned()),
        ]
    );
    let (s, _) = hub.rest(Method::GET, "/devices/bulk-2", None).await;
    assert_eq!(s, 404, "deleted");
    let (s, _) = hub.rest(Method::GET, "/devices/bulk-4", None).await;
    assert_eq!(s, 200, "created");

    let many: Vec<Value> = (0..101).map(|i| json!({"id": format!("m-{i}")})).collect();
    let (s, body) = hub
        .rest(Method::POST, "/devices", Some(Value::Array(many)))
        .await;
    assert_eq!(s, 400, "{body}");
    hub.stop().await;
}

/// X.509 identities through the bulk call, as the registry PUT takes them: a self-signed device
/// keeps its thumbprint and holds no keys, a CA device too; a SAS device turned X.509 loses its
/// keys; a selfSigned identity without a thumbprint fails alone, naming the field.
#[tokio::test]
async fn the_bulk_registry_call_takes_x509_identities() {
    let hub = TestHub::start().await;
    let thumb = "AB".repeat(20);
    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "x-self", "importMode": "create", "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumb}}},
                {"id": "x-ca", "importMode": "create", "authentication": {"type": "certificateAuthority"}},
                {"id": "x-turned", "importMode": "create"},
                {"id": "x-bad", "importMode": "create", "authentication": {"type": "selfSigned"}},
            ])),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["deviceId"], "x-bad");
    assert!(
        errors[0]["errorStatus"]
            .as_str()
            .unwrap()
            .contains("authentication.x509Thumbprint"),
        "{body}"
    );

    let (s, v) = hub.rest(Method::GET, "/devices/x-self", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authentication"]["type"], "selfSigned");
    assert_eq!(
        v["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        thumb
    );
    let (_, v) = hub.rest(Method::GET, "/devices/x-ca", None).await;
    assert_eq!(v["authentication"]["type"], "certificateAuthority");

    let (_, v) = hub.rest(Method::GET, "/devices/x-turned", None).await;
    assert_eq!(v["authentication"]["type"], "sas");
    let (status, body) = hub
        .rest(
            Method::POST,
            "/devices",
            Some(json!([
                {"id": "x-turned", "importMode": "update", "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumb}}},
            ])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, v) = hub.rest(Method::GET, "/devices/x-turned", None).await;
    assert_eq!(v["authentication"]["type"], "selfSigned", "{v}");
    assert!(
        v["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .is_none_or(str::is_empty),
        "an X.509 identity holds no keys: {v}"
    );
    hub.stop().await;
}

/// The official Python service SDK's `bulk_create_or_update_devices` against the local hub's bulk
/// call: created devices, then per-device errors read back by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_bulk_call_works_against_the_local_hub() {
    let python = std::env::var_os("AZSIM_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        std::path::PathBuf::from,
    );
    if !python.exists() {
        crate::support::skip("python SDK venv not found (run scripts/test)");
        return;
    }
    let hub = TestHub::start().await;
    let script = r#"
import os
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import ExportImportDevice, AuthenticationMechanism, SymmetricKey
rm = IoTHubRegistryManager(os.environ["CS"])
key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="
auth = AuthenticationMechanism(type="sas", symmetric_key=SymmetricKey(primary_key=key, secondary_key=key))
devs = [ExportImportDevice(id=f"py-{i}", import_mode="create", authentication=auth) for i in range(3)]
r = rm.bulk_create_or_update_devices(devs)
print("first", r.is_successful, len(r.errors))
r = rm.bulk_create_or_update_devices([devs[0], ExportImportDevice(id="py-9", import_mode="delete")])
print("second", r.is_successful, " ".join(f"{e.device_id}={e.error_code}" for e in r.errors))
print("key", rm.get_device("py-2").authentication.symmetric_key.primary_key == key)
"#;
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .env("CS", &hub.service_connection_string)
        .env("REQUESTS_CA_BUNDLE", &hub.ca_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "first True 0",
            "second False py-0=DeviceAlreadyExists py-9=DeviceNotFound",
            "key True"
        ]
    );
    hub.stop().await;
}
