//! What a REST request must carry before it reaches its handler, as IoT Hub checks it: an
//! `api-version`, a token whose shared access policy grants the permission the call needs,
//! and room under the device's injected throttling and the tier's throttles.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiError;
use crate::auth::Permission;
use crate::fault::{Class, Fault};
use crate::hub::Hub;

/// The permission a call needs (Microsoft Learn, "Control access to IoT Hub by using shared
/// access signatures", "IoT Hub permissions": RegistryRead reads the identity registry,
/// RegistryWrite changes it, ServiceConnect is everything else a back end does: twins, methods,
/// C2D and feedback, queries, jobs, events). The emulator's own endpoints are ServiceConnect.
pub(super) fn needed(method: &Method, path: &str) -> Permission {
    // File upload is a device's call (a device token, or a DeviceConnect policy's).
    if super::files::is_device_path(path) || super::device_events::is_events_path(path) {
        return Permission::DeviceConnect;
    }
    let registry = path == "/devices"
        || (path.starts_with("/devices/")
            && path != "/devices/query"
            && !path.contains("/commands")
            && !path.contains("/messages/"))
        || path.starts_with("/certificates")
        || path.starts_with("/configurations");
    if registry {
        if *method == Method::GET {
            Permission::RegistryRead
        } else {
            Permission::RegistryWrite
        }
    } else {
        Permission::ServiceConnect
    }
}

/// Whether the request names an `api-version` (any value but empty). Every service call
/// carries one (spec section 8); the emulator's own `/emulator/` endpoints (not Azure) and the
/// WebSocket upgrade need none.
pub(super) fn has_api_version(path: &str, query: Option<&str>) -> bool {
    if path.starts_with("/emulator/") {
        return true;
    }
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == "api-version" && !v.is_empty())
        })
    })
}

/// IoT Hub's answer to a request without `api-version`: 400 with the older error shape
/// (`{"Message":"ErrorCode:InvalidProtocolVersion;BadRequest","ExceptionMessage":"Tracking
/// ID:...-G:..-TimeStamp:MM/dd/yyyy HH:mm:ss"}`, as Azure/Industrial-IoT#708 and
/// MicrosoftDocs/azure-docs#11156 quote it) and `iothub-errorcode: InvalidProtocolVersion`.
pub(super) fn invalid_protocol_version(hub: &Hub) -> Response {
    let body = json!({
        "Message": "ErrorCode:InvalidProtocolVersion;BadRequest",
        "ExceptionMessage": super::tracking_exception_message(hub.clock()),
    });
    let mut r = (StatusCode::BAD_REQUEST, body.to_string()).into_response();
    r.headers_mut().insert(
        "iothub-errorcode",
        HeaderValue::from_static("InvalidProtocolVersion"),
    );
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// The device a service call is about (`/devices/{id}...`, `/twins/{id}...`,
/// `/emulator/devices/{id}/...`), decoded.
fn device_of(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/twins/")
        .or_else(|| path.strip_prefix("/emulator/devices/"))
        .or_else(|| path.strip_prefix("/devices/"))?;
    let raw = rest.split('/').next()?;
    if raw.is_empty() || raw == "query" {
        return None;
    }
    let mut id = String::new();
    azsim_proto::encoding::decode_to(&mut id, raw).ok()?;
    Some(id)
}

/// What a throttle counts this call as, if anything.
fn class_of(method: &Method, path: &str) -> Option<Class> {
    if path.starts_with("/twins/") && !path.ends_with("/methods") {
        return Some(if *method == Method::GET {
            Class::TwinRead
        } else {
            Class::TwinUpdate
        });
    }
    if *method == Method::POST && path.ends_with("/files") && super::files::is_device_path(path) {
        return Some(Class::FileUpload);
    }
    if path.starts_with("/emulator/devices/") && path.ends_with("/c2d") {
        return Some(Class::C2dSend);
    }
    (matches!(
        needed(method, path),
        Permission::RegistryRead | Permission::RegistryWrite
    ) && !path.starts_with("/certificates"))
    .then_some(Class::Registry)
}

/// 429 ThrottlingException when the call is over a throttle: the device's injected one (not
/// for the `/emulator/` fault endpoint itself) or the tier's.
pub(super) fn throttled(hub: &Hub, method: &Method, path: &str) -> Option<ApiError> {
    let now = hub.clock().unix_ms();
    let device = device_of(path).filter(|_| !path.ends_with("/faults"));
    let injected = device.is_some_and(|d| hub.faults.active(&d, Fault::Throttle, now));
    let over = class_of(method, path)
        .is_some_and(|c| !hub.faults.admit_call(hub.cfg.tier, hub.cfg.units, c, now));
    (injected || over).then(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            429001,
            "ThrottlingException",
            "Throttling: the request rate is over the hub's limit; retry later",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_need_the_permissions_azure_documents() {
        use Permission::*;
        assert_eq!(needed(&Method::GET, "/devices/d1"), RegistryRead);
        assert_eq!(needed(&Method::GET, "/devices"), RegistryRead);
        assert_eq!(needed(&Method::PUT, "/devices/d1"), RegistryWrite);
        assert_eq!(
            needed(&Method::DELETE, "/devices/d1/modules/m"),
            RegistryWrite
        );
        assert_eq!(needed(&Method::POST, "/devices"), RegistryWrite);
        assert_eq!(needed(&Method::GET, "/twins/d1"), ServiceConnect);
        assert_eq!(needed(&Method::POST, "/twins/d1/methods"), ServiceConnect);
        assert_eq!(
            needed(&Method::DELETE, "/devices/d1/commands"),
            ServiceConnect
        );
        assert_eq!(needed(&Method::POST, "/devices/query"), ServiceConnect);
        assert_eq!(
            needed(&Method::GET, "/messages/serviceBound/feedback"),
            ServiceConnect
        );
    }

    #[test]
    fn api_version_must_be_given_and_not_empty() {
        assert!(has_api_version("/devices", Some("api-version=2021-04-12")));
        assert!(has_api_version(
            "/devices",
            Some("top=1&api-version=2021-04-12")
        ));
        assert!(!has_api_version("/devices", None));
        assert!(!has_api_version("/devices", Some("api-version=")));
        assert!(!has_api_version("/devices", Some("apiversion=1")));
        assert!(has_api_version("/emulator/events/recent", None));
    }

    #[test]
    fn the_device_of_a_call() {
        assert_eq!(device_of("/twins/d%231/methods").as_deref(), Some("d#1"));
        assert_eq!(device_of("/devices/d1").as_deref(), Some("d1"));
        assert_eq!(device_of("/devices/query"), None);
        assert_eq!(device_of("/emulator/devices/d1/c2d").as_deref(), Some("d1"));
    }
}
