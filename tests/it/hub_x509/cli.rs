//! `azsim cert`, `azsim hub ca`, `azsim device create --x509` and `azsim run --cert` through
//! the real binary against a real `azsim hub`.

/// The CLI end to end with the real binary: `azsim hub`, `azsim cert ca|device`, `azsim hub ca
/// add`, `azsim device create --x509`, `azsim run --cert` (with an `x509=true` connection
/// string, and with the certificate alone against the local hub); a wrong certificate exits 1
/// and the hub's log has the reason.
#[cfg(unix)]
#[test]
fn the_cli_makes_certificates_registers_x509_devices_and_runs_them() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("hub");
    let certs = tmp.path().join("certs");
    let azsim = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(args)
            .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("AZSIM_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut hub = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--dashboard-port",
            "off",
            "--json",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(hub.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "the hub printed nothing");
    let mut stderr = hub.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let st = state.to_str().unwrap();
    let dir = certs.to_str().unwrap();

    let (code, out, err) = azsim(&["cert", "ca", "fleet-root", "--out", dir, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let ca: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ca["subject"], "fleet-root");
    for args in [
        vec!["cert", "device", "ss-1", "--out", dir],
        vec!["cert", "device", "ca-1", "--ca", "fleet-root", "--out", dir],
        vec![
            "cert",
            "device",
            "ca-1",
            "--ca",
            &format!("{dir}/fleet-root.pem"),
            "--out",
            &format!("{dir}/other"),
        ],
    ] {
        let (code, out, err) = azsim(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("SHA-256 thumbprint:"), "{out}");
    }
    let (code, out, err) = azsim(&[
        "hub",
        "ca",
        "add",
        &format!("{dir}/fleet-root.pem"),
        "--state",
        st,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("CA fleet-root added"), "{out}");
    let (code, out, _) = azsim(&["hub", "ca", "list", "--state", st]);
    assert_eq!(code, Some(0));
    assert!(out.contains("fleet-root"), "{out}");

    let (code, out, err) = azsim(&[
        "device",
        "create",
        "ss-1",
        "--x509",
        "self-signed",
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--state",
        st,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ss_cs = created["connectionString"].as_str().unwrap().to_owned();
    assert!(ss_cs.ends_with(";x509=true"), "{ss_cs}");
    assert_eq!(created["device"]["authentication"]["type"], "selfSigned");
    let (code, out, err) = azsim(&[
        "device",
        "show",
        "ss-1",
        "--connection-string",
        "--state",
        st,
    ]);
    assert_eq!((code, out.trim()), (Some(0), ss_cs.as_str()), "{err}");
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "ca-1",
        "--x509",
        "ca",
        "--cert",
        &format!("{dir}/ca-1.pem"),
        "--state",
        st,
    ]);
    assert_eq!(code, Some(0), "{err}");
    // Bad input: exit 2 naming the field.
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "x-1",
        "--x509",
        "self-signed",
        "--state",
        st,
    ]);
    assert_eq!((code, err.contains("--cert")), (Some(2), true), "{err}");
    let (code, _, err) = azsim(&[
        "device",
        "create",
        "x-1",
        "--x509",
        "ca",
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--state",
        st,
    ]);
    assert_eq!((code, err.contains("subject CN")), (Some(2), true), "{err}");
    let (code, _, err) = azsim(&["device", "create", "x-1", "--x509", "rsa", "--state", st]);
    assert_eq!((code, err.contains("--x509")), (Some(2), true), "{err}");

    let info = azsim_emulator::HubInfo::load(&state).unwrap();
    let ca_file = info.ca_file.to_str().unwrap().to_owned();
    let run = |cs: Option<&str>, cert: &str| {
        let mut args = vec![
            "run",
            "--json",
            "--count",
            "2",
            "--interval",
            "200ms",
            "--state",
            st,
            "--ca",
            &ca_file,
        ];
        if let Some(cs) = cs {
            args.extend(["--connection-string", cs]);
        }
        let (cert, key) = (format!("{cert}.pem"), format!("{cert}.key.pem"));
        args.extend(["--cert", &cert, "--cert-key", &key]);
        azsim(&args)
    };
    let (code, out, err) = run(Some(&ss_cs), &format!("{dir}/ss-1"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"acked\":2"), "{out}");
    // A thumbprint identity whose certificate names someone else (CN ss-1, as the SDKs' e2e
    // suites register CN=localhost ones): IoT Hub matches thumbprint and validity only, so the
    // CLI registers it and the device connects with it.
    let (code, out, err) = azsim(&[
        "device",
        "create",
        "renamed-1",
        "--x509",
        "self-signed",
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--state",
        st,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let renamed_cs = created["connectionString"].as_str().unwrap().to_owned();
    assert!(renamed_cs.contains("DeviceId=renamed-1;"), "{renamed_cs}");
    let (code, out, err) = run(Some(&renamed_cs), &format!("{dir}/ss-1"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"acked\":2"), "{out}");
    // Over MQTT over WebSockets (the hub's HTTPS port): the same certificate, the same check.
    let https_port = info.https_port.to_string();
    let (code, out, err) = azsim(&[
        "run",
        "--json",
        "--count",
        "1",
        "--interval",
        "200ms",
        "--state",
        st,
        "--ca",
        &ca_file,
        "--connection-string",
        &ss_cs,
        "--websockets",
        "--port",
        &https_port,
        "--cert",
        &format!("{dir}/ss-1.pem"),
        "--cert-key",
        &format!("{dir}/ss-1.key.pem"),
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"acked\":1"), "{out}");
    // The certificate alone: the local hub, as the id in its CN.
    let (code, out, err) = run(None, &format!("{dir}/ca-1"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("ca-1"), "{out}");
    // Another certificate for ss-1's id: refused, exit 1.
    let (code, out, err) = azsim(&["cert", "device", "ss-1", "--out", &format!("{dir}/other")]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(Some(&ss_cs), &format!("{dir}/other/ss-1"));
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("did not accept the device certificate"),
        "{err}"
    );
    // An x509 string without a certificate: exit 2.
    let (code, _, err) = azsim(&["run", "--connection-string", &ss_cs, "--count", "1"]);
    assert_eq!((code, err.contains("--cert")), (Some(2), true), "{err}");
    // More bad input: exit 2 naming the field, or 1 for a CA that cannot be read.
    let sas_cs = "HostName=localhost;DeviceId=d;SharedAccessKey=c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC0xMjM=";
    let ss_pem = format!("{dir}/ss-1.pem");
    let ss_key = format!("{dir}/ss-1.key.pem");
    for (args, field, want) in [
        (vec!["cert", "ca", "a/b"], "NAME", 2),
        (vec!["cert", "device", "d", "--days", "0"], "--days", 2),
        (vec!["cert", "device", "a/b"], "DEVICE", 2),
        (
            vec!["cert", "device", "d", "--ca", "nope", "--out", dir],
            "nope.pem",
            1,
        ),
        (
            vec![
                "run",
                "--connection-string",
                sas_cs,
                "--cert",
                &ss_pem,
                "--cert-key",
                &ss_key,
            ],
            "--cert",
            2,
        ),
        (
            vec![
                "run",
                "--connection-string",
                &ss_cs,
                "--cert",
                "/nonexistent.pem",
                "--cert-key",
                &ss_key,
            ],
            "/nonexistent.pem",
            2,
        ),
        (
            vec![
                "run",
                "--connection-string",
                &ss_cs,
                "--cert",
                &ss_pem,
                "--cert-key",
                &ss_pem,
            ],
            "--cert",
            2,
        ),
    ] {
        let (code, _, err) = azsim(&args);
        assert_eq!(code, Some(want), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    Command::new("kill")
        .args(["-INT", &hub.id().to_string()])
        .status()
        .unwrap();
    assert!(hub.wait().unwrap().success());
    let log = log.join().unwrap();
    assert!(
        log.contains("matches neither registered thumbprint"),
        "{log}"
    );
}
