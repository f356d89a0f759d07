//! Bad input: arguments exit 2 naming the field without the key, and ids with MQTT wildcards
//! exit 2 before connecting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_naming_the_field_without_the_key() {
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    let cases: &[(&[&str], &str)] = &[
        (&["--keep-alive", "2000"], "--keep-alive"),
        (&["--interval", "50ms"], "--interval"),
        (&["--interval", "2days"], "--interval"),
        (&["--method", "ping=abc"], "--method"),
        (&["--method", "ping"], "--method"),
        (&["--method", "re/set=200"], "--method"),
        (&["--method", "reset=200:{nope"], "--method"),
        (&["--property", "novalue"], "--property"),
        (&["--property", "=v"], "--property"),
        (&["--payload", "{{ seq "], "--payload"),
        (&["--payload", "{{ nosuchvar }}"], "--payload"),
        (&["--payload", "@/nonexistent/payload.j2"], "--payload"),
        (&["--max-queue", "0"], "--max-queue"),
        (&["--count", "0"], "--count"),
        (&["--duration", "soon"], "--duration"),
        (&["--duration", "0s"], "--duration"),
        (&["--token-ttl", "1"], "--token-ttl"),
        (&["--model-id", "thermostat"], "--model-id"),
        (&["--port", "0"], "--port"),
        (&["--content-type", " "], "--content-type"),
        (&["--ca", "/nonexistent/ca.pem"], "--ca"),
    ];
    for &(args, field) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .arg("--connection-string")
            .arg(format!(
                "HostName=h.example;DeviceId=d;SharedAccessKey={key}"
            ))
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {field}:")), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1);
        assert!(!stderr.contains(key));
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["run", "--connection-string"])
        .arg(format!(
            "HostName=h.example;SharedAccessKeyName=x;SharedAccessKey={key}"
        ))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --connection-string:"),
        "{stderr}"
    );
    assert!(!stderr.contains(key));
    // The environment variables the flags fall back to are named when they are wrong.
    let bad_cs = format!("HostName=h.example;DeviceId=d;SharedAccessKey={key};Extra=1");
    for (var, value, field) in [
        (
            "IOTHUB_DEVICE_CONNECTION_STRING",
            &bad_cs[..],
            "IOTHUB_DEVICE_CONNECTION_STRING",
        ),
        ("AZSIM_CA_FILE", "/nonexistent/ca.pem", "AZSIM_CA_FILE"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .env(var, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {field}:")), "{stderr}");
        assert!(!stderr.contains(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_module_ids_with_mqtt_wildcards_exit_2_before_connecting() {
    let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";
    for (ids, want) in [
        (
            "DeviceId=a+b",
            "error: --connection-string: DeviceId 'a+b' contains '+', which MQTT topics cannot \
             carry; IoT Hub accepts it, but only over HTTPS/AMQP",
        ),
        (
            "DeviceId=dev#1",
            "error: --connection-string: DeviceId 'dev#1' contains '#'",
        ),
        (
            "DeviceId=edge;ModuleId=m+1",
            "error: --connection-string: ModuleId 'm+1' contains '+'",
        ),
    ] {
        // A host nothing listens on: the refusal comes before any connection attempt.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("run")
            .arg("--connection-string")
            .arg(format!("HostName=127.0.0.1:1;{ids};SharedAccessKey={key}"))
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ids}: {stderr}");
        assert!(stderr.starts_with(want), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(key));
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
