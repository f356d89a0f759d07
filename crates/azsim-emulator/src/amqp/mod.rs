//! The hub's AMQP 1.0 endpoint (fe2o3-amqp's acceptor does the framing): AMQPS with the hub's
//! certificate on `--amqp-port` (5671), and a plain-AMQP listener on loopback for the Event
//! Hubs SDKs' development mode (`UseDevelopmentEmulator=true`).
//!
//! A connection authenticates as the services let it: SASL `MSSBCBS` or `ANONYMOUS`, or no SASL
//! layer at all (the Node SDKs; see `header.rs`), and then CBS `put-token` on `$cbs`; or SASL
//! `PLAIN` with `{policy}@sas.root.{hub}` and a SAS token as the password (see `sasl.rs`,
//! `cbs.rs`). Until it holds a valid token it counts against the
//! listener's pre-auth cap, and it must get one within `HubLimits::connect_deadline` of its
//! TCP accept or it is closed.
//!
//! # Links: how a new kind plugs in
//!
//! Every attach goes through [`route`]: the link's address (the client's source for a link
//! the hub sends on, its target for a link the hub receives on) becomes a [`Route`], or an
//! AMQP error with which the link is refused (attached, then detached with
//! `amqp:not-found` / `amqp:unauthorized-access`). [`Route::claim`] names the path a CBS claim
//! must cover; the check is done here, so a handler only runs for an authorized link. Then
//! [`run_link`] hands the accepted link (`LinkEndpoint::Sender` when the client receives,
//! `LinkEndpoint::Receiver` when it sends) and the connection's [`ConnCtx`] (hub, claims,
//! peer) to the route's handler in its own task. A new link kind is:
//!
//! 1. a `Route` variant and a match arm in [`route`] (address and role -> variant);
//! 2. its arm in [`Route::claim`] (the path a token must cover, `""` = a hub-level token,
//!    and the policy right it needs, e.g. `Permission::ServiceConnect`);
//! 3. its arm in [`run_link`] calling `your_module::serve(ctx, link)`, in a file of its own
//!    under `amqp/`, declared below.

use std::net::SocketAddr;
use std::sync::Arc;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, Role};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use crate::auth::Permission;
use crate::hub::{Hub, LiveGuard, until_shutdown};
use crate::listen::{Admitted, Gate};

mod address;
mod c2d;
mod cbs;
mod device;
mod eventhub;
mod feedback;
mod file_notifications;
mod full_frames;
mod header;
mod listener;
mod node;
mod sasl;
pub(crate) mod websocket;

pub(crate) use listener::Listeners;

use address::Address;
use cbs::Claims;
pub(crate) use eventhub::EventHub;
use full_frames::FullFrames;
use node::Replies;

/// The largest frame the hub takes or sends (the services' value).
const MAX_FRAME_SIZE: u32 = 65_536;

/// Links a session may have attached at once (its `handle-max` + 1).
const MAX_LINKS_PER_SESSION: u32 = 4_095;

/// One AMQP connection: what its links' handlers get.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub hub: Arc<Hub>,
    /// What this connection's tokens authorize (SASL PLAIN or CBS).
    pub claims: Arc<Claims>,
    pub peer: SocketAddr,
    /// The Event Hubs-compatible endpoint.
    pub eventhub: Arc<EventHub>,
    replies: Replies,
    /// The device identities with links on this connection (`device/`).
    devices: device::Devices,
    /// Faults injected into this connection (`device/faults.rs`).
    kills: device::faults::Kills,
}

impl ConnCtx {
    /// Unix seconds on the hub's clock (token expiry).
    pub fn now_s(&self) -> u64 {
        self.hub.clock().unix_ms() / 1000
    }
}

