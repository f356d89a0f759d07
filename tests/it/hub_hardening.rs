//! The hub against an unlucky user and a hostile client (issue 11): its state directory is
//! private to its user, and what an unauthenticated client sends cannot forge or flood the hub's
//! log. Run through the real `azsim hub` binary and real TLS sockets (Unix: file modes, SIGINT).
#![cfg(unix)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use azsim_emulator::HubInfo;
use reqwest::Method;
use rumqttc::{AsyncClient, ConnectReturnCode, MqttOptions, QoS, TlsConfiguration, Transport};

use crate::support::{TestHub, next_incoming, wait_connack};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A running `azsim hub` and the thread collecting its log (stderr), read as it is written so
/// a long line can never stall the hub on a full pipe.
struct Running {
    child: Child,
    log: std::thread::JoinHandle<String>,
}

/// `azsim hub` on free ports with its state in `state`; returns once it listens.
fn start_hub(state: &Path) -> (Running, HubInfo) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["hub", "--mqtt-port", "0", "--https-port", "0", "--json"])
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "the hub printed nothing");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    (Running { child, log }, HubInfo::load(state).unwrap())
}

/// SIGINT, wait, and the hub's log (stderr).
fn stop_hub(mut hub: Running) -> String {
    Command::new("kill")
        .args(["-INT", &hub.child.id().to_string()])
        .status()
        .unwrap();
    let status = hub.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    hub.log.join().unwrap()
}

const KEY_FILES: [&str; 7] = [
    "ca.key",
    "server.key",
    "iothubowner.key",
    "hub.json",
    "hub.db",
    "hub.db-wal",
    "hub.db-shm",
];

#[tokio::test]
async fn the_state_dir_and_every_file_holding_a_key_are_private_to_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let hub = TestHub::start_in(&dir).await;
    // A device key in the database and telemetry in its write-ahead log.
    hub.create_device("p1").await;
    let key = hub.device_key("p1").await;
    let (c, mut el) = hub.connect("p1", &key, true).await;
    c.publish(
        "devices/p1/messages/events/",
        QoS::AtLeastOnce,
        false,
        b"x".to_vec(),
    )
    .await
    .unwrap();
    next_incoming(&mut el, |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;
    let (s, _) = hub.rest(Method::GET, "/emulator/events/recent", None).await;
    assert_eq!(s, 200);
    assert_eq!(mode(&dir), 0o700);
    for f in KEY_FILES {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f} while the hub runs");
    }
    drop(c);
    hub.stop().await;
    assert_eq!(mode(&dir), 0o700);
    // SQLite removes -wal and -shm when its last connection closes, which a helper thread of the
    // stopped hub may still be doing: a file is private, or gone.
    for f in KEY_FILES {
        if let Ok(m) = std::fs::metadata(dir.join(f)) {
            assert_eq!(
                m.permissions().mode() & 0o777,
                0o600,
                "{f} after the hub stopped"
            );
        }
    }
}

#[test]
fn an_older_world_readable_state_dir_is_made_private_and_the_log_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    const SAID: &str = "state directory was readable by other users";
    let (hub, _) = start_hub(&state);
    let log = stop_hub(hub);
    assert!(
        !log.contains(SAID),
        "a new state dir is private from the start: {log}"
    );
    // What older builds left behind: 0755 and 0644.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in KEY_FILES {
        let p = state.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let (hub, _) = start_hub(&state);
    assert_eq!(mode(&state), 0o700);
    for f in KEY_FILES {
        let p = state.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    let log = stop_hub(hub);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(SAID)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("hub.json") && lines[0].contains("iothubowner.key"),
        "{}",
        lines[0]
    );
    let (hub, _) = start_hub(&state);
    let log = stop_hub(hub);
    assert!(
        !log.contains(SAID),
        "nothing to fix on the next start: {log}"
    );
}

/// CONNECT as `client_id` / `username` to the hub in `info` (with a token no key signed); the
/// CONNACK code.
async fn connect_as(info: &HubInfo, client_id: &str, username: &str) -> ConnectReturnCode {
    let mut o = MqttOptions::new(client_id, info.hostname.clone(), info.mqtt_port);
    o.set_credentials(username, "SharedAccessSignature sr=x&sig=eA%3D%3D&se=1");
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let tls = azsim::tls::client_config(Some(&info.ca_file)).unwrap();
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (_c, mut el) = AsyncClient::new(o, 4);
    match wait_connack(&mut el).await {
        Ok(code) => code,
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("no CONNACK: {e}"),
    }
}

