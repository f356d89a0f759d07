//! The MQTT username and client id of a device or module identity, and the device connection
//! string, from `azsim_proto::{username, connection_string}`.

/// The MQTT username:
/// `{host}/{device}[/{module}]/?api-version=2021-04-12&DeviceClientType=azsim%2F{ver}[&model-id={dtmi}]`.
pub fn username(
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    model_id: Option<&str>,
) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = azsim_proto::username::write_username(
        &mut s,
        host,
        device_id,
        module_id,
        env!("CARGO_PKG_VERSION"),
        model_id,
    );
    s
}

/// The MQTT client id: `{device}` or `{device}/{module}`.
pub fn client_id(device_id: &str, module_id: Option<&str>) -> String {
    let mut s = String::new();
    let _ = azsim_proto::username::write_client_id(&mut s, device_id, module_id);
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

/// Parses a device (or module) connection string with `azsim_proto::connection_string`.
///
/// # Errors
/// A short reason naming the field (never its value).
pub fn parse_connection_string(s: &str) -> Result<DeviceConnectionString, String> {
    use azsim_proto::connection_string::{ConnectionString, Kind};

    use super::driver::Credential;
    let cs = ConnectionString::parse(s.trim()).map_err(|e| e.to_string())?;
    let credential = match cs.kind() {
        Kind::Device | Kind::Module => {
            let key = cs.shared_access_key().unwrap_or_default().to_owned();
            match cs.shared_access_key_name() {
                Some(policy) => Credential::PolicyKey {
                    policy: policy.to_owned(),
                    key,
                },
                None => Credential::Key(key),
            }
        }
        Kind::DeviceWithSas => {
            Credential::Token(cs.shared_access_signature().unwrap_or_default().to_owned())
        }
        Kind::Service => {
            return Err("is a service (policy) connection string; azsim run needs a device connection string with DeviceId".into());
        }
        Kind::X509 => {
            return Err("x509 authentication is not supported by azsim run (use a SAS key)".into());
        }
    };
    Ok(DeviceConnectionString {
        host: cs.host_name().to_owned(),
        device_id: cs.device_id().unwrap_or_default().to_owned(),
        module_id: cs.module_id().map(str::to_owned),
        gateway: cs.gateway_host_name().map(str::to_owned),
        credential,
    })
}
