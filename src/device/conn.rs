//! One MQTT connection: a rumqttc event loop polled on its own task (never cancelled mid-write),
//! whose packets come back to the driver over a channel.
//!
//! A connection is used once: when it ends the task reports why and stops (it never reconnects
//! on its own); the session decides when the next one starts, with a fresh token. rumqttc picks
//! its own packet ids, so the session's ids are mapped through the order of rumqttc's
//! `Outgoing::Publish` notifications (requests are handled first in, first out).
//!
//! Telemetry that went out on an earlier connection and was never acknowledged is sent again
//! first thing after CONNACK, as MQTT 3.1.1 asks of a clean-session-0 client (4.4,
//! [MQTT-4.4.0-1], [MQTT-3.3.1-1]): the same PUBLISH (topic with its `$.mid`, payload) with its
//! original packet id and DUP=1. The session gives the message a new id of its own when the
//! driver hands it back; [`Conn::adopt`] maps the wire id to that one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use azsim_proto::session::{ConnackCode, DisconnectReason, Publish, QoS};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest packet accepted or sent: D2C is limited to 256 KB plus topic and header.
const MAX_PACKET: usize = 262_144 + 4096;

/// Everything needed to open a connection. `Debug` leaves the password out.
pub struct ConnectParams {
    /// TCP host.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT username.
    pub username: String,
    /// MQTT password (the SAS token), or empty.
    pub password: String,
    /// TLS client configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Keep-alive in seconds (0 disables it).
    pub keep_alive: u16,
    /// MQTT clean-session flag.
    pub clean_session: bool,
    /// Unacknowledged QoS 1 publishes of earlier connections, to send again after CONNACK.
    pub redeliver: Vec<Redelivery>,
}

/// A QoS 1 PUBLISH that went out on an earlier connection without a PUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// The packet id it went out with.
    pub pkid: u16,
    /// Its topic (with the property bag, so the same `$.mid`).
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("redeliver", &self.redeliver.len())
            .finish()
    }
}

/// What the connection task reports.
#[derive(Debug)]
pub enum ConnEvent {
    /// CONNACK 0.
    Connected,
    /// An incoming PUBLISH.
    Publish {
        /// Topic.
        topic: String,
        /// Body.
        payload: Vec<u8>,
    },
    /// A PUBACK for a session packet id.
    PubAck(u16),
    /// A QoS 1 PUBLISH of the session went out with packet id `wire`.
    OnWire {
        /// The session's packet id.
        pkid: u16,
        /// The packet id on this connection.
        wire: u16,
    },
    /// The connection ended (or never came up).
    Closed(Failure),
}

/// Why a connection ended, for the session and for people.
#[derive(Debug, Clone)]
pub struct Failure {
    /// For the session.
    pub reason: DisconnectReason,
    /// One line for people (names host and port, or the certificate problem). Never holds a
    /// credential: rumqttc's errors carry none.
    pub detail: String,
}

/// A live (or starting) connection.
#[derive(Debug)]
pub struct Conn {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<RawEvent>,
    task: JoinHandle<()>,
    ids: PacketIds,
}

/// rumqttc's packet ids (on the wire) against the session's.
#[derive(Debug, Default)]
struct PacketIds {
    /// Session packet ids of QoS 1 publishes not yet given a rumqttc id, in request order.
    expected: VecDeque<u16>,
    /// rumqttc packet id -> session packet ids, oldest first (an id is reused only after its
    /// PUBACK, but a collision can announce the next use before that PUBACK is read).
    map: HashMap<u16, VecDeque<u16>>,
    /// `Outgoing::Publish` notifications still to come for redeliveries (they go out first).
    redelivered_left: usize,
}

impl PacketIds {
    /// The session's `pkid` was handed to rumqttc, which will announce its wire id.
    fn requested(&mut self, pkid: u16) {
        self.expected.push_back(pkid);
    }