#[tokio::test]
async fn a_client_id_with_a_newline_or_60_kib_is_logged_escaped_and_clipped() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (hub, info) = start_hub(&state);
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO azsim_emulator: forged admin login";
    let username = format!("localhost/{forged}/?api-version=2021-04-12");
    assert_eq!(
        connect_as(&info, forged, &username).await,
        ConnectReturnCode::NotAuthorized
    );
    // A 60 KiB client id: near the most an unauthenticated client may send (the 64 KiB
    // pre-auth cap, HubLimits::pre_auth_max_bytes; a CONNECT over it is closed unread, see
    // hub_deadlines.rs), and far more than a log line should hold.
    let huge = format!("big{}", "A".repeat(60 * 1024 - 3));
    assert_eq!(
        connect_as(&info, &huge, "localhost/big/?api-version=2021-04-12").await,
        ConnectReturnCode::NotAuthorized
    );
    // Each refusal is logged before its CONNACK is written, so both are in the log now.
    let log = stop_hub(hub);
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("CONNACK 5")).collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("forged admin login") && !l.contains("CONNACK 5")),
        "a forged line: {log}"
    );
    assert!(refusals[0].contains(r"x\n2026-01-01"), "{}", refusals[0]);
    assert!(
        refusals[1].contains("more bytes]"),
        "clipped: {}",
        refusals[1]
    );
    for l in log.lines() {
        assert!(l.len() < 2048, "a {} byte log line", l.len());
    }
}

/// `azsim hub` with a bad `--durability`, `--connect-deadline` or `--max-pre-auth`: exit 2 and
/// one line naming the flag, in the foreground and for `azsim hub start`.
#[test]
fn bad_durability_deadline_or_pre_auth_cap_is_one_line_naming_the_flag_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for (flag, value) in [
        ("--durability", "fsync"),
        ("--connect-deadline", "0"),
        ("--connect-deadline", "ten"),
        ("--connect-deadline", "3601"),
        ("--max-pre-auth", "0"),
        ("--max-pre-auth", "many"),
    ] {
        for start in [false, true] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_azsim"));
            cmd.arg("hub");
            if start {
                cmd.arg("start");
            }
            let out = cmd
                .args(["--mqtt-port", "0", "--https-port", "0", "--state"])
                .arg(&state)
                .arg(format!("{flag}={value}"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{flag} {value}: {err}");
            assert!(err.contains(flag), "{flag} {value}: {err}");
            assert!(out.stdout.is_empty(), "{flag} {value}");
        }
    }
    assert!(!state.join("hub.json").exists(), "a hub started anyway");
}

/// `azsim hub start --durability process-crash --connect-deadline 3 --max-pre-auth 2`: the
/// detached hub gets all three (its command line), closes a silent connection at 3 s (not the
/// default 10), and closes at once a third unauthenticated connection while two are open.
#[cfg(target_os = "linux")]
#[test]
fn hub_start_passes_durability_connect_deadline_and_pre_auth_cap_to_the_detached_hub() {
    use std::io::Read as _;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let azsim = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_azsim"))
            .arg("hub")
            .args(args)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    struct Stop<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let out = azsim(&[
        "start",
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
        "--durability",
        "process-crash",
        "--connect-deadline",
        "3",
        "--max-pre-auth",
        "2",
    ]);
    let _stop = Stop(|| {
        let _ = azsim(&["stop"]);
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ready: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = ready["pid"].as_u64().unwrap();
    let port = u16::try_from(ready["mqtt_port"].as_u64().unwrap()).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (flag, value) in [
        ("--durability", "process-crash"),
        ("--connect-deadline", "3"),
        ("--max-pre-auth", "2"),
    ] {
        assert!(
            args.windows(2).any(|w| w[0] == flag && w[1] == value),
            "{flag} {value} not passed: {args:?}"
        );
    }
    // Reads until the hub closes the socket; when it did.
    let until_closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Instant::now(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("still open after 20 s")
                }
                Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    };
    // The hub accepts in arrival order and admits two unauthenticated connections at once: the
    // third waits in the listen backlog until a place frees (the first two reach their 3 s
    // deadline), then has its own 3 s.
    let opened = Instant::now();
    let mut held = [
        TcpStream::connect(("127.0.0.1", port)).unwrap(),
        TcpStream::connect(("127.0.0.1", port)).unwrap(),
    ];
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let took = until_closed(&mut held[0]) - opened;
    assert!(
        took >= Duration::from_millis(2_950) && took < Duration::from_secs(7),
        "a silent connection closed after {took:?} with --connect-deadline 3"
    );
    let took = until_closed(&mut third) - opened;
    assert!(
        took >= Duration::from_millis(5_900) && took < Duration::from_secs(15),
        "the connection over --max-pre-auth 2 closed after {took:?}: it waits for a place (3 s), then its own deadline (3 s)"
    );
}
