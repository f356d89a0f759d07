//! `azsim job invoke | twin | show | list | cancel`: clap structs and validation. The work is in
//! `crate::cmd::job`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::service::{HubTargetArgs, json_arg, json_object};
use crate::error::UsageError;
use crate::service::Target;

/// Schedule jobs v2 on the devices a condition selects, and follow them.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: JobCommand,
}

/// `azsim job invoke | twin | show | list | cancel`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Schedule a direct method on every device the condition selects.
    Invoke(JobInvokeArgs),
    /// Schedule a twin update (desired properties and/or tags) on every device the condition
    /// selects.
    Twin(JobTwinArgs),
    /// Print a job with its device statistics (and with --devices, each device's result).
    Show(JobShowArgs),
    /// List the jobs, oldest first.
    List(JobListArgs),
    /// Cancel a job that has not finished.
    Cancel(JobIdArgs),
}

/// What every new job takes: its devices, id, start and time limit.
#[derive(Debug, Args)]
pub struct JobScheduleArgs {
    /// The devices: the condition of a query's WHERE clause, e.g. "tags.site = 'oslo'".
    #[arg(long = "where", value_name = "CONDITION")]
    pub condition: String,
    /// The job id (letters, digits, - _ .) [default: a new random id].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// When to start: an RFC 3339 time (2026-12-05T08:00:00Z) or a delay from now (90s, 5m).
    #[arg(long, value_name = "WHEN")]
    pub start: Option<String>,
    /// The job's time limit (maxExecutionTimeInSeconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub max_time: u64,
    /// Wait until the job has finished and print it then (exit 1 unless it completed).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the job as one compact JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `azsim job invoke METHOD --where COND [--payload JSON] ...`.
#[derive(Debug, Args)]
pub struct JobInvokeArgs {
    /// The method name.
    pub method: String,
    /// JSON payload sent to each device.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Seconds to wait for each device's answer (5..300).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u32,
    /// Seconds to wait for each device to come online (0..300).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub connect_timeout: u32,
    #[command(flatten)]
    pub schedule: JobScheduleArgs,
}

/// `azsim job twin [DESIRED] [--tags JSON] --where COND ...`.
#[derive(Debug, Args)]
pub struct JobTwinArgs {
    /// Desired-properties patch, a JSON object (e.g. '{"interval":5}').
    #[arg(value_name = "DESIRED")]
    pub desired: Option<String>,
    /// Tags patch, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub tags: Option<String>,
    #[command(flatten)]
    pub schedule: JobScheduleArgs,
}

/// `azsim job show ID [--devices]`.
#[derive(Debug, Args)]
pub struct JobShowArgs {
    /// The job id.
    pub id: String,
    /// Also print each device's result (a `FROM devices.jobs` query).
    #[arg(long)]
    pub devices: bool,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print JSON (one compact line).
    #[arg(long)]
    pub json: bool,
}

/// `azsim job list [--type T] [--status S]`.
#[derive(Debug, Args)]
pub struct JobListArgs {
    /// Only jobs of this type: method (scheduleDeviceMethod) or twin (scheduleUpdateTwin).
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: Option<String>,
    /// Only jobs with this status (queued, running, completed, failed, cancelled).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print one compact JSON line per job.
    #[arg(long)]
    pub json: bool,
}

/// `azsim job cancel ID`.
#[derive(Debug, Args)]
pub struct JobIdArgs {
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the job as one compact JSON line.
    #[arg(long)]
    pub json: bool,
}

/// When a new job starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// At once.
    Now,
    /// At this RFC 3339 time (as given).
    At(String),
    /// This long after the command runs.
    After(Duration),
}

/// What `azsim job` does, validated.
#[derive(Debug)]
pub enum JobAction {
    /// `PUT /jobs/v2/{id}` with `body` (its `startTime` filled from `start`).
    Create {
        /// The job id.
        id: String,
        /// The job request without its start time.
        body: Value,
        /// Its start.
        start: StartAt,
        /// Wait for the end.
        wait: bool,
    },
    /// `GET /jobs/v2/{id}`.
    Show {
        /// The job id.
        id: String,
        /// With the device rows.
        devices: bool,
    },
    /// `GET /jobs/v2/query`.
    List {
        /// `jobType`.
        job_type: Option<String>,
        /// `jobStatus`.
        status: Option<String>,
    },
    /// `POST /jobs/v2/{id}/cancel`.
    Cancel {
        /// The job id.
        id: String,
    },
}

/// Validated `azsim job` arguments.
#[derive(Debug)]
pub struct JobConfig {
    /// The hub.
    pub target: Target,
    /// What to do.
    pub action: JobAction,
    /// JSON output.
    pub json: bool,
}

