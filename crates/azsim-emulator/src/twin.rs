//! Twin document rules: merge (null deletes), the documented limits, and the JSON shapes the
//! device (MQTT GET) and the service (REST) see.

use serde_json::{Map, Value};

/// Limits from the spec's section 4/5 (documented, not inferred).
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
pub const MAX_DEPTH: usize = 10;
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_STRING_BYTES: usize = 4 * 1024;
pub const MAX_ABS_INT: i64 = 1 << 52;

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
                !(-MAX_ABS_INT..=MAX_ABS_INT).contains(&i)
            } else {
                n.as_u64().is_some()
            };
            if out_of_range {
                return Err(TwinError("integer value outside +-2^52".into()));
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

/// Serialized size of a section, the way the limit counts it.
pub fn section_size(m: &Map<String, Value>) -> usize {
    serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// Check a merged section against its size limit.
///
/// # Errors
/// A [`TwinError`] when the section is too large.
pub fn check_size(m: &Map<String, Value>, limit: usize, what: &str) -> Result<(), TwinError> {
    if section_size(m) > limit {
        return Err(TwinError(format!("{what} exceeds {limit} bytes")));
    }
    Ok(())
}

/// Drop the read-only members a service may echo back (`$version`, `$metadata`).
pub fn strip_meta(m: &mut Map<String, Value>) {
    m.remove("$version");
    m.remove("$metadata");
}

/// `section` plus `"$version": v` (the device-side shape).
pub fn with_version(section: &Map<String, Value>, version: u64) -> Value {
    let mut m = section.clone();
    m.insert("$version".into(), Value::from(version));
    Value::Object(m)
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
        assert!(validate_patch(&obj(json!({"a":4503599627370497_i64}))).is_err());
        assert!(validate_patch(&obj(json!({"a":4503599627370496_i64}))).is_ok());
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
        assert!(check_size(&big, MAX_TAGS_BYTES, "tags").is_err());
    }
}
