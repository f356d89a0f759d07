//! `azsim invoke DEVICE METHOD`: a direct method through the hub's REST API.

use std::process::ExitCode;

use crate::cli::service::InvokeConfig;
use crate::error::CliError;
use crate::service::ServiceClient;
use crate::service::output::to_text;

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
        .invoke(&cfg.device, &cfg.request)
        .await
        .map_err(CliError::runtime)?;
    let v = serde_json::to_value(&result).map_err(CliError::runtime)?;
    println!("{}", to_text(&v, cfg.json));
    Ok(ExitCode::SUCCESS)
}
