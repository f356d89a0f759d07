//! The device side of DPS, whatever the transport: attest a registration (its SAS token against
//! an individual enrollment's keys, or a group's keys derived for the registration id), assign
//! it to this hub (create or update the device in the registry with the enrollment's keys and
//! initial twin), and answer the operation-status polls.
//!
//! The assignment is made when the register request arrives; the register answer is still
//! DPS's `202 assigning` with an operation id and the result comes from the first poll, so
//! devices run the flow they run against Azure.
//!
//! Status codes follow DPS: a token that does not verify, an expired one, a disabled enrollment
//! or a scope that is not this instance's get 401 (errorCode 401002); a registration id that no
//! enrollment knows gets 404 (404201, inferred: Azure answers an unknown symmetric-key
//! registration with 401 or 404 depending on what it can attest).

use azsim_proto::sas::{Resource, Token};
use azsim_proto::secret::Secret;
use serde_json::{Map, Value, json};

use super::store::{self, Kind};
use super::{DpsError, new_etag};
use crate::HubError;
use crate::hub::Hub;
use crate::store::{Identity, q};

/// How long a device should wait before polling, in seconds (DPS says 3; 1 keeps a local
/// run quick, and clients honour it).
pub(crate) const RETRY_AFTER_S: u32 = 1;

/// A DPS registration id: 1-128 ASCII letters, digits and `-._:` (DPS documents lowercase
/// alphanumerics and `-`; accepted more widely here, as the SDKs send what they are given).
pub(crate) fn valid_registration_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// What a device proves itself with: a SAS token (the `Authorization` header or the CONNECT
/// password, when given), or the certificate chain of its TLS handshake (leaf first).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cred<'a> {
    Sas(Option<&'a str>),
    X509(&'a [rustls_pki_types::CertificateDer<'static>]),
}

/// What attestation found: the keys the device gets and where they come from.
struct Attested {
    device_id: String,
    primary: String,
    secondary: String,
    /// How the device authenticates to the hub: SAS, or (X.509 attestation) its certificate's
    /// thumbprint.
    auth: crate::x509::Auth,
    /// The enrollment group that attested it (`None`: an individual enrollment).
    group_id: Option<String>,
    initial_twin: Option<Value>,
    /// `reprovisionPolicy.updateHubAssignment`, `.migrateDeviceData` (both default true).
    update_hub: bool,
    migrate: bool,
}

fn token_verifies(
    token: &Token<'_>,
    keys: &[&str],
    scope: &str,
    registration_id: &str,
    now: u64,
) -> Result<(), azsim_proto::sas::VerifyError> {
    let resource = Resource::DpsRegistration {
        id_scope: scope,
        registration_id,
    }
    .to_string();
    crate::auth::verify_device_token(token, keys, &[resource], now)
}

fn key_at<'a>(e: &'a Value, which: &str) -> Option<&'a str> {
    e.pointer(&format!("/attestation/symmetricKey/{which}"))
        .and_then(Value::as_str)
}

fn enabled(e: &Value) -> bool {
    e.get("provisioningStatus").and_then(Value::as_str) != Some("disabled")
}

