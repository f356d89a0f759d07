//! An Event Hubs consumer of a hub's built-in (Event Hubs-compatible) endpoint, as
//! `azure-eventhub` reads it: AMQP over TLS ([`super::amqp::open_session`]), a CBS `put-token`
//! of an Event Hubs SAS token (`sr=sb://{host}/{entity}`, signed with the key text), a
//! `$management` READ of `com.microsoft:eventhub` for the partition ids, and one receiver
//! link per partition on `{entity}/ConsumerGroups/{group}/Partitions/{p}` with the
//! `apache.org:selector-filter:string` start filter.
//!
//! Where the endpoint is: the Event Hubs-compatible connection string (`Endpoint=sb://...;
//! EntityPath=...`, the local hub's `hub.json` has one), or, given only the hub, IoT Hub's
//! `amqp:link:redirect` answer to `messages/events` on the hub's own host.
//!
//! Each event becomes the JSON object the local hub's SSE stream gives telemetry (`type`,
//! `deviceId`, `moduleId`, `enqueuedTime`, `body`/`bodyBase64`, `systemProperties`,
//! `properties`, `annotations`) plus `partition`. Nothing here prints; errors never hold the
//! key or a token.

use std::path::PathBuf;
use std::time::Duration;

use azsim_proto::connection_string::split_host_port;
use azsim_proto::sas;
use azsim_proto::secret::Secret;
use base64::Engine as _;
use fe2o3_amqp::link::{LinkStateError, Receiver, ReceiverAttachError, RecvError};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, FilterSet, Message, MessageId, Source,
};
use fe2o3_amqp::types::primitives::Value;
use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

use super::amqp::{AMQPS_PORT, AmqpClientError, node_request, open_session, put_token};
use super::target::Target;

/// How long connecting (TCP, TLS, open, CBS, management, attaches) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Lifetime of the CBS token.
const TOKEN_TTL: u64 = 3600;
/// The start-position filter Event Hubs reads.
const SELECTOR: &str = "apache.org:selector-filter:string";
/// Events buffered between the partition links and the printer.
const CHANNEL: usize = 1024;

/// Where an Event Hub is and how to sign for it. `Debug` redacts the key.
#[derive(Debug, Clone)]
pub struct EventHubEndpoint {
    host: String,
    port: u16,
    entity: String,
    auth: Auth,
    ca_file: Option<PathBuf>,
}

/// How a consumer signs its CBS token.
#[derive(Debug, Clone)]
enum Auth {
    /// The Event Hubs connection string's policy: `sr=sb://{host}/{entity}`, keyed with the
    /// key text's bytes as Event Hubs does.
    EventHub { policy: String, key: Secret<String> },
    /// The hub's policy after IoT Hub's redirect, as `az iot hub monitor-events` does: the
    /// hub's own token (`sr={hub host}`) for the hub's name.
    Hub(super::auth::ServiceCredentials),
}

/// Where a consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only events enqueued after the link attaches (`@latest`).
    Latest,
    /// Everything the partition still holds (offset `-1`).
    Start,
}

