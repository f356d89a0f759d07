//! `azsim dps enrollment | group create | show | list | delete`: the Device Provisioning
//! Service's service REST API (api-version 2021-10-01), against the local hub's DPS or any
//! other given by connection string. Keys are printed on create (as `azsim device create`
//! prints its connection string) and redacted elsewhere unless asked for.

use std::process::ExitCode;
use std::time::Duration;

use azsim_proto::secret::Secret;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::dps::{DpsAction, DpsConfig, DpsTarget, RecordKind};
use crate::cmd::shell_quote;
use crate::error::CliError;
use crate::out::outln;

/// The DPS service API version sent.
const API_VERSION: &str = "2021-10-01";
const TOKEN_TTL_SECS: u64 = 600;

/// An authenticated DPS service client.
struct DpsClient {
    http: reqwest::Client,
    base: String,
    auth: Secret<String>,
}

impl DpsClient {
    fn new(target: &DpsTarget) -> Result<DpsClient, CliError> {
        let tls =
            crate::tls::client_config(target.ca_file.as_deref()).map_err(CliError::runtime)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("azsim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CliError::runtime)?;
        let token = target
            .credentials
            .token(azsim_emulator::clock::unix_now() + TOKEN_TTL_SECS)
            .map_err(CliError::runtime)?;
        Ok(DpsClient {
            http,
            base: format!("https://{}", target.credentials.host()),
            auth: Secret::new(token),
        })
    }

    /// A request; the JSON answer (`Null` for 204), or the DPS error as a runtime error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut rb = self
            .http
            .request(method, format!("{url}?api-version={API_VERSION}"))
            .header(reqwest::header::AUTHORIZATION, self.auth.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| CliError::runtime(format!("{url}: {}", e.without_url())))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::runtime(format!("{url}: {}", e.without_url())))?;
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(v);
        }
        let code = v.get("errorCode").map(ToString::to_string);
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
        Err(CliError::runtime(match code {
            Some(c) => format!("{} {c}: {message}", status.as_u16()),
            None => format!("{}: {message}", status.as_u16()),
        }))
    }
}

fn collection(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Enrollment => "/enrollments",
        RecordKind::Group => "/enrollmentGroups",
    }
}

fn what(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Enrollment => "enrollment",
        RecordKind::Group => "enrollment group",
    }
}

fn id_of(kind: RecordKind, v: &Value) -> &str {
    let f = match kind {
        RecordKind::Enrollment => "registrationId",
        RecordKind::Group => "enrollmentGroupId",
    };
    v.get(f).and_then(Value::as_str).unwrap_or("")
}

fn key_of<'a>(v: &'a Value, which: &str) -> Option<&'a str> {
    v.pointer(&format!("/attestation/symmetricKey/{which}"))
        .and_then(Value::as_str)
}

/// Replaces the symmetric keys with `<redacted>`.
fn redact(v: &mut Value) {
    if let Some(k) = v
        .pointer_mut("/attestation/symmetricKey")
        .and_then(Value::as_object_mut)
    {
        for (_, key) in k.iter_mut() {
            if key.is_string() {
                *key = json!("<redacted>");
            }
        }
    }
}

fn field<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("-")
}

