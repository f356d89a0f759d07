//! Service credentials: a policy connection string, parsed and signed by `azsim-proto`.

use azsim_proto::connection_string::{ConnectionString, Kind};
use azsim_proto::sas;
use azsim_proto::secret::Secret;

/// `HostName`, `SharedAccessKeyName` and `SharedAccessKey` of a service connection string.
/// `Debug` redacts the key ([`Secret`]); nothing here ever prints it.
#[derive(Clone, Debug)]
pub struct ServiceCredentials {
    host: String,
    policy: String,
    key: Secret<String>,
}

impl ServiceCredentials {
    /// Parses a service (policy) connection string.
    ///
    /// # Errors
    /// A one-line reason naming the connection-string field, never the key.
    pub fn parse(s: &str) -> Result<Self, String> {
        let cs = ConnectionString::parse(s)
            .map_err(|e| crate::error::connection_string_problem(s, e))?;
        match cs.kind() {
            Kind::Service => {}
            Kind::Device | Kind::Module | Kind::DeviceWithSas | Kind::X509 => {
                return Err(
                    "DeviceId: this is a device connection string; the service commands need a \
                     hub policy one (HostName, SharedAccessKeyName, SharedAccessKey)"
                        .into(),
                );
            }
        }
        let (Some(policy), Some(key)) = (cs.shared_access_key_name(), cs.shared_access_key())
        else {
            return Err("SharedAccessKeyName: missing".into());
        };
        Ok(Self {
            host: cs.host_name().to_owned(),
            policy: policy.to_owned(),
            key: Secret::new(key.to_owned()),
        })
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
            self.key.expose(),
            expiry,
            Some(&self.policy),
        )
        .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS0xMjM0NTY3ODkwMTIzNDU2Nzg5MA==";

    #[test]
    fn a_policy_string_parses_and_signs_a_hub_token() {
        let c = ServiceCredentials::parse(&format!(
            "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(c.host(), "localhost:8443");
        assert_eq!(c.policy(), "iothubowner");
        assert!(!format!("{c:?}").contains(KEY));
        let t = c.token(1_700_000_000).unwrap();
        assert!(
            t.starts_with("SharedAccessSignature sr=localhost%3A8443&sig="),
            "{t}"
        );
        assert!(t.ends_with("&se=1700000000&skn=iothubowner"), "{t}");
    }

    #[test]
    fn device_strings_and_bad_keys_are_refused_without_the_key() {
        for bad in [
            format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"),
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not base64".to_owned(),
            format!("HostName=h;SharedAccessKey={KEY}"),
        ] {
            let e = ServiceCredentials::parse(&bad).unwrap_err();
            assert!(!e.contains(KEY), "{e}");
        }
    }
}