/// What an attached link is, by its address and role.
#[derive(Debug)]
pub(crate) enum Route {
    /// The client sends CBS requests (`put-token`) to `$cbs`.
    CbsRequests,
    /// The client receives the replies of a request/response node (`$cbs`, `$management`)
    /// at this address (its `reply-to`).
    Replies(String),
    /// The client sends `$management` requests (READ of the Event Hub and its partitions;
    /// each request carries its own token).
    ManagementRequests,
    /// The service sends cloud-to-device messages (`/messages/devicebound`, see `c2d.rs`).
    C2dSend,
    /// The service receives C2D feedback (`/messages/serviceBound/feedback`, `feedback.rs`).
    Feedback,
    /// The service receives file upload notifications
    /// (`/messages/serviceBound/filenotifications`, `file_notifications.rs`).
    FileNotifications,
    /// `/messages/events[/...]` on the IoT Hub host: answered, as IoT Hub does, with
    /// `amqp:link:redirect` to the same path on the Event Hubs-compatible endpoint (`rest` is
    /// what follows `messages/events`).
    Redirect { rest: String },
    /// The client receives the events of a partition of the Event Hubs-compatible endpoint.
    Partition {
        part: u32,
        start: crate::store::eventhub::Position,
        /// The link's path (`{hub}/ConsumerGroups/{group}/Partitions/{p}`): what a token must
        /// cover (one for the Event Hub does, and so does one for just this partition).
        path: String,
    },
    /// A device's link (`/devices/{id}/...`, see `device/`).
    Device(device::Link),
    /// A DPS registration's link (`{idScope}/registrations/{id}`, see `dps/amqp.rs`).
    Dps(crate::dps::amqp::Address),
}

impl Route {
    /// The path a CBS claim must cover for the link to attach, and the right its policy
    /// must grant; `None`: no token needed.
    fn claim(&self) -> Option<(&str, Permission)> {
        match self {
            Route::CbsRequests | Route::Replies(_) | Route::ManagementRequests => None,
            Route::Partition { path, .. } => Some((path, Permission::ServiceConnect)),
            Route::Redirect { .. } => Some((EVENTS_PATH, Permission::ServiceConnect)),
            Route::C2dSend => Some((c2d::PATH, Permission::ServiceConnect)),
            Route::Feedback => Some((feedback::PATH, Permission::ServiceConnect)),
            Route::FileNotifications => {
                Some((file_notifications::PATH, Permission::ServiceConnect))
            }
            // Checked by device::authorize: device ids are case-sensitive.
            Route::Device(_) => None,
            // Attested on each request against the enrollments (dps/amqp.rs).
            Route::Dps(_) => None,
        }
    }
}

/// The link's address as the hub routes it: the client's source when the hub sends, its
/// target when the hub receives.
fn link_address(attach: &Attach) -> Option<&str> {
    match attach.role {
        // The client is the receiver: the hub sends from the source it names.
        Role::Receiver => attach.source.as_ref()?.address.as_deref(),
        Role::Sender => {
            let target = attach.target.as_ref()?;
            match &**target {
                fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => t.address.as_deref(),
                #[allow(unreachable_patterns)]
                _ => None,
            }
        }
    }
}

