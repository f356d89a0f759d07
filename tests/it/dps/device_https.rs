//! The DPS device API over HTTPS on the hub's HTTPS listener: `PUT .../register` (202), `GET
//! .../operations/{id}` (200), authenticated with the registration's SAS token.

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use serde_json::json;

use super::{assert_dps_error, registration_token, request, service};
use crate::support::TestHub;

#[tokio::test]
async fn the_dps_device_https_api_registers_and_answers_the_poll() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();
    let (_, e) = service(&hub, Method::PUT, "/enrollments/http-1", Some(json!({}))).await;
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let token = registration_token(&scope, "http-1", &key, unix_now() + 600);

    let (s, v) = request(
        &hub,
        Method::PUT,
        &format!("/{scope}/registrations/http-1/register"),
        Some(&token),
        None,
        Some(json!({"registrationId": "http-1"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "assigning");
    let op = v["operationId"].as_str().unwrap();
    let (s, v) = request(
        &hub,
        Method::GET,
        &format!("/{scope}/registrations/http-1/operations/{op}"),
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["registrationState"]["deviceId"], "http-1");
    assert_eq!(
        v["registrationState"]["assignedHub"],
        hub.info.provisioning_host.as_str()
    );
    let (_dev, _el) = hub.connect("http-1", &key, true).await;

    // No token, a wrong key, an unknown operation.
    let wrong = registration_token(
        &scope,
        "http-1",
        &azsim_emulator::state_dir::generate_key(),
        unix_now() + 600,
    );
    for (auth, status, code) in [(None, 401, 401002), (Some(wrong.as_str()), 401, 401002)] {
        let (s, v) = request(
            &hub,
            Method::PUT,
            &format!("/{scope}/registrations/http-1/register"),
            auth,
            None,
            Some(json!({})),
        )
        .await;
        assert_eq!(s, status, "{v}");
        assert_dps_error(&v, code);
    }
    let (s, v) = request(
        &hub,
        Method::GET,
        &format!("/{scope}/registrations/http-1/operations/5.nope"),
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_dps_error(&v, 404202);
    hub.stop().await;
}
