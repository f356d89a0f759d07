//! A hub started inside `azsim run` through the emulator library, on the default ports (8883
//! MQTT, 8443 HTTPS) of 127.0.0.1, with its state (CA, keys, SQLite, `hub.json`) in the state
//! dir, so `azsim invoke`, `azsim twin` and `azsim c2d` in another terminal find it.

use std::path::Path;

use azsim_emulator::{HubConfig, HubHandle, HubInfo};

/// Default HTTPS port of the local hub.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// AMQPS port of the local hub when it is free.
const DEFAULT_AMQPS_PORT: u16 = 5671;

/// The in-process hub.
#[derive(Debug)]
pub struct EmbeddedHub {
    handle: HubHandle,
}

impl EmbeddedHub {
    /// Starts the hub with state in `dir`, MQTT on `mqtt_port` (default 8883).
    ///
    /// # Errors
    /// Why it could not start (a port in use, an unwritable state dir).
    pub async fn start(dir: &Path, mqtt_port: Option<u16>) -> Result<Self, String> {
        let mqtt_port = mqtt_port.unwrap_or(azsim_emulator::DEFAULT_MQTT_PORT);
        let mut config = HubConfig::new(dir);
        config.dashboard = azsim_emulator::DashboardPort::Preferred(8880);
        // AMQPS, like the dashboard, on its usual port when free and on a free one otherwise
        // (another hub, a parallel test), instead of failing the whole start.
        let amqps_free = std::net::TcpListener::bind(("127.0.0.1", DEFAULT_AMQPS_PORT)).is_ok();
        config.amqp_port = Some(if amqps_free { DEFAULT_AMQPS_PORT } else { 0 });
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut started =
            azsim_emulator::start(config.clone(), ip, mqtt_port, DEFAULT_HTTPS_PORT).await;
        if amqps_free
            && matches!(&started, Err(azsim_emulator::HubError::Io(io)) if io.kind() == std::io::ErrorKind::AddrInUse)
        {
            // Taken between the check and the bind: a free port then.
            config.amqp_port = Some(0);
            started = azsim_emulator::start(config, ip, mqtt_port, DEFAULT_HTTPS_PORT).await;
        }
        let handle = started.map_err(|e| match e {
            azsim_emulator::HubError::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse => {
                format!(
                    "port {mqtt_port} or {DEFAULT_HTTPS_PORT} on 127.0.0.1 is in use (is another hub running? use --port, or a connection string)"
                )
            }
            other => other.to_string(),
        })?;
        Ok(Self { handle })
    }

    /// Its discovery record.
    pub fn info(&self) -> &HubInfo {
        &self.handle.info
    }

    /// Stops it and waits until its state is saved.
    pub async fn stop(self) {
        if let Err(e) = self.handle.stop().await {
            tracing::warn!("local hub stopped with an error: {e}");
        }
    }
}
