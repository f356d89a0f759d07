//! DPS over AMQP, on the hub's AMQPS listener (5671) and its AMQP WebSocket path
//! (`wss://{host}:443/$iothub/websocket`), as the device SDKs provision over it (Node
//! `azure-iot-provisioning-device-amqp` Amqp / AmqpWs, C# `ProvisioningTransportHandlerAmqp`).
//! A DPS connection is told apart from a hub one by what it names, as on MQTT:
//!
//! - authentication: a symmetric-key device opens with SASL `PLAIN`, user name
//!   `{idScope}/registrations/{registrationId}` and its SAS token as the password ([`plain`]
//!   keeps it for the requests); an X.509 device opens without SASL and is known by the client
//!   certificate of its TLS handshake (AMQPS, or the HTTPS connection under the WebSocket);
//! - links: a receiver and a sender both on `{idScope}/registrations/{registrationId}`
//!   ([`parse_address`]); the device sends its requests on its sender, each with a
//!   `correlation-id` and the application property `iotdps-operation-type`:
//!   `iotdps-register` (body: `{"registrationId","payload"}` as a data section, or empty;
//!   `iotdps-forceRegistration` is read by nobody here: every register assigns again) or
//!   `iotdps-get-operationstatus` (`iotdps-operation-id`);
//! - answers: the request is settled `accepted` and the answer comes on the device's receiver
//!   with the request's `correlation-id`, DPS's JSON as a data section (MQTT's and HTTPS's
//!   bodies) and `retry-after` while the operation is `assigning` (also as `Retry-After`: the
//!   Node SDK reads the one, the C# SDK the other). A refusal is the request settled `rejected`
//!   with the condition of its status (401 `amqp:unauthorized-access`, 404 `amqp:not-found`,
//!   429 `com.microsoft:device-container-throttled`, ...) and DPS's error body as the
//!   description, which is what the C# SDK parses (`errorCode` / 1000 is the status) and how
//!   Azure refuses (`{"errorCode":401002,...,"message":"IotHubUnauthorizedAccess"}`); a 429's
//!   `retry-after` is in the error's info.
//!
//! The credential is checked against the enrollments on every request (`register.rs`, the same
//! attestation, assignment, records and `--tier` throttling as MQTT and HTTPS), so a wrong key
//! opens the connection and gets its 401 on the register request. Like a DPS MQTT connection,
//! a DPS AMQP connection never holds a hub token: it lives within the hub's connect deadline,
//! enough for a register and its polls.

use std::sync::{Arc, Mutex, OnceLock};

use azsim_proto::secret::Secret;
use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, Fields};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use serde_json::Value as Json;
use tokio::sync::mpsc;

use super::DpsError;
use super::register::{self, Cred, RETRY_AFTER_S};
use crate::amqp::ConnCtx;
use crate::hub::Hub;
use crate::untrusted::Untrusted;

/// The application property naming a request's operation.
const OPERATION_TYPE: &str = "iotdps-operation-type";
/// The application property carrying the operation id of a status request.
const OPERATION_ID: &str = "iotdps-operation-id";
const REGISTER: &str = "iotdps-register";
const GET_OPERATION_STATUS: &str = "iotdps-get-operationstatus";

/// A DPS link's address: `{idScope}/registrations/{registrationId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub scope: String,
    pub registration_id: String,
}

/// The DPS address a link names (the shape of a DPS token's resource, read by
/// `azsim_proto`), or `None` for any other address.
pub(crate) fn parse_address(path: &str) -> Option<Address> {
    match azsim_proto::sas::Resource::parse(path)? {
        azsim_proto::sas::Resource::DpsRegistration {
            id_scope,
            registration_id,
        } => Some(Address {
            scope: id_scope.to_string(),
            registration_id: registration_id.to_string(),
        }),
        _ => None,
    }
}

/// The SASL PLAIN login of a symmetric-key device.
struct Login {
    address: Address,
    token: Secret<String>,
}

/// One AMQP connection's DPS state: the SASL login (if any) and the queue of answers for the
/// device's receiver link (answers wait there until it is attached).
pub(crate) struct Conn {
    login: OnceLock<Login>,
    tx: mpsc::UnboundedSender<Message<Data>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Message<Data>>>>,
}

