//! The dashboard's way into the hub: `/api/{path}` is the hub's own REST router called
//! in-process with `{path}` (so every rule, limit and error is the REST API's, nothing is
//! re-implemented here), plus what the page shows about the hub itself (`/hub`, `/hub/ca.pem`)
//! and a device's connection string built by the core's builder.
//!
//! On loopback the bridge authorizes each call itself: it signs a short-lived `iothubowner`
//! token with the hub's key, replacing any `Authorization` the request carried. Beyond loopback
//! it passes the caller's `Authorization` through and the REST router checks it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::HubInfo;
use crate::hub::Hub;

/// How long a token the bridge signs is valid: one call (an event stream is checked once, at
/// its start).
const TOKEN_TTL_SECS: u64 = 300;

/// What the dashboard's handlers share.
pub(super) struct Ctx {
    /// The hub's REST router, the one its HTTPS listener serves.
    pub api: Router,
    pub hub: Arc<Hub>,
    pub info: HubInfo,
    pub ca_pem: String,
    /// Plain HTTP on loopback: the bridge signs calls itself.
    pub loopback: bool,
    pub allowed_hosts: Vec<String>,
}

impl Ctx {
    /// An `iothubowner` token for this hub, valid for [`TOKEN_TTL_SECS`].
    fn owner_token(&self) -> Option<HeaderValue> {
        let hub = &self.hub;
        let resource = azsim_proto::sas::Resource::Hub {
            host: &hub.cfg.hostname,
        };
        let expiry = hub.clock().unix_secs().saturating_add(TOKEN_TTL_SECS);
        let mut token = String::new();
        azsim_proto::sas::sign(
            &mut token,
            &resource,
            hub.owner_key.expose(),
            expiry,
            Some("iothubowner"),
        )
        .ok()?;
        let mut v = HeaderValue::from_str(&token).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Call the REST router with `req` as a service call of this dashboard's user.
    async fn call(&self, req: Request) -> Response {
        // A fresh request: the dashboard router's extensions (its own path parameters) would
        // confuse the REST router's extractors.
        let (parts, body) = req.into_parts();
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = parts.uri;
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers;
        let h = req.headers_mut();
        // What the browser sent for the dashboard is not the REST API's business.
        for name in [header::COOKIE, header::ORIGIN, header::REFERER] {
            h.remove(name);
        }
        if self.loopback {
            h.remove(header::AUTHORIZATION);
            match self.owner_token() {
                Some(t) => {
                    h.insert(header::AUTHORIZATION, t);
                }
                None => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "cannot sign a token")
                        .into_response();
                }
            }
        }
        match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// `/api/{path}` -> the REST router's `/{path}`, query string kept.
pub(super) async fn forward(State(ctx): State<Arc<Ctx>>, mut req: Request) -> Response {
    let Some(pq) = req.uri().path_and_query().map(|pq| pq.as_str().to_string()) else {
        return (StatusCode::BAD_REQUEST, "no path").into_response();
    };
    let Some(inner) = pq.strip_prefix("/api") else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let Ok(uri) = with_api_version(inner).parse::<Uri>() else {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    };
    *req.uri_mut() = uri;
    ctx.call(req).await
}

/// The API version the page speaks, added to a call that names none (as Azure, the hub may
/// require one).
const API_VERSION: &str = "api-version=2021-04-12";

fn with_api_version(path_and_query: &str) -> String {
    let names_one = path_and_query
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("api-version=")));
    match (names_one, path_and_query.contains('?')) {
        (true, _) => path_and_query.to_string(),
        (false, true) => format!("{path_and_query}&{API_VERSION}"),
        (false, false) => format!("{path_and_query}?{API_VERSION}"),
    }
}

/// `/hub`: what the hub view shows. The service connection string only on loopback, where
/// the page is already trusted with the owner's rights; beyond it the user brings their own.
pub(super) async fn hub_info(State(ctx): State<Arc<Ctx>>) -> Response {
    let i = &ctx.info;
    let mut v = json!({
        "hostname": i.hostname,
        "mqttPort": i.mqtt_port,
        "httpsPort": i.https_port,
        "mqttHost": i.mqtt_host(),
        "caFile": i.ca_file,
        "amqpPort": i.amqp_port,
        "idScope": i.id_scope,
        "provisioningHost": i.provisioning_host,
        "auth": if ctx.loopback { "loopback" } else { "token" },
    });
    if ctx.loopback {
        v["serviceConnectionString"] = json!(i.service_connection_string);
        v["eventHubConnectionString"] = json!(i.eventhub_connection_string);
    }
    axum::Json(v).into_response()
}

/// `/hub/ca.pem`: the hub's CA certificate (public), as a download.
pub(super) async fn ca_pem(State(ctx): State<Arc<Ctx>>) -> Response {
    let mut r = Body::from(ctx.ca_pem.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"azsim-hub-ca.pem\""),
    );
    r
}

/// `/hub/devices/{id}/connection-string`: the device's primary connection string, read
/// through the REST API (`GET /devices/{id}`, with the caller's rights) and built by the core's
/// `ConnectionString`.
pub(super) async fn device_connection_string(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let mut path = String::from("/devices/");
    // A `String` never fails to take a write.
    let _ = azsim_proto::encoding::encode(&mut path, &id);
    let path = with_api_version(&path);
    let (mut parts, _) = req.into_parts();
    parts.method = axum::http::Method::GET;
    let Ok(uri) = path.parse::<Uri>() else {
        return (StatusCode::BAD_REQUEST, "bad device id").into_response();
    };
    parts.uri = uri;
    let r = ctx.call(Request::from_parts(parts, Body::empty())).await;
    if !r.status().is_success() {
        return r;
    }
    let Ok(bytes) = axum::body::to_bytes(r.into_body(), 1 << 20).await else {
        return (StatusCode::BAD_GATEWAY, "unreadable registry answer").into_response();
    };
    let device: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(key) = device
        .pointer("/authentication/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    else {
        return (StatusCode::CONFLICT, "the device has no symmetric key").into_response();
    };
    match ctx.info.device_connection_string(&id, key) {
        Ok(cs) => axum::Json(json!({"deviceId": id, "connectionString": cs})).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no connection string for this device id: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_api_version;

    #[test]
    fn calls_get_the_api_version_unless_they_name_one() {
        assert_eq!(
            with_api_version("/devices"),
            "/devices?api-version=2021-04-12"
        );
        assert_eq!(
            with_api_version("/devices?top=5"),
            "/devices?top=5&api-version=2021-04-12"
        );
        assert_eq!(
            with_api_version("/devices?api-version=2020-03-13"),
            "/devices?api-version=2020-03-13"
        );
    }
}
