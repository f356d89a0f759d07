//! `azsim twin show | patch`, for device and (`--module`) module twins: clap structs and
//! validation. The work is in `crate::cmd::twin`.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::service::{HubTargetArgs, device_id, json_object, module_arg};
use crate::error::UsageError;
use crate::service::Target;

/// Read or update a device twin or a module twin.
#[derive(Debug, Args)]
pub struct TwinArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TwinCommand,
}

/// `azsim twin show | patch`.
#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Print the device (or module) twin.
    Show(TwinShowArgs),
    /// Merge a patch into the desired properties (null deletes) and/or the tags.
    Patch(TwinPatchArgs),
}

/// `azsim twin show DEVICE [--module M]`.
#[derive(Debug, Args)]
pub struct TwinShowArgs {
    /// The device id.
    pub device: String,
    /// The twin of this module of the device instead of the device's.
    #[arg(long, value_name = "ID")]
    pub module: Option<String>,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the twin as one compact JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `azsim twin patch DEVICE [DESIRED] [--tags JSON] [--etag E] [--module M]`.
#[derive(Debug, Args)]
pub struct TwinPatchArgs {
    /// The device id.
    pub device: String,
    /// The twin of this module of the device instead of the device's.
    #[arg(long, value_name = "ID")]
    pub module: Option<String>,
    /// Desired-properties patch, a JSON object (e.g. '{"interval":5}').
    #[arg(value_name = "DESIRED")]
    pub desired: Option<String>,
    /// Tags patch, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub tags: Option<String>,
    /// Only apply if the twin's etag still matches (If-Match).
    #[arg(long, value_name = "ETAG")]
    pub etag: Option<String>,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the updated twin as one compact JSON line.
    #[arg(long)]
    pub json: bool,
}

/// What `azsim twin` does, validated.
#[derive(Debug)]
pub enum TwinAction {
    /// Print the twin.
    Show,
    /// Patch desired and/or tags.
    Patch {
        /// Desired patch (object).
        desired: Option<Value>,
        /// Tags patch (object).
        tags: Option<Value>,
        /// If-Match.
        etag: Option<String>,
    },
}

/// Validated `azsim twin` arguments.
#[derive(Debug)]
pub struct TwinConfig {
    /// The hub.
    pub target: Target,
    /// Device id.
    pub device: String,
    /// Module id, for a module twin.
    pub module: Option<String>,
    /// What to do.
    pub action: TwinAction,
    /// JSON output.
    pub json: bool,
}

impl TwinArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<TwinConfig, UsageError> {
        match self.command {
            TwinCommand::Show(a) => Ok(TwinConfig {
                device: device_id("DEVICE", a.device)?,
                module: module_arg(a.module)?,
                target: a.target.resolve()?,
                action: TwinAction::Show,
                json: a.json,
            }),
            TwinCommand::Patch(a) => {
                let device = device_id("DEVICE", a.device)?;
                let module = module_arg(a.module)?;
                let desired = a
                    .desired
                    .as_deref()
                    .map(|d| json_object("DESIRED", d))
                    .transpose()?;
                let tags = a
                    .tags
                    .as_deref()
                    .map(|t| json_object("--tags", t))
                    .transpose()?;
                if desired.is_none() && tags.is_none() {
                    return Err(UsageError::new(
                        "DESIRED",
                        "give a desired-properties patch, --tags, or both",
                    ));
                }
                if a.etag.as_deref().is_some_and(|e| e.trim().is_empty()) {
                    return Err(UsageError::new("--etag", "must not be empty"));
                }
                Ok(TwinConfig {
                    device,
                    module,
                    target: a.target.resolve()?,
                    action: TwinAction::Patch {
                        desired,
                        tags,
                        etag: a.etag,
                    },
                    json: a.json,
                })
            }
        }
    }
}
