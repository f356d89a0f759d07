//! DPS over MQTT, on the hub's MQTT listener (and its WebSocket path): a CONNECT whose username
//! is `{idScope}/registrations/{registrationId}/api-version=...` is a DPS session, not a hub
//! one. The device subscribes to `$dps/registrations/res/#`, publishes a register request and
//! polls the operation; every answer is `$dps/registrations/res/{status}/?$rid=..` with DPS's
//! JSON body (topics built and parsed by `azsim_proto::topic`).
//!
//! The CONNECT is accepted when its client id is the registration id and its password is a SAS
//! token, or it has no password and the TLS handshake brought a client certificate (X.509
//! attestation); the credential is checked against the enrollments on every request, so a
//! wrong key, a certificate no enrollment trusts or a disabled enrollment gets DPS's 401 on the
//! register topic, as from Azure. A packet the session
//! does not accept (another topic, a malformed packet) closes only this connection.
//!
//! A DPS session runs inside the hub's connect deadline (`HubLimits::connect_deadline`, 10 s by
//! default): a register and its polls take a few seconds (the hub says `retry-after=1`), and a
//! device that stays longer is disconnected, as an idle DPS connection is by Azure.

use std::net::SocketAddr;
use std::time::Duration;

use azsim_proto::topic::{self, DpsRequest};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use rustls_pki_types::CertificateDer;

use super::register::{self, Cred, RETRY_AFTER_S};
use crate::hub::Hub;
use crate::untrusted::Untrusted;

/// The id scope and registration id of a DPS username, or `None` for any other username.
pub(crate) fn dps_username(username: &str) -> Option<(&str, &str)> {
    let mut it = username.splitn(4, '/');
    let (scope, regs, id, rest) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (regs == "registrations"
        && !scope.is_empty()
        && !id.is_empty()
        && rest.starts_with("api-version="))
    .then_some((scope, id))
}

/// Whether a CONNECT opens a DPS session.
pub(crate) fn is_dps_connect(c: &Connect) -> bool {
    c.login
        .as_ref()
        .is_some_and(|l| dps_username(&l.username).is_some())
}

async fn write(stream: &mut (impl AsyncWrite + Unpin), out: &BytesMut) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// Runs a DPS session to its end: CONNACK, then requests until the device disconnects, breaks
/// a rule, goes quiet past its keep-alive, or the hub stops.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    hub: &Hub,
    mut stream: S,
    mut buf: BytesMut,
    connect: Connect,
    peer: SocketAddr,
    certs: Option<Vec<CertificateDer<'static>>>,
) {
    let Some(login) = connect.login.as_ref() else {
        return;
    };
    let Some((scope, reg_id)) = dps_username(&login.username) else {
        return;
    };
    let (scope, reg_id) = (scope.to_string(), reg_id.to_string());
    let certs = certs.filter(|c| !c.is_empty());
    let x509 = login.password.is_empty() && certs.is_some();
    let refusal = if connect.client_id != reg_id {
        Some("client id is not the registration id")
    } else if !x509 && azsim_proto::sas::Token::parse(&login.password).is_err() {
        Some("password is not a SAS token, and no client certificate for X.509 attestation")
    } else {
        None
    };
    let mut out = BytesMut::with_capacity(512);
    if let Some(reason) = refusal {
        tracing::info!(%peer, registration_id = %Untrusted(&reg_id), reason, "dps: CONNACK 5 not authorized");
        let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false))
            .write(&mut out, usize::MAX);
        let _ = write(&mut stream, &out).await;
        return;
    }
    let token = login.password.clone();
    let chain = certs.unwrap_or_default();
    let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
        .write(&mut out, usize::MAX);
    tracing::info!(%peer, registration_id = %reg_id, "dps: device connected");
    let keep = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let mut shutdown = hub.shutdown.subscribe();
    let session = Session {
        hub,
        scope: &scope,
        reg_id: &reg_id,
        cred: if x509 {
            Cred::X509(&chain)
        } else {
            Cred::Sas(Some(&token))
        },
    };
    let reason = loop {
        if let Err(e) = session.process(&mut buf, &mut out).await {
            let _ = write(&mut stream, &out).await;
            break e;
        }
        if !out.is_empty() {
            if let Err(e) = write(&mut stream, &out).await {
                break format!("write failed: {e}");
            }
            out.clear();
        }
        let read = stream.read_buf(&mut buf);
        let idle = async {
            match keep {
                Some(k) => tokio::time::sleep(k).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = read => match r {
                Ok(0) => break "connection closed by the device".into(),
                Err(e) => break format!("read failed: {e}"),
                Ok(_) => {}
            },
            () = idle => break "keep-alive timeout".into(),
            () = crate::hub::until_shutdown(&mut shutdown) => break "hub shutting down".into(),
        }
    };
    let _ = stream.shutdown().await;
    tracing::info!(%peer, registration_id = %reg_id, reason = %reason, "dps: device disconnected");
}