/// A job id: 1..=128 letters, digits, `-`, `_`, `.` (a subset of what the hub takes, so that
/// it needs no escaping in a URL or a shell).
fn job_id(field: &'static str, id: String) -> Result<String, UsageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(id)
    } else {
        Err(UsageError::new(
            field,
            "must be 1 to 128 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn start_at(text: Option<String>) -> Result<StartAt, UsageError> {
    use time::format_description::well_known::Rfc3339;
    let Some(t) = text else {
        return Ok(StartAt::Now);
    };
    if time::OffsetDateTime::parse(&t, &Rfc3339).is_ok() {
        return Ok(StartAt::At(t));
    }
    humantime::parse_duration(&t)
        .map(StartAt::After)
        .map_err(|_| {
            UsageError::new(
                "--start",
                "must be an RFC 3339 time (2026-12-05T08:00:00Z) or a delay (90s, 5m)",
            )
        })
}

impl JobScheduleArgs {
    /// The parts of a new job this struct holds: its id, start, the request's common fields.
    fn common(
        self,
        kind: &str,
    ) -> Result<(Target, String, StartAt, bool, bool, Value), UsageError> {
        if self.condition.trim().is_empty() {
            return Err(UsageError::new("--where", "must not be empty"));
        }
        if !(1..=7 * 24 * 3600).contains(&self.max_time) {
            return Err(UsageError::new(
                "--max-time",
                "must be between 1 and 604800 seconds",
            ));
        }
        let id = match self.id {
            Some(id) => job_id("--id", id)?,
            None => format!("azsim-{}", uuid::Uuid::new_v4().simple()),
        };
        let start = start_at(self.start)?;
        let body = json!({
            "jobId": id, "type": kind, "queryCondition": self.condition,
            "maxExecutionTimeInSeconds": self.max_time,
        });
        Ok((
            self.target.resolve()?,
            id,
            start,
            self.wait,
            self.json,
            body,
        ))
    }
}

/// `--type` as the API spells it.
fn job_type(t: String) -> Result<String, UsageError> {
    match t.as_str() {
        "method" | "scheduleDeviceMethod" => Ok("scheduleDeviceMethod".into()),
        "twin" | "scheduleUpdateTwin" => Ok("scheduleUpdateTwin".into()),
        _ => Err(UsageError::new("--type", "must be method or twin")),
    }
}

fn job_status(s: String) -> Result<String, UsageError> {
    const ALL: [&str; 8] = [
        "queued",
        "scheduled",
        "running",
        "completed",
        "failed",
        "cancelled",
        "enqueued",
        "unknown",
    ];
    if ALL.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(UsageError::new(
            "--status",
            "must be queued, running, completed, failed or cancelled",
        ))
    }
}

impl JobArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<JobConfig, UsageError> {
        match self.command {
            JobCommand::Invoke(a) => {
                if a.method.is_empty() {
                    return Err(UsageError::new("METHOD", "must not be empty"));
                }
                if !(5..=300).contains(&a.timeout) {
                    return Err(UsageError::new(
                        "--timeout",
                        "must be between 5 and 300 seconds",
                    ));
                }
                if a.connect_timeout > 300 {
                    return Err(UsageError::new(
                        "--connect-timeout",
                        "must be between 0 and 300 seconds",
                    ));
                }
                let payload = a
                    .payload
                    .as_deref()
                    .map(|p| json_arg("--payload", p))
                    .transpose()?;
                let (target, id, start, wait, json, mut body) =
                    a.schedule.common("scheduleDeviceMethod")?;
                body["cloudToDeviceMethod"] = json!({
                    "methodName": a.method, "payload": payload,
                    "responseTimeoutInSeconds": a.timeout,
                    "connectTimeoutInSeconds": a.connect_timeout,
                });
                Ok(JobConfig {
                    target,
                    action: JobAction::Create {
                        id,
                        body,
                        start,
                        wait,
                    },
                    json,
                })
            }
            JobCommand::Twin(a) => {
                let desired = a
                    .desired
                    .as_deref()
                    .map(|d| json_object("DESIRED", d))
                    .transpose()?;
                let tags = a
                    .tags
                    .as_deref()
                    .map(|t| json_object("--tags", t))
                    .transpose()?;
                if desired.is_none() && tags.is_none() {
                    return Err(UsageError::new(
                        "DESIRED",
                        "give a desired-properties patch, --tags, or both",
                    ));
                }
                let (target, id, start, wait, json, mut body) =
                    a.schedule.common("scheduleUpdateTwin")?;
                let mut update = json!({});
                if let Some(t) = tags {
                    update["tags"] = t;
                }
                if let Some(d) = desired {
                    update["properties"] = json!({ "desired": d });
                }
                body["updateTwin"] = update;
                Ok(JobConfig {
                    target,
                    action: JobAction::Create {
                        id,
                        body,
                        start,
                        wait,
                    },
                    json,
                })
            }
            JobCommand::Show(a) => Ok(JobConfig {
                action: JobAction::Show {
                    id: job_id("ID", a.id)?,
                    devices: a.devices,
                },
                target: a.target.resolve()?,
                json: a.json,
            }),
            JobCommand::List(a) => Ok(JobConfig {
                action: JobAction::List {
                    job_type: a.job_type.map(job_type).transpose()?,
                    status: a.status.map(job_status).transpose()?,
                },
                target: a.target.resolve()?,
                json: a.json,
            }),
            JobCommand::Cancel(a) => Ok(JobConfig {
                action: JobAction::Cancel {
                    id: job_id("ID", a.id)?,
                },
                target: a.target.resolve()?,
                json: a.json,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_and_ids_are_checked() {
        assert_eq!(start_at(None).unwrap(), StartAt::Now);
        assert_eq!(
            start_at(Some("2026-12-05T08:00:00Z".into())).unwrap(),
            StartAt::At("2026-12-05T08:00:00Z".into())
        );
        assert_eq!(
            start_at(Some("90s".into())).unwrap(),
            StartAt::After(Duration::from_secs(90))
        );
        assert_eq!(
            start_at(Some("soon".into())).unwrap_err().field(),
            "--start"
        );
        assert!(job_id("--id", "nightly-2.0_a".into()).is_ok());
        assert_eq!(job_id("--id", "a/b".into()).unwrap_err().field(), "--id");
        assert_eq!(job_type("twin".into()).unwrap(), "scheduleUpdateTwin");
        assert!(job_status("done".into()).is_err());
    }
}