    /// The redelivery with wire id `wire` stands for the session's `pkid`.
    fn adopt(&mut self, wire: u16, pkid: u16) {
        self.map.entry(wire).or_default().push_back(pkid);
    }

    /// rumqttc sent a QoS 1 PUBLISH as `wire`: the session's id for it, unless it was a
    /// redelivery.
    fn on_wire(&mut self, wire: u16) -> Option<u16> {
        if self.redelivered_left > 0 {
            // Pending redeliveries go out before any new request.
            self.redelivered_left -= 1;
            return None;
        }
        let pkid = self.expected.pop_front()?;
        self.map.entry(wire).or_default().push_back(pkid);
        Some(pkid)
    }

    /// A PUBACK for `wire`: the session's id it acknowledges.
    fn on_puback(&mut self, wire: u16) -> Option<u16> {
        let q = self.map.get_mut(&wire)?;
        let pkid = q.pop_front();
        if q.is_empty() {
            self.map.remove(&wire);
        }
        pkid
    }
}

#[derive(Debug)]
enum RawEvent {
    Connected,
    Publish(String, Vec<u8>),
    OutgoingPublish(u16),
    PubAck(u16),
    Closed(Failure),
}

impl Conn {
    /// Starts connecting in the background; the outcome arrives from [`Conn::next`].
    pub fn start(p: ConnectParams) -> Self {
        let mut opts = MqttOptions::new(p.client_id, p.host.clone(), p.port);
        opts.set_keep_alive(Duration::from_secs(u64::from(p.keep_alive)));
        opts.set_clean_session(p.clean_session);
        opts.set_credentials(p.username, p.password);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(p.tls)));
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        // The session limits telemetry in flight to 16; this only has to be larger.
        opts.set_inflight(64);
        opts.set_request_channel_capacity(512);
        let (client, mut eventloop) = AsyncClient::new(opts, 512);
        let mut net = NetworkOptions::new();
        // Small QoS 1 publishes must not wait for Nagle's algorithm.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let host = p.host;
        let port = p.port;
        let redelivered_left = p.redeliver.len();
        let redeliver = p.redeliver;
        let task =
            tokio::spawn(async move { drive(&mut eventloop, tx, &host, port, redeliver).await });
        Self {
            client,
            rx,
            task,
            ids: PacketIds {
                redelivered_left,
                ..PacketIds::default()
            },
        }
    }

    /// Tells the connection that the redelivered PUBLISH with packet id `wire` is the session's
    /// `pkid` now, so its PUBACK is reported as `pkid`. Call it before reading the next event
    /// after `Connected`.
    pub fn adopt(&mut self, wire: u16, pkid: u16) {
        self.ids.adopt(wire, pkid);
    }

    /// The next event; `Closed` is the last one.
    pub async fn next(&mut self) -> ConnEvent {
        loop {
            let Some(ev) = self.rx.recv().await else {
                return ConnEvent::Closed(Failure {
                    reason: DisconnectReason::Lost,
                    detail: "connection task ended".into(),
                });
            };
            match ev {
                RawEvent::Connected => return ConnEvent::Connected,
                RawEvent::Publish(topic, payload) => return ConnEvent::Publish { topic, payload },
                RawEvent::OutgoingPublish(0) => {}
                RawEvent::OutgoingPublish(wire) => {
                    if let Some(pkid) = self.ids.on_wire(wire) {
                        return ConnEvent::OnWire { pkid, wire };
                    }
                }
                RawEvent::PubAck(wire) => {
                    if let Some(pkid) = self.ids.on_puback(wire) {
                        return ConnEvent::PubAck(pkid);
                    }
                }
                RawEvent::Closed(f) => return ConnEvent::Closed(f),
            }
        }
    }

    /// Queues a PUBLISH.
    ///
    /// # Errors
    /// When the connection task is gone or its queue is full.
    pub fn publish(&mut self, p: &Publish<'_>) -> Result<(), rumqttc::ClientError> {
        let qos = mqtt_qos(p.qos);
        self.client
            .try_publish(p.topic, qos, false, p.payload.to_vec())?;
        if p.qos == QoS::AtLeastOnce {
            self.ids.requested(p.pkid);
        }
        Ok(())
    }

    /// Queues a SUBSCRIBE.
    ///
    /// # Errors
    /// When the connection task is gone or its queue is full.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), rumqttc::ClientError> {
        self.client.try_subscribe(filter, mqtt_qos(qos))
    }

    /// Sends DISCONNECT and waits (briefly) for the connection to close.
    pub async fn disconnect(mut self) {
        if self.client.try_disconnect().is_ok() {
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ev = self.rx.recv() => match ev {
                        None | Some(RawEvent::Closed(_)) => break,
                        Some(_) => {}
                    },
                    () = &mut deadline => break,
                }
            }
        }
        self.task.abort();
    }

    /// Drops the connection without a DISCONNECT.
    pub fn abort(self) {
        self.task.abort();
    }
}

