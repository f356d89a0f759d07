//! `azsim run --dps`: provision the device before it runs. The exchange is `azsim_proto::dps`
//! (sans-IO, what the firmware runs too); this file is its host driver: the same TLS (and
//! WebSocket) connector as the device loop, MQTT framed with `mqttrs` as the loop frames it,
//! the system clock. It runs its own short MQTT connection, not the device loop's `Client`,
//! which drives the hub session only.

use std::time::Duration;

use azsim_mqtt::Connector as _;
use azsim_proto::dps::{Outcome, Registration, Request};
use azsim_proto::sas::{self, DPS_POLICY, Resource};
use azsim_proto::secret::Secret;
use embedded_io_async::{Read as _, Write as _};
use mqttrs::{Connect, Packet, Pid, Protocol, QoS, QosPid, Subscribe, SubscribeTopic};

use super::net::{FailureSlot, TlsConnector, Transport};

/// How long the whole registration may take (DPS asks for polls every few seconds).
const TIMEOUT: Duration = Duration::from_secs(60);
const TOKEN_TTL_S: u64 = 3600;
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

fn now_ms() -> u64 {
    azsim_emulator::clock::unix_now_ms()
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
    match tokio::time::timeout(TIMEOUT, run(cfg)).await {
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

async fn run(cfg: &ProvisionConfig) -> Result<Provisioned, ProvisionError> {
    let tls = crate::tls::client_config_with_cert(cfg.ca_file.as_deref(), cfg.client_cert.as_ref())
        .map_err(|e| err(e.to_string()))?;
    let failure = FailureSlot::default();
    let mut connector = TlsConnector::new(&cfg.host, cfg.port, tls, failure.clone())
        .map_err(err)?
        .over(cfg.transport);
    let mut conn = connector.connect().await.map_err(|_| {
        err(failure
            .get()
            .unwrap_or_else(|| format!("cannot connect to {}:{}", cfg.host, cfg.port)))
    })?;
    let io_err = |e: std::io::Error| {
        err(failure
            .get()
            .unwrap_or_else(|| format!("connection to {}:{} lost: {e}", cfg.host, cfg.port)))
    };

    let mut username = String::new();
    let _ = azsim_proto::username::write_dps_username(
        &mut username,
        &cfg.id_scope,
        &cfg.registration_id,
    );
    let mut token = String::new();
    if let Some(key) = &cfg.key {
        sas::sign(
            &mut token,
            &Resource::DpsRegistration {
                id_scope: &cfg.id_scope,
                registration_id: &cfg.registration_id,
            },
            key.expose(),
            now_ms() / 1000 + TOKEN_TTL_S,
            Some(DPS_POLICY),
        )
        .map_err(|e| err(format!("--key: {e}")))?;
    }
    let token = Secret::new(token);
    let mut tx = vec![0u8; BUF];
    let connect = Packet::Connect(Connect {
        protocol: Protocol::MQTT311,
        keep_alive: 60,
        client_id: &cfg.registration_id,
        clean_session: true,
        last_will: None,
        username: Some(&username),
        // X.509: the certificate in the TLS handshake is the credential, the password empty.
        password: (!token.expose().is_empty()).then(|| token.expose().as_bytes()),
    });
    let n = mqttrs::encode_slice(&connect, &mut tx).map_err(|e| err(format!("connect: {e:?}")))?;
    conn.write_all(&tx[..n]).await.map_err(io_err)?;
    conn.flush().await.map_err(io_err)?;

    let mut reg = Registration::new(&cfg.registration_id);
    let mut rx = vec![0u8; BUF];
    let mut filled = 0usize;
    let mut next_pid: u16 = 1;
    loop {
        // Send what is due.
        let mut topic = String::new();
        let mut body = String::new();
        if let Some(req) = reg
            .next_request(now_ms(), &mut topic, &mut body, cfg.payload.as_deref())
            .map_err(|_| err("dps request"))?
        {
            let pid = Pid::try_from(next_pid).map_err(|_| err("packet id"))?;
            next_pid = next_pid.checked_add(1).unwrap_or(1);
            let packet = match req {
                Request::Subscribe => Packet::Subscribe(Subscribe {
                    pid,
                    topics: core::iter::once(SubscribeTopic {
                        topic_path: topic.as_str().into(),
                        qos: QoS::AtLeastOnce,
                    })
                    .collect(),
                }),
                Request::Register | Request::Poll => Packet::Publish(mqttrs::Publish {
                    dup: false,
                    qospid: QosPid::AtLeastOnce(pid),
                    retain: false,
                    topic_name: &topic,
                    payload: body.as_bytes(),
                }),
            };
            let n = mqttrs::encode_slice(&packet, &mut tx)
                .map_err(|e| err(format!("encode: {e:?}")))?;
            conn.write_all(&tx[..n]).await.map_err(io_err)?;
            conn.flush().await.map_err(io_err)?;
            continue;
        }
        // Handle every complete packet received; what they make due is sent before reading on.
        let mut handled = false;
        while let Some(len) =
            azsim_mqtt::frame_len(&rx[..filled]).map_err(|e| err(e.to_string()))?
        {
            let mut ack = None;
            let mut done = None;
            match mqttrs::decode_slice(&rx[..len]) {
                Ok(Some(Packet::Connack(c))) => {
                    if c.code != mqttrs::ConnectReturnCode::Accepted {
                        return Err(err(format!(
                            "dps at {}:{} refused the connection ({:?}): check --id-scope and the registration id",
                            cfg.host, cfg.port, c.code
                        )));
                    }
                    reg.handle_connected();
                }
                Ok(Some(Packet::Suback(_))) => reg.handle_subscribed(),
                Ok(Some(Packet::Publish(p))) => {
                    if let QosPid::AtLeastOnce(pid) = p.qospid {
                        ack = Some(pid);
                    }
                    match reg.handle_response(now_ms(), p.topic_name, p.payload) {
                        Ok(Outcome::Assigned(a)) => {
                            done = Some(Ok(Provisioned {
                                assigned_hub: a.assigned_hub.to_owned(),
                                device_id: a.device_id.to_owned(),
                                substatus: a.substatus.map(str::to_owned),
                            }));
                        }
                        Ok(Outcome::Refused(r)) => {
                            done = Some(Err(err(diagnose(r.status, r.error_code, r.message, cfg))));
                        }
                        Ok(Outcome::Assigning { .. } | Outcome::Ignored) => {}
                        Err(e) => {
                            done = Some(Err(err(format!("dps at {}:{}: {e}", cfg.host, cfg.port))))
                        }
                    }
                }
                Ok(Some(Packet::Disconnect) | None) | Err(_) => {
                    return Err(err(format!(
                        "dps at {}:{} sent something that is not MQTT",
                        cfg.host, cfg.port
                    )));
                }
                Ok(Some(_)) => {}
            }
            rx.copy_within(len..filled, 0);
            filled -= len;
            handled = true;
            if let Some(pid) = ack {
                let n = mqttrs::encode_slice(&Packet::Puback(pid), &mut tx)
                    .map_err(|e| err(format!("{e:?}")))?;
                conn.write_all(&tx[..n]).await.map_err(io_err)?;
            }
            if let Some(result) = done {
                if let Ok(n) = mqttrs::encode_slice(&Packet::Disconnect, &mut tx) {
                    let _ = conn.write_all(&tx[..n]).await;
                    let _ = conn.flush().await;
                }
                return result;
            }
        }
        if handled {
            continue;
        }
        if reg.is_finished() {
            return Err(err("dps exchange ended without an answer"));
        }
        if filled == rx.len() {
            return Err(err("dps answer larger than the receive buffer"));
        }
        // Read, or wait for the next poll.
        let wait = reg.poll_timeout().map_or(Duration::from_secs(3600), |t| {
            Duration::from_millis(t.saturating_sub(now_ms()))
        });
        tokio::select! {
            r = conn.read(&mut rx[filled..]) => match r {
                Ok(0) => {
                    return Err(err(failure.get().unwrap_or_else(|| {
                        format!("dps at {}:{} closed the connection", cfg.host, cfg.port)
                    })));
                }
                Ok(n) => filled += n,
                Err(e) => return Err(io_err(e)),
            },
            () = tokio::time::sleep(wait) => {}
        }
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
