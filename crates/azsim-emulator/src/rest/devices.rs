//! The registry: devices and modules (`/devices/{id}`, `/devices/{id}/modules/{mid}`), with
//! their keys, status and activity times.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use azsim_proto::secret::Secret;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    ApiError, ApiResult, Shared, check_id, etag_of, etag_ok, if_match, json_ok, parse_json,
};
use crate::clock::azure_time_us;
use crate::hub::{Hub, client_id};
use crate::state_dir;
use crate::store::{EdgeFields, Identity, q};

fn device_json(hub: &Hub, i: &Identity, c2d_count: u32) -> Value {
    let cid = client_id(&i.device_id, i.module_id.as_deref());
    let conn = hub.conn(&cid);
    let (last_activity, state_updated) = hub.store.activity().times(&cid);
    let mut v = json!({
        "deviceId": i.device_id,
        "generationId": i.generation_id,
        "etag": etag_of(i.etag_n),
        "connectionState": if conn.is_some() { "Connected" } else { "Disconnected" },
        "status": if i.enabled { "enabled" } else { "disabled" },
        "statusReason": i.status_reason,
        "connectionStateUpdatedTime": azure_time_us(state_updated),
        "statusUpdatedTime": i.status_updated,
        "lastActivityTime": azure_time_us(last_activity),
        "cloudToDeviceMessageCount": c2d_count,
        "authentication": {
            "type": i.auth.type_name(),
            "symmetricKey": if i.auth.is_sas() {
                json!({"primaryKey": i.primary_key.expose(), "secondaryKey": i.secondary_key.expose()})
            } else {
                json!({"primaryKey": null, "secondaryKey": null})
            },
            "x509Thumbprint": i.auth.thumbprint_json(),
        },
    });
    let m = v.as_object_mut().expect("object");
    match &i.module_id {
        Some(mid) => {
            m.insert("moduleId".into(), json!(mid));
            m.insert("managedBy".into(), json!(i.managed_by));
        }
        None => {
            m.insert("capabilities".into(), json!({"iotEdge": i.iot_edge}));
            m.insert("deviceScope".into(), json!(i.device_scope));
            m.insert("parentScopes".into(), json!(i.parent_scopes));
        }
    }
    v
}