fn mqtt_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

async fn drive(
    eventloop: &mut EventLoop,
    tx: mpsc::UnboundedSender<RawEvent>,
    host: &str,
    port: u16,
    mut redeliver: Vec<Redelivery>,
) {
    let mut connected = false;
    let mut closing = false;
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                // rumqttc sends `pending` before any new request. It clears that list itself
                // when CONNACK says no session is present (IoT Hub always does), so it is
                // filled only now.
                for r in redeliver.drain(..) {
                    let mut p =
                        rumqttc::Publish::new(r.topic, rumqttc::QoS::AtLeastOnce, r.payload);
                    p.pkid = r.pkid;
                    p.dup = true;
                    eventloop.pending.push_back(rumqttc::Request::Publish(p));
                }
                RawEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Topics are UTF-8 by MQTT's rules; rumqttc already checked.
                RawEvent::Publish(p.topic, p.payload.to_vec())
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => RawEvent::PubAck(a.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => RawEvent::OutgoingPublish(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                closing = true;
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                let f = if closing {
                    Failure {
                        reason: DisconnectReason::Requested,
                        detail: "disconnected".into(),
                    }
                } else {
                    classify(&e, connected, host, port)
                };
                let _ = tx.send(RawEvent::Closed(f));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// Maps a rumqttc error to the session's reason and a line a person can act on.
pub fn classify(e: &ConnectionError, connected: bool, host: &str, port: u16) -> Failure {
    use std::io::ErrorKind;
    let (reason, detail) = match e {
        ConnectionError::ConnectionRefused(code) => {
            let code = ConnackCode::from_u8(*code as u8).unwrap_or(ConnackCode::Other(0));
            (
                DisconnectReason::Refused(code),
                format!("the hub refused the connection: {code}"),
            )
        }
        ConnectionError::Tls(t) => (DisconnectReason::Tls, describe_tls(t, host, port)),
        ConnectionError::NetworkTimeout if !connected => (
            DisconnectReason::Unreachable,
            format!("cannot connect to {host}:{port}: timed out"),
        ),
        ConnectionError::Io(io) if !connected => {
            let text = io.to_string();
            let unreachable = matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::NotFound
                    | ErrorKind::TimedOut
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            ) || text.contains("lookup")
                || text.contains("resolve");
            if unreachable {
                let why = if text.contains("lookup") || text.contains("resolve") {
                    format!("cannot resolve host {host}")
                } else {
                    format!("cannot connect to {host}:{port}: {}", short_io(io))
                };
                (DisconnectReason::Unreachable, why)
            } else if let Some(tls) = io.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                (DisconnectReason::Tls, describe_rustls(tls, host, port))
            } else {
                (
                    DisconnectReason::Lost,
                    format!(
                        "{host}:{port} closed the connection before CONNACK: {}",
                        short_io(io)
                    ),
                )
            }
        }
        other => (
            DisconnectReason::Lost,
            format!("connection to {host}:{port} lost: {other}"),
        ),
    };
    Failure { reason, detail }
}

fn short_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    // "Connection refused (os error 111)" -> "connection refused"
    let s = s.split(" (os error").next().unwrap_or(&s);
    s.to_lowercase()
}

