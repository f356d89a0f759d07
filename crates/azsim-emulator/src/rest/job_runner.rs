//! Running jobs v2 in the hub: one tokio task per job waits for its start time, picks the
//! devices whose twins satisfy its condition, and reaches each of them (up to
//! [`PARALLEL_DEVICES`] at a time): a method job through the hub's method broker
//! (`Hub::invoke_method`, as `POST /twins/{id}/methods`), a twin job through the REST twin
//! PATCH handler itself (`twins::patch_twin`, so the same rules, version bumps and desired
//! pushes apply). Device results are written as they come, in group commits.
//!
//! Cancelling is a status in the store that the task reads when its start time comes and before
//! each device; a device call already in progress completes. After a restart,
//! [`resume`] runs the jobs still `queued`; a job that was `running` when the hub stopped is
//! marked `failed` (its devices not reached are `failed` too): it is not run twice.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::job_store as store;
use super::jobs::{METHOD_JOB, TWIN_JOB};
use super::{ApiError, Shared};
use crate::HubError;
use crate::hub::MethodError;

/// Devices reached at once by one job.
pub(super) const PARALLEL_DEVICES: usize = 16;

/// Whether a job can still run (or be cancelled).
pub(super) fn is_unfinished(job: &Value) -> bool {
    matches!(
        job.get("status").and_then(Value::as_str),
        Some("queued" | "scheduled" | "running")
    )
}

