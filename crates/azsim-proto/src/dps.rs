//! The device side of a DPS registration over MQTT, sans-IO: what to send after the CONNACK
//! (the SUBSCRIBE to [`topic::DPS_RESPONSE_FILTER`], the register request, the operation-status
//! polls after each `retry-after`) and what the answers mean (assigned to a hub as a device id,
//! or refused with DPS's status and error). The driver owns the connection and the clock: it
//! calls [`Registration::handle_connected`], [`Registration::handle_subscribed`],
//! [`Registration::handle_response`] and sends what [`Registration::next_request`] writes,
//! sleeping until [`Registration::poll_timeout`].
//!
//! The CONNECT itself is the driver's: username [`crate::username::write_dps_username`],
//! client id the registration id, password a token for
//! [`crate::sas::Resource::DpsRegistration`] with `skn` [`crate::sas::DPS_POLICY`] (or, for
//! X.509 attestation, no password and the device certificate in the TLS handshake).
//!
//! What it does not do: TPM attestation, parse the registration state beyond the hub,
//! device id, substatus and the error fields, decode JSON string escapes (a string value with a
//! `\` is reported as missing).

use core::fmt::{self, Write as _};

use crate::{json, topic};

/// Seconds between polls when a 202 says nothing (DPS's documented default).
pub const DEFAULT_RETRY_AFTER_S: u32 = 3;
/// The longest operation id kept.
pub const MAX_OPERATION_ID: usize = 128;

/// What [`Registration::next_request`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SUBSCRIBE (QoS 1) to the filter written into `topic`.
    Subscribe,
    /// PUBLISH (QoS 1) the register request.
    Register,
    /// PUBLISH (QoS 1) the operation-status query.
    Poll,
}

/// Where the registration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Disconnected,
    /// Connected: the SUBSCRIBE is due.
    Subscribe,
    /// SUBSCRIBE sent, SUBACK awaited.
    Subscribing,
    /// The register request is due.
    Register,
    /// A request with this rid is out, its answer awaited.
    Awaiting(u32),
    /// The poll (or, before any operation id, the register request again) is due at this time
    /// (Unix ms).
    PollAt(u64),
    /// Assigned or refused.
    Finished,
}

/// The device's registration as DPS saw it: `registrationState` of the final answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment<'p> {
    /// `assignedHub`: the hub's host name.
    pub assigned_hub: &'p str,
    /// `deviceId`: the device's id in that hub.
    pub device_id: &'p str,
    /// `substatus` (`initialAssignment`, `deviceDataMigrated`, ...), when given.
    pub substatus: Option<&'p str>,
}

/// A refusal: the status of the answer and DPS's error fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal<'p> {
    /// The response topic's status (a registration with `status` `failed` reports 200).
    pub status: u16,
    /// `errorCode` (`401002`), when given.
    pub error_code: Option<u64>,
    /// `message` (or `errorMessage`), when given.
    pub message: Option<&'p str>,
}

/// What an answer meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'p> {
    /// Not for the request in flight (another rid, a late duplicate): ignored.
    Ignored,
    /// Still assigning: poll after this many seconds.
    Assigning {
        /// The wait before the next poll, seconds.
        retry_after_s: u32,
    },
    /// Throttled (429) or failed on DPS's side (5xx): the same request (the register, when
    /// no operation id came yet, else the poll) goes again after this many seconds.
    Throttled {
        /// The response's status.
        status: u16,
        /// The wait before the request goes again, seconds.
        retry_after_s: u32,
    },
    /// Assigned: connect to the hub as the device.
    Assigned(Assignment<'p>),
    /// Refused or failed.
    Refused(Refusal<'p>),
}

/// Why an answer could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpsError {
    /// The topic is not a DPS response.
    Topic(topic::TopicError),
    /// A 2xx answer whose body is not the documented JSON.
    Body,
    /// The operation id is longer than [`MAX_OPERATION_ID`].
    OperationIdTooLong,
}

impl fmt::Display for DpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(e) => write!(f, "dps response topic: {e}"),
            Self::Body => f.write_str("dps response body is not the documented json"),
            Self::OperationIdTooLong => f.write_str("dps operation id too long"),
        }
    }
}