fn describe_tls(e: &rumqttc::TlsError, host: &str, port: u16) -> String {
    match e {
        rumqttc::TlsError::TLS(r) => describe_rustls(r, host, port),
        rumqttc::TlsError::Io(io) => {
            match io.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                Some(r) => describe_rustls(r, host, port),
                None => format!("tls handshake with {host}:{port} failed: {}", short_io(io)),
            }
        }
        rumqttc::TlsError::DNSName(_) => format!("{host} is not a valid tls server name"),
        other => format!("tls setup for {host}:{port} failed: {other}"),
    }
}

/// Names the certificate problem.
pub fn describe_rustls(e: &rustls::Error, host: &str, port: u16) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => "is signed by an unknown certificate authority (for the local hub pass its CA with --ca or AZSIM_CA_FILE)".to_owned(),
                C::Expired | C::ExpiredContext { .. } => "has expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet (check the clock)".to_owned(),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!("is not valid for the name {host}"),
                C::Revoked => "has been revoked".to_owned(),
                C::BadSignature => "has a bad signature".to_owned(),
                C::UnsupportedSignatureAlgorithmContext { .. } => "uses an unsupported signature algorithm".to_owned(),
                C::BadEncoding => "is malformed".to_owned(),
                other => format!("was rejected: {other:?}"),
            };
            format!("tls: the server certificate of {host}:{port} {what}")
        }
        rustls::Error::AlertReceived(a) => {
            format!("tls: {host}:{port} ended the handshake with alert {a:?}")
        }
        other => format!("tls handshake with {host}:{port} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::PacketIds;

    #[test]
    fn fresh_publishes_take_wire_ids_in_request_order() {
        let mut ids = PacketIds::default();
        ids.requested(10);
        ids.requested(11);
        assert_eq!(ids.on_wire(1), Some(10));
        assert_eq!(ids.on_wire(2), Some(11));
        assert_eq!(ids.on_puback(2), Some(11));
        assert_eq!(ids.on_puback(1), Some(10));
        assert_eq!(ids.on_puback(1), None, "a second PUBACK is nobody's");
    }

    #[test]
    fn redeliveries_go_out_first_and_are_acknowledged_as_the_adopting_id() {
        let mut ids = PacketIds {
            redelivered_left: 2,
            ..PacketIds::default()
        };
        ids.requested(20);
        // rumqttc announces the two redeliveries (wire 5 and 6), then the new message.
        assert_eq!(ids.on_wire(5), None);
        assert_eq!(ids.on_wire(6), None);
        assert_eq!(ids.on_wire(1), Some(20));
        ids.adopt(5, 18);
        ids.adopt(6, 19);
        assert_eq!(ids.on_puback(6), Some(19));
        assert_eq!(ids.on_puback(5), Some(18));
        assert_eq!(ids.on_puback(1), Some(20));
    }

    #[test]
    fn a_colliding_wire_id_is_acknowledged_oldest_first() {
        // Wire id 1 is a redelivery still unacknowledged; rumqttc holds a new publish that also
        // got id 1 and announces it when the first PUBACK for 1 arrives.
        let mut ids = PacketIds {
            redelivered_left: 1,
            ..PacketIds::default()
        };
        assert_eq!(ids.on_wire(1), None);
        ids.adopt(1, 30);
        ids.requested(31);
        assert_eq!(ids.on_wire(1), Some(31));
        assert_eq!(ids.on_puback(1), Some(30));
        assert_eq!(ids.on_puback(1), Some(31));
    }
}
