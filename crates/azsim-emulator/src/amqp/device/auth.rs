//! A device's own SAS token in CBS `put-token` (no `skn`; `sr` = `{host}/devices/{id}` or
//! `{host}/devices/{id}/modules/{m}`), checked by the same rules as an MQTT CONNECT's: a
//! registered, enabled identity with SAS authentication, signed with its primary or secondary
//! key, `sr` naming it (ids case-sensitive) on this hub (with or without a port), not expired,
//! and no injected `auth-error` fault.

use azsim_proto::sas::Token;

use crate::amqp::cbs::Claim;
use crate::auth::Permission;
use crate::hub::Hub;

/// What a device token grants: its own identity, for device-facing links.
pub(super) const DEVICE_RIGHTS: &[Permission] = &[Permission::DeviceConnect];

/// The identity an `sr` path names: `devices/{id}[/modules/{m}]` (each id decoded once more, for
/// an SDK that encoded it inside the already encoded `sr`).
fn identity_of(path: &str) -> Option<(String, Option<String>)> {
    let dec = |s: &str| {
        let mut out = String::new();
        azsim_proto::encoding::decode_to(&mut out, s).ok()?;
        (!out.is_empty()).then_some(out)
    };
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["devices", id] => Some((dec(id)?, None)),
        ["devices", id, "modules", m] => Some((dec(id)?, Some(dec(m)?))),
        _ => None,
    }
}

/// Check a device token (see the module doc) at `now` (Unix seconds) and return its claim;
/// `amqps_port` is the AMQPS listener's port, which `sr` may name. The error is a short reason
/// for the client and the log, never the token.
pub(crate) async fn check_device_token(
    hub: &Hub,
    amqps_port: Option<u16>,
    token: &str,
    now: u64,
) -> Result<Claim, String> {
    let t = Token::parse(token).map_err(|e| format!("malformed token: {e}"))?;
    let mut sr = String::new();
    t.write_resource(&mut sr)
        .map_err(|_| "malformed token: sr".to_string())?;
    let rest = sr.split_once("://").map_or(sr.as_str(), |(_, r)| r);
    let (host, path) = rest.split_once('/').ok_or("token sr names no device")?;
    let on_hub = crate::amqp::address::Address {
        host: Some(host),
        path: "",
    }
    .host_is(&hub.cfg.hostname);
    if !on_hub {
        return Err("token audience is not this hub".into());
    }
    let (device, module) =
        identity_of(path.trim_end_matches('/')).ok_or("token sr names no device")?;
    let ident = crate::hub::load_identity(hub, &device, module.as_deref())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "unknown {}",
                if module.is_some() { "module" } else { "device" }
            )
        })?;
    if !ident.enabled {
        return Err("device disabled".into());
    }
    if ident.auth.is_x509() {
        return Err(format!(
            "identity uses x509 authentication ({}): a sas token is not accepted",
            ident.auth.type_name()
        ));
    }
    // `HostName` may carry the port the device dialled: the AMQPS one, the HTTPS one (AMQP
    // over WebSockets) or the MQTT one (a connection string shared with MQTT).
    let mut resources = Vec::new();
    for port in [Some(hub.mqtt_port), Some(hub.https_port), amqps_port]
        .into_iter()
        .flatten()
    {
        resources.extend(crate::auth::identity_resources(
            &hub.cfg.hostname,
            port,
            &device,
            module.as_deref(),
        ));
    }
    crate::auth::verify_device_or_policy_token(
        &hub.policies,
        &t,
        &[ident.primary_key.expose(), ident.secondary_key.expose()],
        &resources,
        now,
    )
    .map_err(|e| e.to_string())?;
    if let Some(reason) = crate::fault::connect_refused(hub, &device) {
        return Err(reason.into());
    }
    Ok(Claim {
        path: super::identity_path(&device, module.as_deref()),
        expires: t.expiry(),
        rights: DEVICE_RIGHTS,
        auth: crate::telemetry::AuthMethod::IdentityKey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sr_path_names_a_device_or_a_module() {
        assert_eq!(identity_of("devices/d1"), Some(("d1".into(), None)));
        assert_eq!(identity_of("devices/d%231"), Some(("d#1".into(), None)));
        assert_eq!(
            identity_of("devices/d1/modules/m1"),
            Some(("d1".into(), Some("m1".into())))
        );
        for bad in ["", "devices", "devices/", "devices/d1/x", "Devices/d1"] {
            assert_eq!(identity_of(bad), None, "{bad}");
        }
    }
}
