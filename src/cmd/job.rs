//! `azsim job invoke | twin | show | list | cancel`: jobs v2 through the hub's REST API
//! (`/jobs/v2/{id}`, `/jobs/v2/{id}/cancel`, `/jobs/v2/query`), device results through a
//! `FROM devices.jobs` query.

use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::query::{paged, print_rows};
use crate::cli::job::{JobAction, JobConfig, StartAt};
use crate::error::CliError;
use crate::out::outln;
use crate::service::output::to_text;
use crate::service::{ServiceClient, ServiceError};

/// How often `--wait` reads the job.
const WAIT_POLL: Duration = Duration::from_millis(500);

fn rfc3339_after(d: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + d;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn get_job(client: &ServiceClient, id: &str) -> Result<Value, ServiceError> {
    let (rb, url) = client.request(Method::GET, &format!("/jobs/v2/{id}"));
    client.json(rb, &url).await
}

fn is_finished(job: &Value) -> bool {
    !matches!(
        job.get("status").and_then(Value::as_str),
        Some("queued" | "scheduled" | "running" | "enqueued")
    )
}

/// One line: `job ID (TYPE) STATUS: N devices (a succeeded, b failed, c running, d pending)`.
fn summary(job: &Value) -> String {
    let s = |k: &str| job.get(k).and_then(Value::as_str).unwrap_or("-");
    let n = |k: &str| {
        job.pointer(&format!("/deviceJobStatistics/{k}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let mut line = format!(
        "job {} ({}) {}: {} devices ({} succeeded, {} failed, {} running, {} pending)",
        s("jobId"),
        s("type"),
        s("status"),
        n("deviceCount"),
        n("succeededCount"),
        n("failedCount"),
        n("runningCount"),
        n("pendingCount")
    );
    if let Some(r) = job.get("failureReason").and_then(Value::as_str) {
        line.push_str(&format!("; {r}"));
    }
    line
}

/// One device's result: `DEVICE STATUS` and the method answer or the error.
fn device_line(row: &Value) -> String {
    let s = |p: &str| row.pointer(p).and_then(Value::as_str).unwrap_or("-");
    let detail = match (
        row.pointer("/outcome/deviceMethodResponse"),
        row.get("error"),
    ) {
        (_, Some(e)) if !e.is_null() => {
            format!("{}: {}", s("/error/code"), s("/error/description"))
        }
        (Some(r), _) if !r.is_null() => format!(
            "status {} payload {}",
            r.get("status").unwrap_or(&Value::Null),
            r.get("payload").unwrap_or(&Value::Null)
        ),
        _ => String::new(),
    };
    format!("  {}  {}  {detail}", s("/deviceId"), s("/status"))
        .trim_end()
        .to_string()
}

fn print_job(job: &Value, json: bool) {
    if json {
        outln!("{}", to_text(job, true));
    } else {
        outln!("{}", summary(job));
    }
}

/// Runs the job subcommand.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (`404` for an unknown job, `409` for an id in
/// use, `400004` for a bad condition with its line and column) or a transport error.
pub async fn run(cfg: JobConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    match cfg.action {
        JobAction::Create {
            id,
            mut body,
            start,
            wait,
        } => {
            match start {
                StartAt::Now => {}
                StartAt::At(t) => body["startTime"] = Value::String(t),
                StartAt::After(d) => body["startTime"] = Value::String(rfc3339_after(d)),
            }
            let (rb, url) = client.request(Method::PUT, &format!("/jobs/v2/{id}"));
            let mut job = client
                .json(rb.json(&body), &url)
                .await
                .map_err(CliError::runtime)?;
            if !wait {
                print_job(&job, cfg.json);
                return Ok(ExitCode::SUCCESS);
            }
            while !is_finished(&job) {
                tokio::time::sleep(WAIT_POLL).await;
                job = get_job(&client, &id).await.map_err(CliError::runtime)?;
            }
            print_job(&job, cfg.json);
            let completed = job.get("status").and_then(Value::as_str) == Some("completed");
            Ok(if completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JobAction::Show { id, devices } => {
            let job = get_job(&client, &id).await.map_err(CliError::runtime)?;
            if !devices {
                print_job(&job, cfg.json);
                return Ok(ExitCode::SUCCESS);
            }
            // Job ids here are letters, digits, - _ . only: safe inside the quoted literal.
            let q = format!("SELECT * FROM devices.jobs WHERE jobId = '{id}'");
            let rows = paged(&client, "/devices/query", Some(&q), 1000, None)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                let mut all = job;
                all["devices"] = Value::Array(rows);
                outln!("{}", to_text(&all, true));
            } else {
                outln!("{}", summary(&job));
                for r in &rows {
                    outln!("{}", device_line(r));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobAction::List { job_type, status } => {
            let mut path = String::from("/jobs/v2/query");
            let mut sep = '?';
            for (k, v) in [("jobType", job_type), ("jobStatus", status)] {
                if let Some(v) = v {
                    path.push_str(&format!("{sep}{k}={v}"));
                    sep = '&';
                }
            }
            let jobs = paged(&client, &path, None, 100, None)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                print_rows(&jobs, true);
            } else if jobs.is_empty() {
                outln!("no jobs");
            } else {
                for j in &jobs {
                    outln!("{}", summary(j));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobAction::Cancel { id } => {
            let (rb, url) = client.request(Method::POST, &format!("/jobs/v2/{id}/cancel"));
            let job = client.json(rb, &url).await.map_err(CliError::runtime)?;
            print_job(&job, cfg.json);
            Ok(ExitCode::SUCCESS)
        }
    }
}
