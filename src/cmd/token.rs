//! `azsim token`: sign, derive and inspect SAS tokens.
//!
//! Signing and verification are `azsim_proto::sas` (the same code the hub verifies with); this
//! module adds the human side: output forms, and [`explain`], the wording of what is wrong with a
//! token, which the hub's log and `azsim run` reuse after a CONNACK 5.

use std::fmt::Write as _;
use std::process::ExitCode;

use azsim_emulator::clock::{rfc3339, unix_now};
use azsim_proto::endpoint::MQTT_PORT;
use azsim_proto::{sas, username};
use serde_json::json;

use crate::cli::token::{
    DeriveKeyConfig, DpsConfig, DpsKey, InspectConfig, Output, SignConfig, Target, TokenConfig,
};
use crate::cmd::shell_quote;
use crate::error::CliError;
use crate::out::{out, outln};

/// The global DPS endpoint devices connect to.
pub const DPS_GLOBAL_HOST: &str = "global.azure-devices-provisioning.net";

/// Runs `azsim token`.
///
/// # Errors
/// [`CliError::CheckFailed`] when `inspect` finds the token invalid; runtime errors otherwise.
pub async fn run(cfg: TokenConfig) -> Result<ExitCode, CliError> {
    let out = match cfg {
        TokenConfig::Sign(c) => sign(&c)?,
        TokenConfig::Dps(c) => dps(&c)?,
        TokenConfig::DeriveKey(c) => derive_key(&c)?,
        TokenConfig::Inspect(c) => return inspect(&c),
    };
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn sign_error(e: sas::SignError) -> CliError {
    // Keys were checked during validation; this is only reachable for a writer failure.
    CliError::runtime(e)
}

/// Signs the token a [`SignConfig`] describes.
///
/// # Errors
/// Only if signing fails after validation (it does not for a checked key).
pub fn make_token(c: &SignConfig) -> Result<String, CliError> {
    let mut token = String::new();
    sas::sign(
        &mut token,
        &c.target.resource(),
        c.key.expose(),
        c.expiry,
        c.policy.as_deref(),
    )
    .map_err(sign_error)?;
    Ok(token)
}

/// The MQTT client id for a device or module target (`device` or `device/module`).
pub fn client_id(t: &Target) -> Option<String> {
    let mut s = String::new();
    username::write_client_id(&mut s, t.device_id.as_deref()?, t.module_id.as_deref()).ok()?;
    Some(s)
}

/// The MQTT username for a device or module target (`HostName` as the token's `sr` uses it).
pub fn mqtt_username(t: &Target) -> Option<String> {
    let mut s = String::new();
    username::write_username(
        &mut s,
        &t.host,
        t.device_id.as_deref()?,
        t.module_id.as_deref(),
        env!("CARGO_PKG_VERSION"),
        None,
    )
    .ok()?;
    Some(s)
}

fn sign(c: &SignConfig) -> Result<String, CliError> {
    let token = make_token(c)?;
    let resource = c.target.resource().to_string();
    let (connect_host, port) = c.target.connect_host_port();
    let mut out = String::new();
    match c.output {
        Output::Text => {
            let _ = writeln!(out, "{token}");
        }
        Output::Json => {
            let mqtt = match (client_id(&c.target), mqtt_username(&c.target)) {
                (Some(client_id), Some(username)) => Some(MqttJson {
                    host: connect_host,
                    port,
                    client_id,
                    username,
                }),
                _ => None,
            };
            let v = TokenJson {
                token: &token,
                resource,
                policy: c.policy.as_deref(),
                expiry: c.expiry,
                expiry_rfc3339: rfc3339(c.expiry),
                mqtt,
                key_derived_from_group_key: None,
            };
            let _ = writeln!(out, "{}", pretty(&v));
        }
        Output::Mqtt => {
            let id = client_id(&c.target).unwrap_or_default();
            let user = mqtt_username(&c.target).unwrap_or_default();
            let mut topic = String::new();
            let ident = azsim_proto::topic::Identity {
                device_id: c.target.device_id.as_deref().unwrap_or_default(),
                module_id: c.target.module_id.as_deref(),
            };
            let _ = azsim_proto::topic::write_telemetry_prefix(&mut topic, ident);
            let _ = writeln!(out, "host:      {connect_host}");
            let _ = writeln!(out, "port:      {port}");
            let _ = writeln!(out, "client id: {id}");
            let _ = writeln!(out, "username:  {user}");
            let _ = writeln!(out, "password:  {token}");
            let _ = writeln!(out, "protocol:  MQTT 3.1.1 over TLS 1.2+, clean session");
            let _ = writeln!(
                out,
                "expires:   {} ({})",
                rfc3339(c.expiry),
                relative(i128::from(c.expiry) - i128::from(unix_now()))
            );
            let _ = writeln!(out);
            let local = matches!(connect_host, "localhost" | "127.0.0.1" | "::1");
            let ca = if local {
                "--cafile .azsim/hub/ca.pem"
            } else {
                "--capath /etc/ssl/certs"
            };
            let _ = writeln!(out, "# send one telemetry message with mosquitto:");
            let _ = writeln!(
                out,
                "mosquitto_pub -h {} -p {port} -V mqttv311 {ca} -i {} -u {} -P {} -t {} -q 1 -m '{{\"hello\":\"azsim\"}}'",
                shell_quote(connect_host),
                shell_quote(&id),
                shell_quote(&user),
                shell_quote(&token),
                shell_quote(&topic),
            );
        }
    }
    Ok(out)
}

fn dps(c: &DpsConfig) -> Result<String, CliError> {
    let resource = sas::Resource::DpsRegistration {
        id_scope: &c.id_scope,
        registration_id: &c.registration_id,
    };
    let mut derived = String::new();
    let key = match &c.key {
        DpsKey::Device(k) => k.expose(),
        DpsKey::Group(g) => {
            sas::derive_group_key(&mut derived, g.expose(), &c.registration_id)
                .map_err(sign_error)?;
            &derived
        }
    };
    let mut token = String::new();
    sas::sign(&mut token, &resource, key, c.expiry, Some(sas::DPS_POLICY)).map_err(sign_error)?;
    let mut out = String::new();
    if c.json {
        let v = TokenJson {
            token: &token,
            resource: resource.to_string(),
            policy: Some(sas::DPS_POLICY),
            expiry: c.expiry,
            expiry_rfc3339: rfc3339(c.expiry),
            mqtt: Some(MqttJson {
                host: DPS_GLOBAL_HOST,
                port: MQTT_PORT,
                client_id: c.registration_id.clone(),
                username: dps_username(&c.id_scope, &c.registration_id),
            }),
            key_derived_from_group_key: Some(matches!(c.key, DpsKey::Group(_))),
        };
        let _ = writeln!(out, "{}", pretty(&v));
    } else {
        let _ = writeln!(out, "{token}");
    }
    Ok(out)
}

/// The DPS MQTT username, `{scope}/registrations/{regId}/api-version=2019-03-31` (no `?`).
pub fn dps_username(id_scope: &str, registration_id: &str) -> String {
    let mut s = String::new();
    let _ = username::write_dps_username(&mut s, id_scope, registration_id);
    s
}

fn derive_key(c: &DeriveKeyConfig) -> Result<String, CliError> {
    let mut key = String::new();
    sas::derive_group_key(&mut key, c.group_key.expose(), &c.registration_id)
        .map_err(sign_error)?;
    Ok(format!("{key}\n"))
}

/// `azsim token --json` / `azsim token dps --json`, fields in this order.
#[derive(serde::Serialize)]
struct TokenJson<'a> {
    token: &'a str,
    resource: String,
    policy: Option<&'a str>,
    expiry: u64,
    expiry_rfc3339: String,
    #[serde(flatten)]
    mqtt: Option<MqttJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_derived_from_group_key: Option<bool>,
}

