//! The service's C2D feedback calls (`/messages/serviceBound/feedback`): receive a batch under a
//! lock token, complete or abandon it. The queue itself is `crate::feedback`.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::Value;

use super::{ApiError, ApiResult, Shared};
use crate::store::q;

const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// The lock token from the URL: quotes (an `ETag` passed on verbatim) are accepted.
fn lock_token(raw: &str) -> Result<String, ApiError> {
    let t = raw.trim().trim_matches('"');
    if t.is_empty() || t.len() > 128 {
        return Err(ApiError::bad("lockToken is invalid"));
    }
    Ok(t.to_string())
}

fn lock_lost(token: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        412002,
        "DeviceMessageLockLost",
        format!("feedback lock {token} is unknown or has expired"),
    )
}

/// `GET /messages/serviceBound/feedback`: 204 when nothing is pending, else 200 with a batch
/// (JSON array of records) locked under the token in `ETag`.
pub(super) async fn receive_feedback(State(hub): State<Shared>) -> ApiResult {
    let token = uuid::Uuid::new_v4().to_string();
    let t = token.clone();
    let rules = crate::feedback::Rules::of(&hub.cfg.limits);
    let now = hub.now_ms();
    let batch = hub
        .store
        .call(move |c| {
            // Overdue messages produce their Expired feedback before anyone asks for it.
            q::c2d_expire_due(c, None, now)?;
            crate::feedback::receive(c, now, &rules, &t)
        })
        .await?;
    if batch.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = Value::Array(batch).to_string();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FEEDBACK_CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{token}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(r)
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`: complete (delete) the batch.
pub(super) async fn complete_feedback(
    State(hub): State<Shared>,
    Path(raw): Path<String>,
) -> ApiResult {
    let token = lock_token(&raw)?;
    let t = token.clone();
    let now = hub.now_ms();
    let n = hub
        .store
        .call(move |c| crate::feedback::complete(c, &t, now))
        .await?;
    if n == 0 {
        return Err(lock_lost(&token));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: make the batch visible again.
pub(super) async fn abandon_feedback(
    State(hub): State<Shared>,
    Path(raw): Path<String>,
) -> ApiResult {
    let token = lock_token(&raw)?;
    let t = token.clone();
    let now = hub.now_ms();
    let n = hub
        .store
        .call(move |c| crate::feedback::abandon(c, &t, now))
        .await?;
    if n == 0 {
        return Err(lock_lost(&token));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
