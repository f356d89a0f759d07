//! Devices over AMQP, as IoT Hub serves them on 5671 (the C# SDK's default transport, the Node
//! SDK's `azure-iot-device-amqp`, the Java SDK's `AMQPS`). The addresses, link properties and
//! annotations are the device SDKs' (Node `device/transport/amqp`, C# `AmqpIotConstants`):
//!
//! | address (`/devices/{id}[/modules/{m}]` +) | device's link | what flows |
//! |---|---|---|
//! | `/messages/events` | sender | telemetry (`telemetry.rs`) |
//! | `/messages/devicebound` | receiver | C2D messages; the disposition is the ack (`c2d.rs`) |
//! | `/methods/devicebound` | both | method requests and responses (`methods.rs`) |
//! | `/twin` | both | twin GET / PATCH / PUT / DELETE and desired notifications (`twin.rs`) |
//!
//! A device authenticates with CBS `put-token` of its SAS token (`sr` = `{host}/devices/{id}`,
//! see `auth.rs`), or a token of a policy with `DeviceConnect`; its links attach only while an
//! unexpired token covers its id (case-sensitive, as device ids are). A new `put-token` for the
//! same `sr` renews it; when the last one runs out the device's links are detached with
//! `amqp:unauthorized-access`. An X.509 identity is authenticated instead by the TLS client
//! certificate of an AMQPS connection (see [`serve`]; the Node SDK sends no put-token then).
//!
//! The first link of an identity on a connection registers it with the hub ([`DeviceConn`]):
//! one connection entry per identity whichever transport, so a device that connects again
//! (over MQTT or another AMQP connection) takes over and the older connection's links are
//! detached with `amqp:link:stolen` (the AMQP condition for a link another client took over;
//! inferred: IoT Hub's exact condition for this case is not documented). The entry goes when
//! the identity's last link detaches or the connection ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, LinkError, Role};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use super::ConnCtx;
use crate::hub::{ConnCmd, ConnEntry, Hub, Subs, client_id};
use crate::telemetry::Origin;
use crate::untrusted::Untrusted;

pub(crate) mod auth;
mod c2d;
pub(crate) mod faults;
mod methods;
mod telemetry;
mod twin;

/// What a device link carries, by its address and the device's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The device sends telemetry (`messages/events`).
    Telemetry,
    /// The hub sends C2D messages (`messages/devicebound`).
    C2d,
    /// The hub sends method requests (`methods/devicebound`, the device's receiver).
    MethodRequests,
    /// The device sends method responses (`methods/devicebound`, the device's sender).
    MethodResponses,
    /// The device sends twin requests (`twin`, its sender).
    TwinRequests,
    /// The hub sends twin responses and desired notifications (`twin`, the device's receiver).
    TwinResponses,
}

/// A device link: whose, and what it carries.
#[derive(Debug)]
pub(crate) struct Link {
    pub device: String,
    pub module: Option<String>,
    pub kind: Kind,
}

impl Link {
    /// The path a token must name for this link: `devices/{id}[/modules/{m}]`, ids decoded.
    pub fn identity_path(&self) -> String {
        identity_path(&self.device, self.module.as_deref())
    }
}

/// `devices/{id}[/modules/{m}]` (decoded ids), the path a device token's `sr` names.
pub(crate) fn identity_path(device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("devices/{device}/modules/{m}"),
        None => format!("devices/{device}"),
    }
}

fn decode(s: &str) -> Option<String> {
    let mut out = String::new();
    azsim_proto::encoding::decode_to(&mut out, s).ok()?;
    (!out.is_empty()).then_some(out)
}

