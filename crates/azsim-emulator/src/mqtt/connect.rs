//! The start of a connection: the first packet must be an MQTT 3.1.1 CONNECT (MQTT 5 and other
//! levels get CONNACK 1), whose client id, username and SAS token (or, for an X.509 identity,
//! TLS client certificate: see `crate::x509`) must name a registered, enabled identity of this
//! hub (else CONNACK 5, logged with the reason, never the token).

use std::net::SocketAddr;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::{Error as MqttError, Protocol};
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncReadExt as _;

use super::{Io, max_packet, packet_name, write_packet};
use crate::hub::Hub;

/// Read the first packet; answer CONNACK 1 to anything that is not MQTT 3.1.1. A first packet
/// longer than `HubLimits::pre_auth_max_bytes` closes the connection as soon as its fixed header
/// says so; the caller bounds the whole exchange by the connect deadline.
pub(super) async fn read_connect(
    hub: &Hub,
    stream: &mut impl Io,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Option<Connect> {
    let max = hub.cfg.limits.pre_auth_max_bytes.min(max_packet(hub));
    // Read until a whole packet is in (the check looks at the fixed header only).
    loop {
        match rumqttc::mqttbytes::check(buf.iter(), max) {
            Err(MqttError::InsufficientBytes(_)) => match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            },
            Err(MqttError::PayloadSizeLimitExceeded(n)) => {
                tracing::info!(%peer, bytes = n, limit = max, "closed: first packet larger than an unauthenticated client may send");
                return None;
            }
            _ => break,
        }
    }
    // Kept for the MQTT 5 check below (Packet::read consumes the packet even when it fails).
    let whole = buf.clone();
    match Packet::read(buf, max) {
        Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => Some(c),
        Ok(Packet::Connect(_))
        | Err(MqttError::InvalidProtocolLevel(_) | MqttError::InvalidProtocol) => {
            tracing::info!(%peer, "refused: unacceptable protocol (only MQTT 3.1.1 is supported)");
            refuse_protocol(stream).await;
            None
        }
        Ok(other) => {
            tracing::info!(%peer, packet = ?packet_name(&other), "closed: first packet is not CONNECT");
            None
        }
        Err(e) => {
            // An MQTT 5 CONNECT does not parse as v4; recognise it with the v5 codec so the
            // client gets the documented CONNACK 1 rather than a silent close.
            let mut copy = whole;
            if let Ok(rumqttc::v5::mqttbytes::v5::Packet::Connect(..)) =
                rumqttc::v5::mqttbytes::v5::Packet::read(&mut copy, Some(max as u32))
            {
                tracing::info!(%peer, "refused: MQTT 5 CONNECT (only MQTT 3.1.1 is supported)");
                refuse_protocol(stream).await;
            } else {
                tracing::info!(%peer, error = %e, "closed: malformed first packet");
            }
            None
        }
    }
}

async fn refuse_protocol(stream: &mut impl Io) {
    let _ = write_packet(
        stream,
        Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::RefusedProtocolVersion,
            false,
        )),
    )
    .await;
}

/// Who a CONNECT proved to be, and until when (`se`, Unix seconds).
pub(super) struct Authed {
    pub device: String,
    pub module: Option<String>,
    pub generation_id: String,
    /// How it signed in (stamped on its messages).
    pub auth: crate::telemetry::AuthMethod,
    pub se: u64,
}

/// CONNECT checks. Errors are the precise reason, logged by the caller (never the token).
///
/// `certs` is the chain the client sent in the TLS handshake (leaf first), if any. An identity
/// registered `selfSigned` or `certificateAuthority` is authenticated by it alone (the password
/// is empty, as the SDKs send it; a SAS token is refused), a SAS identity by its token alone.
pub(super) async fn authenticate(
    hub: &Hub,
    c: &Connect,
    certs: Option<&[CertificateDer<'static>]>,
) -> Result<Authed, String> {
    let (device, module) = azsim_proto::username::parse_client_id(&c.client_id)
        .map(|(d, m)| (d.to_string(), m.map(str::to_string)))
        .ok_or("bad client id")?;
    let login = c.login.as_ref().ok_or("no username/password")?;
    crate::auth::check_username(&login.username, &hub.cfg.hostname, &c.client_id)?;
    let ident = crate::hub::load_identity(hub, &device, module.as_deref())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "unknown {}",
                if module.is_some() { "module" } else { "device" }
            )
        })?;
    if !ident.enabled {
        return Err("device disabled".into());
    }
    if ident.auth.is_x509() {
        if !login.password.is_empty() {
            return Err(format!(
                "identity uses x509 authentication ({}): a sas token is not accepted",
                ident.auth.type_name()
            ));
        }
        let cas = if matches!(ident.auth, crate::x509::Auth::CertificateAuthority) {
            hub.store
                .call(|c| crate::x509::ca_store::anchors(c))
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        crate::x509::authenticate(
            certs,
            &c.client_id,
            &ident.auth,
            &cas,
            hub.clock().unix_secs(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(reason) = crate::fault::connect_refused(hub, &device) {
            return Err(reason.into());
        }
        return Ok(Authed {
            device,
            module,
            generation_id: ident.generation_id,
            auth: crate::telemetry::AuthMethod::X509,
            // A certificate is not renewed in the session: no token expiry to close it at.
            se: u64::MAX / 1000,
        });
    }
    if login.password.is_empty() {
        return Err(if certs.is_some_and(|c| !c.is_empty()) {
            "no password, and the identity uses sas authentication (its client certificate is not accepted)".into()
        } else {
            "no password (sas token)".into()
        });
    }
    let token = azsim_proto::sas::Token::parse(&login.password)
        .map_err(|e| format!("malformed token: {e}"))?;
    let resources = crate::auth::identity_resources(
        &hub.cfg.hostname,
        hub.mqtt_port,
        &device,
        module.as_deref(),
    );
    crate::auth::verify_device_or_policy_token(
        &hub.policies,
        &token,
        &[ident.primary_key.expose(), ident.secondary_key.expose()],
        &resources,
        hub.clock().unix_secs(),
    )
    .map_err(|e| e.to_string())?;
    if let Some(reason) = crate::fault::connect_refused(hub, &device) {
        return Err(reason.into());
    }
    Ok(Authed {
        device,
        module,
        generation_id: ident.generation_id,
        auth: if token.policy().is_some() {
            crate::telemetry::AuthMethod::Policy
        } else {
            crate::telemetry::AuthMethod::IdentityKey
        },
        se: token.expiry(),
    })
}
