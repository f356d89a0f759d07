//! `azsim fleet --group-key`: every device registers through the local hub's DPS (an
//! enrollment group made with `azsim dps group create`) and runs on the hub it is assigned; a
//! wrong group key is counted by kind (DPS's status) and ends as a fleet that never connected.

use super::*;

const GROUP_KEY: &str = "ZmxlZXQtZ3JvdXAta2V5LWZvci10aGUtdGVzdHMtMDEyMzQ1Njc4OQ==";
const WRONG_KEY: &str = "d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_provisioned_through_dps_are_all_acknowledged() {
    let hub = TestHub::start().await;
    create_group(&hub, "fleet-group", GROUP_KEY).await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "50",
            "--prefix",
            "dps-",
            "--group-key",
            GROUP_KEY,
            "--count",
            "1",
            "--interval",
            "200ms",
            "--connect-rate",
            "100",
            "--stats-every",
            "500ms",
        ],
    ));
    let start = f.wait_for("the fleet line", 60, event("fleet")).await;
    assert_eq!(start["devices"], 50);
    assert!(start["provisioning"]["id_scope"].is_string(), "{start}");
    let summary = f.wait_for("the summary", 180, event("summary")).await;
    assert_eq!(f.exit_code().await, 0);
    assert_eq!(summary["reason"], "count", "{summary}");
    assert_eq!(summary["provisioned"], 50, "{summary}");
    assert_eq!(summary["devices_acked"], 50, "{summary}");
    assert!(
        summary["provision_ms"]["p50"].as_f64().is_some()
            && summary["provision_ms"]["p99"].as_f64().is_some(),
        "{summary}"
    );
    // DPS created the devices in the hub, with the group's derived keys.
    let (status, device) = hub.rest(Method::GET, "/devices/dps-37", None).await;
    assert_eq!(status, 200, "{device}");
    let mut derived = String::new();
    azsim_proto::sas::derive_group_key(&mut derived, GROUP_KEY, "dps-37").unwrap();
    assert_eq!(
        device["authentication"]["symmetricKey"]["primaryKey"], derived,
        "the device's key is derived from the group's"
    );
    assert!(f.seen.iter().all(|v| !v.to_string().contains(GROUP_KEY)));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_group_key_is_counted_as_dps_refusals_and_the_fleet_fails() {
    let hub = TestHub::start().await;
    create_group(&hub, "fleet-group", GROUP_KEY).await;
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "3",
            "--group-key",
            WRONG_KEY,
            "--duration",
            "4s",
            "--stats-every",
            "500ms",
        ],
    ));
    let summary = f.wait_for("the summary", 90, event("summary")).await;
    assert_eq!(f.exit_code().await, 1, "a fleet that never connected fails");
    assert_eq!(summary["provisioned"], 0, "{summary}");
    assert_eq!(summary["ever_connected"], 0, "{summary}");
    // The local DPS finds no group whose derived key matches: 404 (Azure: 401); either way
    // a refusal of every device, counted by its status and nothing else.
    let errors = summary["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|k| k == "dps_refused_401" || k == "dps_refused_404"),
        "{summary}"
    );
    let refused: u64 = errors.values().filter_map(Value::as_u64).sum();
    assert!(
        refused >= 3,
        "every device refused (and retried): {summary}"
    );
    let stderr = (&mut f.stderr).await.unwrap_or_default();
    assert!(!stderr.contains(WRONG_KEY), "{stderr}");
    assert!(f.seen.iter().all(|v| !v.to_string().contains(WRONG_KEY)));
    hub.stop().await;
}