/// The device link a path (no leading `/`) names for a link whose client has `role`, if any.
/// Ids may be percent-encoded; the fixed segments are matched ignoring case.
pub(crate) fn parse(role: &Role, path: &str) -> Option<Link> {
    let segs: Vec<&str> = path.split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let (device, module, rest) = match segs.as_slice() {
        [d, id, m, mid, rest @ ..] if eq(d, "devices") && eq(m, "modules") => {
            (decode(id)?, Some(decode(mid)?), rest)
        }
        [d, id, rest @ ..] if eq(d, "devices") => (decode(id)?, None, rest),
        _ => return None,
    };
    let sends = *role == Role::Sender;
    let kind = match rest {
        [a, b] if eq(a, "messages") && eq(b, "events") && sends => Kind::Telemetry,
        // A module's C2D is its inputs, not served over AMQP here.
        [a, b] if eq(a, "messages") && eq(b, "devicebound") && !sends && module.is_none() => {
            Kind::C2d
        }
        [a, b] if eq(a, "methods") && eq(b, "devicebound") => {
            if sends {
                Kind::MethodResponses
            } else {
                Kind::MethodRequests
            }
        }
        [a] if eq(a, "twin") => {
            if sends {
                Kind::TwinRequests
            } else {
                Kind::TwinResponses
            }
        }
        _ => return None,
    };
    Some(Link {
        device,
        module,
        kind,
    })
}

/// Whether the connection holds a valid token for the link's identity (see the module doc),
/// or a TLS client certificate, which [`serve`] checks against the identity.
pub(crate) fn authorize(ctx: &ConnCtx, link: &Link) -> Result<(), AmqpErr> {
    if ctx
        .claims
        .identity_expiry(&link.identity_path(), ctx.now_s())
        .is_some()
        || ctx.claims.client_certs().is_some()
    {
        return Ok(());
    }
    Err(AmqpErr::new(
        AmqpError::UnauthorizedAccess,
        format!(
            "no valid token for '{}': put-token on $cbs first",
            Untrusted(&link.identity_path())
        ),
        None,
    ))
}

/// Why the hub ended an identity's links: the error they are detached with.
pub(crate) type Ended = Option<AmqpErr>;

/// One identity on one AMQP connection: its entry in the hub's connection table, shared by
/// its links; the entry is removed when the last link lets go of it.
pub(crate) struct DeviceConn {
    pub hub: Arc<Hub>,
    pub cid: String,
    pub device: String,
    pub module: Option<String>,
    conn_id: u64,
    pub subs: Arc<Subs>,
    pub origin: Arc<Origin>,
    pub activity: Arc<crate::activity::Cell>,
    /// Set when the hub ends the identity's links (kicked, token expired, hub stopping).
    ended: watch::Sender<Option<Ended>>,
    /// New C2D messages may be waiting.
    pub c2d_wake: Notify,
    /// Where method requests go (the method request link, while attached).
    pub methods: Mutex<Option<mpsc::UnboundedSender<methods::Request>>>,
    /// Twin responses and desired notifications for the twin receiver link.
    pub twin: twin::Outbox,
    /// The connection's faults (see `faults.rs`).
    kills: faults::Kills,
    /// The faults channel as subscribed before the attaching link's attach was answered
    /// (`serve` puts it here, the link's [`DeviceConn::ended`] takes it at once).
    early_kills: Mutex<Option<tokio::sync::broadcast::Receiver<faults::Kill>>>,
    /// The task running [`dispatch`] for it.
    dispatcher: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for DeviceConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConn")
            .field("cid", &self.cid)
            .field("conn_id", &self.conn_id)
            .finish_non_exhaustive()
    }
}

