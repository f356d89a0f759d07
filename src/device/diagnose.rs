//! What to tell the user when the hub refuses a connection (CONNACK 5).
//!
//! The hub only says "not authorized". azsim knows the token it sent, so it checks what it can:
//! the token against the device's registered keys (when service credentials for the same hub are
//! at hand: `IOTHUB_CONNECTION_STRING`, or the local hub's `hub.json`) with the same
//! `azsim_proto::sas::verify` the local hub uses, whether the device exists and is enabled, and
//! the clock against the hub's HTTP `Date`. It prints conclusions, never the key or the token.

use std::path::PathBuf;

use azsim_proto::sas::{self, Resource, VerifyError};

use crate::service::client::ServiceClient;
use crate::service::target::{Target, TargetInputs};

/// What the driver knows about the refused attempt.
#[derive(Clone)]
pub struct Refusal {
    /// Hub host name (no port).
    pub host: String,
    /// Device id.
    pub device_id: String,
    /// Module id.
    pub module_id: Option<String>,
    /// The token sent (kept in memory only to verify it locally).
    pub token: Option<String>,
    /// When it was signed (Unix seconds, local clock).
    pub signed_at: u64,
    /// The CA file in use, for the REST call.
    pub ca_file: Option<PathBuf>,
    /// The local hub state dir to look for `hub.json` in.
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusal")
            .field("host", &self.host)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A sentence or two on why the hub refused; `code` is the CONNACK code's text.
pub async fn explain(r: &Refusal, code: &str) -> String {
    let mut out = format!("the hub refused the connection: {code}");
    let findings = findings(r).await;
    out.push_str(": ");
    out.push_str(&findings.join("; "));
    out
}

async fn findings(r: &Refusal) -> Vec<String> {
    let mut f = Vec::new();
    let Some(token) = r.token.as_deref() else {
        f.push("the connection string carries a fixed SharedAccessSignature; check that it is unexpired and signed for this device".into());
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
    let Some((client, target)) = service_client(r) else {
        f.push(format!(
            "the token azsim sent is well formed and signed for {resource}; the likely causes are a wrong SharedAccessKey, a device that is not registered or is disabled, or a clock that is off (set IOTHUB_CONNECTION_STRING to let azsim check the key against the registry)"
        ));
        return f;
    };
    match client.get_device(&r.device_id).await {
        Ok(dev) => {
            if dev["status"].as_str() == Some("disabled") {
                f.push(format!(
                    "device {} is disabled in the registry",
                    r.device_id
                ));
            }
            let keys = [
                dev.pointer("/authentication/symmetricKey/primaryKey"),
                dev.pointer("/authentication/symmetricKey/secondaryKey"),
            ];
            let keys: Vec<&str> = keys
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            if keys.is_empty() {
                f.push("the device has no symmetric keys (it uses X.509)".into());
            } else {
                let Ok(parsed) = sas::Token::parse(token) else {
                    f.push("the token azsim built does not parse (a bug: please report it)".into());
                    return f;
                };
                let expected = resource.to_string();
                let verdicts: Vec<Result<(), VerifyError>> = keys
                    .iter()
                    .map(|k| sas::verify(&parsed, k, &expected, r.signed_at))
                    .collect();
                if verdicts.iter().any(Result::is_ok) {
                    f.push(
                        "the token verifies with the device's registered key, so the key is right"
                            .into(),
                    );
                } else if verdicts
                    .iter()
                    .all(|v| matches!(v, Err(VerifyError::BadSignature)))
                {
                    f.push("wrong key: the token's signature matches neither of the device's registered keys (copy the connection string again)".into());
                } else if let Some(Err(e)) = verdicts
                    .iter()
                    .find(|v| !matches!(v, Err(VerifyError::BadSignature)))
                {
                    f.push(format!("the token does not verify: {e}"));
                }
            }
        }
        Err(e) if e.azure().is_some_and(|a| a.status == 404) => {
            f.push(format!(
                "device {} is not registered in {} (create it with `azsim device create {}`)",
                r.device_id, r.host, r.device_id
            ));
        }
        Err(e) => f.push(format!("azsim could not look the device up: {e}")),
    }
    if let Some(skew) = clock_skew(&target).await
        && skew.abs() > 30
    {
        let dir = if skew > 0 { "ahead of" } else { "behind" };
        let looks = if skew > 0 {
            "issued in the future"
        } else {
            "expired early"
        };
        f.push(format!(
            "clock skew: this machine's clock is {} s {dir} the hub's, so tokens look {looks}",
            skew.abs()
        ));
    }
    if f.is_empty() {
        f.push("no problem found with the token or the registry entry".into());
    }
    f
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
