//! What the load and soak benches share: the hub served in a child process of the bench binary
//! (its `HubInfo` as one JSON line on stdout, stopped cleanly when stdin closes), the client TLS
//! configuration trusting a CA file, a free port, and registering devices as `iothubowner`.
//! Each bench includes it as `mod common`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use azsim_proto::sas;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

/// The child side: serves `cfg` on 127.0.0.1 (`mqtt`, `https`; 0 = any free port) on tokio's
/// multi-threaded runtime, prints its `HubInfo` as one JSON line and stops when stdin closes.
/// `label` prefixes errors; a failure exits 1.
pub fn serve_hub_child(cfg: azsim_emulator::HubConfig, mqtt: u16, https: u16, label: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("hub runtime");
    rt.block_on(async {
        let handle =
            match azsim_emulator::start(cfg, "127.0.0.1".parse().expect("ip"), mqtt, https).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{label}: hub: {e}");
                    std::process::exit(1);
                }
            };
        println!("{}", serde_json::to_string(&handle.info).expect("hub info"));
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        if let Err(e) = handle.stop().await {
            eprintln!("{label}: hub stop: {e}");
            std::process::exit(1);
        }
    });
}

/// The bench side: starts `cmd` (this binary with the caller's env vars) with stdin and stdout
/// piped and stderr inherited, and waits up to 60 s for its ready line.
pub async fn start_hub_child(
    mut cmd: tokio::process::Command,
) -> Result<(tokio::process::Child, azsim_emulator::HubInfo), String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("hub: cannot start the hub process: {e}"))?;
    let stdout = child.stdout.take().ok_or("hub: no stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .map_err(|_| "hub: not ready within 60 s".to_string())?
    .map_err(|e| format!("hub: {e}"))?
    .ok_or("hub: exited before it was ready")?;
    let info = serde_json::from_str(&line).map_err(|e| format!("hub: bad ready line: {e}"))?;
    Ok((child, info))
}

/// A client TLS configuration (ring, safe default versions) trusting the CA in `ca_file`.
pub fn client_tls(ca_file: &Path) -> Arc<rustls::ClientConfig> {
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

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The hub's REST API as `iothubowner`.
#[derive(Clone)]
pub struct Owner {
    http: reqwest::Client,
    rest_host: String,
    token: String,
}

impl Owner {
    /// Signs an `iothubowner` token valid for `valid_secs` from the hub's service connection
    /// string.
    pub fn new(
        info: &azsim_emulator::HubInfo,
        tls: &Arc<rustls::ClientConfig>,
        valid_secs: u64,
    ) -> Result<Owner, String> {
        let owner_key = info
            .service_connection_string
            .split(';')
            .find_map(|f| f.strip_prefix("SharedAccessKey="))
            .ok_or("no key in the service connection string")?
            .to_owned();
        let rest_host = format!("{}:{}", info.hostname, info.https_port);
        let mut token = String::new();
        sas::sign(
            &mut token,
            &sas::Resource::Hub { host: &rest_host },
            &owner_key,
            unix_now() + valid_secs,
            Some("iothubowner"),
        )
        .map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((**tls).clone())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Owner {
            http,
            rest_host,
            token,
        })
    }

    /// Creates the SAS device `id` with keys `primary` and `secondary`.
    pub async fn create_device(
        &self,
        id: &str,
        primary: &str,
        secondary: &str,
    ) -> Result<(), String> {
        let url = format!(
            "https://{}/devices/{id}?api-version=2021-04-12",
            self.rest_host
        );
        let body = serde_json::json!({
            "deviceId": id,
            "authentication": {"type": "sas",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}},
        });
        let resp = self
            .http
            .put(&url)
            .header("Authorization", &self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("create {id}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("create {id}: http {}", resp.status()));
        }
        Ok(())
    }
}