impl Default for Conn {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Conn {
            login: OnceLock::new(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dps::amqp::Conn")
            .field("login", &self.login.get().map(|l| &l.address))
            .finish_non_exhaustive()
    }
}

/// SASL PLAIN with a DPS user name: `None` when `user` is not `{idScope}/registrations/{id}`
/// (the hub's own PLAIN then), else whether the exchange succeeds: the password must be a SAS
/// token; whether it signs for an enrollment is each request's question.
pub(crate) fn plain(conn: &Conn, user: &str, password: &str) -> Option<Result<(), String>> {
    let address = parse_address(user)?;
    if azsim_proto::sas::Token::parse(password).is_err() {
        return Some(Err("DPS password is not a SAS token".into()));
    }
    tracing::info!(registration_id = %Untrusted(&address.registration_id), "dps: AMQP SASL PLAIN login");
    let login = Login {
        address,
        token: Secret::new(password.to_string()),
    };
    Some(
        conn.login
            .set(login)
            .map_err(|_| "a second SASL login".to_string()),
    )
}

/// Serves one DPS link to its end: the device's sender carries requests, its receiver answers.
pub(crate) async fn serve(ctx: Arc<ConnCtx>, address: Address, link: LinkEndpoint) {
    match link {
        LinkEndpoint::Receiver(r) => requests(ctx, address, r).await,
        LinkEndpoint::Sender(s) => answers(ctx, s).await,
    }
}

/// Sends the connection's answers on the device's receiver link until it or the hub ends.
async fn answers(ctx: Arc<ConnCtx>, mut sender: Sender) {
    let conn = &ctx.claims.dps;
    let taken = conn.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut rx) = taken else {
        let e = AmqpErr::new(
            AmqpError::ResourceLocked,
            "the connection already has a DPS receiver link".to_string(),
            None,
        );
        let _ = sender.close_with_error(e).await;
        return;
    };
    let mut shutdown = ctx.hub.shutdown.subscribe();
    loop {
        tokio::select! {
            Some(m) = rx.recv() => match sender.send_batchable(m).await {
                // The outcome is the device's to give; the answer is not sent again.
                Ok(fut) => drop(tokio::spawn(fut)),
                Err(e) => {
                    tracing::debug!(peer = %ctx.peer, error = %e, "dps: AMQP answer link ended");
                    break;
                }
            },
            _ = sender.on_detach() => break,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        }
    }
    let _ = sender.close().await;
}

/// Answers the requests the device sends on `receiver` until it or the hub ends.
async fn requests(ctx: Arc<ConnCtx>, address: Address, mut receiver: Receiver) {
    let mut shutdown = ctx.hub.shutdown.subscribe();
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "dps: AMQP request link ended");
                break;
            }
        };
        let msg = delivery.message();
        let correlation = msg
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone().or_else(|| p.message_id.clone()));
        let settled = match answer(&ctx, &address, msg).await {
            Ok((body, retry_after)) => {
                let r = receiver.accept(&delivery).await;
                let _ = ctx
                    .claims
                    .dps
                    .tx
                    .send(reply(body, correlation, retry_after));
                r
            }
            Err(e) => {
                tracing::info!(peer = %ctx.peer, registration_id = %Untrusted(&address.registration_id), status = e.status, reason = %e.message, "dps: AMQP request refused");
                receiver.reject(&delivery, rejection(&ctx.hub, &e)).await
            }
        };
        if let Err(e) = settled {
            tracing::debug!(peer = %ctx.peer, error = %e, "dps: AMQP disposition not sent");
            break;
        }
    }
    let _ = receiver.close().await;
}

/// The request's answer (DPS's JSON and its `retry-after`), or the DPS error it is refused with.
async fn answer(
    ctx: &ConnCtx,
    address: &Address,
    msg: &Message<Body<Value>>,
) -> Result<(Json, Option<u32>), DpsError> {
    let login = ctx.claims.dps.login.get();
    let certs = ctx.claims.client_certs().filter(|c| !c.is_empty());
    let cred = match (login, certs) {
        (Some(l), _) if l.address != *address => {
            return Err(DpsError::unauthorized(
                "Unauthorized: the link's registration is not the SASL user name's",
            ));
        }
        (Some(l), _) => Cred::Sas(Some(l.token.expose())),
        (None, Some(chain)) => Cred::X509(chain),
        (None, None) => Cred::Sas(None),
    };
    let (hub, scope, id) = (&ctx.hub, &address.scope, &address.registration_id);
    match app_prop(msg, OPERATION_TYPE) {
        Some(REGISTER) => {
            let body = body_bytes(&msg.body)?;
            let v = register::register(hub, scope, id, cred, &body).await?;
            Ok((v, Some(RETRY_AFTER_S)))
        }
        Some(GET_OPERATION_STATUS) => {
            let op = app_prop(msg, OPERATION_ID)
                .ok_or_else(|| DpsError::bad(format!("no {OPERATION_ID} application property")))?;
            let v = register::operation_status(hub, scope, id, cred, op).await?;
            let assigning = v.get("status").and_then(Json::as_str) == Some("assigning");
            Ok((v, assigning.then_some(RETRY_AFTER_S)))
        }
        Some(other) => Err(DpsError::bad(format!(
            "unknown {OPERATION_TYPE} '{}'",
            Untrusted(other)
        ))),
        None => Err(DpsError::bad(format!(
            "no {OPERATION_TYPE} application property"
        ))),
    }
}

