//! A PUBACK means stored (issue 11 item 1): a device publishes QoS 1 telemetry as fast as the
//! hub acknowledges it, the real `azsim hub` process is killed with SIGKILL mid-stream, started
//! again on the same state directory, and every `$.mid` the device saw acknowledged must be in
//! the hub's telemetry log. Several kills in one run.
#![cfg(unix)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Value, json};

/// One `azsim hub` process (its log goes to a file in the state's parent directory).
struct HubProcess {
    child: Child,
    mqtt_port: u16,
    https_port: u16,
    ca_file: PathBuf,
    owner_key: String,
}

impl HubProcess {
    /// `azsim hub --json` on free ports with its state in `state`; returns once it listens.
    fn start(state: &Path, log: &Path) -> HubProcess {
        let log = std::fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_azsim"))
            .args(["hub", "--mqtt-port", "0", "--https-port", "0", "--json"])
            .arg("--state")
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        let owner_key = ready["service_connection_string"]
            .as_str()
            .unwrap()
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .unwrap()
            .to_string();
        HubProcess {
            child,
            mqtt_port: u16::try_from(ready["mqtt_port"].as_u64().unwrap()).unwrap(),
            https_port: u16::try_from(ready["https_port"].as_u64().unwrap()).unwrap(),
            ca_file: PathBuf::from(ready["ca_file"].as_str().unwrap()),
            owner_key,
        }
    }

    /// SIGKILL: no shutdown, no flush, no checkpoint.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        azsim::tls::client_config(Some(&self.ca_file)).unwrap()
    }

    async fn rest(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            &format!("localhost:{}", self.https_port),
            &self.owner_key,
            unix_now() + 600,
            Some("iothubowner"),
        )
        .unwrap();
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "https://localhost:{}{path}{sep}api-version=2021-04-12",
            self.https_port
        );
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls()).clone())
            .build()
            .unwrap();
        let mut req = http.request(method, url).header("Authorization", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The `$.mid` of every telemetry message of `device` in the hub's log.
    async fn stored_mids(&self, device: &str) -> Vec<String> {
        let v = self
            .rest(
                reqwest::Method::GET,
                &format!("/emulator/events/recent?deviceId={device}&limit=10000"),
                None,
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["systemProperties"]["message-id"].as_str())
            .map(str::to_string)
            .collect()
    }
}

/// Publishes QoS 1 telemetry with `$.mid` = `{run}-{n}` as fast as the hub takes it (up to 100
/// in flight) until the connection fails, returning the mids PUBACKed. `kill_after` acks in,
/// `kill` runs once (it kills the hub).
async fn publish_until_killed(
    hub: &HubProcess,
    device: &str,
    key: &str,
    run: usize,
    kill_after: usize,
    kill: impl FnOnce(),
) -> Vec<String> {
    let mut token = String::new();
    azsim_proto::sas::sign(
        &mut token,
        &format!("localhost/devices/{device}"),
        key,
        unix_now() + 3600,
        None,
    )
    .unwrap();
    let mut o = MqttOptions::new(device, "localhost", hub.mqtt_port);
    o.set_credentials(format!("localhost/{device}/?api-version=2021-04-12"), token);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        hub.tls(),
    )));
    let (client, mut el) = AsyncClient::new(o, 200);
    // rumqttc hands out packet ids in request order: the mids queued here, in the same order,
    // are matched to the pkids of its Outgoing::Publish events. This connection is never
    // resumed (a new client per hub process), so nothing is retransmitted to break the order.
    let queued: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let producer = {
        let queued = queued.clone();
        let device = device.to_string();
        tokio::spawn(async move {
            for n in 0.. {
                let mid = format!("{run}-{n}");
                let mut topic = String::new();
                azsim_proto::topic::write_telemetry_topic(
                    &mut topic,
                    azsim_proto::topic::Identity::device(&device),
                    &azsim_proto::property_bag::SystemProperties {
                        message_id: Some(&mid),
                        ..Default::default()
                    },
                    [],
                )
                .unwrap();
                queued.lock().unwrap().push_back(mid);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, b"{\"t\":1}".to_vec())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let mut in_flight: HashMap<u16, String> = HashMap::new();
    let mut acked = Vec::new();
    let mut kill = Some(kill);
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mid = queued.lock().unwrap().pop_front().expect("a queued mid");
                    in_flight.insert(pkid, mid);
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    acked.push(in_flight.remove(&a.pkid).expect("PUBACK of a sent PUBLISH"));
                    if acked.len() >= kill_after
                        && let Some(k) = kill.take()
                    {
                        k();
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    producer.abort();
    assert!(ended.is_ok(), "the connection outlived the hub by 60 s");
    assert!(kill.is_none(), "the hub failed before {kill_after} PUBACKs");
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_the_hub_pubacked_survives_kill_9_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut hub = HubProcess::start(&state, &tmp.path().join("hub-0.log"));
    let created = hub
        .rest(
            reqwest::Method::PUT,
            "/devices/durable",
            Some(json!({"deviceId": "durable"})),
        )
        .await;
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut acked_all: Vec<String> = Vec::new();
    let kills = 4;
    for run in 0..kills {
        let pid = hub.child.id();
        let acked = publish_until_killed(&hub, "durable", &key, run, 300 + 150 * run, || {
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        })
        .await;
        hub.kill9();
        acked_all.extend(acked);
        hub = HubProcess::start(&state, &tmp.path().join(format!("hub-{}.log", run + 1)));
    }
    let stored = hub.stored_mids("durable").await;
    let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let lost: Vec<&String> = acked_all
        .iter()
        .filter(|m| !stored_set.contains(m.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} PUBACKed messages lost across {kills} kills (e.g. {:?}); {} stored",
        lost.len(),
        acked_all.len(),
        &lost[..lost.len().min(10)],
        stored.len()
    );
    assert!(acked_all.len() >= 300 * kills, "{} acked", acked_all.len());
    hub.kill9();
}

/// Rewrites the telemetry log of the (stopped) hub's `hub.db` into the single `events` table
/// of the builds before the segmented log, numbers and AUTOINCREMENT sequence included.
fn make_log_single_table(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let cols = "seq, device_id, json, module_id, generation_id, enqueued_ns, props, body, source";
    let mut drop_segments = String::new();
    for i in 0..8 {
        drop_segments.push_str(&format!("DROP TABLE events_{i};"));
    }
    c.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE old_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
           json TEXT NOT NULL, module_id TEXT, generation_id TEXT, enqueued_ns INTEGER,
           props TEXT, body BLOB, source TEXT);
         INSERT INTO old_events ({cols}) SELECT {cols} FROM events ORDER BY seq;
         DROP VIEW events; {drop_segments} DROP TABLE event_log_meta;
         ALTER TABLE old_events RENAME TO events;
         COMMIT;"
    ))
    .unwrap();
}