impl EventHubEndpoint {
    /// Parses an Event Hubs connection string:
    /// `Endpoint=sb://{host}[:{port}]/;SharedAccessKeyName=..;SharedAccessKey=..;EntityPath=..`.
    ///
    /// # Errors
    /// A one-line reason naming the field, never the key.
    pub fn parse(cs: &str, ca_file: Option<PathBuf>) -> Result<Self, String> {
        let mut endpoint = None;
        let (mut policy, mut key, mut entity) = (None, None, None);
        for part in cs.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| "a field without '=' (Endpoint=...;EntityPath=...)".to_string())?;
            match k.trim() {
                "Endpoint" => endpoint = Some(v.trim().to_owned()),
                "SharedAccessKeyName" => policy = Some(v.to_owned()),
                "SharedAccessKey" => key = Some(v.to_owned()),
                "EntityPath" => entity = Some(v.to_owned()),
                // UseDevelopmentEmulator and the like: not needed for AMQPS.
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("Endpoint: missing")?;
        let rest = endpoint
            .strip_prefix("sb://")
            .ok_or("Endpoint: must start with sb://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = split_host_port(authority).ok_or("Endpoint: bad host or port")?;
        if host.is_empty() {
            return Err("Endpoint: no host".into());
        }
        let port = port.unwrap_or(AMQPS_PORT);
        Ok(Self {
            host: host.to_owned(),
            port,
            entity: entity
                .filter(|e| !e.is_empty())
                .ok_or("EntityPath: missing")?,
            auth: Auth::EventHub {
                policy: policy
                    .filter(|p| !p.is_empty())
                    .ok_or("SharedAccessKeyName: missing")?,
                key: Secret::new(
                    key.filter(|k| !k.is_empty())
                        .ok_or("SharedAccessKey: missing")?,
                ),
            },
            ca_file,
        })
    }

    /// `host:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The Event Hub's name.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// The CBS audience and token: for an Event Hubs policy
    /// `SharedAccessSignature sr=sb%3A%2F%2F{host}%2F{entity}&sig=..&se=..&skn=..`, signed as
    /// Event Hubs signs (HMAC keyed with the key text's bytes); for the hub's policy its token.
    fn token(&self) -> Result<(String, String), String> {
        let expiry = azsim_emulator::clock::unix_now() + TOKEN_TTL;
        match &self.auth {
            Auth::EventHub { policy, key } => {
                let key =
                    sas::Key::from_bytes(key.expose().as_bytes()).map_err(|e| e.to_string())?;
                let mut out = String::new();
                let resource = format!("sb://{}/{}", self.host, self.entity);
                sas::sign_with_key(&mut out, &resource, &key, expiry, Some(policy))
                    .map_err(|e| e.to_string())?;
                Ok((resource, out))
            }
            Auth::Hub(creds) => Ok((creds.host().to_owned(), creds.token(expiry)?)),
        }
    }
}

/// A running consumer: the events of every partition it reads, in arrival order.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Result<Json, AmqpClientError>>,
    conn: fe2o3_amqp::connection::ConnectionHandle<()>,
    /// Held so the partition links' session lives as long as the stream.
    session: SessionHandle<()>,
    /// The partitions read.
    pub partitions: Vec<String>,
}

impl EventStream {
    /// The next event; `None` when every link has ended.
    pub async fn next(&mut self) -> Option<Result<Json, AmqpClientError>> {
        self.rx.recv().await
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        self.rx.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.session.end().await;
            let _ = self.conn.close().await;
        })
        .await;
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Consumer group (`$Default`).
    pub group: String,
    /// One partition, or all of them.
    pub partition: Option<String>,
    /// Where to start.
    pub start: StartAt,
}

