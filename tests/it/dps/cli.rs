//! `azsim dps enrollment | group` against a hub found through its state dir: create (keys
//! printed), show (redacted unless asked), list, delete; DPS errors exit 1, bad input exits 2.

use std::process::Output;

use serde_json::Value;

use crate::support::TestHub;

async fn azsim(hub: &TestHub, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(args)
        .arg("--state")
        .arg(&hub.dir)
        .env_remove("PROVISIONING_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output()
        .await
        .expect("run azsim")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn azsim_dps_manages_enrollments_and_groups_of_the_local_hub() {
    let hub = TestHub::start().await;
    let scope = hub.info.id_scope.clone();
    let o = azsim(
        &hub,
        &[
            "dps",
            "enrollment",
            "create",
            "cli-dev",
            "--device-id",
            "cli-device",
            "--initial-twin",
            r#"{"tags":{"site":"lab"}}"#,
            "--json",
        ],
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let e: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(e["registrationId"], "cli-dev");
    assert_eq!(e["deviceId"], "cli-device");
    assert_eq!(e["initialTwin"]["tags"]["site"], "lab");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();

    let o = azsim(&hub, &["dps", "enrollment", "show", "cli-dev", "--json"]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(!out.contains(&key), "show redacts the key: {out}");
    let o = azsim(
        &hub,
        &[
            "dps",
            "enrollment",
            "show",
            "cli-dev",
            "--show-keys",
            "--json",
        ],
    )
    .await;
    assert!(text(&o).0.contains(&key));

    let o = azsim(&hub, &["dps", "enrollment", "list"]).await;
    let (out, _) = text(&o);
    assert!(
        out.contains("cli-dev") && out.contains("cli-device") && out.contains("enabled"),
        "{out}"
    );

    // A group: its key printed with the commands that use it.
    let group_key = azsim_emulator::state_dir::generate_key();
    let o = azsim(
        &hub,
        &[
            "dps",
            "group",
            "create",
            "cli-grp",
            "--primary-key",
            &group_key,
        ],
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains(&format!("group key:   {group_key}")), "{out}");
    assert!(out.contains("azsim token derive-key --group-key"), "{out}");
    assert!(out.contains(&format!("--id-scope {scope}")), "{out}");
    let o = azsim(&hub, &["dps", "group", "list", "--json"]).await;
    let list: Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert_eq!(list[0]["enrollmentGroupId"], "cli-grp");
    assert!(!list.to_string().contains(&group_key));

    // Delete, then the DPS error: exit 1 with its status and code.
    for args in [
        ["dps", "enrollment", "delete", "cli-dev"],
        ["dps", "group", "delete", "cli-grp"],
    ] {
        let o = azsim(&hub, &args).await;
        assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    }
    let o = azsim(&hub, &["dps", "enrollment", "show", "cli-dev"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("404 404201"), "{err}");

    // Bad input: exit 2, the field named, no secret echoed.
    for (args, field) in [
        (
            vec!["dps", "enrollment", "create", "a/b"],
            "REGISTRATION_ID",
        ),
        (
            vec![
                "dps",
                "enrollment",
                "create",
                "ok",
                "--primary-key",
                "not-base64!!",
            ],
            "--primary-key",
        ),
        (
            vec!["dps", "enrollment", "create", "ok", "--initial-twin", "[1]"],
            "--initial-twin",
        ),
        (vec!["dps", "group", "show", ""], "GROUP_ID"),
    ] {
        let o = azsim(&hub, &args).await;
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
        assert!(!err.contains("not-base64!!"), "{err}");
    }
    hub.stop().await;
}
