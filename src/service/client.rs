//! The async REST client for the IoT Hub service API (api-version 2021-04-12), plus the local
//! hub's emulator-only endpoints (`/emulator/...`, not part of Azure).

use std::time::Duration;

use azsim_emulator::clock::unix_now;

use azsim_proto::encoding::Encoded;
use azsim_proto::secret::Secret;
pub use azsim_proto::topic::Identity;
use futures::StreamExt as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::azure_error::AzureError;
use super::events::{SseDecoder, SseItem};
use super::target::Target;

/// The service API version every call carries.
pub const API_VERSION: &str = "2021-04-12";

/// Lifetime of the token a client signs when it is built (the az CLI signs REST calls with 600 s).
pub const TOKEN_TTL_SECS: u64 = 600;

/// Time allowed for an ordinary REST call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a service call failed. `Display` never holds a key or a token.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The hub answered with an error (Azure's shape, decoded).
    #[error("{0}")]
    Azure(AzureError),
    /// The request did not complete (DNS, TCP, TLS, timeout).
    #[error("request to {url} failed")]
    Transport {
        /// The URL without its query.
        url: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// The hub answered 2xx with a body that is not what the API promises.
    #[error("unexpected response from {url}: {reason}")]
    Decode {
        /// The URL without its query.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The TLS client configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The token could not be signed.
    #[error("cannot sign the service token: {0}")]
    Sign(String),
    /// The target does not serve the emulator-only endpoints.
    #[error("{0}")]
    NotEmulator(String),
}

impl ServiceError {
    /// The Azure error, when the hub answered with one.
    pub fn azure(&self) -> Option<&AzureError> {
        match self {
            Self::Azure(e) => Some(e),
            _ => None,
        }
    }
}

/// `POST /twins/{id}/methods` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodRequest {
    /// The method name.
    pub method_name: String,
    /// JSON payload; omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Seconds the hub waits for the device's answer (5..=300).
    pub response_timeout_in_seconds: u32,
    /// Seconds the hub waits for the device to be online (0..=300).
    pub connect_timeout_in_seconds: u32,
}

/// The device's answer to a direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// The status the device chose.
    pub status: i64,
    /// The payload the device returned.
    #[serde(default)]
    pub payload: Value,
}

/// `POST /emulator/devices/{id}/c2d` body (azsim only).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dRequest {
    /// UTF-8 body.
    pub body: Option<String>,
    /// Binary body, base64.
    pub body_base64: Option<String>,
    /// `$.mid`; the hub generates a uuid when absent.
    pub message_id: Option<String>,
    /// `$.cid`.
    pub correlation_id: Option<String>,
    /// `$.ct`.
    pub content_type: Option<String>,
    /// `$.ce`.
    pub content_encoding: Option<String>,
    /// Application properties, in order.
    pub properties: serde_json::Map<String, Value>,
    /// `none`, `positive`, `negative` or `full`.
    pub ack: String,
    /// Time to live; the hub's default when absent.
    pub ttl_seconds: Option<u64>,
}

/// A batch of C2D feedback records, locked for this client until completed or abandoned.
#[derive(Debug, Clone)]
pub struct FeedbackBatch {
    /// The lock token (the response's `ETag`, without quotes).
    pub lock_token: String,
    /// Azure's records: `originalMessageId`, `description`, `deviceGenerationId`, `deviceId`,
    /// `enqueuedTimeUtc`, `statusCode`.
    pub records: Vec<Value>,
}

/// What a registry, twin or method call addresses: a device id (`&str`, `&String`) or an
/// [`Identity`] (a device, or a module of a device).
pub trait IntoIdentity<'a> {
    /// The identity.
    fn into_identity(self) -> Identity<'a>;
}

impl<'a> IntoIdentity<'a> for Identity<'a> {
    fn into_identity(self) -> Identity<'a> {
        self
    }
}

