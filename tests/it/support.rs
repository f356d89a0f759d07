//! Shared test support: a real local hub on `127.0.0.1:0` (TLS MQTT + HTTPS) in a tempdir, a
//! service REST client signed with the hub's `iothubowner` key, and rumqttc device clients.
#![allow(dead_code)]

pub mod json_child;
pub mod node;
pub mod script;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azsim_emulator::clock::{ManualClock, unix_now};
use azsim_emulator::{HubConfig, HubHandle, HubInfo};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};

/// A hub running in this test process.
#[derive(Debug)]
pub struct TestHub {
    pub mqtt_port: u16,
    pub https_port: u16,
    pub ca_file: PathBuf,
    pub hostname: String,
    pub service_connection_string: String,
    pub dir: PathBuf,
    pub info: HubInfo,
    owner_key: String,
    handle: Option<HubHandle>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestHub {
    /// In-memory registry in a fresh tempdir, ports picked by the OS.
    pub async fn start() -> TestHub {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = HubConfig::new(tmp.path().join("hub"));
        cfg.in_memory = true;
        let mut hub = Self::start_with(cfg).await;
        hub._tmp = Some(tmp);
        hub
    }

    /// In-memory hub whose time moves only when the test moves the returned clock (see
    /// `azsim_emulator::clock`). The clock starts at the system time, so certificates and
    /// tokens signed against `unix_now()` are valid as usual.
    pub async fn start_manual() -> (TestHub, ManualClock) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = HubConfig::new(tmp.path().join("hub"));
        cfg.in_memory = true;
        let clock = ManualClock::at_system_now();
        cfg.clock = clock.clock();
        let mut hub = Self::start_with(cfg).await;
        hub._tmp = Some(tmp);
        (hub, clock)
    }

    /// In-memory hub in a fresh tempdir with `f` applied to its configuration (limits,
    /// deadlines).
    pub async fn start_configured(f: impl FnOnce(&mut HubConfig)) -> TestHub {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = HubConfig::new(tmp.path().join("hub"));
        cfg.in_memory = true;
        f(&mut cfg);
        let mut hub = Self::start_with(cfg).await;
        hub._tmp = Some(tmp);
        hub
    }

    /// Persistent state in `dir` (start again with the same dir to test restarts).
    pub async fn start_in(dir: &Path) -> TestHub {
        Self::start_with(HubConfig::new(dir)).await
    }

    /// Any configuration (limits, hostname).
    pub async fn start_with(cfg: HubConfig) -> TestHub {
        let dir = cfg.state_dir.clone();
        let handle = azsim_emulator::start(cfg, "127.0.0.1".parse().expect("ip"), 0, 0)
            .await
            .expect("hub starts");
        let info = handle.info.clone();
        let owner_key = info
            .service_connection_string
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .expect("service key")
            .to_string();
        TestHub {
            mqtt_port: info.mqtt_port,
            https_port: info.https_port,
            ca_file: info.ca_file.clone(),
            hostname: info.hostname.clone(),
            service_connection_string: info.service_connection_string.clone(),
            dir,
            info,
            owner_key,
            handle: Some(handle),
            _tmp: None,
        }
    }

    /// A hub running elsewhere (an `azsim hub` process), reached through its `hub.json`: the
    /// REST and device helpers work; [`TestHub::stop`] does nothing.
    pub fn attach(info: &HubInfo) -> TestHub {
        let owner_key = info
            .service_connection_string
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .expect("service key")
            .to_string();
        TestHub {
            mqtt_port: info.mqtt_port,
            https_port: info.https_port,
            ca_file: info.ca_file.clone(),
            hostname: info.hostname.clone(),
            service_connection_string: info.service_connection_string.clone(),
            dir: info
                .ca_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            info: info.clone(),
            owner_key,
            handle: None,
            _tmp: None,
        }
    }

