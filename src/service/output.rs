//! Small helpers the service commands share for what they print.

use azsim_proto::connection_string::{ConnectionString, ConnectionStringError};
use serde_json::Value;

/// The placeholder printed instead of a key.
pub const REDACTED: &str = "<redacted>";

/// Replaces `authentication.symmetricKey.{primaryKey,secondaryKey}` of a device (or each device
/// of an array) with [`REDACTED`] when present.
pub fn redact_device_keys(v: &mut Value) {
    if let Value::Array(items) = v {
        items.iter_mut().for_each(redact_device_keys);
        return;
    }
    if let Some(Value::Object(sk)) = v
        .get_mut("authentication")
        .and_then(|a| a.get_mut("symmetricKey"))
    {
        for k in ["primaryKey", "secondaryKey"] {
            if let Some(slot) = sk.get_mut(k)
                && slot.as_str().is_some_and(|s| !s.is_empty())
            {
                *slot = Value::String(REDACTED.into());
            }
        }
    }
}

/// The device's primary key from a registry entry.
pub fn primary_key(device: &Value) -> Option<&str> {
    device
        .pointer("/authentication/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The connection string of a device (`module: None`) or a module, written by `azsim-proto`'s
/// builders: `HostName={host_name};DeviceId=..[;ModuleId=..];SharedAccessKey=..`. `host_name`
/// carries `:port` when the hub's MQTT port is not 8883 ([`super::target::MqttEndpoint`]).
///
/// # Errors
/// What the builder refuses (an empty id, a `;` in a value, a key that is not base64); the
/// message names the field, never the key.
pub fn identity_connection_string(
    host_name: &str,
    device: &str,
    module: Option<&str>,
    key: &str,
) -> Result<String, ConnectionStringError> {
    let cs = match module {
        None => ConnectionString::device(host_name, device, key)?,
        Some(m) => ConnectionString::module(host_name, device, m, key)?,
    };
    let mut out = String::new();
    cs.write_with_secret(&mut out)
        .expect("writing to a String cannot fail");
    Ok(out)
}

/// A string field of a JSON object, or `-`.
pub fn field<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("-")
}

/// Pretty JSON (human output) or one compact line (`--json`).
pub fn to_text(v: &Value, json: bool) -> String {
    let r = if json {
        serde_json::to_string(v)
    } else {
        serde_json::to_string_pretty(v)
    };
    r.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_redacted_in_devices_and_lists() {
        let mut v = json!([{"deviceId":"d","authentication":{"type":"sas",
            "symmetricKey":{"primaryKey":"AAAA","secondaryKey":"BBBB"}}}]);
        redact_device_keys(&mut v);
        let s = v.to_string();
        assert!(!s.contains("AAAA") && !s.contains("BBBB"), "{s}");
        assert!(s.contains(REDACTED));
    }

    #[test]
    fn identity_strings_are_the_cores() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(
            identity_connection_string("localhost:18883", "d", None, key).unwrap(),
            format!("HostName=localhost:18883;DeviceId=d;SharedAccessKey={key}")
        );
        assert_eq!(
            identity_connection_string("h", "d", Some("m"), key).unwrap(),
            format!("HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={key}")
        );
        let e = identity_connection_string("h", "d", None, "not base64!").unwrap_err();
        assert_eq!(e.to_string(), "SharedAccessKey: not valid base64");
    }
}
