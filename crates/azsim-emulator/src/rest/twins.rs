//! Device and module twins (`/twins/{id}`, `/twins/{id}/modules/{mid}`): read, and PATCH
//! (merge) or PUT (replace) of tags and desired properties, pushed to a connected device.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, Shared, etag_of, etag_ok, if_match, json_ok, parse_json};
use crate::clock::azure_time_us;
use crate::hub::{Hub, client_id};
use crate::store::{Identity, q};
use crate::{HubError, twin};

/// `c2d_count` is the device's C2D queue depth (0 for a module: modules have no C2D queue).
pub(super) fn twin_json(hub: &Hub, i: &Identity, c2d_count: u32) -> Value {
    let cid = client_id(&i.device_id, i.module_id.as_deref());
    let connected = hub.is_connected(&cid);
    let (last_activity, _) = hub.store.activity().times(&cid);
    // Per-property `$metadata` at every level, as the device twins doc shows it.
    let mut desired = i.desired.clone();
    desired.insert(
        "$metadata".into(),
        twin::metadata_view(
            &i.desired,
            &i.desired_meta,
            &i.desired_updated,
            i.desired_version,
        ),
    );
    desired.insert("$version".into(), json!(i.desired_version));
    let mut reported = i.reported.clone();
    reported.insert(
        "$metadata".into(),
        twin::metadata_view(
            &i.reported,
            &i.reported_meta,
            &i.reported_updated,
            i.reported_version,
        ),
    );
    reported.insert("$version".into(), json!(i.reported_version));
    let mut v = json!({
        "deviceId": i.device_id,
        "etag": etag_of(i.twin_version),
        "deviceEtag": etag_of(i.etag_n),
        "version": i.twin_version,
        "status": if i.enabled { "enabled" } else { "disabled" },
        "statusReason": i.status_reason,
        "statusUpdateTime": i.status_updated,
        "connectionState": if connected { "Connected" } else { "Disconnected" },
        "lastActivityTime": azure_time_us(last_activity),
        "cloudToDeviceMessageCount": c2d_count,
        "authenticationType": i.auth.type_name(),
        "x509Thumbprint": i.auth.thumbprint_json(),
        "tags": i.tags,
        "properties": {"desired": desired, "reported": reported},
    });
    let m = v.as_object_mut().expect("object");
    // `modelId` is the model the device announced in its CONNECT (IoT Plug and Play).
    if let Some(model) = &i.model_id {
        m.insert("modelId".into(), json!(model));
    }
    // The statuses of the configurations that target it (automatic device management).
    if let Some(c) = hub.configs.twin_field(&i.device_id, i.module_id.as_deref()) {
        m.insert("configurations".into(), c);
    }
    match &i.module_id {
        Some(mid) => {
            m.insert("moduleId".into(), json!(mid));
        }
        None => {
            m.insert("capabilities".into(), json!({"iotEdge": i.iot_edge}));
        }
    }
    v
}

/// The C2D queue depth a twin shows: the device's, or 0 for a module.
pub(super) fn twin_c2d_count(c: &rusqlite::Connection, i: &Identity) -> Result<u32, HubError> {
    match i.module_id {
        Some(_) => Ok(0),
        None => q::c2d_depth(c, &i.device_id),
    }
}

async fn get_twin_json(hub: &Shared, id: String, module: Option<String>) -> ApiResult {
    let (d, m) = (id.clone(), module.clone());
    match hub
        .store
        .call(move |c| {
            let Some(i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(None);
            };
            let depth = twin_c2d_count(c, &i)?;
            Ok(Some((i, depth)))
        })
        .await?
    {
        Some((i, depth)) => {
            let doc = twin_json(hub, &i, depth);
            let billed = if module.is_some() {
                crate::quota::Billed::ModuleTwinRead
            } else {
                crate::quota::Billed::TwinRead
            };
            super::fault::charge(hub, billed, doc.to_string().len())?;
            Ok(json_ok(StatusCode::OK, doc))
        }
        None => Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        }),
    }
}

pub(super) async fn get_twin(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    get_twin_json(&hub, id, None).await
}

pub(super) async fn get_module_twin(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult {
    get_twin_json(&hub, id, Some(mid)).await
}

fn section(body: &Value, ptr: &str, what: &str) -> Result<Option<Map<String, Value>>, ApiError> {
    match body.pointer(ptr) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            twin::strip_meta(&mut m);
            twin::validate_patch(&m).map_err(|e| ApiError::bad(format!("{what}: {e}")))?;
            Ok(Some(m))
        }
        Some(_) => Err(ApiError::bad(format!("{what} must be a JSON object"))),
    }
}

/// A section over its size limit: 403 with 403100 (see `twin::check_size`); the
/// `iothub-errorcode` name is the emulator's own (no source shows Azure's).
fn too_large(e: twin::TwinError) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        twin::SIZE_ERROR_CODE,
        "TwinSizeExceeded",
        e.0,
    )
}