/// The reply address of a client's receiver link: its target.
fn reply_address(attach: &Attach) -> Option<String> {
    match &**attach.target.as_ref()? {
        fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => t.address.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// IoT Hub's service-side path of the device-to-cloud messages.
const EVENTS_PATH: &str = "messages/events";

/// What follows `messages/events` in `path` (any case), if it starts so.
fn events_rest(path: &str) -> Option<&str> {
    let head = path.get(..EVENTS_PATH.len())?;
    let rest = &path[EVENTS_PATH.len()..];
    (head.eq_ignore_ascii_case(EVENTS_PATH) && (rest.is_empty() || rest.starts_with('/')))
        .then(|| rest.trim_start_matches('/'))
}

/// `amqp:link:redirect` to `{entity}/{rest}` on the AMQPS listener, with the `info` fields the
/// SDKs read (`hostname`, `network-host`, `port`, `address`).
fn redirect(ctx: &ConnCtx, rest: &str) -> AmqpErr {
    let eh = &ctx.eventhub;
    let Some(port) = eh.amqps_port else {
        return not_found("no AMQPS listener to redirect to".into());
    };
    let host = &ctx.hub.cfg.hostname;
    let address = if rest.is_empty() {
        format!("amqps://{host}:{port}/{}", eh.name)
    } else {
        format!("amqps://{host}:{port}/{}/{rest}", eh.name)
    };
    let mut info = fe2o3_amqp::types::definitions::Fields::new();
    info.insert("hostname".into(), Value::String(host.clone()));
    info.insert("network-host".into(), Value::String(host.clone()));
    info.insert("port".into(), Value::Int(i32::from(port)));
    info.insert("address".into(), Value::String(address));
    AmqpErr::new(
        fe2o3_amqp::types::definitions::LinkError::Redirect,
        "the Event Hubs-compatible endpoint serves the hub's events".to_string(),
        info,
    )
}

fn not_found(what: String) -> AmqpErr {
    AmqpErr::new(AmqpError::NotFound, what, None)
}

/// Decide what an attach is (see the module doc).
fn route(ctx: &ConnCtx, attach: &Attach) -> Result<Route, AmqpErr> {
    let Some(raw) = link_address(attach) else {
        return Err(not_found("the link has no address".into()));
    };
    let addr = Address::parse(raw);
    if !addr.host_is(&ctx.hub.cfg.hostname) {
        return Err(not_found(format!(
            "'{}' is not on this hub",
            crate::untrusted::Untrusted(raw)
        )));
    }
    let r = match (&attach.role, addr.path) {
        (&Role::Sender, "$cbs") => Route::CbsRequests,
        (&Role::Sender, "$management") => Route::ManagementRequests,
        // rhea (the Node SDKs) attaches its reply link with an empty target: it is known by
        // the node it receives from, where node.rs sends the replies it cannot otherwise place.
        (&Role::Receiver, node @ ("$cbs" | "$management")) => {
            Route::Replies(reply_address(attach).unwrap_or_else(|| node.to_string()))
        }
        (&Role::Sender, p) if p.eq_ignore_ascii_case(c2d::PATH) => Route::C2dSend,
        (&Role::Receiver, p) if p.eq_ignore_ascii_case(feedback::PATH) => Route::Feedback,
        (&Role::Receiver, p) if p.eq_ignore_ascii_case(file_notifications::PATH) => {
            Route::FileNotifications
        }
        (_, path) if let Some(rest) = events_rest(path) => Route::Redirect {
            rest: rest.to_string(),
        },
        (role, path) if let Some(link) = device::parse(role, path) => {
            device::authorize(ctx, &link)?;
            Route::Device(link)
        }
        (_, path) if let Some(a) = crate::dps::amqp::parse_address(path) => Route::Dps(a),
        (&Role::Receiver, path) if let Some(p) = ctx.eventhub.partition_address(path) => {
            let (_group, part) = p.map_err(not_found)?;
            let filters = attach.source.as_ref().and_then(|s| s.filter.as_ref());
            let start = eventhub::position(filters)
                .map_err(|e| AmqpErr::new(AmqpError::InvalidField, e, None))?;
            Route::Partition {
                part,
                start,
                path: path.to_string(),
            }
        }
        _ => {
            return Err(not_found(format!(
                "no node '{}' for a {} link",
                crate::untrusted::Untrusted(raw),
                if attach.role == Role::Receiver {
                    "receiving"
                } else {
                    "sending"
                }
            )));
        }
    };
    if let Some((path, right)) = r.claim()
        && !ctx.claims.covers(path, right, ctx.now_s())
    {
        return Err(AmqpErr::new(
            AmqpError::UnauthorizedAccess,
            format!(
                "no valid token for '{}': put-token on $cbs first",
                crate::untrusted::Untrusted(raw)
            ),
            None,
        ));
    }
    Ok(r)
}

/// Run an accepted, authorized link to its end.
/// `kills` was subscribed before the link's attach was answered (a fault that comes after it
/// reaches the link even before its task runs).
async fn run_link(
    ctx: Arc<ConnCtx>,
    route: Route,
    link: LinkEndpoint,
    kills: tokio::sync::broadcast::Receiver<device::faults::Kill>,
) {
    match (route, link) {
        (Route::CbsRequests, LinkEndpoint::Receiver(r)) => {
            let killed = device::faults::killed(kills, device::faults::Target::CbsRequests);
            tokio::select! {
                () = node::serve_requests(ctx, r, cbs::put_token) => {}
                () = killed => {}
            }
        }
        (Route::Replies(address), LinkEndpoint::Sender(s)) => {
            let killed = device::faults::killed(kills, device::faults::Target::CbsReplies);
            tokio::select! {
                () = node::serve_reply_link(ctx, s, address) => {}
                () = killed => {}
            }
        }
        (Route::Redirect { rest }, link) => refuse(link, redirect(&ctx, &rest)).await,
        (Route::ManagementRequests, LinkEndpoint::Receiver(r)) => {
            node::serve_requests(ctx, r, eventhub::management::answer).await;
        }
        (Route::Partition { part, start, .. }, LinkEndpoint::Sender(s)) => {
            let eh = ctx.eventhub.clone();
            eventhub::receiver::serve(ctx, s, eh, part, start).await;
        }
        (Route::C2dSend, LinkEndpoint::Receiver(r)) => c2d::serve(ctx, r).await,
        (Route::Feedback, LinkEndpoint::Sender(s)) => feedback::serve(ctx, s).await,
        (Route::FileNotifications, LinkEndpoint::Sender(s)) => {
            file_notifications::serve(ctx, s).await;
        }
        (Route::Device(l), link) => device::serve(ctx, l, link, kills).await,
        (Route::Dps(a), link) => crate::dps::amqp::serve(ctx, a, link).await,
        (_, link) => refuse(link, not_found("link role does not fit its node".into())).await,
    }
}

/// Detach a just-accepted link with `error`.
async fn refuse(link: LinkEndpoint, error: AmqpErr) {
    tracing::info!(condition = ?error.condition, description = ?error.description, "amqp: link refused");
    let _ = match link {
        LinkEndpoint::Sender(s) => s.close_with_error(error).await,
        LinkEndpoint::Receiver(r) => r.close_with_error(error).await,
    };
}

/// Accept AMQP connections until the task is aborted; `tls` is `None` for the loopback
/// development listener.
pub(crate) async fn accept_loop(
    hub: Arc<Hub>,
    eh: Arc<EventHub>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let name = if tls.is_some() { "amqps" } else { "amqp" };
    let mut gate = Gate::new(listener, name, hub.cfg.limits.max_pre_auth_connections);
    loop {
        let Admitted { tcp, peer, permit } = gate.next().await;
        let (hub, eh, tls) = (hub.clone(), eh.clone(), tls.clone());
        tokio::spawn(async move {
            let _live = LiveGuard::new(hub.clone());
            connection(hub, eh, tcp, peer, permit, tls).await;
        });
    }
}

async fn connection(
    hub: Arc<Hub>,
    eh: Arc<EventHub>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
) {
    let deadline = tokio::time::Instant::now() + hub.cfg.limits.connect_deadline;
    let claims = Arc::new(Claims::default());
    let opening = {
        let (hub, claims) = (hub.clone(), claims.clone());
        async move {
            match tls {
                Some(tls) => {
                    let stream = tls.accept(tcp).await.map_err(|e| e.to_string())?;
                    // An X.509 device is authenticated by its certificate (see device/).
                    if let Some(certs) = stream.get_ref().1.peer_certificates() {
                        claims.set_client_certs(certs);
                    }
                    open(&hub, &claims, stream).await
                }
                None => open(&hub, &claims, tcp).await,
            }
        }
    };
    serve_opening(hub, eh, claims, peer, permit, deadline, opening).await;
}

/// Every AMQP connection's path (AMQPS, plain AMQP, AMQP over WebSockets): `opening` (the
/// transport's handshake, then [`open`] with `claims`) must finish by `deadline`, and then the
/// connection is served, holding `permit` (a place among the unauthenticated) until it has a
/// token.
async fn serve_opening(
    hub: Arc<Hub>,
    eh: Arc<EventHub>,
    claims: Arc<Claims>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    opening: impl Future<Output = Result<ListenerConnectionHandle, String>>,
) {
    let opened = tokio::time::timeout_at(deadline, opening).await;
    let conn = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "amqp: connection not opened");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "amqp: connection not opened within the connect deadline");
            return;
        }
    };
    let ctx = Arc::new(ConnCtx {
        hub,
        claims,
        peer,
        eventhub: eh,
        replies: Replies::default(),
        devices: device::Devices::default(),
        kills: device::faults::kills(),
    });
    serve_connection(ctx, conn, Some(permit), deadline).await;
}

