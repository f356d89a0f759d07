//! `POST /devices/query`: the IoT Hub query language (see `crate::query`) over the device
//! twins, module twins (each as `GET /twins/...` shows it) and device job results, with Azure's
//! paging: `x-ms-max-item-count` (default 100, at most 1000: "the service may use a different
//! value") and an opaque `x-ms-continuation` token in both directions, `x-ms-item-type` on the
//! answer (`DeviceTwin`, `ModuleTwin`, `DeviceJob`, or `JSON` for projections and counts).
//!
//! Twins are read in id order and a page of twin rows ends with a token naming its last
//! identity: the next page reads on from there and stops once it has its rows, so reading every
//! page costs one pass over the registry, and a page reflects the registry when it is read (as
//! on Azure, paging is not a snapshot). Counts, groups and job rows are computed whole for each
//! page, and the token is an offset into them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::twins::{twin_c2d_count, twin_json};
use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::HubError;
use crate::query::{self, Query, QueryError, Source};
use crate::store::Identity;

/// Rows per page when the caller does not say.
pub(super) const DEFAULT_PAGE: usize = 100;
/// The largest page the hub serves.
pub(super) const MAX_PAGE: usize = 1000;

/// A query the hub cannot parse: 400 with the position in the message.
pub(super) fn query_error(e: &QueryError) -> ApiError {
    ApiError::bad(e.to_string())
}

/// The identity of a registry row; `None` (the row is skipped, as the registry listing skips
/// it) when its JSON does not parse.
fn identity(device: String, module: String, data: &str) -> Option<Identity> {
    let mut i = serde_json::from_str::<Identity>(data).ok()?;
    i.device_id = device;
    i.module_id = (!module.is_empty()).then_some(module);
    Some(i)
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
        let Some(i) = identity(device, module, &data) else {
            continue;
        };
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

/// The JSON of the request's continuation token; `None` without one.
fn token_json(headers: &HeaderMap) -> Result<Option<Value>, ApiError> {
    let Some(v) = headers.get("x-ms-continuation") else {
        return Ok(None);
    };
    let text = v.to_str().map_err(|_| bad_token())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| bad_token())?;
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|_| bad_token())
}

fn bad_token() -> ApiError {
    ApiError::bad("x-ms-continuation is not a token this hub gave for this query")
}

/// The offset a continuation token stands for (0 without one).
pub(super) fn continuation(headers: &HeaderMap) -> Result<usize, ApiError> {
    match token_json(headers)? {
        None => Ok(0),
        Some(v) => v
            .get("offset")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(bad_token),
    }
}

/// The continuation token of the page starting at `offset`.
pub(super) fn token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(json!({"offset": offset}).to_string())
}

/// Where a page of twin rows starts: after this identity (device id, module id or empty), with
/// this many rows of a `TOP` still to give.
#[derive(Debug)]
struct After {
    device: String,
    module: String,
    left: Option<u64>,
}

impl After {
    fn from_token(v: &Value) -> Option<After> {
        let ids = v.get("after")?.as_array()?;
        Some(After {
            device: ids.first()?.as_str()?.to_string(),
            module: ids.get(1)?.as_str()?.to_string(),
            left: match v.get("left")? {
                Value::Null => None,
                n => Some(n.as_u64()?),
            },
        })
    }

    fn token(&self) -> String {
        let v = json!({"after": [self.device, self.module], "left": self.left});
        base64::engine::general_purpose::STANDARD.encode(v.to_string())
    }
}

/// One page of twin rows: the twins after `from` in id order that `q` keeps, `want` of them at
/// most; also the last one's ids and whether more twins follow it.
async fn twin_page(
    hub: &Shared,
    q: Arc<Query>,
    from: After,
    want: usize,
) -> Result<(Vec<Value>, Option<(String, String)>, bool), HubError> {
    let modules = q.source == Source::Modules;
    let hub2 = hub.clone();
    hub.store
        .call(move |c| {
            let sql = if modules {
                "SELECT device_id, module_id, data FROM identities WHERE module_id <> '' \
                 AND (device_id > ?1 OR (device_id = ?1 AND module_id > ?2)) \
                 ORDER BY device_id, module_id"
            } else {
                "SELECT device_id, module_id, data FROM identities WHERE module_id = '' \
                 AND device_id > ?1 AND ?2 = '' ORDER BY device_id"
            };
            let db = |e: rusqlite::Error| HubError::Store(e.to_string());
            let mut st = c.prepare_cached(sql).map_err(db)?;
            let mut rows = st.query(params![from.device, from.module]).map_err(db)?;
            let (mut out, mut last, mut more) = (Vec::new(), None, false);
            while let Some(r) = rows.next().map_err(db)? {
                let (device, module): (String, String) =
                    (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
                let Some(i) = identity(device, module, &r.get::<_, String>(2).map_err(db)?) else {
                    continue;
                };
                let depth = twin_c2d_count(c, &i)?;
                let doc = twin_json(&hub2, &i, depth);
                if !q.keeps(&doc) {
                    continue;
                }
                if out.len() == want {
                    more = true;
                    break;
                }
                last = Some((i.device_id.clone(), i.module_id.clone().unwrap_or_default()));
                out.push(q.row(doc));
            }
            Ok((out, last, more))
        })
        .await
}

/// A page of rows with its paging headers.
fn respond(rows: Vec<Value>, next: Option<String>, item_type: &'static str) -> Response {
    let mut r = json_ok(StatusCode::OK, Value::Array(rows));
    let h = r.headers_mut();
    h.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if let Some(v) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert("x-ms-continuation", v);
    }
    r
}

/// A query against devices or modules is charged by its result's size (`quota`).
fn charge_result(hub: &Shared, rows: &[Value]) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(rows).map(|v| v.len()).unwrap_or(0);
    super::fault::charge(hub, crate::quota::Billed::Query, bytes)
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
    let item_type = q.item_type();
    if q.is_aggregate() || q.source == Source::Jobs {
        let offset = continuation(&headers)?;
        let docs = documents(&hub, q.source).await?;
        let rows = query::run(&q, docs).rows;
        let total = rows.len();
        let end = offset.saturating_add(size).min(total);
        let page: Vec<Value> = rows.into_iter().skip(offset).take(size).collect();
        // Queries against jobs are not charged; the others by their result (`quota`).
        if q.source != Source::Jobs {
            charge_result(&hub, &page)?;
        }
        return Ok(respond(page, (end < total).then(|| token(end)), item_type));
    }
    let from = match token_json(&headers)? {
        None => After {
            device: String::new(),
            module: String::new(),
            left: q.top,
        },
        Some(v) => After::from_token(&v).ok_or_else(bad_token)?,
    };
    let want = from
        .left
        .map_or(size, |l| size.min(usize::try_from(l).unwrap_or(usize::MAX)));
    if want == 0 {
        return Ok(respond(Vec::new(), None, item_type));
    }
    let left = from.left;
    let (rows, last, more) = twin_page(&hub, Arc::new(q), from, want).await?;
    charge_result(&hub, &rows)?;
    let left = left.map(|l| l.saturating_sub(rows.len() as u64));
    let next = match last {
        Some((device, module)) if more && left != Some(0) => Some(
            After {
                device,
                module,
                left,
            }
            .token(),
        ),
        _ => None,
    };
    Ok(respond(rows, next, item_type))
}
