//! Event Hubs-compatible endpoint bench: events per second delivered to one official
//! `EventHubConsumerClient` (Python, `tests/python/eventhub_bench.py`) reading every partition
//! while N devices send QoS 1 telemetry over MQTT to an in-process hub.
//!
//! Not a test: it prints numbers.
//!
//! ```text
//! cargo bench -p azsim-emulator --bench eventhub -- [--devices N] [--messages M] [--window W]
//! ```
//! Defaults: 1000 devices, 20 messages each, 10 in flight per device; the hub keeps every
//! message (`event_log_cap` raised above the total). Python comes from `AZSIM_PYTHON`, default
//! `.venv/bin/python` at the workspace root.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azsim_emulator::clock::unix_now;
use azsim_proto::sas;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::io::AsyncBufReadExt as _;

struct Params {
    devices: usize,
    messages: u64,
    window: u16,
}

fn parse_params() -> Params {
    let mut p = Params {
        devices: 1000,
        messages: 20,
        window: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let num = || {
            args.get(i + 1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| {
                    eprintln!("eventhub bench: {} needs a number", args[i]);
                    std::process::exit(2)
                })
        };
        match args[i].as_str() {
            "--devices" => p.devices = num() as usize,
            "--messages" => p.messages = num(),
            "--window" => p.window = num() as u16,
            // cargo bench passes --bench
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    p
}

fn client_tls(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca_file).expect("read ca");
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn owner_key(info: &azsim_emulator::HubInfo) -> String {
    info.service_connection_string
        .split(';')
        .find_map(|f| f.strip_prefix("SharedAccessKey="))
        .expect("service key")
        .to_owned()
}

/// Registers `n` devices over REST; their ids and keys.
async fn register(
    info: &azsim_emulator::HubInfo,
    tls: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Vec<(String, String)> {
    let rest_host = format!("{}:{}", info.hostname, info.https_port);
    let mut token = String::new();
    sas::sign(
        &mut token,
        &sas::Resource::Hub { host: &rest_host },
        &owner_key(info),
        unix_now() + 86_400,
        Some("iothubowner"),
    )
    .expect("sign");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .build()
        .expect("http");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("eh-{i:05}");
        let key = azsim_emulator::state_dir::generate_key();
        let url = format!("https://{rest_host}/devices/{id}?api-version=2021-04-12");
        let body = serde_json::json!({
            "deviceId": id,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key,
                "secondaryKey": azsim_emulator::state_dir::generate_key()}},
        });
        let r = http
            .put(&url)
            .header("Authorization", &token)
            .json(&body)
            .send()
            .await
            .expect("create device");
        assert!(r.status().is_success(), "create {id}: {}", r.status());
        out.push((id, key));
    }
    out
}

/// One device: connect, publish `messages` QoS 1 messages with at most `window` in flight.
async fn device(
    info: azsim_emulator::HubInfo,
    tls: Arc<rustls::ClientConfig>,
    id: String,
    key: String,
    messages: u64,
    window: u16,
    acked: Arc<AtomicU64>,
) {
    let host = &info.hostname;
    let mut password = String::new();
    sas::sign(
        &mut password,
        &sas::Resource::Device {
            host,
            device_id: &id,
        },
        &key,
        unix_now() + 3600,
        None,
    )
    .expect("sign");
    let mut user = String::new();
    azsim_proto::username::write_username(&mut user, host, &id, None, "bench", None)
        .expect("username");
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", info.mqtt_port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(window);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut el) = AsyncClient::new(o, usize::from(window) * 2);
    let topic = format!("devices/{id}/messages/events/");
    let sender = tokio::spawn(async move {
        for n in 0..messages {
            let body = format!("{{\"n\":{n}}}").into_bytes();
            if client
                .publish(&topic, QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut got = 0;
    while got < messages {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                got += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("device {id}: {e}");
                return;
            }
        }
    }
    let _ = sender.await;
}

fn python() -> PathBuf {
    match std::env::var_os("AZSIM_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    }
}

#[tokio::main]
async fn main() {
    let p = parse_params();
    let total = p.devices as u64 * p.messages;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = azsim_emulator::HubConfig::new(tmp.path().join("hub"));
    cfg.in_memory = true;
    cfg.limits.event_log_cap = usize::try_from(total).unwrap_or(usize::MAX) + 1000;
    cfg.limits.max_pre_auth_connections = p.devices + 64;
    // Telemetry only: the count is of the devices' messages, not their connects.
    cfg.routes = azsim_emulator::routing::Routes {
        telemetry: true,
        ..azsim_emulator::routing::Routes::NONE
    };
    let hub = azsim_emulator::start(cfg, "127.0.0.1".parse().expect("ip"), 0, 0)
        .await
        .expect("hub starts");
    let info = hub.info.clone();
    let tls = client_tls(&info.ca_file);
    println!(
        "azsim eventhub bench: {} devices x {} QoS 1 messages ({} in flight), one EventHubConsumerClient on 4 partitions",
        p.devices, p.messages, p.window
    );
    let devices = register(&info, &tls, p.devices).await;

    let py = python();
    if !py.exists() {
        eprintln!("skipped: no python at {} (run scripts/test)", py.display());
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/eventhub_bench.py");
    let mut consumer = tokio::process::Command::new(py)
        .arg(script)
        .arg(info.eventhub_connection_string.clone().expect("eh cs"))
        .arg(&info.ca_file)
        .arg(info.amqp_port.expect("amqp port").to_string())
        .arg(total.to_string())
        .arg("4")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python consumer");
    let mut lines = tokio::io::BufReader::new(consumer.stdout.take().expect("stdout")).lines();
    loop {
        match lines.next_line().await.expect("consumer output") {
            Some(l) if l.contains("\"ready\"") => break,
            Some(_) => {}
            None => panic!("the consumer exited before it was ready"),
        }
    }

    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (id, key) in devices {
        tasks.push(tokio::spawn(device(
            info.clone(),
            tls.clone(),
            id,
            key,
            p.messages,
            p.window,
            acked.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sent_s = start.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    println!(
        "devices: {n} messages acknowledged in {sent_s:.2} s = {:.0} msg/s into the hub",
        n as f64 / sent_s
    );
    let done = loop {
        match lines.next_line().await.expect("consumer output") {
            Some(l) if l.contains("\"done\"") || l.contains("\"timeout\"") => break l,
            Some(_) => {}
            None => panic!("the consumer exited without a result"),
        }
    };
    let recv_s = start.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(&done).expect("json");
    let events = v["events"].as_u64().unwrap_or(0);
    println!(
        "consumer: {events} events, all in {recv_s:.2} s from the first send = {:.0} events/s \
         (first to last event {} s)",
        events as f64 / recv_s,
        v["first_to_last_s"]
    );
    let _ = consumer.wait().await;
    hub.stop().await.expect("hub stops");
}
