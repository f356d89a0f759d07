//! What to tell the user when the hub refuses a connection (CONNACK 5).
//!
//! The hub only says "not authorized". azsim knows the token it sent, so it checks what it can:
//! the token against the device's registered keys (when service credentials for the same hub are
//! at hand: `IOTHUB_CONNECTION_STRING`, or the local hub's `hub.json`) with the same
//! `azsim_proto::sas::verify` the local hub uses, whether the device exists and is enabled, and
//! the clock against the hub's HTTP `Date`. It prints conclusions, never the key or the token.

use std::path::PathBuf;

use azsim_emulator::clock::unix_now;
use azsim_proto::sas::{self, Resource};
use azsim_proto::secret::Secret;

use crate::service::client::ServiceClient;
use crate::service::target::{Target, TargetInputs};

/// What the driver knows about the refused attempt.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Hub host name (no port).
    pub host: String,
    /// Device id.
    pub device_id: String,
    /// Module id.
    pub module_id: Option<String>,
    /// MQTT port connected to.
    pub port: u16,
    /// The token sent: signed by azsim, or the fixed one from the connection string (kept in
    /// memory only to inspect it).
    pub token: Option<Secret<String>>,
    /// Whether `token` came from the connection string (`SharedAccessSignature=`).
    pub fixed_token: bool,
    /// The `skn` the token should carry: `Some(None)` for a device or module key,
    /// `Some(Some(policy))` for a policy key, `None` when unknown (a fixed token).
    pub policy: Option<Option<String>>,
    /// The CA file in use, for the REST call.
    pub ca_file: Option<PathBuf>,
    /// The local hub state dir to look for `hub.json` in.
    pub state_dir: PathBuf,
}

/// A sentence or two on why the hub refused; `code` is the CONNACK code's text.
pub async fn explain(r: &Refusal, code: &str) -> String {
    let mut out = format!("the hub refused the connection: {code}");
    let findings = findings(r, unix_now()).await;
    out.push_str(": ");
    out.push_str(&findings.join("; "));
    out
}

async fn findings(r: &Refusal, now: u64) -> Vec<String> {
    let mut f = Vec::new();
    let Some(token) = r.token.as_ref().map(|t| t.expose().as_str()) else {
        f.push("azsim sent no token (the connection string has no key)".into());
        return f;
    };
    let resource = match &r.module_id {
        Some(m) => Resource::Module {
            host: &r.host,
            device_id: &r.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: &r.host,
            device_id: &r.device_id,
        },
    };
    let expected = resource.to_string();
    let whose = if r.fixed_token {
        "the connection string's SharedAccessSignature"
    } else {
        "the token azsim sent"
    };
    // What `azsim token inspect` finds without a key: expiry, sr, skn.
    let policy = r.policy.as_ref().map(|p| p.as_deref());
    let inspected = crate::cmd::token::explain_str(token, None, Some(&expected), policy, now);
    // A local hub on another port also accepts `sr` naming `host:port` (what `azsim token` signs
    // for `HostName=localhost:PORT`).
    let host_port = format!("{}:{}", r.host, r.port);
    let expected_with_port = match &r.module_id {
        Some(m) => Resource::Module {
            host: &host_port,
            device_id: &r.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: &host_port,
            device_id: &r.device_id,
        },
    }
    .to_string();
    let with_port =
        crate::cmd::token::explain_str(token, None, Some(&expected_with_port), policy, now);
    let inspected = if with_port.problems.len() < inspected.problems.len() {
        with_port
    } else {
        inspected
    };
    for p in &inspected.problems {
        f.push(format!("{whose}: {p}"));
    }
    let parsed = sas::Token::parse(token.trim()).ok();
    let Some((client, target)) = service_client(r) else {
        if let Some(other) = local_hub_host_mismatch(r) {
            f.push(other);
        }
        if f.is_empty() {
            f.push(format!(
                "{whose} is well formed, unexpired and signed for {resource}; the likely causes are a wrong key, a device that is not registered or is disabled, or a clock that is off (set IOTHUB_CONNECTION_STRING to let azsim check the key against the registry)"
            ));
        }
        return f;
    };
    let skew = clock_skew(&target).await.filter(|s| s.abs() > MAX_SKEW);
    if let Some(skew) = skew {
        f.push(skew_finding(skew, parsed.map(|t| t.expiry()), now));
    }
    match client.get_device(&r.device_id).await {
        Ok(dev) => {
            if dev["status"].as_str() == Some("disabled") {
                f.push(format!(
                    "device {} is disabled in the registry",
                    r.device_id
                ));
            }
            let keys: Vec<&str> = [
                dev.pointer("/authentication/symmetricKey/primaryKey"),
                dev.pointer("/authentication/symmetricKey/secondaryKey"),
            ]
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
            match parsed {
                _ if keys.is_empty() => {
                    f.push("the device has no symmetric keys (it uses X.509)".into());
                }
                // A policy token is checked by the hub against that policy's key, which the
                // registry entry does not hold.
                Some(t) if t.policy().is_none() => {
                    let matches = keys.iter().any(|k| {
                        sas::diagnose(&t, Some(k), None, now)
                            .is_ok_and(|d| d.signature_matches == Some(true))
                    });
                    if matches {
                        f.push(format!(
                            "{whose} is signed with the device's registered key, so the key is right"
                        ));
                    } else {
                        f.push(format!(
                            "wrong key: the signature of {whose} matches neither of the device's registered keys (copy the connection string again)"
                        ));
                    }
                }
                _ => {}
            }
        }
        Err(e) if e.azure().is_some_and(|a| a.status == 404) => {
            f.push(format!(
                "device {} is not registered in {} (create it with `azsim device create {}`)",
                r.device_id, r.host, r.device_id
            ));
        }
        Err(e) if skew.is_some() && e.azure().is_some_and(|a| a.status == 401) => f.push(
            "azsim could not check the key: the hub refuses its service token for the same reason"
                .into(),
        ),
        Err(e) => f.push(format!("azsim could not look the device up: {e}")),
    }
    if f.iter().all(|x| x.ends_with("so the key is right")) {
        f.push("no problem found with the token or the registry entry".into());
    }
    f
}

