//! Azure IoT Hub's error bodies, decoded into one readable line.
//!
//! The hub answers errors in a few shapes, and SDKs have seen all of them:
//! - `{"Message":"{\"errorCode\":404103,\"message\":\"Timed out ...\",...}","ExceptionMessage":""}`
//!   (the inner JSON is a string),
//! - `{"Message":"ErrorCode:DeviceNotFound;Device d1 not found","ExceptionMessage":"..."}`,
//! - `{"errorCode":404103,"message":"..."}` at the top level,
//! - plain text or nothing.
//!
//! plus the `iothub-errorcode: DeviceNotOnline` header. [`AzureError::from_response_parts`] takes
//! whatever is there and renders `404103 DeviceNotOnline: Timed out waiting for device to connect.`

use std::fmt;

use serde_json::Value;

/// A decoded service error: HTTP status, numeric code and name when known, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureError {
    /// HTTP status code.
    pub status: u16,
    /// The six-digit IoT Hub error code (`404103`), when the body carried one.
    pub code: Option<u32>,
    /// The error name (`DeviceNotOnline`), from the header, the body or the known-code table.
    pub name: Option<String>,
    /// The human message from the hub (or a short excerpt of an unparseable body).
    pub message: String,
}

/// Names of the codes the service CLI meets, for hubs that send no `iothub-errorcode` header.
const KNOWN_CODES: &[(u32, &str)] = &[
    (400004, "ArgumentInvalid"),
    (400027, "ConnectionForcefullyClosedOnNewConnection"),
    (401002, "IotHubUnauthorizedAccess"),
    (401003, "IotHubUnauthorized"),
    (403002, "IoTHubQuotaExceeded"),
    (403004, "DeviceMaximumQueueDepthExceeded"),
    (404001, "DeviceNotFound"),
    (404103, "DeviceNotOnline"),
    (409001, "DeviceAlreadyExists"),
    (412001, "PreconditionFailed"),
    (413001, "MessageTooLarge"),
    (429001, "ThrottlingException"),
    (500001, "ServerError"),
    (504101, "GatewayTimeout"),
];

/// The longest excerpt of an unrecognised body kept in the message.
const MAX_EXCERPT: usize = 200;

impl AzureError {
    /// Decodes an error response from its status, `iothub-errorcode` header and body.
    pub fn from_response_parts(status: u16, header_name: Option<&str>, body: &[u8]) -> Self {
        let mut err = AzureError {
            status,
            code: None,
            name: header_name
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            message: String::new(),
        };
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        match serde_json::from_str::<Value>(text) {
            Ok(v) => err.absorb_json(&v),
            Err(_) => err.absorb_text(text),
        }
        if err.name.is_none()
            && let Some(code) = err.code
        {
            err.name = KNOWN_CODES
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, n)| (*n).to_owned());
        }
        // The older shape (`ErrorCode:DeviceNotFound;...`) names the error without its number.
        if err.code.is_none()
            && let Some(name) = &err.name
        {
            err.code = KNOWN_CODES.iter().find(|(_, n)| n == name).map(|(c, _)| *c);
        }
        if err.message.is_empty() {
            err.message = default_reason(status).to_owned();
        }
        err
    }

    fn absorb_json(&mut self, v: &Value) {
        let Some(obj) = v.as_object() else {
            if let Some(s) = v.as_str() {
                self.absorb_text(s);
            }
            return;
        };
        // Case varies between endpoints (`Message` / `message`, `errorCode` / `ErrorCode`).
        let get = |k: &str| {
            obj.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        if let Some(code) = get("errorCode").and_then(parse_code) {
            self.code = Some(code);
        }
        if let Some(msg) = get("message") {
            match msg {
                Value::String(s) => match serde_json::from_str::<Value>(s) {
                    Ok(inner @ Value::Object(_)) => self.absorb_json(&inner),
                    _ => self.absorb_text(s),
                },
                Value::Object(_) => self.absorb_json(msg),
                _ => {}
            }
        }
        if self.message.is_empty()
            && let Some(Value::String(s)) = get("ExceptionMessage")
        {
            self.absorb_text(s);
        }
    }

    /// Plain text, possibly `ErrorCode:DeviceNotFound;Device d1 not found`.
    fn absorb_text(&mut self, s: &str) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        if let Some(rest) = s.strip_prefix("ErrorCode:") {
            let (name, msg) = rest.split_once(';').unwrap_or((rest, ""));
            let name = name.trim();
            if let Ok(code) = name.parse::<u32>() {
                self.code.get_or_insert(code);
            } else if !name.is_empty() && self.name.is_none() {
                self.name = Some(name.to_owned());
            }
            self.message = first_line(msg.trim());
            return;
        }
        self.message = first_line(s);
    }
}