impl core::error::Error for DpsError {}

/// One registration's exchange.
#[derive(Debug)]
pub struct Registration<'a> {
    registration_id: &'a str,
    state: State,
    next_rid: u32,
    operation_id: heapless::String<MAX_OPERATION_ID>,
}

/// The string value at `path`, when it has no escapes.
fn json_str<'p>(doc: &'p [u8], path: &[&str]) -> Option<&'p str> {
    let raw = json::find(doc, path)?;
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    core::str::from_utf8(inner).ok()
}

impl<'a> Registration<'a> {
    /// A registration of `registration_id` (the CONNECT's client id too).
    pub fn new(registration_id: &'a str) -> Self {
        Self {
            registration_id,
            state: State::Disconnected,
            next_rid: 1,
            operation_id: heapless::String::new(),
        }
    }

    /// Whether it is assigned or refused.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The CONNACK accepted the connection: the SUBSCRIBE is next.
    pub fn handle_connected(&mut self) {
        self.state = State::Subscribe;
    }

    /// The SUBACK came: the register request is next.
    pub fn handle_subscribed(&mut self) {
        if self.state == State::Subscribing {
            self.state = State::Register;
        }
    }

    /// When the next poll is due (Unix ms), if one is waiting.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::PollAt(t) => Some(t),
            _ => None,
        }
    }

    /// Writes the next request due at `now_ms` into `topic` and `payload`; `payload` of a
    /// register request carries `custom_payload` (raw JSON, the caller's) as `"payload"`.
    ///
    /// # Errors
    /// Only the writers' own errors.
    pub fn next_request<T, P>(
        &mut self,
        now_ms: u64,
        topic: &mut T,
        payload: &mut P,
        custom_payload: Option<&str>,
    ) -> Result<Option<Request>, fmt::Error>
    where
        T: fmt::Write + ?Sized,
        P: fmt::Write + ?Sized,
    {
        let mut rid_text = heapless::String::<10>::new();
        let state = match self.state {
            // A retry before any operation id (a throttled register) registers again.
            State::PollAt(t) if now_ms >= t && self.operation_id.is_empty() => State::Register,
            s => s,
        };
        match state {
            State::Subscribe => {
                topic.write_str(topic::DPS_RESPONSE_FILTER)?;
                self.state = State::Subscribing;
                Ok(Some(Request::Subscribe))
            }
            State::Register => {
                let rid = self.take_rid();
                write!(rid_text, "{rid}")?;
                topic::write_dps_register(topic, &rid_text)?;
                write!(
                    payload,
                    "{{\"registrationId\":{}",
                    json::Quoted(self.registration_id)
                )?;
                if let Some(p) = custom_payload {
                    write!(payload, ",\"payload\":{p}")?;
                }
                payload.write_str("}")?;
                self.state = State::Awaiting(rid);
                Ok(Some(Request::Register))
            }
            State::PollAt(t) if now_ms >= t => {
                let rid = self.take_rid();
                write!(rid_text, "{rid}")?;
                topic::write_dps_query(topic, &rid_text, &self.operation_id)?;
                payload.write_str("{}")?;
                self.state = State::Awaiting(rid);
                Ok(Some(Request::Poll))
            }
            _ => Ok(None),
        }
    }

    fn take_rid(&mut self) -> u32 {
        let rid = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        rid
    }

    /// An answer on `$dps/registrations/res/...`, received at `now_ms`.
    ///
    /// # Errors
    /// [`DpsError`] when the topic or a success body is malformed (the registration stays
    /// where it was; the driver decides whether to give up).
    pub fn handle_response<'p>(
        &mut self,
        now_ms: u64,
        response_topic: &str,
        body: &'p [u8],
    ) -> Result<Outcome<'p>, DpsError> {
        let r = topic::parse_dps_response(response_topic).map_err(DpsError::Topic)?;
        let State::Awaiting(rid) = self.state else {
            return Ok(Outcome::Ignored);
        };
        let mut rid_text = heapless::String::<10>::new();
        let _ = write!(rid_text, "{rid}");
        if !r.rid.eq_decoded(&rid_text) {
            return Ok(Outcome::Ignored);
        }
        let retry = |r: &topic::DpsResponse<'_>| r.retry_after.unwrap_or(DEFAULT_RETRY_AFTER_S);
        if r.status == 429 || r.status >= 500 {
            let s = retry(&r);
            self.schedule(now_ms, s);
            return Ok(Outcome::Throttled {
                status: r.status,
                retry_after_s: s,
            });
        }
        if !(200..300).contains(&r.status) {
            self.state = State::Finished;
            return Ok(Outcome::Refused(Refusal {
                status: r.status,
                error_code: json::find_u64(body, &["errorCode"]),
                message: json_str(body, &["message"]),
            }));
        }
        let status = json_str(body, &["status"]).ok_or(DpsError::Body)?;
        if let Some(op) = json_str(body, &["operationId"]) {
            self.operation_id.clear();
            self.operation_id
                .push_str(op)
                .map_err(|()| DpsError::OperationIdTooLong)?;
        }
        match status {
            "assigning" | "unassigned" => {
                if self.operation_id.is_empty() {
                    return Err(DpsError::Body);
                }
                let s = retry(&r);
                self.schedule(now_ms, s);
                Ok(Outcome::Assigning { retry_after_s: s })
            }
            "assigned" => {
                let hub = json_str(body, &["registrationState", "assignedHub"]);
                let device = json_str(body, &["registrationState", "deviceId"]);
                let (Some(assigned_hub), Some(device_id)) = (hub, device) else {
                    return Err(DpsError::Body);
                };
                self.state = State::Finished;
                Ok(Outcome::Assigned(Assignment {
                    assigned_hub,
                    device_id,
                    substatus: json_str(body, &["registrationState", "substatus"]),
                }))
            }
            _ => {
                self.state = State::Finished;
                Ok(Outcome::Refused(Refusal {
                    status: r.status,
                    error_code: json::find_u64(body, &["registrationState", "errorCode"]),
                    message: json_str(body, &["registrationState", "errorMessage"]),
                }))
            }
        }
    }

    fn schedule(&mut self, now_ms: u64, retry_after_s: u32) {
        self.state = State::PollAt(now_ms.saturating_add(u64::from(retry_after_s) * 1000));
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    fn next(
        r: &mut Registration<'_>,
        now: u64,
        custom: Option<&str>,
    ) -> Option<(Request, String, String)> {
        let (mut t, mut p) = (String::new(), String::new());
        r.next_request(now, &mut t, &mut p, custom)
            .unwrap()
            .map(|k| (k, t, p))
    }

    #[test]
    fn a_registration_subscribes_registers_polls_after_retry_after_and_is_assigned() {
        let mut r = Registration::new("dev-1");
        assert_eq!(next(&mut r, 0, None), None, "nothing before the CONNACK");
        r.handle_connected();
        let (k, t, _) = next(&mut r, 0, None).unwrap();
        assert_eq!(
            (k, t.as_str()),
            (Request::Subscribe, topic::DPS_RESPONSE_FILTER)
        );
        assert_eq!(next(&mut r, 0, None), None, "waits for the SUBACK");
        r.handle_subscribed();
        let (k, t, p) = next(&mut r, 0, Some(r#"{"fw":"1"}"#)).unwrap();
        assert_eq!(k, Request::Register);
        assert_eq!(t, "$dps/registrations/PUT/iotdps-register/?$rid=1");
        assert_eq!(p, r#"{"registrationId":"dev-1","payload":{"fw":"1"}}"#);
        // Another rid is not ours.
        let o = r
            .handle_response(10, "$dps/registrations/res/202/?$rid=7", b"{}")
            .unwrap();
        assert_eq!(o, Outcome::Ignored);
        let o = r
            .handle_response(
                10,
                "$dps/registrations/res/202/?$rid=1&retry-after=2",
                br#"{"operationId":"5.ab.cd","status":"assigning"}"#,
            )
            .unwrap();
        assert_eq!(o, Outcome::Assigning { retry_after_s: 2 });
        assert_eq!(r.poll_timeout(), Some(2010));
        assert_eq!(next(&mut r, 2009, None), None);
        let (k, t, _) = next(&mut r, 2010, None).unwrap();
        assert_eq!(k, Request::Poll);
        assert_eq!(
            t,
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=5.ab.cd"
        );
        let body = br#"{"operationId":"5.ab.cd","status":"assigned","registrationState":
            {"registrationId":"dev-1","assignedHub":"hub.example:8884","deviceId":"d1",
             "status":"assigned","substatus":"initialAssignment"}}"#;
        let o = r
            .handle_response(2020, "$dps/registrations/res/200/?$rid=2", body)
            .unwrap();
        assert_eq!(
            o,
            Outcome::Assigned(Assignment {
                assigned_hub: "hub.example:8884",
                device_id: "d1",
                substatus: Some("initialAssignment"),
            })
        );
        assert!(r.is_finished());
    }

    proptest::proptest! {
        /// Whatever a DPS (or anything on the wire) answers, the exchange does not panic, and
        /// a 2xx answer it accepts left it either assigned, finished, or with a poll scheduled.
        #[test]
        fn any_answer_is_handled_without_panicking(
            status in 100u16..600,
            rid in 0u32..4,
            retry in proptest::option::of(0u32..100),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            json_body in "\\{\"(operationId|status|registrationState)\":\"[a-z.0-9]{0,12}\"\\}",
        ) {
            for body in [body.as_slice(), json_body.as_bytes()] {
                let mut r = Registration::new("dev-1");
                r.handle_connected();
                next(&mut r, 0, None);
                r.handle_subscribed();
                next(&mut r, 0, None);
                let mut topic = std::format!("$dps/registrations/res/{status}/?$rid={rid}");
                if let Some(s) = retry {
                    topic.push_str(&std::format!("&retry-after={s}"));
                }
                if let Ok(Outcome::Assigning { .. }) = r.handle_response(0, &topic, body) {
                    proptest::prop_assert!(r.poll_timeout().is_some());
                }
            }
        }
    }

    #[test]
    fn refusals_carry_dps_status_and_error_and_throttling_waits() {
        let mut r = Registration::new("dev-1");
        r.handle_connected();
        next(&mut r, 0, None);
        r.handle_subscribed();
        next(&mut r, 0, None);
        let o = r
            .handle_response(0, "$dps/registrations/res/429/?$rid=1&retry-after=5", b"")
            .unwrap();
        assert_eq!(
            o,
            Outcome::Throttled {
                status: 429,
                retry_after_s: 5
            }
        );
        // Throttled before any operation id: the register request goes again.
        assert_eq!(next(&mut r, 4999, None), None);
        let (k, t, _) = next(&mut r, 5000, None).unwrap();
        assert_eq!(
            (k, t.as_str()),
            (
                Request::Register,
                "$dps/registrations/PUT/iotdps-register/?$rid=2"
            )
        );
        let o = r
            .handle_response(
                5000,
                "$dps/registrations/res/401/?$rid=2",
                br#"{"errorCode":401002,"trackingId":"t","message":"Unauthorized","timestampUtc":"x"}"#,
            )
            .unwrap();
        assert_eq!(
            o,
            Outcome::Refused(Refusal {
                status: 401,
                error_code: Some(401002),
                message: Some("Unauthorized"),
            })
        );
        // Garbage: a bad topic, a success without the documented body.
        let mut r = Registration::new("x");
        r.handle_connected();
        next(&mut r, 0, None);
        r.handle_subscribed();
        next(&mut r, 0, None);
        assert!(matches!(
            r.handle_response(0, "$iothub/twin/res/200/?$rid=1", b"{}"),
            Err(DpsError::Topic(_))
        ));
        assert_eq!(
            r.handle_response(0, "$dps/registrations/res/202/?$rid=1", b"not json"),
            Err(DpsError::Body)
        );
        assert_eq!(
            r.handle_response(
                0,
                "$dps/registrations/res/202/?$rid=1",
                br#"{"status":"assigning"}"#
            ),
            Err(DpsError::Body)
        );
    }
}
