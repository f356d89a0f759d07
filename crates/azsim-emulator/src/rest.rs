//! The service REST API (Azure's shapes, api-version 2021-04-12: registry, twins, methods, C2D
//! purge and feedback), the device-side HTTPS C2D calls (`device_http.rs`), and the
//! emulator-only endpoints under `/emulator/` (not part of Azure: C2D send and the event
//! stream), served by axum over hyper on the same TLS stack as the MQTT endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use azsim_proto::secret::Secret;
use base64::Engine as _;
use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::BroadcastStream;

use crate::clock::azure_time_us;
use crate::hub::{Hub, LiveGuard, MethodError, client_id};
use crate::store::{C2dMessage, Identity, q};
use crate::{HubError, state_dir, twin};

type Shared = Arc<Hub>;

pub(crate) async fn accept_loop(
    hub: Shared,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(hub.clone());
    // The C2D expiry / feedback sweep lives as long as the hub (it watches the shutdown flag).
    tokio::spawn(crate::feedback::maintain(hub.clone()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut shutdown = hub.shutdown.subscribe();
            let _live = LiveGuard::new(hub);
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        tracing::debug!(%peer, "https tls handshake failed");
                        return;
                    }
                };
            let svc = TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "https connection ended") },
                () = crate::hub::until_shutdown(&mut shutdown) => {}
            }
        });
    }
}

fn router(hub: Shared) -> Router {
    Router::new()
        .route("/devices", get(list_devices))
        .route(
            "/devices/{id}",
            put(put_device).get(get_device).delete(delete_device),
        )
        .route("/devices/{id}/modules", get(list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            put(put_module).get(get_module).delete(delete_module),
        )
        .route("/devices/{id}/commands", delete(purge_c2d))
        .route("/twins/{id}", get(get_twin).patch(patch_twin).put(put_twin))
        .route(
            "/twins/{id}/modules/{mid}",
            get(get_module_twin)
                .patch(patch_module_twin)
                .put(put_module_twin),
        )
        .route("/twins/{id}/methods", post(invoke_device))
        .route("/twins/{id}/modules/{mid}/methods", post(invoke_module))
        .route("/messages/serviceBound/feedback", get(receive_feedback))
        .route(
            "/messages/serviceBound/feedback/{lock}",
            delete(complete_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{lock}/abandon",
            post(abandon_feedback),
        )
        .route(
            "/devices/{id}/messages/deviceBound",
            get(crate::device_http::receive_handler),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{etag}",
            delete(crate::device_http::complete_handler),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{etag}/abandon",
            post(crate::device_http::abandon_handler),
        )
        .route("/emulator/devices/{id}/c2d", post(send_c2d))
        .route("/emulator/events", get(events_sse))
        .route("/emulator/events/recent", get(events_recent))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(hub.clone(), auth))
        .with_state(hub)
}

// ---------------------------------------------------------------------------------------------
// Errors in Azure's shape

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    name: &'static str,
    message: String,
    info: Value,
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
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 400004, "ArgumentInvalid", message)
    }
    pub(crate) fn device_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            404001,
            "DeviceNotFound",
            format!("Device {id} not registered"),
        )
    }
    fn module_not_found(id: &str, m: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            404010,
            "ModuleNotFound",
            format!("Module {m} on device {id} not registered"),
        )
    }
    fn precondition() -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            412001,
            "PreconditionFailed",
            "Precondition failed: etag mismatch",
        )
    }
    fn internal(e: HubError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            500001,
            "ServerError",
            e.to_string(),
        )
    }
    fn with_timeout(mut self, secs: u64) -> ApiError {
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
    message: String,
    info: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        r.headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.name));
        r.extensions_mut().insert(PendingError {
            code: self.code,
            message: self.message,
            info: self.info,
        });
        r
    }
}

