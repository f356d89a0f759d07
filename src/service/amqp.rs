//! The service side of IoT Hub over AMQP, as the official service SDKs speak it: cloud-to-device
//! messages (a sender link to `/messages/devicebound`) and their delivery feedback (a receiver
//! link on `/messages/serviceBound/feedback`), against a real Azure IoT Hub or `azsim hub`.
//!
//! A connection is AMQP over TLS (`crate::tls::client_config`, so the local hub's CA works) to
//! port 5671 of the hub's host, or the local hub's `amqp_port` from its `hub.json`; SASL
//! ANONYMOUS, then a CBS `put-token` of a policy SAS token for the hub (signed by
//! `azsim-proto`), as the C and Python SDKs do. fe2o3-amqp does the framing. Nothing here
//! prints; errors are one line and never hold the key or a token.

use std::time::Duration;

use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Connection, Session};
use rustls::pki_types::ServerName;
use serde_json::Value as Json;

use super::client::C2dRequest;
use super::target::Target;

/// The AMQPS port Azure serves.
pub const AMQPS_PORT: u16 = 5671;
/// How long connecting (TCP, TLS, AMQP open, CBS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a sent message may wait for the hub's disposition.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the CBS token.
const TOKEN_TTL: u64 = 3600;
/// What IoT Hub calls a C2D sender's node.
const DEVICEBOUND: &str = "/messages/devicebound";
/// What IoT Hub calls the feedback node.
const FEEDBACK: &str = "/messages/serviceBound/feedback";

/// Why an AMQP service call failed, in one line without secrets.
#[derive(Debug, thiserror::Error)]
pub enum AmqpClientError {
    /// TCP, TLS, the AMQP open or the CBS exchange failed.
    #[error("amqp: cannot connect to {endpoint}: {reason}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The hub refused the service token.
    #[error("amqp: {endpoint} refused the service token: {status} {description}")]
    Unauthorized {
        /// `host:port`.
        endpoint: String,
        /// CBS status code.
        status: i32,
        /// CBS status description.
        description: String,
    },
    /// The hub refused a link or a message; the text names IoT Hub's error.
    #[error("{0}")]
    Refused(String),
    /// The link or connection failed after it was up.
    #[error("amqp: {0}")]
    Link(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// An authenticated AMQP connection to a hub's service endpoint.
#[derive(Debug)]
pub struct AmqpService {
    conn: fe2o3_amqp::connection::ConnectionHandle<()>,
    session: SessionHandle<()>,
    endpoint: String,
}

/// Where the hub serves AMQPS: the local hub's `amqp_port` (`None` when it serves none), or
/// 5671 on the service host.
pub fn amqp_endpoint(target: &Target) -> Option<(String, u16)> {
    match &target.local_hub {
        Some(hub) => hub.amqp_port.map(|p| (hub.hostname.clone(), p)),
        None => Some((target.host_name().to_owned(), AMQPS_PORT)),
    }
}

/// IoT Hub's name for a rejection condition, as the SDKs surface it.
fn describe(condition: &ErrorCondition, description: &str) -> String {
    let name = match condition {
        ErrorCondition::AmqpError(AmqpError::NotFound) => "404001 DeviceNotFound",
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded) => {
            "403004 DeviceMaximumQueueDepthExceeded"
        }
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess) => {
            "401002 IotHubUnauthorizedAccess"
        }
        ErrorCondition::LinkError(
            fe2o3_amqp::types::definitions::LinkError::MessageSizeExceeded,
        ) => "413001 MessageTooLarge",
        _ => "",
    };
    let cond = format!("{condition:?}");
    if name.is_empty() {
        format!("the hub rejected the message ({cond}): {description}")
    } else {
        format!("{name}: {description}")
    }
}

