//! `azsim run --dps`: provision the device before it runs. The exchange is `azsim_proto::dps`
//! (sans-IO), performed by the device loop's provisioning mode (`azsim_mqtt::Provisioning`, what
//! the firmware runs too) over the same TLS (and WebSocket) connector and system clock as the
//! hub session; this file chooses where to provision and turns DPS's answers into events and
//! diagnoses.

use std::time::Duration;

use azsim_mqtt::{DpsCredential, DpsIdentity, ProvisionError as DpsError, Provisioning};
use azsim_proto::secret::Secret;
use azsim_proto::session::DisconnectReason;

use super::net::{FailureSlot, SystemClock, TlsConnector, Transport};

/// How long the whole registration may take (DPS asks for polls every few seconds).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Packet buffers: DPS's answers are about a kilobyte; the register request carries
/// `--provisioning-payload`.
const BUF: usize = 16 * 1024;

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// The DPS host (global endpoint or the local hub).
    pub host: String,
    /// Its MQTT (or, with WebSockets, HTTPS) port.
    pub port: u16,
    /// MQTT or MQTT over WebSockets.
    pub transport: Transport,
    /// The id scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
    /// The device's key (an individual enrollment's, or derived from the group's); `None` with
    /// a client certificate (X.509 attestation).
    pub key: Option<Secret<String>>,
    /// The device's certificate and key (X.509 attestation: no password).
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Extra CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Raw JSON sent as the register request's `payload`.
    pub payload: Option<String>,
}

/// Where the device was assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// `assignedHub` (may carry `:port` for a local hub).
    pub assigned_hub: String,
    /// The device id in that hub.
    pub device_id: String,
    /// `substatus`.
    pub substatus: Option<String>,
}

/// Why provisioning failed: a one-line diagnosis without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

fn err(s: impl Into<String>) -> ProvisionError {
    ProvisionError(s.into())
}

/// What DPS's error means for someone holding the command line.
fn diagnose(
    status: u16,
    code: Option<u64>,
    message: Option<&str>,
    cfg: &ProvisionConfig,
) -> String {
    let code = code.map(|c| format!(" {c}")).unwrap_or_default();
    let message = message.unwrap_or("no message");
    let hint = match status {
        401 => format!(
            ": check --id-scope ({}), the key (--key, or --group-key for a group enrollment) \
             and that the enrollment is enabled",
            cfg.id_scope
        ),
        404 => " (create an enrollment with `azsim dps enrollment create`, or a group with \
                `azsim dps group create`)"
            .to_string(),
        _ => String::new(),
    };
    format!(
        "dps refused registration {}: {status}{code}: {message}{hint}",
        cfg.registration_id
    )
}

/// Registers with DPS and returns the assignment.
///
/// # Errors
/// [`ProvisionError`] with the diagnosis: unreachable, TLS, CONNACK refused, DPS's status and
/// error, or no answer within a minute.
pub async fn provision(cfg: &ProvisionConfig) -> Result<Provisioned, ProvisionError> {
    provision_noting(cfg, &mut |_| {}).await
}

/// [`provision`], telling `note` what the exchange does (connected, assigning, throttled: a
/// 429 or 5xx waited out inside the exchange, which `azsim fleet` counts).
///
/// # Errors
/// As [`provision`].
pub async fn provision_noting(
    cfg: &ProvisionConfig,
    note: &mut (dyn FnMut(azsim_mqtt::DpsNote) + Send),
) -> Result<Provisioned, ProvisionError> {
    match tokio::time::timeout(TIMEOUT, run(cfg, note)).await {
        Ok(r) => r,
        Err(_) => Err(err(format!(
            "dps at {}:{} did not assign registration {} within {} s",
            cfg.host,
            cfg.port,
            cfg.registration_id,
            TIMEOUT.as_secs()
        ))),
    }
}

