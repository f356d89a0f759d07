//! `azsim c2d send`: queue a cloud-to-device message through the local hub's emulator-only
//! endpoint (`POST /emulator/devices/{id}/c2d`; Azure itself takes C2D over AMQP only).

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::service::C2dConfig;
use crate::error::CliError;
use crate::service::ServiceClient;

/// Queues the message and prints its id and the queue depth.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (unknown device, `403004` queue full) or a
/// transport error.
pub async fn run(cfg: C2dConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let ack = client
        .send_c2d(&cfg.device, &cfg.message)
        .await
        .map_err(CliError::runtime)?;
    if cfg.json {
        println!("{ack}");
    } else {
        let id = ack.get("messageId").and_then(Value::as_str).unwrap_or("-");
        let depth = ack
            .get("queueDepth")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |d| d.to_string());
        println!(
            "queued c2d message {id} for {} (queue depth {depth})",
            cfg.device
        );
    }
    Ok(ExitCode::SUCCESS)
}
