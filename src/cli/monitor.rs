//! `azsim monitor`: clap structs and validation. The work is in `crate::cmd::monitor`.

use clap::{Args, ValueEnum};

use super::service::{HubTargetArgs, device_id};
use crate::error::UsageError;
use crate::service::Target;

/// Event kinds `azsim monitor --type` can keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventKind {
    /// Device-to-cloud messages.
    Telemetry,
    /// Connects and disconnects.
    Connection,
    /// Reported and desired twin changes.
    Twin,
    /// Completed cloud-to-device messages and their feedback.
    C2d,
}

impl EventKind {
    /// True when the event `type` belongs to this kind.
    pub fn matches(self, event_type: &str) -> bool {
        match self {
            Self::Telemetry => event_type == "telemetry",
            Self::Connection => matches!(event_type, "connected" | "disconnected"),
            Self::Twin => matches!(event_type, "twinReported" | "twinDesired"),
            Self::C2d => event_type.starts_with("c2d"),
        }
    }
}

/// Watch the local hub's events: telemetry, connects, twin changes, C2D completions and
/// feedback (local azsim hub only: Azure needs Event Hubs for this).
///
/// Exits 0 after --count events; 1 when --timeout passes first. Without --count, --timeout is
/// how long to watch (exit 0).
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only this device's events.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Only these kinds of events (repeatable) [default: all].
    #[arg(long = "type", value_enum, value_name = "KIND")]
    pub types: Vec<EventKind>,
    /// Stop after this many events (exit 0).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds (exit 1 when --count was not reached).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim monitor` arguments.
#[derive(Debug)]
pub struct MonitorConfig {
    /// The hub.
    pub target: Target,
    /// Device filter (server side).
    pub device: Option<String>,
    /// Kind filter (client side); empty keeps all.
    pub types: Vec<EventKind>,
    /// Events to wait for.
    pub count: Option<u64>,
    /// How long to wait.
    pub timeout: Option<std::time::Duration>,
    /// JSON lines output.
    pub json: bool,
}

impl MonitorArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<MonitorConfig, UsageError> {
        let device = self.device.map(|d| device_id("--device", d)).transpose()?;
        if self.count == Some(0) {
            return Err(UsageError::new("--count", "must be at least 1"));
        }
        if self.timeout == Some(0) {
            return Err(UsageError::new("--timeout", "must be at least 1 second"));
        }
        let target = self.target.resolve()?;
        if target.is_azure() {
            return Err(UsageError::new(
                "--hub-connection-string",
                format!(
                    "monitor works only against the local azsim hub; {} is an Azure IoT Hub, \
                     whose events are read over Event Hubs (AMQP), which azsim does not speak yet",
                    target.host()
                ),
            ));
        }
        Ok(MonitorConfig {
            target,
            device,
            types: self.types,
            count: self.count,
            timeout: self.timeout.map(std::time::Duration::from_secs),
            json: self.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_match_event_types() {
        assert!(EventKind::Telemetry.matches("telemetry"));
        assert!(EventKind::Connection.matches("disconnected"));
        assert!(EventKind::Twin.matches("twinDesired"));
        assert!(EventKind::C2d.matches("c2dCompleted"));
        assert!(EventKind::C2d.matches("c2dFeedback"));
        assert!(!EventKind::Twin.matches("telemetry"));
    }
}