/// Writes the body of an [`ApiError`] response in Azure's shape, stamped by `clock`; every
/// other response passes unchanged. Runs for every route (it is part of the [`auth`] layer).
fn render_error(clock: &crate::clock::Clock, mut r: Response) -> Response {
    let Some(e) = r.extensions_mut().remove::<PendingError>() else {
        return r;
    };
    let inner = json!({
        "errorCode": e.code,
        "trackingId": uuid::Uuid::new_v4().simple().to_string(),
        "message": e.message,
        "info": e.info,
        "timestampUtc": clock.now_rfc3339(),
    });
    let body = json!({"Message": inner.to_string(), "ExceptionMessage": ""});
    *r.body_mut() = axum::body::Body::from(body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

type ApiResult = Result<Response, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404000,
        "NotFound",
        "no such resource",
    )
}

/// The device of a device-side call (`/devices/{id}/messages/deviceBound...`), which a device
/// token for that device may make as well as the service.
fn device_side_id(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/devices/")?;
    let (raw, tail) = rest.split_once('/')?;
    if tail != "messages/deviceBound" && !tail.starts_with("messages/deviceBound/") {
        return None;
    }
    let mut id = String::new();
    azsim_proto::encoding::decode_to(&mut id, raw).ok()?;
    Some(id)
}

/// A device token for `id` (either key, `sr` with or without the HTTPS port).
async fn verify_device_rest(
    hub: &Hub,
    header: Option<&str>,
    id: &str,
) -> Result<(), crate::auth::ServiceAuthError> {
    use crate::auth::ServiceAuthError as E;
    let header = header.ok_or_else(|| E("missing Authorization header".into()))?;
    let token =
        azsim_proto::sas::Token::parse(header).map_err(|e| E(format!("malformed token: {e}")))?;
    let ident = crate::hub::load_identity(hub, id, None)
        .await
        .map_err(|e| E(e.to_string()))?
        .ok_or_else(|| E("unknown device".into()))?;
    if !ident.enabled {
        return Err(E("device disabled".into()));
    }
    let resources = crate::auth::identity_resources(&hub.cfg.hostname, hub.https_port, id, None);
    crate::auth::verify_device_token(
        &token,
        &[ident.primary_key.expose(), ident.secondary_key.expose()],
        &resources,
        hub.clock().unix_secs(),
    )
    .map_err(|e| E(e.to_string()))
}

async fn auth(State(hub): State<Shared>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut verdict = crate::auth::verify_service(
        header,
        &hub.cfg.hostname,
        hub.https_port,
        hub.owner_key.expose(),
        hub.clock().unix_secs(),
    );
    if verdict.is_err()
        && let Some(id) = device_side_id(req.uri().path())
    {
        verdict = verify_device_rest(&hub, header, &id).await;
    }
    let r = match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::info!(path = %req.uri().path(), reason = %e.0, "REST 401");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                401002,
                "IotHubUnauthorizedAccess",
                "Unauthorized",
            )
            .into_response()
        }
    };
    render_error(hub.clock(), r)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn json_ok(status: StatusCode, v: Value) -> Response {
    let mut r = (status, axum::Json(v)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// `If-Match` value without quotes; `None` when absent.
fn if_match(h: &HeaderMap) -> Option<String> {
    h.get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().trim_matches('"').to_string())
}

fn etag_ok(given: &Option<String>, current: &str) -> bool {
    match given.as_deref() {
        None | Some("*") | Some("") => true,
        Some(g) => g == current,
    }
}

/// Azure's id rule: up to 128 chars of ASCII alphanumerics and `-:.+%_#*?!(),=@;$'`.
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "{what} '{id}' is invalid: up to 128 characters of letters, digits and -:.+%_#*?!(),=@;$'"
        )))
    }
}

fn etag_of(n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(n.to_be_bytes())
}

