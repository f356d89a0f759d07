//! What the Node provisioning SDK's e2e suite (`provisioning/e2e/_provisioning_e2e.js`) found:
//! with HTTPS on 443 the hub's provisioning service connection string said
//! `HostName=localhost:443`, which azure-iot-provisioning-service 1.10.1 dials as a host name
//! (`getaddrinfo ENOTFOUND localhost:443`, every test failed). On 443 it is a bare host now,
//! as the IoT Hub service string is, and a token signed for it is taken by the DPS service API.

use crate::support::{PORT_8883, TestHub};

#[tokio::test]
async fn on_443_the_provisioning_service_string_names_the_bare_host_and_its_token_works() {
    let _ports = PORT_8883.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let handle = crate::support::start_on_fixed_ports(
        &tmp.path().join("hub"),
        0,
        443,
        |_| {},
        "127.0.0.1:443 (is another hub using it?)",
    )
    .await;
    let hub = TestHub::attach(&handle.info);
    let cs = &hub.info.provisioning_service_connection_string;
    let host = cs
        .split(';')
        .find_map(|p| p.strip_prefix("HostName="))
        .expect("HostName");
    assert_eq!(host, hub.hostname, "no port on 443");
    let key = cs
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key");
    let se = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut token = String::new();
    azsim_proto::sas::sign(&mut token, host, key, se, Some("provisioningserviceowner")).unwrap();
    let r = hub
        .http()
        .post(format!(
            "https://{host}:443/enrollments/query?api-version=2021-10-01"
        ))
        .header("Authorization", &token)
        .json(&serde_json::json!({"query": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    handle.stop().await.unwrap();
}

/// The same suite's `_service_create_delete.js` `#getAttestationMechanism` for groups: the Node
/// client posts `/enrollmentgroups/{id}/attestationmechanism` (lower case), which was taken for
/// a hub service call and refused 401; it answers the group's attestation now.
#[tokio::test]
async fn a_groups_attestation_mechanism_is_served_on_the_lowercase_path() {
    use crate::dps::service;
    use reqwest::Method;
    use serde_json::json;

    let hub = TestHub::start().await;
    let key = azsim_emulator::state_dir::generate_key();
    let (s, g) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/grp-lc",
        Some(
            json!({"enrollmentGroupId": "grp-lc", "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": key, "secondaryKey": key}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    for path in [
        "/enrollmentgroups/grp-lc/attestationmechanism",
        "/enrollmentGroups/grp-lc/attestationmechanism",
    ] {
        let (s, a) = service(&hub, Method::POST, path, None).await;
        assert_eq!(s, 200, "{path}: {a}");
        assert_eq!(a["type"], "symmetricKey", "{a}");
    }
}
