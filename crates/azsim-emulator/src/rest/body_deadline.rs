//! A request's body must arrive within `HubLimits::http_body_timeout` of its headers: hyper's
//! header timeout ends once the headers are in, so without this a client could send headers
//! and then trickle (or never send) the body, holding the connection and a handler forever.
//!
//! The body is wrapped, not buffered (streaming and the route's own size limits are unchanged):
//! reading it past the deadline fails, which makes the handler's extractor give up, and the
//! request is then answered `408 Request Timeout` (HTTP/1.1: with `Connection: close`, so the
//! connection ends with it; the rest of the body is never read).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use serde_json::json;
use tokio::time::{Instant, Sleep};

/// Whether a request's body ran past its deadline; shared by the body and the response path.
#[derive(Clone, Default)]
pub(super) struct Expired(Arc<AtomicBool>);

impl Expired {
    pub(super) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `req` with its body bounded to `limit` from now, and the flag that says it expired.
pub(super) fn bound(req: Request<Incoming>, limit: Duration) -> (Request<Body>, Expired) {
    let expired = Expired::default();
    let flag = expired.clone();
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Instant::now() + limit,
            sleep: None,
            expired: flag,
        })
    });
    (req, expired)
}

/// The answer to a request whose body did not arrive in time (`secs` the limit).
pub(super) fn timed_out(version: Version, secs: u64) -> Response {
    let body = json!({
        "Message": format!("ErrorCode:RequestTimeout;the request body did not arrive within {secs} s of its headers"),
        "ExceptionMessage": "",
    });
    let mut r = (StatusCode::REQUEST_TIMEOUT, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if version <= Version::HTTP_11 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed the first time the body is not ready (a request without one never needs a timer).
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Expired,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.expired.is_set() {
            return Poll::Ready(Some(Err(axum::Error::new("request body timed out"))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired.0.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new("request body timed out"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
