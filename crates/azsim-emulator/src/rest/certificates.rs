//! The CA certificates the hub holds for `certificateAuthority` devices: `/certificates` and
//! `/certificates/{name}` (PUT, GET, DELETE, list), in the shapes of IoT Hub's certificates API
//! (a `CertificateDescription` with `properties.subject`, `expiry`, `thumbprint`,
//! `isVerified`, `created`, `updated`, `certificate`; a list is `{"value": [...]}`). On Azure
//! this is the management API and a CA must be verified (proof of possession) before devices
//! may use it; locally every CA is usable at once and shows `isVerified: true`.
//!
//! As on Azure, updating or deleting a certificate takes `If-Match` with its etag (or `*`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Shared, etag_of, etag_ok, if_match, json_ok, parse_json};
use crate::x509::{HeldCa, ca_store};

fn description(hub: &Shared, ca: &HeldCa) -> Value {
    json!({
        "id": format!("/certificates/{}", ca.name),
        "name": ca.name,
        "etag": etag_of(ca.etag_n),
        "type": "Microsoft.Devices/IotHubs/Certificates",
        "properties": {
            "subject": ca.subject,
            "expiry": ca.expiry,
            "thumbprint": ca.thumbprint,
            "isVerified": true,
            "created": ca.created,
            "updated": ca.updated,
            "certificate": ca.pem,
        },
        "hostName": hub.cfg.hostname,
    })
}

/// ARM's rule for a certificate name: 1 to 64 of `A-Za-z0-9-._`.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "certificate name must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '.', '_'",
        ))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404001,
        "CertificateNotFound",
        format!("Certificate {name} not found"),
    )
}

fn precondition(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        412001,
        "PreconditionFailed",
        message,
    )
}

pub(super) async fn put_certificate(
    State(hub): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_name(&name)?;
    let body = parse_json(&body)?;
    // `{"properties": {"certificate": ...}}` (management API) or `{"certificate": ...}`.
    let text = body
        .pointer("/properties/certificate")
        .or_else(|| body.get("certificate"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad("properties.certificate: the CA certificate (PEM or base64 DER)")
        })?;
    let now = hub.clock().now_rfc3339();
    let mut ca = HeldCa::parse(&name, text, &now)
        .map_err(|e| ApiError::bad(format!("properties.certificate: {e}")))?;
    let im = if_match(&headers);
    let saved = hub
        .store
        .call(move |c| {
            if let Some(old) = ca_store::get(c, &ca.name)? {
                if im.is_none() {
                    return Ok(Err(precondition(
                        "If-Match (the certificate's etag or *) is required to replace a certificate",
                    )));
                }
                if !etag_ok(&im, &etag_of(old.etag_n)) {
                    return Ok(Err(precondition("Precondition failed: etag mismatch")));
                }
                ca.created = old.created;
                ca.etag_n = old.etag_n + 1;
            }
            ca_store::put(c, &ca)?;
            Ok(Ok(ca))
        })
        .await??;
    tracing::info!(name = %saved.name, subject = %saved.subject, thumbprint = %saved.thumbprint, "CA certificate saved");
    Ok(json_ok(StatusCode::OK, description(&hub, &saved)))
}

pub(super) async fn get_certificate(
    State(hub): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult {
    let n = name.clone();
    match hub.store.call(move |c| ca_store::get(c, &n)).await? {
        Some(ca) => Ok(json_ok(StatusCode::OK, description(&hub, &ca))),
        None => Err(not_found(&name)),
    }
}

pub(super) async fn list_certificates(State(hub): State<Shared>) -> ApiResult {
    let all = hub.store.call(|c| ca_store::list(c)).await?;
    let value: Vec<Value> = all.iter().map(|ca| description(&hub, ca)).collect();
    Ok(json_ok(StatusCode::OK, json!({ "value": value })))
}

pub(super) async fn delete_certificate(
    State(hub): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let im = if_match(&headers);
    if im.is_none() {
        return Err(ApiError::bad(
            "If-Match (the certificate's etag or *) is required",
        ));
    }
    let n = name.clone();
    let r = hub
        .store
        .call(move |c| {
            let Some(ca) = ca_store::get(c, &n)? else {
                return Ok(Some(false));
            };
            if !etag_ok(&im, &etag_of(ca.etag_n)) {
                return Ok(None);
            }
            ca_store::delete(c, &n).map(Some)
        })
        .await?;
    match r {
        Some(true) => {
            tracing::info!(name = %name, "CA certificate deleted");
            Ok(StatusCode::OK.into_response())
        }
        Some(false) => Err(not_found(&name)),
        None => Err(precondition("Precondition failed: etag mismatch")),
    }
}