fn parse_code(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The first line of `s`, cut to [`MAX_EXCERPT`] characters.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(MAX_EXCERPT).collect();
    if line.chars().count() > MAX_EXCERPT {
        out.push_str("...");
    }
    out
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        412 => "precondition failed",
        413 => "payload too large",
        429 => "throttled",
        500 => "internal server error",
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "request failed",
    }
}

impl fmt::Display for AzureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, &self.name) {
            (Some(code), Some(name)) => write!(f, "{code} {name}: {}", self.message),
            (Some(code), None) => write!(f, "{code}: {}", self.message),
            (None, Some(name)) => write!(f, "{} {name}: {}", self.status, self.message),
            (None, None) => write!(f, "http {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for AzureError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stringified_inner_json_is_decoded() {
        let body = br#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"abc\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{\"timeout\":\"00:01:00\"},\"timestampUtc\":\"2021-01-01T00:00:00Z\"}","ExceptionMessage":""}"#;
        let e = AzureError::from_response_parts(404, Some("DeviceNotOnline"), body);
        assert_eq!(
            e.to_string(),
            "404103 DeviceNotOnline: Timed out waiting for device to connect."
        );
        let e = AzureError::from_response_parts(404, None, body);
        assert_eq!(e.name.as_deref(), Some("DeviceNotOnline"));
    }

    #[test]
    fn error_code_prefix_text_is_decoded() {
        let body = br#"{"Message":"ErrorCode:DeviceNotFound;Device d9 not found","ExceptionMessage":"Tracking ID:x"}"#;
        let e = AzureError::from_response_parts(404, None, body);
        // The older shape names the error; its number comes from the known codes.
        assert_eq!(e.to_string(), "404001 DeviceNotFound: Device d9 not found");
    }

    #[test]
    fn the_hub_s_strict_answers_read_as_one_line() {
        // No api-version: the older shape, the name in the text and the header.
        let body = br#"{"Message":"ErrorCode:InvalidProtocolVersion;BadRequest","ExceptionMessage":"Tracking ID:0123-G:0-TimeStamp:12/05/2026 08:00:00"}"#;
        let e = AzureError::from_response_parts(400, Some("InvalidProtocolVersion"), body);
        assert_eq!(e.to_string(), "400 InvalidProtocolVersion: BadRequest");
        // A policy without the permission.
        let body = br#"{"Message":"{\"errorCode\":401003,\"trackingId\":\"t\",\"message\":\"Authorization rule 'registryRead' does not allow access for 'RegistryWrite'\",\"info\":{},\"timestampUtc\":\"2026-12-05T08:00:00Z\"}","ExceptionMessage":""}"#;
        let e = AzureError::from_response_parts(401, Some("IoTHubUnauthorized"), body);
        assert_eq!(
            e.to_string(),
            "401003 IoTHubUnauthorized: Authorization rule 'registryRead' does not allow access for 'RegistryWrite'"
        );
    }

    #[test]
    fn top_level_fields_and_plain_text_are_decoded() {
        let e = AzureError::from_response_parts(
            504,
            None,
            br#"{"errorCode":"504101","message":"Timed out waiting for the response from device."}"#,
        );
        assert_eq!(
            e.to_string(),
            "504101 GatewayTimeout: Timed out waiting for the response from device."
        );
        let e = AzureError::from_response_parts(502, None, b"bad gateway\nmore");
        assert_eq!(e.to_string(), "http 502: bad gateway");
        let e = AzureError::from_response_parts(401, None, b"");
        assert_eq!(e.to_string(), "http 401: unauthorized");
    }
}
