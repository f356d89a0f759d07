//! Jobs v2, Azure's scheduled jobs: `PUT /jobs/v2/{id}` creates a `scheduleDeviceMethod` job
//! (`cloudToDeviceMethod`: `methodName`, `payload`, `responseTimeoutInSeconds`,
//! `connectTimeoutInSeconds`) or a `scheduleUpdateTwin` job (`updateTwin`: `tags` and
//! `properties.desired`) over the devices whose twins satisfy `queryCondition` (the condition
//! of a `WHERE` clause), from `startTime` for at most `maxExecutionTimeInSeconds`;
//! `GET /jobs/v2/{id}` shows it with its `deviceJobStatistics`, `POST /jobs/v2/{id}/cancel`
//! cancels it, `GET /jobs/v2/query?jobType=&jobStatus=` lists jobs (paged like queries), and
//! `FROM devices.jobs` in a query reads each device's result. The work is in `job_runner.rs`,
//! the tables in `job_store.rs`.
//!
//! Job status: `queued` until its start time, `running`, then `completed` (whatever each
//! device's outcome: those are in the device rows and the statistics), `cancelled`, or
//! `failed` (the hub stopped while it ran: see `job_runner::resume`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::job_runner;
use super::job_store as store;
use super::query::{DEFAULT_PAGE, MAX_PAGE, continuation, query_error, token};
use super::{ApiError, ApiResult, Shared, json_ok, parse_json};
use crate::twin;

/// The job types jobs v2 runs.
pub(super) const METHOD_JOB: &str = "scheduleDeviceMethod";
pub(super) const TWIN_JOB: &str = "scheduleUpdateTwin";

/// The longest `maxExecutionTimeInSeconds` taken, and the default (inferred: Azure documents
/// neither; its SDK samples use 3600).
const MAX_EXECUTION_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_EXECUTION_SECS: u64 = 3600;

fn job_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404002,
        "JobNotFound",
        format!("Job {id} not found"),
    )
}

/// Unix milliseconds of an ISO 8601 / RFC 3339 time (`2026-12-05T08:00:00Z`; without an
/// offset, UTC as Azure reads it).
fn parse_time(s: &str) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339))
        .ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn seconds(body: &Value, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        },
    }
}

/// The `cloudToDeviceMethod` of a method job, checked as a direct method call is.
fn method_spec(body: &Value) -> Result<Value, ApiError> {
    let m = body
        .get("cloudToDeviceMethod")
        .filter(|v| v.is_object())
        .ok_or_else(|| ApiError::bad("cloudToDeviceMethod is required for scheduleDeviceMethod"))?;
    let name = m
        .get("methodName")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("cloudToDeviceMethod.methodName is required"))?;
    azsim_proto::topic::MethodName::new(name)
        .map_err(|e| ApiError::bad(format!("cloudToDeviceMethod.methodName: {e}")))?;
    let response = seconds(m, "responseTimeoutInSeconds", 30, 5, 300)?;
    let connect = seconds(m, "connectTimeoutInSeconds", 0, 0, 300)?;
    Ok(json!({
        "methodName": name,
        "payload": m.get("payload").cloned().unwrap_or(Value::Null),
        "responseTimeoutInSeconds": response,
        "connectTimeoutInSeconds": connect,
    }))
}

/// The `updateTwin` of a twin job: its tags and desired properties, checked as a twin PATCH
/// checks them (the PATCH itself checks again when it runs).
fn twin_spec(body: &Value) -> Result<Value, ApiError> {
    let t = body
        .get("updateTwin")
        .filter(|v| v.is_object())
        .ok_or_else(|| ApiError::bad("updateTwin is required for scheduleUpdateTwin"))?;
    let mut out = Map::new();
    if let Some(tags) = t.get("tags").filter(|v| !v.is_null()) {
        out.insert("tags".into(), tags.clone());
    }
    if let Some(d) = t.pointer("/properties/desired").filter(|v| !v.is_null()) {
        out.insert("properties".into(), json!({ "desired": d }));
    }
    let whole = Value::Object(out.clone());
    for (ptr, what) in [
        ("/tags", "updateTwin.tags"),
        ("/properties/desired", "updateTwin.properties.desired"),
    ] {
        match whole.pointer(ptr) {
            None => {}
            Some(Value::Object(m)) => {
                let mut m = m.clone();
                twin::strip_meta(&mut m);
                twin::validate_patch(&m).map_err(|e| ApiError::bad(format!("{what}: {e}")))?;
            }
            Some(_) => return Err(ApiError::bad(format!("{what} must be a JSON object"))),
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad("updateTwin needs tags or properties.desired"));
    }
    Ok(Value::Object(out))
}

