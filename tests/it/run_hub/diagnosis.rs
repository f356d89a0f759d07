//! Refusals named: a wrong key, unreachable hosts and untrusted certificates, expired or
//! misaddressed fixed tokens, a token for another host, and clock skew.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_exits_1_saying_the_key_is_wrong() {
    let hub = TestHub::start().await;
    hub.create_device("run-bad").await;
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cs = format!(
        "HostName=localhost:{};DeviceId=run-bad;SharedAccessKey={wrong}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    // With service credentials for the same hub, azsim checks the token against the registry.
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the hub refused the connection: not authorized"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong key"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    assert!(
        !all.contains(wrong) && !all.contains("sig="),
        "secret leaked: {all}"
    );

    // An unknown device is named as such.
    let cs = format!(
        "HostName=localhost:{};DeviceId=ghost;SharedAccessKey={wrong}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let (status, _, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not registered"), "{stderr}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hosts_and_untrusted_certificates_are_named() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-net").await;
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, _, stderr) = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--count", "1", "--port", &closed.to_string()],
    ))
    .finish()
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("localhost:{closed}")) && stderr.contains("connection refused"),
        "{stderr}"
    );

    // A host name that cannot resolve (.invalid never does, RFC 6761) is named.
    let cs_dns = "HostName=no-such-hub.invalid;DeviceId=d;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, _, stderr) = Running::spawn(azsim_run(&hub, cs_dns, &["--count", "1"]))
        .finish()
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot resolve host no-such-hub.invalid"),
        "{stderr}"
    );

    // Without the hub's CA the certificate is not trusted.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--count", "1", "--connection-string", &cs])
        .env_remove("AZSIM_CA_FILE")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (status, _, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("unknown certificate authority"), "{stderr}");
    hub.stop().await;
}

/// `azsim run` that must be refused: exit 1 with one line on stderr naming the refusal, and
/// neither `secrets` nor any `sig=` in anything it printed. Returns stderr.
async fn refused(mut cmd: tokio::process::Command, secrets: &[&str]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    cmd.current_dir(cwd.path());
    let (status, out, stderr) = Running::spawn(cmd).finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: the hub refused the connection: not authorized: "),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    for s in secrets {
        assert!(!all.contains(s), "secret leaked: {all}");
    }
    assert!(!all.contains("sig="), "signature leaked: {all}");
    stderr
}

/// The `sig` value of a token (a secret the output must not contain).
fn sig_of(token: &str) -> String {
    token
        .split(['&', ' '])
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_misaddressed_fixed_token_is_refused_and_named() {
    let hub = TestHub::start().await;
    hub.create_device("run-sas").await;
    let key = hub.device_key("run-sas").await;
    let host = format!("localhost:{}", hub.mqtt_port);

    // Expired a minute ago: `azsim token inspect` says so, with or without registry access.
    let expired = hub.device_token("run-sas", &key, unix_now() - 60);
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={expired}");
    let stderr = refused(
        azsim_run(&hub, &cs, &["--count", "1"]),
        &[&key, &sig_of(&expired)],
    )
    .await;
    assert!(
        stderr.contains("the connection string's SharedAccessSignature: expired: se "),
        "{stderr}"
    );
    assert!(stderr.contains("(expired 1m"), "{stderr}");
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key, &sig_of(&expired)]).await;
    assert!(stderr.contains("expired: se "), "{stderr}");
    assert!(
        stderr.contains("signed with the device's registered key, so the key is right"),
        "the key itself is fine: {stderr}"
    );

    // `azsim token` signs `sr=localhost:PORT/devices/..` for a local hub on another port; the
    // hub accepts that form, so only the expiry is named.
    let mut with_port = String::new();
    azsim_proto::sas::sign(
        &mut with_port,
        &format!("{host}/devices/run-sas"),
        &key,
        unix_now() - 60,
        None,
    )
    .unwrap();
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={with_port}");
    let stderr = refused(
        azsim_run(&hub, &cs, &["--count", "1"]),
        &[&key, &sig_of(&with_port)],
    )
    .await;
    assert!(stderr.contains("expired: se "), "{stderr}");
    assert!(!stderr.contains("sr is for host"), "{stderr}");

    // Signed with the right key, but for another device.
    hub.create_device("run-other").await;
    let other_key = hub.device_key("run-other").await;
    let other = hub.device_token("run-other", &other_key, unix_now() + 600);
    let cs = format!("HostName={host};DeviceId=run-sas;SharedAccessSignature={other}");
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key, &other_key, &sig_of(&other)]).await;
    assert!(
        stderr.contains("sr names device 'run-other', expected device 'run-sas'"),
        "{stderr}"
    );
    assert!(stderr.contains("wrong key"), "{stderr}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_host_name_is_named_as_the_wrong_resource() {
    let hub = TestHub::start().await;
    hub.create_device("run-host").await;
    let key = hub.device_key("run-host").await;
    // The right key, but the hub is `localhost`: the token's sr names 127.0.0.1.
    let cs = format!(
        "HostName=127.0.0.1:{};DeviceId=run-host;SharedAccessKey={key}",
        hub.mqtt_port
    );
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1", "--state"]);
    cmd.arg(&hub.dir);
    let stderr = refused(cmd, &[&key]).await;
    assert!(
        stderr.contains(
            "wrong resource: the token is signed for host 127.0.0.1, but the local hub in"
        ) && stderr.contains("is localhost (use HostName=localhost"),
        "{stderr}"
    );
    hub.stop().await;
}

/// libfaketime's preload library, when Debian's `libfaketime` is installed (scripts/test does).
fn libfaketime() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_two_hours_slow_is_named_as_clock_skew() {
    let Some(faketime) = libfaketime() else {
        crate::support::skip("libfaketime not installed (apt-get install libfaketime)");
        return;
    };
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-skew").await;
    let key = hub.device_key("run-skew").await;
    // azsim's clock runs two hours behind the hub's: its one-hour tokens are already expired
    // when the hub checks them.
    let mut cmd = azsim_run(&hub, &cs, &["--count", "1"]);
    cmd.env("LD_PRELOAD", &faketime)
        .env("FAKETIME", "-2h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("IOTHUB_CONNECTION_STRING", &hub.service_connection_string);
    let stderr = refused(cmd, &[&key]).await;
    let skew: u64 = stderr
        .split("clock skew: this machine's clock is ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock skew finding: {stderr}"));
    assert!((7190..=7210).contains(&skew), "{stderr}");
    assert!(
        stderr
            .contains(" s behind the hub's, so by the hub's clock the token was already expired "),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "azsim could not check the key: the hub refuses its service token for the same reason"
        ),
        "{stderr}"
    );
    hub.stop().await;
}
