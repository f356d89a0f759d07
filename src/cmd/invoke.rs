//! `azsim invoke DEVICE METHOD [--module M]`: a direct method on a device or a module, through
//! the hub's REST API.

use std::process::ExitCode;

use crate::cli::invoke::InvokeConfig;
use crate::error::CliError;
use crate::out::outln;
use crate::service::{Identity, ServiceClient};

/// Invokes the method and prints the device's `{"status","payload"}`.
///
/// Exit 0 whenever the device answered, whatever status it chose; the hub's error otherwise
/// (`404103 DeviceNotOnline: ...`, `504101 GatewayTimeout: ...`), exit 1.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error or a transport error.
pub async fn run(cfg: InvokeConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let result = client
        .invoke(
            Identity {
                device_id: &cfg.device,
                module_id: cfg.module.as_deref(),
            },
            &cfg.request,
        )
        .await
        .map_err(CliError::runtime)?;
    // The struct, not a `Value`, so `status` prints before `payload`.
    let text = if cfg.json {
        serde_json::to_string(&result)
    } else {
        serde_json::to_string_pretty(&result)
    };
    outln!("{}", text.map_err(CliError::runtime)?);
    Ok(ExitCode::SUCCESS)
}
