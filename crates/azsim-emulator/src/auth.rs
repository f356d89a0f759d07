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
    // An X.509 identity has no keys: an empty key must never verify a token.
    for key in keys.iter().filter(|k| !k.is_empty()) {
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

/// A right a shared access policy grants (Microsoft Learn, "Control access to IoT Hub by using
/// shared access signatures", section "IoT Hub permissions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read access to the identity registry.
    RegistryRead,
    /// Read and write access to the identity registry.
    RegistryWrite,
    /// The service-facing endpoints: D2C receive, C2D send and feedback, twins, methods,
    /// queries and jobs.
    ServiceConnect,
    /// The device-facing endpoints, on behalf of any device.
    DeviceConnect,
}

impl Permission {
    /// Azure's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Permission::RegistryRead => "RegistryRead",
            Permission::RegistryWrite => "RegistryWrite",
            Permission::ServiceConnect => "ServiceConnect",
            Permission::DeviceConnect => "DeviceConnect",
        }
    }
}

/// The shared access policies every IoT hub is created with, and their permissions (same
/// source: "the default shared access policies").
pub const DEFAULT_POLICIES: [(&str, &[Permission]); 5] = {
    use Permission::*;
    [
        (
            "iothubowner",
            &[RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect],
        ),
        ("service", &[ServiceConnect]),
        ("device", &[DeviceConnect]),
        ("registryRead", &[RegistryRead]),
        ("registryReadWrite", &[RegistryRead, RegistryWrite]),
    ]
};

/// One shared access policy: its name, key and rights.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: &'static str,
    pub key: azsim_proto::secret::Secret<String>,
    pub rights: &'static [Permission],
}

impl Policy {
    pub fn allows(&self, p: Permission) -> bool {
        self.rights.contains(&p)
    }
}

/// The hub's policies ([`DEFAULT_POLICIES`] with their keys).
#[derive(Debug, Clone)]
pub struct Policies(Vec<Policy>);

impl Policies {
    /// The default policies with `iothubowner`'s key and the others' from `key_of` (by name).
    pub fn new(
        owner_key: azsim_proto::secret::Secret<String>,
        mut key_of: impl FnMut(&str) -> azsim_proto::secret::Secret<String>,
    ) -> Policies {
        Policies(
            DEFAULT_POLICIES
                .iter()
                .map(|(name, rights)| Policy {
                    name,
                    key: if *name == "iothubowner" {
                        owner_key.clone()
                    } else {
                        key_of(name)
                    },
                    rights,
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.0.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.0.iter()
    }
}

/// Why a policy token may not do something: 401003 with Azure's message (troubleshooting guide
/// "401003 IoTHubUnauthorized": "Authorization rule '*' does not allow access for '*'").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    pub policy: String,
    pub needed: Permission,
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Authorization rule '{}' does not allow access for '{}'",
            self.policy,
            self.needed.name()
        )
    }
}

/// Check a policy token (a SAS token with `skn`, as the hub's REST API and AMQP CBS receive
/// it) for `needed`: a valid token of a known policy, `sr` covering `resource` (the hostname,
/// with or without `:port`, or a path below it), not expired at `now` (Unix seconds).
///
/// # Errors
/// `Err(Err(reason))` when the token does not authenticate, `Err(Ok(NotAllowed))` when it
/// does but its policy lacks the permission.
pub fn check_policy_token(
    policies: &Policies,
    token: &str,
    resources: &[String],
    needed: Permission,
    now: u64,
) -> Result<(), Result<NotAllowed, String>> {
    let token = Token::parse(token).map_err(|e| Err(format!("malformed token: {e}")))?;
    let name = token
        .policy()
        .ok_or_else(|| Err("token has no skn; a policy token is required".to_string()))?;
    let policy = policies
        .get(name)
        .ok_or_else(|| Err("unknown shared access policy (skn)".to_string()))?;
    verify_device_token(&token, &[policy.key.expose()], resources, now)
        .map_err(|e| Err(e.to_string()))?;
    if policy.allows(needed) {
        Ok(())
    } else {
        Err(Ok(NotAllowed {
            policy: policy.name.to_string(),
            needed,
        }))
    }
}

/// What a verified service `Authorization` header may do: `Ok(())`, or refused.
pub(crate) enum ServiceVerdict {
    Allowed,
    /// The token authenticates but its policy lacks the permission (401003).
    NotAllowed(NotAllowed),
    /// The token does not authenticate (401002).
    Refused(ServiceAuthError),
}

/// Verify a REST `Authorization` header: a policy token for the hub (`sr` = hostname, with or
/// without the HTTPS port) whose policy grants `needed`.
pub(crate) fn verify_service(
    header: Option<&str>,
    host: &str,
    port: u16,
    policies: &Policies,
    needed: Permission,
    now: u64,
) -> ServiceVerdict {
    let Some(header) = header else {
        return ServiceVerdict::Refused(ServiceAuthError("missing Authorization header".into()));
    };
    let with_port = format!("{host}:{port}");
    let resources = [host, with_port.as_str()].map(|host| Resource::Hub { host }.to_string());
    match check_policy_token(policies, header, &resources, needed, now) {
        Ok(()) => ServiceVerdict::Allowed,
        Err(Ok(n)) => ServiceVerdict::NotAllowed(n),
        Err(Err(e)) => ServiceVerdict::Refused(ServiceAuthError(e)),
    }
}

/// A device's MQTT or HTTPS token: signed with one of the device's own keys (no `skn`), or with
/// the key of a policy granting DeviceConnect (`skn=device`, `sr={host}/devices/{id}`), as
/// Azure accepts ("a DeviceConnect policy may sign on a device's behalf", spec section 2).
pub(crate) fn verify_device_or_policy_token(
    policies: &Policies,
    token: &Token<'_>,
    device_keys: &[&str],
    resources: &[String],
    now: u64,
) -> Result<(), VerifyError> {
    match token.policy() {
        None => verify_device_token(token, device_keys, resources, now),
        Some(name) => match policies.get(name) {
            Some(p) if p.allows(Permission::DeviceConnect) => {
                verify_device_token(token, &[p.key.expose()], resources, now)
            }
            _ => Err(VerifyError::BadSignature),
        },
    }
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

/// The `model-id` of a CONNECT username (decoded), when it has one that is not empty.
pub(crate) fn model_id(username: &str) -> Option<String> {
    let u = azsim_proto::username::Username::parse(username).ok()?;
    let m = u.model_id?.to_string();
    (!m.is_empty()).then_some(m)
}
