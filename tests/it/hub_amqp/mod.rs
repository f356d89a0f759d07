//! The hub's AMQP endpoint through an independent client (fe2o3-amqp's connection side): SASL,
//! CBS `put-token`, link refusals, bad input on the listener. The Event Hubs-compatible
//! endpoint through the official Python SDK is in `eventhub_python.rs`.

use std::time::Duration;

use azsim_emulator::clock::unix_now;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Message, MessageId, Properties, Source,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Session};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::TestHub;

mod bad_input;
mod cbs;
mod eventhub_links;
mod eventhub_python;
mod routing;

type Conn = fe2o3_amqp::connection::ConnectionHandle<()>;

/// Long enough for a loaded CI machine; a test waiting this long has failed.
const WAIT: Duration = Duration::from_secs(20);

/// The hub's `iothubowner` key (from its service connection string).
pub fn owner_key(hub: &TestHub) -> String {
    hub.service_connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("key")
        .to_string()
}

/// An `iothubowner` SAS token for `resource`, valid until `se`.
pub fn owner_token(hub: &TestHub, resource: &str, se: u64) -> String {
    let mut t = String::new();
    azsim_proto::sas::sign(&mut t, resource, &owner_key(hub), se, Some("iothubowner"))
        .expect("sign");
    t
}

/// TLS to the hub's AMQPS port, trusting its CA.
pub async fn tls(hub: &TestHub) -> TlsStream<TcpStream> {
    let port = hub.info.amqp_port.expect("amqp port");
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    tokio_rustls::TlsConnector::from(hub.tls())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls")
}

/// An AMQP connection with `sasl`.
pub async fn open(
    hub: &TestHub,
    sasl: SaslProfile,
) -> Result<Conn, fe2o3_amqp::connection::OpenError> {
    let stream = tls(hub).await;
    tokio::time::timeout(
        WAIT,
        Connection::builder()
            .container_id("azsim-test")
            .hostname("localhost")
            .sasl_profile(sasl)
            .open_with_stream(stream),
    )
    .await
    .expect("open in time")
}

/// A CBS client: the request link to `$cbs` and its reply link.
pub struct Cbs {
    tx: Sender,
    rx: Receiver,
    next: u64,
    reply_to: String,
}

impl Cbs {
    pub async fn attach(session: &mut fe2o3_amqp::session::SessionHandle<()>) -> Cbs {
        // Link names are unique per session.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = Sender::attach(session, format!("cbs-requests-{n}"), "$cbs")
            .await
            .expect("cbs sender");
        let rx = Receiver::builder()
            .name(format!("cbs-replies-{n}"))
            .source("$cbs")
            .target(format!("cbs-reply-to-{n}"))
            .attach(session)
            .await
            .expect("cbs receiver");
        Cbs {
            tx,
            rx,
            next: 1,
            reply_to: format!("cbs-reply-to-{n}"),
        }
    }

    /// `put-token` of `token` for `audience`: the reply's status code and description.
    pub async fn put_token(&mut self, audience: &str, token: &str) -> (i32, String) {
        self.next += 1;
        let msg = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(self.next.to_string())),
                reply_to: Some(self.reply_to.clone()),
                ..Properties::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("operation", "put-token")
                    .insert("type", "servicebus.windows.net:sastoken")
                    .insert("name", audience)
                    .build(),
            )
            .value(token.to_string())
            .build();
        self.tx.send(msg).await.expect("request sent");
        let reply = tokio::time::timeout(WAIT, self.rx.recv::<Body<Value>>())
            .await
            .expect("reply in time")
            .expect("reply");
        self.rx.accept(&reply).await.expect("accept");
        let m = reply.message();
        assert_eq!(
            m.properties.as_ref().and_then(|p| p.correlation_id.clone()),
            Some(MessageId::String(self.next.to_string())),
            "the reply correlates with the request"
        );
        let app = &m.application_properties.as_ref().expect("properties").0;
        let status = match app.get("status-code") {
            Some(SimpleValue::Int(s)) => *s,
            other => panic!("status-code {other:?}"),
        };
        let desc = match app.get("status-description") {
            Some(SimpleValue::String(s)) => s.clone(),
            other => panic!("status-description {other:?}"),
        };
        (status, desc)
    }
}

/// A connection (SASL ANONYMOUS), a session and a CBS client with an accepted owner token for
/// the whole hub.
pub async fn authorized(hub: &TestHub) -> (Conn, fe2o3_amqp::session::SessionHandle<()>, Cbs) {
    let mut conn = open(hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut cbs = Cbs::attach(&mut session).await;
    let token = owner_token(hub, &hub.hostname, unix_now() + 600);
    let (status, desc) = cbs.put_token(&hub.hostname, &token).await;
    assert_eq!(status, 200, "{desc}");
    (conn, session, cbs)
}

/// Attach a receiver on `address`; the AMQP error condition the hub detaches it with, if it
/// does (a refused link is attached and at once detached with an error).
pub async fn refusal(
    session: &mut fe2o3_amqp::session::SessionHandle<()>,
    name: &str,
    address: &str,
) -> Option<String> {
    let attached = Receiver::builder()
        .name(name)
        .source(Source::builder().address(address).build())
        .target("t")
        .attach(session)
        .await;
    let mut r = match attached {
        Err(fe2o3_amqp::link::ReceiverAttachError::RemoteClosedWithError(e)) => {
            return Some(format!("{:?}", e.condition));
        }
        Err(e) => panic!("attach failed otherwise: {e:?}"),
        Ok(r) => r,
    };
    match tokio::time::timeout(Duration::from_secs(2), r.recv::<Body<Value>>()).await {
        Err(_) => None,
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("{e:?}")),
    }
}
