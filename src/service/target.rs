//! Which hub the service commands talk to, and how to trust it.
//!
//! Order: `--hub-connection-string`, then `IOTHUB_CONNECTION_STRING`, then the local hub's
//! discovery file `{state}/hub.json` (default `.azsim/hub`). The CA: `--ca`, then
//! `AZSIM_CA_FILE`, then the `ca_file` of `hub.json` when the target is that hub. `HostName` may
//! carry a port (`localhost:8443`), which is used as is in the URL and the token's `sr`.
//!
//! Local or Azure: a host whose name ends in one of Azure's IoT Hub DNS suffixes
//! (`.azure-devices.net` and the sovereign clouds' `.azure-devices.cn`, `.azure-devices.us`,
//! `.azure-devices.de`) is an Azure IoT Hub; anything else is taken to be an azsim hub, which
//! serves the emulator-only endpoints (`/emulator/...`) that `c2d send` and `monitor` need.

use std::path::{Path, PathBuf};

use super::auth::ServiceCredentials;
use crate::error::UsageError;

/// The default state directory of `azsim hub`, relative to the current directory.
pub const DEFAULT_STATE_DIR: &str = ".azsim/hub";

/// The env var holding a service connection string.
pub const ENV_CONNECTION_STRING: &str = "IOTHUB_CONNECTION_STRING";
/// The env var holding an extra CA file.
pub const ENV_CA_FILE: &str = "AZSIM_CA_FILE";

/// Azure IoT Hub DNS suffixes (public cloud and sovereign clouds).
const AZURE_SUFFIXES: &[&str] = &[
    ".azure-devices.net",
    ".azure-devices.cn",
    ".azure-devices.us",
    ".azure-devices.de",
];

/// The local hub's discovery file, `{state}/hub.json`, as `azsim hub` writes it.
pub use azsim_emulator::HubInfo;

/// Reads `{dir}/hub.json`; `Ok(None)` when the file does not exist.
///
/// # Errors
/// A one-line reason naming the file when it exists but cannot be read or parsed.
pub fn load_hub_info(dir: &Path) -> Result<Option<HubInfo>, String> {
    if !dir.join(azsim_emulator::HUB_JSON).exists() {
        return Ok(None);
    }
    HubInfo::load(dir).map(Some).map_err(|e| e.to_string())
}

/// Where the target came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// `--hub-connection-string`.
    Flag,
    /// `IOTHUB_CONNECTION_STRING`.
    Env,
    /// The local hub's `hub.json` in this directory.
    LocalHub(PathBuf),
}

/// A resolved service target: host, policy credentials, CA.
#[derive(Debug, Clone)]
pub struct Target {
    /// Policy name and key, and the host (with port when given).
    pub credentials: ServiceCredentials,
    /// Extra CA to trust (besides the webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Where the connection string came from.
    pub source: TargetSource,
    /// The local hub's discovery file, when the target is that hub.
    pub local_hub: Option<HubInfo>,
}