/// Clock differences up to this many seconds are normal (HTTP `Date` has 1 s resolution, and
/// the hub allows some leeway).
const MAX_SKEW: i64 = 30;

fn skew_finding(skew: i64, expiry: Option<u64>, now: u64) -> String {
    let dir = if skew > 0 { "ahead of" } else { "behind" };
    let mut s = format!(
        "clock skew: this machine's clock is {} s {dir} the hub's",
        skew.abs()
    );
    let hub_now = now as i64 - skew;
    match expiry {
        Some(se) if (se as i64) <= hub_now => s.push_str(&format!(
            ", so by the hub's clock the token was already {} when it was sent (fix the clock, e.g. enable NTP)",
            crate::cmd::token::relative(i128::from(se) - i128::from(hub_now))
        )),
        _ if skew > 0 => s.push_str(", so tokens look issued in the future (fix the clock, e.g. enable NTP)"),
        _ => s.push_str(", so tokens expire early (fix the clock, e.g. enable NTP)"),
    }
    s
}

/// With no service credentials for `r.host`: if the local hub's `hub.json` is there under another
/// host name, the token names the wrong hub (e.g. `HostName=127.0.0.1` for `localhost`).
fn local_hub_host_mismatch(r: &Refusal) -> Option<String> {
    let info = azsim_emulator::HubInfo::load(&r.state_dir).ok()?;
    (info.mqtt_port == r.port && !info.hostname.eq_ignore_ascii_case(&r.host)).then(|| {
        format!(
            "wrong resource: the token is signed for host {}, but the local hub in {} is {} (use HostName={} in the connection string)",
            r.host,
            r.state_dir.display(),
            info.hostname,
            info.hostname
        )
    })
}

fn service_client(r: &Refusal) -> Option<(ServiceClient, Target)> {
    let env_cs = std::env::var(crate::service::target::ENV_CONNECTION_STRING)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let target = Target::resolve_with(
        TargetInputs {
            connection_string: None,
            ca: None,
            state_dir: Some(r.state_dir.clone()),
        },
        env_cs,
        r.ca_file.clone(),
    )
    .ok()?;
    // Only the same hub's registry says anything about this device.
    (target.host_name().eq_ignore_ascii_case(&r.host)).then_some(())?;
    Some((ServiceClient::new(&target).ok()?, target))
}

/// Local clock minus the hub's (seconds), from the REST endpoint's `Date` header.
async fn clock_skew(target: &Target) -> Option<i64> {
    let tls = crate::tls::client_config(target.ca_file.as_deref()).ok()?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .ok()?;
    let resp = http.head(target.base_url()).send().await.ok()?;
    let date = resp
        .headers()
        .get(reqwest::header::DATE)?
        .to_str()
        .ok()?
        .to_owned();
    let date = date.replace(" GMT", " +0000");
    let hub = time::OffsetDateTime::parse(&date, &time::format_description::well_known::Rfc2822)
        .ok()?
        .unix_timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some(now - hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_clock_says_the_token_was_already_expired_by_the_hubs_clock() {
        // Local clock 7200 s behind: a one-hour token signed "now" expired an hour ago.
        let now = 1_800_000_000;
        let s = skew_finding(-7200, Some(now + 3600), now);
        assert!(s.starts_with("clock skew: this machine's clock is 7200 s behind the hub's, so by the hub's clock the token was already expired 1h ago"), "{s}");
    }

    #[test]
    fn a_fast_clock_says_tokens_look_issued_in_the_future() {
        let now = 1_800_000_000;
        let s = skew_finding(600, Some(now + 3600), now);
        assert!(
            s.contains("600 s ahead of the hub's, so tokens look issued in the future"),
            "{s}"
        );
        let s = skew_finding(-600, Some(now + 3600), now);
        assert!(
            s.contains("600 s behind the hub's, so tokens expire early"),
            "{s}"
        );
    }

    #[test]
    fn debug_leaves_the_token_out() {
        let r = Refusal {
            host: "h".into(),
            device_id: "d".into(),
            module_id: None,
            port: 8883,
            token: Some(Secret::new(
                "SharedAccessSignature sr=h&sig=c2VjcmV0&se=1".into(),
            )),
            fixed_token: true,
            policy: None,
            ca_file: None,
            state_dir: PathBuf::from(".azsim/hub"),
        };
        let d = format!("{r:?}");
        assert!(!d.contains("c2VjcmV0") && d.contains("<redacted>"), "{d}");
    }
}