// ---------------------------------------------------------------------------------------------
// Registry

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
            "type": "sas",
            "symmetricKey": {
                "primaryKey": i.primary_key.expose(),
                "secondaryKey": i.secondary_key.expose(),
            },
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        },
    });
    let m = v.as_object_mut().expect("object");
    match &i.module_id {
        Some(mid) => {
            m.insert("moduleId".into(), json!(mid));
            m.insert("managedBy".into(), json!(i.managed_by));
        }
        None => {
            m.insert("capabilities".into(), json!({"iotEdge": false}));
            m.insert("deviceScope".into(), json!(null));
            m.insert("parentScopes".into(), json!([]));
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
    if let Some(t) = body.pointer("/authentication/type").and_then(Value::as_str)
        && t != "sas"
    {
        return Err(ApiError::bad(format!(
            "authentication.type '{t}' is not supported by the local hub (sas only)"
        )));
    }
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
                    };
                    (i, true, false)
                }
            };
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
    tracing::info!(device = %ident.device_id, module = ?ident.module_id, created, "identity saved");
    Ok(json_ok(StatusCode::OK, device_json(hub, &ident, depth)))
}

async fn put_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    upsert_identity(&hub, &headers, id, None, body).await
}

async fn put_module(
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

async fn get_device(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    get_identity_json(&hub, id, None).await
}

async fn get_module(
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
    let (d, m) = (id.clone(), module.clone());
    let activity = hub.store.activity().clone();
    let r = hub
        .store
        .call(move |c| {
            let Some(i) = q::get_identity(c, &d, m.as_deref())? else {
                return Ok(Some(false));
            };
            if !etag_ok(&im, &etag_of(i.etag_n)) {
                return Ok(None);
            }
            // Under the store lock, so the activity flusher cannot write the times back.
            activity.forget(&d, m.as_deref());
            q::delete_identity(c, &d, m.as_deref())?;
            Ok(Some(true))
        })
        .await?;
    match r {
        Some(true) => {
            hub.kick_identity(&id, module.as_deref(), "identity deleted");
            tracing::info!(device = %id, module = ?module, "identity deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some(false) => Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        }),
        None => Err(ApiError::precondition()),
    }
}

async fn delete_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    delete_identity(&hub, &headers, id, None).await
}

async fn delete_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    delete_identity(&hub, &headers, id, Some(mid)).await
}

#[derive(Deserialize)]
struct ListQuery {
    top: Option<usize>,
}

async fn list_devices(State(hub): State<Shared>, Query(lq): Query<ListQuery>) -> ApiResult {
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

async fn list_modules(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = id.clone();
    let list = hub
        .store
        .call(move |c| q::list_identities(c, Some(&d)))
        .await?;
    let v: Vec<Value> = list.iter().map(|i| device_json(&hub, i, 0)).collect();
    Ok(json_ok(StatusCode::OK, Value::Array(v)))
}

// ---------------------------------------------------------------------------------------------
// Twins

/// `c2d_count` is the device's C2D queue depth (0 for a module: modules have no C2D queue).
fn twin_json(hub: &Hub, i: &Identity, c2d_count: u32) -> Value {
    let cid = client_id(&i.device_id, i.module_id.as_deref());
    let connected = hub.is_connected(&cid);
    let (last_activity, _) = hub.store.activity().times(&cid);
    let mut desired = i.desired.clone();
    desired.insert(
        "$metadata".into(),
        json!({"$lastUpdated": i.desired_updated, "$lastUpdatedVersion": i.desired_version}),
    );
    desired.insert("$version".into(), json!(i.desired_version));
    let mut reported = i.reported.clone();
    reported.insert(
        "$metadata".into(),
        json!({"$lastUpdated": i.reported_updated}),
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
        "authenticationType": "sas",
        "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        "tags": i.tags,
        "properties": {"desired": desired, "reported": reported},
    });
    let m = v.as_object_mut().expect("object");
    match &i.module_id {
        Some(mid) => {
            m.insert("moduleId".into(), json!(mid));
        }
        None => {
            m.insert("capabilities".into(), json!({"iotEdge": false}));
        }
    }
    v
}

/// The C2D queue depth a twin shows: the device's, or 0 for a module.
fn twin_c2d_count(c: &rusqlite::Connection, i: &Identity) -> Result<u32, HubError> {
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
        Some((i, depth)) => Ok(json_ok(StatusCode::OK, twin_json(hub, &i, depth))),
        None => Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        }),
    }
}