struct Session<'a> {
    hub: &'a Hub,
    scope: &'a str,
    reg_id: &'a str,
    cred: Cred<'a>,
}

impl Session<'_> {
    /// Handles every complete packet in `buf`, writing answers to `out`; `Err` closes.
    async fn process(&self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
        let max = self.hub.cfg.limits.pre_auth_max_bytes;
        loop {
            let p = match Packet::read(buf, max) {
                Ok(p) => p,
                Err(MqttError::InsufficientBytes(_)) => return Ok(()),
                Err(e) => return Err(format!("malformed packet: {e}")),
            };
            let w = |p: Packet, out: &mut BytesMut| {
                let _ = p.write(out, usize::MAX);
            };
            match p {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        w(Packet::PubAck(PubAck::new(p.pkid)), out);
                    } else if p.qos == QoS::ExactlyOnce {
                        return Err("QoS 2 PUBLISH".into());
                    }
                    self.on_publish(&p, out).await?;
                }
                Packet::Subscribe(s) => {
                    let codes = s
                        .filters
                        .iter()
                        .map(|f| {
                            if f.path == topic::DPS_RESPONSE_FILTER {
                                SubscribeReasonCode::Success(if f.qos == QoS::AtMostOnce {
                                    QoS::AtMostOnce
                                } else {
                                    QoS::AtLeastOnce
                                })
                            } else {
                                SubscribeReasonCode::Failure
                            }
                        })
                        .collect();
                    w(Packet::SubAck(SubAck::new(s.pkid, codes)), out);
                }
                Packet::Unsubscribe(u) => w(Packet::UnsubAck(UnsubAck::new(u.pkid)), out),
                Packet::PingReq => w(Packet::PingResp, out),
                Packet::PubAck(_) => {}
                Packet::Disconnect => return Err("disconnect".into()),
                other => {
                    return Err(format!(
                        "unexpected {} packet",
                        crate::mqtt::packet_name(&other)
                    ));
                }
            }
        }
    }

    async fn on_publish(&self, p: &Publish, out: &mut BytesMut) -> Result<(), String> {
        let req = topic::parse_dps_request(&p.topic).map_err(|e| {
            format!(
                "PUBLISH to '{}' not allowed on a DPS connection: {e}",
                Untrusted(&p.topic)
            )
        })?;
        let (rid, result, retry_after) = match req {
            DpsRequest::Register { rid } => {
                let r =
                    register::register(self.hub, self.scope, self.reg_id, self.cred, &p.payload)
                        .await;
                (rid, r.map(|v| (202, v)), Some(RETRY_AFTER_S))
            }
            DpsRequest::Query { rid, operation_id } => {
                let mut op = String::new();
                operation_id
                    .decode_to(&mut op)
                    .map_err(|_| "operationId: bad percent encoding".to_string())?;
                let r =
                    register::operation_status(self.hub, self.scope, self.reg_id, self.cred, &op)
                        .await;
                let retry = r.as_ref().ok().and_then(|v| {
                    (v.get("status").and_then(Value::as_str) == Some("assigning"))
                        .then_some(RETRY_AFTER_S)
                });
                (rid, r.map(|v| (200, v)), retry)
            }
        };
        let mut rid_text = String::new();
        rid.decode_to(&mut rid_text)
            .map_err(|_| "$rid: bad percent encoding".to_string())?;
        let (status, body, retry_after) = match result {
            Ok((s, v)) => (s, v, retry_after),
            Err(e) if e.retry_after.is_some() => {
                tracing::info!(registration_id = %self.reg_id, status = e.status, reason = %e.message, "dps: device request throttled");
                (e.status, e.body(self.hub), e.retry_after)
            }
            Err(e) => {
                tracing::info!(registration_id = %self.reg_id, status = e.status, reason = %e.message, "dps: device request refused");
                (e.status, e.body(self.hub), retry_after)
            }
        };
        let mut t = String::new();
        topic::write_dps_response(&mut t, status, &rid_text, retry_after)
            .map_err(|_| "response topic".to_string())?;
        let _ = Packet::Publish(Publish::new(t, QoS::AtMostOnce, body.to_string()))
            .write(out, usize::MAX);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dps_username_names_its_scope_and_registration() {
        assert_eq!(
            dps_username("0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31"),
            Some(("0ne00ABCDEF", "dev-1"))
        );
        assert_eq!(
            dps_username("0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31&ClientVersion=py"),
            Some(("0ne00ABCDEF", "dev-1"))
        );
        assert_eq!(
            dps_username("localhost/dev-1/?api-version=2021-04-12"),
            None
        );
        assert_eq!(dps_username("localhost/registrations/dev-1"), None);
        assert_eq!(dps_username("/registrations/dev-1/api-version=1"), None);
    }
}
