//! What the service commands (`azsim device | invoke | twin | c2d | monitor`) share: which hub to
//! talk to ([`HubTargetArgs`]) and the validators of their common arguments. Each command's own
//! clap structs are in `cli/{device,invoke,twin,c2d,monitor}.rs`, its work in `crate::cmd`, the
//! HTTP client in `crate::service`.

use std::path::PathBuf;

use azsim_proto::secret::Secret;
use clap::Args;
use serde_json::Value;

use crate::error::UsageError;
use crate::service::{Target, TargetInputs};

/// Which hub to talk to and how to trust it (shared by every service command).
#[derive(Debug, Args, Clone, Default)]
pub struct HubTargetArgs {
    /// Service connection string of a shared access policy (e.g. iothubowner)
    /// [env: IOTHUB_CONNECTION_STRING]. Default: the local hub found in --state.
    #[arg(long, value_name = "CS")]
    pub hub_connection_string: Option<Secret<String>>,
    /// Extra CA certificate (PEM) to trust [env: AZSIM_CA_FILE]. Default: the local hub's CA.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// State directory of the local hub, holding hub.json [default: .azsim/hub].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl HubTargetArgs {
    pub(super) fn resolve(self) -> Result<Target, UsageError> {
        Target::resolve(TargetInputs {
            connection_string: self.hub_connection_string,
            ca: self.ca,
            state_dir: self.state,
        })
    }
}

/// The longest device or module id IoT Hub accepts.
const MAX_ID_LEN: usize = 128;

/// Checks a device id against IoT Hub's rules: 1..=128 ASCII letters, digits and
/// `- . + % _ # * ? ! ( ) , : = @ $ '` (IoT Hub also allows `;`, which no connection string can
/// carry).
pub(super) fn device_id(field: &'static str, id: String) -> Result<String, UsageError> {
    registry_id(field, "device", id)
}

/// `--module`, checked when given.
pub(super) fn module_arg(module: Option<String>) -> Result<Option<String>, UsageError> {
    module.map(|m| module_id("--module", m)).transpose()
}

/// Checks a module id: the same rules as a device id.
fn module_id(field: &'static str, id: String) -> Result<String, UsageError> {
    registry_id(field, "module", id)
}

fn registry_id(field: &'static str, what: &str, id: String) -> Result<String, UsageError> {
    if id.is_empty() {
        return Err(UsageError::new(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(UsageError::new(field, "must be at most 128 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.+%_#*?!(),:=@$'".contains(*c)))
    {
        return Err(UsageError::new(
            field,
            format!("character {c:?} is not allowed in a {what} id"),
        ));
    }
    Ok(id)
}

pub(super) fn json_arg(field: &'static str, text: &str) -> Result<Value, UsageError> {
    serde_json::from_str(text).map_err(|e| UsageError::new(field, format!("not valid json: {e}")))
}

pub(super) fn json_object(field: &'static str, text: &str) -> Result<Value, UsageError> {
    match json_arg(field, text)? {
        v @ Value::Object(_) => Ok(v),
        _ => Err(UsageError::new(field, "must be a json object")),
    }
}

pub(super) fn base64_key(
    field: &'static str,
    key: Option<Secret<String>>,
) -> Result<Option<Secret<String>>, UsageError> {
    match key {
        None => Ok(None),
        Some(k) => azsim_proto::sas::check_key(k.expose())
            .map(|()| Some(k))
            .map_err(|e| UsageError::new(field, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_iot_hub_rules() {
        assert!(device_id("DEVICE", "dev-1.a+b%_#*?!(),:=@$'".into()).is_ok());
        assert_eq!(
            device_id("DEVICE", String::new()).unwrap_err().to_string(),
            "DEVICE: must not be empty"
        );
        assert!(device_id("DEVICE", "a/b".into()).is_err());
        assert!(device_id("DEVICE", "é".into()).is_err());
        assert!(device_id("DEVICE", "x".repeat(129)).is_err());
        assert_eq!(
            module_id("--module", "m;1".into()).unwrap_err().to_string(),
            "--module: character ';' is not allowed in a module id"
        );
        assert!(module_id("--module", "edge-module.1".into()).is_ok());
    }

    #[test]
    fn json_arguments_name_their_field() {
        let e = json_arg("--payload", "{nope").unwrap_err();
        assert!(
            e.to_string().starts_with("--payload: not valid json"),
            "{e}"
        );
        let e = json_object("DESIRED", "[1]").unwrap_err();
        assert_eq!(e.to_string(), "DESIRED: must be a json object");
    }
}
