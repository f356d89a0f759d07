//! File upload, the device side (REST reference "Create File Upload Sas Uri" and "Update File
//! Upload Status", api-version 2020-03-13 and later):
//!
//! - `POST /devices/{id}/files` `{"blobName": ..}` answers `{correlationId, hostName,
//!   containerName, blobName, sasToken}`: the blob is `{id}/{blobName}` in the hub's upload
//!   container on its own blob endpoint (`crate::blob`), the SAS valid for the hub's SAS TTL.
//!   A device with `max_active_per_device` uploads begun and not notified (and whose SAS is
//!   live) is refused: 403 403006 DeviceMaximumActiveFileUploadLimitExceeded.
//! - `POST /devices/{id}/files/notifications` `{correlationId, isSuccess, statusCode,
//!   statusDescription}` (the Node SDK puts the correlation id in the path instead:
//!   `.../notifications/{correlationId}`) ends the upload, 204; the correlation id works once.
//!   A successful upload of a blob that exists queues a file upload notification for the
//!   service (`amqp/file_notifications.rs`) when notifications are on.
//!
//! And the emulator's own `GET /emulator/files`: every stored blob with its size, time and URI.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, json_ok, parse_json};
use crate::blob;
use crate::hub::Hub;
use crate::store::files::{self, BeginRefused};

/// Whether `path` is one of the device-side file upload calls (`/devices/{id}/files...`).
pub(super) fn is_device_path(path: &str) -> bool {
    path.strip_prefix("/devices/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(id, tail)| {
            !id.is_empty()
                && (tail == "files"
                    || tail == "files/notifications"
                    || tail.starts_with("files/notifications/"))
        })
}

/// Azure's blob name rule: 1 to 1,024 characters, at most 254 path segments.
fn check_blob_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.chars().count() > 1024 || name.split('/').count() > 254 {
        return Err(ApiError::bad(
            "blobName must be 1 to 1024 characters with at most 254 '/'-separated segments",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad("blobName must not hold control characters"));
    }
    Ok(())
}

/// Refuses an unknown or disabled device (a DeviceConnect policy token may call for any id).
async fn known_device(hub: &Hub, id: &str) -> Result<(), ApiError> {
    match crate::hub::load_identity(hub, id, None).await? {
        Some(ident) if ident.enabled => Ok(()),
        _ => Err(ApiError::device_not_found(id)),
    }
}

/// `POST /devices/{id}/files`.
pub(crate) async fn create_sas_uri(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req = parse_json(&body)?;
    let name = req
        .get("blobName")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("blobName is required"))?;
    check_blob_name(name)?;
    known_device(&hub, &id).await?;
    let settings = &hub.cfg.file_upload;
    let blob_name = format!("{id}/{name}");
    let now = hub.now_ms();
    let ttl_ms = i64::try_from(settings.sas_ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_ms = now.saturating_add(ttl_ms);
    // Shaped as IoT Hub's: base64 of `{yyyyMMddHHmm}_{guid}_{blob}_ver2.0`.
    let stamp: String = crate::clock::azure_time_ms(now)
        .chars()
        .filter(char::is_ascii_digit)
        .take(12)
        .collect();
    let correlation_id = base64::engine::general_purpose::STANDARD
        .encode(format!("{stamp}_{}_{name}_ver2.0", uuid::Uuid::new_v4()));
    let new = files::NewUpload {
        device: id.clone(),
        container: settings.container.clone(),
        blob_name: blob_name.clone(),
        correlation_id: correlation_id.clone(),
        expires_ms,
    };
    let max = settings.max_active_per_device;
    let begun = hub
        .store
        .call(move |conn| files::begin_upload(conn, &new, now, max))
        .await?;
    if let Err(BeginRefused::TooManyActive(n)) = begun {
        tracing::info!(device = %crate::untrusted::Untrusted(&id), "file upload refused: 403006");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403006,
            "DeviceMaximumActiveFileUploadLimitExceeded",
            format!("Number of active file upload requests cannot exceed {n}"),
        ));
    }
    let key = blob::sas::StorageKey::derive(hub.owner_key.expose());
    let expiry_s = u64::try_from(expires_ms / 1000).unwrap_or(0);
    let sas = blob::sas::sign(
        &key,
        blob::ACCOUNT,
        &settings.container,
        &blob_name,
        expiry_s,
    );
    tracing::info!(device = %crate::untrusted::Untrusted(&id), blob = %crate::untrusted::Untrusted(&blob_name), "file upload begun");
    Ok(json_ok(
        StatusCode::OK,
        json!({
            "correlationId": correlation_id,
            "hostName": blob::host_name(&hub),
            "containerName": settings.container,
            "blobName": blob_name,
            "sasToken": sas,
        }),
    ))
}