/// `(seq, $.mid)` of every device telemetry message in the log of the (stopped) hub's `hub.db`.
fn logged(db: &Path) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT seq, props FROM events WHERE source IS NULL ORDER BY seq")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (seq, props) = r.unwrap();
            let mid = props
                .split('&')
                .find_map(|p| p.strip_prefix("%24.mid="))
                .unwrap_or_default()
                .to_string();
            (seq, mid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_before_the_segments_is_moved_over_once_keeping_its_messages_and_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let db = state.join("hub.db");
    let hub = HubProcess::start(&state, &tmp.path().join("hub-0.log"));
    let created = hub
        .rest(
            reqwest::Method::PUT,
            "/devices/old",
            Some(json!({"deviceId": "old"})),
        )
        .await;
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = hub.child.id();
    let kill = move || {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    };
    let first = publish_until_killed(&hub, "old", &key, 0, 200, kill).await;
    hub.kill9();
    make_log_single_table(&db);
    let before = logged(&db);
    assert!(
        before.len() >= first.len(),
        "{} of {}",
        before.len(),
        first.len()
    );

    // The upgrade: the rows move into the segments once, with their numbers.
    let log1 = tmp.path().join("hub-1.log");
    let hub = HubProcess::start(&state, &log1);
    let stored = hub.stored_mids("old").await;
    for mid in &first {
        assert!(stored.contains(mid), "{mid} lost in the move");
    }
    let pid = hub.child.id();
    let kill = move || {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    };
    let second = publish_until_killed(&hub, "old", &key, 1, 100, kill).await;
    hub.kill9();
    let after = logged(&db);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the old messages keep their numbers (Event Hubs offsets)"
    );
    let last_old = before.last().unwrap().0;
    let new: Vec<&(i64, String)> = after[before.len()..].iter().collect();
    assert!(new.len() >= second.len());
    assert!(
        new.iter()
            .all(|(seq, mid)| *seq > last_old && mid.starts_with("1-")),
        "after {last_old}: {:?}",
        &new[..new.len().min(5)]
    );
    let moved = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .matches("moved the single events table")
            .count()
    };
    assert_eq!(moved(&log1), 1, "said once in the log");

    // Opened again: nothing to move.
    let log2 = tmp.path().join("hub-2.log");
    let hub = HubProcess::start(&state, &log2);
    assert!(hub.stored_mids("old").await.len() >= first.len() + second.len());
    hub.kill9();
    assert_eq!(moved(&log2), 0);
}