async fn run(
    cfg: &ProvisionConfig,
    note: &mut (dyn FnMut(azsim_mqtt::DpsNote) + Send),
) -> Result<Provisioned, ProvisionError> {
    let tls = crate::tls::client_config_with_cert(cfg.ca_file.as_deref(), cfg.client_cert.as_ref())
        .map_err(|e| err(e.to_string()))?;
    let failure = FailureSlot::default();
    let mut connector = TlsConnector::new(&cfg.host, cfg.port, tls, failure.clone())
        .map_err(err)?
        .over(cfg.transport);
    let credential = match &cfg.key {
        Some(k) => DpsCredential::Key(Secret::new(k.expose().as_str())),
        // X.509: the certificate in the TLS handshake is the credential, the password empty.
        None => DpsCredential::X509,
    };
    let (mut rx, mut tx) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut registration = Provisioning::new(
        DpsIdentity {
            id_scope: &cfg.id_scope,
            registration_id: &cfg.registration_id,
            payload: cfg.payload.as_deref(),
        },
        credential,
        rx.as_mut_slice(),
        tx.as_mut_slice(),
    )
    .map_err(|e| match e {
        DpsError::Key(k) => err(format!("--key: {k}")),
        other => err(other.to_string()),
    })?
    .with_timeout(TIMEOUT.as_millis() as u64);
    let peer = format!("{}:{}", cfg.host, cfg.port);
    match registration
        .run(&mut connector, &mut SystemClock, &mut |n| note(n))
        .await
    {
        Ok(a) => Ok(Provisioned {
            assigned_hub: a.assigned_hub.as_str().to_owned(),
            device_id: a.device_id.as_str().to_owned(),
            substatus: a.substatus.as_ref().map(|s| s.as_str().to_owned()),
        }),
        Err(DpsError::Refused {
            status,
            error_code,
            message,
        }) => Err(err(diagnose(
            status,
            error_code,
            message.as_ref().map(|m| m.as_str()),
            cfg,
        ))),
        Err(DpsError::Connect(DisconnectReason::Refused(code))) => Err(err(format!(
            "dps at {peer} refused the connection ({code}): check --id-scope and the registration id"
        ))),
        Err(DpsError::Connect(reason)) => Err(err(failure
            .get()
            .unwrap_or_else(|| format!("connection to dps at {peer}: {reason}")))),
        Err(DpsError::NotMqtt) => Err(err(format!(
            "dps at {peer} sent something that is not MQTT: check --provisioning-host (DPS's \
             MQTT endpoint, port 8883, or 443 with --websockets)"
        ))),
        Err(DpsError::TimedOut) => Err(err(format!(
            "dps at {peer} did not assign registration {} within {} s",
            cfg.registration_id,
            TIMEOUT.as_secs()
        ))),
        Err(other) => Err(err(format!("dps at {peer}: {other}"))),
    }
}

/// `azsim run --dps`: where to provision (the given host; else the local hub when one runs in
/// the state dir; else the global endpoint when an id scope is given; else a local hub started
/// here), the `provisioning` and `provisioned` events, and the device to run as. A local hub
/// started here is returned for the caller to stop after the run (stopped here on failure).
///
/// # Errors
/// [`CliError::Runtime`] with the diagnosis when provisioning fails or the local hub cannot be
/// used.
pub async fn provisioned_target(
    s: &crate::cli::run::RunSettings,
    dps: &crate::cli::dps::DpsRun,
    out: &super::output::Output,
) -> Result<
    (
        crate::cli::run::DeviceTarget,
        Option<std::path::PathBuf>,
        Option<super::local_hub::LocalHub>,
    ),
    crate::error::CliError,
