//! DPS over HTTPS, on the hub's HTTPS listener: the service REST API (enrollments, enrollment
//! groups, registration states, queries; any api-version, the SDKs send 2018-09-01-preview to
//! 2021-10-01, whose shapes agree on what is served here), authenticated with a
//! `provisioningserviceowner` token, and the device API
//! (`PUT /{idScope}/registrations/{id}/register`,
//! `GET /{idScope}/registrations/{id}/operations/{operationId}`) authenticated with the
//! registration's SAS token or, without one, the client certificate of the TLS handshake. The
//! hub's own service auth does not apply to these paths ([`is_dps_path`]); errors have DPS's
//! body.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::records::normalize;
use super::store::{self, Kind};
use super::{DpsError, SERVICE_POLICY, register};
use crate::hub::Hub;
use crate::untrusted::Untrusted;

type Shared = Arc<Hub>;
type DpsResult = Result<Response, DpsError>;

/// The routes, merged into the hub's router.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/enrollments/{id}",
            put(put_enrollment)
                .get(get_enrollment)
                .delete(delete_enrollment),
        )
        .route("/enrollments", post(bulk_enrollments))
        .route("/enrollments/query", post(query_enrollments))
        .route(
            "/enrollments/{id}/attestationmechanism",
            post(enrollment_attestation),
        )
        .route(
            "/enrollmentGroups/{id}",
            put(put_group).get(get_group).delete(delete_group),
        )
        .route("/enrollmentGroups/query", post(query_groups))
        .route(
            "/enrollmentGroups/{id}/attestationmechanism",
            post(group_attestation),
        )
        // azure-iot-provisioning-service (Node) spells this one `enrollmentgroups`.
        .route(
            "/enrollmentgroups/{id}/attestationmechanism",
            post(group_attestation),
        )
        .route(
            "/registrations/{id}",
            get(get_registration).delete(delete_registration),
        )
        .route("/registrations/{id}/query", post(query_group_registrations))
        .route("/{scope}/registrations/{id}/register", put(device_register))
        .route(
            "/{scope}/registrations/{id}/operations/{op}",
            get(device_operation),
        )
}

/// Whether a request goes to DPS (and so is not the hub's service API, whose auth it skips).
pub(crate) fn is_dps_path(path: &str) -> bool {
    let mut it = path.trim_start_matches('/').split('/');
    matches!(
        (it.next(), it.next(), it.next(), it.next(), it.next()),
        (Some("enrollments" | "enrollmentGroups"), Some(_), None, ..)
            | (Some("enrollments"), None, ..)
            | (
                Some("enrollments" | "enrollmentGroups" | "enrollmentgroups"),
                Some(_),
                Some("attestationmechanism"),
                None,
                _,
            )
            | (Some("registrations"), Some(_), None, ..)
            | (Some("registrations"), Some(_), Some("query"), None, _)
            | (
                Some(_),
                Some("registrations"),
                Some(_),
                Some("register"),
                None
            )
            | (
                Some(_),
                Some("registrations"),
                Some(_),
                Some("operations"),
                Some(_)
            )
    )
}

/// A DPS error response, body stamped by the hub's clock.
fn error_response(hub: &Hub, e: &DpsError) -> Response {
    let mut r = json_response(e.status_code(), &e.body(hub));
    if let Some(s) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// Runs a handler's body and renders its error in DPS's shape.
fn respond(hub: &Hub, r: DpsResult) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(status = e.status, message = %e.message, "dps: request failed");
            }
            error_response(hub, &e)
        }
    }
}

fn authorization(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// A `provisioningserviceowner` token for this hub's host (with or without the HTTPS port).
fn check_service(hub: &Hub, h: &HeaderMap) -> Result<(), DpsError> {
    let refuse = |why: String| {
        tracing::info!(reason = %why, "dps service REST 401");
        DpsError::unauthorized("Unauthorized")
    };
    let header = authorization(h).ok_or_else(|| refuse("missing Authorization header".into()))?;
    let token = azsim_proto::sas::Token::parse(header)
        .map_err(|e| refuse(format!("malformed token: {e}")))?;
    if token.policy() != Some(SERVICE_POLICY) {
        return Err(refuse(format!("skn is not {SERVICE_POLICY}")));
    }
    let host = &hub.cfg.hostname;
    let with_port = format!("{host}:{}", hub.https_port);
    let resources = [host.clone(), with_port];
    crate::auth::verify_device_token(
        &token,
        &[hub.dps.service_key.expose()],
        &resources,
        hub.clock().unix_secs(),
    )
    .map_err(|e| refuse(e.to_string()))
}

fn if_match(h: &HeaderMap) -> Option<String> {
    h.get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty() && s != "*")
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, DpsError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(DpsError::bad("body must be a JSON object")),
        Err(e) => Err(DpsError::bad(format!("invalid JSON body: {e}"))),
    }
}