impl<'a> IntoIdentity<'a> for &'a str {
    fn into_identity(self) -> Identity<'a> {
        Identity::device(self)
    }
}

impl<'a> IntoIdentity<'a> for &'a String {
    fn into_identity(self) -> Identity<'a> {
        Identity::device(self)
    }
}

/// An authenticated client for one hub. Signs one token (600 s) when built.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    host: String,
    /// The `Authorization` header: a SAS token, so a secret.
    auth: Secret<String>,
    is_azure: bool,
}

pub(crate) fn path_segment(s: &str) -> String {
    Encoded(s).to_string()
}

/// `/devices/{id}` or `/devices/{id}/modules/{mid}`.
pub(crate) fn registry_path(identity: Identity<'_>) -> String {
    identity_path("/devices", identity)
}

/// `/twins/{id}` or `/twins/{id}/modules/{mid}` (methods go below it).
fn twin_path(identity: Identity<'_>) -> String {
    identity_path("/twins", identity)
}

fn identity_path(collection: &str, identity: Identity<'_>) -> String {
    let device = path_segment(identity.device_id);
    match identity.module_id {
        None => format!("{collection}/{device}"),
        Some(m) => format!("{collection}/{device}/modules/{}", path_segment(m)),
    }
}

impl ServiceClient {
    /// Builds the HTTPS client (ring, webpki roots plus the target's CA) and signs a token.
    ///
    /// # Errors
    /// [`ServiceError::Tls`] when the CA file is unusable, [`ServiceError::Sign`] when the key is
    /// not base64.
    pub fn new(target: &Target) -> Result<Self, ServiceError> {
        let tls = crate::tls::client_config(target.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("azsim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ServiceError::Transport {
                url: target.base_url(),
                source,
            })?;
        let token = target
            .credentials
            .token(unix_now() + TOKEN_TTL_SECS)
            .map_err(ServiceError::Sign)?;
        Ok(Self {
            http,
            base: target.base_url(),
            host: target.host().to_owned(),
            auth: Secret::new(token),
            is_azure: target.is_azure(),
        })
    }

    /// `host[:port]` of the hub.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> (RequestBuilder, String) {
        let url = format!("{}{path}", self.base);
        let sep = if path.contains('?') { '&' } else { '?' };
        let rb = self
            .http
            .request(method, format!("{url}{sep}api-version={API_VERSION}"))
            .header(reqwest::header::AUTHORIZATION, self.auth.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        (rb, url)
    }

