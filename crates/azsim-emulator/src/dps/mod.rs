//! The Device Provisioning Service of the local hub: enrollments (individual and group, symmetric
//! key or X.509 attestation, see [`x509`]) kept in the hub's SQLite, the registration flow devices run over MQTT
//! ([`mqtt`], on the hub's MQTT listener, told apart by the CONNECT username), AMQP ([`amqp`],
//! on the AMQPS listener and its WebSocket path, told apart by the link address) or HTTPS
//! ([`http`], the device API), and the service REST API the DPS service SDKs call ([`http`]).
//!
//! One DPS instance per hub: its id scope (`0ne` + 8 hex digits) and `provisioningserviceowner`
//! key are generated on the first start and kept in the state directory (0600, like the other
//! keys). Every device it provisions is assigned to this hub.
//!
//! What it does not do: TPM attestation, custom allocation, several linked hubs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use azsim_proto::secret::Secret;
use rand::RngCore as _;
use serde_json::{Value, json};

use crate::HubError;
use crate::hub::Hub;

pub(crate) mod amqp;
pub(crate) mod http;
pub(crate) mod mqtt;
mod records;
mod register;
mod store;
mod throttle;
mod x509;

pub(crate) use throttle::REGISTRATIONS_PER_MINUTE;

/// The shared access policy the DPS service API accepts.
pub const SERVICE_POLICY: &str = "provisioningserviceowner";
const ID_SCOPE_FILE: &str = "dps.idscope";
const SERVICE_KEY_FILE: &str = "provisioningserviceowner.key";

/// This hub's DPS instance: its id scope and service key.
pub(crate) struct Dps {
    pub id_scope: String,
    pub service_key: Secret<String>,
    schema_ready: AtomicBool,
    /// Operation-status polls per registration id in the current window (`throttle`).
    polls: throttle::Polls,
}

impl std::fmt::Debug for Dps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dps")
            .field("id_scope", &self.id_scope)
            .finish_non_exhaustive()
    }
}

fn new_id_scope() -> String {
    let mut b = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut b);
    format!("0ne{:08X}", u32::from_be_bytes(b))
}

fn io_err(path: &Path, e: std::io::Error) -> HubError {
    HubError::State(format!("{}: {e}", path.display()))
}

impl Dps {
    /// A DPS instance that lives only in memory (a hub core without a state directory).
    pub fn ephemeral() -> Dps {
        Dps {
            id_scope: new_id_scope(),
            service_key: Secret::new(crate::state_dir::generate_key()),
            schema_ready: AtomicBool::new(false),
            polls: throttle::Polls::default(),
        }
    }

    /// Loads the id scope and service key from `dir`, creating them on the first start.
    ///
    /// # Errors
    /// A file that cannot be read or written, or holds something else than a scope or key.
    pub fn prepare(dir: &Path) -> Result<Dps, HubError> {
        let scope_path = dir.join(ID_SCOPE_FILE);
        let id_scope = match std::fs::read_to_string(&scope_path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = new_id_scope();
                std::fs::write(&scope_path, format!("{s}\n"))
                    .map_err(|e| io_err(&scope_path, e))?;
                s
            }
            Err(e) => return Err(io_err(&scope_path, e)),
        };
        if id_scope.is_empty() || !id_scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(HubError::State(format!(
                "{}: not an id scope",
                scope_path.display()
            )));
        }
        let key_path = dir.join(SERVICE_KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(s) => {
                // Kept private even when an older copy was widened.
                crate::state_dir::private_file(&key_path)?;
                s.trim().to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = crate::state_dir::generate_key();
                crate::state_dir::write_private(&key_path, &format!("{k}\n"))?;
                k
            }
            Err(e) => return Err(io_err(&key_path, e)),
        };
        if azsim_proto::sas::check_key(&key).is_err() {
            return Err(HubError::State(format!(
                "{}: not a base64 key",
                key_path.display()
            )));
        }
        Ok(Dps {
            id_scope,
            service_key: Secret::new(key),
            schema_ready: AtomicBool::new(false),
            polls: throttle::Polls::default(),
        })
    }
}

/// Creates the DPS tables once per hub (they live in the hub's database, beside its own).
pub(crate) async fn ensure_schema(hub: &Hub) -> Result<(), HubError> {
    if hub.dps.schema_ready.load(Ordering::Acquire) {
        return Ok(());
    }
    hub.store.call(store::create_schema).await?;
    hub.dps.schema_ready.store(true, Ordering::Release);
    Ok(())
}

/// The host name devices are assigned to and the provisioning host they dial: the hub's
/// hostname, with the MQTT port when it is not 8883.
pub(crate) fn assigned_hub(hub: &Hub) -> String {
    if hub.mqtt_port == crate::DEFAULT_MQTT_PORT {
        hub.cfg.hostname.clone()
    } else {
        format!("{}:{}", hub.cfg.hostname, hub.mqtt_port)
    }
}

/// The service connection string for `provisioningserviceowner` (`HostName` with the HTTPS port
/// unless it is 443).
pub(crate) fn service_connection_string(hub: &Hub) -> Result<String, HubError> {
    // On 443 a bare host, as the hub's own string: the Node provisioning service client
    // (azure-iot-provisioning-service) dials `HostName` as a host name and takes no port.
    let host = if hub.https_port == 443 {
        hub.cfg.hostname.clone()
    } else {
        format!("{}:{}", hub.cfg.hostname, hub.https_port)
    };
    let cs = azsim_proto::connection_string::ConnectionString::service(
        &host,
        SERVICE_POLICY,
        hub.dps.service_key.expose(),
    )
    .map_err(|e| HubError::State(format!("hostname: {e}")))?;
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = cs.write_with_secret(&mut out);
    Ok(out)
}

/// A DPS error: its HTTP status (the MQTT response topic's status too) and DPS's body,
/// `{"errorCode","trackingId","message","timestampUtc"}`.
#[derive(Debug, Clone)]
pub(crate) struct DpsError {
    pub status: u16,
    pub code: u32,
    pub message: String,
    /// Seconds the device should wait before asking again (a 429's `retry-after`).
    pub retry_after: Option<u32>,
}

impl DpsError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> DpsError {
        DpsError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad(message: impl Into<String>) -> DpsError {
        DpsError::new(400, 400004, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> DpsError {
        DpsError::new(401, 401002, message)
    }
    pub fn internal(e: HubError) -> DpsError {
        DpsError::new(500, 500000, e.to_string())
    }
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
    /// DPS's error body, stamped by the hub's clock.
    pub fn body(&self, hub: &Hub) -> Value {
        json!({
            "errorCode": self.code,
            "trackingId": uuid::Uuid::new_v4().to_string(),
            "message": self.message,
            "timestampUtc": hub.clock().now_rfc3339(),
        })
    }
}

impl From<HubError> for DpsError {
    fn from(e: HubError) -> Self {
        DpsError::internal(e)
    }
}

/// A DPS etag: base64 of a quoted random id, the shape DPS returns.
pub(crate) fn new_etag() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\"{}\"", uuid::Uuid::new_v4()))
}