/// The MQTT CONNECT fields of a device, module or DPS token.
#[derive(serde::Serialize)]
struct MqttJson<'a> {
    client_id: String,
    username: String,
    host: &'a str,
    port: u16,
}

/// `azsim token inspect --json`.
#[derive(serde::Serialize)]
struct InspectJson<'a> {
    sr: &'a str,
    resource: &'a str,
    kind: &'a str,
    host: Option<&'a str>,
    device_id: Option<&'a str>,
    module_id: Option<&'a str>,
    id_scope: Option<&'a str>,
    registration_id: Option<&'a str>,
    policy: Option<&'a str>,
    expiry: u64,
    expiry_rfc3339: String,
    seconds_left: i64,
    expires: String,
    checked_against: Option<&'a str>,
    valid: Option<bool>,
    problems: &'a [String],
    notes: &'a [String],
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `expires in 59m 12s` / `expired 3h 2m ago`, from `seconds_left = se - now`.
pub fn relative(seconds_left: i128) -> String {
    if seconds_left > 0 {
        format!("expires in {}", span(seconds_left.unsigned_abs()))
    } else if seconds_left == 0 {
        "expired just now".to_owned()
    } else {
        format!("expired {} ago", span(seconds_left.unsigned_abs()))
    }
}

/// The two largest units of a span: `59m 12s`, `3h`, `2d 4h`.
fn span(secs: u128) -> String {
    const UNITS: [(u128, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    for (i, (size, name)) in UNITS.iter().enumerate() {
        if secs >= *size {
            let mut s = format!("{}{name}", secs / size);
            if let Some((next, next_name)) = UNITS.get(i + 1) {
                let n = (secs % size) / next;
                if n > 0 {
                    let _ = write!(s, " {n}{next_name}");
                }
            }
            return s;
        }
    }
    "0s".to_owned()
}

// ---------------------------------------------------------------------------------------------
// Inspect and explain
// ---------------------------------------------------------------------------------------------

/// What is wrong (or worth knowing) about a token, in words a person can act on. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// `Some(true)`: checked and valid; `Some(false)`: a problem was found; `None`: nothing could
    /// be checked beyond the expiry (no key) and it has not expired.
    pub valid: Option<bool>,
    /// Why the hub would refuse it, most important first. Empty when nothing is wrong.
    pub problems: Vec<String>,
    /// Things that are fine but look suspicious (lower-case escapes, unencoded `sr`), and what was
    /// not checked.
    pub notes: Vec<String>,
}

impl Explanation {
    /// One line: the problems joined with `; `, or `valid` / `not checked`.
    pub fn summary(&self) -> String {
        match self.valid {
            _ if !self.problems.is_empty() => self.problems.join("; "),
            Some(true) => "valid".to_owned(),
            _ => "signature not checked (no key given)".to_owned(),
        }
    }
}

/// Explains a token string: parse errors become a problem. The convenience the hub's log and
/// `azsim run` call after a CONNACK 5. `expected_resource` is the unencoded resource URI
/// (`host/devices/dev1`); `expected_policy` is `Some(None)` for a device or module key,
/// `Some(Some(name))` for a policy key, `None` when unknown.
pub fn explain_str(
    token: &str,
    key_b64: Option<&str>,
    expected_resource: Option<&str>,
    expected_policy: Option<Option<&str>>,
    now: u64,
) -> Explanation {
    match sas::Token::parse(token.trim()) {
        Ok(t) => explain(&t, key_b64, expected_resource, expected_policy, now),
        Err(e) => Explanation {
            valid: Some(false),
            problems: vec![format!("malformed: {e}")],
            notes: Vec::new(),
        },
    }
}

/// Explains a parsed token: expiry, and with a key whether the signature matches, and with an
/// expected resource whether `sr` names it (and if not, what it names instead), and the `skn`.
/// See [`explain_str`] for the arguments.
pub fn explain(
    token: &sas::Token<'_>,
    key_b64: Option<&str>,
    expected_resource: Option<&str>,
    expected_policy: Option<Option<&str>>,
    now: u64,
) -> Explanation {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let diag = match sas::diagnose(token, key_b64, expected_resource, now) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("the key to check with is refused: {e}"));
            match sas::diagnose(token, None, expected_resource, now) {
                Ok(d) => d,
                Err(_) => {
                    return Explanation {
                        valid: Some(false),
                        problems,
                        notes,
                    };
                }
            }
        }
    };
    let resource = decoded_resource(token);

    if diag.signature_matches == Some(false) {
        problems.push(
            "signature does not match this key (signed with another key, or sr/se changed after signing)"
                .to_owned(),
        );
    }
    if diag.expired {
        problems.push(format!(
            "expired: se {} is {} ({})",
            diag.expiry,
            rfc3339(diag.expiry),
            relative(diag.seconds_left)
        ));
    }
    if diag.double_encoded {
        let mut p = "sr is percent-encoded twice (it holds '%25' escapes such as %252F): encode the resource URI once".to_owned();
        if diag.resource_covers_decoded_twice == Some(true) {
            p.push_str("; decoded twice it names the right resource");
        }
        problems.push(p);
    } else if diag.resource_covers == Some(false)
        && let Some(expected) = expected_resource
    {
        problems.push(resource_mismatch(&resource, expected));
    }
    if let Some(expected) = expected_policy {
        match (expected, token.policy()) {
            (None, Some(skn)) => problems.push(format!(
                "skn is '{skn}', but the key is a device or module key: device and module tokens carry no skn (with skn the hub checks the token against that shared access policy)"
            )),
            (Some(p), None) => problems.push(format!(
                "skn is missing: a token signed with the policy key '{p}' must say skn={p}"
            )),
            (Some(p), Some(skn)) if !p.eq_ignore_ascii_case(skn) => problems.push(format!(
                "skn is '{skn}', but the key belongs to the policy '{p}'"
            )),
            _ => {}
        }
    } else if token.policy().is_none()
        && matches!(
            sas::Resource::parse(&resource),
            Some(sas::Resource::Hub { .. })
        )
    {
        problems.push(
            "skn is missing: a hub-level token must name the policy that signed it (skn=iothubowner, service, ...)"
                .to_owned(),
        );
    }

    if diag.lowercase_escapes && !diag.double_encoded {
        notes.push(
            "sr uses lower-case escapes (%2f): fine, the signature covers sr as sent and the hub compares the resource case-insensitively"
                .to_owned(),
        );
    }
    if diag.unencoded_sr {
        notes.push(
            "sr is not percent-encoded (raw '/'): the signature covers sr as sent, so this works only if it was signed that way (Node's DPS client does this)"
                .to_owned(),
        );
    }
    match (key_b64.is_some(), expected_resource.is_some()) {
        (false, _) => notes.push(
            "signature not checked: give --connection-string, or --key with --host/--device"
                .to_owned(),
        ),
        (true, false) => notes.push(
            "resource not checked: give --host (and --device/--module) or a connection string"
                .to_owned(),
        ),
        _ => {}
    }

    let valid = if !problems.is_empty() {
        Some(false)
    } else if key_b64.is_some() {
        Some(true)
    } else {
        None
    };
    Explanation {
        valid,
        problems,
        notes,
    }
}

