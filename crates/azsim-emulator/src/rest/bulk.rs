//! The bulk registry call, `POST /devices`: up to 100 device operations in one request, as
//! Azure's "Bulk Device CRUD" (`bulk_create_or_update_devices` in the Python SDK). The body is
//! an array of `ExportImportDevice` (`id`, `importMode`, `eTag`, `status`, `statusReason`,
//! `authentication`: `symmetricKey`, or type `selfSigned` with `x509Thumbprint` or
//! `certificateAuthority`, as the registry PUT takes it); the answer is a `BulkRegistryOperationResult`
//! (`isSuccessful`, `errors[]` with `deviceId`, `errorCode`, `errorStatus`, `warnings[]`), 200
//! when every operation succeeded and 400 otherwise. Operations are applied in order; one that
//! fails does not stop the others.
//!
//! Import modes: `create` (fails with `DeviceAlreadyExists`), `update` and `updateIfMatchETag`
//! (fail with `DeviceNotFound`), `createOrUpdate`, `delete` and `deleteIfMatchETag`. Modules,
//! tags and twin properties are not taken by the local hub's bulk call: such an operation fails
//! with `ArgumentInvalid` naming the field.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use azsim_proto::secret::Secret;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, Shared, check_id, etag_of, json_ok, parse_json};
use crate::HubError;
use crate::store::{Identity, q};

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// Azure's limit on operations per bulk call.
pub(super) const MAX_BULK_OPS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update { if_match: bool },
    CreateOrUpdate,
    Delete { if_match: bool },
}

/// One operation, validated.
#[derive(Debug)]
struct Op {
    id: String,
    mode: Mode,
    etag: Option<String>,
    enabled: Option<bool>,
    status_reason: Option<String>,
    primary: Option<String>,
    secondary: Option<String>,
    /// `authentication.type` with its thumbprints; `None` keeps what is stored (new: SAS).
    auth: Option<crate::x509::Auth>,
    /// `capabilities.iotEdge`, `deviceScope`, `parentScopes`; absent ones keep what is stored.
    edge: crate::store::EdgeFields,
}

/// A per-device failure, in the result's shape.
#[derive(Debug)]
struct OpError {
    id: String,
    code: &'static str,
    status: String,
}

impl OpError {
    fn new(id: &str, code: &'static str, status: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            code,
            status: status.into(),
        }
    }
}

fn parse_op(v: &Value) -> Result<Op, OpError> {
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    let bad = |msg: String| OpError::new(id, "ArgumentInvalid", msg);
    check_id("id", id).map_err(|e| bad(e.message))?;
    for unsupported in ["moduleId", "tags", "properties"] {
        if v.get(unsupported).is_some_and(|x| !x.is_null()) {
            return Err(bad(format!(
                "{unsupported} is not supported by the local hub's bulk call"
            )));
        }
    }
    // Any case, as the service reads the enum: azure-iothub (Node) sends `Update`, `Delete`.
    let mode = match v
        .get("importMode")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("create") => Mode::Create,
        Some("update") => Mode::Update { if_match: false },
        Some("updateifmatchetag") => Mode::Update { if_match: true },
        Some("createorupdate") | None => Mode::CreateOrUpdate,
        Some("delete") => Mode::Delete { if_match: false },
        Some("deleteifmatchetag") => Mode::Delete { if_match: true },
        Some(_) => {
            let other = v["importMode"].as_str().unwrap_or_default();
            return Err(bad(format!(
                "importMode '{}' is not supported",
                crate::untrusted::Untrusted(other)
            )));
        }
    };
    let auth = crate::x509::auth_from_json(v).map_err(bad)?;
    let edge = crate::store::EdgeFields::from_json(v).map_err(bad)?;
    let enabled = match v.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "enabled" => Some(true),
        Some(Value::String(s)) if s == "disabled" => Some(false),
        Some(_) => return Err(bad("status must be 'enabled' or 'disabled'".into())),
    };
    let key = |which: &str| key_from(v, which).map_err(bad);
    Ok(Op {
        id: id.to_owned(),
        mode,
        etag: v
            .get("eTag")
            .and_then(Value::as_str)
            .map(|s| s.trim_matches('"').to_owned()),
        enabled,
        status_reason: v
            .get("statusReason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        primary: key("primaryKey")?,
        secondary: key("secondaryKey")?,
        auth,
        edge,
    })
}

