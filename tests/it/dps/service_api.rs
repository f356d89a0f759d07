//! The DPS service REST API as the service SDKs call it: enrollments and groups kept with
//! etags, generated keys, queries, registration states, DPS's error body, its own policy key.

use reqwest::Method;
use serde_json::json;

use super::{assert_dps_error, request, service, service_key, service_token_with};
use crate::support::TestHub;

#[tokio::test]
async fn the_dps_service_api_keeps_enrollments_with_etags_and_answers_errors_in_dps_shape() {
    let hub = TestHub::start().await;
    assert!(hub.info.id_scope.starts_with("0ne") && hub.info.id_scope.len() == 11);
    assert!(
        hub.info
            .provisioning_service_connection_string
            .contains(";SharedAccessKeyName=provisioningserviceowner;"),
        "{:?}",
        hub.info
    );

    // Keys generated when omitted, defaults filled in.
    let (s, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/dev-1",
        Some(json!({"registrationId": "dev-1", "deviceId": "device-one",
            "attestation": {"type": "symmetricKey"},
            "initialTwin": {"tags": {"site": "lab"}, "properties": {"desired": {"interval": 5}}}})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(azsim_proto::sas::check_key(&key).is_ok());
    assert!(e["attestation"]["symmetricKey"]["secondaryKey"].is_string());
    assert_eq!(e["provisioningStatus"], "enabled");
    assert_eq!(e["deviceId"], "device-one");
    assert_eq!(e["reprovisionPolicy"]["migrateDeviceData"], true);
    let etag = e["etag"].as_str().unwrap().to_string();

    let (s, got) = service(&hub, Method::GET, "/enrollments/dev-1", None).await;
    assert_eq!((s, &got), (200, &e));

    // If-Match: a stale etag is refused, the current one updates.
    let token = service_token_with(&hub, &service_key(&hub));
    let body = json!({"registrationId": "dev-1", "provisioningStatus": "disabled",
        "attestation": e["attestation"].clone()});
    let (s, err) = request(
        &hub,
        Method::PUT,
        "/enrollments/dev-1",
        Some(&token),
        Some("\"stale\""),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 412, "{err}");
    assert_dps_error(&err, 412002);
    let (s, upd) = request(
        &hub,
        Method::PUT,
        "/enrollments/dev-1",
        Some(&token),
        Some(&etag),
        Some(body),
    )
    .await;
    assert_eq!(s, 200, "{upd}");
    assert_eq!(upd["provisioningStatus"], "disabled");
    assert_ne!(upd["etag"], e["etag"]);
    assert_eq!(upd["createdDateTimeUtc"], e["createdDateTimeUtc"]);
    assert_eq!(
        upd["attestation"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );

    // A group, given its key; queries list both kinds.
    let group_key = azsim_emulator::state_dir::generate_key();
    let (s, g) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/grp",
        Some(
            json!({"enrollmentGroupId": "grp", "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(
        g["attestation"]["symmetricKey"]["primaryKey"],
        group_key.as_str()
    );
    service(&hub, Method::PUT, "/enrollments/dev-2", Some(json!({}))).await;
    let (s, q) = service(
        &hub,
        Method::POST,
        "/enrollments/query",
        Some(json!({"query": "*"})),
    )
    .await;
    assert_eq!(s, 200, "{q}");
    let ids: Vec<_> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["registrationId"].clone())
        .collect();
    assert_eq!(ids, [json!("dev-1"), json!("dev-2")]);
    let (s, q) = service(
        &hub,
        Method::POST,
        "/enrollmentGroups/query",
        Some(json!({"query": "*"})),
    )
    .await;
    assert_eq!((s, q.as_array().unwrap().len()), (200, 1), "{q}");
    let (s, a) = service(
        &hub,
        Method::POST,
        "/enrollments/dev-1/attestationmechanism",
        None,
    )
    .await;
    assert_eq!((s, &a["symmetricKey"]["primaryKey"]), (200, &json!(key)));

    // Bad input: DPS's 400 naming the field; X.509 not (yet) served.
    for (body, field) in [
        (
            json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "%%%"}}}),
            "primaryKey",
        ),
        (json!({"registrationId": "other"}), "registrationId"),
        (
            json!({"provisioningStatus": "sleeping"}),
            "provisioningStatus",
        ),
        (json!({"attestation": {"type": "x509"}}), "x509"),
    ] {
        let (s, err) = service(&hub, Method::PUT, "/enrollments/dev-3", Some(body)).await;
        assert_eq!(s, 400, "{err}");
        assert_dps_error(&err, 400004);
        assert!(err["message"].as_str().unwrap().contains(field), "{err}");
    }

    // Its own policy: no token, the hub's iothubowner token, a wrong key: 401 in DPS's shape.
    let wrong = service_token_with(&hub, &azsim_emulator::state_dir::generate_key());
    for auth in [None, Some(hub.service_token()), Some(wrong)] {
        let (s, err) = request(
            &hub,
            Method::GET,
            "/enrollments/dev-1",
            auth.as_deref(),
            None,
            None,
        )
        .await;
        assert_eq!(s, 401, "{auth:?} {err}");
        assert_dps_error(&err, 401002);
    }
    // ... and the hub's own API still wants the hub's token.
    let (s, _) = request(&hub, Method::GET, "/devices/x", Some(&token), None, None).await;
    assert_eq!(s, 401);

    // Delete: 204, then 404 with DPS's body; the group and registration states too.
    let (s, _) = service(&hub, Method::DELETE, "/enrollments/dev-1", None).await;
    assert_eq!(s, 204);
    let (s, err) = service(&hub, Method::GET, "/enrollments/dev-1", None).await;
    assert_eq!(s, 404);
    assert_dps_error(&err, 404201);
    let (s, _) = service(&hub, Method::DELETE, "/enrollmentGroups/grp", None).await;
    assert_eq!(s, 204);
    let (s, err) = service(&hub, Method::GET, "/enrollmentGroups/grp", None).await;
    assert_eq!(s, 404);
    assert_dps_error(&err, 404203);
    let (s, err) = service(&hub, Method::GET, "/registrations/dev-1", None).await;
    assert_eq!(s, 404);
    assert_dps_error(&err, 404202);
    hub.stop().await;
}

