//! C2D delivery feedback over AMQP: the service attaches a receiver link to
//! `/messages/serviceBound/feedback` (`ServiceClient.GetFeedbackReceiver`) and the hub sends the
//! records of the feedback queue (`crate::feedback`, the same queue as the REST calls) as IoT
//! Hub does: in batches, each one message whose body is the JSON array of records (the REST
//! shape) with content type `application/vnd.microsoft.iothub.feedback.json`, locked under a
//! token (also the message id) while it is out.
//!
//! The client settles each batch: accepted completes it (the records are gone); released,
//! rejected or modified abandons it (visible again for the next batch). A batch left unsettled
//! is abandoned when its lock runs out (`HubLimits::feedback_lock_timeout`), and the link
//! moves on. A record handed out `feedback_max_delivery_count` times without being completed
//! is dropped, as over REST.
//!
//! New records are noticed through the hub's event stream (the feedback sweep announces each
//! one) and, for batches whose lock ran out, by polling once a second.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr};
use fe2o3_amqp::types::messaging::{Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use serde_json::Value;

use super::ConnCtx;
use crate::feedback::{self, Rules};
use crate::store::q;

/// The path of the feedback node.
pub(crate) const PATH: &str = "messages/serviceBound/feedback";
/// The content type of a feedback batch (IoT Hub's).
const CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";
/// How often an idle link looks for records whose lock ran out.
const POLL: Duration = Duration::from_secs(1);

/// Send feedback batches on `sender` until the link or the hub ends.
pub(crate) async fn serve(ctx: Arc<ConnCtx>, mut sender: Sender) {
    let hub = ctx.hub.clone();
    let mut shutdown = hub.shutdown.subscribe();
    let mut events = hub.events.subscribe();
    let rules = Rules::of(&hub.cfg.limits);
    let lock = Duration::from_millis(u64::try_from(rules.lock_ms).unwrap_or(0));
    loop {
        if !ctx
            .claims
            .covers(PATH, crate::auth::Permission::ServiceConnect, ctx.now_s())
        {
            let e = AmqpErr::new(
                AmqpError::UnauthorizedAccess,
                "the connection's token has expired: put-token on $cbs again".to_string(),
                None,
            );
            let _ = sender.close_with_error(e).await;
            return;
        }
        let token = uuid::Uuid::new_v4().to_string();
        let (t, now) = (token.clone(), hub.now_ms());
        let batch = hub
            .store
            .call(move |c| {
                // Overdue messages produce their Expired feedback before anyone asks for it.
                q::c2d_expire_due(c, None, now)?;
                feedback::receive(c, now, &rules, &t)
            })
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "amqp: feedback receive failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = new_feedback(&mut events) => {}
                () = tokio::time::sleep(POLL) => {}
                _ = sender.on_detach() => break,
                () = crate::hub::until_shutdown(&mut shutdown) => break,
            }
            continue;
        }
        let count = batch.len();
        let message = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(token.clone())),
                content_type: Some(Symbol::from(CONTENT_TYPE)),
                ..Properties::default()
            })
            .data(Binary::from(Value::Array(batch).to_string().into_bytes()))
            .build();
        let outcome = tokio::select! {
            r = tokio::time::timeout(lock, sender.send(message)) => r,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        };
        match outcome {
            Ok(Ok(Outcome::Accepted(_))) => {
                tracing::info!(peer = %ctx.peer, records = count, "amqp: feedback batch completed");
                settle(&hub, token, true).await;
            }
            Ok(Ok(other)) => {
                tracing::info!(peer = %ctx.peer, records = count, outcome = ?other, "amqp: feedback batch abandoned");
                settle(&hub, token, false).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "amqp: feedback link ended");
                settle(&hub, token, false).await;
                break;
            }
            // Unsettled for the whole lock: the lock has run out, the records are visible again.
            Err(_) => {
                tracing::info!(peer = %ctx.peer, "amqp: feedback batch not settled within its lock")
            }
        }
    }
    let _ = sender.close().await;
}

/// Complete (accepted) or abandon the batch locked under `token`.
async fn settle(hub: &crate::hub::Hub, token: String, complete: bool) {
    let now = hub.now_ms();
    let r = hub
        .store
        .call(move |c| {
            if complete {
                feedback::complete(c, &token, now)
            } else {
                feedback::abandon(c, &token, now)
            }
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "amqp: feedback settlement not stored");
    }
}

/// Completes when the hub announces a feedback record (or its event stream lagged, which may
/// have hidden one).
async fn new_feedback(events: &mut tokio::sync::broadcast::Receiver<Arc<crate::hub::HubEvent>>) {
    loop {
        match events.recv().await {
            Ok(e) if e.json.contains("\"c2dFeedback\"") => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}
