//! `azsim c2d send`: queue a cloud-to-device message through the local hub's emulator-only
//! endpoint (`POST /emulator/devices/{id}/c2d`; Azure itself takes C2D over AMQP only).
//!
//! `azsim c2d feedback`: receive and complete the delivery feedback of messages sent with
//! `--ack` through the service REST API (`GET /messages/serviceBound/feedback`, then
//! `DELETE .../feedback/{lockToken}`), against the local hub or a real one.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cli::c2d::{C2dConfig, C2dFeedbackConfig, C2dSendConfig};
use crate::error::CliError;
use crate::service::ServiceClient;
use crate::service::events::feedback_line;

/// How often `c2d feedback --timeout` asks again while nothing is pending.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Runs `azsim c2d send` or `azsim c2d feedback`.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (unknown device, `403004` queue full, `412002`
/// lost feedback lock), a transport error, or no feedback within `--timeout`.
pub async fn run(cfg: C2dConfig) -> Result<ExitCode, CliError> {
    match cfg {
        C2dConfig::Send(c) => send(*c).await,
        C2dConfig::Feedback(c) => feedback(*c).await,
    }
}

/// Queues the message and prints its id and the queue depth.
async fn send(cfg: C2dSendConfig) -> Result<ExitCode, CliError> {
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

#[derive(Debug, thiserror::Error)]
#[error("c2d feedback: none arrived within {0} s")]
struct NoFeedback(u64);

/// Drains the feedback queue: prints every record of each batch, then completes the batch.
/// With a timeout, first waits for a batch to arrive.
async fn feedback(cfg: C2dFeedbackConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let mut printed = 0usize;
    loop {
        if let Some(batch) = client.receive_feedback().await.map_err(CliError::runtime)? {
            for rec in &batch.records {
                if cfg.json {
                    println!("{rec}");
                } else {
                    println!("{}", feedback_line(rec));
                }
            }
            printed += batch.records.len();
            client
                .complete_feedback(&batch.lock_token)
                .await
                .map_err(CliError::runtime)?;
            continue;
        }
        match deadline {
            _ if printed > 0 => break,
            None => break,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    let secs = cfg.timeout.map_or(0, |t| t.as_secs());
                    return Err(CliError::runtime(NoFeedback(secs)));
                }
                tokio::time::sleep(POLL_EVERY.min(d - now)).await;
            }
        }
    }
    if printed == 0 {
        eprintln!("no c2d feedback pending on {}", client.host());
    }
    Ok(ExitCode::SUCCESS)
}