/// Opens the connection with SASL when the client starts with the SASL header, without when it
/// starts with AMQP's (then only a CBS token authorizes it; see `header.rs`).
async fn open<Io>(
    hub: &Arc<Hub>,
    claims: &Arc<Claims>,
    stream: Io,
) -> Result<ListenerConnectionHandle, String>
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let (opening, stream) = header::read(stream).await.map_err(|e| e.to_string())?;
    let stream = FullFrames::new(device::faults::Killable::new(stream, claims.kill.clone()));
    let opened = match opening {
        header::Opening::Sasl => {
            ConnectionAcceptor::builder()
                .container_id(hub.cfg.hostname.clone())
                .max_frame_size(MAX_FRAME_SIZE)
                .sasl_acceptor(sasl::Sasl {
                    hub: hub.clone(),
                    claims: claims.clone(),
                })
                .build()
                .accept(stream)
                .await
        }
        header::Opening::Amqp => {
            ConnectionAcceptor::builder()
                .container_id(hub.cfg.hostname.clone())
                .max_frame_size(MAX_FRAME_SIZE)
                .build()
                .accept(stream)
                .await
        }
    };
    opened.map_err(|e| e.to_string())
}

/// Accept the connection's sessions until it closes, the hub stops, or it has no token by
/// `deadline`.
async fn serve_connection(
    ctx: Arc<ConnCtx>,
    mut conn: ListenerConnectionHandle,
    mut permit: Option<OwnedSemaphorePermit>,
    deadline: tokio::time::Instant,
) {
    let mut shutdown = ctx.hub.shutdown.subscribe();
    let mut sessions = tokio::task::JoinSet::new();
    let mut kills = ctx.kills.subscribe();
    loop {
        if permit.is_some() && ctx.claims.any() {
            // Authenticated: no longer one of the listener's pre-auth connections.
            permit = None;
        }
        let claim_added = ctx.claims.added.notified();
        tokio::select! {
            incoming = conn.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                // An explicit handle-max: pyAMQP reads the field and has no default for it
                // (see full_frames.rs); the protocol's default would be sent as a null.
                let acceptor = SessionAcceptor::builder().handle_max(MAX_LINKS_PER_SESSION).build();
                match acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => {
                        sessions.spawn(serve_session(ctx.clone(), session));
                    }
                    Err(e) => {
                        tracing::info!(peer = %ctx.peer, error = %e, "amqp: session not begun");
                        break;
                    }
                }
            }
            () = claim_added, if permit.is_some() => {}
            () = tokio::time::sleep_until(deadline), if permit.is_some() => {
                tracing::info!(peer = %ctx.peer, "amqp: no valid token within the connect deadline: closing");
                let _ = conn
                    .close_with_error(AmqpErr::new(
                        AmqpError::UnauthorizedAccess,
                        "no valid token within the connect deadline".to_string(),
                        None,
                    ))
                    .await;
                sessions.abort_all();
                return;
            }
            Ok(k) = kills.recv() => {
                if k.target == device::faults::Target::Shutdown {
                    device::faults::shut_down(&mut conn, &mut sessions, k.error).await;
                    return;
                }
            }
            () = until_shutdown(&mut shutdown) => break,
        }
    }
    sessions.abort_all();
    let _ = conn.close().await;
}