fn not_found(kind: Kind, id: &str) -> DpsError {
    let (code, what) = match kind {
        Kind::Enrollment => (404201, "enrollment"),
        Kind::Registration => (404202, "registration"),
        Kind::Group => (404203, "enrollment group"),
    };
    DpsError::new(404, code, format!("{what} '{}' not found", Untrusted(id)))
}

fn check_record_id(what: &str, id: &str) -> Result<(), DpsError> {
    if register::valid_registration_id(id) {
        Ok(())
    } else {
        Err(DpsError::bad(format!(
            "{what} is invalid: 1-128 letters, digits and -._:"
        )))
    }
}

async fn put_record(hub: &Hub, kind: Kind, id: String, h: &HeaderMap, body: Bytes) -> DpsResult {
    check_service(hub, h)?;
    let body = parse_body(&body)?;
    let record = upsert(hub, kind, &id, body, if_match(h), false).await?;
    Ok(json_response(StatusCode::OK, &record))
}

/// Creates or replaces a record (`create_only`: refuses an existing one with 409), checking
/// `if_match` against the stored etag.
async fn upsert(
    hub: &Hub,
    kind: Kind,
    id: &str,
    body: serde_json::Map<String, Value>,
    if_match: Option<String>,
    create_only: bool,
) -> Result<Value, DpsError> {
    check_record_id(
        if kind == Kind::Group {
            "enrollmentGroupId"
        } else {
            "registrationId"
        },
        id,
    )?;
    super::ensure_schema(hub).await?;
    let id2 = id.to_string();
    let previous = hub.store.call(move |c| store::get(c, kind, &id2)).await?;
    match (&previous, &if_match) {
        (Some(_), _) if create_only => {
            return Err(DpsError::new(
                409,
                409201,
                format!("'{}' already exists", Untrusted(id)),
            ));
        }
        (Some(p), Some(tag)) if p.get("etag").and_then(Value::as_str) != Some(tag) => {
            return Err(DpsError::new(
                412,
                412002,
                "Precondition failed: etag mismatch",
            ));
        }
        (None, Some(_)) => return Err(not_found(kind, id)),
        _ => {}
    }
    let record = normalize(hub, kind, id, body, previous.as_ref())?;
    let (r2, id2) = (record.clone(), id.to_string());
    hub.store
        .call(move |c| store::put(c, kind, &id2, &r2))
        .await?;
    tracing::info!(kind = ?kind, id = %id, created = previous.is_none(), "dps: record saved");
    Ok(record)
}

