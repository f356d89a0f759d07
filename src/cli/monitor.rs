//! `azsim monitor`: clap structs and validation. The work is in `crate::cmd::monitor`.

use azsim_proto::secret::Secret;
use clap::{Args, ValueEnum};

use super::service::{HubTargetArgs, device_id};
use crate::error::UsageError;
use crate::service::Target;
use crate::service::eventhub::{ConsumerOptions, EventHubEndpoint, StartAt};

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

/// Watch a hub's events. Telemetry is read from the hub's Event Hubs-compatible endpoint over
/// AMQP (every partition, from now on unless --from-start): the local hub's (its hub.json
/// names it), --eventhub-connection-string's, or the one an Azure IoT Hub redirects
/// `messages/events` to. Connects, twin changes, C2D completions and feedback come from the
/// local hub's event stream (local azsim hub only).
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
    /// Read telemetry from this Event Hub (the hub's Event Hubs-compatible connection string:
    /// Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=...).
    /// Default: the local hub's, or the redirect of the hub named by --hub-connection-string.
    #[arg(long, value_name = "CS")]
    pub eventhub_connection_string: Option<Secret<String>>,
    /// Consumer group to read telemetry with.
    #[arg(long, value_name = "GROUP", default_value = "$Default")]
    pub consumer_group: String,
    /// Read only this partition [default: all of them].
    #[arg(long, value_name = "ID")]
    pub partition: Option<String>,
    /// Read the telemetry the hub still holds, not only what arrives from now on.
    #[arg(long)]
    pub from_start: bool,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim monitor` arguments.
#[derive(Debug)]
pub struct MonitorConfig {
    /// The hub (`None`: only an Event Hub was named).
    pub target: Option<Target>,
    /// The Event Hub named by `--eventhub-connection-string`.
    pub eventhub: Option<EventHubEndpoint>,
    /// Consumer group, partition, start.
    pub consumer: ConsumerOptions,
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
        let consumer_group = self.consumer_group.trim().to_owned();
        if consumer_group.is_empty() || consumer_group.contains('/') {
            return Err(UsageError::new(
                "--consumer-group",
                "must be a consumer group name ($Default)",
            ));
        }
        if let Some(p) = &self.partition
            && (p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(UsageError::new(
                "--partition",
                "must be a partition id (0, 1, ...)",
            ));
        }
        let eventhub = self
            .eventhub_connection_string
            .as_ref()
            .map(|cs| {
                EventHubEndpoint::parse(cs.expose(), self.target.ca.clone())
                    .map_err(|e| UsageError::new("--eventhub-connection-string", e))
            })
            .transpose()?;
        let needs_hub = eventhub.is_none()
            || self.target.hub_connection_string.is_some()
            || self.types.iter().any(|k| *k != EventKind::Telemetry);
        let target = if needs_hub {
            Some(self.target.resolve()?)
        } else {
            self.target.resolve().ok()
        };
        let only_stream_kinds =
            !self.types.is_empty() && self.types.iter().all(|k| *k != EventKind::Telemetry);
        if let Some(t) = &target
            && t.is_azure()
            && only_stream_kinds
        {
            return Err(UsageError::new(
                "--type",
                format!(
                    "{} is an Azure IoT Hub: monitor reads its telemetry (Event Hubs); \
                     connection, twin and c2d events come from the local azsim hub only",
                    t.host()
                ),
            ));
        }
        Ok(MonitorConfig {
            target,
            eventhub,
            consumer: ConsumerOptions {
                group: consumer_group,
                partition: self.partition,
                start: if self.from_start {
                    StartAt::Start
                } else {
                    StartAt::Latest
                },
            },
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