/// The percent-decoded `sr` (the raw text when it cannot be decoded).
fn decoded_resource(token: &sas::Token<'_>) -> String {
    let mut s = String::new();
    if token.write_resource(&mut s).is_err() {
        return token.sr().to_owned();
    }
    s
}

fn describe(r: &sas::Resource<'_>) -> String {
    match r {
        sas::Resource::Hub { host } => format!("the whole hub {host} (policy token)"),
        sas::Resource::Device { host, device_id } => format!("device '{device_id}' on {host}"),
        sas::Resource::Module {
            host,
            device_id,
            module_id,
        } => format!("module '{module_id}' of device '{device_id}' on {host}"),
        sas::Resource::DpsRegistration {
            id_scope,
            registration_id,
        } => format!("DPS registration '{registration_id}' in scope {id_scope}"),
    }
}

/// Says how the token's resource differs from the expected one.
fn resource_mismatch(actual: &str, expected: &str) -> String {
    let (a, e) = (sas::Resource::parse(actual), sas::Resource::parse(expected));
    fn host<'a>(r: &sas::Resource<'a>) -> Option<&'a str> {
        match *r {
            sas::Resource::Hub { host }
            | sas::Resource::Device { host, .. }
            | sas::Resource::Module { host, .. } => Some(host),
            sas::Resource::DpsRegistration { .. } => None,
        }
    }
    fn device<'a>(r: &sas::Resource<'a>) -> Option<&'a str> {
        match *r {
            sas::Resource::Device { device_id, .. } | sas::Resource::Module { device_id, .. } => {
                Some(device_id)
            }
            _ => None,
        }
    }
    match (a, e) {
        (Some(a @ sas::Resource::DpsRegistration { .. }), Some(_)) => format!(
            "sr names {}, not an IoT Hub resource: a DPS token does not open a hub connection",
            describe(&a)
        ),
        (Some(a), Some(e)) => match (host(&a), host(&e)) {
            (Some(ha), Some(he)) if !ha.eq_ignore_ascii_case(he) => {
                format!("sr is for host '{ha}', expected host '{he}'")
            }
            _ => match (device(&a), device(&e)) {
                (Some(da), Some(de)) if !da.eq_ignore_ascii_case(de) => {
                    format!("sr names device '{da}', expected device '{de}'")
                }
                _ => format!(
                    "sr names {}, which does not cover {}",
                    describe(&a),
                    describe(&e)
                ),
            },
        },
        _ => format!("sr names '{actual}', which does not cover '{expected}'"),
    }
}