/// The raw inputs of target resolution (flags; env vars are read here).
#[derive(Debug, Clone, Default)]
pub struct TargetInputs {
    /// `--hub-connection-string`.
    pub connection_string: Option<String>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--state`.
    pub state_dir: Option<PathBuf>,
}

impl Target {
    /// Resolves the target from flags, then env vars, then the local hub's discovery file.
    ///
    /// # Errors
    /// A [`UsageError`] naming the flag or env var that is malformed, or `--hub-connection-string`
    /// when nothing names a hub.
    pub fn resolve(inputs: TargetInputs) -> Result<Self, UsageError> {
        let env_cs = std::env::var(ENV_CONNECTION_STRING)
            .ok()
            .filter(|s| !s.trim().is_empty());
        let env_ca = std::env::var_os(ENV_CA_FILE)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Self::resolve_with(inputs, env_cs, env_ca)
    }

    /// [`Target::resolve`] with the env vars passed in (for tests).
    ///
    /// # Errors
    /// As [`Target::resolve`].
    pub fn resolve_with(
        inputs: TargetInputs,
        env_cs: Option<String>,
        env_ca: Option<PathBuf>,
    ) -> Result<Self, UsageError> {
        let state_dir = inputs
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let (ca_file, ca_field) = match (inputs.ca, env_ca) {
            (Some(p), _) => (Some(p), "--ca"),
            (None, Some(p)) => (Some(p), ENV_CA_FILE),
            (None, None) => (None, ""),
        };
        if let Some(p) = &ca_file
            && !p.is_file()
        {
            return Err(UsageError::new(
                ca_field,
                format!("{} is not a readable file", p.display()),
            ));
        }
        let explicit = match (inputs.connection_string, env_cs) {
            (Some(cs), _) => Some((cs, "--hub-connection-string", TargetSource::Flag)),
            (None, Some(cs)) => Some((cs, ENV_CONNECTION_STRING, TargetSource::Env)),
            (None, None) => None,
        };
        if let Some((cs, field, source)) = explicit {
            let credentials =
                ServiceCredentials::parse(&cs).map_err(|reason| UsageError::new(field, reason))?;
            // A connection string for the local hub still finds the hub's CA in its state dir.
            let local_hub = load_hub_info(&state_dir).ok().flatten().filter(|hub| {
                ServiceCredentials::parse(&hub.service_connection_string)
                    .is_ok_and(|c| c.host().eq_ignore_ascii_case(credentials.host()))
            });
            let ca_file = ca_file.or_else(|| local_hub.as_ref().map(|h| h.ca_file.clone()));
            return Ok(Target {
                credentials,
                ca_file,
                source,
                local_hub,
            });
        }
        let hub = match load_hub_info(&state_dir) {
            Ok(Some(hub)) => hub,
            Ok(None) => {
                return Err(UsageError::new(
                    "--hub-connection-string",
                    format!(
                        "not given, {ENV_CONNECTION_STRING} is not set, and there is no local hub \
                         at {} (start one with `azsim hub`)",
                        state_dir.join("hub.json").display()
                    ),
                ));
            }
            Err(reason) => return Err(UsageError::new("--state", reason)),
        };
        let credentials =
            ServiceCredentials::parse(&hub.service_connection_string).map_err(|reason| {
                UsageError::new(
                    "--state",
                    format!(
                        "{}: service_connection_string: {reason}",
                        state_dir.join("hub.json").display()
                    ),
                )
            })?;
        Ok(Target {
            credentials,
            ca_file: ca_file.or_else(|| Some(hub.ca_file.clone())),
            source: TargetSource::LocalHub(state_dir),
            local_hub: Some(hub),
        })
    }

    /// `host` or `host:port`, as in the connection string.
    pub fn host(&self) -> &str {
        self.credentials.host()
    }

    /// The host name without a port.
    pub fn host_name(&self) -> &str {
        split_port(self.host()).0
    }

    /// `https://{host}`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host())
    }

    /// True when the host is an Azure IoT Hub (by DNS suffix), false for an azsim hub.
    pub fn is_azure(&self) -> bool {
        is_azure_host(self.host_name())
    }

    /// The `HostName` devices of this hub use in their connection strings: for the local hub its
    /// hostname plus `:port` when MQTT is not on 8883 (what `HubInfo` prints); otherwise the host
    /// without the service port.
    pub fn device_hostname(&self) -> String {
        match &self.local_hub {
            Some(hub) => hub.mqtt_host(),
            None => self.host_name().to_owned(),
        }
    }

    /// The local hub's MQTT port, when known.
    pub fn mqtt_port(&self) -> Option<u16> {
        self.local_hub.as_ref().map(|h| h.mqtt_port)
    }
}

/// True for Azure IoT Hub DNS names (see the module docs).
pub fn is_azure_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    AZURE_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// Splits `host:port` (the port only when it is all digits).
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS0xMjM0NTY3ODkwMTIzNDU2Nzg5MA==";

    fn cs(host: &str) -> String {
        format!("HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
    }

    #[test]
    fn azure_hosts_are_recognised_by_suffix() {
        assert!(is_azure_host("myhub.azure-devices.net"));
        assert!(is_azure_host("MyHub.Azure-Devices.NET."));
        assert!(is_azure_host("hub.azure-devices.cn"));
        assert!(!is_azure_host("localhost"));
        assert!(!is_azure_host("azure-devices.net.example.com"));
    }

    #[test]
    fn flag_beats_env_and_keeps_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::resolve_with(
            TargetInputs {
                connection_string: Some(cs("localhost:8443")),
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            Some(cs("other.azure-devices.net")),
            None,
        )
        .unwrap();
        assert_eq!(t.source, TargetSource::Flag);
        assert_eq!(t.base_url(), "https://localhost:8443");
        assert_eq!(t.device_hostname(), "localhost");
        assert!(!t.is_azure());

        let t = Target::resolve_with(
            TargetInputs {
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            Some(cs("other.azure-devices.net")),
            None,
        )
        .unwrap();
        assert_eq!(t.source, TargetSource::Env);
        assert!(t.is_azure());
        assert_eq!(t.device_hostname(), "other.azure-devices.net");
    }

    #[test]
    fn malformed_connection_string_names_the_field_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = Target::resolve_with(
            TargetInputs {
                connection_string: Some(format!("HostName=h;SharedAccessKey={KEY}")),
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(err.field(), "--hub-connection-string");
        assert!(!err.to_string().contains(KEY), "{err}");

        let err = Target::resolve_with(
            TargetInputs {
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            Some("garbage".into()),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field(), ENV_CONNECTION_STRING);
    }

    #[test]
    fn the_local_hub_is_found_through_hub_json() {
        let dir = tempfile::tempdir().unwrap();
        let none = Target::resolve_with(
            TargetInputs {
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap_err();
        assert!(none.to_string().contains("azsim hub"), "{none}");

        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let info = serde_json::json!({"hostname":"localhost","mqtt_port":18883,"https_port":18443,
            "ca_file": ca, "service_connection_string": cs("localhost:18443"), "pid": 1});
        std::fs::write(dir.path().join("hub.json"), info.to_string()).unwrap();
        let t = Target::resolve_with(
            TargetInputs {
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.host(), "localhost:18443");
        assert_eq!(t.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(t.mqtt_port(), Some(18883));
        assert!(!format!("{t:?}").contains(KEY));

        // The same hub named by connection string still gets its CA from hub.json.
        let t = Target::resolve_with(
            TargetInputs {
                connection_string: Some(cs("localhost:18443")),
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(ca.as_path()));
    }
}
