//! `azsim hub`: clap arguments and their validation into a [`HubCliConfig`].

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use crate::error::UsageError;

/// Run a local Azure IoT Hub (TLS MQTT on 8883, service REST on HTTPS 8443).
#[derive(Debug, Args)]
pub struct HubArgs {
    /// State directory (dev CA, server certificate, hub key, database, hub.json).
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// Keep registry, twins and queues in memory only (certificates still go to --state).
    #[arg(long)]
    pub in_memory: bool,
    /// Address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub bind: String,
    /// MQTT over TLS port (0 picks a free port).
    #[arg(long, value_name = "PORT", default_value_t = 8883)]
    pub mqtt_port: u16,
    /// HTTPS (service REST) port (0 picks a free port).
    #[arg(long, value_name = "PORT", default_value_t = 8443)]
    pub https_port: u16,
    /// Host name devices and services use; goes into the server certificate.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub hostname: String,
    /// Print one JSON line when ready instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim hub` settings.
#[derive(Debug, Clone)]
pub struct HubCliConfig {
    pub state: PathBuf,
    pub in_memory: bool,
    pub bind: IpAddr,
    pub mqtt_port: u16,
    pub https_port: u16,
    pub hostname: String,
    pub json: bool,
}

impl HubArgs {
    /// Validates the arguments.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad flag.
    pub fn into_config(self) -> Result<HubCliConfig, UsageError> {
        let bind: IpAddr = self
            .bind
            .parse()
            .map_err(|_| UsageError::new("--bind", "must be an IP address such as 127.0.0.1"))?;
        let h = &self.hostname;
        let host_ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !host_ok {
            return Err(UsageError::new(
                "--hostname",
                "must be a DNS name or IPv4 address (letters, digits, '-', '.')",
            ));
        }
        if self.mqtt_port != 0 && self.mqtt_port == self.https_port {
            return Err(UsageError::new(
                "--https-port",
                "must differ from --mqtt-port",
            ));
        }
        if self.state.as_os_str().is_empty() {
            return Err(UsageError::new("--state", "must not be empty"));
        }
        Ok(HubCliConfig {
            state: self.state,
            in_memory: self.in_memory,
            bind,
            mqtt_port: self.mqtt_port,
            https_port: self.https_port,
            hostname: self.hostname.to_ascii_lowercase(),
            json: self.json,
        })
    }
}