impl AmqpService {
    /// Connects to the hub `target` names and authenticates with its policy key.
    ///
    /// # Errors
    /// [`AmqpClientError`] naming the endpoint and what failed.
    pub async fn connect(target: &Target) -> Result<Self, AmqpClientError> {
        let (host, port) = amqp_endpoint(target).ok_or_else(|| AmqpClientError::Connect {
            endpoint: target.host().to_owned(),
            reason: "the local hub serves no AMQP (started without an AMQP port)".into(),
        })?;
        let endpoint = format!("{host}:{port}");
        let fail = |reason: String| AmqpClientError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let ca = target.ca_file.clone();
        let open = async {
            let (conn, mut session) = open_session(&host, port, ca.as_deref()).await?;
            let token = target
                .credentials
                .token(azsim_emulator::clock::unix_now() + TOKEN_TTL)
                .map_err(|e| fail(format!("cannot sign a token: {e}")))?;
            put_token(&mut session, target.host(), token, &endpoint).await?;
            Ok::<_, AmqpClientError>(AmqpService {
                conn,
                session,
                endpoint: endpoint.clone(),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| fail("timed out".into()))?
    }

    /// Sends a C2D message to `device`; returns its message id once the hub has accepted it.
    ///
    /// # Errors
    /// [`AmqpClientError::Refused`] with IoT Hub's error (unknown device, queue full, too
    /// large), or a link failure.
    pub async fn send_c2d(
        &mut self,
        device: &str,
        req: &C2dRequest,
    ) -> Result<String, AmqpClientError> {
        let mut sender = Sender::attach(
            &mut self.session,
            format!("c2d-{}", uuid::Uuid::new_v4().simple()),
            DEVICEBOUND,
        )
        .await
        .map_err(|e| AmqpClientError::Refused(format!("amqp: c2d link refused: {e:?}")))?;
        let message_id = req
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut to = String::from("/devices/");
        // Writing into a String cannot fail.
        let _ = azsim_proto::encoding::encode(&mut to, device);
        to.push_str("/messages/devicebound");
        let mut app = ApplicationProperties::default();
        for (k, v) in &req.properties {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            app.0.insert(k.clone(), SimpleValue::String(text));
        }
        app.0
            .insert("iothub-ack".into(), SimpleValue::String(req.ack.clone()));
        let expiry = req.ttl_seconds.map(|s| {
            let ms = i64::try_from(azsim_emulator::clock::unix_now_ms()).unwrap_or(i64::MAX);
            Timestamp::from_milliseconds(ms.saturating_add(i64::try_from(s * 1000).unwrap_or(0)))
        });
        if req.body_base64.is_some() {
            return Err(AmqpClientError::Refused(
                "a base64 body is for the emulator's REST send; give the body as text".into(),
            ));
        }
        let body = req.body.clone().unwrap_or_default().into_bytes();
        let message: Message<Data> = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(message_id.clone())),
                to: Some(to),
                correlation_id: req.correlation_id.clone().map(MessageId::String),
                content_type: req.content_type.clone().map(Symbol::from),
                content_encoding: req.content_encoding.clone().map(Symbol::from),
                absolute_expiry_time: expiry,
                ..Properties::default()
            })
            .application_properties(app)
            .data(Binary::from(body))
            .build();
        let outcome = tokio::time::timeout(SEND_TIMEOUT, sender.send(message))
            .await
            .map_err(|_| AmqpClientError::Link("no disposition from the hub within 30 s".into()))?
            .map_err(|e| AmqpClientError::Link(format!("{e:?}")))?;
        let _ = sender.close().await;
        match outcome {
            Outcome::Accepted(_) => Ok(message_id),
            Outcome::Rejected(r) => {
                let (cond, desc) = r.error.map_or_else(
                    || {
                        (
                            ErrorCondition::AmqpError(AmqpError::InternalError),
                            String::new(),
                        )
                    },
                    |e| (e.condition, e.description.unwrap_or_default()),
                );
                Err(AmqpClientError::Refused(describe(&cond, &desc)))
            }
            other => Err(AmqpClientError::Refused(format!(
                "the hub did not take the message: {other:?}"
            ))),
        }
    }

    /// Attaches the feedback receiver.
    ///
    /// # Errors
    /// [`AmqpClientError::Refused`] when the hub refuses the link.
    pub async fn feedback(&mut self) -> Result<FeedbackReceiver, AmqpClientError> {
        let receiver = Receiver::attach(
            &mut self.session,
            format!("feedback-{}", uuid::Uuid::new_v4().simple()),
            FEEDBACK,
        )
        .await
        .map_err(|e| AmqpClientError::Refused(format!("amqp: feedback link refused: {e:?}")))?;
        Ok(FeedbackReceiver { receiver })
    }

    /// `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Ends the session and closes the connection.
    pub async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.conn.close().await;
    }
}

/// The feedback link: batches of Azure's feedback records.
#[derive(Debug)]
pub struct FeedbackReceiver {
    receiver: Receiver,
}

/// A feedback batch as it arrived; complete it with [`FeedbackReceiver::complete`].
#[derive(Debug)]
pub struct AmqpFeedbackBatch {
    /// Azure's records (`originalMessageId`, `deviceId`, `statusCode`, ...).
    pub records: Vec<Json>,
    delivery: Delivery<Body<Value>>,
}

impl FeedbackReceiver {
    /// The next batch, or `None` when none arrives within `wait`.
    ///
    /// # Errors
    /// A link failure, or a batch whose body is not a JSON array.
    pub async fn next(
        &mut self,
        wait: Duration,
    ) -> Result<Option<AmqpFeedbackBatch>, AmqpClientError> {
        let delivery = match tokio::time::timeout(wait, self.receiver.recv::<Body<Value>>()).await {
            Err(_) => return Ok(None),
            Ok(r) => r.map_err(|e| AmqpClientError::Link(format!("feedback: {e:?}")))?,
        };
        let bytes: Vec<u8> = match &delivery.message().body {
            Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
            Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(s))) => {
                s.clone().into_bytes()
            }
            _ => Vec::new(),
        };
        let records = match serde_json::from_slice::<Json>(&bytes) {
            Ok(Json::Array(a)) => a,
            _ => {
                let _ = self.receiver.reject(&delivery, None).await;
                return Err(AmqpClientError::Link(
                    "feedback: a batch that is not a JSON array".into(),
                ));
            }
        };
        Ok(Some(AmqpFeedbackBatch { records, delivery }))
    }

    /// Completes (accepts) a batch.
    ///
    /// # Errors
    /// A link failure.
    pub async fn complete(&mut self, batch: AmqpFeedbackBatch) -> Result<(), AmqpClientError> {
        self.receiver
            .accept(&batch.delivery)
            .await
            .map_err(|e| AmqpClientError::Link(format!("feedback: {e:?}")))
    }

    /// Closes the link.
    pub async fn close(self) {
        let _ = self.receiver.close().await;
    }
}