/// Finds the hub's Event Hubs-compatible endpoint through IoT Hub's `messages/events`
/// redirect on the hub's own AMQPS host, authorized with the hub's policy token.
///
/// # Errors
/// A refusal or connection failure, or an answer that is not a redirect.
pub async fn resolve_redirect(
    target: &Target,
    group: &str,
) -> Result<EventHubEndpoint, AmqpClientError> {
    let (host, port) =
        super::amqp::amqp_endpoint(target).ok_or_else(|| AmqpClientError::Connect {
            endpoint: target.host().to_owned(),
            reason: "the local hub serves no AMQP (started without an AMQP port)".into(),
        })?;
    let endpoint = format!("{host}:{port}");
    let find = async {
        let (mut conn, mut session) = open_session(&host, port, target.ca_file.as_deref()).await?;
        let token = target
            .credentials
            .token(azsim_emulator::clock::unix_now() + TOKEN_TTL)
            .map_err(|e| AmqpClientError::Connect {
                endpoint: endpoint.clone(),
                reason: format!("cannot sign a token: {e}"),
            })?;
        put_token(&mut session, target.host(), token, &endpoint).await?;
        let address = format!("amqps://{host}/messages/events/ConsumerGroups/{group}/Partitions/0");
        let attached = Receiver::builder()
            .name(format!("redirect-{}", uuid::Uuid::new_v4().simple()))
            .source(Source::builder().address(address).build())
            .target("azsim-monitor")
            .attach(&mut session)
            .await;
        // fe2o3 reports a refusal that came with a (null-source) attach on the first receive.
        let refused = match attached {
            Ok(mut r) => {
                match tokio::time::timeout(Duration::from_secs(10), r.recv::<Body<Value>>()).await {
                    Ok(Err(RecvError::LinkStateError(
                        LinkStateError::RemoteDetachedWithError(e)
                        | LinkStateError::RemoteClosedWithError(e),
                    ))) => Ok(e),
                    _ => Err(AmqpClientError::Link(format!(
                        "{endpoint} attached messages/events instead of redirecting to its Event Hub"
                    ))),
                }
            }
            Err(ReceiverAttachError::RemoteClosedWithError(e)) => Ok(e),
            Err(e) => Err(AmqpClientError::Refused(format!(
                "amqp: messages/events: {e:?}"
            ))),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        let err = refused?;
        if err.condition != ErrorCondition::LinkError(LinkError::Redirect) {
            return Err(AmqpClientError::Refused(format!(
                "amqp: messages/events refused: {:?} {}",
                err.condition,
                err.description.unwrap_or_default()
            )));
        }
        let info = err.info.unwrap_or_default();
        let text = |k: &str| match info.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let address = text("address").unwrap_or_default();
        let no_scheme = address
            .split_once("://")
            .map_or(address.as_str(), |(_, r)| r);
        let mut parts = no_scheme.splitn(3, '/');
        let authority = parts.next().unwrap_or_default();
        let entity = parts.next().unwrap_or_default().to_owned();
        let (addr_host, addr_port) = split_host_port(authority).unwrap_or((authority, None));
        let host = text("hostname").unwrap_or_else(|| addr_host.to_owned());
        let port = match info.get("port") {
            Some(Value::Int(p)) => u16::try_from(*p).ok(),
            _ => addr_port,
        }
        .unwrap_or(AMQPS_PORT);
        if entity.is_empty() || host.is_empty() {
            return Err(AmqpClientError::Link(
                "the messages/events redirect names no Event Hub address".into(),
            ));
        }
        Ok(EventHubEndpoint {
            host,
            port,
            entity,
            auth: Auth::Hub(target.credentials.clone()),
            ca_file: target.ca_file.clone(),
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, find)
        .await
        .map_err(|_| AmqpClientError::Connect {
            endpoint,
            reason: "timed out".into(),
        })?
}

/// Connects to `ep`, reads its partition ids and attaches one receiver per partition.
///
/// # Errors
/// [`AmqpClientError`]: connection, token, management or attach failures.
pub async fn consume(
    ep: &EventHubEndpoint,
    opts: &ConsumerOptions,
) -> Result<EventStream, AmqpClientError> {
    let endpoint = ep.endpoint();
    let fail = |reason: String| AmqpClientError::Connect {
        endpoint: endpoint.clone(),
        reason,
    };
    let open = async {
        let (conn, mut session) = open_session(&ep.host, ep.port, ep.ca_file.as_deref()).await?;
        let (audience, token) = ep
            .token()
            .map_err(|e| fail(format!("cannot sign a token: {e}")))?;
        put_token(&mut session, &audience, token, &endpoint).await?;
        let partitions = match &opts.partition {
            Some(p) => vec![p.clone()],
            None => partition_ids(&mut session, &ep.entity, &endpoint).await?,
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        for p in &partitions {
            let address = format!("{}/ConsumerGroups/{}/Partitions/{p}", ep.entity, opts.group);
            let receiver = Receiver::builder()
                .name(format!("monitor-{p}-{}", uuid::Uuid::new_v4().simple()))
                .source(
                    Source::builder()
                        .address(address)
                        .filter(start_filter(opts.start))
                        .build(),
                )
                .target("azsim-monitor")
                .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(300))
                .attach(&mut session)
                .await
                .map_err(|e| {
                    AmqpClientError::Refused(format!("amqp: partition {p} refused: {e:?}"))
                })?;
            tokio::spawn(read_partition(receiver, p.clone(), tx.clone()));
        }
        Ok::<_, AmqpClientError>(EventStream {
            rx,
            conn,
            session,
            partitions,
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| fail("timed out".into()))?
}

/// The selector filter for a start position.
fn start_filter(start: StartAt) -> FilterSet {
    let offset = match start {
        StartAt::Latest => "@latest",
        StartAt::Start => "-1",
    };
    let mut filter = FilterSet::new();
    filter.insert(
        SELECTOR.into(),
        Value::Described(Box::new(serde_amqp::described::Described {
            descriptor: serde_amqp::descriptor::Descriptor::Name(SELECTOR.into()),
            value: Value::String(format!("amqp.annotation.x-opt-offset > '{offset}'")),
        })),
    );
    filter
}

/// Forwards one partition's events until the link or the printer ends.
async fn read_partition(
    mut receiver: Receiver,
    partition: String,
    tx: mpsc::Sender<Result<Json, AmqpClientError>>,
) {
    loop {
        let item = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => {
                let _ = receiver.accept(&delivery).await;
                Ok(to_json(delivery.message(), &partition))
            }
            Err(e) => Err(AmqpClientError::Link(format!(
                "partition {partition}: {e:?}"
            ))),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            let _ = receiver.close().await;
            return;
        }
    }
}

/// `$management` READ of `com.microsoft:eventhub`: the partition ids.
async fn partition_ids(
    session: &mut SessionHandle<()>,
    entity: &str,
    endpoint: &str,
) -> Result<Vec<String>, AmqpClientError> {
    let fail = |reason: String| AmqpClientError::Link(format!("{endpoint} $management: {reason}"));
    let properties = ApplicationProperties::builder()
        .insert("operation", "READ")
        .insert("name", entity)
        .insert("type", "com.microsoft:eventhub")
        .build();
    let reply = node_request(
        session,
        "$management",
        "read-eventhub-1",
        properties,
        Value::Null,
    )
    .await
    .map_err(fail)?;
    if reply.status != 200 {
        return Err(fail(format!("{} {}", reply.status, reply.description)));
    }
    let Body::Value(AmqpValue(Value::Map(map))) = &reply.body else {
        return Err(fail("a reply that is not a map".into()));
    };
    let ids = map
        .iter()
        .find(|(k, _)| matches!(k, Value::String(s) if s == "partition_ids"))
        .map(|(_, v)| v);
    let list: Vec<String> = match ids {
        Some(Value::Array(a)) => a.iter().filter_map(text_of).collect(),
        Some(Value::List(l)) => l.iter().filter_map(text_of).collect(),
        _ => Vec::new(),
    };
    if list.is_empty() {
        return Err(fail("no partition_ids in the reply".into()));
    }
    Ok(list)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An AMQP value as JSON: timestamps as RFC 3339, binaries as base64.
fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::String(s) => json!(s),
        Value::Symbol(s) => json!(s.as_str()),
        Value::Long(n) => json!(n),
        Value::Int(n) => json!(n),
        Value::Short(n) => json!(n),
        Value::Byte(n) => json!(n),
        Value::Ulong(n) => json!(n),
        Value::Uint(n) => json!(n),
        Value::Ushort(n) => json!(n),
        Value::Ubyte(n) => json!(n),
        Value::Double(n) => json!(f64::from(*n)),
        Value::Float(n) => json!(f32::from(*n)),
        Value::Timestamp(t) => json!(timestamp(t.milliseconds())),
        Value::Binary(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        other => json!(format!("{other:?}")),
    }
}

fn timestamp(ms: i64) -> String {
    azsim_emulator::clock::rfc3339_ns(ms.saturating_mul(1_000_000))
}

fn message_id_json(id: &MessageId) -> Json {
    match id {
        MessageId::String(s) => json!(s),
        MessageId::Ulong(n) => json!(n),
        MessageId::Uuid(u) => json!(format!("{u:?}")),
        MessageId::Binary(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// The SSE stream's telemetry object for an event read from partition `partition`.
pub fn to_json(m: &Message<Body<Value>>, partition: &str) -> Json {
    let mut ann = Map::new();
    if let Some(a) = &m.message_annotations {
        for (k, v) in &a.0 {
            let key = match k {
                OwnedKey::Symbol(s) => s.as_str().to_owned(),
                OwnedKey::Ulong(n) => n.to_string(),
            };
            ann.insert(key, value_json(v));
        }
    }
    let mut sys = Map::new();
    if let Some(p) = &m.properties {
        if let Some(id) = &p.message_id {
            sys.insert("message-id".into(), message_id_json(id));
        }
        if let Some(id) = &p.correlation_id {
            sys.insert("correlation-id".into(), message_id_json(id));
        }
        if let Some(u) = &p.user_id {
            sys.insert("user-id".into(), json!(String::from_utf8_lossy(u)));
        }
        if let Some(c) = &p.content_type {
            sys.insert("content-type".into(), json!(c.as_str()));
        }
        if let Some(c) = &p.content_encoding {
            sys.insert("content-encoding".into(), json!(c.as_str()));
        }
    }
    let mut app = Map::new();
    if let Some(a) = &m.application_properties {
        for (k, v) in &a.0 {
            let v = value_json(&Value::from(v.clone()));
            if k == "iothub-creation-time-utc" {
                sys.insert("creation-time".into(), v);
            } else {
                app.insert(k.clone(), v);
            }
        }
    }
    let bytes: Vec<u8> = match &m.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(AmqpValue(Value::String(s))) => s.clone().into_bytes(),
        Body::Value(AmqpValue(Value::Binary(b))) => b.to_vec(),
        _ => Vec::new(),
    };
    let (body, body_b64) = match String::from_utf8(bytes) {
        Ok(s) => (json!(s), Json::Null),
        Err(e) => (
            Json::Null,
            json!(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        ),
    };
    let device = ann.get("iothub-connection-device-id").cloned();
    let module = ann.get("iothub-connection-module-id").cloned();
    let enqueued = ann
        .get("x-opt-enqueued-time")
        .or_else(|| ann.get("iothub-enqueuedtime"))
        .cloned();
    json!({
        "type": "telemetry", "deviceId": device, "moduleId": module,
        "enqueuedTime": enqueued, "body": body, "bodyBase64": body_b64,
        "systemProperties": sys, "properties": app, "annotations": ann,
        "partition": partition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_event_hubs_connection_string() {
        let ep = EventHubEndpoint::parse(
            "Endpoint=sb://localhost:5671/;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5;EntityPath=hub1",
            None,
        )
        .unwrap();
        assert_eq!(ep.endpoint(), "localhost:5671");
        assert_eq!(ep.entity(), "hub1");
        let ep = EventHubEndpoint::parse(
            "Endpoint=sb://ihsuprod.servicebus.windows.net/;SharedAccessKeyName=service;SharedAccessKey=a2V5;EntityPath=iothub-ehub-x",
            None,
        )
        .unwrap();
        assert_eq!(ep.endpoint(), "ihsuprod.servicebus.windows.net:5671");
        let e = EventHubEndpoint::parse(
            "Endpoint=sb://h/;SharedAccessKeyName=p;SharedAccessKey=k",
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("EntityPath"), "{e}");
        let e = EventHubEndpoint::parse(
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=secret",
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("Endpoint") && !e.contains("secret"), "{e}");
    }
}