/// PATCH (merge) or PUT (replace) tags and desired properties.
async fn update_twin(
    hub: &Shared,
    headers: &HeaderMap,
    id: String,
    module: Option<String>,
    body: Bytes,
    replace: bool,
) -> ApiResult {
    let update_bytes = body.len();
    super::fault::fits(hub, update_bytes)?;
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    let tags = section(&body, "/tags", "tags")?;
    let desired = section(&body, "/properties/desired", "properties.desired")?;
    // A PATCH with `"desired": null` removes every desired property, as IoT Hub does (the
    // device gets each one nulled); azure-iothub's e2e suite nulls them so.
    let desired_cleared =
        !replace && matches!(body.pointer("/properties/desired"), Some(Value::Null));
    let im = if_match(headers);
    let (d, m) = (id.clone(), module.clone());
    let now = hub.clock().now_rfc3339();
    let r = hub
        .store
        .call(move |c| {
            let Some(mut i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(Err(match &m {
                    Some(mm) => ApiError::module_not_found(&d, mm),
                    None => ApiError::device_not_found(&d),
                }));
            };
            if !etag_ok(&im, &etag_of(i.twin_version)) {
                return Ok(Err(ApiError::precondition()));
            }
            let mut changed = false;
            // The tags change as a twin change event shows it: the patch, or a replacement's
            // whole new tags.
            let mut tags_change = None;
            if let Some(t) = &tags {
                let mut next = if replace { Map::new() } else { i.tags.clone() };
                twin::merge(&mut next, t);
                if let Err(e) = twin::check_size(&next, twin::MAX_TAGS_BYTES, "Tags") {
                    return Ok(Err(too_large(e)));
                }
                tags_change = Some(if replace { next.clone() } else { t.clone() });
                i.tags = next;
                changed = true;
            } else if replace {
                if !i.tags.is_empty() {
                    tags_change = Some(Map::new());
                }
                changed |= !i.tags.is_empty();
                i.tags = Map::new();
            }
            let mut desired_patch = None;
            let new_desired = match (&desired, replace) {
                (Some(p), false) => {
                    let mut next = i.desired.clone();
                    twin::merge(&mut next, p);
                    desired_patch = Some(p.clone());
                    Some(next)
                }
                (Some(p), true) => {
                    let mut next = Map::new();
                    twin::merge(&mut next, p);
                    desired_patch = Some(twin::replacement_patch(&i.desired, &next));
                    Some(next)
                }
                (None, _) if (replace || desired_cleared) && !i.desired.is_empty() => {
                    desired_patch = Some(twin::replacement_patch(&i.desired, &Map::new()));
                    Some(Map::new())
                }
                _ => None,
            };
            if let Some(next) = new_desired {
                if let Err(e) =
                    twin::check_size(&next, twin::MAX_SECTION_BYTES, "Properties.Desired")
                {
                    return Ok(Err(too_large(e)));
                }
                i.desired = next;
                i.desired_version += 1;
                if replace || desired_cleared {
                    i.desired_meta = Map::new();
                    let whole = i.desired.clone();
                    twin::touch_metadata(&mut i.desired_meta, &whole, &now, i.desired_version);
                } else if let Some(p) = &desired {
                    twin::touch_metadata(&mut i.desired_meta, p, &now, i.desired_version);
                }
                i.desired_updated = now;
                changed = true;
            }
            if changed {
                i.twin_version += 1;
                q::put_identity(c, &i)?;
            }
            let depth = twin_c2d_count(c, &i)?;
            Ok(Ok((i, desired_patch, depth, tags_change)))
        })
        .await?;
    let (i, patch, depth, tags_change) = r?;
    if patch.is_some() || tags_change.is_some() {
        let (d, m) = (&i.device_id, i.module_id.as_deref());
        let change = crate::routing::TwinChange {
            replace,
            version: i.twin_version,
            tags: tags_change.as_ref(),
            properties: patch.as_ref().map(|p| ("desired", p)),
        };
        crate::routing::twin_changed(hub, d, m, &change);
    }
    crate::quota::record(
        hub,
        if i.module_id.is_some() {
            crate::quota::Billed::ModuleTwinUpdate
        } else {
            crate::quota::Billed::TwinUpdate
        },
        update_bytes,
    );
    if tags_change.is_some() {
        // Tags are what target conditions read most: evaluate the configurations again.
        hub.configs
            .twin_changed(&i.device_id, i.module_id.as_deref());
    }
    if let Some(p) = patch {
        hub.push_desired(&i.device_id, i.module_id.as_deref(), &p, i.desired_version);
        hub.emit(&i.device_id, json!({"type":"twinDesired","deviceId":i.device_id,"moduleId":i.module_id,"version":i.desired_version,"patch":p}));
    }
    Ok(json_ok(StatusCode::OK, twin_json(hub, &i, depth)))
}

pub(super) async fn patch_twin(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, None, body, false).await
}

pub(super) async fn put_twin(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, None, body, true).await
}

pub(super) async fn patch_module_twin(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, Some(mid), body, false).await
}

pub(super) async fn put_module_twin(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, Some(mid), body, true).await
}