fn status(job: &Value) -> &str {
    job.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Starts the task of job `id`.
pub(super) fn spawn(hub: Shared, id: String) {
    tokio::spawn(async move {
        if let Err(e) = run(&hub, &id).await {
            tracing::warn!(job = %id, error = %e, "job failed in the store");
        }
    });
}

/// At hub start: runs the `queued` jobs, fails the ones a stop interrupted.
pub(super) async fn resume(hub: Shared) {
    let now = hub.clock().now_rfc3339();
    let r = hub
        .store
        .call(move |c| {
            let mut queued = Vec::new();
            for mut j in store::all_jobs(c)? {
                let id = j["jobId"].as_str().unwrap_or_default().to_string();
                match status(&j) {
                    "queued" | "scheduled" => queued.push(id),
                    "running" => {
                        for mut row in store::device_jobs(c, &id, None)? {
                            if matches!(status(&row), "pending" | "scheduled" | "running") {
                                row["status"] = json!("failed");
                                row["endTimeUtc"] = json!(now);
                                row["lastUpdatedDateTimeUtc"] = json!(now);
                                row["error"] = json!({"code": "JobInterrupted",
                                    "description": "the hub stopped while the job ran"});
                                let device =
                                    row["deviceId"].as_str().unwrap_or_default().to_string();
                                store::put_device_job(c, &id, &device, &row)?;
                            }
                        }
                        if let Some(m) = j.as_object_mut() {
                            m.remove("deviceJobStatistics");
                        }
                        j["status"] = json!("failed");
                        j["failureReason"] = json!("the hub stopped while the job ran");
                        j["endTime"] = json!(now);
                        store::put_job(c, &id, &j)?;
                    }
                    _ => {}
                }
            }
            Ok(queued)
        })
        .await;
    match r {
        Ok(ids) => {
            for id in ids {
                spawn(hub.clone(), id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "resuming jobs failed"),
    }
}

async fn load(hub: &Shared, id: &str) -> Result<Option<Value>, HubError> {
    let id = id.to_string();
    hub.store.call(move |c| store::job(c, &id)).await
}

async fn save(hub: &Shared, job: &Value) -> Result<(), HubError> {
    let job = job.clone();
    hub.store
        .call(move |c| store::put_job(c, job["jobId"].as_str().unwrap_or_default(), &job))
        .await
}

/// Writes device rows of a job in one transaction (one commit, one fsync, for all of them).
async fn save_rows(hub: &Shared, job_id: &str, rows: Vec<Value>) -> Result<(), HubError> {
    let job_id = job_id.to_string();
    hub.store
        .call(move |c| {
            let tx = c
                .transaction()
                .map_err(|e| HubError::Store(e.to_string()))?;
            for row in &rows {
                let device = row["deviceId"].as_str().unwrap_or_default();
                store::put_device_job(&tx, &job_id, device, row)?;
            }
            tx.commit().map_err(|e| HubError::Store(e.to_string()))
        })
        .await
}

/// Writes the device rows sent on `rx` until every sender is gone, each time as one
/// transaction holding whatever has queued up meanwhile (group commit: reaching 10,000 devices
/// does not cost 20,000 commits).
async fn write_rows(hub: Shared, job_id: String, mut rx: mpsc::UnboundedReceiver<Value>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(row) = rx.try_recv() {
            batch.push(row);
        }
        if let Err(e) = save_rows(&hub, &job_id, batch).await {
            tracing::warn!(job = %job_id, error = %e, "job device rows not saved");
        }
    }
}

/// Unix ms of a job's `startTime` (as written by `create_job`).
fn start_ms(job: &Value) -> u64 {
    use time::format_description::well_known::Rfc3339;
    job.get("startTime")
        .and_then(Value::as_str)
        .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .unwrap_or(0)
}

/// Waits for the start time; false when the hub stops first. (A job cancelled meanwhile is
/// seen when its time comes: the task then ends without reaching a device.)
async fn wait_for_start(hub: &Shared, at_ms: u64) -> bool {
    let mut shutdown = hub.shutdown.subscribe();
    tokio::select! {
        () = hub.clock().sleep_until_ms(at_ms) => true,
        () = crate::hub::until_shutdown(&mut shutdown) => false,
    }
}

async fn run(hub: &Shared, id: &str) -> Result<(), HubError> {
    let Some(job) = load(hub, id).await? else {
        return Ok(());
    };
    if !wait_for_start(hub, start_ms(&job)).await {
        return Ok(());
    }
    let Some(mut job) = load(hub, id).await? else {
        return Ok(());
    };
    if !is_unfinished(&job) {
        return Ok(());
    }
    job["status"] = json!("running");
    save(hub, &job).await?;
    let condition = job["queryCondition"].as_str().unwrap_or_default();
    let devices: Vec<String> = match crate::query::parse_condition(condition) {
        Ok(cond) => super::query::twins(hub, false)
            .await?
            .into_iter()
            .filter(|t| crate::query::matches(&cond, t))
            .filter_map(|t| t["deviceId"].as_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    let kind = job["type"].as_str().unwrap_or_default().to_string();
    let created = hub.clock().now_rfc3339();
    let rows: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "deviceId": d, "jobId": id, "jobType": kind, "status": "pending",
                "startTimeUtc": null, "endTimeUtc": null,
                "createdDateTimeUtc": created, "lastUpdatedDateTimeUtc": created,
                "outcome": {"deviceMethodResponse": null},
            })
        })
        .collect();
    save_rows(hub, id, rows.clone()).await?;
    let deadline = start_ms(&job).saturating_add(
        job["maxExecutionTimeInSeconds"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_mul(1000),
    );
    let job = Arc::new(job);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_rows(hub.clone(), id.to_string(), rx));
    futures::stream::iter(rows)
        .for_each_concurrent(PARALLEL_DEVICES, |row| {
            let (hub, job, tx) = (hub.clone(), job.clone(), tx.clone());
            async move {
                if let Err(e) = reach_device(&hub, &job, row, deadline, &tx).await {
                    tracing::warn!(job = %job["jobId"], error = %e, "job device not reached");
                }
            }
        })
        .await;
    // Every row is written before the job says it is done.
    drop(tx);
    let _ = writer.await;
    if *hub.shutdown.borrow() {
        return Ok(());
    }
    // A cancellation while the devices were reached stands; otherwise the job is done.
    if let Some(mut j) = load(hub, id).await?
        && status(&j) == "running"
    {
        j["status"] = json!("completed");
        j["endTime"] = json!(hub.clock().now_rfc3339());
        save(hub, &j).await?;
    }
    Ok(())
}

