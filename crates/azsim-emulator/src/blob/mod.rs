//! The hub's own blob endpoint, where devices put the files they upload (IoT Hub's file upload
//! hands out SAS URIs into an Azure Storage account; the emulator is its own account). Served
//! on the HTTPS port, path-style as Azure's storage emulator is:
//! `https://{host}[:{port}]/{ACCOUNT}/{container}/{blob}?{sas}`, because the storage SDKs read
//! a `localhost` or IP host that way (azure-storage-blob takes the first path segment for the
//! account name); the `hostName` the hub hands out is therefore `{host}[:{port}]/{ACCOUNT}`,
//! and `https://{hostName}/{containerName}/{blobName}{sasToken}` (what the SDKs build) lands
//! here.
//!
//! What it serves, as Azure Storage's REST API: Put Blob (block blobs), Put Block and Put Block
//! List (what the SDKs send for larger data), Get Blob (with `Range`/`x-ms-range`) and Get Blob
//! Properties (HEAD). Each request carries the service SAS the hub signed for that one blob
//! (`sas.rs`); a bad, foreign or expired one gets Azure Storage's 403 error XML. A blob or a
//! request body over `FileUploadSettings::max_blob_bytes` is refused with 413. Blobs live in
//! the hub's database (`store/files.rs` says why).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::hub::Hub;
use crate::store::files::{self, BlobProps, BlockRefused, CommitRefused};

pub(crate) mod sas;
mod xml;

/// The emulator's storage account name: the first path segment of every blob URL.
pub const ACCOUNT: &str = "azsimfiles";

/// File upload as the hub is configured for it (Azure's `storageEndpoints.$default` and
/// `messagingEndpoints.fileNotifications` settings, with Azure's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUploadSettings {
    /// The blob container uploads go to.
    pub container: String,
    /// How long the SAS handed to a device is valid (`sasTtlAsIso8601`; Azure: 1 h, 1 min to
    /// 24 h). An upload the device never notifies holds one of its places until then.
    pub sas_ttl: Duration,
    /// Whether a notified upload produces a file upload notification for the service
    /// (`enableFileUploadNotifications`).
    pub notifications: bool,
    /// How long a notification waits to be received (`fileNotifications.ttlAsIso8601`: 1 h).
    pub notification_ttl: Duration,
    /// How long a received notification stays locked (`fileNotifications.lockDuration`: 60 s).
    pub notification_lock: Duration,
    /// How often a notification is handed out before it is dropped uncompleted
    /// (`fileNotifications.maxDeliveryCount`: 10, what a new IoT hub
    /// has in its `messagingEndpoints`).
    pub notification_max_delivery_count: u32,
    /// Uploads a device may have begun and not yet notified (Azure: 10; the next is refused
    /// with 403006 DeviceMaximumActiveFileUploadLimitExceeded).
    pub max_active_per_device: u32,
    /// The largest blob the endpoint stores (not Azure's limit, the emulator's: blobs live in
    /// its database and are read whole).
    pub max_blob_bytes: u64,
}