fn policy_flags(e: &Value) -> (bool, bool) {
    let flag = |name: &str| {
        e.pointer(&format!("/reprovisionPolicy/{name}"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    (flag("updateHubAssignment"), flag("migrateDeviceData"))
}

fn derive(group_key: &str, registration_id: &str) -> Option<String> {
    let mut out = String::new();
    azsim_proto::sas::derive_group_key(&mut out, group_key, registration_id).ok()?;
    Some(out)
}

/// Checks the token against this instance's enrollments.
async fn attest(
    hub: &Hub,
    scope: &str,
    registration_id: &str,
    cred: Cred<'_>,
) -> Result<Attested, DpsError> {
    if scope != hub.dps.id_scope {
        return Err(DpsError::unauthorized(format!(
            "Unauthorized: id scope '{}' is not this provisioning service's",
            crate::untrusted::Untrusted(scope)
        )));
    }
    if !valid_registration_id(registration_id) {
        return Err(DpsError::bad("invalid registration id"));
    }
    let token = match cred {
        Cred::X509(chain) => return attest_x509(hub, registration_id, chain).await,
        Cred::Sas(token) => token,
    };
    let token = token.ok_or_else(|| DpsError::unauthorized("Unauthorized: no SAS token"))?;
    let token = Token::parse(token)
        .map_err(|e| DpsError::unauthorized(format!("Unauthorized: malformed token: {e}")))?;
    super::ensure_schema(hub).await?;
    let id = registration_id.to_string();
    let (individual, groups) = hub
        .store
        .call(move |c| {
            Ok((
                store::get(c, Kind::Enrollment, &id)?,
                store::list(c, Kind::Group)?,
            ))
        })
        .await?;
    let now = hub.clock().unix_secs();
    if let Some(e) = individual {
        let (Some(p), Some(s)) = (key_at(&e, "primaryKey"), key_at(&e, "secondaryKey")) else {
            return Err(DpsError::unauthorized(
                "Unauthorized: the enrollment has no symmetric key",
            ));
        };
        token_verifies(&token, &[p, s], scope, registration_id, now)
            .map_err(|e| DpsError::unauthorized(format!("Unauthorized: {e}")))?;
        if !enabled(&e) {
            return Err(DpsError::unauthorized(
                "Unauthorized: the enrollment is disabled",
            ));
        }
        let (update_hub, migrate) = policy_flags(&e);
        return Ok(Attested {
            device_id: e
                .get("deviceId")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .unwrap_or(registration_id)
                .to_string(),
            primary: p.to_string(),
            secondary: s.to_string(),
            auth: crate::x509::Auth::Sas,
            group_id: None,
            initial_twin: e.get("initialTwin").cloned(),
            update_hub,
            migrate,
        });
    }
    let mut last_error = None;
    for g in &groups {
        let (Some(p), Some(s)) = (key_at(g, "primaryKey"), key_at(g, "secondaryKey")) else {
            continue;
        };
        let (Some(dp), Some(ds)) = (derive(p, registration_id), derive(s, registration_id)) else {
            continue;
        };
        match token_verifies(&token, &[&dp, &ds], scope, registration_id, now) {
            Ok(()) => {
                if !enabled(g) {
                    return Err(DpsError::unauthorized(
                        "Unauthorized: the enrollment group is disabled",
                    ));
                }
                let (update_hub, migrate) = policy_flags(g);
                return Ok(Attested {
                    device_id: registration_id.to_string(),
                    primary: dp,
                    secondary: ds,
                    auth: crate::x509::Auth::Sas,
                    group_id: g
                        .get("enrollmentGroupId")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    initial_twin: g.get("initialTwin").cloned(),
                    update_hub,
                    migrate,
                });
            }
            // A signature that matches a group but is expired says more than "no match".
            Err(e @ azsim_proto::sas::VerifyError::Expired { .. }) => last_error = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = last_error {
        return Err(DpsError::unauthorized(format!("Unauthorized: {e}")));
    }
    Err(DpsError::new(
        404,
        404201,
        format!(
            "no enrollment for registration id '{registration_id}' (no individual enrollment, \
             and no enrollment group's derived key signs its token)"
        ),
    ))
}

/// X.509 attestation: the individual enrollment's certificate is the leaf, or a group's CA
/// signs the chain; the leaf's CN is the registration id. The device gets the leaf's thumbprint
/// (`selfSigned`: it connects to the hub with the same certificate; a group's CA need not be
/// one the hub holds).
async fn attest_x509(
    hub: &Hub,
    registration_id: &str,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<Attested, DpsError> {
    super::ensure_schema(hub).await?;
    let (id, owned) = (registration_id.to_string(), chain.to_vec());
    let now = hub.clock().unix_secs();
    let found = hub
        .store
        .call(move |c| {
            if let Some(e) = store::get(c, Kind::Enrollment, &id)? {
                let r = if e.pointer("/attestation/type").and_then(Value::as_str) == Some("x509") {
                    super::x509::attest_individual(&e, &owned, &id, now).map_err(|e| e.to_string())
                } else {
                    Err("the enrollment uses symmetric keys, not X.509".to_string())
                };
                return Ok(Some((e, r)));
            }
            let mut last = None;
            for g in store::list(c, Kind::Group)? {
                if g.pointer("/attestation/type").and_then(Value::as_str) != Some("x509") {
                    continue;
                }
                let mut held = Vec::new();
                for name in super::x509::ca_references(&g) {
                    if let Some(ca) = crate::x509::ca_store::get(c, &name)?
                        && let Some(der) = ca.der()
                    {
                        held.push(der);
                    }
                }
                match super::x509::attest_group(&g, &owned, &id, &held, now) {
                    Ok(()) => return Ok(Some((g, Ok(())))),
                    // A CN or validity problem is the device's whatever the group.
                    Err(
                        e @ (crate::x509::X509Error::WrongCn { .. }
                        | crate::x509::X509Error::Expired(_)
                        | crate::x509::X509Error::NotYetValid(_)),
                    ) => {
                        return Ok(Some((g, Err(e.to_string()))));
                    }
                    Err(e) => last = Some(e.to_string()),
                }
            }
            Ok(last.map(|why| (Value::Null, Err(why))))
        })
        .await?;
    let Some((e, verdict)) = found else {
        return Err(DpsError::new(
            404,
            404201,
            format!(
                "no enrollment for registration id '{registration_id}' (no individual enrollment, \
                 and no X.509 enrollment group)"
            ),
        ));
    };
    verdict.map_err(|why| DpsError::unauthorized(format!("Unauthorized: {why}")))?;
    if !enabled(&e) {
        return Err(DpsError::unauthorized(
            "Unauthorized: the enrollment is disabled",
        ));
    }
    let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
    let (update_hub, migrate) = policy_flags(&e);
    Ok(Attested {
        device_id: e
            .get("deviceId")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .unwrap_or(registration_id)
            .to_string(),
        primary: crate::state_dir::generate_key(),
        secondary: crate::state_dir::generate_key(),
        auth: crate::x509::Auth::SelfSigned {
            primary_thumbprint: Some(crate::x509::sha1_thumbprint(leaf)),
            secondary_thumbprint: None,
        },
        group_id: e
            .get("enrollmentGroupId")
            .and_then(Value::as_str)
            .map(str::to_string),
        initial_twin: e.get("initialTwin").cloned(),
        update_hub,
        migrate,
    })
}

/// The initial twin's tags and desired properties (each an object, or empty).
fn initial_twin_parts(t: Option<&Value>) -> (Map<String, Value>, Map<String, Value>) {
    let obj = |p: &str| {
        t.and_then(|t| t.pointer(p))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    (obj("/tags"), obj("/properties/desired"))
}

/// What a register request asks for, beside the attested keys.
struct Request {
    registration_id: String,
    operation_id: String,
    payload: Option<Value>,
    assigned_hub: String,
    now: String,
    now_ms: i64,
}

/// Creates or updates the device and writes the registration state, in one store call.
fn assign(c: &mut rusqlite::Connection, a: Attested, r: Request) -> Result<Value, HubError> {
    let Request {
        registration_id,
        operation_id,
        payload,
        assigned_hub,
        now,
        now_ms,
    } = r;
    let (registration_id, operation_id, now) = (&registration_id, &operation_id, &now);
    let a_group = a.group_id.clone();
    let previous = store::get(c, Kind::Registration, registration_id)?;
    let existing = q::get_identity(c, &a.device_id, None)?;
    let (tags, desired) = initial_twin_parts(a.initial_twin.as_ref());
    let reprovisioned = previous
        .as_ref()
        .is_some_and(|p| p.get("status").and_then(Value::as_str) == Some("assigned"));
    let substatus = match (reprovisioned, a.update_hub, a.migrate) {
        (false, ..) => "initialAssignment",
        (true, false, _) => "reprovisionedToInitialAssignment",
        (true, true, true) => "deviceDataMigrated",
        (true, true, false) => "deviceDataReset",
    };
    let ident = match existing {
        None => Identity {
            device_id: a.device_id.clone(),
            module_id: None,
            primary_key: Secret::new(a.primary),
            secondary_key: Secret::new(a.secondary),
            auth: a.auth,
            enabled: true,
            generation_id: format!("63{}", now_ms.unsigned_abs() % 100_000_000_000_000_000),
            etag_n: 1,
            status_updated: now.to_string(),
            tags,
            desired,
            desired_version: 1,
            desired_updated: now.to_string(),
            reported_version: 1,
            reported_updated: now.to_string(),
            twin_version: 1,
            ..Identity::default()
        },
        Some(mut i) => {
            if a.auth.is_sas() {
                i.primary_key = Secret::new(a.primary);
                i.secondary_key = Secret::new(a.secondary);
            }
            i.auth = a.auth;
            if !i.enabled {
                i.enabled = true;
                i.status_updated = now.to_string();
            }
            i.etag_n += 1;
            if substatus == "deviceDataReset" {
                i.tags = tags;
                i.desired = desired;
                i.desired_version += 1;
                i.desired_updated = now.to_string();
                i.reported = Map::new();
                i.reported_version += 1;
                i.reported_updated = now.to_string();
                i.twin_version += 1;
            }
            i
        }
    };
    q::put_identity(c, &ident)?;
    let created = previous
        .as_ref()
        .and_then(|p| p.get("createdDateTimeUtc").cloned())
        .unwrap_or_else(|| json!(now));
    let mut state = json!({
        "registrationId": registration_id,
        "createdDateTimeUtc": created,
        "assignedHub": assigned_hub,
        "deviceId": ident.device_id,
        "status": "assigned",
        "substatus": substatus,
        "lastUpdatedDateTimeUtc": now,
        "etag": new_etag(),
    });
    if let Some(p) = payload {
        state["payload"] = p;
    }
    store::put_registration(c, registration_id, operation_id, &state)?;
    store::set_registration_group(c, registration_id, a_group.as_deref())?;
    Ok(state)
}

/// A register request (`PUT .../register`, `$dps/registrations/PUT/iotdps-register`): attests,
/// assigns, and answers `202 {"operationId","status":"assigning"}`.
///
/// # Errors
/// The DPS error to answer with.
pub(crate) async fn register(
    hub: &Hub,
    scope: &str,
    registration_id: &str,
    cred: Cred<'_>,
    body: &[u8],
) -> Result<Value, DpsError> {
    super::throttle::check_register(hub, registration_id)?;
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| DpsError::bad(format!("invalid JSON body: {e}")))?
    };
    if !req.is_object() {
        return Err(DpsError::bad("body must be a JSON object"));
    }
    if let Some(r) = req.get("registrationId").and_then(Value::as_str)
        && r != registration_id
    {
        return Err(DpsError::bad(
            "registrationId in the body does not match the request's",
        ));
    }
    let payload = req.get("payload").filter(|p| !p.is_null()).cloned();
    let attested = attest(hub, scope, registration_id, cred).await?;
    let operation_id = format!("5.{:016x}.{}", rand::random::<u64>(), uuid::Uuid::new_v4());
    let request = Request {
        registration_id: registration_id.to_string(),
        operation_id: operation_id.clone(),
        payload,
        assigned_hub: super::assigned_hub(hub),
        now: hub.clock().now_rfc3339(),
        now_ms: hub.now_ms(),
    };
    let device = attested.device_id.clone();
    hub.store
        .call(move |c| assign(c, attested, request))
        .await?;
    tracing::info!(registration_id = %registration_id, device = %device, "dps: registration assigned");
    Ok(json!({"operationId": operation_id, "status": "assigning"}))
}

/// An operation-status poll: `200 {"operationId","status":"assigned","registrationState"}`.
///
/// # Errors
/// The DPS error to answer with: 401 as for a register, 404 for an unknown operation.
pub(crate) async fn operation_status(
    hub: &Hub,
    scope: &str,
    registration_id: &str,
    cred: Cred<'_>,
    operation_id: &str,
) -> Result<Value, DpsError> {
    super::throttle::check_poll(hub, registration_id)?;
    attest(hub, scope, registration_id, cred).await?;
    let (id, op) = (registration_id.to_string(), operation_id.to_string());
    let state = hub
        .store
        .call(move |c| store::registration_by_operation(c, &id, &op))
        .await?
        .ok_or_else(|| {
            DpsError::new(
                404,
                404202,
                format!("no operation '{operation_id}' for registration id '{registration_id}'"),
            )
        })?;
    Ok(json!({
        "operationId": operation_id,
        "status": state["status"],
        "registrationState": state,
    }))
}
