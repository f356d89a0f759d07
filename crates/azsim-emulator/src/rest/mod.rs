//! The service REST API (Azure's shapes, api-version 2021-04-12), the device-side HTTPS C2D
//! calls and the emulator-only endpoints under `/emulator/` (not part of Azure: C2D send and the
//! event stream), served by axum over hyper on the same TLS stack as the MQTT endpoint.
//!
//! One module per resource: [`devices`] (registry: devices and modules), [`twins`],
//! [`methods`], [`c2d`] (purge, and the emulator's send), [`feedback`] (the service's C2D
//! feedback queue), [`device_bound`] (the device-side HTTPS C2D calls) and [`events`] (the
//! emulator's event stream); [`error`] writes errors in Azure's shape. This file holds what they
//! share: the accept loop, the router, authentication and the small request helpers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::hub::{Hub, LiveGuard};
use crate::listen::{Admitted, Gate};
use crate::telemetry::AuthMethod;
use crate::untrusted::Untrusted;

use error::render_error;
pub(crate) use error::{ApiError, tracking_exception_message};

mod access;
mod body_deadline;
mod bulk;
mod c2d;
mod certificates;
pub(crate) mod config_apply;
mod config_metrics;
mod configurations;
mod device_bound;
mod device_events;
mod devices;
mod error;
mod events;
mod fault;
mod feedback;
mod files;
mod job_runner;
mod job_store;
mod jobs;
mod methods;
mod query;
mod twins;

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
    tokio::spawn(job_runner::resume(hub.clone()));
    tokio::spawn(config_apply::maintain(hub.clone()));
    let mut gate = Gate::new(listener, "https", hub.cfg.limits.max_pre_auth_connections);
    loop {
        let Admitted { tcp, peer, permit } = gate.next().await;
        let acceptor = acceptor.clone();
        let app = app.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut shutdown = hub.shutdown.subscribe();
            let _live = LiveGuard::new(hub.clone());
            let limits = &hub.cfg.limits;
            // Until its first request has arrived, a connection counts as unauthenticated: the
            // TLS handshake and the first request's headers share one deadline.
            let deadline = Instant::now() + limits.connect_deadline;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "https tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https closed: no TLS handshake within the connect deadline");
                    return;
                }
            };
            let requests = Requests::new(permit);
            // X.509 devices (WebSocket MQTT, DPS over HTTPS) are checked against this chain.
            let certs = crate::x509::PeerCerts(tls.get_ref().1.peer_certificates().map(Arc::from));
            let svc = {
                let requests = requests.clone();
                let body_timeout = limits.http_body_timeout;
                tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let version = req.version();
                    let (mut req, expired) = body_deadline::bound(req, body_timeout);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req.extensions_mut().insert(certs.clone());
                    let in_flight = requests.begin();
                    let app = app.clone();
                    async move {
                        let mut r = app.oneshot(req).await?;
                        if expired.is_set() {
                            tracing::info!(%peer, "https: request body not received within its deadline: 408");
                            r = body_deadline::timed_out(version, body_timeout.as_secs());
                        }
                        Ok::<_, std::convert::Infallible>(r.map(|inner| {
                            axum::body::Body::new(TrackedBody {
                                inner,
                                _in_flight: in_flight,
                            })
                        }))
                    }
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.http_header_timeout)
                // A request's head (a WebSocket upgrade's too) is at most the pre-auth cap: 431.
                .max_buf_size(limits.pre_auth_max_bytes.max(8192));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "https connection ended") },
                () = requests.until_idle(deadline, limits.http_idle_timeout) => {
                    tracing::debug!(%peer, "https closed: no request in progress within its deadline");
                }
                () = crate::hub::until_shutdown(&mut shutdown) => {}
            }
        });
    }
}

/// One HTTPS connection's requests, for its deadlines: how many are in progress (from their
/// headers until their response body is done), when the last one ended, and the connection's
/// place among the unauthenticated ones until its first request.
struct Requests {
    state: Mutex<RequestState>,
    changed: Notify,
}