impl DeviceConn {
    /// The end of the identity's `kind` link: the identity's (`Some(error)` once the hub
    /// ended its links) or a fault aimed at the link.
    pub fn ended(&self, kind: Kind) -> faults::LinkEnd {
        faults::LinkEnd {
            ended: self.ended.subscribe(),
            kills: self
                .early_kills
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| self.kills.subscribe()),
            cid: self.cid.clone(),
            kind,
        }
    }

    fn end(&self, why: Ended) {
        self.ended.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(why);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for DeviceConn {
    fn drop(&mut self) {
        if let Some(d) = self.dispatcher.get() {
            d.abort();
        }
        if self.hub.unregister(&self.cid, self.conn_id) {
            self.activity.disconnected(self.hub.now_us());
            tracing::info!(client_id = %self.cid, "device disconnected (amqp)");
            self.hub.emit(
                &self.device,
                json!({"type":"disconnected","deviceId":self.device,"moduleId":self.module,"reason":"amqp links detached"}),
            );
        }
    }
}

/// The identities with links on one connection.
#[derive(Debug, Default)]
pub(crate) struct Devices(Mutex<HashMap<String, Weak<DeviceConn>>>);

impl Devices {
    /// The identity's entry on this connection, registered with the hub by its first link.
    fn join(
        &self,
        ctx: &Arc<ConnCtx>,
        link: &Link,
        generation_id: String,
        auth: crate::telemetry::AuthMethod,
    ) -> Arc<DeviceConn> {
        let cid = client_id(&link.device, link.module.as_deref());
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(&cid).and_then(Weak::upgrade)
            && d.ended.borrow().is_none()
        {
            return d;
        }
        let hub = ctx.hub.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Arc::new(DeviceConn {
            conn_id: hub.new_conn_id(),
            cid: cid.clone(),
            device: link.device.clone(),
            module: link.module.clone(),
            subs: Arc::new(Subs::default()),
            origin: Arc::new(Origin {
                device_id: link.device.clone(),
                module_id: link.module.clone(),
                generation_id,
                auth,
            }),
            activity: hub.store.activity().cell(&cid),
            ended: watch::channel(None).0,
            c2d_wake: Notify::new(),
            methods: Mutex::new(None),
            twin: twin::Outbox::default(),
            kills: ctx.kills.clone(),
            early_kills: Mutex::new(None),
            dispatcher: std::sync::OnceLock::new(),
            hub: hub.clone(),
        });
        let task = tokio::spawn(dispatch(ctx.clone(), Arc::downgrade(&d), rx));
        let _ = d.dispatcher.set(task.abort_handle());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(cid.clone(), Arc::downgrade(&d));
        drop(map);
        hub.register(
            &cid,
            ConnEntry {
                conn_id: d.conn_id,
                tx,
                subs: d.subs.clone(),
            },
        );
        d.activity.connected(hub.now_us());
        tracing::info!(peer = %ctx.peer, client_id = %cid, "device connected (amqp)");
        hub.emit(
            &link.device,
            json!({"type":"connected","deviceId":link.device,"moduleId":link.module,"reason":null}),
        );
        d
    }
}

/// Turns the hub's commands for the identity into work for its links, and ends them when the
/// connection's token for it runs out.
async fn dispatch(
    ctx: Arc<ConnCtx>,
    dev: Weak<DeviceConn>,
    mut rx: mpsc::UnboundedReceiver<ConnCmd>,
) {
    let Some(path) = dev
        .upgrade()
        .map(|d| identity_path(&d.device, d.module.as_deref()))
    else {
        return;
    };
    let clock = ctx.hub.clock().clone();
    loop {
        let renewed = ctx.claims.added.notified();
        let expiry = ctx.claims.identity_expiry(&path, ctx.now_s());
        let Some(expiry) = expiry else {
            if let Some(d) = dev.upgrade() {
                tracing::info!(client_id = %d.cid, "amqp: the device's token expired: detaching its links");
                d.end(Some(AmqpErr::new(
                    AmqpError::UnauthorizedAccess,
                    "401003 IoTHubUnauthorized: sas token expired; put-token on $cbs again"
                        .to_string(),
                    None,
                )));
            }
            return;
        };
        tokio::select! {
            cmd = rx.recv() => {
                let Some(d) = dev.upgrade() else { return };
                match cmd {
                    Some(cmd) => command(&ctx, &d, cmd),
                    None => {
                        d.end(Some(detach_forced("the hub dropped the connection")));
                        return;
                    }
                }
            }
            () = renewed => {}
            () = clock.sleep_until_ms(expiry.saturating_mul(1000)) => {}
        }
    }
}

fn detach_forced(text: &str) -> AmqpErr {
    AmqpErr::new(LinkError::DetachForced, text.to_string(), None)
}

fn command(ctx: &ConnCtx, d: &DeviceConn, cmd: ConnCmd) {
    match cmd {
        ConnCmd::Publish(p) => match azsim_proto::topic::parse_hub_publish(&p.topic) {
            Ok(azsim_proto::topic::HubTopic::MethodRequest(r)) => {
                let (mut name, mut rid) = (String::new(), String::new());
                let _ = r.rid.decode_to(&mut rid);
                let _ = std::fmt::Write::write_fmt(&mut name, format_args!("{}", r.name));
                let tx = d.methods.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(tx) = tx {
                    let _ = tx.send(methods::Request {
                        name,
                        rid,
                        body: p.payload.to_vec(),
                    });
                }
            }
            Ok(azsim_proto::topic::HubTopic::DesiredPatch { .. }) => {
                twin::desired(d, p.payload.to_vec());
            }
            _ => {
                tracing::debug!(client_id = %d.cid, topic = %Untrusted(&p.topic), "amqp: hub publish with no AMQP form dropped");
            }
        },
        ConnCmd::C2dWake => d.c2d_wake.notify_one(),
        ConnCmd::Kick(reason) if reason == crate::fault::KILL_TCP => {
            // `drop` / KillTcp: the connection is dropped, as an MQTT one is.
            tracing::info!(client_id = %d.cid, reason, "amqp: dropping the device's connection");
            ctx.claims.kill.kill();
        }
        ConnCmd::Close(reason) if reason == crate::fault::SHUT_DOWN_MQTT => {
            // `shutdown`: the connection is closed gracefully, as an MQTT one is.
            let target = faults::Target::Shutdown;
            faults::fire(
                &ctx.kills,
                &ctx.claims.kill,
                faults::Kill {
                    cid: d.cid.clone(),
                    target,
                    error: faults::error(target, "shutdown"),
                },
            );
        }
        ConnCmd::Kick(reason) => {
            tracing::info!(client_id = %d.cid, reason, "amqp: detaching the device's links");
            let error = if reason.starts_with("400027") {
                AmqpErr::new(LinkError::Stolen, reason.to_string(), None)
            } else if reason.starts_with("401003") {
                AmqpErr::new(AmqpError::UnauthorizedAccess, reason.to_string(), None)
            } else {
                detach_forced(reason)
            };
            d.end(Some(error));
        }
        ConnCmd::Close(reason) => {
            tracing::info!(client_id = %d.cid, reason, "amqp: closing the device's links");
            d.end(None);
        }
    }
}

/// Serve an authorized device link: the identity must still be registered and enabled, then
/// the link joins its [`DeviceConn`] and runs until it or the identity ends.
pub(crate) async fn serve(
    ctx: Arc<ConnCtx>,
    link: Link,
    endpoint: LinkEndpoint,
    kills: tokio::sync::broadcast::Receiver<faults::Kill>,
) {
    let ident = crate::hub::load_identity(&ctx.hub, &link.device, link.module.as_deref()).await;
    let ident = match ident {
        Ok(Some(i)) if i.enabled => i,
        Ok(Some(_)) => {
            return super::refuse(
                endpoint,
                AmqpErr::new(
                    AmqpError::UnauthorizedAccess,
                    "device disabled".to_string(),
                    None,
                ),
            )
            .await;
        }
        Ok(None) => {
            return super::refuse(
                endpoint,
                AmqpErr::new(
                    AmqpError::NotFound,
                    format!("{} not registered", Untrusted(&link.identity_path())),
                    None,
                ),
            )
            .await;
        }
        Err(e) => {
            return super::refuse(
                endpoint,
                AmqpErr::new(AmqpError::InternalError, e.to_string(), None),
            )
            .await;
        }
    };
    if ctx
        .claims
        .identity_expiry(&link.identity_path(), ctx.now_s())
        .is_none()
        && let Err(e) = x509(&ctx, &link, &ident).await
    {
        tracing::info!(peer = %ctx.peer, reason = %e, "amqp: device link refused");
        return super::refuse(
            endpoint,
            AmqpErr::new(AmqpError::UnauthorizedAccess, e, None),
        )
        .await;
    }
    let auth = ctx
        .claims
        .identity_auth(&link.identity_path(), ctx.now_s())
        .unwrap_or_default();
    let dev = ctx.devices.join(&ctx, &link, ident.generation_id, auth);
    *dev.early_kills.lock().unwrap_or_else(|p| p.into_inner()) = Some(kills);
    match (link.kind, endpoint) {
        (Kind::Telemetry, LinkEndpoint::Receiver(r)) => telemetry::serve(ctx, dev, r).await,
        (Kind::C2d, LinkEndpoint::Sender(s)) => c2d::serve(ctx, dev, s).await,
        (Kind::MethodRequests, LinkEndpoint::Sender(s)) => methods::requests(dev, s).await,
        (Kind::MethodResponses, LinkEndpoint::Receiver(r)) => methods::responses(dev, r).await,
        (Kind::TwinRequests, LinkEndpoint::Receiver(r)) => twin::requests(dev, r).await,
        (Kind::TwinResponses, LinkEndpoint::Sender(s)) => twin::responses(dev, s).await,
        (_, endpoint) => {
            super::refuse(
                endpoint,
                super::not_found("link role does not fit its node".into()),
            )
            .await;
        }
    }
}

/// Authenticate the link's identity by the connection's TLS client certificate (an identity
/// registered `selfSigned` or `certificateAuthority`, MQTT's rules in `crate::x509`); on success
/// the connection holds a claim for it that does not expire (a certificate is not renewed in the
/// session, as over MQTT).
async fn x509(ctx: &ConnCtx, link: &Link, ident: &crate::store::Identity) -> Result<(), String> {
    let Some(certs) = ctx.claims.client_certs() else {
        return Err("no valid token: put-token on $cbs first".into());
    };
    if !ident.auth.is_x509() {
        return Err(
            "the identity uses sas authentication (its client certificate is not accepted)".into(),
        );
    }
    let cas = if matches!(ident.auth, crate::x509::Auth::CertificateAuthority) {
        ctx.hub
            .store
            .call(|c| crate::x509::ca_store::anchors(c))
            .await
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let cid = client_id(&link.device, link.module.as_deref());
    crate::x509::authenticate(
        Some(certs),
        &cid,
        &ident.auth,
        &cas,
        ctx.hub.clock().unix_secs(),
    )
    .map_err(|e| e.to_string())?;
    ctx.claims.add(super::cbs::Claim {
        path: link.identity_path(),
        expires: u64::MAX / 1000,
        rights: auth::DEVICE_RIGHTS,
        auth: crate::telemetry::AuthMethod::X509,
    });
    Ok(())
}

/// Completes with the error the identity's links end with, once the hub ends them (also
/// when the hub stops: then without an error).
pub(crate) async fn until_ended(
    end: &mut faults::LinkEnd,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let faults::LinkEnd { ended, .. } = end;
    let mut ended = ended.clone();
    tokio::select! {
        r = ended.wait_for(Option::is_some) => match r {
            Ok(e) => e.clone().flatten(),
            Err(_) => None,
        },
        e = end.killed() => Some(e),
        () = crate::hub::until_shutdown(shutdown) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_addresses_name_the_identity_and_what_the_link_carries() {
        let l = parse(&Role::Sender, "devices/d1/messages/events").unwrap();
        assert_eq!(
            (l.device.as_str(), l.module, l.kind),
            ("d1", None, Kind::Telemetry)
        );
        let l = parse(&Role::Receiver, "devices/D%231/messages/deviceBound").unwrap();
        assert_eq!((l.device.as_str(), l.kind), ("D#1", Kind::C2d));
        let l = parse(&Role::Receiver, "devices/d1/modules/m1/methods/devicebound").unwrap();
        assert_eq!(l.module.as_deref(), Some("m1"));
        assert_eq!(l.kind, Kind::MethodRequests);
        assert_eq!(l.identity_path(), "devices/d1/modules/m1");
        assert_eq!(
            parse(&Role::Sender, "devices/d1/twin").unwrap().kind,
            Kind::TwinRequests
        );
        for (role, bad) in [
            (Role::Receiver, "devices/d1/messages/events"),
            (Role::Sender, "devices/d1/messages/devicebound"),
            (Role::Receiver, "devices/d1/modules/m1/messages/devicebound"),
            (Role::Sender, "devices//messages/events"),
            (Role::Sender, "devices/d1/twin/x"),
            (Role::Sender, "messages/events"),
        ] {
            assert!(parse(&role, bad).is_none(), "{bad}");
        }
    }
}
