//! Twin document rules: merge (null deletes), the documented limits counted as IoT Hub counts
//! them, per-property `$metadata`, and the JSON shapes the device (MQTT GET) and the service
//! (REST) see.
//!
//! Source for every number here: Microsoft Learn, "Understand and use device twins in IoT Hub"
//! (`articles/iot-hub/iot-hub-devguide-device-twins.md`), sections "Tags and properties format"
//! and "Device twin size", and the spec's section 4/5.

use serde_json::{Map, Value, json};

/// Desired and reported: 32 KB each; tags: 8 KB (device twins doc, "Device twin size"),
/// counted by [`azure_size`].
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
pub const MAX_DEPTH: usize = 10;
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_STRING_BYTES: usize = 4 * 1024;
/// "Integers can have a minimum value of -4503599627370496 and a maximum value of
/// 4503599627370495" (device twins doc, "Tags and properties format"): -2^52 ..= 2^52 - 1.
pub const MIN_INT: i64 = -(1 << 52);
pub const MAX_INT: i64 = (1 << 52) - 1;

/// Why a patch was refused (becomes a 400 with errorCode 400004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinError(pub String);

impl std::fmt::Display for TwinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_key(k: &str) -> Result<(), TwinError> {
    if k.is_empty() {
        return Err(TwinError("property name must not be empty".into()));
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(TwinError(format!(
            "property name longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if let Some(c) = k
        .chars()
        .find(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
    {
        return Err(TwinError(format!(
            "property name '{}' contains invalid character {:?}",
            k.chars().take(64).collect::<String>(),
            c
        )));
    }
    Ok(())
}

fn check_value(v: &Value, depth: usize) -> Result<(), TwinError> {
    match v {
        Value::Object(m) => {
            if depth > MAX_DEPTH {
                return Err(TwinError(format!("nesting depth exceeds {MAX_DEPTH}")));
            }
            for (k, v) in m {
                check_key(k)?;
                check_value(v, depth + 1)?;
            }
        }
        Value::Array(a) => {
            for v in a {
                check_value(v, depth + 1)?;
            }
        }
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            return Err(TwinError(format!(
                "string value longer than {MAX_STRING_BYTES} bytes"
            )));
        }
        Value::Number(n) => {
            let out_of_range = if let Some(i) = n.as_i64() {
                !(MIN_INT..=MAX_INT).contains(&i)
            } else {
                n.as_u64().is_some()
            };
            if out_of_range {
                return Err(TwinError(format!(
                    "integer value {n} outside {MIN_INT}..={MAX_INT}"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Validate a patch (or a full section) before merging.
///
/// # Errors
/// A [`TwinError`] naming the broken rule.
pub fn validate_patch(patch: &Map<String, Value>) -> Result<(), TwinError> {
    for (k, v) in patch {
        check_key(k)?;
        check_value(v, 1)?;
    }
    Ok(())
}

/// Merge `patch` into `target`: members overwrite or add, `null` deletes, objects merge.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => match target.get_mut(k) {
                Some(Value::Object(t)) => merge(t, p),
                _ => {
                    let mut fresh = Map::new();
                    merge(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// A string's size as IoT Hub counts it: its characters, not counting Unicode control
/// characters (C0 and C1).
fn text_size(s: &str) -> usize {
    s.chars().filter(|c| !c.is_control()).count()
}

/// The size of a value as IoT Hub counts it (device twins doc, "Device twin size"): strings by
/// [`text_size`], numbers 8 bytes, booleans 4, objects the sum of their keys and values. Arrays
/// (not in that text) count as the sum of their elements. Read-only members (`$version`,
/// `$metadata`) are not counted.
fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => text_size(s),
        Value::Number(_) => 8,
        Value::Bool(_) => 4,
        Value::Null => 0,
        Value::Array(a) => a.iter().map(value_size).sum(),
        Value::Object(m) => azure_size(m),
    }
}

/// A section's size as IoT Hub counts it: for each property, the length of its key plus the
/// size of its value (see [`value_size`]).
pub fn azure_size(m: &Map<String, Value>) -> usize {
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "$version" | "$metadata"))
        .map(|(k, v)| text_size(k) + value_size(v))
        .sum()
}

/// Check a merged section against its size limit (IoT Hub "rejects with an error all
/// operations that would increase the size ... above the limit"). `what` is Azure's name of the
/// section: `Properties.Reported`, `Properties.Desired`, `Tags`.
///
/// # Errors
/// A [`TwinError`] when the section is too large, with the message IoT Hub sends
/// (`'Properties.Reported' size should be less than 32768 bytes.`, errorCode 403100 with status
/// 403: as quoted in Azure/iotedge#7035 for reported properties, with 403 in Azure/iotedge#1560;
/// the same for desired and tags is inferred). See [`SIZE_ERROR_CODE`].
pub fn check_size(m: &Map<String, Value>, limit: usize, what: &str) -> Result<(), TwinError> {
    let size = azure_size(m);
    if size > limit {
        tracing::info!(
            section = what,
            size,
            limit,
            "twin section over its size limit"
        );
        return Err(TwinError(format!(
            "'{what}' size should be less than {limit} bytes."
        )));
    }
    Ok(())
}

/// The status and error code of a twin section over its size limit (see [`check_size`]).
pub const SIZE_ERROR_STATUS: u16 = 403;
pub const SIZE_ERROR_CODE: u32 = 403100;

/// One leaf of `$metadata`.
fn stamp(now: &str, version: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("$lastUpdated".into(), json!(now));
    m.insert("$lastUpdatedVersion".into(), json!(version));
    m
}

/// Record in `meta` (a section's `$metadata` tree) that `patch` was applied at `now` as the
/// section's `version`: every property the patch sets gets `$lastUpdated` and
/// `$lastUpdatedVersion`, every object on the way too, deleted ones lose their entry.
pub fn touch_metadata(
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: &str,
    version: u64,
) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                meta.remove(k);
            }
            Value::Object(p) => {
                let entry = meta
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(m) = entry {
                    // A scalar that became an object keeps no stale leaf stamps.
                    m.extend(stamp(now, version));
                    touch_metadata(m, p, now, version);
                }
            }
            _ => {
                meta.insert(k.clone(), Value::Object(stamp(now, version)));
            }
        }
    }
    meta.extend(stamp(now, version));
}

/// The `$metadata` a reader sees for `section`: for each property (at every level) its entry
/// in `meta`, or, where the tree has none (state written before per-property metadata), the
/// section's own time and version.
pub fn metadata_view(
    section: &Map<String, Value>,
    meta: &Map<String, Value>,
    updated: &str,
    version: u64,
) -> Value {
    let get = |k: &str, d: &Value| meta.get(k).cloned().unwrap_or_else(|| d.clone());
    let mut out = Map::new();
    out.insert("$lastUpdated".into(), get("$lastUpdated", &json!(updated)));
    out.insert(
        "$lastUpdatedVersion".into(),
        get("$lastUpdatedVersion", &json!(version)),
    );
    for (k, v) in section {
        let child_meta = meta.get(k).and_then(Value::as_object);
        let view = match (v, child_meta) {
            (Value::Object(child), m) => {
                let empty = Map::new();
                let m = m.unwrap_or(&empty);
                let t = m
                    .get("$lastUpdated")
                    .and_then(Value::as_str)
                    .unwrap_or(updated);
                let n = m
                    .get("$lastUpdatedVersion")
                    .and_then(Value::as_u64)
                    .unwrap_or(version);
                metadata_view(child, m, t, n)
            }
            (_, Some(m)) => {
                let t = m
                    .get("$lastUpdated")
                    .cloned()
                    .unwrap_or_else(|| json!(updated));
                let n = m
                    .get("$lastUpdatedVersion")
                    .cloned()
                    .unwrap_or_else(|| json!(version));
                json!({"$lastUpdated": t, "$lastUpdatedVersion": n})
            }
            (_, None) => Value::Object(stamp(updated, version)),
        };
        out.insert(k.clone(), view);
    }
    Value::Object(out)
}

/// A device's reported-properties PATCH body as a JSON object, or `None`.
///
/// Trailing NUL bytes are ignored, as IoT Hub's JSON reader (Newtonsoft.Json) skips a NUL after
/// a value: azure-sdk-for-c's paho_iot_pnp_component_sample publishes its device-information
/// patch with the rest of its zero-filled payload buffer after the JSON.
pub fn parse_reported_patch(body: &[u8]) -> Option<Map<String, Value>> {
    let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    match serde_json::from_slice::<Value>(&body[..end]) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Drop the read-only members a service may echo back (`$version`, `$metadata`).
pub fn strip_meta(m: &mut Map<String, Value>) {
    m.remove("$version");
    m.remove("$metadata");
}

/// The JSON text of `section` plus `"$version": v` (the device-side shape of a desired patch and
/// of each section of a twin GET), with `$version` the last member, as IoT Hub sends it.
///
/// Order matters to devices: azure-sdk-for-c's samples (paho_iot_hub_twin_sample, the PnP
/// samples) read a patch with a streaming JSON reader and stop at `$version`, so a `$version`
/// first (where a sorted map puts it) hides every property from them.
pub fn section_json(section: &Map<String, Value>, version: u64) -> String {
    let mut m = section.clone();
    m.remove("$version");
    let body = Value::Object(m).to_string();
    let members = &body[1..body.len() - 1];
    let sep = if members.is_empty() { "" } else { "," };
    format!("{{{members}{sep}\"$version\":{version}}}")
}

/// The patch that turns `old` into `new` at the top level (removed keys become null).
pub fn replacement_patch(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut p = new.clone();
    for k in old.keys() {
        if !new.contains_key(k) {
            p.insert(k.clone(), Value::Null);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn version_is_the_last_member_of_a_device_section() {
        assert_eq!(section_json(&Map::new(), 1), r#"{"$version":1}"#);
        let s = section_json(&obj(json!({"b": {"x": 1}, "a": "y", "$version": 9})), 4);
        assert_eq!(s, r#"{"a":"y","b":{"x":1},"$version":4}"#);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["$version"], 4);
    }

    #[test]
    fn a_reported_patch_may_end_in_nul_bytes() {
        let mut body = br#"{"deviceInformation":{"__t":"c","totalMemory":128}}"#.to_vec();
        body.resize(body.len() + 450, 0);
        let m = parse_reported_patch(&body).unwrap();
        assert_eq!(m["deviceInformation"]["totalMemory"], 128);
        assert_eq!(parse_reported_patch(b" {\"a\":1}\n").unwrap()["a"], 1);
        for bad in [&b""[..], b"\0\0", b"[1]", b"{\"a\":1}\0x", b"\0{\"a\":1}"] {
            assert_eq!(parse_reported_patch(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn merge_overwrites_adds_and_null_deletes() {
        let mut t = obj(json!({"a":1,"b":{"c":2,"d":3},"e":5}));
        merge(
            &mut t,
            &obj(json!({"a":2,"b":{"c":null,"x":1},"e":null,"n":{"k":null,"j":1}})),
        );
        assert_eq!(
            Value::Object(t),
            json!({"a":2,"b":{"d":3,"x":1},"n":{"j":1}})
        );
    }

    #[test]
    fn limits_are_enforced() {
        assert!(validate_patch(&obj(json!({"a.b":1}))).is_err());
        assert!(validate_patch(&obj(json!({"$a":1}))).is_err());
        assert!(validate_patch(&obj(json!({"a b":1}))).is_err());
        assert!(validate_patch(&obj(json!({"a":"x".repeat(4097)}))).is_err());
        assert!(validate_patch(&obj(json!({"a":4503599627370496_i64}))).is_err());
        assert!(validate_patch(&obj(json!({"a":4503599627370495_i64}))).is_ok());
        assert!(validate_patch(&obj(json!({"a":-4503599627370496_i64}))).is_ok());
        assert!(validate_patch(&obj(json!({"a":-4503599627370497_i64}))).is_err());
        // The section itself is depth 0; ten nested objects are fine, eleven are not.
        let mut deep = json!(1);
        for _ in 0..12 {
            deep = json!({ "k": deep });
        }
        assert!(validate_patch(&obj(deep.clone())).is_err());
        let mut ok = json!(1);
        for _ in 0..11 {
            ok = json!({ "k": ok });
        }
        assert!(validate_patch(&obj(ok)).is_ok());
        let big = obj(json!({"a":"x".repeat(4000),"b":"x".repeat(4000),"c":"x".repeat(4000)}));
        assert!(check_size(&big, MAX_TAGS_BYTES, "Tags").is_err());
    }

    #[test]
    fn size_is_counted_as_azure_counts_it() {
        // key 1 + number 8; key 2 + bool 4; key 1 + "héllo" 5 characters (6 bytes).
        assert_eq!(azure_size(&obj(json!({"a": 123456}))), 9);
        assert_eq!(azure_size(&obj(json!({"ok": true}))), 6);
        assert_eq!(azure_size(&obj(json!({"s": "héllo"}))), 6);
        // Nested: key 1 + (key 1 + 8); control characters are not counted.
        assert_eq!(azure_size(&obj(json!({"o": {"n": 1}}))), 10);
        assert_eq!(azure_size(&obj(json!({"t": "a\u{1}b"}))), 3);
        // $version and $metadata are read-only and not counted.
        assert_eq!(
            azure_size(&obj(json!({"a": 1, "$version": 4, "$metadata": {"x": 1}}))),
            9
        );
        // 2520 properties "kNNNN": 1 of 5 + 8 = 13 bytes each are 32,760 bytes (their JSON,
        // 10 bytes each, would be far below the limit); 9 bytes more go over 32 KB.
        let mut m = Map::new();
        for i in 0..2520 {
            m.insert(format!("k{i:04}"), json!(1));
        }
        assert_eq!(azure_size(&m), 32_760);
        assert!(check_size(&m, MAX_SECTION_BYTES, "Properties.Desired").is_ok());
        m.insert("k9999".into(), json!(true));
        assert!(check_size(&m, MAX_SECTION_BYTES, "Properties.Desired").is_err());
    }

    #[test]
    fn metadata_is_kept_per_property_at_every_level() {
        let mut meta = Map::new();
        touch_metadata(
            &mut meta,
            &obj(json!({"a": 1, "o": {"x": 1, "y": 2}})),
            "T1",
            2,
        );
        touch_metadata(&mut meta, &obj(json!({"o": {"y": 3}})), "T2", 3);
        let section = obj(json!({"a": 1, "o": {"x": 1, "y": 3}}));
        let v = metadata_view(&section, &meta, "T0", 1);
        assert_eq!(v["$lastUpdated"], "T2");
        assert_eq!(v["$lastUpdatedVersion"], 3);
        assert_eq!(
            v["a"],
            json!({"$lastUpdated": "T1", "$lastUpdatedVersion": 2})
        );
        assert_eq!(v["o"]["$lastUpdated"], "T2");
        assert_eq!(
            v["o"]["x"],
            json!({"$lastUpdated": "T1", "$lastUpdatedVersion": 2})
        );
        assert_eq!(
            v["o"]["y"],
            json!({"$lastUpdated": "T2", "$lastUpdatedVersion": 3})
        );
        // A deleted property loses its entry; a property with none (older state) gets the
        // section's stamp.
        touch_metadata(&mut meta, &obj(json!({"a": null})), "T3", 4);
        assert!(meta.get("a").is_none());
        let v = metadata_view(&obj(json!({"old": 1})), &Map::new(), "T0", 7);
        assert_eq!(
            v["old"],
            json!({"$lastUpdated": "T0", "$lastUpdatedVersion": 7})
        );
    }
}
