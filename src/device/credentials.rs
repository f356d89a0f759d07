//! The MQTT username of a device or module identity, and the device connection string.
//!
//! Interim: these move onto `azsim_proto::{username, connection_string}` as soon as those land;
//! until then the query values go through the one percent-encoder in `azsim_proto::encoding`.

use std::fmt::Write as _;

/// The MQTT username: `{host}/{device}[/{module}]/?api-version=2021-04-12&DeviceClientType=azsim%2F{ver}[&model-id={dtmi}]`.
pub fn username(
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    model_id: Option<&str>,
) -> String {
    let mut s = String::new();
    // Interim: until `azsim_proto::username` lands, the query values still go through the one
    // percent-encoder.
    let _ = write!(s, "{host}/{device_id}/");
    if let Some(m) = module_id {
        let _ = write!(s, "{m}/");
    }
    let _ = write!(
        s,
        "?api-version=2021-04-12&DeviceClientType={}",
        azsim_proto::encoding::Encoded(concat!("azsim/", env!("CARGO_PKG_VERSION")))
    );
    if let Some(dtmi) = model_id {
        let _ = write!(s, "&model-id={}", azsim_proto::encoding::Encoded(dtmi));
    }
    s
}

/// A device connection string's fields. `Debug` leaves the credential out.
pub struct DeviceConnectionString {
    /// `HostName`, possibly with `:port`.
    pub host: String,
    /// `DeviceId`.
    pub device_id: String,
    /// `ModuleId`.
    pub module_id: Option<String>,
    /// `GatewayHostName`.
    pub gateway: Option<String>,
    /// `SharedAccessKey` or `SharedAccessSignature`.
    pub credential: super::driver::Credential,
}

impl std::fmt::Debug for DeviceConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConnectionString")
            .field("host", &self.host)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("gateway", &self.gateway)
            .field("credential", &self.credential)
            .finish()
    }
}

/// Parses a device (or module) connection string: `;`-separated pairs split at the first `=`,
/// case-sensitive names, exactly one of `SharedAccessKey` / `SharedAccessSignature`.
///
/// # Errors
/// A short reason naming the field (never its value).
pub fn parse_connection_string(s: &str) -> Result<DeviceConnectionString, String> {
    use super::driver::Credential;
    let (mut host, mut device, mut module, mut key, mut sig, mut gateway, mut x509) =
        (None, None, None, None, None, None, false);
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| "is not a list of Name=value pairs".to_owned())?;
        let slot = match k {
            "HostName" => &mut host,
            "DeviceId" => &mut device,
            "ModuleId" => &mut module,
            "SharedAccessKey" => &mut key,
            "SharedAccessSignature" => &mut sig,
            "GatewayHostName" => &mut gateway,
            "x509" => {
                x509 = v.eq_ignore_ascii_case("true");
                continue;
            }
            "SharedAccessKeyName" => {
                return Err("is a service (policy) connection string; azsim run needs a device connection string with DeviceId".into());
            }
            other => return Err(format!("unknown name {other:?}")),
        };
        if slot.replace(v.to_owned()).is_some() {
            return Err(format!("{k} is given twice"));
        }
    }
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or("HostName is missing")?;
    let device_id = device
        .filter(|d| !d.is_empty())
        .ok_or("DeviceId is missing")?;
    let credential = match (key, sig, x509) {
        (Some(k), None, false) => {
            azsim_proto::sas::check_key(&k).map_err(|e| format!("SharedAccessKey: {e}"))?;
            Credential::Key(k)
        }
        (None, Some(t), false) => Credential::Token(t),
        (None, None, true) => {
            return Err("x509 authentication is not supported by azsim run (use a SAS key)".into());
        }
        (None, None, false) => {
            return Err("needs SharedAccessKey or SharedAccessSignature".into());
        }
        _ => return Err("give only one of SharedAccessKey, SharedAccessSignature and x509".into()),
    };
    Ok(DeviceConnectionString {
        host,
        device_id,
        module_id: module.filter(|m| !m.is_empty()),
        gateway: gateway.filter(|g| !g.is_empty()),
        credential,
    })
}
