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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";

    #[test]
    fn usernames_and_client_ids_follow_the_spec() {
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            username("h.azure-devices.net", "d1", None, None),
            format!("h.azure-devices.net/d1/?api-version=2021-04-12&DeviceClientType=azsim%2F{v}")
        );
        assert_eq!(
            username("h", "d1", Some("m1"), Some("dtmi:com:example:T;1")),
            format!(
                "h/d1/m1/?api-version=2021-04-12&DeviceClientType=azsim%2F{v}&model-id=dtmi%3Acom%3Aexample%3AT%3B1"
            )
        );
        assert_eq!(client_id("d1", Some("m1")), "d1/m1");
    }

    #[test]
    fn debug_output_never_shows_a_credential() {
        let cs = parse_connection_string(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"))
            .unwrap();
        assert!(!format!("{cs:?}").contains(KEY));
        let cs = parse_connection_string(&format!(
            "HostName=h;DeviceId=d;SharedAccessKeyName=device;SharedAccessKey={KEY}"
        ))
        .unwrap();
        let dbg = format!("{cs:?}");
        assert!(!dbg.contains(KEY) && dbg.contains("device"));
        let token = "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=c2VjcmV0&se=1";
        let cs = parse_connection_string(&format!(
            "HostName=h;DeviceId=d;SharedAccessSignature={token}"
        ))
        .unwrap();
        assert!(!format!("{cs:?}").contains("c2VjcmV0"));
        let params = crate::device::conn::ConnectParams {
            host: "h".into(),
            port: 8883,
            client_id: "d".into(),
            username: "u".into(),
            password: token.into(),
            tls: crate::tls::client_config(None).unwrap(),
            keep_alive: 60,
            clean_session: false,
            redeliver: vec![crate::device::conn::Redelivery {
                pkid: 3,
                topic: "devices/d/messages/events/".into(),
                payload: b"{}".to_vec(),
            }],
        };
        assert!(!format!("{params:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn service_and_x509_strings_are_refused_with_a_reason() {
        let e = parse_connection_string(&format!(
            "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .unwrap_err();
        assert!(e.contains("service"), "{e}");
        let e = parse_connection_string("HostName=h;DeviceId=d;x509=true").unwrap_err();
        assert!(e.contains("x509"), "{e}");
        assert!(
            !parse_connection_string("HostName=h;DeviceId=d;SharedAccessKey=!!")
                .unwrap_err()
                .contains("!!")
        );
    }
}