async fn get_twin(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    get_twin_json(&hub, id, None).await
}

async fn get_module_twin(
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

/// PATCH (merge) or PUT (replace) tags and desired properties.
async fn update_twin(
    hub: &Shared,
    headers: &HeaderMap,
    id: String,
    module: Option<String>,
    body: Bytes,
    replace: bool,
) -> ApiResult {
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    let tags = section(&body, "/tags", "tags")?;
    let desired = section(&body, "/properties/desired", "properties.desired")?;
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
            if let Some(t) = &tags {
                let mut next = if replace { Map::new() } else { i.tags.clone() };
                twin::merge(&mut next, t);
                if let Err(e) = twin::check_size(&next, twin::MAX_TAGS_BYTES, "tags") {
                    return Ok(Err(ApiError::bad(e.0)));
                }
                i.tags = next;
                changed = true;
            } else if replace {
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
                (None, true) if !i.desired.is_empty() => {
                    desired_patch = Some(twin::replacement_patch(&i.desired, &Map::new()));
                    Some(Map::new())
                }
                _ => None,
            };
            if let Some(next) = new_desired {
                if let Err(e) =
                    twin::check_size(&next, twin::MAX_SECTION_BYTES, "desired properties")
                {
                    return Ok(Err(ApiError::bad(e.0)));
                }
                i.desired = next;
                i.desired_version += 1;
                i.desired_updated = now;
                changed = true;
            }
            if changed {
                i.twin_version += 1;
                q::put_identity(c, &i)?;
            }
            let depth = twin_c2d_count(c, &i)?;
            Ok(Ok((i, desired_patch, depth)))
        })
        .await?;
    let (i, patch, depth) = r?;
    if let Some(p) = patch {
        hub.push_desired(&i.device_id, i.module_id.as_deref(), &p, i.desired_version);
        hub.emit(&i.device_id, json!({"type":"twinDesired","deviceId":i.device_id,"moduleId":i.module_id,"version":i.desired_version,"patch":p}));
    }
    Ok(json_ok(StatusCode::OK, twin_json(hub, &i, depth)))
}

async fn patch_twin(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, None, body, false).await
}

async fn put_twin(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, None, body, true).await
}

async fn patch_module_twin(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, Some(mid), body, false).await
}

async fn put_module_twin(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    update_twin(&hub, &headers, id, Some(mid), body, true).await
}

// ---------------------------------------------------------------------------------------------
// Methods

fn timeout_field(
    body: &Value,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        },
    }
}

async fn invoke(hub: &Shared, id: String, module: Option<String>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    let name = body
        .get("methodName")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("methodName is required"))?
        .to_string();
    let method = azsim_proto::topic::MethodName::new(&name)
        .map_err(|e| ApiError::bad(format!("methodName: {e}")))?;
    let response_timeout = timeout_field(&body, "responseTimeoutInSeconds", 30, 5, 300)?;
    let connect_timeout = timeout_field(&body, "connectTimeoutInSeconds", 0, 0, 300)?;
    let payload = body.get("payload").cloned().unwrap_or(Value::Null);
    if serde_json::to_vec(&payload).map(|v| v.len()).unwrap_or(0) > 128 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            413001,
            "MessageTooLarge",
            "method payload exceeds 128 KB",
        ));
    }
    if crate::hub::load_identity(hub, &id, module.as_deref())
        .await?
        .is_none()
    {
        return Err(match module {
            Some(m) => ApiError::module_not_found(&id, &m),
            None => ApiError::device_not_found(&id),
        });
    }
    let r = hub
        .invoke_method(
            &id,
            module.as_deref(),
            method,
            &payload,
            Duration::from_secs(response_timeout),
            Duration::from_secs(connect_timeout),
        )
        .await;
    match r {
        Ok((status, body)) => {
            let payload = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            };
            Ok(json_ok(
                StatusCode::OK,
                json!({"status": status, "payload": payload}),
            ))
        }
        Err(MethodError::NotOnline) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            404103,
            "DeviceNotOnline",
            "Timed out waiting for device to connect.",
        )
        .with_timeout(connect_timeout)),
        Err(MethodError::Timeout) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            504101,
            "GatewayTimeout",
            "Timed out waiting for the response from device.",
        )
        .with_timeout(response_timeout)),
    }
}