#[tokio::test]
async fn the_id_scope_and_service_key_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(&tmp.path().join("hub")).await;
    let (scope, cs) = (
        hub.info.id_scope.clone(),
        hub.info.provisioning_service_connection_string.clone(),
    );
    let (s, _) = service(&hub, Method::PUT, "/enrollments/kept", Some(json!({}))).await;
    assert_eq!(s, 200);
    hub.stop().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tmp.path().join("hub/provisioningserviceowner.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let hub = TestHub::start_in(&tmp.path().join("hub")).await;
    assert_eq!(hub.info.id_scope, scope);
    let key_of = |s: &str| s.split(";SharedAccessKey=").nth(1).map(str::to_string);
    assert_eq!(
        key_of(&hub.info.provisioning_service_connection_string),
        key_of(&cs)
    );
    let (s, e) = service(&hub, Method::GET, "/enrollments/kept", None).await;
    assert_eq!(s, 200, "{e}");
    hub.stop().await;
}

#[tokio::test]
async fn a_bulk_operation_applies_each_enrollment_and_lists_the_failures() {
    let hub = TestHub::start().await;
    let (s, r) = service(
        &hub,
        Method::POST,
        "/enrollments",
        Some(json!({"mode": "create", "enrollments": [{"registrationId": "b1"}, {"registrationId": "b2"}]})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r, json!({"isSuccessful": true, "errors": []}));
    let (_, b1) = service(&hub, Method::GET, "/enrollments/b1", None).await;
    // Create again: each existing one fails (409); an update with a stale etag fails (412).
    let (_, r) = service(
        &hub,
        Method::POST,
        "/enrollments",
        Some(json!({"mode": "create", "enrollments": [{"registrationId": "b1"}, {"registrationId": "b3"}]})),
    )
    .await;
    assert_eq!(r["isSuccessful"], false);
    assert_eq!(r["errors"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["errors"][0]["registrationId"], "b1");
    assert_eq!(r["errors"][0]["errorCode"], 409201);
    let (_, r) = service(
        &hub,
        Method::POST,
        "/enrollments",
        Some(json!({"mode": "updateIfMatchETag", "enrollments": [
            {"registrationId": "b1", "etag": b1["etag"], "provisioningStatus": "disabled"},
            {"registrationId": "b2", "etag": "stale"}]})),
    )
    .await;
    assert_eq!(r["errors"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["errors"][0]["registrationId"], "b2");
    assert_eq!(r["errors"][0]["errorCode"], 412002);
    let (_, b1) = service(&hub, Method::GET, "/enrollments/b1", None).await;
    assert_eq!(b1["provisioningStatus"], "disabled");
    let (_, r) = service(
        &hub,
        Method::POST,
        "/enrollments",
        Some(json!({"mode": "delete", "enrollments": [{"registrationId": "b1"}, {"registrationId": "nope"}]})),
    )
    .await;
    assert_eq!(r["errors"][0]["registrationId"], "nope", "{r}");
    assert_eq!(r["errors"][0]["errorCode"], 404201);
    let (s, _) = service(&hub, Method::GET, "/enrollments/b1", None).await;
    assert_eq!(s, 404);
    let (s, e) = service(
        &hub,
        Method::POST,
        "/enrollments",
        Some(json!({"mode": "merge", "enrollments": []})),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    hub.stop().await;
}
