//! Small helpers the service commands share for what they print.

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

/// `HostName={hostname};DeviceId={id};SharedAccessKey={key}`.
pub fn device_connection_string(hostname: &str, device_id: &str, key: &str) -> String {
    format!("HostName={hostname};DeviceId={device_id};SharedAccessKey={key}")
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

/// Quotes a value for a POSIX shell (single quotes).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
