//! `azsim monitor`: a hub's events, one readable line or one JSON object per event. Telemetry
//! comes from the Event Hubs-compatible endpoint over AMQP (`crate::service::eventhub`); the
//! local hub's other events (connects, twin changes, C2D) from its live event stream
//! (`GET /emulator/events`, server-sent events; not an Azure API). Both are merged as they
//! arrive. A local hub started without AMQP gives its telemetry on the event stream too.

use std::process::ExitCode;

use azsim_emulator::clock::{rfc3339, unix_now};
use serde_json::Value;

use crate::cli::monitor::{EventKind, MonitorConfig};
use crate::error::CliError;
use crate::out::{errln, outln};
use crate::service::ServiceClient;
use crate::service::client::{EventStream as SseStream, StreamItem};
use crate::service::eventhub::{self, EventHubEndpoint, EventStream as EhStream};
use crate::service::events::{event_type, render_line};

/// Why monitoring stopped without reaching `--count`.
#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error("monitor: timed out after {secs} s with {seen} of {want} events")]
    Timeout { secs: u64, seen: u64, want: u64 },
    #[error("monitor: the hub closed the event stream after {seen} events")]
    Closed { seen: u64 },
    #[error("monitor: the Event Hub closed its partitions after {seen} events")]
    EventHubClosed { seen: u64 },
}

/// Where telemetry is read.
enum TelemetrySource {
    /// Not wanted (`--type` without telemetry).
    None,
    /// The local hub's event stream (it serves no AMQP).
    Stream,
    /// This Event Hub.
    EventHub(EventHubEndpoint),
    /// The Event Hub the hub redirects `messages/events` to.
    Redirect,
}

fn wants(cfg: &MonitorConfig, kind: EventKind) -> bool {
    cfg.types.is_empty() || cfg.types.contains(&kind)
}

fn telemetry_source(cfg: &MonitorConfig) -> Result<TelemetrySource, CliError> {
    if !wants(cfg, EventKind::Telemetry) {
        return Ok(TelemetrySource::None);
    }
    if let Some(ep) = &cfg.eventhub {
        return Ok(TelemetrySource::EventHub(ep.clone()));
    }
    let Some(target) = &cfg.target else {
        return Ok(TelemetrySource::None);
    };
    match &target.local_hub {
        Some(hub) => match &hub.eventhub_connection_string {
            Some(cs) => EventHubEndpoint::parse(cs, target.ca_file.clone())
                .map(TelemetrySource::EventHub)
                .map_err(|e| CliError::runtime(format!("monitor: hub.json: {e}"))),
            None => Ok(TelemetrySource::Stream),
        },
        None => Ok(TelemetrySource::Redirect),
    }
}