/// `POST /enrollments`: a bulk operation (`mode` create, update, updateIfMatchETag or delete)
/// over individual enrollments; each failure is listed with its DPS code and status.
async fn bulk_enrollments(State(hub): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let r = async {
        check_service(&hub, &h)?;
        let body = parse_body(&body)?;
        let mode = body
            .get("mode")
            .and_then(Value::as_str)
            .ok_or_else(|| DpsError::bad("mode: required"))?
            .to_string();
        if !["create", "update", "updateIfMatchETag", "delete"].contains(&mode.as_str()) {
            return Err(DpsError::bad(
                "mode must be create, update, updateIfMatchETag or delete",
            ));
        }
        let items = body
            .get("enrollments")
            .and_then(Value::as_array)
            .ok_or_else(|| DpsError::bad("enrollments: an array is required"))?;
        let mut errors = Vec::new();
        for item in items {
            let Some(obj) = item.as_object().cloned() else {
                return Err(DpsError::bad("enrollments: each must be an object"));
            };
            let id = obj
                .get("registrationId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let etag = obj.get("etag").and_then(Value::as_str).map(str::to_string);
            let r = match mode.as_str() {
                "delete" => delete_one(&hub, Kind::Enrollment, &id, etag).await,
                "create" => upsert(&hub, Kind::Enrollment, &id, obj, None, true)
                    .await
                    .map(drop),
                "update" => upsert(&hub, Kind::Enrollment, &id, obj, None, false)
                    .await
                    .map(drop),
                _ => upsert(&hub, Kind::Enrollment, &id, obj, etag, false)
                    .await
                    .map(drop),
            };
            if let Err(e) = r {
                errors.push(
                    json!({"registrationId": id, "errorCode": e.code, "errorStatus": e.message}),
                );
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({"isSuccessful": errors.is_empty(), "errors": errors}),
        ))
    }
    .await;
    respond(&hub, r)
}

/// Deletes one record (checking `if_match`).
async fn delete_one(
    hub: &Hub,
    kind: Kind,
    id: &str,
    if_match: Option<String>,
) -> Result<(), DpsError> {
    super::ensure_schema(hub).await?;
    let id2 = id.to_string();
    let r = hub
        .store
        .call(move |c| {
            let Some(v) = store::get(c, kind, &id2)? else {
                return Ok(None);
            };
            if if_match
                .as_deref()
                .is_some_and(|tag| v.get("etag").and_then(Value::as_str) != Some(tag))
            {
                return Ok(Some(false));
            }
            store::delete(c, kind, &id2)?;
            Ok(Some(true))
        })
        .await?;
    match r {
        Some(true) => {
            tracing::info!(kind = ?kind, id = %id, "dps: record deleted");
            Ok(())
        }
        Some(false) => Err(DpsError::new(
            412,
            412002,
            "Precondition failed: etag mismatch",
        )),
        None => Err(not_found(kind, id)),
    }
}

async fn get_record(hub: &Hub, kind: Kind, id: String, h: &HeaderMap) -> DpsResult {
    check_service(hub, h)?;
    super::ensure_schema(hub).await?;
    let id2 = id.clone();
    match hub.store.call(move |c| store::get(c, kind, &id2)).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &v)),
        None => Err(not_found(kind, &id)),
    }
}

