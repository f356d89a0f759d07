//! The local hub `azsim run` uses when no connection string is given: the one already serving
//! the state dir (its `hub.json` names a live process whose MQTT port answers), or one started
//! in this process through the emulator library.

use std::path::{Path, PathBuf};
use std::time::Duration;

use azsim_emulator::HubInfo;

use super::driver::Credential;
use super::output::Output;
use crate::cli::run::DeviceTarget;
use crate::service::client::ServiceClient;
use crate::service::target::{Target, TargetInputs};

/// Why the local hub could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalHubError {
    /// Starting the in-process hub failed.
    #[error("cannot start the local hub in {dir}: {reason}")]
    Start {
        /// State dir.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Talking to its REST API failed.
    #[error("local hub: {0}")]
    Service(String),
}

/// A local hub in use.
#[derive(Debug)]
pub struct LocalHub {
    info: HubInfo,
    state_dir: PathBuf,
    embedded: Option<super::embedded::EmbeddedHub>,
}

impl LocalHub {
    /// Uses the live hub of `state_dir`, or starts one in this process.
    ///
    /// # Errors
    /// [`LocalHubError::Start`] when no hub is running and one cannot be started.
    pub async fn ensure(
        state_dir: &Path,
        mqtt_port: Option<u16>,
        out: &Output,
    ) -> Result<Self, LocalHubError> {
        if let Ok(info) = HubInfo::load(state_dir)
            && is_live(&info).await
        {
            out.note(&format!(
                "using the local hub already running in {} (pid {}, mqtt port {})",
                state_dir.display(),
                info.pid,
                info.mqtt_port
            ));
            if let Some(url) = &info.dashboard_url {
                out.note(&format!("dashboard: {url}"));
            }
            return Ok(Self {
                info,
                state_dir: state_dir.to_owned(),
                embedded: None,
            });
        }
        let embedded = super::embedded::EmbeddedHub::start(state_dir, mqtt_port)
            .await
            .map_err(|reason| LocalHubError::Start {
                dir: state_dir.to_owned(),
                reason,
            })?;
        let info = embedded.info().clone();
        out.note(&format!(
            "started a local hub in {} (mqtt port {}, https port {})",
            state_dir.display(),
            info.mqtt_port,
            info.https_port
        ));
        if let Some(url) = &info.dashboard_url {
            out.note(&format!("dashboard: {url}"));
        }
        Ok(Self {
            info,
            state_dir: state_dir.to_owned(),
            embedded: Some(embedded),
        })
    }

    /// The hub's CA file.
    pub fn ca_file(&self) -> PathBuf {
        self.info.ca_file.clone()
    }

    /// Its discovery record (ports, host name).
    pub fn info(&self) -> &HubInfo {
        &self.info
    }

    /// Whether this process started it (rather than reusing a running one).
    pub fn started_here(&self) -> bool {
        self.embedded.is_some()
    }

    /// `{prefix}1`, registered if missing, unless a device is connected as it already (another
    /// `azsim run` on the same hub): then the first of `{prefix}2`, `{prefix}3`, ... that is not,
    /// so two runs do not keep taking the connection from each other.
    ///
    /// # Errors
    /// [`LocalHubError::Service`] when the REST API fails, or 100 such devices are connected.
    pub async fn free_device_target(&self, prefix: &str) -> Result<DeviceTarget, LocalHubError> {
        let client = self.client()?;
        for n in 1..=100 {
            let id = format!("{prefix}{n}");
            match client.get_device(&id).await {
                Ok(d) if d["connectionState"].as_str() == Some("Connected") => continue,
                Ok(_) => return self.device_target(&id).await,
                Err(e) if e.azure().is_some_and(|a| a.status == 404) => {
                    return self.device_target(&id).await;
                }
                Err(e) => return Err(LocalHubError::Service(crate::error::one_line(&e))),
            }
        }
        Err(LocalHubError::Service(format!(
            "{prefix}1 to {prefix}100 are all connected"
        )))
    }

    fn client(&self) -> Result<ServiceClient, LocalHubError> {
        let target = Target::resolve_with(
            TargetInputs {
                connection_string: None,
                ca: None,
                state_dir: Some(self.state_dir.clone()),
            },
            None,
            None,
        )
        .map_err(|e| LocalHubError::Service(e.to_string()))?;
        ServiceClient::new(&target).map_err(|e| LocalHubError::Service(e.to_string()))
    }

    /// Registers `device_id` if missing and returns how to connect as it.
    ///
    /// # Errors
    /// [`LocalHubError::Service`] when the REST API fails.
    pub async fn device_target(&self, device_id: &str) -> Result<DeviceTarget, LocalHubError> {
        let client = self.client()?;
        let device = match client.create_device(device_id, None, None).await {
            Ok(d) => d,
            Err(e) if e.azure().is_some_and(|a| a.status == 409) => client
                .get_device(device_id)
                .await
                .map_err(|e| LocalHubError::Service(crate::error::one_line(&e)))?,
            Err(e) => return Err(LocalHubError::Service(crate::error::one_line(&e))),
        };
        let key = device
            .pointer("/authentication/symmetricKey/primaryKey")
            .and_then(|k| k.as_str())
            .ok_or_else(|| {
                LocalHubError::Service(format!("device {device_id} has no symmetric key"))
            })?
            .to_owned();
        Ok(DeviceTarget {
            hub_host: self.info.hostname.clone(),
            connect_host: self.info.hostname.clone(),
            port: self.info.mqtt_port,
            device_id: device_id.to_owned(),
            module_id: None,
            credential: Credential::Key(azsim_proto::secret::Secret::new(key)),
        })
    }

    /// Stops the in-process hub, if this process started it.
    pub async fn stop(self) {
        if let Some(e) = self.embedded {
            e.stop().await;
        }
    }
}

/// Whether the hub `info` describes is running: its process exists and its MQTT port accepts.
async fn is_live(info: &HubInfo) -> bool {
    let pid_alive =
        Path::new("/proc").join(info.pid.to_string()).exists() || !Path::new("/proc/self").exists();
    if !pid_alive {
        return false;
    }
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", info.mqtt_port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}
