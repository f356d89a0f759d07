//! `azsim run --dps`: provision through the local hub's DPS (individual key, group key), print
//! where the device went (`provisioning`, `provisioned`), then run as that device. Refusals
//! (wrong key, disabled enrollment, wrong scope, unknown registration) exit 1 with DPS's status
//! and a diagnosis; missing flags exit 2.

use std::process::Output;

use reqwest::Method;
use serde_json::{Value, json};

use super::{derive, service};
use crate::support::TestHub;

async fn run(hub: &TestHub, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .arg("run")
        .args(args)
        .arg("--state")
        .arg(&hub.dir)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run azsim")
}

fn events(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {all:#?}"))
}

#[tokio::test]
async fn azsim_run_dps_provisions_then_runs_and_refusals_exit_1_with_the_diagnosis() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();
    let (_, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/run-dps",
        Some(json!({"deviceId": "run-dps-dev"})),
    )
    .await;
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let group_key = azsim_emulator::state_dir::generate_key();
    let (s, _) = service(
        &hub,
        Method::PUT,
        "/enrollmentGroups/run-grp",
        Some(json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}})),
    )
    .await;
    assert_eq!(s, 200);

    // Individual enrollment: the local hub in --state is found without --provisioning-host.
    let o = run(
        &hub,
        &[
            "--dps",
            "--registration-id",
            "run-dps",
            "--key",
            &key,
            "--count",
            "2",
            "--interval",
            "200ms",
            "--provisioning-payload",
            r#"{"fw":"2"}"#,
            "--json",
        ],
    )
    .await;
    let all = events(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{all:#?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = event(&all, "provisioning");
    assert_eq!(
        (&p["registration_id"], &p["id_scope"]),
        (&json!("run-dps"), &json!(scope))
    );
    let p = event(&all, "provisioned");
    assert_eq!(p["device_id"], "run-dps-dev", "{p}");
    assert_eq!(p["assigned_hub"], hub.info.provisioning_host.as_str());
    assert_eq!(p["substatus"], "initialAssignment");
    assert_eq!(
        all.iter()
            .filter(|e| e["event"] == "telemetry_acked")
            .count(),
        2,
        "{all:#?}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(&key),
        "the key is never printed"
    );

    // A group enrollment: the key derived from the group key.
    let o = run(
        &hub,
        &[
            "--dps",
            "--registration-id",
            "run-grp-7",
            "--group-key",
            &group_key,
            "--id-scope",
            &scope,
            "--count",
            "1",
            "--interval",
            "200ms",
            "--json",
        ],
    )
    .await;
    let all = events(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{all:#?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(event(&all, "provisioned")["device_id"], "run-grp-7");
    assert_eq!(
        all.iter()
            .filter(|e| e["event"] == "telemetry_acked")
            .count(),
        1
    );
    // The device exists in the hub with the derived key.
    let (s, d) = hub.rest(Method::GET, "/devices/run-grp-7", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        d["authentication"]["symmetricKey"]["primaryKey"],
        derive(&group_key, "run-grp-7").as_str()
    );

    // Refusals: exit 1, DPS's status and code, a diagnosis, no key.
    let (_, _) = service(&hub, Method::PUT, "/enrollments/run-off", Some(json!({"provisioningStatus": "disabled", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}}))).await;
    let wrong = azsim_emulator::state_dir::generate_key();
    let host = format!("{}:{}", hub.hostname, hub.mqtt_port);
    let ca = hub.ca_file.display().to_string();
    for (args, expect) in [
        (
            vec!["--registration-id", "run-dps", "--key", wrong.as_str()],
            "401 401002",
        ),
        (
            vec!["--registration-id", "run-off", "--key", key.as_str()],
            "disabled",
        ),
        (
            vec!["--registration-id", "run-nobody", "--key", key.as_str()],
            "404 404201",
        ),
        (
            vec![
                "--registration-id",
                "run-dps",
                "--key",
                key.as_str(),
                "--id-scope",
                "0ne00000000",
                "--provisioning-host",
                host.as_str(),
                "--ca",
                ca.as_str(),
            ],
            "id scope",
        ),
    ] {
        let mut a = vec!["--dps", "--count", "1"];
        a.extend(args.iter().copied());
        let o = run(&hub, &a).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains(&key) && !err.contains(&wrong), "{err}");
    }

    // Missing input: exit 2 naming the flag.
    for (args, field) in [
        (vec!["--dps", "--key", key.as_str()], "--registration-id"),
        (vec!["--dps", "--registration-id", "x"], "--key"),
        (
            vec![
                "--dps",
                "--registration-id",
                "x",
                "--key",
                key.as_str(),
                "--provisioning-host",
                "h",
            ],
            "--id-scope",
        ),
        (
            vec!["--dps", "--registration-id", "x", "--group-key", "nope!"],
            "--group-key",
        ),
    ] {
        let o = run(&hub, &args).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
    }
    hub.stop().await;
}

/// Over WebSockets: the registration on the hub's HTTPS port (`/$iothub/websocket`), then the run
/// there too. A provisioning host that is not DPS (the hub's HTTPS port without
/// `--websockets`) or not listening: exit 1 naming it, the hub unaffected.
#[tokio::test]
async fn azsim_run_dps_over_websockets_and_a_provisioning_host_that_is_not_dps() {
    let hub = TestHub::start().await;
    let (s, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/run-ws",
        Some(json!({"deviceId": "run-ws-dev"})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(
        &hub,
        &[
            "--dps",
            "--websockets",
            "--registration-id",
            "run-ws",
            "--key",
            &key,
            "--count",
            "1",
            "--interval",
            "200ms",
            "--json",
        ],
    )
    .await;
    let all = events(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{all:#?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = event(&all, "provisioning");
    assert_eq!(p["port"], hub.https_port, "{p}");
    assert_eq!(event(&all, "provisioned")["device_id"], "run-ws-dev");
    assert_eq!(
        all.iter()
            .filter(|e| e["event"] == "telemetry_acked")
            .count(),
        1,
        "{all:#?}"
    );

    let scope = hub.info.id_scope.clone();
    let ca = hub.ca_file.display().to_string();
    let https = format!("{}:{}", hub.hostname, hub.https_port);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("127.0.0.1:{port}")
    };
    for (host, expect) in [
        (https.as_str(), "not MQTT"),
        (closed.as_str(), closed.as_str()),
    ] {
        let o = run(
            &hub,
            &[
                "--dps",
                "--registration-id",
                "run-ws",
                "--key",
                &key,
                "--id-scope",
                &scope,
                "--provisioning-host",
                host,
                "--ca",
                &ca,
                "--count",
                "1",
            ],
        )
        .await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{host}: {err}");
        assert!(err.contains(expect), "{host}: {err}");
        assert!(!err.contains(&key), "{err}");
    }
    // The hub still serves DPS.
    let o = run(
        &hub,
        &[
            "--dps",
            "--registration-id",
            "run-ws",
            "--key",
            &key,
            "--count",
            "1",
            "--interval",
            "200ms",
        ],
    )
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    hub.stop().await;
}