async fn delete_record(hub: &Hub, kind: Kind, id: String, h: &HeaderMap) -> DpsResult {
    check_service(hub, h)?;
    delete_one(hub, kind, &id, if_match(h)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /enrollments/query`, `/enrollmentGroups/query`: every record (the query text is not
/// evaluated: `*` is all the SDKs send), paged by `x-ms-max-item-count` with the next offset in
/// `x-ms-continuation`.
async fn query_records(hub: &Hub, kind: Kind, h: &HeaderMap, body: Bytes) -> DpsResult {
    check_service(hub, h)?;
    if !body.is_empty() {
        parse_body(&body)?;
    }
    super::ensure_schema(hub).await?;
    let all = hub.store.call(move |c| store::list(c, kind)).await?;
    let item_type = if kind == Kind::Group {
        "enrollmentGroup"
    } else {
        "enrollment"
    };
    Ok(page(all, h, item_type))
}

/// One page of `all`: `x-ms-max-item-count` items from the offset in `x-ms-continuation`, the
/// next offset in the answer's `x-ms-continuation` when more remain.
fn page(all: Vec<Value>, h: &HeaderMap, item_type: &'static str) -> Response {
    let header_num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<usize>().ok())
    };
    let start = header_num("x-ms-continuation").unwrap_or(0).min(all.len());
    let size = header_num("x-ms-max-item-count")
        .filter(|n| *n > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(size).min(all.len());
    let mut r = json_response(StatusCode::OK, &Value::Array(all[start..end].to_vec()));
    r.headers_mut()
        .insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if end < all.len()
        && let Ok(v) = HeaderValue::from_str(&end.to_string())
    {
        r.headers_mut().insert("x-ms-continuation", v);
    }
    r
}

async fn put_enrollment(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let r = put_record(&hub, Kind::Enrollment, id, &h, body).await;
    respond(&hub, r)
}

async fn get_enrollment(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = get_record(&hub, Kind::Enrollment, id, &h).await;
    respond(&hub, r)
}

async fn delete_enrollment(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = delete_record(&hub, Kind::Enrollment, id, &h).await;
    respond(&hub, r)
}

async fn query_enrollments(State(hub): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let r = query_records(&hub, Kind::Enrollment, &h, body).await;
    respond(&hub, r)
}

/// `POST /enrollments/{id}/attestationmechanism` (and groups'): the record's attestation.
async fn attestation_of(hub: &Hub, kind: Kind, id: String, h: &HeaderMap) -> DpsResult {
    check_service(hub, h)?;
    super::ensure_schema(hub).await?;
    let id2 = id.clone();
    match hub.store.call(move |c| store::get(c, kind, &id2)).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &v["attestation"])),
        None => Err(not_found(kind, &id)),
    }
}

async fn enrollment_attestation(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = attestation_of(&hub, Kind::Enrollment, id, &h).await;
    respond(&hub, r)
}

async fn group_attestation(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = attestation_of(&hub, Kind::Group, id, &h).await;
    respond(&hub, r)
}

async fn put_group(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let r = put_record(&hub, Kind::Group, id, &h, body).await;
    respond(&hub, r)
}

async fn get_group(State(hub): State<Shared>, Path(id): Path<String>, h: HeaderMap) -> Response {
    let r = get_record(&hub, Kind::Group, id, &h).await;
    respond(&hub, r)
}

async fn delete_group(State(hub): State<Shared>, Path(id): Path<String>, h: HeaderMap) -> Response {
    let r = delete_record(&hub, Kind::Group, id, &h).await;
    respond(&hub, r)
}

async fn query_groups(State(hub): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let r = query_records(&hub, Kind::Group, &h, body).await;
    respond(&hub, r)
}

async fn get_registration(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = get_record(&hub, Kind::Registration, id, &h).await;
    respond(&hub, r)
}

async fn delete_registration(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = delete_record(&hub, Kind::Registration, id, &h).await;
    respond(&hub, r)
}

/// `POST /registrations/{groupId}/query`: the registration states of a group's devices, paged
/// as the other queries.
async fn query_group_registrations(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    let r = async {
        check_service(&hub, &h)?;
        super::ensure_schema(&hub).await?;
        let id2 = id.clone();
        let (group, states) = hub
            .store
            .call(move |c| {
                Ok((
                    store::get(c, Kind::Group, &id2)?,
                    store::registrations_of_group(c, &id2)?,
                ))
            })
            .await?;
        if group.is_none() {
            return Err(not_found(Kind::Group, &id));
        }
        Ok(page(states, &h, "deviceRegistration"))
    }
    .await;
    respond(&hub, r)
}

/// The device's credential: its `Authorization` SAS token, or (none given) the client
/// certificate of its TLS handshake (X.509 attestation).
fn device_cred<'a>(
    h: &'a HeaderMap,
    certs: &'a Option<axum::Extension<crate::x509::PeerCerts>>,
) -> register::Cred<'a> {
    let chain = certs.as_ref().and_then(|c| c.0.0.as_deref());
    match (authorization(h), chain) {
        (None, Some(chain)) if !chain.is_empty() => register::Cred::X509(chain),
        (token, _) => register::Cred::Sas(token),
    }
}

/// `PUT /{idScope}/registrations/{id}/register`: 202 with the operation to poll.
async fn device_register(
    State(hub): State<Shared>,
    Path((scope, id)): Path<(String, String)>,
    certs: Option<axum::Extension<crate::x509::PeerCerts>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let r = register::register(&hub, &scope, &id, device_cred(&h, &certs), &body)
        .await
        .map(|v| json_response(StatusCode::ACCEPTED, &v));
    log_device(&id, &r);
    respond(&hub, r)
}

/// `GET /{idScope}/registrations/{id}/operations/{operationId}`: 200 with the registration state.
async fn device_operation(
    State(hub): State<Shared>,
    Path((scope, id, op)): Path<(String, String, String)>,
    certs: Option<axum::Extension<crate::x509::PeerCerts>>,
    h: HeaderMap,
) -> Response {
    let r = register::operation_status(&hub, &scope, &id, device_cred(&h, &certs), &op)
        .await
        .map(|v| json_response(StatusCode::OK, &v));
    log_device(&id, &r);
    respond(&hub, r)
}

fn log_device(id: &str, r: &DpsResult) {
    if let Err(e) = r {
        tracing::info!(registration_id = %Untrusted(id), status = e.status, reason = %e.message, "dps: device request refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dps_paths_are_told_apart_from_the_hub_s() {
        for p in [
            "/enrollments/r1",
            "/enrollments/query",
            "/enrollmentGroups/g1",
            "/registrations/r1",
            "/0ne0000ABCD/registrations/r1/register",
            "/0ne0000ABCD/registrations/r1/operations/5.abc",
        ] {
            assert!(is_dps_path(p), "{p}");
        }
        for p in [
            "/devices/d1",
            "/twins/d1",
            "/devices/d1/messages/deviceBound",
            "/registrations/r1/extra",
            "/x/registrations/r1",
            "/$iothub/websocket",
        ] {
            assert!(!is_dps_path(p), "{p}");
        }
    }
}