    /// Stop the hub and wait until its state is saved.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop().await.expect("hub stops cleanly");
        }
    }

    /// Stop, keeping the tempdir alive (for restart tests with `start()`'s dir).
    pub async fn stop_keep_dir(mut self) -> Option<tempfile::TempDir> {
        if let Some(h) = self.handle.take() {
            h.stop().await.expect("hub stops cleanly");
        }
        self._tmp.take()
    }

    /// `SharedAccessSignature sr={host}:{port}&sig=..&se=..&skn=iothubowner`.
    pub fn service_token(&self) -> String {
        let mut t = String::new();
        azsim_proto::sas::sign(
            &mut t,
            &format!("{}:{}", self.hostname, self.https_port),
            &self.owner_key,
            unix_now() + 600,
            Some("iothubowner"),
        )
        .expect("sign");
        t
    }

    pub fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!(
            "https://{}:{}{path}{sep}api-version=2021-04-12",
            self.hostname, self.https_port
        )
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        azsim::tls::client_config(Some(&self.ca_file)).expect("tls config")
    }

    /// A reqwest client trusting the hub CA (no auth header; see [`TestHub::rest`]).
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls()).clone())
            .build()
            .expect("reqwest client")
    }

    /// `method path` with the service token and an optional JSON body; returns status and JSON.
    pub async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http()
            .request(method, self.url(path))
            .header("Authorization", self.service_token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The telemetry the hub keeps for `device` (`/emulator/events/recent`, its default limit),
    /// oldest first: the events of type `telemetry` only.
    pub async fn telemetry(&self, device: &str) -> Vec<serde_json::Value> {
        let (status, events) = self
            .rest(
                reqwest::Method::GET,
                &format!("/emulator/events/recent?deviceId={device}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{events}");
        events
            .as_array()
            .expect("an array")
            .iter()
            .filter(|e| e["type"] == "telemetry")
            .cloned()
            .collect()
    }

    /// Register a device; returns its connection string.
    pub async fn create_device(&self, id: &str) -> String {
        let (s, v) = self
            .rest(
                reqwest::Method::PUT,
                &format!("/devices/{id}"),
                Some(serde_json::json!({"deviceId": id})),
            )
            .await;
        assert_eq!(s, 200, "create {id}: {v}");
        let key = v["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("key");
        self.info
            .device_connection_string(id, key)
            .expect("connection string")
    }

    /// The primary key of a registered device.
    pub async fn device_key(&self, id: &str) -> String {
        let (_, v) = self
            .rest(reqwest::Method::GET, &format!("/devices/{id}"), None)
            .await;
        v["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("key")
            .to_string()
    }

    /// A device SAS token valid until `se`.
    pub fn device_token(&self, device: &str, key: &str, se: u64) -> String {
        let mut t = String::new();
        azsim_proto::sas::sign(
            &mut t,
            &format!("{}/devices/{device}", self.hostname),
            key,
            se,
            None,
        )
        .expect("sign");
        t
    }

    /// The username an SDK sends for `device`.
    pub fn username(&self, device: &str) -> String {
        format!(
            "{}/{device}/?api-version=2021-04-12&DeviceClientType=azsim-tests",
            self.hostname
        )
    }

    /// rumqttc options for `device` with a token valid for an hour.
    pub fn device_options(&self, device: &str, key: &str, clean: bool) -> MqttOptions {
        let token = self.device_token(device, key, unix_now() + 3600);
        self.options_with(device, &self.username(device), &token, clean)
    }

    /// rumqttc options with any client id, username and password.
    pub fn options_with(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        clean: bool,
    ) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.hostname.clone(), self.mqtt_port);
        o.set_credentials(username, password);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(512 * 1024, 512 * 1024);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            self.tls(),
        )));
        o
    }

    /// Connect `device` and wait for CONNACK.
    pub async fn connect(&self, device: &str, key: &str, clean: bool) -> (AsyncClient, EventLoop) {
        let (c, mut el) = AsyncClient::new(self.device_options(device, key, clean), 64);
        wait_connack(&mut el).await.expect("connack");
        (c, el)
    }
}

/// Poll until CONNACK; the code, or the connection error.
pub async fn wait_connack(
    el: &mut EventLoop,
) -> Result<rumqttc::ConnectReturnCode, rumqttc::ConnectionError> {
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) =
            tokio::time::timeout(Duration::from_secs(10), el.poll())
                .await
                .expect("no CONNACK in 10 s")?
        {
            return Ok(a.code);
        }
    }
}

/// Poll until an incoming packet matches `f`; panics after 10 s.
pub async fn next_incoming<T>(
    el: &mut EventLoop,
    mut f: impl FnMut(&rumqttc::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
    .expect("expected packet within 10 s")
}

/// Poll until the connection fails (the hub closed it); panics if it stays up for 10 s.
pub async fn wait_closed(el: &mut EventLoop) -> rumqttc::ConnectionError {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = el.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("hub should have closed the connection")
}

/// A test whose external tool (mosquitto, the Python SDK venv) is missing: prints
/// `skipped: {why}` and returns, so `cargo test` on a bare laptop stays green. Under
/// `AZSIM_REQUIRE_TOOLS=1` (what `scripts/test` sets in CI, after installing them) a missing tool
/// is a failure instead, so CI can never pass by skipping.
pub fn skip(why: &str) {
    if std::env::var_os("AZSIM_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("AZSIM_REQUIRE_TOOLS=1 but {why}");
    }
    println!("skipped: {why}");
}

/// Held by every test that binds the fixed port 127.0.0.1:8883 (the Python device SDK test,
/// `azsim run`'s embedded hub), so those tests take turns inside this test binary. A process
/// outside it (a developer's `azsim hub`) can still hold the port: such tests also retry a busy
/// port for a while.
pub static PORT_8883: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A hub (in memory, then `f` adjusts its configuration) on 127.0.0.1 with fixed ports, for the
/// official SDKs that dial only Azure's (MQTT 8883, HTTPS 443, AMQPS 5671; 0 = a free port). A
/// developer's hub or another test binary may hold a port for a moment, so a busy port is
/// retried for up to 60 s; then the test fails naming `ports`. The caller holds [`PORT_8883`].
pub async fn start_on_fixed_ports(
    dir: &Path,
    mqtt_port: u16,
    https_port: u16,
    f: impl Fn(&mut HubConfig),
    ports: &str,
) -> HubHandle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cfg = HubConfig::new(dir);
        cfg.in_memory = true;
        f(&mut cfg);
        match azsim_emulator::start(cfg, "127.0.0.1".parse().unwrap(), mqtt_port, https_port).await
        {
            Ok(hub) => return hub,
            Err(azsim_emulator::HubError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the hub cannot start on {ports}: {e}"),
        }
    }
}

/// The test venv's Python (env `AZSIM_PYTHON`, default `.venv/bin/python`, which
/// `scripts/test` creates with the pinned SDKs), when there is one.
pub fn python() -> Option<PathBuf> {
    let p = match std::env::var_os("AZSIM_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    p.exists().then_some(p)
}
