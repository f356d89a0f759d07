//! Token checks for devices (MQTT CONNECT) and the service (REST `Authorization`), all through
//! `azsim_proto::sas`. The hub accepts `sr` with the bare hostname or `hostname:port`, because a
//! local hub is reached on a non-default port and clients sign whatever `HostName` they were
//! given.

use azsim_proto::sas::{self, Resource, Token, VerifyError};

/// The resources a device token may name: `{host}/devices/{d}[/modules/{m}]` with and without
/// the endpoint's port.
pub(crate) fn identity_resources(
    host: &str,
    port: u16,
    device: &str,
    module: Option<&str>,
) -> Vec<String> {
    let with_port = format!("{host}:{port}");
    [host, with_port.as_str()]
        .map(|host| {
            match module {
                Some(module_id) => Resource::Module {
                    host,
                    device_id: device,
                    module_id,
                },
                None => Resource::Device {
                    host,
                    device_id: device,
                },
            }
            .to_string()
        })
        .into()
}

/// Verify a device token against either key and any of `resources`. The error is the most
/// specific reason (expired beats mismatch beats bad signature), for the hub's log.
pub(crate) fn verify_device_token(
    token: &Token<'_>,
    keys: &[&str],
    resources: &[String],
    now: u64,
) -> Result<(), VerifyError> {
    let mut best: Option<VerifyError> = None;
    for key in keys {
        for r in resources {
            match sas::verify(token, key, r, now) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let rank = |e: &VerifyError| match e {
                        VerifyError::Expired { .. } => 3,
                        VerifyError::ResourceMismatch => 2,
                        VerifyError::BadSignature => 1,
                        _ => 0,
                    };
                    if best.is_none_or(|b| rank(&e) > rank(&b)) {
                        best = Some(e);
                    }
                }
            }
        }
    }
    Err(best.unwrap_or(VerifyError::BadSignature))
}

/// Why a service request was refused (401).
#[derive(Debug)]
pub(crate) struct ServiceAuthError(pub String);

/// Verify a REST `Authorization` header: an `iothubowner` token for the hub (`sr` = hostname,
/// with or without the HTTPS port).
pub(crate) fn verify_service(
    header: Option<&str>,
    host: &str,
    port: u16,
    owner_key: &str,
    now: u64,
) -> Result<(), ServiceAuthError> {
    let header = header.ok_or_else(|| ServiceAuthError("missing Authorization header".into()))?;
    let token =
        Token::parse(header).map_err(|e| ServiceAuthError(format!("malformed token: {e}")))?;
    match token.policy() {
        Some("iothubowner") => {}
        Some(_) => {
            return Err(ServiceAuthError(
                "unknown shared access policy (skn)".into(),
            ));
        }
        None => {
            return Err(ServiceAuthError(
                "token has no skn; a policy token is required".into(),
            ));
        }
    }
    let with_port = format!("{host}:{port}");
    let resources = [host, with_port.as_str()].map(|host| Resource::Hub { host }.to_string());
    verify_device_token(&token, &[owner_key], &resources, now)
        .map_err(|e| ServiceAuthError(e.to_string()))
}

/// Check the CONNECT username (any of the forms `azsim_proto::username` accepts) against the
/// client id and the hub's hostname (`host` or `host:port`).
pub(crate) fn check_username(
    username: &str,
    hostname: &str,
    client_id: &str,
) -> Result<(), String> {
    let u = azsim_proto::username::Username::parse(username)
        .map_err(|e| format!("bad username: {e}"))?;
    let host_ok = u.host == hostname
        || u.host.strip_prefix(hostname).is_some_and(|p| {
            p.strip_prefix(':')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if !host_ok {
        return Err(format!(
            "username host '{}' is not this hub",
            crate::untrusted::Untrusted(u.host)
        ));
    }
    if !u.matches_client_id(client_id) {
        return Err("username identity does not match the client id".into());
    }
    Ok(())
}
