//! The service CLI (`azsim device | invoke | twin | c2d | monitor`) through the real binary
//! against a real hub (TLS, port 0), with raw rumqttc devices on the other side.
//!
//! One module per command (`device`, `invoke`, `twin`, `c2d`, `monitor`), plus the connection
//! strings `device` prints (`connection_strings`), how the CLI reaches its hub (`hub_connection`)
//! and bad input (`bad_input`); the runner, the raw MQTT device and the helpers they share
//! (also used by `service_python_sdk`) are here.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azsim_proto::topic::{self, Identity, SubscriptionKind};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::TestHub;

mod bad_input;
mod c2d;
mod connection_strings;
mod device;
mod hub_connection;
mod invoke;
mod monitor;
mod twin;

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one json value ({e}): {self:?}"))
    }
}

/// `azsim ARGS` in an empty directory (no `.azsim/hub`), with the service env vars cleared.
pub fn azsim(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_azsim"));
    cmd.current_dir(cwd)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("AZSIM_CA_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub async fn output(mut cmd: Command) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("azsim did not finish within 90 s")
        .expect("run azsim");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `azsim ARGS --hub-connection-string CS --ca CA` against `hub`.
pub async fn run(hub: &TestHub, args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(args)
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file);
    output(cmd).await
}

/// Reads `azsim monitor`'s stderr until its "monitoring events of ..." line (the stream is live).
pub async fn wait_monitor_ready(
    stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
            .await
            .expect("monitor ready within 20 s")
            .unwrap();
        match line {
            Some(l) if l.starts_with("monitoring events of") => return,
            Some(l) => seen.push(l),
            None => panic!("monitor exited before it was ready: {seen:?}"),
        }
    }
}

/// The service policy key in the hub's connection string.
fn service_key(hub: &TestHub) -> String {
    hub.service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key in service connection string")
        .to_owned()
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !out.stdout.contains(s) && !out.stderr.contains(s),
            "a secret leaked into the output: {out:?}"
        );
    }
}

fn cs_field<'a>(cs: &'a str, name: &str) -> &'a str {
    cs.split(';')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{name} missing in connection string"))
}

/// A raw MQTT device (or module, for a module connection string) of the test hub: rumqttc over
/// TLS with a SAS token from azsim-proto.
pub struct RawDevice {
    pub id: String,
    pub module: Option<String>,
    pub client: AsyncClient,
    pub events: EventLoop,
}

impl RawDevice {
    pub async fn connect(hub: &TestHub, device_cs: &str) -> RawDevice {
        let id = cs_field(device_cs, "DeviceId").to_owned();
        let module = device_cs
            .split(';')
            .find_map(|p| p.strip_prefix("ModuleId="))
            .map(str::to_owned);
        let key = cs_field(device_cs, "SharedAccessKey");
        let host = "localhost";
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let resource = match &module {
            None => azsim_proto::sas::Resource::Device {
                host,
                device_id: &id,
            },
            Some(m) => azsim_proto::sas::Resource::Module {
                host,
                device_id: &id,
                module_id: m,
            },
        };
        let mut password = String::new();
        azsim_proto::sas::sign(&mut password, &resource, key, expiry, None).unwrap();
        let mut client_id = String::new();
        azsim_proto::username::write_client_id(&mut client_id, &id, module.as_deref()).unwrap();
        let tls = azsim::tls::client_config(Some(&hub.ca_file)).unwrap();
        let mut opts = MqttOptions::new(client_id.clone(), host, hub.mqtt_port);
        let mut username = String::new();
        azsim_proto::username::write_username(
            &mut username,
            host,
            &id,
            module.as_deref(),
            "test",
            None,
        )
        .unwrap();
        opts.set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(60))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut events) = AsyncClient::new(opts, 16);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .expect("connack within 10 s")
            {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{client_id}");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{client_id} cannot connect: {e}"),
            }
        }
        RawDevice {
            id,
            module,
            client,
            events,
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            device_id: &self.id,
            module_id: self.module.as_deref(),
        }
    }

    pub async fn subscribe(&mut self, kind: SubscriptionKind) {
        let mut filter = String::new();
        topic::write_filter(&mut filter, kind, self.identity()).unwrap();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Packet::SubAck(_) = self.next_packet().await {
                return;
            }
        }
    }

    /// The next incoming packet (drives the event loop), within 20 s.
    pub async fn next_packet(&mut self) -> Packet {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.events.poll())
                .await
                .expect("no packet within 20 s")
            {
                Ok(Event::Incoming(p)) => return p,
                Ok(Event::Outgoing(_)) => {}
                Err(e) => panic!("{}: connection failed: {e}", self.id),
            }
        }
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let Packet::Publish(p) = self.next_packet().await {
                return p;
            }
        }
    }

    pub async fn send_telemetry(&mut self, body: &str, app: &[(&str, &str)]) {
        let mut t = String::new();
        topic::write_telemetry_topic(
            &mut t,
            self.identity(),
            &azsim_proto::property_bag::SystemProperties {
                content_type: Some("application/json"),
                ..Default::default()
            },
            app.iter().copied(),
        )
        .unwrap();
        self.client
            .publish(t, QoS::AtLeastOnce, false, body.as_bytes().to_vec())
            .await
            .unwrap();
        loop {
            if let Packet::PubAck(_) = self.next_packet().await {
                return;
            }
        }
    }
}