/// `PUT /jobs/v2/{id}`.
pub(super) async fn create_job(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    super::check_id("jobId", &id)?;
    let body = parse_json(&body)?;
    if let Some(given) = body.get("jobId").and_then(Value::as_str)
        && given != id
    {
        return Err(ApiError::bad(format!(
            "jobId '{given}' in the body differs from '{id}' in the path"
        )));
    }
    let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
    let (kind, spec_key, spec) = match kind {
        METHOD_JOB => (METHOD_JOB, "cloudToDeviceMethod", method_spec(&body)?),
        TWIN_JOB => (TWIN_JOB, "updateTwin", twin_spec(&body)?),
        other => {
            return Err(ApiError::bad(format!(
                "type '{other}' is not a job type: {METHOD_JOB} or {TWIN_JOB}"
            )));
        }
    };
    let condition = body
        .get("queryCondition")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::bad("queryCondition is required"))?;
    crate::query::parse_condition(condition).map_err(|e| query_error(&e))?;
    let now_ms = hub.clock().unix_ms();
    let start_ms = match body.get("startTime").and_then(Value::as_str) {
        None => now_ms,
        Some(s) => {
            parse_time(s).ok_or_else(|| ApiError::bad(format!("startTime '{s}' is not a time")))?
        }
    };
    let max_secs = seconds(
        &body,
        "maxExecutionTimeInSeconds",
        DEFAULT_EXECUTION_SECS,
        1,
        MAX_EXECUTION_SECS,
    )?;
    let mut job = json!({
        "jobId": id,
        "queryCondition": condition,
        "createdTime": hub.clock().now_rfc3339(),
        "startTime": crate::clock::azure_time_ms(i64::try_from(start_ms).unwrap_or(i64::MAX)),
        "endTime": null,
        "maxExecutionTimeInSeconds": max_secs,
        "type": kind,
        "status": "queued",
        "failureReason": null,
        "statusMessage": null,
    });
    job[spec_key] = spec;
    let created_us = i64::try_from(hub.clock().unix_us()).unwrap_or(i64::MAX);
    let (jid, stored) = (id.clone(), job.clone());
    let view = hub
        .store
        .call(move |c| {
            if !store::insert_job(c, &jid, created_us, &stored)? {
                return Ok(None);
            }
            store::job_view(c, &jid)
        })
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                409001,
                "JobAlreadyExists",
                format!("A job with id {id} already exists"),
            )
        })?;
    job_runner::spawn(hub.clone(), id);
    Ok(json_ok(StatusCode::OK, view))
}

/// `GET /jobs/v2/{id}`.
pub(super) async fn get_job(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let jid = id.clone();
    match hub.store.call(move |c| store::job_view(c, &jid)).await? {
        Some(j) => Ok(json_ok(StatusCode::OK, j)),
        None => Err(job_not_found(&id)),
    }
}

/// `POST /jobs/v2/{id}/cancel`: a job not yet finished becomes `cancelled` (a device call in
/// progress completes; no further device is reached); a finished job is shown as it is.
pub(super) async fn cancel_job(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let jid = id.clone();
    let now = hub.clock().now_rfc3339();
    let view = hub
        .store
        .call(move |c| {
            let Some(mut j) = store::job(c, &jid)? else {
                return Ok(None);
            };
            if job_runner::is_unfinished(&j) {
                j["status"] = json!("cancelled");
                j["endTime"] = json!(now);
                store::put_job(c, &jid, &j)?;
            }
            store::job_view(c, &jid)
        })
        .await?;
    view.map(|j| json_ok(StatusCode::OK, j))
        .ok_or_else(|| job_not_found(&id))
}

/// The filters of `GET /jobs/v2/query`.
#[derive(Debug, Deserialize)]
pub(super) struct JobFilter {
    #[serde(rename = "jobType")]
    job_type: Option<String>,
    #[serde(rename = "jobStatus")]
    job_status: Option<String>,
}

/// `GET /jobs/v2/query?jobType=&jobStatus=`: the jobs (oldest first), paged as a query is
/// (`x-ms-max-item-count`, `x-ms-continuation`), in a `QueryResult` body (`type`
/// `jobResponse`, `items`, `continuationToken`) as the service API's definition and the SDKs
/// read it (unlike `/devices/query`, whose body is the bare array).
pub(super) async fn query_jobs(
    State(hub): State<Shared>,
    Query(filter): Query<JobFilter>,
    headers: HeaderMap,
) -> ApiResult {
    let size = match headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
    {
        None => DEFAULT_PAGE,
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => n.min(MAX_PAGE),
            _ => {
                return Err(ApiError::bad(
                    "x-ms-max-item-count must be a positive integer",
                ));
            }
        },
    };
    let offset = continuation(&headers)?;
    let jobs = hub.store.call(|c| store::all_jobs(c)).await?;
    let wanted = |j: &Value, key: &str, want: &Option<String>| {
        want.as_deref()
            .is_none_or(|w| w.is_empty() || j.get(key).and_then(Value::as_str) == Some(w))
    };
    let rows: Vec<Value> = jobs
        .into_iter()
        .filter(|j| wanted(j, "type", &filter.job_type) && wanted(j, "status", &filter.job_status))
        .collect();
    let total = rows.len();
    let end = offset.saturating_add(size).min(total);
    let next = (end < total).then(|| token(end));
    let items: Vec<Value> = rows.into_iter().skip(offset).take(size).collect();
    let mut r = json_ok(
        StatusCode::OK,
        json!({"type": "jobResponse", "items": items, "continuationToken": next}),
    );
    if let Some(t) = next
        && let Ok(v) = axum::http::HeaderValue::from_str(&t)
    {
        r.headers_mut().insert("x-ms-continuation", v);
    }
    Ok(r)
}