impl Default for FileUploadSettings {
    fn default() -> Self {
        FileUploadSettings {
            container: "fileuploads".into(),
            sas_ttl: Duration::from_secs(3600),
            notifications: true,
            notification_ttl: Duration::from_secs(3600),
            notification_lock: Duration::from_secs(60),
            notification_max_delivery_count: 10,
            max_active_per_device: 10,
            max_blob_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Whether `name` is a valid blob container name (Azure's rule: 3 to 63 lowercase letters,
/// digits and single hyphens, starting and ending with a letter or digit).
pub fn valid_container_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

/// `{host}[:{port}]/{ACCOUNT}`: the `hostName` of a SAS URI reply.
pub(crate) fn host_name(hub: &Hub) -> String {
    if hub.https_port == 443 {
        format!("{}/{ACCOUNT}", hub.cfg.hostname)
    } else {
        format!("{}:{}/{ACCOUNT}", hub.cfg.hostname, hub.https_port)
    }
}

/// `https://{hostName}/{container}/{blob}`, the blob percent-encoded segment by segment.
pub(crate) fn blob_uri(hub: &Hub, container: &str, blob: &str) -> String {
    let mut path = String::new();
    for (i, seg) in blob.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        // Writing into a String cannot fail.
        let _ = azsim_proto::encoding::encode(&mut path, seg);
    }
    format!("https://{}/{container}/{path}", host_name(hub))
}

/// Whether a request path is the blob endpoint's (the REST layer hands these over before its
/// own checks: a blob request carries a storage SAS, not an IoT Hub token).
pub(crate) fn is_blob_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(ACCOUNT))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Azure Storage's answer to a refused request.
struct StorageError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<String>,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> StorageError {
    StorageError {
        status,
        code,
        message: message.into(),
        detail: None,
    }
}

fn blob_not_found() -> StorageError {
    err(
        StatusCode::NOT_FOUND,
        "BlobNotFound",
        "The specified blob does not exist.",
    )
}

fn too_large() -> StorageError {
    err(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestBodyTooLarge",
        "The request body is too large and exceeds the maximum permissible limit.",
    )
}

impl From<sas::SasError> for StorageError {
    fn from(e: sas::SasError) -> Self {
        match e {
            sas::SasError::Missing => err(
                StatusCode::UNAUTHORIZED,
                "NoAuthenticationInformation",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            ),
            sas::SasError::Failed(detail) => StorageError {
                detail: Some(detail),
                ..err(
                    StatusCode::FORBIDDEN,
                    "AuthenticationFailed",
                    "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                )
            },
            sas::SasError::Permission => err(
                StatusCode::FORBIDDEN,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            ),
        }
    }
}

impl From<crate::HubError> for StorageError {
    fn from(e: crate::HubError) -> Self {
        tracing::warn!(error = %e, "blob endpoint: store failed");
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        )
    }
}

/// The headers every answer carries.
struct Common {
    request_id: String,
    version: HeaderValue,
    date: String,
}

impl Common {
    fn apply(&self, h: &mut HeaderMap) {
        set(h, "x-ms-request-id", &self.request_id);
        h.insert("x-ms-version", self.version.clone());
        set(h, "date", &self.date);
    }

    fn error(&self, e: StorageError, head_only: bool, time: &str) -> Response {
        let mut r = if head_only {
            e.status.into_response()
        } else {
            let body = xml::error_body(
                e.code,
                &e.message,
                &self.request_id,
                time,
                e.detail.as_deref(),
            );
            let mut r = (e.status, body).into_response();
            set(r.headers_mut(), "content-type", "application/xml");
            r
        };
        set(r.headers_mut(), "x-ms-error-code", e.code);
        self.apply(r.headers_mut());
        r
    }
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// RFC 1123 (`Thu, 30 Jul 2021 06:11:10 GMT`), as HTTP dates and `Last-Modified` are written.
fn http_date(unix_ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// The blob a request names: `/{ACCOUNT}/{container}/{blob}`, decoded.
fn blob_of(path: &str) -> Option<(String, String)> {
    let rest = path
        .strip_prefix('/')?
        .strip_prefix(ACCOUNT)?
        .strip_prefix('/')?;
    let (container, blob) = rest.split_once('/')?;
    let mut c = String::new();
    azsim_proto::encoding::decode_to(&mut c, container).ok()?;
    let mut b = String::new();
    azsim_proto::encoding::decode_to(&mut b, blob).ok()?;
    (!c.is_empty() && !b.is_empty()).then_some((c, b))
}

/// A query parameter's decoded value.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            let mut out = String::new();
            azsim_proto::encoding::decode_to(&mut out, v).ok()?;
            Some(out)
        })?
    })
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Serve one blob endpoint request.
pub(crate) async fn serve(hub: Arc<Hub>, req: Request) -> Response {
    let now_ms = hub.now_ms();
    let common = Common {
        request_id: uuid::Uuid::new_v4().to_string(),
        version: req
            .headers()
            .get("x-ms-version")
            .cloned()
            .unwrap_or(HeaderValue::from_static(sas::VERSION)),
        date: http_date(now_ms),
    };
    let head_only = req.method() == Method::HEAD;
    let time = crate::clock::azure_time_ms(now_ms);
    match handle(&hub, req, now_ms).await {
        Ok(mut r) => {
            common.apply(r.headers_mut());
            r
        }
        Err(e) => {
            tracing::info!(code = e.code, status = %e.status, "blob endpoint: request refused");
            common.error(e, head_only, &time)
        }
    }
}