    pub(crate) async fn send(
        &self,
        rb: RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ServiceError> {
        let resp = rb.send().await.map_err(|source| ServiceError::Transport {
            url: url.to_owned(),
            source: source.without_url(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(ServiceError::Azure(error_from(resp).await))
    }

    pub(crate) async fn json(&self, rb: RequestBuilder, url: &str) -> Result<Value, ServiceError> {
        let resp = self.send(rb.timeout(REQUEST_TIMEOUT), url).await?;
        read_json(resp, url).await
    }

    /// `PUT /devices/{id}` or `PUT /devices/{id}/modules/{mid}`: creates a SAS device or module;
    /// the hub generates the keys that are not given.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`409001` when the device exists, `409301` when the module does,
    /// `404001` for a module of an unknown device) or a transport error.
    pub async fn create_device<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
        primary_key: Option<&str>,
        secondary_key: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let identity = identity.into_identity();
        let authentication = serde_json::json!({
            "type": "sas",
            "symmetricKey": { "primaryKey": primary_key, "secondaryKey": secondary_key },
        });
        let body = match identity.module_id {
            None => serde_json::json!({
                "deviceId": identity.device_id,
                "status": "enabled",
                "authentication": authentication,
                "capabilities": { "iotEdge": false },
            }),
            Some(module) => serde_json::json!({
                "deviceId": identity.device_id,
                "moduleId": module,
                "authentication": authentication,
            }),
        };
        let (rb, url) = self.request(Method::PUT, &registry_path(identity));
        self.json(rb.json(&body), &url).await
    }

    /// `GET /devices/{id}` or `GET /devices/{id}/modules/{mid}`.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`404001` unknown device, `404010` unknown module) or a transport
    /// error.
    pub async fn get_device<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
    ) -> Result<Value, ServiceError> {
        let identity = identity.into_identity();
        let (rb, url) = self.request(Method::GET, &registry_path(identity));
        self.json(rb, &url).await
    }

    /// `GET /devices`.
    ///
    /// # Errors
    /// [`ServiceError::Azure`], a transport error, or [`ServiceError::Decode`] when not an array.
    pub async fn list_devices(&self) -> Result<Vec<Value>, ServiceError> {
        let (rb, url) = self.request(Method::GET, "/devices");
        match self.json(rb, &url).await? {
            Value::Array(items) => Ok(items),
            _ => Err(ServiceError::Decode {
                url,
                reason: "expected a json array of devices".into(),
            }),
        }
    }

    /// `DELETE /devices/{id}` or `DELETE /devices/{id}/modules/{mid}`, with `If-Match: "*"`.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`404001` unknown device, `404010` unknown module) or a transport
    /// error.
    pub async fn delete_device<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
    ) -> Result<(), ServiceError> {
        let identity = identity.into_identity();
        let (rb, url) = self.request(Method::DELETE, &registry_path(identity));
        self.send(
            rb.header("If-Match", "\"*\"").timeout(REQUEST_TIMEOUT),
            &url,
        )
        .await
        .map(|_| ())
    }

    /// `GET /twins/{id}` or `GET /twins/{id}/modules/{mid}`.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] or a transport error.
    pub async fn get_twin<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
    ) -> Result<Value, ServiceError> {
        let identity = identity.into_identity();
        let (rb, url) = self.request(Method::GET, &twin_path(identity));
        self.json(rb, &url).await
    }

