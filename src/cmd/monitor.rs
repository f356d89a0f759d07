//! `azsim monitor`: the local hub's live events (`GET /emulator/events`, server-sent events;
//! not an Azure API), one readable line or one JSON object per event.

use std::process::ExitCode;

use azsim_emulator::clock::{rfc3339, unix_now};

use crate::cli::monitor::MonitorConfig;
use crate::error::CliError;
use crate::service::ServiceClient;
use crate::service::client::StreamItem;
use crate::service::events::{event_type, render_line};

/// Why monitoring stopped without reaching `--count`.
#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error("monitor: timed out after {secs} s with {seen} of {want} events")]
    Timeout { secs: u64, seen: u64, want: u64 },
    #[error("monitor: the hub closed the event stream after {seen} events")]
    Closed { seen: u64 },
}

/// Streams events until `--count` is reached (exit 0), `--timeout` passes (exit 1 with a
/// message when a count was asked for, 0 otherwise), Ctrl-C (exit 0) or the hub goes away
/// (exit 1).
///
/// # Errors
/// [`CliError::Runtime`] for the cases above and transport errors.
pub async fn run(cfg: MonitorConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let deadline = cfg.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let timed_out = |seen: u64| match cfg.count {
        Some(want) => Err(CliError::runtime(MonitorError::Timeout {
            secs: cfg.timeout.map_or(0, |t| t.as_secs()),
            seen,
            want,
        })),
        None => Ok(ExitCode::SUCCESS),
    };
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut events = tokio::select! {
        r = client.events(cfg.device.as_deref()) => r.map_err(CliError::runtime)?,
        () = sleep_until(deadline) => return timed_out(seen),
        _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
    };
    loop {
        let item = tokio::select! {
            r = events.next() => r.map_err(CliError::runtime)?,
            () = sleep_until(deadline) => return timed_out(seen),
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
        };
        let Some(item) = item else {
            return Err(CliError::runtime(MonitorError::Closed { seen }));
        };
        let ev = match item {
            StreamItem::Ready => {
                let scope = cfg.device.as_deref().unwrap_or("all devices");
                eprintln!(
                    "monitoring events of {} ({scope}); Ctrl-C to stop",
                    client.host()
                );
                continue;
            }
            StreamItem::Event(ev) => ev,
        };
        let ty = event_type(&ev);
        if !cfg.types.is_empty() && !cfg.types.iter().any(|k| k.matches(ty)) {
            continue;
        }
        if cfg.json {
            println!("{ev}");
        } else {
            println!("{}", render_line(&ev, &rfc3339(unix_now())));
        }
        seen += 1;
        if cfg.count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
