//! `POST /devices/query`: the IoT Hub query language (see `crate::query`) over the device
//! twins, module twins (each as `GET /twins/...` shows it) and device job results, with Azure's
//! paging: `x-ms-max-item-count` (default 100, at most 1000: "the service may use a different
//! value") and an opaque `x-ms-continuation` token in both directions, `x-ms-item-type` on the
//! answer (`DeviceTwin`, `ModuleTwin`, `DeviceJob`, or `JSON` for projections and counts).
//!
//! Each page runs the query again over the current documents and skips to the token's offset
//! (the documents are in id order), so a page reflects the registry when it is read, as on
//! Azure where paging is not a snapshot either.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::twins::{twin_c2d_count, twin_json};
use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::HubError;
use crate::query::{self, QueryError, Source};
use crate::store::Identity;

/// Rows per page when the caller does not say.
pub(super) const DEFAULT_PAGE: usize = 100;
/// The largest page the hub serves.
pub(super) const MAX_PAGE: usize = 1000;

/// A query the hub cannot parse: 400 with the position in the message.
pub(super) fn query_error(e: &QueryError) -> ApiError {
    ApiError::bad(e.to_string())
}

/// Every device (`modules` false) or every module (`modules` true) with the C2D depth its twin
/// shows, in id order.
fn identities(c: &Connection, modules: bool) -> Result<Vec<(Identity, u32)>, HubError> {
    let sql = if modules {
        "SELECT device_id, module_id, data FROM identities WHERE module_id <> '' \
         ORDER BY device_id, module_id"
    } else {
        "SELECT device_id, module_id, data FROM identities WHERE module_id = '' ORDER BY device_id"
    };
    let db = |e: rusqlite::Error| HubError::Store(e.to_string());
    let mut st = c.prepare_cached(sql).map_err(db)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (device, module, data) = row.map_err(db)?;
        // A row whose JSON does not parse is skipped, as the registry listing does.
        let Ok(mut i) = serde_json::from_str::<Identity>(&data) else {
            continue;
        };
        i.device_id = device;
        i.module_id = (!module.is_empty()).then_some(module);
        let depth = twin_c2d_count(c, &i)?;
        out.push((i, depth));
    }
    Ok(out)
}

/// The twins of every device, or of every module, as the REST API shows them.
pub(super) async fn twins(hub: &Shared, modules: bool) -> Result<Vec<Value>, HubError> {
    let rows = hub.store.call(move |c| identities(c, modules)).await?;
    Ok(rows.iter().map(|(i, d)| twin_json(hub, i, *d)).collect())
}

/// The documents `source` names.
async fn documents(hub: &Shared, source: Source) -> Result<Vec<Value>, HubError> {
    match source {
        Source::Devices => twins(hub, false).await,
        Source::Modules => twins(hub, true).await,
        Source::Jobs => super::job_store::all_device_jobs(hub).await,
    }
}

fn page_size(headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(v) = headers.get("x-ms-max-item-count") else {
        return Ok(DEFAULT_PAGE);
    };
    match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
        Some(0) | None => Err(ApiError::bad(
            "x-ms-max-item-count must be a positive integer",
        )),
        Some(n) => Ok(n.min(MAX_PAGE)),
    }
}

/// The offset a continuation token stands for.
pub(super) fn continuation(headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(v) = headers.get("x-ms-continuation") else {
        return Ok(0);
    };
    let bad = || ApiError::bad("x-ms-continuation is not a token this hub gave");
    let text = v.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v.get("offset")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(bad)
}

/// The continuation token of the page starting at `offset`.
pub(super) fn token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(json!({"offset": offset}).to_string())
}

/// One page of `rows` from `offset`, with the paging headers.
fn page(rows: Vec<Value>, offset: usize, size: usize, item_type: &'static str) -> Response {
    let total = rows.len();
    let end = offset.saturating_add(size).min(total);
    let items: Vec<Value> = rows.into_iter().skip(offset).take(size).collect();
    let mut r = json_ok(StatusCode::OK, Value::Array(items));
    let h = r.headers_mut();
    h.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if end < total
        && let Ok(v) = HeaderValue::from_str(&token(end))
    {
        h.insert("x-ms-continuation", v);
    }
    r
}

/// `POST /devices/query` with `{"query": "SELECT ..."}`.
pub(super) async fn query_devices(
    State(hub): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = parse_json(&body)?;
    let text = body
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("query is required"))?;
    let q = query::parse(text).map_err(|e| query_error(&e))?;
    let size = page_size(&headers)?;
    let offset = continuation(&headers)?;
    let docs = documents(&hub, q.source).await?;
    let out = query::run(&q, docs);
    Ok(page(out.rows, offset, size, out.item_type))
}
