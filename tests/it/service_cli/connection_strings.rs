//! The connection strings `azsim device` prints connect as printed: off port 8883, with an
//! unknown MQTT port said and given, and a module's through `azsim run`.

use super::*;

/// The `name: value` line of `azsim token --mqtt`'s output.
fn mqtt_field(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"))
}

/// Connects a raw rumqttc client with exactly the CONNECT fields `azsim token --mqtt` printed for
/// `cs`, and returns the CONNACK code.
async fn connect_as_token_mqtt_prints(hub: &TestHub, cs: &str) -> rumqttc::ConnectReturnCode {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["token", "--mqtt", "--connection-string", cs]);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let port: u16 = mqtt_field(&out.stdout, "port").parse().unwrap();
    let mut opts = MqttOptions::new(
        mqtt_field(&out.stdout, "client id"),
        mqtt_field(&out.stdout, "host"),
        port,
    );
    opts.set_credentials(
        mqtt_field(&out.stdout, "username"),
        mqtt_field(&out.stdout, "password"),
    )
    .set_keep_alive(Duration::from_secs(60))
    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        hub.tls(),
    )));
    let (_client, mut events) = AsyncClient::new(opts, 4);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("connack within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.code,
            Ok(_) => {}
            Err(e) => panic!("cannot connect as printed ({port}): {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_devices_connection_string_connects_as_printed_off_port_8883() {
    let hub = TestHub::start().await;
    assert_ne!(hub.mqtt_port, 8883);
    let key = service_key(&hub);
    let host_name = format!("HostName=localhost:{};", hub.mqtt_port);

    // Named by connection string: the hub's CA file leads to its hub.json and MQTT port.
    let out = run(&hub, &["device", "create", "port-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    let cs = v["connectionString"].as_str().unwrap().to_owned();
    assert!(cs.starts_with(&host_name), "{cs}");
    assert_eq!(v["hostname"], "localhost");
    assert_eq!(v["mqttPort"], hub.mqtt_port);
    assert_eq!(out.stderr, "", "{out:?}");
    assert_no_secret(&out, &[&key]);

    let out = run(&hub, &["device", "create", "port-dev-2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "export IOTHUB_DEVICE_CONNECTION_STRING='{host_name}"
        )),
        "{out:?}"
    );
    let out = run(&hub, &["device", "show", "port-dev", "--connection-string"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), cs);

    // `azsim token --mqtt` with it prints host and port that the hub accepts as they are.
    assert_eq!(
        connect_as_token_mqtt_prints(&hub, &cs).await,
        rumqttc::ConnectReturnCode::Success
    );

    // `azsim run` with it connects and gets its telemetry acknowledged.
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "1s",
        "--connection-string",
        &cs,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "azsim run with the printed string: {out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_mqtt_port_is_said_and_can_be_given() {
    let hub = TestHub::start().await;
    // A copy of the CA away from the hub's state dir: nothing leads to its hub.json.
    let elsewhere = tempfile::tempdir().unwrap();
    let ca = elsewhere.path().join("ca.pem");
    std::fs::copy(&hub.ca_file, &ca).unwrap();
    let create = |args: &[&str]| {
        let mut cmd = azsim(elsewhere.path());
        cmd.args(["device", "create"])
            .args(args)
            .arg("--hub-connection-string")
            .arg(&hub.service_connection_string)
            .arg("--ca")
            .arg(&ca);
        output(cmd)
    };
    let out = create(&["guess-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["mqttPort"], 8883);
    assert!(
        out.json()["connectionString"]
            .as_str()
            .unwrap()
            .starts_with("HostName=localhost;"),
        "{out:?}"
    );
    assert!(
        out.stderr.starts_with("note: the MQTT port of localhost:")
            && out.stderr.contains("--mqtt-port"),
        "{out:?}"
    );

    let port = hub.mqtt_port.to_string();
    let out = create(&["given-dev", "--json", "--mqtt-port", &port]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["mqttPort"], hub.mqtt_port);
    assert_eq!(out.stderr, "", "{out:?}");
    let cs = out.json()["connectionString"].as_str().unwrap().to_owned();
    assert_eq!(
        connect_as_token_mqtt_prints(&hub, &cs).await,
        rumqttc::ConnectReturnCode::Success
    );

    let out = create(&["zero-dev", "--mqtt-port", "0"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.starts_with("error: --mqtt-port: "), "{out:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azsim_run_connects_with_a_printed_module_connection_string() {
    let hub = TestHub::start().await;
    assert_eq!(run(&hub, &["device", "create", "run-dev"]).await.code, 0);
    let out = run(
        &hub,
        &[
            "device", "create", "run-dev", "--module", "sensor", "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let cs = out.json()["connectionString"].as_str().unwrap().to_owned();
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "1s",
        "--connection-string",
        &cs,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "azsim run as a module: {out:?}");
    assert!(
        out.stdout.contains(r#""event":"telemetry_acked""#),
        "{out:?}"
    );
    // The hub saw the module, not the device, connect and send.
    let out = run(
        &hub,
        &["device", "show", "run-dev", "--module", "sensor", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_ne!(
        out.json()["lastActivityTime"],
        "0001-01-01T00:00:00Z",
        "the hub saw no activity from the module: {out:?}"
    );
    let out = run(&hub, &["device", "show", "run-dev", "--json"]).await;
    assert_eq!(
        out.json()["lastActivityTime"],
        "0001-01-01T00:00:00Z",
        "the device itself was active: {out:?}"
    );
    hub.stop().await;
}
