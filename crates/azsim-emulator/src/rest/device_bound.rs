//! The device-side HTTPS C2D calls (api-version 2020-03-13; what `az iot device c2d-message
//! receive|complete|abandon|reject` and the C SDK's HTTP transport use):
//! `GET /devices/{id}/messages/deviceBound` hands out the oldest live message under a lock (the
//! `ETag`), `DELETE .../deviceBound/{etag}` completes it (`?reject` rejects it: dead-lettered
//! with `Rejected` feedback), `POST .../deviceBound/{etag}/abandon` gives it back. A lock that
//! runs out (1 min) makes the message deliverable again; MQTT delivery skips locked messages.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::ApiError;
use crate::HubError;
use crate::clock::azure_time_ms;
use crate::hub::Hub;
use crate::store::{C2dMessage, q};

/// How long a message received over HTTPS stays locked (Azure's C2D lock timeout).
pub const LOCK_MS: i64 = 60_000;

fn db_err(e: rusqlite::Error) -> HubError {
    HubError::Store(e.to_string())
}

/// The oldest deliverable message of `device`, locked under `token` until `now_ms + LOCK_MS`
/// with its delivery count raised; overdue or over-delivered ones are dead-lettered on the way.
pub fn receive(
    c: &Connection,
    device: &str,
    max_delivery_count: u32,
    now_ms: i64,
    token: &str,
) -> Result<Option<C2dMessage>, HubError> {
    q::c2d_expire_due(c, Some(device), now_ms)?;
    c.prepare_cached("DELETE FROM c2d_locks WHERE device_id = ?1 AND locked_until_ms <= ?2")
        .map_err(db_err)?
        .execute(params![device, now_ms])
        .map_err(db_err)?;
    for mut m in q::c2d_pending(c, device)? {
        if m.delivery_count >= max_delivery_count {
            tracing::info!(device, message_id = %crate::untrusted::Untrusted(&m.message_id), "c2d dead-lettered: DeliveryCountExceeded");
            q::c2d_dead_letter(c, m.seq, "DeliveryCountExceeded", now_ms)?;
            continue;
        }
        q::c2d_mark_delivered(c, m.seq)?;
        m.delivery_count += 1;
        c.prepare_cached(
            "INSERT OR REPLACE INTO c2d_locks (seq, device_id, lock_token, locked_until_ms) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db_err)?
        .execute(params![m.seq, device, token, now_ms + LOCK_MS])
        .map_err(db_err)?;
        return Ok(Some(m));
    }
    Ok(None)
}

/// What to do with a locked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Complete,
    Reject,
    Abandon,
}

/// Settle the message `device` holds under `token`; its message id, or `None` when the lock is
/// unknown or ran out.
pub fn settle(
    c: &Connection,
    device: &str,
    token: &str,
    how: Settle,
    now_ms: i64,
) -> Result<Option<String>, HubError> {
    let seq: Option<i64> = c
        .prepare_cached(
            "SELECT seq FROM c2d_locks \
             WHERE device_id = ?1 AND lock_token = ?2 AND locked_until_ms > ?3",
        )
        .map_err(db_err)?
        .query_row(params![device, token, now_ms], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    let Some(seq) = seq else {
        return Ok(None);
    };
    c.prepare_cached("DELETE FROM c2d_locks WHERE seq = ?1")
        .map_err(db_err)?
        .execute(params![seq])
        .map_err(db_err)?;
    // Purged (or the device deleted) while locked: the lock is lost with the message.
    let Some(live) = crate::feedback::live_message(c, seq)? else {
        return Ok(None);
    };
    match how {
        Settle::Complete => {
            q::c2d_complete(c, seq, now_ms)?;
        }
        Settle::Reject => q::c2d_dead_letter(c, seq, "Rejected", now_ms)?,
        Settle::Abandon => {}
    }
    Ok(Some(live.message_id))
}

fn lock_lost() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        412002,
        "DeviceMessageLockLost",
        "the message lock is unknown or has expired",
    )
}

