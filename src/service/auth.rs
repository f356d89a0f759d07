//! Service credentials: a policy connection string, parsed and signed by `azsim-proto`.

use std::fmt;

use azsim_proto::sas;

/// `HostName`, `SharedAccessKeyName` and `SharedAccessKey` of a service connection string.
/// `Debug` redacts the key; nothing here ever prints it.
#[derive(Clone)]
pub struct ServiceCredentials {
    host: String,
    policy: String,
    key: String,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("host", &self.host)
            .field("policy", &self.policy)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServiceCredentials {
    /// Parses a service (policy) connection string.
    ///
    /// # Errors
    /// A one-line reason naming the connection-string field, never the key.
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_fields(s)
    }

    /// `host` or `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The policy name (`iothubowner`).
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// A `SharedAccessSignature sr={host}&sig=..&se=..&skn={policy}` valid until `expiry`
    /// (Unix seconds).
    ///
    /// # Errors
    /// A one-line reason when the key cannot sign (not base64).
    pub fn token(&self, expiry: u64) -> Result<String, String> {
        let mut out = String::new();
        sas::sign(
            &mut out,
            &sas::Resource::Hub { host: &self.host },
            &self.key,
            expiry,
            Some(&self.policy),
        )
        .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Interim parser until `azsim_proto::connection_string` is published; same rules (split on
/// `;`, then on the first `=`, case-sensitive names), errors name the field, never the key.
fn parse_fields(s: &str) -> Result<ServiceCredentials, String> {
    let mut host = None;
    let mut policy = None;
    let mut key = None;
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or("expected Name=value pairs separated by ';'")?;
        match k {
            "HostName" => host = Some(v.to_owned()),
            "SharedAccessKeyName" => policy = Some(v.to_owned()),
            "SharedAccessKey" => key = Some(v.to_owned()),
            "DeviceId" | "ModuleId" => {
                return Err(format!(
                    "{k}: this is a device connection string; a service (policy) one is needed"
                ));
            }
            _ => return Err(format!("{k}: unknown field")),
        }
    }
    let host: String = host.filter(|h| !h.is_empty()).ok_or("HostName: missing")?;
    let policy = policy
        .filter(|p| !p.is_empty())
        .ok_or("SharedAccessKeyName: missing")?;
    let key = key.ok_or("SharedAccessKey: missing")?;
    sas::check_key(&key).map_err(|e| format!("SharedAccessKey: {e}"))?;
    Ok(ServiceCredentials { host, policy, key })
}
