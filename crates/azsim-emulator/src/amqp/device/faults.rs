//! The SDK e2e suites' AMQP faults (`AzIoTHub_FaultOperationType` in a telemetry message sent
//! over AMQP; see `crate::fault` for the properties): each names a part of the device's AMQP
//! connection, which the hub ends after the fault's delay, once:
//!
//! | operation | what ends | with |
//! |---|---|---|
//! | `KillAmqpConnection` | the connection's TCP stream, dropped (no AMQP `close`) | - |
//! | `ShutDownAmqp` | the connection, closed gracefully: each link detached, each session ended, then the `close` | `amqp:internal-error` (on the `close`) |
//! | `KillAmqpSession` | the session(s) carrying the identity's links: their links detached, then the `end` | `amqp:internal-error` (on the `end`) |
//! | `KillAmqpCBSLinkReq`, `KillAmqpCBSLinkResp` | the connection's `$cbs` request link, reply link(s) | detached, no error |
//! | `KillAmqpD2CLink`, `KillAmqpC2DLink`, `KillAmqpMethodReqLink`, `KillAmqpMethodRespLink`, `KillAmqpTwinLinkReq`, `KillAmqpTwinLinkResp` | that link of the identity | `amqp:link:detach-forced` |
//!
//! The description names the operation (`fault injected: KillAmqpD2CLink`). The conditions are
//! inferred: Azure documents its faults only through the SDK tests, which assert that the
//! device recovers (re-attaches, reconnects) and its telemetry continues, not the condition.
//! The `$cbs` links are detached without an error (closed; the node's link loop is not this
//! module's to end with one). The fault message itself is accepted before the fault starts (see
//! `telemetry.rs`; with no delay a dropped stream may take the accept with it, and the SDK then
//! sends the request again: the SDK suites give every fault a delay of 1 s or more); a link the
//! device attaches again is not killed again.
//!
//! The order of the frames is Microsoft.Azure.Amqp's (the AMQP library of IoT Hub and the C#
//! SDK): closing a session detaches its links and then sends the `end`; closing a connection
//! closes its sessions so and then sends the `close` (`AmqpSession.CloseInternal`,
//! `AmqpConnection.CloseInternal`). azure-iot-device-amqp depends on it: once it sees an error it
//! detaches its links and ends its session cleanly, waiting for each answer, and only a 45 s
//! timer ends that wait (azure-iot-amqp-base `disconnecting`, SRS_NODE_COMMON_AMQP_06_007). A
//! bare `close` (this hub's `ShutDownAmqp` before) left its detaches unanswered: it sent its next
//! message 45 s later. Here the links' detaches carry no error (their tasks are dropped).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use std::collections::HashSet;

use fe2o3_amqp::acceptor::{ListenerConnectionHandle, ListenerSessionHandle};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, LinkError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use super::Kind;
use crate::amqp::ConnCtx;

/// What an AMQP fault ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The TCP stream is dropped.
    Connection,
    /// The connection is closed with an error.
    Shutdown,
    /// The sessions carrying the identity's links end with an error.
    Session,
    /// The connection's `$cbs` request link.
    CbsRequests,
    /// The connection's reply links (`$cbs`'s).
    CbsReplies,
    /// The identity's link of this kind is detached with an error.
    Link(Kind),
}

/// The target of an `AzIoTHub_FaultOperationType` that applies to AMQP, if any.
pub(crate) fn target(operation: &str) -> Option<Target> {
    Some(match operation {
        "KillAmqpConnection" => Target::Connection,
        "ShutDownAmqp" => Target::Shutdown,
        "KillAmqpSession" => Target::Session,
        "KillAmqpCBSLinkReq" => Target::CbsRequests,
        "KillAmqpCBSLinkResp" => Target::CbsReplies,
        "KillAmqpD2CLink" => Target::Link(Kind::Telemetry),
        "KillAmqpC2DLink" => Target::Link(Kind::C2d),
        "KillAmqpMethodReqLink" => Target::Link(Kind::MethodRequests),
        "KillAmqpMethodRespLink" => Target::Link(Kind::MethodResponses),
        "KillAmqpTwinLinkReq" => Target::Link(Kind::TwinRequests),
        "KillAmqpTwinLinkResp" => Target::Link(Kind::TwinResponses),
        _ => return None,
    })
}

/// A fault for one identity's part of a connection, sent to the connection's tasks.
#[derive(Debug, Clone)]
pub(crate) struct Kill {
    /// The identity's client id (`device` or `device/module`).
    pub cid: String,
    pub target: Target,
    pub error: AmqpErr,
}

/// The connection's channel of faults (one per connection, in `ConnCtx`).
pub(crate) type Kills = broadcast::Sender<Kill>;

pub(crate) fn kills() -> Kills {
    broadcast::channel(16).0
}

/// The error `target` ends its part with; the description names `operation`.
pub(crate) fn error(target: Target, operation: &str) -> AmqpErr {
    let text = format!("fault injected: {operation}");
    match target {
        // `amqp:internal-error`, not `amqp:connection:forced`: azure-iot-device-amqp retries
        // the first (InternalServerError) and gives up on the second (a plain Error, "AMQP
        // Transport: Could not send"), and the suites expect the device to recover.
        Target::Connection | Target::Shutdown | Target::Session => {
            AmqpErr::new(AmqpError::InternalError, text, None)
        }
        Target::CbsRequests | Target::CbsReplies | Target::Link(_) => {
            AmqpErr::new(LinkError::DetachForced, text, None)
        }
    }
}