    /// `PATCH /twins/{id}[/modules/{mid}]` with `{"tags":..,"properties":{"desired":..}}`;
    /// `etag` goes in `If-Match` (quoted when it is not already). Returns the updated twin.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`412001` on an etag mismatch) or a transport error.
    pub async fn patch_twin<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
        desired: Option<&Value>,
        tags: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let identity = identity.into_identity();
        let mut body = serde_json::Map::new();
        if let Some(tags) = tags {
            body.insert("tags".into(), tags.clone());
        }
        if let Some(desired) = desired {
            body.insert(
                "properties".into(),
                serde_json::json!({ "desired": desired }),
            );
        }
        let (mut rb, url) = self.request(Method::PATCH, &twin_path(identity));
        if let Some(etag) = etag {
            rb = rb.header("If-Match", quote_etag(etag));
        }
        self.json(rb.json(&Value::Object(body)), &url).await
    }

    /// `POST /twins/{id}[/modules/{mid}]/methods`: invokes a direct method on a device or a
    /// module and returns its answer.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`404103` not online, `504101` no answer in time) or a transport
    /// error.
    pub async fn invoke<'a>(
        &self,
        identity: impl IntoIdentity<'a>,
        req: &MethodRequest,
    ) -> Result<MethodResult, ServiceError> {
        let identity = identity.into_identity();
        let (rb, url) = self.request(Method::POST, &format!("{}/methods", twin_path(identity)));
        // The hub holds the request for up to connect + response timeout; allow for both.
        let wait = u64::from(req.response_timeout_in_seconds)
            + u64::from(req.connect_timeout_in_seconds)
            + 30;
        let resp = self
            .send(rb.json(req).timeout(Duration::from_secs(wait)), &url)
            .await?;
        let v = read_json(resp, &url).await?;
        serde_json::from_value(v).map_err(|e| ServiceError::Decode {
            url,
            reason: format!("not a method result: {e}"),
        })
    }

    fn require_emulator(&self, what: &str) -> Result<(), ServiceError> {
        if self.is_azure {
            return Err(ServiceError::NotEmulator(format!(
                "{what} works only against an azsim hub: {} is an Azure IoT Hub, where {what} \
                 needs AMQP/Event Hubs, which azsim does not speak yet",
                self.host
            )));
        }
        Ok(())
    }

    fn not_emulator_on_404(&self, e: ServiceError) -> ServiceError {
        match &e {
            ServiceError::Azure(az) if az.status == 404 && az.code.is_none() => {
                ServiceError::NotEmulator(format!(
                    "{} does not serve azsim's /emulator/ endpoints: is it an azsim hub?",
                    self.host
                ))
            }
            _ => e,
        }
    }

    /// `POST /emulator/devices/{id}/c2d` (azsim only): queues a cloud-to-device message.
    /// Returns `{"messageId","deviceId","queueDepth"}`.
    ///
    /// # Errors
    /// [`ServiceError::NotEmulator`] against Azure, [`ServiceError::Azure`] (404 unknown device,
    /// `403004` queue full) or a transport error.
    pub async fn send_c2d(&self, id: &str, msg: &C2dRequest) -> Result<Value, ServiceError> {
        self.require_emulator("c2d send")?;
        let (rb, url) = self.request(
            Method::POST,
            &format!("/emulator/devices/{}/c2d", path_segment(id)),
        );
        self.json(rb.json(msg), &url)
            .await
            .map_err(|e| self.not_emulator_on_404(e))
    }

    /// `GET /messages/serviceBound/feedback`: the next batch of C2D feedback, locked for this
    /// client; `None` when nothing is pending (204).
    ///
    /// # Errors
    /// [`ServiceError::Azure`], a transport error, or [`ServiceError::Decode`] when a batch has
    /// no `ETag` or is not a JSON array.
    pub async fn receive_feedback(&self) -> Result<Option<FeedbackBatch>, ServiceError> {
        let (rb, url) = self.request(Method::GET, "/messages/serviceBound/feedback");
        let resp = self.send(rb.timeout(REQUEST_TIMEOUT), &url).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let lock_token = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ServiceError::Decode {
                url: url.clone(),
                reason: "feedback batch without an ETag lock token".into(),
            })?;
        match read_json(resp, &url).await? {
            Value::Array(records) => Ok(Some(FeedbackBatch {
                lock_token,
                records,
            })),
            _ => Err(ServiceError::Decode {
                url,
                reason: "feedback batch is not a json array".into(),
            }),
        }
    }

    /// `DELETE /messages/serviceBound/feedback/{lockToken}`: completes a received batch.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`412002` when the lock is unknown or expired) or a transport
    /// error.
    pub async fn complete_feedback(&self, lock_token: &str) -> Result<(), ServiceError> {
        let (rb, url) = self.request(
            Method::DELETE,
            &format!(
                "/messages/serviceBound/feedback/{}",
                path_segment(lock_token)
            ),
        );
        self.send(rb.timeout(REQUEST_TIMEOUT), &url)
            .await
            .map(|_| ())
    }

    /// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: gives a batch back.
    ///
    /// # Errors
    /// [`ServiceError::Azure`] (`412002` when the lock is unknown or expired) or a transport
    /// error.
    pub async fn abandon_feedback(&self, lock_token: &str) -> Result<(), ServiceError> {
        let (rb, url) = self.request(
            Method::POST,
            &format!(
                "/messages/serviceBound/feedback/{}/abandon",
                path_segment(lock_token)
            ),
        );
        self.send(rb.timeout(REQUEST_TIMEOUT), &url)
            .await
            .map(|_| ())
    }

    /// `GET /emulator/events[?deviceId=]` (azsim only): the live event stream.
    ///
    /// # Errors
    /// [`ServiceError::NotEmulator`] against Azure, or the request's failure.
    pub async fn events(&self, device: Option<&str>) -> Result<EventStream, ServiceError> {
        self.require_emulator("monitor")?;
        let path = match device {
            Some(d) => format!("/emulator/events?deviceId={}", path_segment(d)),
            None => "/emulator/events".to_owned(),
        };
        let (rb, url) = self.request(Method::GET, &path);
        let resp = self
            .send(
                rb.header(reqwest::header::ACCEPT, "text/event-stream"),
                &url,
            )
            .await
            .map_err(|e| self.not_emulator_on_404(e))?;
        Ok(EventStream {
            body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            decoder: SseDecoder::new(),
            pending: std::collections::VecDeque::new(),
            url,
        })
    }
}