async fn invoke_device(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    invoke(&hub, id, None, body).await
}

async fn invoke_module(
    State(hub): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    invoke(&hub, id, Some(mid), body).await
}

// ---------------------------------------------------------------------------------------------
// C2D

async fn purge_c2d(State(hub): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let d = id.clone();
    let now = hub.now_ms();
    let r = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, None)?.is_none() {
                return Ok(None);
            }
            q::c2d_purge(c, &d, now).map(Some)
        })
        .await?;
    match r {
        Some(n) => Ok(json_ok(
            StatusCode::OK,
            json!({"totalMessagesPurged": n, "deviceId": id}),
        )),
        None => Err(ApiError::device_not_found(&id)),
    }
}

fn opt_str(body: &Value, k: &str) -> Result<Option<String>, ApiError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("{k} must be a string"))),
    }
}

fn prop_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Emulator-only (not Azure): queue a C2D message for a device.
async fn send_c2d(State(hub): State<Shared>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    let payload = match (opt_str(&body, "body")?, opt_str(&body, "bodyBase64")?) {
        (Some(_), Some(_)) => return Err(ApiError::bad("give body or bodyBase64, not both")),
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| ApiError::bad("bodyBase64 is not base64"))?,
        (None, None) => Vec::new(),
    };
    let ack = opt_str(&body, "ack")?.unwrap_or_else(|| "none".into());
    if azsim_proto::property_bag::Ack::parse(&ack).is_err() {
        return Err(ApiError::bad(
            "ack must be none, positive, negative or full",
        ));
    }
    let mut properties = Vec::new();
    match body.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !prop_name_ok(k) || azsim_proto::property_bag::is_reserved_name(k) {
                    return Err(ApiError::bad(format!("properties: invalid name '{k}'")));
                }
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        return Err(ApiError::bad(format!("properties.{k}: must be a string")));
                    }
                    other => other.to_string(),
                };
                properties.push((k.clone(), v));
            }
        }
        Some(_) => return Err(ApiError::bad("properties must be an object of strings")),
    }
    let ttl = match body.get("ttlSeconds") {
        None | Some(Value::Null) => hub.cfg.limits.c2d_default_ttl.as_millis() as i64,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=172_800).contains(&n) => (n * 1000) as i64,
            _ => {
                return Err(ApiError::bad(
                    "ttlSeconds must be an integer from 1 to 172800",
                ));
            }
        },
    };
    let message_id =
        opt_str(&body, "messageId")?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if message_id.is_empty() || message_id.len() > 128 {
        return Err(ApiError::bad("messageId must be 1 to 128 characters"));
    }
    let size = payload.len()
        + properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > hub.cfg.limits.c2d_max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            413001,
            "MessageTooLarge",
            format!("message exceeds {} bytes", hub.cfg.limits.c2d_max_bytes),
        ));
    }
    let now = hub.now_ms();
    let msg = C2dMessage {
        seq: 0,
        device_id: id.clone(),
        message_id: message_id.clone(),
        correlation_id: opt_str(&body, "correlationId")?,
        content_type: opt_str(&body, "contentType")?,
        content_encoding: opt_str(&body, "contentEncoding")?,
        user_id: None,
        ack,
        properties,
        body: payload,
        enqueued_ms: now,
        expiry_ms: now + ttl,
        delivery_count: 0,
    };
    let cap = hub.cfg.limits.c2d_queue_cap;
    let d = id.clone();
    let r = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, None)?.is_none() {
                return Ok(Err(ApiError::device_not_found(&d)));
            }
            // Expired messages no longer count against the cap.
            q::c2d_expire_due(c, Some(&d), now)?;
            Ok(Ok(q::c2d_enqueue(c, &msg, cap)?))
        })
        .await?;
    match r? {
        Some(depth) => {
            hub.wake_c2d(&id);
            Ok(json_ok(
                StatusCode::ACCEPTED,
                json!({"messageId": message_id, "deviceId": id, "queueDepth": depth}),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403004,
            "DeviceMaximumQueueDepthExceeded",
            format!("Device {id} already has {cap} messages pending"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// C2D feedback (Azure's service REST calls; see feedback.rs)

const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// The lock token from the URL: quotes (an `ETag` passed on verbatim) are accepted.
fn lock_token(raw: &str) -> Result<String, ApiError> {
    let t = raw.trim().trim_matches('"');
    if t.is_empty() || t.len() > 128 {
        return Err(ApiError::bad("lockToken is invalid"));
    }
    Ok(t.to_string())
}

fn lock_lost(token: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        412002,
        "DeviceMessageLockLost",
        format!("feedback lock {token} is unknown or has expired"),
    )
}

/// `GET /messages/serviceBound/feedback`: 204 when nothing is pending, else 200 with a batch
/// (JSON array of records) locked under the token in `ETag`.
async fn receive_feedback(State(hub): State<Shared>) -> ApiResult {
    let token = uuid::Uuid::new_v4().to_string();
    let t = token.clone();
    let rules = crate::feedback::Rules::of(&hub.cfg.limits);
    let now = hub.now_ms();
    let batch = hub
        .store
        .call(move |c| {
            // Overdue messages produce their Expired feedback before anyone asks for it.
            q::c2d_expire_due(c, None, now)?;
            crate::feedback::receive(c, now, &rules, &t)
        })
        .await?;
    if batch.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = Value::Array(batch).to_string();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FEEDBACK_CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{token}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(r)
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`: complete (delete) the batch.
async fn complete_feedback(State(hub): State<Shared>, Path(raw): Path<String>) -> ApiResult {
    let token = lock_token(&raw)?;
    let t = token.clone();
    let now = hub.now_ms();
    let n = hub
        .store
        .call(move |c| crate::feedback::complete(c, &t, now))
        .await?;
    if n == 0 {
        return Err(lock_lost(&token));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: make the batch visible again.
async fn abandon_feedback(State(hub): State<Shared>, Path(raw): Path<String>) -> ApiResult {
    let token = lock_token(&raw)?;
    let t = token.clone();
    let now = hub.now_ms();
    let n = hub
        .store
        .call(move |c| crate::feedback::abandon(c, &t, now))
        .await?;
    if n == 0 {
        return Err(lock_lost(&token));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Event stream (emulator-only)

#[derive(Deserialize)]
struct EventQuery {
    #[serde(rename = "deviceId")]
    device_id: Option<String>,
    limit: Option<usize>,
}

async fn events_sse(State(hub): State<Shared>, Query(eq): Query<EventQuery>) -> impl IntoResponse {
    let rx = hub.events.subscribe();
    let filter = eq.device_id;
    let mut shutdown = hub.shutdown.subscribe();
    let ready =
        futures::stream::once(async { Ok::<Event, Infallible>(Event::default().comment("ready")) });
    let live = BroadcastStream::new(rx).filter_map(move |r| {
        let out = match r {
            Ok(ev) if filter.as_deref().is_none_or(|d| d == ev.device_id) => {
                Some(Ok(Event::default().data(ev.json.clone())))
            }
            _ => None,
        };
        async move { out }
    });
    let stream = ready
        .chain(live)
        .take_until(async move { crate::hub::until_shutdown(&mut shutdown).await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn events_recent(State(hub): State<Shared>, Query(eq): Query<EventQuery>) -> ApiResult {
    hub.store.flush().await;
    let limit = eq.limit.unwrap_or(100).min(hub.cfg.limits.event_log_cap);
    let d = eq.device_id;
    let rows = hub
        .store
        .call(move |c| q::recent_events(c, d.as_deref(), limit))
        .await?;
    let v: Vec<Value> = rows
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    Ok(json_ok(StatusCode::OK, Value::Array(v)))
}