/// An AMQP connection over TLS to `host:port` (trusting `ca_file` besides the webpki roots),
/// SASL ANONYMOUS, with one session begun: what every service link here runs on.
///
/// # Errors
/// [`AmqpClientError::Connect`] naming `host:port` and what failed.
pub(crate) async fn open_session(
    host: &str,
    port: u16,
    ca_file: Option<&std::path::Path>,
) -> Result<
    (
        fe2o3_amqp::connection::ConnectionHandle<()>,
        SessionHandle<()>,
    ),
    AmqpClientError,
> {
    let endpoint = format!("{host}:{port}");
    let fail = |reason: String| AmqpClientError::Connect {
        endpoint: endpoint.clone(),
        reason,
    };
    let tls = crate::tls::client_config(ca_file)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| fail(format!("{host} is not a valid tls server name")))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("tls: {e}")))?;
    let mut conn = Connection::builder()
        .container_id(format!("azsim-{}", uuid::Uuid::new_v4().simple()))
        .hostname(host)
        .sasl_profile(SaslProfile::Anonymous)
        .open_with_stream(stream)
        .await
        .map_err(|e| fail(format!("{e:?}")))?;
    let session = Session::begin(&mut conn)
        .await
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok((conn, session))
}

/// The answer of a request/reply node (`$cbs`, `$management`): the `status-code` and
/// `status-description` application properties and the body.
pub(crate) struct NodeReply {
    pub status: i32,
    pub description: String,
    pub body: Body<Value>,
}

/// One request to `node` as AMQP management nodes take it: a sender link to the node, a receiver
/// link from it to a fresh `reply-to` address, the request (`message_id`, the application
/// properties, `value` as the body), its reply accepted, both links closed.
///
/// # Errors
/// Why a link could not be attached or the exchange failed (for the caller's error).
pub(crate) async fn node_request(
    session: &mut SessionHandle<()>,
    node: &str,
    message_id: &str,
    properties: ApplicationProperties,
    value: Value,
) -> Result<NodeReply, String> {
    let reply_to = format!(
        "{}-{}",
        node.trim_start_matches('$'),
        uuid::Uuid::new_v4().simple()
    );
    let mut tx = Sender::attach(session, format!("{reply_to}-requests"), node)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut rx = Receiver::builder()
        .name(format!("{reply_to}-replies"))
        .source(node)
        .target(reply_to.as_str())
        .attach(session)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String(message_id.into())),
            reply_to: Some(reply_to.clone()),
            ..Properties::default()
        })
        .application_properties(properties)
        .value(value)
        .build();
    tx.send(request).await.map_err(|e| format!("{e:?}"))?;
    let reply = rx
        .recv::<Body<Value>>()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let _ = rx.accept(&reply).await;
    let _ = tx.close().await;
    let _ = rx.close().await;
    let app = reply
        .message()
        .application_properties
        .as_ref()
        .map(|a| a.0.clone())
        .unwrap_or_default();
    let status = match app.get("status-code") {
        Some(SimpleValue::Int(s)) => *s,
        _ => 0,
    };
    let description = match app.get("status-description") {
        Some(SimpleValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    Ok(NodeReply {
        status,
        description,
        body: reply.into_body(),
    })
}

/// CBS `put-token` of a SAS `token` for `audience`: a request on `$cbs` and its reply.
///
/// # Errors
/// [`AmqpClientError::Unauthorized`] when the service refuses the token, `Connect` when the
/// exchange fails.
pub(crate) async fn put_token(
    session: &mut SessionHandle<()>,
    audience: &str,
    token: String,
    endpoint: &str,
) -> Result<(), AmqpClientError> {
    let properties = ApplicationProperties::builder()
        .insert("operation", "put-token")
        .insert("type", "servicebus.windows.net:sastoken")
        .insert("name", audience)
        .build();
    let reply = node_request(
        session,
        "$cbs",
        "put-token-1",
        properties,
        Value::String(token),
    )
    .await
    .map_err(|reason| AmqpClientError::Connect {
        endpoint: endpoint.to_owned(),
        reason: format!("cbs: {reason}"),
    })?;
    if reply.status == 200 || reply.status == 202 {
        Ok(())
    } else {
        Err(AmqpClientError::Unauthorized {
            endpoint: endpoint.to_owned(),
            status: reply.status,
            description: reply.description,
        })
    }
}
