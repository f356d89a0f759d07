//! `azsim token`: signing, derivation and inspection of SAS tokens.

use std::process::ExitCode;

use crate::cli::token::TokenConfig;
use crate::error::CliError;

/// Runs `azsim token`.
///
/// # Errors
/// Runtime failures.
pub async fn run(cfg: TokenConfig) -> Result<ExitCode, CliError> {
    match cfg {
        TokenConfig::Pending => Err(CliError::runtime(
            "token signing lands with azsim-proto::sas",
        )),
    }
}