/// Streams events until `--count` is reached (exit 0), `--timeout` passes (exit 1 with a
/// message when a count was asked for, 0 otherwise), Ctrl-C (exit 0) or the hub goes away
/// (exit 1).
///
/// # Errors
/// [`CliError::Runtime`] for the cases above and transport errors.
pub async fn run(cfg: MonitorConfig) -> Result<ExitCode, CliError> {
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
    // `azsim monitor | grep -q hot`: stop once the reader leaves, not at the next event.
    let mut reader_left = std::pin::pin!(crate::out::stdout_closed());
    let source = telemetry_source(&cfg)?;
    let local = cfg.target.as_ref().filter(|t| !t.is_azure());
    let stream_wanted = local.is_some()
        && (matches!(source, TelemetrySource::Stream)
            || [EventKind::Connection, EventKind::Twin, EventKind::C2d]
                .into_iter()
                .any(|k| wants(&cfg, k)));
    let connect = async {
        let mut what = Vec::new();
        let eh = match &source {
            TelemetrySource::EventHub(ep) => Some(ep.clone()),
            TelemetrySource::Redirect => {
                let target = cfg
                    .target
                    .as_ref()
                    .ok_or_else(|| CliError::runtime("monitor: no hub to read telemetry from"))?;
                Some(
                    eventhub::resolve_redirect(target, &cfg.consumer.group)
                        .await
                        .map_err(CliError::runtime)?,
                )
            }
            TelemetrySource::None | TelemetrySource::Stream => None,
        };
        let eh = match eh {
            Some(ep) => {
                let s = eventhub::consume(&ep, &cfg.consumer)
                    .await
                    .map_err(CliError::runtime)?;
                what.push(format!(
                    "telemetry from Event Hub {} at {} (partitions {})",
                    ep.entity(),
                    ep.endpoint(),
                    s.partitions.join(",")
                ));
                Some(s)
            }
            None => None,
        };
        let sse = match local.filter(|_| stream_wanted) {
            Some(target) => {
                let client = ServiceClient::new(target).map_err(CliError::runtime)?;
                let mut events = client
                    .events(cfg.device.as_deref())
                    .await
                    .map_err(CliError::runtime)?;
                // The stream says it is ready before any event.
                match events.next().await.map_err(CliError::runtime)? {
                    Some(StreamItem::Ready) => {}
                    Some(StreamItem::Event(_)) | None => {
                        return Err(CliError::runtime(MonitorError::Closed { seen: 0 }));
                    }
                }
                what.push(format!("the event stream of {}", client.host()));
                Some(events)
            }
            None => None,
        };
        Ok::<_, CliError>((eh, sse, what))
    };
    let (mut eh, mut sse, what) = tokio::select! {
        r = connect => r?,
        () = sleep_until(deadline) => return timed_out(seen),
        _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
        () = &mut reader_left => crate::out::reader_gone(),
    };
    let scope = cfg.device.as_deref().unwrap_or("all devices");
    let host = cfg.target.as_ref().map_or_else(
        || {
            cfg.eventhub
                .as_ref()
                .map(EventHubEndpoint::endpoint)
                .unwrap_or_default()
        },
        |t| t.host().to_owned(),
    );
    errln!(
        "monitoring events of {host} ({scope}): {}; Ctrl-C to stop",
        what.join(" and ")
    );
    // Telemetry from the stream only when no Event Hub gives it.
    let stream_telemetry = matches!(source, TelemetrySource::Stream);
    loop {
        let ev = tokio::select! {
            r = next_eh(&mut eh) => match r {
                // The endpoint also carries the events a hub routes there (twin changes,
                // lifecycle, connection state); those come from the stream.
                Some(Ok(ev)) if !is_telemetry(&ev) => continue,
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(CliError::runtime(e)),
                None => return Err(CliError::runtime(MonitorError::EventHubClosed { seen })),
            },
            r = next_sse(&mut sse) => match r.map_err(CliError::runtime)? {
                Some(StreamItem::Event(ev)) => {
                    if !stream_telemetry && event_type(&ev) == "telemetry" {
                        continue;
                    }
                    ev
                }
                Some(StreamItem::Ready) => continue,
                None => return Err(CliError::runtime(MonitorError::Closed { seen })),
            },
            () = sleep_until(deadline) => return timed_out(seen),
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            () = &mut reader_left => crate::out::reader_gone(),
        };
        let ty = event_type(&ev);
        if !cfg.types.is_empty() && !cfg.types.iter().any(|k| k.matches(ty)) {
            continue;
        }
        if let Some(d) = &cfg.device
            && ev.get("deviceId").and_then(Value::as_str) != Some(d.as_str())
        {
            continue;
        }
        if cfg.json {
            outln!("{ev}");
        } else {
            outln!("{}", render_line(&ev, &rfc3339(unix_now())));
        }
        seen += 1;
        if cfg.count.is_some_and(|n| seen >= n) {
            if let Some(s) = eh {
                s.close().await;
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Whether an event read from the Event Hubs-compatible endpoint is device telemetry (its
/// `iothub-message-source` is `Telemetry`, or absent as on any plain Event Hub).
fn is_telemetry(ev: &Value) -> bool {
    ev.pointer("/annotations/iothub-message-source")
        .and_then(Value::as_str)
        .is_none_or(|s| s == "Telemetry")
}

async fn next_eh(
    eh: &mut Option<EhStream>,
) -> Option<Result<Value, crate::service::amqp::AmqpClientError>> {
    match eh {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn next_sse(
    sse: &mut Option<SseStream>,
) -> Result<Option<StreamItem>, crate::service::client::ServiceError> {
    match sse {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
