//! `azsim fleet`: run many devices, each the same session and behaviour as `azsim run`, and
//! print their figures. The runner is `crate::fleet`.

use std::process::ExitCode;

use crate::error::CliError;
use crate::fleet::FleetConfig;

/// Runs the fleet until `--count`, `--duration`, Ctrl-C or SIGTERM, then prints the summary.
///
/// # Errors
/// [`CliError::Runtime`] when the identities cannot be set up (local hub, registry), or when no
/// device ever connected.
pub async fn run(cfg: FleetConfig) -> Result<ExitCode, CliError> {
    let summary = tokio::select! {
        r = crate::fleet::run(cfg, super::interrupted()) => r.map_err(CliError::runtime)?,
        () = crate::out::stdout_closed() => crate::out::reader_gone(),
    };
    if summary.devices > 0 && summary.ever_connected == 0 {
        return Err(CliError::runtime(std::io::Error::other(
            "no device of the fleet could connect",
        )));
    }
    Ok(ExitCode::SUCCESS)
}