fn key_from(body: &Value, which: &str) -> Result<Option<String>, ApiError> {
    match body.pointer(&format!("/authentication/symmetricKey/{which}")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            azsim_proto::sas::check_key(s)
                .map_err(|e| ApiError::bad(format!("authentication.symmetricKey.{which}: {e}")))?;
            let len = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|k| k.len())
                .unwrap_or(0);
            if !(16..=64).contains(&len) {
                return Err(ApiError::bad(format!(
                    "authentication.symmetricKey.{which}: must be 16 to 64 bytes"
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad(format!(
            "authentication.symmetricKey.{which}: must be a string"
        ))),
    }
}

async fn upsert_identity(
    hub: &Shared,
    headers: &HeaderMap,
    id: String,
    module: Option<String>,
    body: Bytes,
) -> ApiResult {
    check_id("deviceId", &id)?;
    if let Some(m) = &module {
        check_id("moduleId", m)?;
    }
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    if body
        .get("deviceId")
        .and_then(Value::as_str)
        .is_some_and(|d| d != id)
    {
        return Err(ApiError::bad("deviceId in the body does not match the URL"));
    }
    if let (Some(m), Some(bm)) = (&module, body.get("moduleId").and_then(Value::as_str))
        && bm != m
    {
        return Err(ApiError::bad("moduleId in the body does not match the URL"));
    }
    let auth = crate::x509::auth_from_json(&body).map_err(ApiError::bad)?;
    let edge = EdgeFields::from_json(&body).map_err(ApiError::bad)?;
    let enabled = match body.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "enabled" => Some(true),
        Some(Value::String(s)) if s == "disabled" => Some(false),
        Some(_) => return Err(ApiError::bad("status must be 'enabled' or 'disabled'")),
    };
    let primary = key_from(&body, "primaryKey")?;
    let secondary = key_from(&body, "secondaryKey")?;
    let status_reason = body
        .get("statusReason")
        .and_then(Value::as_str)
        .map(str::to_string);
    let managed_by = body
        .get("managedBy")
        .and_then(Value::as_str)
        .map(str::to_string);
    let im = if_match(headers);
    let (d, m) = (id.clone(), module.clone());
    let now = hub.clock().now_rfc3339();
    let now_ms = hub.now_ms();
    let result = hub
        .store
        .call(move |c| {
            if m.is_some() && q::get_identity(c, &d, None)?.is_none() {
                return Ok(Err(ApiError::device_not_found(&d)));
            }
            let existing = q::get_identity(c, &d, m.as_deref())?;
            let had_scope = existing.as_ref().and_then(|i| i.device_scope.clone());
            let (ident, created, status_changed) = match (existing, &im) {
                (Some(_), None) => {
                    return Ok(Err(match &m {
                        Some(mm) => ApiError::new(
                            StatusCode::CONFLICT,
                            409301,
                            "ModuleAlreadyExistsOnDevice",
                            format!("Module {mm} already exists on device {d}"),
                        ),
                        None => ApiError::new(
                            StatusCode::CONFLICT,
                            409001,
                            "DeviceAlreadyExists",
                            format!("Device {d} already exists"),
                        ),
                    }));
                }
                (Some(mut i), Some(_)) => {
                    if !etag_ok(&im, &etag_of(i.etag_n)) {
                        return Ok(Err(ApiError::precondition()));
                    }
                    let was = i.enabled;
                    if let Some(e) = enabled {
                        if e != i.enabled {
                            i.status_updated = now.clone();
                        }
                        i.enabled = e;
                    }
                    if let Some(k) = &primary {
                        i.primary_key = Secret::new(k.clone());
                    }
                    if let Some(k) = &secondary {
                        i.secondary_key = Secret::new(k.clone());
                    }
                    crate::x509::apply_auth(&mut i, auth.as_ref());
                    edge.apply(&mut i);
                    if status_reason.is_some() {
                        i.status_reason = status_reason.clone();
                    }
                    if managed_by.is_some() {
                        i.managed_by = managed_by.clone();
                    }
                    i.etag_n += 1;
                    let changed = was && !i.enabled;
                    (i, false, changed)
                }
                (None, Some(_)) => {
                    return Ok(Err(match &m {
                        Some(mm) => ApiError::module_not_found(&d, mm),
                        None => ApiError::device_not_found(&d),
                    }));
                }
                (None, None) => {
                    let gen_id = format!("63{}", now_ms.unsigned_abs() % 100_000_000_000_000_000);
                    let i = Identity {
                        device_id: d.clone(),
                        module_id: m.clone(),
                        primary_key: Secret::new(
                            primary.clone().unwrap_or_else(state_dir::generate_key),
                        ),
                        secondary_key: Secret::new(
                            secondary.clone().unwrap_or_else(state_dir::generate_key),
                        ),
                        enabled: enabled.unwrap_or(true),
                        status_reason: status_reason.clone(),
                        generation_id: gen_id,
                        etag_n: 1,
                        status_updated: now.clone(),
                        managed_by: managed_by.clone(),
                        tags: Map::new(),
                        desired: Map::new(),
                        desired_version: 1,
                        desired_updated: now.clone(),
                        reported: Map::new(),
                        reported_version: 1,
                        reported_updated: now.clone(),
                        twin_version: 1,
                        ..Identity::default()
                    };
                    let mut i = i;
                    crate::x509::apply_auth(&mut i, auth.as_ref());
                    edge.apply(&mut i);
                    (i, true, false)
                }
            };
            // A leaf's new scope must be an edge device's (IoT Hub: 400, nothing stored).
            if !ident.iot_edge
                && let Some(s) = &ident.device_scope
                && had_scope.as_ref() != Some(s)
                && !q::edge_scope_exists(c, s, &d)?
            {
                return Ok(Err(ApiError::bad(format!(
                    "deviceScope {s} is not the scope of an IoT Edge device of this hub"
                ))));
            }
            q::put_identity(c, &ident)?;
            let depth = q::c2d_depth(c, &d)?;
            Ok(Ok((ident, created, status_changed, depth)))
        })
        .await?;
    let (ident, created, disabled, depth) = result?;
    if disabled || !ident.enabled {
        hub.kick_identity(
            &ident.device_id,
            ident.module_id.as_deref(),
            "device disabled",
        );
    }
    if created {
        let twin = super::twins::twin_json(hub, &ident, depth);
        let (d, m) = (&ident.device_id, ident.module_id.as_deref());
        crate::routing::lifecycle(hub, d, m, true, &twin);
    }
    // A target condition may read what changed (a new twin, its status, its capabilities).
    hub.configs
        .twin_changed(&ident.device_id, ident.module_id.as_deref());
    tracing::info!(device = %ident.device_id, module = ?ident.module_id, created, "identity saved");
    Ok(json_ok(StatusCode::OK, device_json(hub, &ident, depth)))
}

pub(super) async fn put_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    upsert_identity(&hub, &headers, id, None, body).await
}

