//! File upload notifications over AMQP: the service attaches a receiver link to
//! `/messages/serviceBound/filenotifications` (Node `Client.getFileNotificationReceiver`, C#
//! `ServiceClient.GetFileNotificationReceiver`) and the hub sends the queued notifications
//! (`store/files.rs`), one per message, its body the JSON record IoT Hub documents
//! (`{deviceId, blobUri, blobName, lastUpdatedTime, blobSizeInBytes, enqueuedTimeUtc}`),
//! locked under a token (also the message id) while it is out.
//!
//! As C2D feedback (`feedback.rs`, the model): accepted completes the notification; released,
//! rejected or modified abandons it (delivered again); one left unsettled for its lock
//! (`FileUploadSettings::notification_lock`) is delivered again, and one delivered
//! `notification_max_delivery_count` times, or older than `notification_ttl`, is dropped.
//! New notifications are noticed through the hub's file notification wake-up (`Hub::wakeups`,
//! bumped when an upload completes), and those whose lock ran out by polling once a second.
//! Not through the event stream: a subscriber there, which a back end keeps for hours, makes
//! every telemetry message build its stream JSON.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr};
use fe2o3_amqp::types::messaging::{Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol};

use super::ConnCtx;
use crate::store::files;

/// The path of the file notification node.
pub(crate) const PATH: &str = "messages/serviceBound/filenotifications";
/// The content type of a notification.
const CONTENT_TYPE: &str = "application/json";
/// How often an idle link looks for notifications whose lock ran out.
const POLL: Duration = Duration::from_secs(1);

/// Send file upload notifications on `sender` until the link or the hub ends.
pub(crate) async fn serve(ctx: Arc<ConnCtx>, mut sender: Sender) {
    let hub = ctx.hub.clone();
    let mut shutdown = hub.shutdown.subscribe();
    let mut wakeup = hub.wakeups.file_notifications.subscribe();
    let settings = hub.cfg.file_upload.clone();
    let lock = settings.notification_lock;
    let lock_ms = i64::try_from(lock.as_millis()).unwrap_or(i64::MAX);
    let max_deliveries = settings.notification_max_delivery_count;
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
        // Seen before the store is read: an upload finished after this wakes the wait below.
        let _ = wakeup.borrow_and_update();
        let token = uuid::Uuid::new_v4().to_string();
        let (t, now) = (token.clone(), hub.now_ms());
        let next = hub
            .store
            .call(move |c| files::receive_notification(c, now, lock_ms, max_deliveries, &t))
            .await;
        let json = match next {
            Ok(Some(j)) => j,
            Ok(None) => {
                tokio::select! {
                    () = crate::hub::changed(&mut wakeup) => {}
                    () = tokio::time::sleep(POLL) => {}
                    _ = sender.on_detach() => break,
                    () = crate::hub::until_shutdown(&mut shutdown) => break,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "amqp: file notification receive failed");
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = crate::hub::until_shutdown(&mut shutdown) => break,
                }
                continue;
            }
        };
        let message = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(token.clone())),
                content_type: Some(Symbol::from(CONTENT_TYPE)),
                ..Properties::default()
            })
            .data(Binary::from(json.into_bytes()))
            .build();
        let outcome = tokio::select! {
            r = tokio::time::timeout(lock, sender.send(message)) => r,
            () = crate::hub::until_shutdown(&mut shutdown) => break,
        };
        match outcome {
            Ok(Ok(Outcome::Accepted(_))) => {
                tracing::info!(peer = %ctx.peer, "amqp: file notification completed");
                settle(&hub, token, true).await;
            }
            Ok(Ok(other)) => {
                tracing::info!(peer = %ctx.peer, outcome = ?other, "amqp: file notification abandoned");
                settle(&hub, token, false).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "amqp: file notification link ended");
                settle(&hub, token, false).await;
                break;
            }
            // Unsettled for the whole lock: the lock has run out, it is deliverable again.
            Err(_) => {
                tracing::info!(peer = %ctx.peer, "amqp: file notification not settled within its lock");
            }
        }
    }
    let _ = sender.close().await;
}

/// Complete (accepted) or abandon the notification locked under `token`.
async fn settle(hub: &crate::hub::Hub, token: String, complete: bool) {
    let r = hub
        .store
        .call(move |c| files::settle_notification(c, &token, complete))
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "amqp: file notification settlement not stored");
    }
}
