//! Which hub the service commands talk to, and how to trust it.
//!
//! Order: `--hub-connection-string`, then `IOTHUB_CONNECTION_STRING`, then the local hub's
//! discovery file `{state}/hub.json` (default `.azsim/hub`). The CA: `--ca`, then
//! `AZSIM_CA_FILE`, then the `ca_file` of `hub.json` when the target is that hub. `HostName` may
//! carry a port (`localhost:8443`), which is used as is in the URL and the token's `sr`.
//!
//! A hub named by connection string is recognised as a local azsim hub when a `hub.json` for the
//! same host is found in `--state` or next to the CA file (`azsim hub` writes its `ca.pem` into
//! its state directory): that is where the hub's MQTT port comes from, which the device
//! connection strings `azsim device create | show` print must carry when it is not 8883.
//!
//! Local or Azure: a host whose name ends in one of Azure's IoT Hub DNS suffixes
//! (`.azure-devices.net` and the sovereign clouds' `.azure-devices.cn`, `.azure-devices.us`,
//! `.azure-devices.de`) is an Azure IoT Hub; anything else is taken to be an azsim hub, which
//! serves the emulator-only endpoints (`/emulator/...`) that `c2d send` and `monitor` need.

use std::path::{Path, PathBuf};

use azsim_proto::connection_string::split_host_port;
use azsim_proto::endpoint::MQTT_PORT;
use azsim_proto::secret::Secret;

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
    /// `--hub-connection-string` (a secret: it holds the policy key).
    pub connection_string: Option<Secret<String>>,
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
        let env_cs =
            crate::cli::run::env_text(ENV_CONNECTION_STRING)?.filter(|s| !s.trim().is_empty());
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
            (Some(cs), _) => Some((
                cs.into_inner(),
                "--hub-connection-string",
                TargetSource::Flag,
            )),
            (None, Some(cs)) => Some((cs, ENV_CONNECTION_STRING, TargetSource::Env)),
            (None, None) => None,
        };
        if let Some((cs, field, source)) = explicit {
            let credentials =
                ServiceCredentials::parse(&cs).map_err(|reason| UsageError::new(field, reason))?;
            // A connection string for the local hub still finds the hub's CA and MQTT port.
            let ca_dir = ca_file.as_deref().and_then(Path::parent).map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            });
            let local_hub = [Some(state_dir.as_path()), ca_dir]
                .into_iter()
                .flatten()
                .find_map(|dir| local_hub_for(dir, credentials.host()));
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
        split_host_port(self.host()).map_or(self.host(), |(host, _)| host)
    }

    /// `https://{host}`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host())
    }

    /// True when the host is an Azure IoT Hub (by DNS suffix), false for an azsim hub.
    pub fn is_azure(&self) -> bool {
        is_azure_host(self.host_name())
    }

    /// Where this hub's devices connect over MQTT: `port` (a `--mqtt-port` flag) when given, else
    /// the local hub's host and port from its `hub.json`, else the service host (without the
    /// service port) on 8883, which is right for Azure and assumed for any other hub.
    pub fn mqtt_endpoint(&self, port: Option<u16>) -> MqttEndpoint {
        let host = match &self.local_hub {
            Some(hub) => hub.hostname.clone(),
            None => self.host_name().to_owned(),
        };
        let (port, source) = match (port, &self.local_hub) {
            (Some(p), _) => (p, PortSource::Given),
            (None, Some(hub)) => (hub.mqtt_port, PortSource::LocalHub),
            (None, None) if self.is_azure() => (MQTT_PORT, PortSource::Azure),
            (None, None) => (MQTT_PORT, PortSource::Assumed),
        };
        MqttEndpoint { host, port, source }
    }
}

/// Where devices connect over MQTT, and how azsim knows the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// The host name devices use (no port).
    pub host: String,
    /// The MQTT (over TLS) port.
    pub port: u16,
    /// Where `port` came from.
    pub source: PortSource,
}

/// Where an [`MqttEndpoint`]'s port came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSource {
    /// Given on the command line (`--mqtt-port`).
    Given,
    /// The local hub's `hub.json`.
    LocalHub,
    /// An Azure IoT Hub: always 8883.
    Azure,
    /// Not known (a hub that is neither Azure nor found through a `hub.json`): 8883 assumed.
    Assumed,
}

impl MqttEndpoint {
    /// The `HostName` of a device connection string for this endpoint: the host, plus `:port`
    /// when the port is not 8883, which is how `azsim run` and `azsim token --mqtt` (and the
    /// SAS resource the hub accepts) carry a non-default port.
    pub fn host_name(&self) -> String {
        if self.port == MQTT_PORT {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The local hub whose `hub.json` is in `dir`, when its service host is `host`.
fn local_hub_for(dir: &Path, host: &str) -> Option<HubInfo> {
    load_hub_info(dir).ok().flatten().filter(|hub| {
        ServiceCredentials::parse(&hub.service_connection_string)
            .is_ok_and(|c| c.host().eq_ignore_ascii_case(host))
    })
}

/// True for Azure IoT Hub DNS names (see the module docs).
pub fn is_azure_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    AZURE_SUFFIXES.iter().any(|s| host.ends_with(s))
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
                connection_string: Some(Secret::new(cs("localhost:8443"))),
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            Some(cs("other.azure-devices.net")),
            None,
        )
        .unwrap();
        assert_eq!(t.source, TargetSource::Flag);
        assert_eq!(t.base_url(), "https://localhost:8443");
        let mqtt = t.mqtt_endpoint(None);
        assert_eq!(
            (mqtt.host_name(), mqtt.source),
            ("localhost".to_owned(), PortSource::Assumed)
        );
        assert_eq!(t.mqtt_endpoint(Some(1883)).host_name(), "localhost:1883");
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
        let mqtt = t.mqtt_endpoint(None);
        assert_eq!(
            (mqtt.host_name(), mqtt.port, mqtt.source),
            (
                "other.azure-devices.net".to_owned(),
                8883,
                PortSource::Azure
            )
        );
    }

    #[test]
    fn malformed_connection_string_names_the_field_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = Target::resolve_with(
            TargetInputs {
                connection_string: Some(Secret::new(format!("HostName=h;SharedAccessKey={KEY}"))),
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
        let mqtt = t.mqtt_endpoint(None);
        assert_eq!(
            (mqtt.host_name(), mqtt.source),
            ("localhost:18883".to_owned(), PortSource::LocalHub)
        );
        assert!(!format!("{t:?}").contains(KEY));

        // The same hub named by connection string still gets its CA from hub.json.
        let t = Target::resolve_with(
            TargetInputs {
                connection_string: Some(Secret::new(cs("localhost:18443"))),
                state_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(ca.as_path()));

        // From elsewhere, the hub's CA file leads to its hub.json (and so to its MQTT port);
        // another hub's CA does not.
        let elsewhere = tempfile::tempdir().unwrap();
        let by_ca = |cs_host: &str| {
            Target::resolve_with(
                TargetInputs {
                    connection_string: Some(Secret::new(cs(cs_host))),
                    ca: Some(ca.clone()),
                    state_dir: Some(elsewhere.path().into()),
                },
                None,
                None,
            )
            .unwrap()
            .mqtt_endpoint(None)
        };
        assert_eq!(by_ca("localhost:18443").host_name(), "localhost:18883");
        assert_eq!(by_ca("otherhost:18443").source, PortSource::Assumed);
    }
}