/// Items of the live event stream.
#[derive(Debug)]
pub enum StreamItem {
    /// The hub's `: ready` comment: the stream is live.
    Ready,
    /// One event object.
    Event(Value),
}

type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// The decoded `/emulator/events` stream.
pub struct EventStream {
    body: ByteStream,
    decoder: SseDecoder,
    pending: std::collections::VecDeque<StreamItem>,
    url: String,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish()
    }
}

impl EventStream {
    /// The next item; `Ok(None)` when the hub closed the stream.
    ///
    /// # Errors
    /// A transport error, or [`ServiceError::Decode`] for a `data:` line that is not JSON.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ServiceError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let Some(chunk) = self.body.next().await else {
                return Ok(None);
            };
            let chunk = chunk.map_err(|source| ServiceError::Transport {
                url: self.url.clone(),
                source: source.without_url(),
            })?;
            for item in self.decoder.push(&chunk) {
                match item {
                    SseItem::Comment(c) if c == "ready" => {
                        self.pending.push_back(StreamItem::Ready)
                    }
                    SseItem::Comment(_) => {}
                    SseItem::Data(d) => {
                        let v = serde_json::from_str(&d).map_err(|e| ServiceError::Decode {
                            url: self.url.clone(),
                            reason: format!("event is not json: {e}"),
                        })?;
                        self.pending.push_back(StreamItem::Event(v));
                    }
                }
            }
        }
    }
}

/// `"etag"`, leaving an already quoted value (or `*` quoted) alone.
fn quote_etag(etag: &str) -> String {
    let e = etag.trim();
    if e.len() >= 2 && e.starts_with('"') && e.ends_with('"') {
        e.to_owned()
    } else {
        format!("\"{e}\"")
    }
}

async fn error_from(resp: reqwest::Response) -> AzureError {
    let status = resp.status().as_u16();
    let name = resp
        .headers()
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.unwrap_or_default();
    AzureError::from_response_parts(status, name.as_deref(), &body)
}

async fn read_json(resp: reqwest::Response, url: &str) -> Result<Value, ServiceError> {
    if resp.status() == StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ServiceError::Transport {
            url: url.to_owned(),
            source: source.without_url(),
        })?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ServiceError::Decode {
        url: url.to_owned(),
        reason: format!("body is not json: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(quote_etag("AAAAAAAAAAE="), "\"AAAAAAAAAAE=\"");
        assert_eq!(quote_etag("\"AAAAAAAAAAE=\""), "\"AAAAAAAAAAE=\"");
        assert_eq!(quote_etag("*"), "\"*\"");
    }

    #[test]
    fn devices_and_modules_have_their_own_paths() {
        let d = Identity::device("d 1");
        let m = Identity::module("d 1", "m/1");
        assert_eq!(registry_path(d), "/devices/d%201");
        assert_eq!(registry_path(m), "/devices/d%201/modules/m%2F1");
        assert_eq!(twin_path(d), "/twins/d%201");
        assert_eq!(twin_path(m), "/twins/d%201/modules/m%2F1");
    }

    #[test]
    fn method_request_uses_azure_field_names() {
        let req = MethodRequest {
            method_name: "reboot".into(),
            payload: None,
            response_timeout_in_seconds: 30,
            connect_timeout_in_seconds: 0,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"methodName":"reboot","responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}"#
        );
    }
}
