//! What a connection is allowed to do: the claims its tokens gave it (SASL PLAIN with a token
//! as password, or CBS `put-token` on the `$cbs` node), each a path on this hub and an expiry.
//! Tokens are checked with `azsim_proto::sas` against the hub's shared access policy keys.

use std::sync::{Arc, Mutex};

use azsim_proto::sas::{self, Token};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::Notify;

use super::ConnCtx;
use super::address::{Address, path_covers};
use super::node::{Response, app_prop, body_text};
use crate::auth::Permission;
use crate::hub::Hub;

/// The token types `put-token` takes: Event Hubs' and IoT Hub's names for a SAS token.
pub(crate) const TOKEN_TYPES: [&str; 2] = [
    "servicebus.windows.net:sastoken",
    "azure-devices.net:sastoken",
];

/// One authorization: everything at or below `path` until `expires` (Unix seconds), with
/// the rights of the token's shared access policy.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub path: String,
    pub expires: u64,
    pub rights: &'static [Permission],
    /// How it was proven: a policy's token, an identity's own token or its certificate.
    pub auth: crate::telemetry::AuthMethod,
}

/// The claims of one connection.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    claims: Mutex<Vec<Claim>>,
    /// Woken when a claim is added (the connection is authenticated from then on).
    pub added: Notify,
    /// The certificate chain the client sent in the TLS handshake, if any (leaf first): what
    /// authenticates an X.509 device's links (`device/`).
    client_certs: std::sync::OnceLock<Vec<rustls_pki_types::CertificateDer<'static>>>,
    /// Drops the connection's stream (the KillAmqpConnection and `drop` faults).
    pub kill: std::sync::Arc<super::device::faults::KillSwitch>,
    /// A DPS connection's SASL login and answers (`dps/amqp.rs`).
    pub dps: crate::dps::amqp::Conn,
}

impl Claims {
    /// Keep the client's TLS certificate chain (once, at the handshake).
    pub fn set_client_certs(&self, certs: &[rustls_pki_types::CertificateDer<'static>]) {
        if !certs.is_empty() {
            let _ = self.client_certs.set(certs.to_vec());
        }
    }

    /// The client's TLS certificate chain, if it sent one.
    pub fn client_certs(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.client_certs.get().map(Vec::as_slice)
    }

    /// Record a checked claim; a claim for the same path replaces the older one (a renewed
    /// token).
    pub fn add(&self, claim: Claim) {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|k| !k.path.eq_ignore_ascii_case(&claim.path));
        c.push(claim);
        drop(c);
        self.added.notify_waiters();
    }

    /// Whether an unexpired claim with `right` covers `path` at `now` (Unix seconds).
    pub fn covers(&self, path: &str, right: Permission, now: u64) -> bool {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| now < c.expires && c.rights.contains(&right) && path_covers(&c.path, path))
    }

    /// The latest expiry of the unexpired claims with `DeviceConnect` for the identity at
    /// `path` (`devices/{id}[/modules/{m}]`): its own token (ids compared case-sensitively, as
    /// device ids are; a device's token is not its modules'), or a hub-wide policy token.
    pub fn identity_expiry(&self, path: &str, now: u64) -> Option<u64> {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|c| now < c.expires && c.rights.contains(&Permission::DeviceConnect))
            .filter(|c| c.path.is_empty() || c.path == path)
            .map(|c| c.expires)
            .max()
    }

    /// How the identity at `path` signed in: the claim [`Claims::identity_expiry`] goes by (the
    /// one that lasts longest).
    pub fn identity_auth(&self, path: &str, now: u64) -> Option<crate::telemetry::AuthMethod> {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|c| now < c.expires && c.rights.contains(&Permission::DeviceConnect))
            .filter(|c| c.path.is_empty() || c.path == path)
            .max_by_key(|c| c.expires)
            .map(|c| c.auth)
    }

    /// Whether any token was ever accepted on this connection.
    pub fn any(&self) -> bool {
        !self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Splits a token resource or audience into host and path: `scheme://host/path` as a URL, and
/// without a scheme the first segment is the host (`myhub.azure-devices.net/devices/d1`).
fn resource_address(s: &str) -> Address<'_> {
    if s.contains("://") {
        Address::parse(s)
    } else {
        let (host, path) = s.split_once('/').unwrap_or((s, ""));
        Address {
            host: Some(host),
            path: path.trim_end_matches('/'),
        }
    }
}

