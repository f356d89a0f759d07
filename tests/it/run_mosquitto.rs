//! `azsim run` against Debian's `mosquitto` with a TLS listener: a broker no one here wrote
//! sees the client id, username and topics the spec gives, and the telemetry arrives.
//!
//! Needs `mosquitto` (PATH or /usr/sbin); `scripts/test` installs it. Without it the test prints
//! `skipped: mosquitto not installed` and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// A throwaway base64 key (32 zero bytes would also do; this one is recognisable in logs).
const KEY: &str = "c2Vzc2lvbi10ZXN0LWtleS1zZXNzaW9uLXRlc3Qta2V5MTI=";

fn mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker {
    child: tokio::process::Child,
    log: PathBuf,
    port: u16,
    ca: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    async fn start(bin: &Path) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Self::start_in(bin, dir.path(), free_port(), "mosquitto").await;
        b._dir = Some(dir);
        b
    }

    /// A broker on `port` with its certificates in `dir` (made once, reused on a restart) and
    /// its log in `dir/{name}.log`.
    async fn start_in(bin: &Path, dir: &Path, port: u16, name: &str) -> Broker {
        // Certificates from the same rcgen-based generator the local hub uses: a dev CA and a
        // server certificate for localhost.
        let prepared = azsim_emulator::state_dir::prepare(dir, "localhost").unwrap();
        let certs = prepared.ca_file.parent().unwrap().to_owned();
        let log = dir.join(format!("{name}.log"));
        let conf = dir.join(format!("{name}.conf"));
        // Started as root, mosquitto drops to user `mosquitto`, which cannot read the temp dir:
        // stay the current user.
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        std::fs::write(
            &conf,
            format!(
                "user {user}\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
                 log_dest file {log}\nlog_type all\nconnection_messages true\n\
                 listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
                log = log.display(),
                ca = prepared.ca_file.display(),
                cert = certs.join("server.pem").display(),
                key = certs.join("server.key").display(),
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Broker {
            child,
            log,
            port,
            ca: prepared.ca_file.clone(),
            _dir: None,
        }
    }

    fn log(&self) -> String {
        let stderr = std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
        std::fs::read_to_string(&self.log).unwrap_or_default() + &stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sees_the_spec_client_id_username_and_topics_and_gets_the_telemetry() {
    let Some(bin) = mosquitto() else {
        crate::support::skip("mosquitto not installed");
        return;
    };
    let mut broker = Broker::start(&bin).await;

    // A plain MQTT client listens to the device's telemetry topic.
    let tls = azsim::tls::client_config(Some(&broker.ca)).unwrap();
    let mut opts = MqttOptions::new("listener", "localhost", broker.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&tls),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe("devices/sim-mq/messages/events/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic, p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send((String::new(), Vec::new()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    // Wait for the SUBACK so no telemetry is published before the listener is subscribed.
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no SUBACK; broker log:\n{}", broker.log()))
        .unwrap();
    assert_eq!(first.0, "");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args(["run", "--json", "--count", "3", "--interval", "1s"])
        .args(["--property", "site=lab 1"])
        .arg("--connection-string")
        .arg(format!(
            "HostName=localhost;DeviceId=sim-mq;SharedAccessKey={KEY}"
        ))
        .arg("--ca")
        .arg(&broker.ca)
        .arg("--port")
        .arg(broker.port.to_string())
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("azsim run finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acked: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "telemetry_acked")
        .collect();
    assert_eq!(acked.len(), 3, "{stdout}");
    assert!(stdout.contains("\"event\":\"stopped\""));

    // The telemetry arrived at the broker's other client, with its property bag in the topic.
    let mut got = Vec::new();
    while got.len() < 3 {
        let (topic, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("telemetry at the listener")
            .unwrap();
        got.push((topic, body));
    }
    listener.abort();
    for (i, (topic, body)) in got.iter().enumerate() {
        assert!(
            topic.starts_with("devices/sim-mq/messages/events/%24.mid="),
            "{topic}"
        );
        assert!(
            topic.ends_with("&%24.ct=application%2Fjson&%24.ce=utf-8&site=lab%201"),
            "{topic}"
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
        assert!(v["temperature"].is_number() && v["humidity"].is_number());
    }

    let log = broker.log();
    let version = env!("CARGO_PKG_VERSION");
    let username =
        format!("u'localhost/sim-mq/?api-version=2021-04-12&DeviceClientType=azsim%2F{version}'");
    assert!(
        log.contains(&format!("as sim-mq (p2, c0, k60, {username})")),
        "client id, protocol 3.1.1, clean session 0, keep-alive 60 and username:\n{log}"
    );
    for filter in [
        "devices/sim-mq/messages/devicebound/# (QoS 1)",
        "$iothub/methods/POST/# (QoS 0)",
        "$iothub/twin/res/# (QoS 0)",
        "$iothub/twin/PATCH/properties/desired/# (QoS 0)",
    ] {
        assert!(log.contains(filter), "subscription {filter}:\n{log}");
    }
    assert!(
        log.contains("Received PUBLISH from sim-mq (d0, q0, r0, m0, '$iothub/twin/GET/?$rid=1'"),
        "twin GET:\n{log}"
    );
    let telemetry_lines = log
        .lines()
        .filter(|l| {
            l.contains("Received PUBLISH from sim-mq (d0, q1, r0, m")
                && l.contains(", 'devices/sim-mq/messages/events/%24.mid=")
        })
        .count();
    assert_eq!(telemetry_lines, 3, "telemetry at QoS 1:\n{log}");
    assert!(log.contains("Received DISCONNECT from sim-mq"), "{log}");
    // The key never shows, in the output or anywhere the broker saw.
    for text in [&stdout[..], &stderr[..], &log[..]] {
        assert!(!text.contains(KEY));
        assert!(!text.contains("sig="));
    }
    let _ = broker.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_telemetry_goes_out_again_with_dup_and_its_packet_id_after_the_broker_dies()
{
    let Some(bin) = mosquitto() else {
        crate::support::skip("mosquitto not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = Broker::start_in(&bin, dir.path(), port, "first").await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--interval", "1s", "--keep-alive", "30"])
        .args(["--model-id", "dtmi:com:example:Thermostat;1"])
        .arg("--connection-string")
        .arg(format!(
            "HostName=localhost;DeviceId=sim-dup;SharedAccessKey={KEY}"
        ))
        .arg("--ca")
        .arg(&first.ca)
        .args(["--port", &port.to_string()])
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dev = crate::run_hub::Running::spawn(cmd);
    let before = dev
        .wait_for("telemetry #2 acknowledged", |v| {
            v["event"] == "telemetry_acked" && v["seq"] == 2
        })
        .await;
    let before = before["message_id"].as_str().unwrap().to_owned();

    // The broker freezes: the next message is sent and never acknowledged. Then it dies.
    let pid = first.child.id().unwrap().to_string();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    assert!(stop.unwrap().success());
    let lost = dev.event("telemetry_sent").await;
    assert_eq!(lost["seq"], 3, "the message after #2: {lost}");
    let mid = lost["message_id"].as_str().unwrap().to_owned();
    first.child.kill().await.unwrap();
    dev.event("disconnected").await;
    let first_log = first.log();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        first_log.contains(&format!(
            "as sim-dup (p2, c0, k30, u'localhost/sim-dup/?api-version=2021-04-12&DeviceClientType=azsim%2F{version}&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1')"
        )),
        "--keep-alive and --model-id in CONNECT:\n{first_log}"
    );
    assert!(
        !first_log.contains(&mid),
        "the frozen broker never read it:\n{first_log}"
    );
    // The packet id #2 went out with; the lost message had the next one.
    let line = first_log
        .lines()
        .find(|l| l.contains("Received PUBLISH from sim-dup (d0, q1, r0, m") && l.contains(&before))
        .unwrap_or_else(|| panic!("#2 at the broker:\n{first_log}"));
    let pkid: u16 = line
        .split(", m")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let pkid = pkid + 1;

    let second = Broker::start_in(&bin, dir.path(), port, "second").await;
    dev.wait_for("the lost message acknowledged", |v| {
        v["event"] == "telemetry_acked" && v["message_id"] == mid.as_str()
    })
    .await;
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "{stderr}");
    let again: Vec<&Value> = out
        .iter()
        .filter(|v| v["event"] == "telemetry_sent" && v["message_id"] == mid.as_str())
        .collect();
    assert_eq!(again.len(), 2, "sent, then sent again: {again:?}");
    assert_eq!(again[1]["redelivery"], true);

    let log = second.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Received PUBLISH from sim-dup") && l.contains(&mid))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one redelivery:\n{log}");
    assert!(
        lines[0].contains(&format!(
            "(d1, q1, r0, m{pkid}, 'devices/sim-dup/messages/events/%24.mid={mid}&"
        )),
        "DUP=1, the original packet id m{pkid} and the same topic:\n{log}"
    );
    assert!(
        log.contains(&format!("Sending PUBACK to sim-dup (m{pkid}, ")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_c2d_message_reaches_azsim_run_and_its_200_kb_telemetry_leaves_it() {
    let Some(bin) = mosquitto() else {
        crate::support::skip("mosquitto not installed");
        return;
    };
    let mut broker = Broker::start(&bin).await;
    const BIG: usize = 200 * 1024;

    // A plain MQTT client with room for the large packets both ways.
    let tls = azsim::tls::client_config(Some(&broker.ca)).unwrap();
    let mut opts = MqttOptions::new("big-peer", "localhost", broker.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&tls),
    )));
    opts.set_max_packet_size(BIG + 4096, BIG + 4096);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe("devices/sim-big/messages/events/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let peer = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.len());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(0);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let suback = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no SUBACK; broker log:\n{}", broker.log()));
    assert_eq!(suback, Some(0));

    // The device's first message is a 200 KB body.
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("big.json");
    std::fs::write(
        &payload,
        format!("{{\"pad\":\"{}\"}}", "p".repeat(BIG - 10)),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.args(["run", "--json", "--interval", "1h", "--payload"])
        .arg(format!("@{}", payload.display()))
        .arg("--connection-string")
        .arg(format!(
            "HostName=localhost;DeviceId=sim-big;SharedAccessKey={KEY}"
        ))
        .arg("--ca")
        .arg(&broker.ca)
        .arg("--port")
        .arg(broker.port.to_string())
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dev = crate::run_hub::Running::spawn(cmd);
    dev.event("telemetry_acked").await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the telemetry at the peer");
    assert_eq!(got, Some(BIG));

    // Once the device has subscribed to its C2D topic, a 200 KB message for it.
    let subscribed = "devices/sim-big/messages/devicebound/# (QoS 1)";
    for _ in 0..100 {
        if broker.log().contains(subscribed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(broker.log().contains(subscribed), "{}", broker.log());
    client
        .publish(
            "devices/sim-big/messages/devicebound/%24.mid=big-1",
            QoS::AtLeastOnce,
            false,
            "c".repeat(BIG),
        )
        .await
        .unwrap();
    let c2d = dev.event("c2d").await;
    assert_eq!(c2d["body"].as_str().map(str::len), Some(BIG));
    let (status, out, stderr) = dev.interrupt().await;
    peer.abort();
    assert!(status.success(), "{stderr}");
    let stopped = out.iter().find(|v| v["event"] == "stopped").unwrap();
    assert_eq!(stopped["c2d"], 1);
    assert_eq!(stopped["reconnects"], 0, "{out:?}");
    let _ = broker.child.kill().await;
}
