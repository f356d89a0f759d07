//! A receiver link on a partition: the partition's messages from the start position on, as
//! the client's credit allows (fe2o3's sender waits for credit), then new ones as they are
//! committed (the live tail), until the client detaches.

use std::sync::Arc;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::link::delivery::Sendable;

use super::{EventHub, message};
use crate::amqp::ConnCtx;
use crate::store::eventhub::{Position, read};

/// Messages read from the log per query.
const BATCH: u32 = 256;

/// Serve the partition link to its end.
pub(crate) async fn serve(
    ctx: Arc<ConnCtx>,
    mut sender: Sender,
    eh: Arc<EventHub>,
    part: u32,
    pos: Position,
) {
    let hub = &ctx.hub;
    let mut indexed = eh.subscribe();
    let mut next = match eh.start(hub, part, pos).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "event hub: cannot find the start position");
            let _ = sender.close().await;
            return;
        }
    };
    let mut shutdown = hub.shutdown.subscribe();
    loop {
        indexed.borrow_and_update();
        let rows = hub.store.call(move |c| read(c, part, next, BATCH)).await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "event hub: reading the log failed");
                break;
            }
        };
        if rows.is_empty() {
            tokio::select! {
                r = indexed.changed() => if r.is_err() { break },
                _ = sender.on_detach() => return,
                () = crate::hub::until_shutdown(&mut shutdown) => break,
            }
            continue;
        }
        for row in &rows {
            // Settled when the link allows it (Event Hubs sends at most once; the
            // consumer's position is its checkpoint, not a disposition).
            let sendable = Sendable::builder()
                .message(message::event(row))
                .settled(true)
                .build();
            if let Err(e) = sender.send_batchable(sendable).await {
                tracing::debug!(peer = %ctx.peer, error = %e, "event hub: receiver link ended");
                return;
            }
            next = row.sequence_number + 1;
        }
    }
    let _ = sender.close().await;
}
