//! `azsim invoke DEVICE METHOD`: clap structs and validation. The work is in `crate::cmd::invoke`.

use clap::Args;

use super::service::{HubTargetArgs, device_id, json_arg, module_arg};
use crate::error::UsageError;
use crate::service::Target;

/// Invoke a direct method on a connected device (or `--module`) and print its
/// `{"status","payload"}`.
///
/// Exits 0 when the device answered (whatever its status), 1 when the hub reports it offline
/// (404103) or silent (504101).
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The device id.
    pub device: String,
    /// The method name.
    pub method: String,
    /// Invoke the method on this module of the device instead of the device itself.
    #[arg(long, value_name = "ID")]
    pub module: Option<String>,
    /// JSON payload sent to the device.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Seconds to wait for the device's answer (5..300).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u32,
    /// Seconds to wait for the device to come online (0..300).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub connect_timeout: u32,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the result as one compact JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim invoke` arguments.
#[derive(Debug)]
pub struct InvokeConfig {
    /// The hub.
    pub target: Target,
    /// Device id.
    pub device: String,
    /// Module id, when the method is a module's.
    pub module: Option<String>,
    /// The request body.
    pub request: crate::service::MethodRequest,
    /// JSON output.
    pub json: bool,
}

impl InvokeArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<InvokeConfig, UsageError> {
        let device = device_id("DEVICE", self.device)?;
        let module = module_arg(self.module)?;
        if self.method.is_empty() {
            return Err(UsageError::new("METHOD", "must not be empty"));
        }
        if !(5..=300).contains(&self.timeout) {
            return Err(UsageError::new(
                "--timeout",
                "must be between 5 and 300 seconds",
            ));
        }
        if self.connect_timeout > 300 {
            return Err(UsageError::new(
                "--connect-timeout",
                "must be between 0 and 300 seconds",
            ));
        }
        let payload = self
            .payload
            .as_deref()
            .map(|p| json_arg("--payload", p))
            .transpose()?;
        Ok(InvokeConfig {
            target: self.target.resolve()?,
            device,
            module,
            request: crate::service::MethodRequest {
                method_name: self.method,
                payload,
                response_timeout_in_seconds: self.timeout,
                connect_timeout_in_seconds: self.connect_timeout,
            },
            json: self.json,
        })
    }
}