/// Runs the job on one device and records the result.
async fn reach_device(
    hub: &Shared,
    job: &Value,
    mut row: Value,
    deadline_ms: u64,
    rows: &mpsc::UnboundedSender<Value>,
) -> Result<(), HubError> {
    let id = job["jobId"].as_str().unwrap_or_default();
    let device = row["deviceId"].as_str().unwrap_or_default().to_string();
    let current = load(hub, id).await?;
    let stop = match current.as_ref().map(status) {
        Some("running") if hub.clock().unix_ms() > deadline_ms => Some((
            "failed",
            Some(json!({"code": "JobTimedOut",
                "description": "the job's maxExecutionTimeInSeconds ran out before this device"})),
        )),
        Some("running") => None,
        _ => Some(("canceled", None)),
    };
    if *hub.shutdown.borrow() {
        return Ok(());
    }
    let now = hub.clock().now_rfc3339();
    if let Some((s, error)) = stop {
        row["status"] = json!(s);
        row["endTimeUtc"] = json!(now);
        row["lastUpdatedDateTimeUtc"] = json!(now);
        if let Some(e) = error {
            row["error"] = e;
        }
        let _ = rows.send(row);
        return Ok(());
    }
    row["status"] = json!("running");
    row["startTimeUtc"] = json!(now);
    row["lastUpdatedDateTimeUtc"] = json!(now);
    let _ = rows.send(row.clone());
    let result = match job["type"].as_str() {
        Some(METHOD_JOB) => invoke(hub, &device, &job["cloudToDeviceMethod"]).await,
        Some(TWIN_JOB) => update_twin(hub, &device, &job["updateTwin"]).await,
        _ => Err(json!({"code": "ArgumentInvalid", "description": "unknown job type"})),
    };
    let now = hub.clock().now_rfc3339();
    row["endTimeUtc"] = json!(now);
    row["lastUpdatedDateTimeUtc"] = json!(now);
    match result {
        Ok(outcome) => {
            row["status"] = json!("completed");
            row["outcome"] = outcome;
        }
        Err(error) => {
            row["status"] = json!("failed");
            row["error"] = error;
        }
    }
    let _ = rows.send(row);
    Ok(())
}

/// A device's method call; `Ok` carries the outcome, `Err` the row's `error`.
async fn invoke(hub: &Shared, device: &str, spec: &Value) -> Result<Value, Value> {
    let name = spec["methodName"].as_str().unwrap_or_default();
    let method = azsim_proto::topic::MethodName::new(name)
        .map_err(|e| json!({"code": "ArgumentInvalid", "description": e.to_string()}))?;
    let secs = |k: &str, d: u64| Duration::from_secs(spec[k].as_u64().unwrap_or(d));
    // Charged as a direct method is (`quota`), refused as Azure refuses a billable operation.
    let billed = crate::quota::Billed::MethodJob;
    let request_bytes = serde_json::to_vec(&spec["payload"]).map_or(0, |v| v.len());
    if !crate::quota::charge(hub, billed, request_bytes) {
        return Err(json!({"code": "IoTHubQuotaExceeded", "description": crate::quota::EXCEEDED}));
    }
    let r = hub
        .invoke_method(
            device,
            None,
            method,
            &spec["payload"],
            secs("responseTimeoutInSeconds", 30),
            secs("connectTimeoutInSeconds", 0),
        )
        .await;
    match &r {
        Ok((_, body)) => crate::quota::record(hub, billed, body.len()),
        Err(MethodError::NotOnline) => crate::quota::record(hub, billed, 0),
        Err(MethodError::Timeout) => {}
    }
    match r {
        Ok((status, body)) => {
            let payload = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            };
            Ok(json!({"deviceMethodResponse": {"status": status, "payload": payload}}))
        }
        Err(MethodError::NotOnline) => Err(json!({"code": "DeviceNotOnline",
            "description": "Timed out waiting for device to connect."})),
        Err(MethodError::Timeout) => Err(json!({"code": "GatewayTimeout",
            "description": "Timed out waiting for the response from device."})),
    }
}

/// A device's twin PATCH, through the REST handler itself.
async fn update_twin(hub: &Shared, device: &str, patch: &Value) -> Result<Value, Value> {
    let body = Bytes::from(patch.to_string());
    let r = super::twins::patch_twin(
        State(hub.clone()),
        Path(device.to_string()),
        HeaderMap::new(),
        body,
    )
    .await;
    match r {
        Ok(_) => Ok(json!({"deviceMethodResponse": null})),
        Err(ApiError { name, message, .. }) => Err(json!({"code": name, "description": message})),
    }
}
