//! `azsim c2d send`: send a cloud-to-device message over AMQP (a sender link to
//! `/messages/devicebound`, as the service SDKs do), to the local hub or an Azure IoT Hub. A
//! local hub that serves no AMQP gets it through its emulator-only REST endpoint
//! (`POST /emulator/devices/{id}/c2d`) instead.
//!
//! `azsim c2d feedback`: receive and complete the delivery feedback of messages sent with
//! `--ack` over AMQP (`/messages/serviceBound/feedback`: each batch printed, then accepted),
//! or over the service REST API (`GET /messages/serviceBound/feedback`, then `DELETE`) from a
//! local hub without AMQP.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cli::c2d::{C2dConfig, C2dFeedbackConfig, C2dSendConfig};
use crate::error::CliError;
use crate::out::{errln, outln};
use crate::service::ServiceClient;
use crate::service::amqp::{AmqpService, amqp_endpoint};
use crate::service::events::feedback_line;

/// How often `c2d feedback --timeout` asks again while nothing is pending (REST).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long `c2d feedback` without `--timeout` waits for what is pending (AMQP: the hub sends it
/// as soon as the link is attached), and for a further batch after one.
const PENDING_WAIT: Duration = Duration::from_secs(1);

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

/// Sends the message and prints its id.
async fn send(cfg: C2dSendConfig) -> Result<ExitCode, CliError> {
    if amqp_endpoint(&cfg.target).is_none() {
        return send_rest(cfg).await;
    }
    let mut amqp = AmqpService::connect(&cfg.target)
        .await
        .map_err(CliError::runtime)?;
    let sent = amqp.send_c2d(&cfg.device, &cfg.message).await;
    amqp.close().await;
    let id = sent.map_err(CliError::runtime)?;
    if cfg.json {
        outln!("{}", json!({"messageId": id, "deviceId": cfg.device}));
    } else {
        outln!("sent c2d message {id} to {}", cfg.device);
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues the message through the local hub's REST endpoint and prints its id and the queue
/// depth.
async fn send_rest(cfg: C2dSendConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let ack = client
        .send_c2d(&cfg.device, &cfg.message)
        .await
        .map_err(CliError::runtime)?;
    if cfg.json {
        outln!("{ack}");
    } else {
        let id = ack.get("messageId").and_then(Value::as_str).unwrap_or("-");
        let depth = ack
            .get("queueDepth")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |d| d.to_string());
        outln!(
            "queued c2d message {id} for {} (queue depth {depth})",
            cfg.device
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, thiserror::Error)]
#[error("c2d feedback: none arrived within {0} s")]
struct NoFeedback(u64);

fn print_records(records: &[Value], json: bool) {
    for rec in records {
        if json {
            outln!("{rec}");
        } else {
            outln!("{}", feedback_line(rec));
        }
    }
}

/// Drains the feedback queue: prints every record of each batch, then completes the batch.
/// With a timeout, first waits for a batch to arrive.
async fn feedback(cfg: C2dFeedbackConfig) -> Result<ExitCode, CliError> {
    if amqp_endpoint(&cfg.target).is_none() {
        return feedback_rest(cfg).await;
    }
    let mut amqp = AmqpService::connect(&cfg.target)
        .await
        .map_err(CliError::runtime)?;
    let endpoint = amqp.endpoint().to_owned();
    let mut rx = amqp.feedback().await.map_err(CliError::runtime)?;
    let mut wait = cfg.timeout.unwrap_or(PENDING_WAIT);
    let mut printed = 0usize;
    let result = loop {
        match rx.next(wait).await {
            Ok(Some(batch)) => {
                print_records(&batch.records, cfg.json);
                printed += batch.records.len();
                if let Err(e) = rx.complete(batch).await {
                    break Err(CliError::runtime(e));
                }
                wait = PENDING_WAIT;
            }
            Ok(None) if printed == 0 && cfg.timeout.is_some() => {
                let secs = cfg.timeout.map_or(0, |t| t.as_secs());
                break Err(CliError::runtime(NoFeedback(secs)));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(CliError::runtime(e)),
        }
    };
    rx.close().await;
    amqp.close().await;
    result?;
    if printed == 0 {
        errln!("no c2d feedback pending on {endpoint}");
    }
    Ok(ExitCode::SUCCESS)
}

/// [`feedback`] over the service REST API.
async fn feedback_rest(cfg: C2dFeedbackConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let mut printed = 0usize;
    loop {
        if let Some(batch) = client.receive_feedback().await.map_err(CliError::runtime)? {
            print_records(&batch.records, cfg.json);
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
        errln!("no c2d feedback pending on {}", client.host());
    }
    Ok(ExitCode::SUCCESS)
}