/// Schedule the fault `operation` (aimed at `target`) for the identity `cid` on this
/// connection, after `delay` on the hub's clock.
pub(crate) fn schedule(ctx: &ConnCtx, cid: &str, target: Target, operation: &str, delay: Duration) {
    let kill = Kill {
        cid: cid.to_string(),
        target,
        error: error(target, operation),
    };
    let (hub, kills, switch) = (ctx.hub.clone(), ctx.kills.clone(), ctx.claims.kill.clone());
    tokio::spawn(async move {
        let at = hub
            .clock()
            .unix_ms()
            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let mut shutdown = hub.shutdown.subscribe();
        tokio::select! {
            () = hub.clock().sleep_until_ms(at) => {}
            () = crate::hub::until_shutdown(&mut shutdown) => return,
        }
        tracing::info!(client_id = %kill.cid, target = ?kill.target, "amqp: fault injected");
        fire(&kills, &switch, kill);
    });
}

/// Act on `kill` now: the connection's stream is dropped at once, the rest is sent to the
/// connection's tasks.
pub(crate) fn fire(kills: &Kills, switch: &KillSwitch, kill: Kill) {
    if kill.target == Target::Connection {
        switch.kill();
    } else {
        let _ = kills.send(kill);
    }
}

/// How a fault ends a session: its links are detached first (the caller drops their tasks), then
/// [`SessionEnd::end`].
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// `KillAmqpSession`: the `end` carries the fault's error.
    WithError(AmqpErr),
    /// `ShutDownAmqp` (and `shutdown`): the connection is closing; its sessions end without an
    /// error first, as Microsoft.Azure.Amqp's do, and the `close` carries it (see [`shut_down`]).
    ConnectionClosing,
}

impl SessionEnd {
    /// Whether `kill` ends a session carrying the links of `identities`, and how.
    pub(crate) fn of(kill: &Kill, identities: &HashSet<String>) -> Option<SessionEnd> {
        match kill.target {
            Target::Session if identities.contains(&kill.cid) => {
                Some(SessionEnd::WithError(kill.error.clone()))
            }
            Target::Shutdown => Some(SessionEnd::ConnectionClosing),
            _ => None,
        }
    }

    /// Send the `end` (and wait for the peer's, as fe2o3 does).
    pub(crate) async fn end(self, session: &mut ListenerSessionHandle) {
        let _ = match self {
            SessionEnd::WithError(e) => session.end_with_error(e).await,
            SessionEnd::ConnectionClosing => session.end().await,
        };
    }
}

/// How long a closing connection waits for its sessions' ends before its `close` (a peer that
/// does not answer an `end` does not hold the close up for longer).
const SESSIONS_END_WAIT: Duration = Duration::from_secs(2);

/// `ShutDownAmqp`: the connection's sessions (each told by the same fault, see [`SessionEnd`])
/// detach their links and end, then the connection is closed with `error`.
pub(crate) async fn shut_down(
    conn: &mut ListenerConnectionHandle,
    sessions: &mut JoinSet<()>,
    error: AmqpErr,
) {
    let ended = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(SESSIONS_END_WAIT, ended)
        .await
        .is_err()
    {
        tracing::debug!("amqp: shutdown: a session's end was not answered in time");
    }
    let _ = conn.close_with_error(error).await;
    sessions.abort_all();
}

/// Completes when a fault aimed at `target` (a connection-wide one: the `$cbs` links) comes:
/// the caller drops its link then.
pub(crate) async fn killed(mut kills: broadcast::Receiver<Kill>, target: Target) {
    loop {
        match kills.recv().await {
            Ok(k) if k.target == target => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Drops a connection's stream on demand: every read and write fails from then on.
#[derive(Debug, Default)]
pub(crate) struct KillSwitch {
    killed: AtomicBool,
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl KillSwitch {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for w in w.iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Poll `inner`; when it is pending, wake this task if the switch is thrown meanwhile.
    fn guard<T>(
        &self,
        slot: usize,
        cx: &mut Context<'_>,
        inner: impl FnOnce(&mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.killed() {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let r = inner(cx);
        if r.is_pending() {
            let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            if !w[slot].as_ref().is_some_and(|x| x.will_wake(cx.waker())) {
                w[slot] = Some(cx.waker().clone());
            }
            drop(w);
            if self.killed() {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
        }
        r
    }
}

/// A connection's stream with its [`KillSwitch`].
#[derive(Debug)]
pub(crate) struct Killable<Io> {
    io: Io,
    switch: Arc<KillSwitch>,
}

impl<Io> Killable<Io> {
    pub(crate) fn new(io: Io, switch: Arc<KillSwitch>) -> Self {
        Killable { io, switch }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Killable<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.switch
            .guard(0, cx, |cx| Pin::new(io).poll_read(cx, buf))
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Killable<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.switch
            .guard(1, cx, |cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.switch.guard(1, cx, |cx| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.switch.killed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The end of one of an identity's links: the identity's end, or a fault aimed at the link.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    pub(super) ended: tokio::sync::watch::Receiver<Option<super::Ended>>,
    pub(super) kills: broadcast::Receiver<Kill>,
    pub(super) cid: String,
    pub(super) kind: Kind,
}

impl LinkEnd {
    /// Completes with the error of a fault aimed at this link.
    pub(super) async fn killed(&mut self) -> AmqpErr {
        loop {
            match self.kills.recv().await {
                Ok(k) if k.cid == self.cid && k.target == Target::Link(self.kind) => {
                    return k.error;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}
