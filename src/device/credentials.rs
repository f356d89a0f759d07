//! The device (or module) connection string `azsim run` is given, read with
//! `azsim_proto::connection_string`.

/// A device connection string's fields; the credential is redacted in `Debug`.
#[derive(Debug)]
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

/// Parses a device (or module) connection string with `azsim_proto::connection_string`.
///
/// # Errors
/// A short reason naming the field (never its value).
pub fn parse_connection_string(s: &str) -> Result<DeviceConnectionString, String> {
    parse_connection_string_with_cert(s, None)
}

/// [`parse_connection_string`] with the client certificate (`--cert`, `--cert-key`) an
/// `x509=true` string needs; a certificate with a SAS string is refused.
///
/// # Errors
/// As [`parse_connection_string`].
pub fn parse_connection_string_with_cert(
    s: &str,
    cert: Option<crate::tls::ClientCert>,
) -> Result<DeviceConnectionString, String> {
    use azsim_proto::connection_string::{ConnectionString, Kind};

    use super::driver::Credential;
    use azsim_proto::secret::Secret;
    let cs = ConnectionString::parse(s.trim()).map_err(|e| e.to_string())?;
    if cert.is_some() && cs.kind() != Kind::X509 {
        return Err("has a SharedAccessKey or SharedAccessSignature: --cert is for x509=true connection strings".into());
    }
    let credential = match cs.kind() {
        Kind::Device | Kind::Module => {
            let key = Secret::new(cs.shared_access_key().unwrap_or_default().to_owned());
            match cs.shared_access_key_name() {
                Some(policy) => Credential::PolicyKey {
                    policy: policy.to_owned(),
                    key,
                },
                None => Credential::Key(key),
            }
        }
        Kind::DeviceWithSas => Credential::Token(Secret::new(
            cs.shared_access_signature().unwrap_or_default().to_owned(),
        )),
        Kind::Service => {
            return Err("is a service (policy) connection string; azsim run needs a device connection string with DeviceId".into());
        }
        Kind::X509 => match cert {
            Some(c) => Credential::X509(c),
            None => {
                return Err(
                    "x509=true: give the device certificate with --cert FILE --cert-key FILE"
                        .into(),
                );
            }
        },
    };
    let device_id = cs.device_id().unwrap_or_default();
    refuse_wildcard("DeviceId", device_id)?;
    if let Some(m) = cs.module_id() {
        refuse_wildcard("ModuleId", m)?;
    }
    Ok(DeviceConnectionString {
        host: cs.host_name().to_owned(),
        device_id: device_id.to_owned(),
        module_id: cs.module_id().map(str::to_owned),
        gateway: cs.gateway_host_name().map(str::to_owned),
        credential,
    })
}

/// IoT Hub's registry accepts `+` and `#` in device and module ids, but an MQTT topic name
/// cannot carry them (MQTT 3.1.1 4.7.1): such a device would connect and then use none of its
/// topics, so it is refused before anything is sent (as `azsim_mqtt::Client` would refuse it).
fn refuse_wildcard(field: &str, id: &str) -> Result<(), String> {
    match id.chars().find(|c| matches!(c, '+' | '#')) {
        Some(c) => Err(format!(
            "{field} '{id}' contains '{c}', which MQTT topics cannot carry; IoT Hub accepts it, \
             but only over HTTPS/AMQP"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";

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
    }

    #[test]
    fn device_and_module_ids_with_an_mqtt_wildcard_are_refused() {
        let e = parse_connection_string(&format!("HostName=h;DeviceId=a+b;SharedAccessKey={KEY}"))
            .unwrap_err();
        assert_eq!(
            e,
            "DeviceId 'a+b' contains '+', which MQTT topics cannot carry; IoT Hub accepts it, \
             but only over HTTPS/AMQP"
        );
        let e = parse_connection_string(&format!(
            "HostName=h;DeviceId=d;ModuleId=m#1;SharedAccessKey={KEY}"
        ))
        .unwrap_err();
        assert!(e.starts_with("ModuleId 'm#1' contains '#'"), "{e}");
        assert!(!e.contains(KEY));
        assert!(
            parse_connection_string(&format!(
                "HostName=h;DeviceId=a-b.c:d;ModuleId=m=1;SharedAccessKey={KEY}"
            ))
            .is_ok()
        );
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
