//! The records the DPS service API keeps, shaped from a PUT body: ids, the attestation
//! (symmetric keys generated when not given, or X.509 certificates with their `info`),
//! provisioning status, reprovision policy and allocation defaults, a fresh etag and the times.

use serde_json::{Value, json};

use super::store::Kind;
use super::{DpsError, new_etag};
use crate::hub::Hub;

/// The attestation with symmetric keys filled in (generated when not given), or an `x509`
/// one with its certificates' `info`.
fn normalize_attestation(att: Option<&Value>, group: bool) -> Result<Value, DpsError> {
    let att = match att {
        None | Some(Value::Null) => json!({"type": "symmetricKey"}),
        Some(a) if a.is_object() => a.clone(),
        Some(_) => return Err(DpsError::bad("attestation must be an object")),
    };
    match att.get("type").and_then(Value::as_str) {
        Some("symmetricKey") => {}
        Some("x509") => return super::x509::normalize(&att, group),
        Some("tpm") => {
            return Err(DpsError::bad(
                "attestation type 'tpm' is not supported by the local hub (symmetricKey, x509)",
            ));
        }
        _ => {
            return Err(DpsError::bad(
                "attestation.type must be 'symmetricKey' or 'x509'",
            ));
        }
    }
    let mut keys = serde_json::Map::new();
    for which in ["primaryKey", "secondaryKey"] {
        let k = match att.pointer(&format!("/symmetricKey/{which}")) {
            None | Some(Value::Null) => crate::state_dir::generate_key(),
            Some(Value::String(s)) if s.is_empty() => crate::state_dir::generate_key(),
            Some(Value::String(s)) => {
                azsim_proto::sas::check_key(s)
                    .map_err(|e| DpsError::bad(format!("attestation.symmetricKey.{which}: {e}")))?;
                s.clone()
            }
            Some(_) => {
                return Err(DpsError::bad(format!(
                    "attestation.symmetricKey.{which} must be a string"
                )));
            }
        };
        keys.insert(which.into(), Value::String(k));
    }
    Ok(json!({"type": "symmetricKey", "symmetricKey": keys}))
}

/// A PUT body made into the stored record: ids, attestation, status and policy defaults,
/// fresh etag and times (creation time kept from `previous`).
pub(super) fn normalize(
    hub: &Hub,
    kind: Kind,
    id: &str,
    mut body: serde_json::Map<String, Value>,
    previous: Option<&Value>,
) -> Result<Value, DpsError> {
    let id_field = if kind == Kind::Group {
        "enrollmentGroupId"
    } else {
        "registrationId"
    };
    match body.get(id_field) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == id => {}
        Some(_) => {
            return Err(DpsError::bad(format!(
                "{id_field} in the body does not match the URL"
            )));
        }
    }
    body.insert(id_field.into(), json!(id));
    body.insert(
        "attestation".into(),
        normalize_attestation(body.get("attestation"), kind == Kind::Group)?,
    );
    match body.get("provisioningStatus") {
        None | Some(Value::Null) => {
            body.insert("provisioningStatus".into(), json!("enabled"));
        }
        Some(Value::String(s)) if s == "enabled" || s == "disabled" => {}
        Some(_) => {
            return Err(DpsError::bad(
                "provisioningStatus must be 'enabled' or 'disabled'",
            ));
        }
    }
    if kind == Kind::Enrollment {
        match body.get("deviceId") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) if !d.is_empty() && d.len() <= 128 => {}
            Some(_) => return Err(DpsError::bad("deviceId must be a non-empty string")),
        }
    }
    match body.get("initialTwin") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(DpsError::bad("initialTwin must be an object")),
    }
    let policy = body
        .get("reprovisionPolicy")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let flag = |n: &str| policy.get(n).and_then(Value::as_bool).unwrap_or(true);
    body.insert(
        "reprovisionPolicy".into(),
        json!({"updateHubAssignment": flag("updateHubAssignment"), "migrateDeviceData": flag("migrateDeviceData")}),
    );
    body.entry("capabilities")
        .or_insert_with(|| json!({"iotEdge": false}));
    body.entry("allocationPolicy")
        .or_insert_with(|| json!("hashed"));
    let now = hub.clock().now_rfc3339();
    let created = previous
        .and_then(|p| p.get("createdDateTimeUtc").cloned())
        .unwrap_or_else(|| json!(now));
    body.insert("createdDateTimeUtc".into(), created);
    body.insert("lastUpdatedDateTimeUtc".into(), json!(now));
    body.insert("etag".into(), json!(new_etag()));
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_symmetric_key_is_generated_and_a_bad_one_refused() {
        let a = normalize_attestation(None, false).unwrap();
        assert!(
            a.pointer("/symmetricKey/primaryKey")
                .unwrap()
                .as_str()
                .unwrap()
                .len()
                >= 44
        );
        let e = normalize_attestation(
            Some(&json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": "not base64!"}})),
            false,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("primaryKey"), "{}", e.message);
        let e = normalize_attestation(Some(&json!({"type": "tpm"})), false).unwrap_err();
        assert_eq!(e.status, 400);
    }
}