/// Accept the session's links, each into a task of its own, until the session ends.
async fn serve_session(ctx: Arc<ConnCtx>, mut session: ListenerSessionHandle) {
    // Receivers settle first, as the services do: uamqp (azure-iot-hub's C2D) asks for
    // `second` and then waits for a settled disposition that mode never sends.
    let acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(fe2o3_amqp::acceptor::SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(fe2o3_amqp::types::definitions::ReceiverSettleMode::First)
        .build();
    let mut links = tokio::task::JoinSet::new();
    // The identities with links on this session (a KillAmqpSession fault ends it).
    let mut identities = std::collections::HashSet::new();
    let mut kills = ctx.kills.subscribe();
    loop {
        let attach = tokio::select! {
            a = session.next_incoming_attach() => a,
            Ok(k) = kills.recv() => {
                if let Some(end) = device::faults::SessionEnd::of(&k, &identities) {
                    // The links go first: a detach after the end is on no channel.
                    links.abort_all();
                    while links.join_next().await.is_some() {}
                    end.end(&mut session).await;
                    return;
                }
                continue;
            }
        };
        let Some(attach) = attach else { break };
        while links.try_join_next().is_some() {}
        let decision = route(&ctx, &attach);
        if let Ok(Route::Device(l)) = &decision {
            identities.insert(crate::hub::client_id(&l.device, l.module.as_deref()));
        }
        let link_kills = ctx.kills.subscribe();
        let link = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(peer = %ctx.peer, error = %e, "amqp: link not attached");
                continue;
            }
        };
        match decision {
            Ok(route) => links.spawn(run_link(ctx.clone(), route, link, link_kills)),
            Err(error) => links.spawn(refuse(link, error)),
        };
    }
    links.abort_all();
    let _ = session.end().await;
}
