//! Errors in IoT Hub's shape: [`ApiError`] (status, Azure's error code and name, message),
//! written by [`render_error`] in the newer JSON shape or the older `ErrorCode:{name};{message}`
//! one, stamped by the hub's clock.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::HubError;

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    pub(super) name: &'static str,
    pub(super) message: String,
    info: Value,
    /// Written in the older shape, `ErrorCode:{name};{message}` (see [`render_error`]).
    older_shape: bool,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: u32,
        name: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            name,
            message: message.into(),
            info: json!({}),
            older_shape: false,
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 400004, "ArgumentInvalid", message)
    }
    /// In the older shape, as IoT Hub answers an unknown device (a registry or twin call): the
    /// Node service SDK (azure-iothub) reads `ErrorCode:DeviceNotFound` to raise
    /// DeviceNotFoundError and falls back to a plain `Error('Not found')` on the other shape
    /// (Azure/azure-iot-sdk-node#971, fixed on the service's side).
    pub(crate) fn device_not_found(id: &str) -> ApiError {
        ApiError {
            older_shape: true,
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                404001,
                "DeviceNotFound",
                format!("Device {id} not registered"),
            )
        }
    }
    /// Written in the older shape, `{"Message":"ErrorCode:{name};{message}","ExceptionMessage":
    /// "Tracking ID:..."}`, as IoT Hub answers a refused device-side HTTPS call
    /// (`ErrorCode:IotHubUnauthorizedAccess;Unauthorized`: Azure/azure-iot-sdk-c#1815,
    /// Azure/azure-iot-sdk-csharp#2502).
    pub(super) fn in_older_shape(self) -> ApiError {
        ApiError {
            older_shape: true,
            ..self
        }
    }
    pub(super) fn module_not_found(id: &str, m: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            404010,
            "ModuleNotFound",
            format!("Module {m} on device {id} not registered"),
        )
    }
    pub(super) fn precondition() -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            412001,
            "PreconditionFailed",
            "Precondition failed: etag mismatch",
        )
    }
    pub(super) fn internal(e: HubError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            500001,
            "ServerError",
            e.to_string(),
        )
    }
    pub(super) fn with_timeout(mut self, secs: u64) -> ApiError {
        self.info = json!({"timeout": format!("{:02}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)});
        self
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError::internal(e)
    }
}

/// What an [`ApiError`] response carries until [`render_error`] writes its body: the body's
/// `timestampUtc` is the hub's clock, which `IntoResponse` cannot see.
#[derive(Debug, Clone)]
struct PendingError {
    code: u32,
    name: &'static str,
    message: String,
    info: Value,
    older_shape: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        r.headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.name));
        r.extensions_mut().insert(PendingError {
            code: self.code,
            name: self.name,
            message: self.message,
            info: self.info,
            older_shape: self.older_shape,
        });
        r
    }
}

/// Writes the body of an [`ApiError`] response in Azure's shape, stamped by `clock`; every
/// other response passes unchanged. Runs for every route (it is part of the [`auth`] layer).
pub(super) fn render_error(clock: &crate::clock::Clock, mut r: Response) -> Response {
    let Some(e) = r.extensions_mut().remove::<PendingError>() else {
        return r;
    };
    let body = if e.older_shape {
        json!({
            "Message": format!("ErrorCode:{};{}", e.name, e.message),
            "ExceptionMessage": tracking_exception_message(clock),
        })
    } else {
        newer_shape(clock, e)
    };
    *r.body_mut() = axum::body::Body::from(body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The `ExceptionMessage` of the older error shape: `Tracking ID:{id}-G:0-TimeStamp:{MM/dd/yyyy
/// HH:mm:ss}` on the hub's clock.
pub(crate) fn tracking_exception_message(clock: &crate::clock::Clock) -> String {
    // RFC 3339 `2026-12-05T07:49:05.123Z` -> `12/05/2026 07:49:05`.
    let t = clock.now_rfc3339();
    let stamp = match (t.get(0..4), t.get(5..7), t.get(8..10), t.get(11..19)) {
        (Some(y), Some(mo), Some(d), Some(hms)) => format!("{mo}/{d}/{y} {hms}"),
        _ => t.clone(),
    };
    format!(
        "Tracking ID:{}-G:0-TimeStamp:{stamp}",
        uuid::Uuid::new_v4().simple()
    )
}

/// `{"Message": "<the error as JSON text>", "ExceptionMessage": ""}`.
fn newer_shape(clock: &crate::clock::Clock, e: PendingError) -> Value {
    let inner = json!({
        "errorCode": e.code,
        "trackingId": uuid::Uuid::new_v4().simple().to_string(),
        "message": e.message,
        "info": e.info,
        "timestampUtc": clock.now_rfc3339(),
    });
    json!({"Message": inner.to_string(), "ExceptionMessage": ""})
}