/// Check a SAS token (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`) of one of the hub's
/// shared access policies for `audience` (what `put-token` names; the token's own `sr` when
/// `None`) at `now` (Unix seconds). Returns the claim: the path on this hub the token grants,
/// its expiry and its policy's rights. The error is a short statement for the client and the
/// log: never the token or its signature.
pub(crate) fn check_token(
    hub: &Hub,
    token: &str,
    audience: Option<&str>,
    now: u64,
) -> Result<Claim, String> {
    let t = Token::parse(token).map_err(|e| format!("malformed token: {e}"))?;
    let policy = t
        .policy()
        .ok_or("token has no skn; a shared access policy token is required")?;
    let policy = hub
        .policies
        .get(policy)
        .ok_or("unknown shared access policy (skn)")?;
    let key = policy.key.expose();
    let mut sr = String::new();
    t.write_resource(&mut sr)
        .map_err(|_| "malformed token: sr".to_string())?;
    // The signature covers the token's own `sr`; `put-token` may name the same resource
    // another way (uamqp, under azure-iot-hub's C2D, names `https://{host}` for a token whose
    // `sr` is `{host}`), so the `sr` is checked and claimed, and the name must be this hub.
    // IoT Hub signs with the base64-decoded key, Event Hubs (whose SDKs read this hub's Event
    // Hubs-compatible connection string) with the key text's UTF-8 bytes: either proves the
    // holder has the key.
    let as_text = sas::Key::from_bytes(key.as_bytes()).map_err(|e| e.to_string())?;
    sas::verify(&t, key, &sr, now)
        .or_else(|e| match e {
            sas::VerifyError::BadSignature => sas::verify_with_key(&t, &as_text, &sr, now),
            e => Err(e),
        })
        .map_err(|e| e.to_string())?;
    let addr = resource_address(&sr);
    if !addr.host_is(&hub.cfg.hostname)
        || audience.is_some_and(|a| !resource_address(a).host_is(&hub.cfg.hostname))
    {
        return Err("token audience is not this hub".into());
    }
    Ok(Claim {
        path: addr.path.to_string(),
        expires: t.expiry(),
        rights: policy.rights,
        auth: crate::telemetry::AuthMethod::Policy,
    })
}

/// The `$cbs` node's one operation, `put-token`: a SAS token for the audience in `name`;
/// 200 adds the claim to the connection, 401 refuses the token (the connection stays, as the
/// services leave it), 400 a request that is not a `put-token` of a SAS token.
pub(crate) async fn put_token(ctx: Arc<ConnCtx>, request: Message<Body<Value>>) -> Response {
    if app_prop(&request, "operation") != Some("put-token") {
        return Response::error(400, "unknown operation; $cbs takes put-token");
    }
    match app_prop(&request, "type") {
        Some(t) if TOKEN_TYPES.contains(&t) => {}
        _ => return Response::error(400, "unsupported token type; a SAS token is required"),
    }
    let (Some(audience), Some(token)) = (app_prop(&request, "name"), body_text(&request)) else {
        return Response::error(400, "put-token needs name and a token body");
    };
    let now = ctx.hub.clock().unix_ms() / 1000;
    // A device's own token has no skn (see device/auth.rs).
    let checked = if Token::parse(&token).is_ok_and(|t| t.policy().is_none()) {
        super::device::auth::check_device_token(&ctx.hub, ctx.eventhub.amqps_port, &token, now)
            .await
    } else {
        check_token(&ctx.hub, &token, Some(audience), now)
    };
    match checked {
        Ok(claim) => {
            ctx.claims.add(claim);
            Response::ok(Value::Null)
        }
        Err(reason) => {
            tracing::info!(peer = %ctx.peer, %reason, "amqp: put-token refused");
            Response::error(401, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_cover_paths_below_them_until_they_expire() {
        use Permission::{RegistryRead, ServiceConnect};
        let claim = |path: &str, expires, rights| Claim {
            path: path.into(),
            expires,
            rights,
            auth: crate::telemetry::AuthMethod::Policy,
        };
        let c = Claims::default();
        assert!(!c.any());
        c.add(claim("hub", 100, &[ServiceConnect]));
        let p0 = "hub/ConsumerGroups/$Default/Partitions/0";
        assert!(c.covers(p0, ServiceConnect, 99));
        assert!(!c.covers(p0, ServiceConnect, 100));
        assert!(
            !c.covers("hub", RegistryRead, 50),
            "a right the policy lacks"
        );
        assert!(!c.covers("other", ServiceConnect, 50));
        c.add(claim("hub", 200, &[ServiceConnect]));
        assert!(
            c.covers("hub", ServiceConnect, 150),
            "a renewed token replaces the old one"
        );
        c.add(claim("", 300, &[ServiceConnect]));
        assert!(c.covers("messages/devicebound", ServiceConnect, 250));
    }

    #[test]
    fn resources_without_a_scheme_start_with_the_host() {
        let a = resource_address("myhub.azure-devices.net");
        assert_eq!((a.host, a.path), (Some("myhub.azure-devices.net"), ""));
        let a = resource_address("sb://localhost:5671/localhost");
        assert_eq!((a.host, a.path), (Some("localhost:5671"), "localhost"));
        let a = resource_address("localhost/devices/d1");
        assert_eq!(a.path, "devices/d1");
    }
}
