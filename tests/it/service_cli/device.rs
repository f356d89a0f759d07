//! `azsim device`: devices and module identities created, shown, listed, invoked, patched and
//! deleted end to end.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_create_show_list_and_delete_work_end_to_end() {
    let hub = TestHub::start().await;
    let key = service_key(&hub);

    let out = run(&hub, &["device", "create", "cli-dev-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("created device cli-dev-1"), "{out:?}");
    let cs_line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("connection string: "))
        .expect("connection string line");
    assert!(cs_line.starts_with("HostName=localhost"), "{cs_line}");
    assert_eq!(cs_field(cs_line, "DeviceId"), "cli-dev-1");
    assert!(out.stdout.contains("azsim run"), "{out:?}");
    assert_no_secret(&out, &[&key]);

    let pk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let sk = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";
    let out = run(
        &hub,
        &[
            "device",
            "create",
            "cli-dev-2",
            "--primary-key",
            pk,
            "--secondary-key",
            sk,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["deviceId"], "cli-dev-2");
    let cs = v["connectionString"].as_str().unwrap();
    assert_eq!(cs_field(cs, "SharedAccessKey"), pk);
    assert!(
        !out.stdout.contains(sk),
        "the secondary key is printed: {out:?}"
    );

    let out = run(&hub, &["device", "show", "cli-dev-2", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["deviceId"], "cli-dev-2");
    assert_no_secret(&out, &[pk, sk, &key]);

    let out = run(
        &hub,
        &["device", "show", "cli-dev-2", "--connection-string"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(cs_field(out.stdout.trim(), "SharedAccessKey"), pk);

    let out = run(&hub, &["device", "list", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let ids: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"cli-dev-1".to_owned()) && ids.contains(&"cli-dev-2".to_owned()),
        "{ids:?}"
    );
    assert_no_secret(&out, &[pk, sk, &key]);

    let out = run(&hub, &["device", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("DEVICE"), "{out:?}");
    assert!(out.stdout.contains("cli-dev-2"), "{out:?}");

    let out = run(&hub, &["device", "create", "cli-dev-2"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 409001"), "{out:?}");

    let out = run(&hub, &["device", "delete", "cli-dev-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&hub, &["device", "show", "cli-dev-1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404001"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_identities_are_created_shown_invoked_patched_and_deleted_end_to_end() {
    let hub = TestHub::start().await;
    let service = service_key(&hub);
    let out = run(&hub, &["device", "create", "edge-dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // A module needs its device.
    let out = run(&hub, &["device", "create", "no-dev", "--module", "m"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 404001"), "{out:?}");

    let out = run(
        &hub,
        &[
            "device", "create", "edge-dev", "--module", "filter", "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(
        (&v["deviceId"], &v["moduleId"]),
        (&"edge-dev".into(), &"filter".into())
    );
    assert_eq!(v["module"]["moduleId"], "filter");
    assert_eq!(v["mqttPort"], hub.mqtt_port);
    let cs = v["connectionString"].as_str().unwrap().to_owned();
    assert!(
        cs.starts_with(&format!(
            "HostName=localhost:{};DeviceId=edge-dev;ModuleId=filter;SharedAccessKey=",
            hub.mqtt_port
        )),
        "{cs}"
    );
    let module_key = cs_field(&cs, "SharedAccessKey").to_owned();
    assert_eq!(
        v["module"]["authentication"]["symmetricKey"]["primaryKey"],
        "<redacted>"
    );
    assert_no_secret(&out, &[&service]);

    let out = run(
        &hub,
        &["device", "create", "edge-dev", "--module", "filter"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 409301"), "{out:?}");
    let out = run(&hub, &["device", "create", "edge-dev", "--module", "other"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("created module other of device edge-dev in localhost:"),
        "{out:?}"
    );

    // show: the entry (key redacted), readable or JSON, or the connection string itself.
    let out = run(
        &hub,
        &["device", "show", "edge-dev", "--module", "filter", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["moduleId"], "filter");
    assert_no_secret(&out, &[&module_key, &service]);
    let out = run(&hub, &["device", "show", "edge-dev", "--module", "filter"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\nmodule         filter\n"), "{out:?}");
    assert_no_secret(&out, &[&module_key]);
    let out = run(
        &hub,
        &[
            "device",
            "show",
            "edge-dev",
            "--module",
            "filter",
            "--connection-string",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), cs);

    // Connect as the module with that string.
    let mut module = RawDevice::connect(&hub, &cs).await;
    module.subscribe(SubscriptionKind::Methods).await;
    module.subscribe(SubscriptionKind::DesiredPatches).await;

    // twin patch --module reaches the module, and only the module's twin.
    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "edge-dev",
            r#"{"threshold":3}"#,
            "--module",
            "filter",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("updated twin of module filter of device edge-dev: desired $version"),
        "{out:?}"
    );
    let patch = module.next_publish().await;
    assert!(
        topic::parse_desired_patch(&patch.topic).is_ok(),
        "{}",
        patch.topic
    );
    let desired: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(desired["threshold"], 3, "{desired}");
    let out = run(
        &hub,
        &["twin", "show", "edge-dev", "--module", "filter", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert_eq!(
        (
            &twin["moduleId"],
            &twin["properties"]["desired"]["threshold"]
        ),
        (&"filter".into(), &3.into()),
        "{twin}"
    );
    let out = run(&hub, &["twin", "show", "edge-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.json()["properties"]["desired"]
            .get("threshold")
            .is_none(),
        "the device's own twin changed: {out:?}"
    );

    // invoke --module: the module gets the request and its answer comes back.
    let invoke = tokio::spawn({
        let cs = hub.service_connection_string.clone();
        let ca = hub.ca_file.clone();
        async move {
            let cwd = tempfile::tempdir().unwrap();
            let mut cmd = azsim(cwd.path());
            cmd.args([
                "invoke",
                "edge-dev",
                "recalibrate",
                "--module",
                "filter",
                "--payload",
                r#"{"step":2}"#,
                "--json",
                "--hub-connection-string",
            ])
            .arg(cs)
            .arg("--ca")
            .arg(ca);
            output(cmd).await
        }
    });
    let req = module.next_publish().await;
    let parsed = topic::parse_method_request(&req.topic).expect("method request topic");
    assert_eq!(parsed.name.as_str(), "recalibrate");
    assert_eq!(
        serde_json::from_slice::<Value>(&req.payload).unwrap(),
        serde_json::json!({"step": 2})
    );
    let mut res = String::new();
    topic::write_method_response(&mut res, 200, parsed.rid.as_raw()).unwrap();
    module
        .client
        .publish(
            res,
            QoS::AtMostOnce,
            false,
            br#"{"module":"filter"}"#.to_vec(),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(async move { while module.events.poll().await.is_ok() {} });
    let out = invoke.await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json(),
        serde_json::json!({"status": 200, "payload": {"module": "filter"}})
    );
    driver.abort();

    // delete --module removes the module only.
    let out = run(
        &hub,
        &["device", "delete", "edge-dev", "--module", "filter"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "deleted module filter of device edge-dev from localhost:{}",
            hub.https_port
        )
    );
    let out = run(&hub, &["device", "show", "edge-dev", "--module", "filter"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 404"), "{out:?}");
    let out = run(&hub, &["device", "show", "edge-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    hub.stop().await;
}