> {
    use crate::error::CliError;
    let ws = s.transport == Transport::WebSocket;
    let default_port = if ws {
        super::net::WEBSOCKET_PORT
    } else {
        azsim_proto::endpoint::MQTT_PORT
    };
    let use_local = match &dps.host {
        Some(_) => false,
        None => dps.id_scope.is_none() || local_hub_runs(&s.state_dir).await,
    };
    let (host, port, id_scope, ca_file, local) = if use_local {
        let local = super::local_hub::LocalHub::ensure(&s.state_dir, s.port, out)
            .await
            .map_err(CliError::runtime)?;
        let info = local.info().clone();
        let port = if ws { info.https_port } else { info.mqtt_port };
        let scope = dps
            .id_scope
            .clone()
            .unwrap_or_else(|| info.id_scope.clone());
        let ca = s.ca_file.clone().or_else(|| Some(local.ca_file()));
        (info.hostname, port, scope, ca, Some(local))
    } else {
        let (host, port) = dps
            .host
            .clone()
            .unwrap_or_else(|| (crate::cli::dps::GLOBAL_DPS_HOST.to_owned(), None));
        // Checked by the CLI: an explicit host comes with a scope, and no scope means local.
        let scope = dps.id_scope.clone().unwrap_or_default();
        (
            host,
            port.unwrap_or(default_port),
            scope,
            s.ca_file.clone(),
            None,
        )
    };
    let cfg = ProvisionConfig {
        host,
        port,
        transport: s.transport,
        id_scope,
        registration_id: dps.registration_id.clone(),
        key: dps.key.clone(),
        client_cert: if dps.key.is_none() {
            s.client_cert.clone()
        } else {
            None
        },
        ca_file: ca_file.clone(),
        payload: dps.payload.clone(),
    };
    out.emit(
        "provisioning",
        serde_json::json!({
            "registration_id": cfg.registration_id,
            "id_scope": cfg.id_scope,
            "provisioning_host": cfg.host,
            "port": cfg.port,
            "attestation": match (&dps.key, dps.from_group) {
                (None, _) => "x509",
                (Some(_), true) => "group symmetric key",
                (Some(_), false) => "symmetric key",
            },
        }),
        || {
            format!(
                "provisioning {} through DPS {}:{} (id scope {})",
                cfg.registration_id, cfg.host, cfg.port, cfg.id_scope
            )
        },
    );
    let assigned = match provision(&cfg).await {
        Ok(a) => a,
        Err(e) => {
            if let Some(l) = local {
                l.stop().await;
            }
            return Err(CliError::runtime(e));
        }
    };
    out.emit(
        "provisioned",
        serde_json::json!({
            "registration_id": cfg.registration_id,
            "assigned_hub": assigned.assigned_hub,
            "device_id": assigned.device_id,
            "substatus": assigned.substatus,
        }),
        || {
            format!(
                "provisioned: assigned to {} as device {}",
                assigned.assigned_hub, assigned.device_id
            )
        },
    );
    let (hub_host, hub_port) =
        match azsim_proto::connection_string::split_host_port(&assigned.assigned_hub) {
            Some((h, p)) if !h.is_empty() => (h.to_owned(), p),
            _ => {
                if let Some(l) = local {
                    l.stop().await;
                }
                return Err(CliError::runtime(format!(
                    "dps assigned an unusable hub name {:?}",
                    assigned.assigned_hub
                )));
            }
        };
    let port = match (s.port, &local) {
        (Some(p), _) => p,
        (None, Some(l)) if ws => l.info().https_port,
        (None, _) if ws => super::net::WEBSOCKET_PORT,
        (None, _) => hub_port.unwrap_or(azsim_proto::endpoint::MQTT_PORT),
    };
    let target = crate::cli::run::DeviceTarget {
        hub_host: hub_host.clone(),
        connect_host: hub_host,
        port,
        device_id: assigned.device_id,
        module_id: None,
        credential: match (&dps.key, &s.client_cert) {
            (Some(k), _) => super::driver::Credential::Key(k.clone()),
            (None, Some(c)) => super::driver::Credential::X509(c.clone()),
            (None, None) => {
                return Err(CliError::runtime(
                    "--dps needs a key or a client certificate",
                ));
            }
        },
    };
    Ok((target, ca_file, local))
}

/// Whether `state_dir`'s `hub.json` names a hub whose MQTT port answers.
async fn local_hub_runs(state_dir: &std::path::Path) -> bool {
    let Ok(info) = azsim_emulator::HubInfo::load(state_dir) else {
        return false;
    };
    let connect = tokio::net::TcpStream::connect((info.hostname.as_str(), info.mqtt_port));
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}