/// Runs `azsim dps`.
///
/// # Errors
/// [`CliError::Runtime`] with DPS's status and error (`404 404201: ...`) or a transport error.
pub async fn run(cfg: DpsConfig) -> Result<ExitCode, CliError> {
    let client = DpsClient::new(&cfg.target)?;
    let host = cfg.target.credentials.host().to_string();
    let kind = cfg.kind;
    match cfg.action {
        DpsAction::Create {
            id,
            mut body,
            primary_key,
            secondary_key,
            certificate,
        } => {
            let mut keys = serde_json::Map::new();
            if let Some(k) = &primary_key {
                keys.insert("primaryKey".into(), json!(k.expose()));
            }
            if let Some(k) = &secondary_key {
                keys.insert("secondaryKey".into(), json!(k.expose()));
            }
            body["attestation"] = match (certificate, kind) {
                (Some(pem), RecordKind::Enrollment) => json!({"type": "x509",
                    "x509": {"clientCertificates": {"primary": {"certificate": pem}}}}),
                (Some(pem), RecordKind::Group) => json!({"type": "x509",
                    "x509": {"signingCertificates": {"primary": {"certificate": pem}}}}),
                (None, _) => json!({"type": "symmetricKey", "symmetricKey": keys}),
            };
            let path = format!("{}/{id}", collection(kind));
            let created = client.call(Method::PUT, &path, Some(&body)).await?;
            if cfg.json {
                outln!("{created}");
            } else {
                print_created(kind, &created, &host, cfg.target.id_scope.as_deref());
            }
        }
        DpsAction::Show { id, show_keys } => {
            let path = format!("{}/{id}", collection(kind));
            let mut v = client.call(Method::GET, &path, None).await?;
            if !show_keys {
                redact(&mut v);
            }
            if cfg.json {
                outln!("{v}");
            } else {
                print_record(kind, &v);
            }
        }
        DpsAction::List => {
            let path = format!("{}/query", collection(kind));
            let mut v = client
                .call(Method::POST, &path, Some(&json!({"query": "*"})))
                .await?;
            if let Some(items) = v.as_array_mut() {
                items.iter_mut().for_each(redact);
            }
            if cfg.json {
                outln!("{v}");
            } else {
                print_list(
                    kind,
                    v.as_array().map(Vec::as_slice).unwrap_or_default(),
                    &host,
                );
            }
        }
        DpsAction::Delete { id } => {
            let path = format!("{}/{id}", collection(kind));
            client.call(Method::DELETE, &path, None).await?;
            if cfg.json {
                outln!("{}", json!({"id": id, "kind": what(kind), "deleted": true}));
            } else {
                outln!("deleted {} {id} from {host}", what(kind));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The primary certificate's SHA-1 thumbprint of an `x509` attestation.
fn thumbprint(v: &Value) -> Option<&str> {
    ["clientCertificates", "signingCertificates"]
        .iter()
        .find_map(|set| {
            v.pointer(&format!(
                "/attestation/x509/{set}/primary/info/sha1Thumbprint"
            ))?
            .as_str()
        })
}

fn print_created(kind: RecordKind, v: &Value, host: &str, id_scope: Option<&str>) {
    let id = id_of(kind, v);
    if let Some(t) = thumbprint(v) {
        let scope = id_scope.unwrap_or("ID_SCOPE");
        outln!(
            "created {} {id} in {host} (X.509, certificate {t})",
            what(kind)
        );
        if let Some(s) = id_scope {
            outln!("  id scope:    {s}");
        }
        let device = if kind == RecordKind::Enrollment {
            shell_quote(id)
        } else {
            "DEVICE".into()
        };
        outln!();
        outln!(
            "provision and run {}:",
            if kind == RecordKind::Enrollment {
                "it"
            } else {
                "a device (certificate CN = DEVICE)"
            }
        );
        outln!(
            "  azsim run --dps --id-scope {} --registration-id {device} --cert {device}.pem --cert-key {device}.key.pem",
            shell_quote(scope)
        );
        return;
    }
    let key = key_of(v, "primaryKey").unwrap_or("-");
    let scope = id_scope.unwrap_or("ID_SCOPE");
    outln!("created {} {id} in {host}", what(kind));
    if let Some(s) = id_scope {
        outln!("  id scope:    {s}");
    }
    match kind {
        RecordKind::Enrollment => {
            let device = v
                .get("deviceId")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .unwrap_or(id);
            outln!("  device id:   {device}");
            outln!("  status:      {}", field(v, "/provisioningStatus"));
            outln!("  primary key: {key}");
            outln!();
            outln!("provision and run it:");
            outln!(
                "  azsim run --dps --id-scope {} --registration-id {} --key {}",
                shell_quote(scope),
                shell_quote(id),
                shell_quote(key)
            );
        }
        RecordKind::Group => {
            outln!("  status:      {}", field(v, "/provisioningStatus"));
            outln!("  group key:   {key}");
            outln!();
            outln!("a device's key (registration id DEVICE):");
            outln!(
                "  azsim token derive-key --group-key {} --registration-id DEVICE",
                shell_quote(key)
            );
            outln!("provision and run a device:");
            outln!(
                "  azsim run --dps --id-scope {} --registration-id DEVICE --group-key {}",
                shell_quote(scope),
                shell_quote(key)
            );
        }
    }
}

fn print_record(kind: RecordKind, v: &Value) {
    let mut rows = vec![(
        match kind {
            RecordKind::Enrollment => "registration",
            RecordKind::Group => "group",
        },
        id_of(kind, v).to_string(),
    )];
    if kind == RecordKind::Enrollment {
        rows.push(("device", field(v, "/deviceId").to_string()));
    }
    rows.extend([
        ("status", field(v, "/provisioningStatus").to_string()),
        ("attestation", field(v, "/attestation/type").to_string()),
        ("certificate", thumbprint(v).unwrap_or("-").to_string()),
        (
            "primary key",
            field(v, "/attestation/symmetricKey/primaryKey").to_string(),
        ),
        (
            "secondary key",
            field(v, "/attestation/symmetricKey/secondaryKey").to_string(),
        ),
        (
            "initial twin",
            v.get("initialTwin")
                .map_or_else(|| "-".to_string(), ToString::to_string),
        ),
        ("etag", field(v, "/etag").to_string()),
        ("created", field(v, "/createdDateTimeUtc").to_string()),
        ("updated", field(v, "/lastUpdatedDateTimeUtc").to_string()),
    ]);
    for (k, val) in rows {
        outln!("{k:<14} {val}");
    }
}

fn print_list(kind: RecordKind, items: &[Value], host: &str) {
    if items.is_empty() {
        outln!("no {}s in {host}", what(kind));
        return;
    }
    let w = items
        .iter()
        .map(|v| id_of(kind, v).len())
        .max()
        .unwrap_or(2)
        .max(2);
    match kind {
        RecordKind::Enrollment => {
            outln!("{:<w$}  {:<24}  STATUS", "ID", "DEVICE");
            for v in items {
                outln!(
                    "{:<w$}  {:<24}  {}",
                    id_of(kind, v),
                    field(v, "/deviceId"),
                    field(v, "/provisioningStatus")
                );
            }
        }
        RecordKind::Group => {
            outln!("{:<w$}  STATUS", "ID");
            for v in items {
                outln!(
                    "{:<w$}  {}",
                    id_of(kind, v),
                    field(v, "/provisioningStatus")
                );
            }
        }
    }
}