async fn handle(hub: &Arc<Hub>, req: Request, now_ms: i64) -> Result<Response, StorageError> {
    let settings = &hub.cfg.file_upload;
    let (container, blob) = blob_of(req.uri().path()).ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        )
    })?;
    let query = req.uri().query().unwrap_or("").to_string();
    let comp = query_param(&query, "comp");
    let access = match *req.method() {
        Method::GET | Method::HEAD => sas::Access::Read,
        Method::PUT => sas::Access::Write,
        _ => {
            return Err(err(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnsupportedHttpVerb",
                "The resource doesn't support specified Http Verb.",
            ));
        }
    };
    let key = sas::StorageKey::derive(hub.owner_key.expose());
    let now_s = u64::try_from(now_ms / 1000).unwrap_or(0);
    sas::verify(&key, ACCOUNT, &container, &blob, &query, access, now_s)?;
    // Only the hub signs SAS tokens for this account, and only for its upload container; a
    // valid token for another container cannot exist, but the check costs nothing.
    if container != settings.container {
        return Err(err(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            "The specified container does not exist.",
        ));
    }
    let max = settings.max_blob_bytes;
    match (access, comp.as_deref()) {
        (sas::Access::Read, None) => get_blob(hub, req, container, blob).await,
        (sas::Access::Write, None) => {
            let blob_type = header_str(req.headers(), "x-ms-blob-type").map(str::to_owned);
            match blob_type.as_deref() {
                Some("BlockBlob") => {}
                Some(_) => {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "InvalidHeaderValue",
                        "The value for one of the HTTP headers is not in the correct format.",
                    ));
                }
                None => {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "MissingRequiredHeader",
                        "An HTTP header that's mandatory for this request is not specified.",
                    ));
                }
            }
            let content_type = header_str(req.headers(), "x-ms-blob-content-type")
                .or_else(|| header_str(req.headers(), "content-type"))
                .unwrap_or("application/octet-stream")
                .to_owned();
            let data = body(req, max).await?;
            let props = hub
                .store
                .call(move |c| {
                    files::put_blob(c, &container, &blob, &data, Some(&content_type), now_ms)
                })
                .await?;
            Ok(written(&props))
        }
        (sas::Access::Write, Some("block")) => {
            let id = query_param(&query, "blockid")
                .filter(|id| valid_block_id(id))
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "InvalidQueryParameterValue",
                        "Value for one of the query parameters specified in the request URI is invalid.",
                    )
                })?;
            let data = body(req, max).await?;
            let r = hub
                .store
                .call(move |c| files::put_block(c, &container, &blob, &id, &data, max))
                .await?;
            match r {
                Ok(()) => {
                    let mut r = StatusCode::CREATED.into_response();
                    set(r.headers_mut(), "x-ms-request-server-encrypted", "true");
                    Ok(r)
                }
                Err(BlockRefused::TooLarge) => Err(too_large()),
            }
        }
        (sas::Access::Write, Some("blocklist")) => {
            let content_type = header_str(req.headers(), "x-ms-blob-content-type")
                .unwrap_or("application/octet-stream")
                .to_owned();
            // A block list is ids only: 100,000 of the longest fit in 12 MiB.
            let text = body(req, 12 * 1024 * 1024).await?;
            let ids = std::str::from_utf8(&text)
                .ok()
                .and_then(xml::block_list)
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "InvalidXmlDocument",
                        "XML specified is not syntactically valid.",
                    )
                })?;
            let r = hub
                .store
                .call(move |c| {
                    files::commit_blocks(
                        c,
                        &container,
                        &blob,
                        &ids,
                        Some(&content_type),
                        now_ms,
                        max,
                    )
                })
                .await?;
            match r {
                Ok(props) => Ok(written(&props)),
                Err(CommitRefused::UnknownBlock(_)) => Err(err(
                    StatusCode::BAD_REQUEST,
                    "InvalidBlockList",
                    "The specified block list is invalid.",
                )),
                Err(CommitRefused::TooLarge) => Err(too_large()),
            }
        }
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
        )),
    }
}

/// Azure's block id rule: base64 of at most 64 bytes.
fn valid_block_id(id: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(id)
        .is_ok_and(|b| !b.is_empty() && b.len() <= 64)
}

