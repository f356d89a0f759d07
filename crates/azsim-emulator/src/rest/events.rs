//! The emulator-only event stream (`/emulator/events`, server-sent events) and its recent
//! telemetry (`/emulator/events/recent`). Not part of Azure.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::Value;
use tokio_stream::wrappers::BroadcastStream;

use super::{ApiResult, Shared, json_ok};
use crate::store::q;

#[derive(Deserialize)]
pub(super) struct EventQuery {
    #[serde(rename = "deviceId")]
    device_id: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn events_sse(
    State(hub): State<Shared>,
    Query(eq): Query<EventQuery>,
) -> impl IntoResponse {
    let rx = hub.events.subscribe();
    let filter = eq.device_id;
    let mut shutdown = hub.shutdown.subscribe();
    let ready =
        futures::stream::once(async { Ok::<Event, Infallible>(Event::default().comment("ready")) });
    let live = BroadcastStream::new(rx).filter_map(move |r| {
        let out = match r {
            Ok(ev) if filter.as_deref().is_none_or(|d| d == ev.device_id) => {
                Some(Ok(Event::default().data(ev.json.clone())))
            }
            _ => None,
        };
        async move { out }
    });
    let stream = ready
        .chain(live)
        .take_until(async move { crate::hub::until_shutdown(&mut shutdown).await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

pub(super) async fn events_recent(
    State(hub): State<Shared>,
    Query(eq): Query<EventQuery>,
) -> ApiResult {
    hub.store.flush().await;
    let limit = eq.limit.unwrap_or(100).min(hub.cfg.limits.event_log_cap);
    let d = eq.device_id;
    let rows = hub
        .store
        .call(move |c| q::recent_events(c, d.as_deref(), limit))
        .await?;
    let v: Vec<Value> = rows
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    Ok(json_ok(StatusCode::OK, Value::Array(v)))
}