pub(super) async fn put_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    upsert_identity(&hub, &headers, id, Some(mid), body).await
}

async fn get_identity_json(hub: &Shared, id: String, module: Option<String>) -> ApiResult {
    let (d, m) = (id.clone(), module.clone());
    let r = hub
        .store
        .call(move |c| {
            let i = q::get_identity(c, &d, m.as_deref())?;
            let depth = q::c2d_depth(c, &d)?;
            Ok(i.map(|i| (i, depth)))
        })
        .await?;
    match r {
        Some((i, depth)) => Ok(json_ok(StatusCode::OK, device_json(hub, &i, depth))),
        None => Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        }),
    }
}

pub(super) async fn get_device(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    get_identity_json(&hub, id, None).await
}

pub(super) async fn get_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult {
    get_identity_json(&hub, id, Some(mid)).await
}

async fn delete_identity(
    hub: &Shared,
    headers: &HeaderMap,
    id: String,
    module: Option<String>,
) -> ApiResult {
    let im = if_match(headers);
    // The swagger makes `If-Match` required on DELETE (an etag, or `*` for any); the SDKs
    // always send one. Without it the hub refuses the precondition (412; which status Azure
    // answers a missing header with is inferred).
    if im.as_deref().is_none_or(str::is_empty) && !hub.cfg.lenient {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            412001,
            "PreconditionFailed",
            "Precondition failed: If-Match is required (an etag, or \"*\" for any)",
        ));
    }
    let (d, m) = (id.clone(), module.clone());
    let activity = hub.store.activity().clone();
    let r = hub
        .store
        .call(move |c| {
            let Some(i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(Some(None));
            };
            if !etag_ok(&im, &etag_of(i.etag_n)) {
                return Ok(None);
            }
            let depth = super::twins::twin_c2d_count(c, &i)?;
            // Under the store lock, so the activity flusher cannot write the times back.
            activity.forget(&d, m.as_deref());
            q::delete_identity(c, &d, m.as_deref())?;
            Ok(Some(Some((i, depth))))
        })
        .await?;
    match r {
        Some(Some((gone, depth))) => {
            let twin = super::twins::twin_json(hub, &gone, depth);
            crate::routing::lifecycle(hub, &id, module.as_deref(), false, &twin);
            hub.kick_identity(&id, module.as_deref(), "identity deleted");
            hub.configs.twin_removed(&id, module.as_deref());
            tracing::info!(device = %id, module = ?module, "identity deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some(None) => Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        }),
        None => Err(ApiError::precondition()),
    }
}

pub(super) async fn delete_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    delete_identity(&hub, &headers, id, None).await
}

pub(super) async fn delete_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    delete_identity(&hub, &headers, id, Some(mid)).await
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    top: Option<usize>,
}

pub(super) async fn list_devices(
    State(hub): State<Shared>,
    Query(lq): Query<ListQuery>,
) -> ApiResult {
    let list = hub
        .store
        .call(|c| {
            let mut out = Vec::new();
            for i in q::list_identities(c, None)? {
                let depth = q::c2d_depth(c, &i.device_id)?;
                out.push((i, depth));
            }
            Ok(out)
        })
        .await?;
    let top = lq.top.unwrap_or(usize::MAX);
    let v: Vec<Value> = list
        .iter()
        .take(top)
        .map(|(i, d)| device_json(&hub, i, *d))
        .collect();
    Ok(json_ok(StatusCode::OK, Value::Array(v)))
}

pub(super) async fn list_modules(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = id.clone();
    let list = hub
        .store
        .call(move |c| q::list_identities(c, Some(&d)))
        .await?;
    let v: Vec<Value> = list.iter().map(|i| device_json(&hub, i, 0)).collect();
    Ok(json_ok(StatusCode::OK, Value::Array(v)))
}
