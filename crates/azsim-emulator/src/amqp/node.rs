//! Request/response nodes (`$cbs`, `$management`): the client attaches a sender link to the
//! node for its requests and a receiver link from it for the replies, and names that receiver
//! link's target address in each request's `reply-to`. Replies carry the request's message id
//! as their correlation id and the outcome in the application properties `status-code` and
//! `status-description`, as Event Hubs and IoT Hub answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use tokio::sync::{Notify, mpsc};

use super::ConnCtx;

/// A reply message.
pub(crate) type Reply = Message<AmqpValue<Value>>;

/// How long a reply waits for the link it goes to (the client attaches it with the request
/// link; a request can be read before that attach is).
const REPLY_LINK_WAIT: Duration = Duration::from_secs(5);

/// The reply links of one connection, by their target address.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    links: Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>,
    changed: Notify,
}

impl Replies {
    /// Whether a reply link with target `address` is attached.
    fn has(&self, address: &str) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(address)
    }

    fn register(&self, address: String, tx: mpsc::UnboundedSender<Reply>) {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, tx);
        self.changed.notify_waiters();
    }

    /// Forget the link at `address` if it is still `tx` (a later link may have taken the
    /// address over).
    fn remove(&self, address: &str, tx: &mpsc::UnboundedSender<Reply>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(address).is_some_and(|t| t.same_channel(tx)) {
            links.remove(address);
        }
    }

    /// Send `reply` on the link whose target is `to`, waiting a little for it to be attached.
    async fn send(&self, to: &str, reply: Reply) -> bool {
        let deadline = tokio::time::Instant::now() + REPLY_LINK_WAIT;
        loop {
            let changed = self.changed.notified();
            if let Some(tx) = self.links.lock().unwrap_or_else(|p| p.into_inner()).get(to) {
                return tx.send(reply).is_ok();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

impl Replies {
    /// The address of the connection's one reply link (waiting a little for it to be
    /// attached); `None` when there is none or more than one.
    async fn sole(&self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + REPLY_LINK_WAIT;
        loop {
            let changed = self.changed.notified();
            {
                let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
                match links.len() {
                    0 => {}
                    1 => return links.keys().next().cloned(),
                    _ => return None,
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// A reply link: forwards the node's replies to the client until either side closes it.
pub(crate) async fn serve_reply_link(ctx: Arc<ConnCtx>, mut sender: Sender, address: String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    ctx.replies.register(address.clone(), tx.clone());
    loop {
        tokio::select! {
            r = rx.recv() => {
                let Some(reply) = r else { break };
                if let Err(e) = sender.send(reply).await {
                    tracing::debug!(error = %e, "amqp: reply not delivered");
                    break;
                }
            }
            _ = sender.on_detach() => break,
        }
    }
    ctx.replies.remove(&address, &tx);
    let _ = sender.close().await;
}

/// What a node answers a request with.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: i32,
    pub description: String,
    pub body: Value,
}

impl Response {
    pub fn ok(body: Value) -> Response {
        Response {
            status: 200,
            description: "OK".into(),
            body,
        }
    }

    pub fn error(status: i32, description: impl Into<String>) -> Response {
        Response {
            status,
            description: description.into(),
            body: Value::Null,
        }
    }
}

/// An application property of a request as text (string or symbol).
pub(crate) fn app_prop<'m, B>(msg: &'m Message<B>, name: &str) -> Option<&'m str> {
    match msg.application_properties.as_ref()?.0.get(name)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The request's body as text (an `amqp-value` string, or one UTF-8 data section).
pub(crate) fn body_text(msg: &Message<Body<Value>>) -> Option<String> {
    match &msg.body {
        Body::Value(AmqpValue(Value::String(s))) => Some(s.clone()),
        Body::Data(batch) => batch
            .iter()
            .next()
            .and_then(|d| String::from_utf8(d.0.to_vec()).ok()),
        _ => None,
    }
}

/// Serve the requests of one request link: each is accepted, answered by `answer` and the reply
/// sent to its `reply-to`.
pub(crate) async fn serve_requests<F, Fut>(ctx: Arc<ConnCtx>, mut receiver: Receiver, answer: F)
where
    F: Fn(Arc<ConnCtx>, Message<Body<Value>>) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut shutdown = ctx.hub.shutdown.subscribe();
    // The node's address (the request link's target): where replies go without a reply-to.
    let node = receiver.target().as_ref().and_then(|t| t.address.clone());
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "amqp: request link ended");
                break;
            }
        };
        let _ = receiver.accept(&delivery).await;
        let request = delivery.into_message();
        let props = request.properties.clone().unwrap_or_default();
        let response = answer(ctx.clone(), request).await;
        // uamqp's management client (azure-uamqp-c, under azure-iot-hub's C2D) sets no
        // reply-to: the services answer it on the connection's one reply link.
        // pyAMQP (azure-eventhub) sets none either: its reply link's target is the node's
        // own address (`$cbs`, `$management`).
        let reply_to = match props.reply_to {
            // rhea (azure-iothub, azure-iot-device-amqp) names `cbs` as reply-to but attaches
            // its reply link with no target (keyed by the node, see `route`): the services
            // answer on the link from the node.
            Some(r)
                if !ctx.replies.has(&r) && node.as_ref().is_some_and(|n| ctx.replies.has(n)) =>
            {
                node.clone().unwrap_or(r)
            }
            Some(r) => r,
            None => match &node {
                Some(n) if ctx.replies.has(n) => n.clone(),
                _ => match (ctx.replies.sole().await, &node) {
                    (Some(r), _) => r,
                    (None, Some(n)) => n.clone(),
                    (None, None) => {
                        tracing::debug!("amqp: request without reply-to: no answer");
                        continue;
                    }
                },
            },
        };
        let correlation = props.message_id.or(props.correlation_id);
        let reply = reply_message(response, correlation);
        if !ctx.replies.send(&reply_to, reply).await {
            tracing::debug!(
                reply_to = %crate::untrusted::Untrusted(&reply_to),
                "amqp: no reply link for a request"
            );
        }
    }
    let _ = receiver.close().await;
}

fn reply_message(r: Response, correlation: Option<MessageId>) -> Reply {
    let mut app = ApplicationProperties::default();
    app.0
        .insert("status-code".into(), SimpleValue::Int(r.status));
    app.0.insert(
        "status-description".into(),
        SimpleValue::String(r.description),
    );
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Properties::default()
        })
        .application_properties(app)
        .value(r.body)
        .build()
}