fn set(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

/// `GET /devices/{id}/messages/deviceBound`: 200 with the message (body as sent, system
/// properties as `iothub-*` headers, app properties as `iothub-app-*`, lock in `ETag`), or 204.
pub(crate) async fn receive_handler(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let token = uuid::Uuid::new_v4().to_string();
    let (d, t) = (id.clone(), token.clone());
    let max_dc = hub.cfg.limits.c2d_max_delivery_count;
    let now = hub.now_ms();
    let r = hub
        .store
        .call(move |c| {
            if q::get_identity(c, &d, None)?.is_none() {
                return Ok(None);
            }
            Ok(Some(receive(c, &d, max_dc, now, &t)?))
        })
        .await?;
    let Some(found) = r else {
        return Err(ApiError::device_not_found(&id));
    };
    hub.store.activity().cell(&id).touch(hub.now_us());
    let Some(m) = found else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut r = (StatusCode::OK, m.body.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    set(h, "etag", &format!("\"{token}\""));
    set(h, "iothub-messageid", &m.message_id);
    let mut to = String::new();
    // Writing into a String cannot fail.
    let _ = azsim_proto::topic::write_c2d_to(&mut to, &id);
    set(h, "iothub-to", &to);
    set(h, "iothub-sequencenumber", &m.seq.to_string());
    set(h, "iothub-deliverycount", &m.delivery_count.to_string());
    set(h, "iothub-enqueuedtime", &azure_time_ms(m.enqueued_ms));
    set(h, "iothub-expiry", &azure_time_ms(m.expiry_ms));
    if !m.ack.is_empty() {
        set(h, "iothub-ack", &m.ack);
    }
    for (name, v) in [
        ("iothub-correlationid", &m.correlation_id),
        ("iothub-userid", &m.user_id),
        // Header names for these two are inferred from the message format; Azure's HTTP
        // transport documents only the ones above.
        ("iothub-contenttype", &m.content_type),
        ("iothub-contentencoding", &m.content_encoding),
    ] {
        if let Some(v) = v {
            set(h, name, v);
        }
    }
    for (k, v) in &m.properties {
        set(h, &format!("iothub-app-{k}"), v);
    }
    Ok(r)
}

fn lock_token(raw: &str) -> Result<String, ApiError> {
    let t = raw.trim().trim_matches('"');
    if t.is_empty() || t.len() > 128 {
        return Err(ApiError::bad("etag is invalid"));
    }
    Ok(t.to_string())
}

async fn settle_handler(
    hub: &Hub,
    id: String,
    raw: &str,
    how: Settle,
) -> Result<Response, ApiError> {
    let token = lock_token(raw)?;
    let d = id.clone();
    let now = hub.now_ms();
    let settled = hub
        .store
        .call(move |c| settle(c, &d, &token, how, now))
        .await?;
    let Some(message_id) = settled else {
        return Err(lock_lost());
    };
    hub.store.activity().cell(&id).touch(hub.now_us());
    if how == Settle::Complete {
        hub.emit(
            &id,
            serde_json::json!({"type":"c2dCompleted","deviceId":id,"messageId":message_id}),
        );
    }
    // An abandoned message can go out again at once (to an MQTT connection, too).
    if how == Settle::Abandon {
        hub.wake_c2d(&id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /devices/{id}/messages/deviceBound/{etag}`: complete, or reject with `?reject`.
pub(crate) async fn complete_handler(
    State(hub): State<Arc<Hub>>,
    Path((id, etag)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let reject = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|p| p == "reject" || p.starts_with("reject="));
    let how = if reject {
        Settle::Reject
    } else {
        Settle::Complete
    };
    settle_handler(&hub, id, &etag, how).await
}

/// `POST /devices/{id}/messages/deviceBound/{etag}/abandon`.
pub(crate) async fn abandon_handler(
    State(hub): State<Arc<Hub>>,
    Path((id, etag)): Path<(String, String)>,
    _body: Bytes,
) -> Result<Response, ApiError> {
    settle_handler(&hub, id, &etag, Settle::Abandon).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::memory_db as db;

    fn enqueue(c: &mut Connection, id: &str, ack: &str) {
        let m = C2dMessage {
            seq: 0,
            device_id: "d".into(),
            message_id: id.into(),
            correlation_id: None,
            content_type: None,
            content_encoding: None,
            user_id: None,
            ack: ack.into(),
            properties: Vec::new(),
            body: b"x".to_vec(),
            enqueued_ms: 0,
            expiry_ms: i64::MAX,
            delivery_count: 0,
        };
        q::c2d_enqueue(c, &m, 50).unwrap().unwrap();
    }

    #[test]
    fn a_locked_message_is_skipped_until_settled_or_its_lock_runs_out() {
        let mut c = db();
        enqueue(&mut c, "a", "none");
        enqueue(&mut c, "b", "none");
        let a = receive(&c, "d", 10, 1_000, "t1").unwrap().unwrap();
        assert_eq!((a.message_id.as_str(), a.delivery_count), ("a", 1));
        let b = receive(&c, "d", 10, 1_000, "t2").unwrap().unwrap();
        assert_eq!(b.message_id, "b");
        assert!(receive(&c, "d", 10, 1_000, "t3").unwrap().is_none());
        assert_eq!(
            settle(&c, "d", "t2", Settle::Abandon, 2_000)
                .unwrap()
                .as_deref(),
            Some("b")
        );
        assert!(
            settle(&c, "d", "t2", Settle::Complete, 2_000)
                .unwrap()
                .is_none()
        );
        let b2 = receive(&c, "d", 10, 2_000, "t4").unwrap().unwrap();
        assert_eq!((b2.message_id.as_str(), b2.delivery_count), ("b", 2));
        // t1's lock ran out: "a" is handed out again and t1 no longer settles it.
        let a2 = receive(&c, "d", 10, 1_000 + LOCK_MS, "t5")
            .unwrap()
            .unwrap();
        assert_eq!(a2.message_id, "a");
        assert!(
            settle(&c, "d", "t1", Settle::Complete, 1_000 + LOCK_MS)
                .unwrap()
                .is_none()
        );
        assert!(
            settle(&c, "d", "t5", Settle::Complete, 1_000 + LOCK_MS)
                .unwrap()
                .is_some()
        );
        assert_eq!(q::c2d_depth(&c, "d").unwrap(), 1);
    }

    #[test]
    fn rejecting_dead_letters_with_rejected_feedback() {
        let mut c = db();
        enqueue(&mut c, "r", "negative");
        receive(&c, "d", 10, 1_000, "t").unwrap().unwrap();
        assert!(
            settle(&c, "d", "t", Settle::Reject, 1_001)
                .unwrap()
                .is_some()
        );
        assert_eq!(q::c2d_depth(&c, "d").unwrap(), 0);
        let fb = crate::feedback::receive(
            &c,
            1_002,
            &crate::feedback::Rules::of(&crate::HubLimits::default()),
            "f",
        )
        .unwrap();
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0]["statusCode"], "Rejected");
        assert_eq!(fb[0]["originalMessageId"], "r");
    }
}