/// The request body, refused with 413 past `max` bytes (before reading when the
/// `Content-Length` says so). Read into one buffer of the declared size as it arrives: a blob
/// is held once, not as chunks and then again as their concatenation.
async fn body(req: Request, max: u64) -> Result<Vec<u8>, StorageError> {
    use futures::StreamExt as _;
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let declared = header_str(req.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let capacity = declared.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let mut buf = Vec::with_capacity(capacity);
    let mut chunks = req.into_body().into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            // The client went away, or (answered 408 by the REST layer) the body deadline.
            tracing::debug!(error = %e, "blob endpoint: body not read");
            err(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "One of the request inputs is not valid.",
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// 201 for a written blob.
fn written(p: &BlobProps) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, "etag", &p.etag);
    set(h, "last-modified", &http_date(p.modified_ms));
    set(h, "x-ms-request-server-encrypted", "true");
    r
}

/// Get Blob (whole or a range) and Get Blob Properties (HEAD).
async fn get_blob(
    hub: &Arc<Hub>,
    req: Request,
    container: String,
    blob: String,
) -> Result<Response, StorageError> {
    let head_only = req.method() == Method::HEAD;
    let range = header_str(req.headers(), "x-ms-range")
        .or_else(|| header_str(req.headers(), header::RANGE.as_str()))
        .map(str::to_owned);
    let found = hub
        .store
        .call(move |c| files::get_blob(c, &container, &blob))
        .await?;
    let (props, data) = found.ok_or_else(blob_not_found)?;
    let total = data.len();
    let (status, slice, content_range) = match range.as_deref().map(parse_range) {
        None => (StatusCode::OK, 0..total, None),
        Some(None) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "InvalidHeaderValue",
                "The value for one of the HTTP headers is not in the correct format.",
            ));
        }
        Some(Some((start, _))) if start >= total => {
            return Err(err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
            ));
        }
        Some(Some((start, end))) => {
            let end = end.map_or(total - 1, |e| e.min(total - 1));
            (
                StatusCode::PARTIAL_CONTENT,
                start..end + 1,
                Some(format!("bytes {start}-{end}/{total}")),
            )
        }
    };
    let len = slice.len();
    // The stored bytes are handed over as they are (a slice of them for a range), not copied.
    let body = if head_only {
        Body::empty()
    } else {
        Body::from(axum::body::Bytes::from(data).slice(slice))
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    set(h, "content-length", &len.to_string());
    set(
        h,
        "content-type",
        props
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    if let Some(cr) = content_range {
        set(h, "content-range", &cr);
    }
    set(h, "etag", &props.etag);
    set(h, "last-modified", &http_date(props.modified_ms));
    set(h, "x-ms-creation-time", &http_date(props.created_ms));
    set(h, "x-ms-blob-type", "BlockBlob");
    set(h, "accept-ranges", "bytes");
    set(h, "x-ms-lease-status", "unlocked");
    set(h, "x-ms-lease-state", "available");
    set(h, "x-ms-server-encrypted", "true");
    Ok(r)
}

/// `bytes=start-[end]` as `(start, end)`; `None` when malformed.
fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let (start, end) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start = start.parse::<usize>().ok()?;
    let end = match end {
        "" => None,
        e => Some(e.parse::<usize>().ok().filter(|e| *e >= start)?),
    };
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_decode_and_other_paths_are_not_the_endpoint() {
        assert!(is_blob_path("/azsimfiles/c/b"));
        assert!(!is_blob_path("/azsimfilesx/c/b"));
        assert!(!is_blob_path("/devices/d"));
        assert_eq!(
            blob_of("/azsimfiles/ct/dev%231/a%20b.txt"),
            Some(("ct".into(), "dev#1/a b.txt".into()))
        );
        assert_eq!(blob_of("/azsimfiles/ct"), None);
        assert_eq!(blob_of("/azsimfiles/ct/"), None);
    }

    #[test]
    fn ranges_and_container_names_follow_azure() {
        assert_eq!(parse_range("bytes=0-33554431"), Some((0, Some(33554431))));
        assert_eq!(parse_range("bytes=5-"), Some((5, None)));
        assert_eq!(parse_range("bytes=5-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert!(valid_container_name("fileuploads"));
        assert!(!valid_container_name("File"));
        assert!(!valid_container_name("a--b"));
        assert!(!valid_container_name("ab"));
        assert!(!valid_container_name("-ab"));
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
