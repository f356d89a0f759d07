//! How the CLI reaches its hub: the local hub found through its state dir, an Azure hub dialled
//! over AMQP by `c2d send` and `monitor`, a wrong service key, and the C# SDK's extra keys.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_hub_is_found_through_its_state_dir() {
    let hub = TestHub::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "create", "found-dev", "--json", "--state"])
        .arg(&hub.dir);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["deviceId"], "found-dev");
    // Off port 8883 the device connection string carries the MQTT port, for `azsim run`.
    let cs = v["connectionString"].as_str().unwrap();
    assert!(
        cs.starts_with(&format!(
            "HostName=localhost:{};DeviceId=found-dev;",
            hub.mqtt_port
        )),
        "{cs}"
    );
    assert_eq!(
        v["caFile"].as_str().map(Path::new),
        Some(hub.ca_file.as_path())
    );
    // And the device can connect with it.
    let mut dev = RawDevice::connect(&hub, cs).await;
    dev.send_telemetry("{}", &[]).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_and_c2d_send_dial_an_azure_hub_over_amqp() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "c2VjcmV0LXNlcnZpY2Uta2V5LWRvLW5vdC1sZWFrLTEyMzQ=";
    let azure = format!(
        "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={key}"
    );
    // c2d send speaks AMQP to the hub's host on 5671 (unreachable from a test: it says so).
    let mut cmd = azsim(cwd.path());
    cmd.args(["c2d", "send", "d", "hello"])
        .env("IOTHUB_CONNECTION_STRING", &azure);
    let out = output(cmd).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot connect to myhub.azure-devices.net:5671"),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);
    // monitor reads an Azure hub's telemetry through its messages/events redirect, over AMQP
    // on the same 5671; the SSE-only kinds are refused up front.
    let mut cmd = azsim(cwd.path());
    cmd.args(["monitor", "--timeout", "60"])
        .env("IOTHUB_CONNECTION_STRING", &azure);
    let out = output(cmd).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot connect to myhub.azure-devices.net:5671"),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);
    let mut cmd = azsim(cwd.path());
    cmd.args(["monitor", "--type", "twin"])
        .env("IOTHUB_CONNECTION_STRING", &azure);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("myhub.azure-devices.net is an Azure IoT Hub"),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_service_key_is_refused_with_azures_unauthorized_error() {
    let hub = TestHub::start().await;
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTI=";
    let cs = format!(
        "HostName=localhost:{};SharedAccessKeyName=iothubowner;SharedAccessKey={wrong_key}",
        hub.https_port
    );
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &cs, "--ca"])
        .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 401"), "{out:?}");
    assert_no_secret(&out, &[wrong_key, &service_key(&hub)]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_string_with_the_csharp_sdks_extra_keys_works() {
    let hub = TestHub::start().await;
    let key = service_key(&hub);
    // `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` as the C# SDK writes it.
    let (host, rest) = hub
        .service_connection_string
        .split_once(';')
        .expect("HostName first");
    let csharp =
        format!("{host};CredentialScope=IotHub;CredentialType=SharedAccessSignature;{rest}");
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "device",
        "list",
        "--json",
        "--hub-connection-string",
        &csharp,
        "--ca",
    ])
    .arg(&hub.ca_file);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.json().is_array(), "{out:?}");
    assert_no_secret(&out, &[&key]);

    // A typo is still refused, naming the key and the known ones, without the secret.
    let typo = format!("{host};CredentialScop=IotHub;{rest}");
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &typo]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "error: --hub-connection-string: unknown key 'CredentialScop'; known: HostName, "
        ),
        "{out:?}"
    );
    assert_no_secret(&out, &[&key]);
    hub.stop().await;
}