fn inspect(c: &InspectConfig) -> Result<ExitCode, CliError> {
    let token = match sas::Token::parse(c.token.expose()) {
        Ok(t) => t,
        Err(e) => {
            if c.json {
                let v =
                    json!({"valid": false, "problems": [format!("malformed: {e}")], "notes": []});
                outln!("{}", pretty(&v));
            } else {
                outln!("token:     malformed: {e}");
            }
            return Err(CliError::check_failed(format!(
                "token check failed: malformed: {e}"
            )));
        }
    };
    let expected_resource = c
        .against
        .as_ref()
        .and_then(|a| a.target.as_ref())
        .map(|t| t.resource().to_string());
    let expected_policy = c
        .against
        .as_ref()
        .filter(|a| a.policy_known)
        .map(|a| a.policy.as_deref());
    let ex = explain(
        &token,
        c.against.as_ref().map(|a| a.key.expose()),
        expected_resource.as_deref(),
        expected_policy,
        c.now,
    );
    let resource = decoded_resource(&token);
    let parsed = sas::Resource::parse(&resource);
    let seconds_left = i128::from(token.expiry()) - i128::from(c.now);
    if c.json {
        let (kind, host, device, module, scope, reg) = match parsed {
            Some(sas::Resource::Hub { host }) => ("hub", Some(host), None, None, None, None),
            Some(sas::Resource::Device { host, device_id }) => {
                ("device", Some(host), Some(device_id), None, None, None)
            }
            Some(sas::Resource::Module {
                host,
                device_id,
                module_id,
            }) => (
                "module",
                Some(host),
                Some(device_id),
                Some(module_id),
                None,
                None,
            ),
            Some(sas::Resource::DpsRegistration {
                id_scope,
                registration_id,
            }) => (
                "dps_registration",
                None,
                None,
                None,
                Some(id_scope),
                Some(registration_id),
            ),
            None => ("unknown", None, None, None, None, None),
        };
        let v = InspectJson {
            sr: token.sr(),
            resource: &resource,
            kind,
            host,
            device_id: device,
            module_id: module,
            id_scope: scope,
            registration_id: reg,
            policy: token.policy(),
            expiry: token.expiry(),
            expiry_rfc3339: rfc3339(token.expiry()),
            seconds_left: i64::try_from(seconds_left).unwrap_or(i64::MAX),
            expires: relative(seconds_left),
            checked_against: c.against.as_ref().map(|a| a.source),
            valid: ex.valid,
            problems: &ex.problems,
            notes: &ex.notes,
        };
        outln!("{}", pretty(&v));
    } else {
        let mut out = String::new();
        let what = parsed
            .map(|r| describe(&r))
            .unwrap_or_else(|| "not a hub, device, module or DPS resource".to_owned());
        let _ = writeln!(out, "resource:  {resource}  ({what})");
        let _ = writeln!(out, "sr:        {}", token.sr());
        let _ = writeln!(
            out,
            "policy:    {}",
            token.policy().map_or_else(
                || "none (device or module key)".to_owned(),
                |p| format!("skn={p}")
            )
        );
        let _ = writeln!(
            out,
            "expiry:    {} = {} ({})",
            token.expiry(),
            rfc3339(token.expiry()),
            relative(seconds_left)
        );
        let _ = writeln!(out, "signature: present, not shown");
        match &c.against {
            Some(a) => {
                let _ = writeln!(out, "checked:   against the key from {}", a.source);
            }
            None => {
                let _ = writeln!(out, "checked:   expiry only (no key given)");
            }
        }
        let verdict = match ex.valid {
            Some(true) => "VALID".to_owned(),
            Some(false) => "INVALID".to_owned(),
            None => "not expired; signature not checked".to_owned(),
        };
        let _ = writeln!(out, "verdict:   {verdict}");
        for p in &ex.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        for n in &ex.notes {
            let _ = writeln!(out, "  note:    {n}");
        }
        out!("{out}");
    }
    if ex.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::check_failed(format!(
            "token check failed: {}",
            ex.problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn token(resource: &str, expiry: u64, skn: Option<&str>) -> String {
        let mut t = String::new();
        sas::sign(&mut t, resource, KEY, expiry, skn).unwrap();
        t
    }

    #[test]
    fn relative_times_use_the_two_largest_units() {
        assert_eq!(relative(3552), "expires in 59m 12s");
        assert_eq!(relative(3600), "expires in 1h");
        assert_eq!(relative(-3 * 3600 - 5), "expired 3h ago");
        assert_eq!(relative(-(2 * 86_400 + 4 * 3600 + 59)), "expired 2d 4h ago");
        assert_eq!(relative(0), "expired just now");
        assert_eq!(relative(1), "expires in 1s");
    }

    #[test]
    fn a_valid_token_explains_as_valid() {
        let t = token("h/devices/d", 1000, None);
        let ex = explain_str(&t, Some(KEY), Some("h/devices/d"), Some(None), 10);
        assert_eq!(ex.valid, Some(true), "{ex:?}");
        assert_eq!(ex.summary(), "valid");
    }

    #[test]
    fn a_malformed_token_is_one_problem_naming_the_field() {
        let ex = explain_str("SharedAccessSignature sr=h&sig=x", Some(KEY), None, None, 0);
        assert_eq!(ex.valid, Some(false));
        assert_eq!(ex.summary(), "malformed: sas token se: missing");
    }

    #[test]
    fn a_device_token_with_skn_is_flagged_for_a_device_key() {
        let t = token("h/devices/d", 1000, Some("iothubowner"));
        let ex = explain_str(&t, Some(KEY), Some("h/devices/d"), Some(None), 10);
        assert!(ex.summary().starts_with("skn is 'iothubowner'"), "{ex:?}");
    }

    #[test]
    fn a_hub_token_without_skn_is_flagged() {
        let t = token("h", 1000, None);
        let ex = explain_str(&t, Some(KEY), Some("h"), None, 10);
        assert!(ex.summary().starts_with("skn is missing"), "{ex:?}");
    }

    #[test]
    fn a_module_token_for_another_module_names_both() {
        let t = token("h/devices/d/modules/m1", 1000, None);
        let ex = explain_str(
            &t,
            Some(KEY),
            Some("h/devices/d/modules/m2"),
            Some(None),
            10,
        );
        assert_eq!(
            ex.summary(),
            "sr names module 'm1' of device 'd' on h, which does not cover module 'm2' of device 'd' on h"
        );
    }

    #[test]
    fn a_dps_token_at_the_hub_is_explained() {
        let t = token("0ne1/registrations/d", 1000, Some("registration"));
        let ex = explain_str(&t, Some(KEY), Some("h/devices/d"), None, 10);
        assert!(
            ex.summary().contains("DPS registration 'd' in scope 0ne1"),
            "{ex:?}"
        );
    }

    #[test]
    fn explanations_never_contain_the_key_or_signature() {
        let t = token("h/devices/d", 5, None);
        let sig = sas::Token::parse(&t).unwrap().sig().to_owned();
        let ex = explain_str(&t, Some(KEY), Some("h/devices/e"), Some(None), 10);
        let all = format!("{ex:?}");
        assert!(!all.contains(KEY) && !all.contains(&sig), "{all}");
    }
}