/// `POST /devices/{id}/files/notifications`.
pub(crate) async fn notify(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req = parse_json(&body)?;
    let cid = req
        .get("correlationId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("correlationId is required"))?
        .to_string();
    finish(hub, id, cid, req).await
}

/// `POST /devices/{id}/files/notifications/{correlationId}` (the Node SDK's form).
pub(crate) async fn notify_with_id(
    State(hub): State<Arc<Hub>>,
    Path((id, cid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let req = parse_json(&body)?;
    finish(hub, id, cid, req).await
}

async fn finish(hub: Arc<Hub>, id: String, cid: String, req: Value) -> ApiResult {
    let is_success = req
        .get("isSuccess")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::bad("isSuccess is required and must be a boolean"))?;
    let status_code = req.get("statusCode").and_then(Value::as_i64);
    let description = req
        .get("statusDescription")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let now = hub.now_ms();
    let settings = hub.cfg.file_upload.clone();
    let d = id.clone();
    let done = hub
        .store
        .call(move |c| {
            let Some(up) = files::finish_upload(c, &d, &cid, now)? else {
                return Ok(None);
            };
            let props = files::blob_props(c, &up.container, &up.blob_name)?;
            Ok(Some((up, props)))
        })
        .await?;
    let Some((up, props)) = done else {
        return Err(ApiError::bad(
            "the correlation id is unknown, already used, expired or not this device's",
        ));
    };
    let mut event = json!({
        "type": "fileUpload",
        "deviceId": id,
        "blobName": up.blob_name,
        "isSuccess": is_success,
        "statusCode": status_code,
        "statusDescription": description,
    });
    if let (true, true, Some(p)) = (is_success, settings.notifications, props) {
        let body = json!({
            "deviceId": id,
            "blobUri": blob::blob_uri(&hub, &p.container, &p.name),
            "blobName": p.name,
            "lastUpdatedTime": last_updated_time(p.modified_ms),
            "blobSizeInBytes": p.size,
            "enqueuedTimeUtc": crate::clock::azure_time_ms(now),
        })
        .to_string();
        let ttl_ms = i64::try_from(settings.notification_ttl.as_millis()).unwrap_or(i64::MAX);
        hub.store
            .call(move |c| files::enqueue_notification(c, &body, now.saturating_add(ttl_ms)))
            .await?;
        event["notification"] = json!(true);
    }
    tracing::info!(device = %crate::untrusted::Untrusted(&id), is_success, "file upload notified");
    hub.emit(&id, event);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `2016-06-01T21:22:41+00:00`, as IoT Hub writes a notification's `lastUpdatedTime`.
fn last_updated_time(unix_ms: i64) -> String {
    let s = crate::clock::rfc3339(u64::try_from(unix_ms / 1000).unwrap_or(0));
    match s.strip_suffix('Z') {
        Some(t) => format!("{t}+00:00"),
        None => s,
    }
}

/// `GET /emulator/files`: `[{container, blobName, sizeInBytes, contentType, createdTime,
/// lastModifiedTime, blobUri}]`.
pub(crate) async fn list_files(State(hub): State<Arc<Hub>>) -> ApiResult {
    let rows = hub.store.call(|c| files::list_blobs(c)).await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|p| {
            json!({
                "container": p.container,
                "blobName": p.name,
                "sizeInBytes": p.size,
                "contentType": p.content_type,
                "createdTime": crate::clock::azure_time_ms(p.created_ms),
                "lastModifiedTime": crate::clock::azure_time_ms(p.modified_ms),
                "blobUri": blob::blob_uri(&hub, &p.container, &p.name),
            })
        })
        .collect();
    Ok(json_ok(StatusCode::OK, Value::Array(list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_side_paths() {
        assert!(is_device_path("/devices/d1/files"));
        assert!(is_device_path("/devices/d1/files/notifications"));
        assert!(is_device_path("/devices/d1/files/notifications/abc%3D"));
        assert!(!is_device_path("/devices/d1/filesx"));
        assert!(!is_device_path("/devices/d1"));
        assert!(!is_device_path("/devices//files"));
    }

    #[test]
    fn blob_names_follow_azure_and_times_are_iot_hubs() {
        assert!(check_blob_name("a/b/c.txt").is_ok());
        assert!(check_blob_name("").is_err());
        assert!(check_blob_name(&"x".repeat(1025)).is_err());
        assert!(check_blob_name("a\nb").is_err());
        assert_eq!(last_updated_time(1_000), "1970-01-01T00:00:01+00:00");
    }
}