/// `authentication.symmetricKey.{which}`: absent, or a base64 key of 16 to 64 bytes.
fn key_from(v: &Value, which: &str) -> Result<Option<String>, String> {
    match v.pointer(&format!("/authentication/symmetricKey/{which}")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            azsim_proto::sas::check_key(s)
                .map_err(|e| format!("authentication.symmetricKey.{which}: {e}"))?;
            let len = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_or(0, |k| k.len());
            if !(16..=64).contains(&len) {
                return Err(format!(
                    "authentication.symmetricKey.{which}: must be 16 to 64 bytes"
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(format!(
            "authentication.symmetricKey.{which}: must be a string"
        )),
    }
}

fn new_identity(op: &Op, now: &str, now_ms: i64) -> Identity {
    let mut i = Identity {
        device_id: op.id.clone(),
        module_id: None,
        primary_key: Secret::new(
            op.primary
                .clone()
                .unwrap_or_else(crate::state_dir::generate_key),
        ),
        secondary_key: Secret::new(
            op.secondary
                .clone()
                .unwrap_or_else(crate::state_dir::generate_key),
        ),
        enabled: op.enabled.unwrap_or(true),
        status_reason: op.status_reason.clone(),
        generation_id: format!("63{}", now_ms.unsigned_abs() % 100_000_000_000_000_000),
        etag_n: 1,
        status_updated: now.to_owned(),
        managed_by: None,
        tags: Map::new(),
        desired: Map::new(),
        desired_version: 1,
        desired_updated: now.to_owned(),
        reported: Map::new(),
        reported_version: 1,
        reported_updated: now.to_owned(),
        twin_version: 1,
        ..Identity::default()
    };
    crate::x509::apply_auth(&mut i, op.auth.as_ref());
    op.edge.apply(&mut i);
    i
}

fn updated(mut i: Identity, op: &Op, now: &str) -> Identity {
    if let Some(e) = op.enabled {
        if e != i.enabled {
            i.status_updated = now.to_owned();
        }
        i.enabled = e;
    }
    if let Some(k) = &op.primary {
        i.primary_key = Secret::new(k.clone());
    }
    if let Some(k) = &op.secondary {
        i.secondary_key = Secret::new(k.clone());
    }
    if op.status_reason.is_some() {
        i.status_reason = op.status_reason.clone();
    }
    crate::x509::apply_auth(&mut i, op.auth.as_ref());
    op.edge.apply(&mut i);
    i.etag_n += 1;
    i
}

/// What happened to one device, for the connections to close afterwards.
/// and the lifecycle events to route (the identity created, or deleted with its C2D depth).
enum Done {
    Saved {
        disabled: bool,
        created: Option<Box<Identity>>,
    },
    Deleted(Box<Identity>, u32),
}

/// `POST /devices`.
pub(super) async fn bulk_devices(State(hub): State<Shared>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    let Value::Array(items) = body else {
        return Err(ApiError::bad(
            "body must be a JSON array of device operations",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad("no device operations given"));
    }
    if items.len() > MAX_BULK_OPS {
        return Err(ApiError::bad(format!(
            "too many device operations: {} (at most {MAX_BULK_OPS} per call)",
            items.len()
        )));
    }
    let mut errors = Vec::new();
    let mut ops = Vec::new();
    for v in &items {
        match parse_op(v) {
            Ok(op) => ops.push(op),
            Err(e) => errors.push(e),
        }
    }
    let now = hub.clock().now_rfc3339();
    let now_ms = hub.now_ms();
    let activity = hub.store.activity().clone();
    let (results, failed) = hub
        .store
        .call(move |c| {
            let r = apply(c, &ops, &activity, &now, now_ms);
            if r.is_err() {
                // A failed save leaves its transaction open: end it, keeping nothing of it.
                let _ = c.execute_batch("ROLLBACK");
            }
            r
        })
        .await?;
    errors.extend(failed);
    for (id, done) in &results {
        match done {
            Done::Saved { disabled, created } => {
                if let Some(i) = created {
                    let twin = super::twins::twin_json(&hub, i, 0);
                    crate::routing::lifecycle(&hub, id, None, true, &twin);
                }
                if *disabled {
                    hub.kick_identity(id, None, "device disabled");
                }
                hub.configs.twin_changed(id, None);
            }
            Done::Deleted(i, depth) => {
                let twin = super::twins::twin_json(&hub, i, *depth);
                crate::routing::lifecycle(&hub, id, None, false, &twin);
                hub.kick_identity(id, None, "identity deleted");
                hub.configs.twin_removed(id, None);
            }
        }
    }
    tracing::info!(
        operations = items.len(),
        failed = errors.len(),
        "bulk registry operation"
    );
    let ok = errors.is_empty();
    let body = json!({
        "isSuccessful": ok,
        "errors": errors.iter().map(|e| json!({
            "deviceId": e.id,
            "errorCode": e.code,
            "errorStatus": e.status,
        })).collect::<Vec<_>>(),
        "warnings": [],
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok(json_ok(status, body))
}

type Applied = (Vec<(String, Done)>, Vec<OpError>);

/// Applies `ops` in order: what was saved or deleted, and what failed.
fn apply(
    c: &mut rusqlite::Connection,
    ops: &[Op],
    activity: &crate::activity::Tracker,
    now: &str,
    now_ms: i64,
) -> Result<Applied, HubError> {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    // Saves in one transaction each run of them (a delete commits its own).
    let mut open = false;
    for op in ops {
        let existing = q::get_identity(c, &op.id, None)?;
        let created = existing.is_none();
        let gone = existing.clone();
        let etag_matches = |i: &Identity| {
            op.etag
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "*" || e == etag_of(i.etag_n))
        };
        let outcome = match (op.mode, existing) {
            (Mode::Create, Some(_)) => Err(OpError::new(
                &op.id,
                "DeviceAlreadyExists",
                format!("Device {} already exists", op.id),
            )),
            (Mode::Update { .. } | Mode::Delete { .. }, None) => Err(OpError::new(
                &op.id,
                "DeviceNotFound",
                format!("Device {} not registered", op.id),
            )),
            (Mode::Update { if_match: true } | Mode::Delete { if_match: true }, Some(i))
                if !etag_matches(&i) =>
            {
                Err(OpError::new(
                    &op.id,
                    "PreconditionFailed",
                    "Precondition failed: etag mismatch",
                ))
            }
            (Mode::Delete { .. }, Some(_)) => Ok(None),
            (Mode::Create | Mode::CreateOrUpdate, None) => Ok(Some(new_identity(op, now, now_ms))),
            (Mode::Update { .. } | Mode::CreateOrUpdate, Some(i)) => Ok(Some(updated(i, op, now))),
        };
        match outcome {
            Err(e) => failed.push(e),
            Ok(Some(ident)) => {
                if !open {
                    c.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
                    open = true;
                }
                q::put_identity(c, &ident)?;
                results.push((
                    op.id.clone(),
                    Done::Saved {
                        disabled: !ident.enabled,
                        created: created.then(|| Box::new(ident.clone())),
                    },
                ));
            }
            Ok(None) => {
                if open {
                    c.execute_batch("COMMIT").map_err(db_err)?;
                    open = false;
                }
                // Under the store lock, so the activity flusher cannot write the times
                // back.
                activity.forget(&op.id, None);
                let depth = q::c2d_depth(c, &op.id)?;
                q::delete_identity(c, &op.id, None)?;
                if let Some(i) = gone {
                    results.push((op.id.clone(), Done::Deleted(Box::new(i), depth)));
                }
            }
        }
    }
    if open {
        c.execute_batch("COMMIT").map_err(db_err)?;
    }
    Ok((results, failed))
}
