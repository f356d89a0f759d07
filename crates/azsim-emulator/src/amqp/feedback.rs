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
//! New records are noticed through the hub's feedback wake-up (`Hub::wakeups`, bumped when the
//! feedback sweep announces a record) and, for batches whose lock ran out, by polling once a
//! second. Not through the event stream: a subscriber there, which a back end keeps for hours,
//! makes every telemetry message build its stream JSON.

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
    let mut wakeup = hub.wakeups.feedback.subscribe();
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
        // Seen before the store is read: a record announced after this wakes the wait below.
        let _ = wakeup.borrow_and_update();
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
                () = crate::hub::changed(&mut wakeup) => {}
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use fe2o3_amqp::link::{Receiver, Sender};
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::{
        ApplicationProperties, Body, Message, MessageId, Properties,
    };
    use fe2o3_amqp::types::primitives::{SimpleValue, Value};
    use fe2o3_amqp::{Connection, Session};
    use serde_json::json;

    use crate::hub::Hub;
    use crate::store::Store;

    const WAIT: Duration = Duration::from_secs(20);

    async fn recv(rx: &mut Receiver) -> fe2o3_amqp::link::delivery::Delivery<Body<Value>> {
        let d = tokio::time::timeout(WAIT, rx.recv::<Body<Value>>())
            .await
            .expect("a message in time")
            .expect("a message");
        rx.accept(&d).await.expect("accept");
        d
    }

    fn text(b: &Body<Value>) -> String {
        match b {
            Body::Data(d) => d.iter().map(|x| String::from_utf8_lossy(&x.0)).collect(),
            other => format!("{other:?}"),
        }
    }

    /// A back end keeps its feedback and file notification receivers attached for hours: they
    /// must not hold an event-stream subscription (with one, every telemetry message builds its
    /// stream JSON), and they must still be woken when a record is announced.
    #[tokio::test]
    async fn attached_service_receivers_hold_no_event_stream_subscription() {
        let key = crate::state_dir::generate_key();
        let mut cfg = crate::HubConfig::new("unused");
        cfg.in_memory = true;
        let store = Store::open(None, 1000).unwrap();
        let hub = Arc::new(Hub::new(cfg, key.clone().into(), store, 0, 0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let eh = Arc::new(crate::amqp::EventHub::new(&hub, None));
        let server = tokio::spawn(crate::amqp::accept_loop(hub.clone(), eh, listener, None));

        let mut conn = Connection::builder()
            .container_id("wakeup-test")
            .hostname("localhost")
            .sasl_profile(SaslProfile::Anonymous)
            .open(format!("amqp://127.0.0.1:{port}").as_str())
            .await
            .expect("open");
        let mut session = Session::begin(&mut conn).await.expect("session");
        // put-token on $cbs: an owner token for the whole hub.
        let mut cbs_tx = Sender::attach(&mut session, "cbs-requests", "$cbs")
            .await
            .expect("cbs sender");
        let mut cbs_rx = Receiver::builder()
            .name("cbs-replies")
            .source("$cbs")
            .target("cbs-reply-to")
            .attach(&mut session)
            .await
            .expect("cbs receiver");
        let mut token = String::new();
        let se = crate::clock::unix_now() + 600;
        azsim_proto::sas::sign(&mut token, "localhost", &key, se, Some("iothubowner")).unwrap();
        let put = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String("1".into())),
                reply_to: Some("cbs-reply-to".into()),
                ..Properties::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("operation", "put-token")
                    .insert("type", "servicebus.windows.net:sastoken")
                    .insert("name", "localhost")
                    .build(),
            )
            .value(token)
            .build();
        cbs_tx.send(put).await.expect("put-token sent");
        let reply = recv(&mut cbs_rx).await;
        let status = reply
            .message()
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get("status-code").cloned());
        assert_eq!(status, Some(SimpleValue::Int(200)));

        let mut feedback = Receiver::attach(&mut session, "fb", "/messages/serviceBound/feedback")
            .await
            .expect("feedback receiver");
        let mut files = Receiver::attach(
            &mut session,
            "files",
            "/messages/serviceBound/filenotifications",
        )
        .await
        .expect("file notification receiver");

        // A feedback record, announced as the sweep announces it, reaches the link.
        let now = hub.now_ms();
        let rec = json!({"originalMessageId": "m1", "deviceId": "d", "statusCode": "Success"});
        let stored = rec.to_string();
        hub.store
            .call(move |c| {
                c.execute(
                    "INSERT INTO feedback (device_id, json, created_ms) VALUES ('d', ?1, ?2)",
                    rusqlite::params![stored, now],
                )
                .map_err(|e| crate::HubError::Store(e.to_string()))?;
                Ok(())
            })
            .await
            .unwrap();
        hub.emit("d", crate::feedback::event(&rec));
        let batch = recv(&mut feedback).await;
        let body = text(batch.body());
        assert!(body.contains("m1"), "{body}");

        // A file upload notification likewise.
        hub.store
            .call(move |c| {
                crate::store::files::enqueue_notification(c, "{\"blobName\":\"b1\"}", now + 60_000)
            })
            .await
            .unwrap();
        hub.emit("d", json!({"type": "fileUpload", "deviceId": "d"}));
        let note = recv(&mut files).await;
        let body = text(note.body());
        assert!(body.contains("b1"), "{body}");

        // Both links are now waiting for the next record: on the wake-ups, not the stream.
        assert_eq!(hub.wakeups.feedback.receiver_count(), 1);
        assert_eq!(hub.wakeups.file_notifications.receiver_count(), 1);
        assert_eq!(
            hub.events.receiver_count(),
            0,
            "a waiting service link subscribed to the event stream"
        );

        let _ = feedback.close().await;
        let _ = files.close().await;
        let _ = conn.close().await;
        server.abort();
    }
}
