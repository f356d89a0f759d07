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
use crate::hub::Hub;

/// The token types `put-token` takes: Event Hubs' and IoT Hub's names for a SAS token.
pub(crate) const TOKEN_TYPES: [&str; 2] = [
    "servicebus.windows.net:sastoken",
    "azure-devices.net:sastoken",
];

/// One authorization: everything at or below `path` until `expires` (Unix seconds).
#[derive(Debug, Clone)]
struct Claim {
    path: String,
    expires: u64,
}

/// The claims of one connection.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    claims: Mutex<Vec<Claim>>,
    /// Woken when a claim is added (the connection is authenticated from then on).
    pub added: Notify,
}

impl Claims {
    /// Record a checked claim; a claim for the same path replaces the older one (a renewed
    /// token).
    pub fn add(&self, path: String, expires: u64) {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|k| !k.path.eq_ignore_ascii_case(&path));
        c.push(Claim { path, expires });
        drop(c);
        self.added.notify_waiters();
    }

    /// Whether an unexpired claim covers `path` at `now` (Unix seconds).
    pub fn covers(&self, path: &str, now: u64) -> bool {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|c| now < c.expires && path_covers(&c.path, path))
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

/// The key of a shared access policy of the hub. Today the hub has one policy, `iothubowner`.
fn policy_key<'h>(hub: &'h Hub, policy: &str) -> Option<&'h str> {
    (policy == "iothubowner").then(|| hub.owner_key.expose().as_str())
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

/// Check a SAS token (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`) for `audience` (what
/// `put-token` names; the token's own `sr` when `None`) at `now` (Unix seconds). Returns the
/// path on this hub the token grants and its expiry. The error is a short statement for the
/// client and the log: never the token or its signature.
pub(crate) fn check_token(
    hub: &Hub,
    token: &str,
    audience: Option<&str>,
    now: u64,
) -> Result<(String, u64), String> {
    let t = Token::parse(token).map_err(|e| format!("malformed token: {e}"))?;
    let policy = t
        .policy()
        .ok_or("token has no skn; a shared access policy token is required")?;
    let key = policy_key(hub, policy).ok_or("unknown shared access policy (skn)")?;
    let mut sr = String::new();
    t.write_resource(&mut sr)
        .map_err(|_| "malformed token: sr".to_string())?;
    let audience = audience.unwrap_or(&sr);
    sas::verify(&t, key, audience, now).map_err(|e| e.to_string())?;
    let addr = resource_address(audience);
    if !addr.host_is(&hub.cfg.hostname) {
        return Err("token audience is not this hub".into());
    }
    Ok((addr.path.to_string(), t.expiry()))
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
    match check_token(&ctx.hub, &token, Some(audience), now) {
        Ok((path, expires)) => {
            ctx.claims.add(path, expires);
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
        let c = Claims::default();
        assert!(!c.any());
        c.add("hub".into(), 100);
        assert!(c.covers("hub/ConsumerGroups/$Default/Partitions/0", 99));
        assert!(!c.covers("hub/ConsumerGroups/$Default/Partitions/0", 100));
        assert!(!c.covers("other", 50));
        c.add("hub".into(), 200);
        assert!(
            c.covers("hub", 150),
            "a renewed token replaces the old claim"
        );
        c.add(String::new(), 300);
        assert!(c.covers("messages/devicebound", 250));
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