struct RequestState {
    active: usize,
    /// When the last request ended; `None` before the first one began.
    last_end: Option<Instant>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Requests {
    fn new(permit: OwnedSemaphorePermit) -> Arc<Requests> {
        Arc::new(Requests {
            state: Mutex::new(RequestState {
                active: 0,
                last_end: None,
                permit: Some(permit),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RequestState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request's headers are in; it is in progress until the returned guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.active += 1;
        s.last_end.get_or_insert_with(Instant::now);
        s.permit = None;
        drop(s);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Completes when no request is in progress and none began for `idle` (or, before the
    /// first request, at `first_by`).
    async fn until_idle(&self, first_by: Instant, idle: Duration) {
        loop {
            // Registered before the state is read, so a change in between is not missed.
            let changed = self.changed.notified();
            let due = {
                let s = self.lock();
                (s.active == 0).then(|| s.last_end.map_or(first_by, |t| t + idle))
            };
            match due {
                None => changed.await,
                Some(due) if Instant::now() >= due => return,
                Some(due) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
            }
        }
    }
}

/// A request in progress (see [`Requests::begin`]).
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active -= 1;
        s.last_end = Some(Instant::now());
        drop(s);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request in progress until it is done (a long event stream
/// is not idle).
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn router(hub: Shared) -> Router {
    Router::new()
        .route(
            "/devices",
            get(devices::list_devices).post(bulk::bulk_devices),
        )
        // azure-iothub (Node) lists with `GET /devices/` (its device path of an empty id).
        .route("/devices/", get(devices::list_devices))
        .route("/devices/query", post(query::query_devices))
        .route("/jobs/v2/query", get(jobs::query_jobs))
        .route("/jobs/v2/{id}", put(jobs::create_job).get(jobs::get_job))
        .route("/jobs/v2/{id}/cancel", post(jobs::cancel_job))
        .route(
            "/devices/{id}",
            put(devices::put_device)
                .get(devices::get_device)
                .delete(devices::delete_device),
        )
        .route("/devices/{id}/modules", get(devices::list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            put(devices::put_module)
                .get(devices::get_module)
                .delete(devices::delete_module),
        )
        .route("/configurations", get(configurations::list_configurations))
        .route(
            "/configurations/testQueries",
            post(configurations::test_queries),
        )
        .route(
            "/configurations/{id}",
            put(configurations::put_configuration)
                .get(configurations::get_configuration)
                .delete(configurations::delete_configuration),
        )
        .route(
            "/devices/{id}/applyConfigurationContent",
            post(configurations::apply_content),
        )
        .route("/certificates", get(certificates::list_certificates))
        .route(
            "/certificates/{name}",
            put(certificates::put_certificate)
                .get(certificates::get_certificate)
                .delete(certificates::delete_certificate),
        )
        .route("/devices/{id}/commands", delete(c2d::purge_c2d))
        .route(
            "/twins/{id}",
            get(twins::get_twin)
                .patch(twins::patch_twin)
                .put(twins::put_twin),
        )
        .route(
            "/twins/{id}/modules/{mid}",
            get(twins::get_module_twin)
                .patch(twins::patch_module_twin)
                .put(twins::put_module_twin),
        )
        .route("/twins/{id}/methods", post(methods::invoke_device))
        .route(
            "/twins/{id}/modules/{mid}/methods",
            post(methods::invoke_module),
        )
        .route(
            "/messages/serviceBound/feedback",
            get(feedback::receive_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{lock}",
            delete(feedback::complete_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{lock}/abandon",
            post(feedback::abandon_feedback),
        )
        .route(
            "/devices/{id}/messages/deviceBound",
            get(device_bound::receive_handler),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{etag}",
            delete(device_bound::complete_handler),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{etag}/abandon",
            post(device_bound::abandon_handler),
        )
        // The Node SDK's HTTP transport spells it `devicebound` (IoT Hub takes either).
        .route(
            "/devices/{id}/messages/devicebound",
            get(device_bound::receive_handler),
        )
        .route(
            "/devices/{id}/messages/devicebound/{etag}",
            delete(device_bound::complete_handler),
        )
        .route(
            "/devices/{id}/messages/devicebound/{etag}/abandon",
            post(device_bound::abandon_handler),
        )
        .route(
            "/devices/{id}/messages/events",
            post(device_events::send_handler),
        )
        .route("/devices/{id}/files", post(files::create_sas_uri))
        .route("/devices/{id}/files/notifications", post(files::notify))
        .route(
            "/devices/{id}/files/notifications/{cid}",
            post(files::notify_with_id),
        )
        .route("/emulator/files", get(files::list_files))
        .route("/emulator/devices/{id}/c2d", post(c2d::send_c2d))
        .route("/emulator/devices/{id}/faults", post(fault::inject_fault))
        .route("/emulator/quota", get(fault::quota_usage))
        .route("/emulator/events", get(events::events_sse))
        .route("/emulator/events/recent", get(events::events_recent))
        .route("/emulator/routing", get(crate::routing::stats))
        .merge(crate::mqtt::websocket::routes(&hub))
        .merge(crate::dps::http::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(hub.clone(), auth))
        .with_state(hub)
}

type ApiResult = Result<Response, ApiError>;

pub(crate) async fn not_found() -> ApiError {
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
    // `messages/deviceBound` in any case (the Node SDK's HTTP transport sends `devicebound`).
    let bound = tail
        .get(..20)
        .is_some_and(|t| t.eq_ignore_ascii_case("messages/deviceBound"))
        && tail
            .get(20..)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'));
    if !bound && !files::is_device_path(path) && !device_events::is_events_path(path) {
        return None;
    }
    let mut id = String::new();
    azsim_proto::encoding::decode_to(&mut id, raw).ok()?;
    Some(id)
}

/// Why [`verify_device_rest`] refuses a device the hub does not know: answered 404
/// DeviceNotFound, not 401 (see [`auth`]).
const UNKNOWN_DEVICE: &str = "unknown device";

/// A device token for `id` (either key, `sr` with or without the HTTPS port), or, with no
/// Authorization header, the TLS client certificate of an X.509 device (the Node SDK's HTTP
/// transport sends no token then). Returns how the device signed in.
async fn verify_device_rest(
    hub: &Hub,
    header: Option<&str>,
    certs: Option<crate::x509::PeerCerts>,
    id: &str,
) -> Result<AuthMethod, crate::auth::ServiceAuthError> {
    use crate::auth::ServiceAuthError as E;
    if header.is_none()
        && let Some(chain) = certs.and_then(|c| c.to_vec())
    {
        return verify_device_cert(hub, &chain, id).await;
    }
    let header = header.ok_or_else(|| E("missing Authorization header".into()))?;
    let token =
        azsim_proto::sas::Token::parse(header).map_err(|e| E(format!("malformed token: {e}")))?;
    let ident = crate::hub::load_identity(hub, id, None)
        .await
        .map_err(|e| E(e.to_string()))?
        .ok_or_else(|| E(UNKNOWN_DEVICE.into()))?;
    if !ident.enabled {
        return Err(E("device disabled".into()));
    }
    let resources = crate::auth::identity_resources(&hub.cfg.hostname, hub.https_port, id, None);
    crate::auth::verify_device_or_policy_token(
        &hub.policies,
        &token,
        &[ident.primary_key.expose(), ident.secondary_key.expose()],
        &resources,
        hub.clock().unix_secs(),
    )
    .map_err(|e| E(e.to_string()))?;
    Ok(if token.policy().is_some() {
        AuthMethod::Policy
    } else {
        AuthMethod::IdentityKey
    })
}

/// An X.509 device `id` authenticated by the chain its HTTPS client presented (as its MQTT
/// CONNECT or AMQP links are).
async fn verify_device_cert(
    hub: &Hub,
    chain: &[rustls_pki_types::CertificateDer<'static>],
    id: &str,
) -> Result<AuthMethod, crate::auth::ServiceAuthError> {
    use crate::auth::ServiceAuthError as E;
    let ident = crate::hub::load_identity(hub, id, None)
        .await
        .map_err(|e| E(e.to_string()))?
        .ok_or_else(|| E(UNKNOWN_DEVICE.into()))?;
    if !ident.enabled {
        return Err(E("device disabled".into()));
    }
    let cas = if matches!(ident.auth, crate::x509::Auth::CertificateAuthority) {
        hub.store
            .call(|c| crate::x509::ca_store::anchors(c))
            .await
            .map_err(|e| E(e.to_string()))?
    } else {
        Vec::new()
    };
    crate::x509::authenticate(Some(chain), id, &ident.auth, &cas, hub.clock().unix_secs())
        .map_err(|e| E(e.to_string()))?;
    Ok(AuthMethod::X509)
}

async fn auth(State(hub): State<Shared>, mut req: Request, next: Next) -> Response {
    // MQTT and AMQP over WebSockets: the client authenticates in its protocol, not the upgrade.
    if crate::mqtt::websocket::is_upgrade_path(req.uri().path())
        || crate::mqtt::websocket::is_root_amqp_upgrade(req.uri().path(), req.headers())
    {
        return next.run(req).await;
    }
    // DPS: the service API and the device API check their own tokens.
    if crate::dps::http::is_dps_path(req.uri().path()) {
        return next.run(req).await;
    }
    // The blob endpoint of file upload: a storage SAS in the query, checked there.
    if crate::blob::is_blob_path(req.uri().path()) {
        return crate::blob::serve(hub, req).await;
    }
    if !hub.cfg.lenient && !access::has_api_version(req.uri().path(), req.uri().query()) {
        tracing::info!(path = %Untrusted(req.uri().path()), "REST 400 InvalidProtocolVersion: no api-version");
        return access::invalid_protocol_version(&hub);
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let needed = access::needed(req.method(), req.uri().path());
    let mut verdict = match crate::auth::verify_service(
        header,
        &hub.cfg.hostname,
        hub.https_port,
        &hub.policies,
        needed,
        hub.clock().unix_secs(),
    ) {
        // A hub-wide policy token (on a device call, `iothub-connection-auth-method` says so).
        crate::auth::ServiceVerdict::Allowed => Ok(AuthMethod::Policy),
        crate::auth::ServiceVerdict::NotAllowed(n) => {
            tracing::info!(path = %Untrusted(req.uri().path()), reason = %n, "REST 401");
            let r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                401003,
                "IoTHubUnauthorized",
                n.to_string(),
            );
            return render_error(hub.clock(), r.into_response());
        }
        crate::auth::ServiceVerdict::Refused(e) => Err(e),
    };
    // A device call for a device the hub does not know, with a token or certificate: 404
    // DeviceNotFound, as IoT Hub answers over HTTPS (the Node SDK e2e suite's authentication.js:
    // "AMQP and MQTT translate to Unauthorized but HTTP to DeviceNotFound").
    let mut unknown_device = None;
    let mut device_call = false;
    if verdict.is_err()
        && let Some(id) = device_side_id(req.uri().path())
    {
        device_call = true;
        let certs = req.extensions().get::<crate::x509::PeerCerts>().cloned();
        verdict = verify_device_rest(&hub, header, certs, &id).await;
        if verdict.as_ref().is_err_and(|e| e.0 == UNKNOWN_DEVICE) {
            unknown_device = Some(id);
        }
    }
    let r = match verdict {
        Ok(method) => match access::throttled(&hub, req.method(), req.uri().path()) {
            Some(e) => e.into_response(),
            None => {
                req.extensions_mut().insert(method);
                next.run(req).await
            }
        },
        Err(_) if let Some(id) = unknown_device => {
            tracing::info!(path = %Untrusted(req.uri().path()), "REST 404 DeviceNotFound");
            ApiError::device_not_found(&id).into_response()
        }
        Err(e) => {
            tracing::info!(path = %Untrusted(req.uri().path()), reason = %e.0, "REST 401");
            let refused = ApiError::new(
                StatusCode::UNAUTHORIZED,
                401002,
                "IotHubUnauthorizedAccess",
                "Unauthorized",
            );
            // A device-side call is refused in the older shape, as IoT Hub does.
            if device_call {
                refused.in_older_shape().into_response()
            } else {
                refused.into_response()
            }
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