/// An application property as text (string or symbol).
fn app_prop<'m>(msg: &'m Message<Body<Value>>, name: &str) -> Option<&'m str> {
    match msg.application_properties.as_ref()?.0.get(name)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A register request's body: its data sections (Node, C#), an `amqp-value` string or binary,
/// or nothing (C# without a payload).
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, DpsError> {
    match body {
        Body::Data(batch) => Ok(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(AmqpValue(Value::String(s))) => Ok(s.as_bytes().to_vec()),
        Body::Value(AmqpValue(Value::Binary(b))) => Ok(b.to_vec()),
        Body::Value(AmqpValue(Value::Null)) | Body::Empty => Ok(Vec::new()),
        _ => Err(DpsError::bad(
            "the register body is not a JSON data section",
        )),
    }
}

/// Both spellings of the polling interval: Node reads `retry-after`, C# `Retry-After`.
const RETRY_AFTER_KEYS: [&str; 2] = ["retry-after", "Retry-After"];

fn reply(body: Json, correlation: Option<MessageId>, retry_after: Option<u32>) -> Message<Data> {
    let mut app = ApplicationProperties::default();
    if let Some(s) = retry_after {
        for k in RETRY_AFTER_KEYS {
            app.0.insert(k.into(), SimpleValue::String(s.to_string()));
        }
    }
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            content_type: Some("application/json".into()),
            ..Properties::default()
        })
        .application_properties(app)
        .data(Binary::from(body.to_string().into_bytes()))
        .build()
}

/// The AMQP condition of a DPS status, as the SDKs translate them (Node `translateError`).
fn condition(status: u16) -> fe2o3_amqp::types::definitions::ErrorCondition {
    use fe2o3_amqp::types::definitions::ErrorCondition as C;
    let custom = |s: &str| C::Custom(fe2o3_amqp::types::primitives::Symbol::from(s));
    match status {
        400 => custom("com.microsoft:argument-error"),
        401 => C::AmqpError(AmqpError::UnauthorizedAccess),
        403 => C::AmqpError(AmqpError::ResourceLimitExceeded),
        404 => C::AmqpError(AmqpError::NotFound),
        412 => custom("com.microsoft:precondition-failed"),
        429 => custom("com.microsoft:device-container-throttled"),
        _ => C::AmqpError(AmqpError::InternalError),
    }
}

/// The rejected outcome's error: the status's condition, DPS's error body as the description,
/// a 429's `retry-after` in the info.
fn rejection(hub: &Hub, e: &DpsError) -> AmqpErr {
    let info = e.retry_after.map(|s| {
        let mut f = Fields::new();
        for k in RETRY_AFTER_KEYS {
            f.insert(k.into(), Value::String(s.to_string()));
        }
        f
    });
    AmqpErr::new(condition(e.status), e.body(hub).to_string(), info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dps_address_names_its_scope_and_registration() {
        assert_eq!(
            parse_address("0ne00ABCDEF/registrations/dev-1"),
            Some(Address {
                scope: "0ne00ABCDEF".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(parse_address("0ne00ABCDEF/registrations/"), None);
        assert_eq!(parse_address("/registrations/dev-1"), None);
        assert_eq!(parse_address("0ne00ABCDEF/registrations/dev-1/x"), None);
        assert_eq!(parse_address("devices/dev-1/messages/events"), None);
    }

    #[test]
    fn plain_takes_a_dps_user_with_a_token_and_leaves_other_users() {
        let conn = Conn::default();
        assert!(plain(&conn, "iothubowner@sas.root.localhost", "x").is_none());
        assert!(matches!(
            plain(&conn, "0ne00ABCDEF/registrations/dev-1", "not a token"),
            Some(Err(_))
        ));
        let token = "SharedAccessSignature sr=0ne00ABCDEF%2Fregistrations%2Fdev-1&sig=abc&se=1&skn=registration";
        assert!(matches!(
            plain(&conn, "0ne00ABCDEF/registrations/dev-1", token),
            Some(Ok(()))
        ));
        // The login's token never shows in Debug.
        assert!(!format!("{conn:?}").contains("sig="));
    }

    #[test]
    fn refusals_carry_the_status_condition() {
        use fe2o3_amqp::types::definitions::ErrorCondition as C;
        assert_eq!(condition(401), C::AmqpError(AmqpError::UnauthorizedAccess));
        assert_eq!(condition(404), C::AmqpError(AmqpError::NotFound));
        assert_eq!(condition(500), C::AmqpError(AmqpError::InternalError));
    }
}
