//! `azsim dps enrollment | group create | show | list | delete`: clap structs and validation.
//! The work is in `crate::cmd::dps`.
//!
//! Which Device Provisioning Service: `--dps-connection-string`, then
//! `PROVISIONING_CONNECTION_STRING`, then the local hub's `hub.json` in `--state` (its
//! `provisioning_service_connection_string`). The CA: `--ca`, then `AZSIM_CA_FILE`, then the
//! local hub's.

use std::path::PathBuf;

use azsim_proto::secret::Secret;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::service::{base64_key, json_object};
use crate::error::UsageError;
use crate::service::ServiceCredentials;
use crate::service::target::{DEFAULT_STATE_DIR, ENV_CA_FILE, load_hub_info};

/// The env var holding a DPS service connection string.
pub const ENV_DPS_CONNECTION_STRING: &str = "PROVISIONING_CONNECTION_STRING";

/// Manage the enrollments of a Device Provisioning Service (the local hub's by default).
#[derive(Debug, Args)]
pub struct DpsArgs {
    /// What to manage.
    #[command(subcommand)]
    pub command: DpsCommand,
}

/// `azsim dps enrollment | group`.
#[derive(Debug, Subcommand)]
pub enum DpsCommand {
    /// Individual enrollments: one device, its own symmetric key.
    Enrollment(EnrollmentArgs),
    /// Enrollment groups: many devices, each with a key derived from the group's.
    Group(GroupArgs),
}

/// `azsim dps enrollment ...`.
#[derive(Debug, Args)]
pub struct EnrollmentArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RecordCommand<EnrollmentCreateArgs>,
}

/// `azsim dps group ...`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RecordCommand<GroupCreateArgs>,
}

/// `create | show | list | delete`.
#[derive(Debug, Subcommand)]
pub enum RecordCommand<C: Args> {
    /// Create or replace it (symmetric keys generated unless given) and print its key.
    Create(C),
    /// Show it (keys redacted unless --show-keys).
    Show(ShowArgs),
    /// List them.
    List(ListArgs),
    /// Delete it.
    Delete(DeleteArgs),
}

/// Which DPS to talk to and how to trust it.
#[derive(Debug, Args, Clone, Default)]
pub struct DpsTargetArgs {
    /// DPS service connection string (provisioningserviceowner)
    /// [env: PROVISIONING_CONNECTION_STRING]. Default: the local hub's, found in --state.
    #[arg(long, value_name = "CS")]
    pub dps_connection_string: Option<Secret<String>>,
    /// Extra CA certificate (PEM) to trust [env: AZSIM_CA_FILE]. Default: the local hub's CA.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// State directory of the local hub, holding hub.json [default: .azsim/hub].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

/// `azsim dps enrollment create REG_ID`.
#[derive(Debug, Args)]
pub struct EnrollmentCreateArgs {
    /// The registration id devices present.
    pub registration_id: String,
    /// Primary key (base64); generated when omitted.
    #[arg(long, value_name = "B64")]
    pub primary_key: Option<Secret<String>>,
    /// Secondary key (base64); generated when omitted.
    #[arg(long, value_name = "B64")]
    pub secondary_key: Option<Secret<String>>,
    /// X.509 attestation: the device's certificate (PEM; its subject CN is the registration
    /// id) instead of symmetric keys.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["primary_key", "secondary_key"])]
    pub cert: Option<PathBuf>,
    /// The device id in the hub [default: the registration id].
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// The initial twin: `{"tags": {..}, "properties": {"desired": {..}}}`.
    #[arg(long, value_name = "JSON")]
    pub initial_twin: Option<String>,
    /// Create it disabled (devices are refused with 401).
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub target: DpsTargetArgs,
    /// Print the enrollment as the service API returns it (keys included).
    #[arg(long)]
    pub json: bool,
}

/// `azsim dps group create GROUP_ID`.
#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// The enrollment group id.
    pub group_id: String,
    /// The group's primary key (base64); generated when omitted.
    #[arg(long, value_name = "B64")]
    pub primary_key: Option<Secret<String>>,
    /// The group's secondary key (base64); generated when omitted.
    #[arg(long, value_name = "B64")]
    pub secondary_key: Option<Secret<String>>,
    /// X.509 attestation: the CA certificate (PEM) that signs the group's device certificates,
    /// instead of a symmetric key.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["primary_key", "secondary_key"])]
    pub ca_cert: Option<PathBuf>,
    /// The initial twin of every device: `{"tags": {..}, "properties": {"desired": {..}}}`.
    #[arg(long, value_name = "JSON")]
    pub initial_twin: Option<String>,
    /// Create it disabled (its devices are refused with 401).
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub target: DpsTargetArgs,
    /// Print the group as the service API returns it (keys included).
    #[arg(long)]
    pub json: bool,
}

/// `show ID`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The registration id (enrollment) or group id.
    pub id: String,
    /// Show the symmetric keys too.
    #[arg(long)]
    pub show_keys: bool,
    #[command(flatten)]
    pub target: DpsTargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: DpsTargetArgs,
    /// Print one JSON array (keys redacted).
    #[arg(long)]
    pub json: bool,
}

/// `delete ID`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The registration id (enrollment) or group id.
    pub id: String,
    #[command(flatten)]
    pub target: DpsTargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Individual enrollment or enrollment group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `/enrollments`.
    Enrollment,
    /// `/enrollmentGroups`.
    Group,
}

/// What `azsim dps` does, validated.
#[derive(Debug)]
pub enum DpsAction {
    /// PUT the record: `body` without keys, the keys given (if any) beside it.
    Create {
        /// The id.
        id: String,
        /// The record (ids, status, device id, initial twin).
        body: Value,
        /// `--primary-key`.
        primary_key: Option<Secret<String>>,
        /// `--secondary-key`.
        secondary_key: Option<Secret<String>>,
        /// `--cert` / `--ca-cert`: the certificate's PEM text (X.509 attestation).
        certificate: Option<String>,
    },
    /// GET one.
    Show {
        /// The id.
        id: String,
        /// Print the keys.
        show_keys: bool,
    },
    /// Query them all.
    List,
    /// DELETE one.
    Delete {
        /// The id.
        id: String,
    },
}

/// Where the DPS is.
#[derive(Debug, Clone)]
pub struct DpsTarget {
    /// Host (with port) and the policy key.
    pub credentials: ServiceCredentials,
    /// Extra CA to trust.
    pub ca_file: Option<PathBuf>,
    /// The id scope, when the DPS is the local hub's.
    pub id_scope: Option<String>,
}

/// Validated `azsim dps` arguments.
#[derive(Debug)]
pub struct DpsConfig {
    /// The DPS.
    pub target: DpsTarget,
    /// Enrollment or group.
    pub kind: RecordKind,
    /// What to do.
    pub action: DpsAction,
    /// JSON output.
    pub json: bool,
}

/// A registration or group id as DPS takes it: 1-128 ASCII letters, digits and `-._:`.
pub fn record_id(field: &'static str, id: String) -> Result<String, UsageError> {
    if id.is_empty() || id.len() > 128 {
        return Err(UsageError::new(field, "must be 1 to 128 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:".contains(*c)))
    {
        return Err(UsageError::new(
            field,
            format!("character {c:?} is not allowed (letters, digits and -._: only)"),
        ));
    }
    Ok(id)
}

impl DpsTargetArgs {
    /// Resolves the DPS: flag, env var, then the local hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the flag or env var that is malformed or missing.
    pub fn resolve(self) -> Result<DpsTarget, UsageError> {
        let env_cs =
            crate::cli::run::env_text(ENV_DPS_CONNECTION_STRING)?.filter(|s| !s.trim().is_empty());
        let env_ca = std::env::var_os(ENV_CA_FILE)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let state = self
            .state
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let (ca_file, ca_field) = match (self.ca, env_ca) {
            (Some(p), _) => (Some(p), "--ca"),
            (None, Some(p)) => (Some(p), ENV_CA_FILE),
            (None, None) => (None, ""),
        };
        if let Some(p) = &ca_file
            && !p.is_file()
        {
            return Err(UsageError::new(
                ca_field,
                format!("{} is not a readable file", p.display()),
            ));
        }
        let hub = load_hub_info(&state).map_err(|reason| UsageError::new("--state", reason))?;
        let explicit = match (self.dps_connection_string, env_cs) {
            (Some(cs), _) => Some((cs.into_inner(), "--dps-connection-string")),
            (None, Some(cs)) => Some((cs, ENV_DPS_CONNECTION_STRING)),
            (None, None) => None,
        };
        let (cs, field, local) = match explicit {
            Some((cs, field)) => (cs, field, false),
            None => {
                let Some(hub) = &hub else {
                    return Err(UsageError::new(
                        "--dps-connection-string",
                        format!(
                            "not given, {ENV_DPS_CONNECTION_STRING} is not set, and there is no \
                             local hub at {} (start one with `azsim hub`)",
                            state.join("hub.json").display()
                        ),
                    ));
                };
                if hub.provisioning_service_connection_string.is_empty() {
                    return Err(UsageError::new(
                        "--state",
                        "the local hub's hub.json has no DPS (a hub from an older azsim: restart it)",
                    ));
                }
                (
                    hub.provisioning_service_connection_string.clone(),
                    "--state",
                    true,
                )
            }
        };
        let credentials =
            ServiceCredentials::parse(&cs).map_err(|reason| UsageError::new(field, reason))?;
        // The local hub's scope and CA also when its string was given explicitly.
        let hub = hub.filter(|h| {
            local
                || ServiceCredentials::parse(&h.provisioning_service_connection_string)
                    .is_ok_and(|c| c.host() == credentials.host())
        });
        Ok(DpsTarget {
            credentials,
            ca_file: ca_file.or_else(|| hub.as_ref().map(|h| h.ca_file.clone())),
            id_scope: hub.map(|h| h.id_scope).filter(|s| !s.is_empty()),
        })
    }
}

/// The PEM text of a certificate file (checked to hold a certificate).
fn certificate_file(
    field: &'static str,
    path: Option<PathBuf>,
) -> Result<Option<String>, UsageError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| UsageError::new(field, format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(UsageError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(Some(text))
}

fn create_action(
    id: String,
    mut body: Value,
    primary_key: Option<Secret<String>>,
    secondary_key: Option<Secret<String>>,
    certificate: Option<String>,
    initial_twin: Option<String>,
    disabled: bool,
) -> Result<DpsAction, UsageError> {
    if let Some(t) = initial_twin {
        body["initialTwin"] = json_object("--initial-twin", &t)?;
    }
    body["provisioningStatus"] = json!(if disabled { "disabled" } else { "enabled" });
    Ok(DpsAction::Create {
        id,
        body,
        primary_key: base64_key("--primary-key", primary_key)?,
        secondary_key: base64_key("--secondary-key", secondary_key)?,
        certificate,
    })
}

impl DpsArgs {
    /// Validates the arguments and resolves the DPS.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<DpsConfig, UsageError> {
        let (kind, action, target, json) = match self.command {
            DpsCommand::Enrollment(a) => {
                let (action, target, json) = match a.command {
                    RecordCommand::Create(c) => {
                        let id = record_id("REGISTRATION_ID", c.registration_id)?;
                        let mut body = json!({"registrationId": id});
                        if let Some(d) = c.device_id {
                            body["deviceId"] = json!(super::service::device_id("--device-id", d)?);
                        }
                        let action = create_action(
                            id,
                            body,
                            c.primary_key,
                            c.secondary_key,
                            certificate_file("--cert", c.cert)?,
                            c.initial_twin,
                            c.disabled,
                        )?;
                        (action, c.target, c.json)
                    }
                    RecordCommand::Show(x) => show_action(x, "REGISTRATION_ID")?,
                    RecordCommand::List(x) => (DpsAction::List, x.target, x.json),
                    RecordCommand::Delete(x) => delete_action(x, "REGISTRATION_ID")?,
                };
                (RecordKind::Enrollment, action, target, json)
            }
            DpsCommand::Group(a) => {
                let (action, target, json) = match a.command {
                    RecordCommand::Create(c) => {
                        let id = record_id("GROUP_ID", c.group_id)?;
                        let body = json!({"enrollmentGroupId": id});
                        let action = create_action(
                            id,
                            body,
                            c.primary_key,
                            c.secondary_key,
                            certificate_file("--ca-cert", c.ca_cert)?,
                            c.initial_twin,
                            c.disabled,
                        )?;
                        (action, c.target, c.json)
                    }
                    RecordCommand::Show(x) => show_action(x, "GROUP_ID")?,
                    RecordCommand::List(x) => (DpsAction::List, x.target, x.json),
                    RecordCommand::Delete(x) => delete_action(x, "GROUP_ID")?,
                };
                (RecordKind::Group, action, target, json)
            }
        };
        Ok(DpsConfig {
            target: target.resolve()?,
            kind,
            action,
            json,
        })
    }
}

type Parsed = (DpsAction, DpsTargetArgs, bool);

fn show_action(s: ShowArgs, field: &'static str) -> Result<Parsed, UsageError> {
    let action = DpsAction::Show {
        id: record_id(field, s.id)?,
        show_keys: s.show_keys,
    };
    Ok((action, s.target, s.json))
}

fn delete_action(d: DeleteArgs, field: &'static str) -> Result<Parsed, UsageError> {
    let action = DpsAction::Delete {
        id: record_id(field, d.id)?,
    };
    Ok((action, d.target, d.json))
}

/// DPS's global device endpoint.
pub const GLOBAL_DPS_HOST: &str = "global.azure-devices-provisioning.net";

/// `azsim run --dps ...`: provision through DPS first, then run as the device it assigns.
#[derive(Debug, Args, Clone, Default)]
pub struct DpsRunArgs {
    /// Provision through the Device Provisioning Service first (needs --registration-id and
    /// --key, --group-key, or --cert/--cert-key for X.509), then run as the device it assigns.
    #[arg(long, conflicts_with = "connection_string")]
    pub dps: bool,
    /// The DPS id scope [default: the local hub's, when provisioning there].
    #[arg(long, value_name = "SCOPE", requires = "dps")]
    pub id_scope: Option<String>,
    /// The registration id the device presents.
    #[arg(long, value_name = "ID", requires = "dps")]
    pub registration_id: Option<String>,
    /// The individual enrollment's symmetric key (base64).
    #[arg(
        long,
        value_name = "B64",
        requires = "dps",
        conflicts_with = "group_key"
    )]
    pub key: Option<Secret<String>>,
    /// The enrollment group's key (base64): the device key is derived from it for
    /// --registration-id.
    #[arg(long, value_name = "B64", requires = "dps")]
    pub group_key: Option<Secret<String>>,
    /// The DPS host (`host[:port]`) [default: the local hub when one runs in --state, else
    /// global.azure-devices-provisioning.net with --id-scope, else a local hub started here].
    #[arg(long, value_name = "HOST", requires = "dps")]
    pub provisioning_host: Option<String>,
    /// JSON sent with the register request as its `payload`.
    #[arg(long, value_name = "JSON", requires = "dps")]
    pub provisioning_payload: Option<String>,
}

/// Validated `--dps` input.
#[derive(Debug, Clone)]
pub struct DpsRun {
    /// `--id-scope`.
    pub id_scope: Option<String>,
    /// `--registration-id`.
    pub registration_id: String,
    /// The device key (given, or derived from the group key); `None`: X.509 (`--cert`).
    pub key: Option<Secret<String>>,
    /// Whether the key was derived from a group key (for messages).
    pub from_group: bool,
    /// `--provisioning-host`: host and port when given.
    pub host: Option<(String, Option<u16>)>,
    /// `--provisioning-payload` (valid JSON).
    pub payload: Option<String>,
}

impl DpsRunArgs {
    /// The validated `--dps` settings, `None` without `--dps`; `has_cert`: `--cert` and
    /// `--cert-key` were given (X.509 attestation).
    ///
    /// # Errors
    /// A [`UsageError`] naming the field; never echoing a key.
    pub fn into_settings(self, has_cert: bool) -> Result<Option<DpsRun>, UsageError> {
        if !self.dps {
            return Ok(None);
        }
        let registration_id = record_id(
            "--registration-id",
            self.registration_id
                .ok_or_else(|| UsageError::new("--registration-id", "required with --dps"))?,
        )?;
        let (key, from_group) = match (
            base64_key("--key", self.key)?,
            base64_key("--group-key", self.group_key)?,
        ) {
            (Some(k), None) if !has_cert => (Some(k), false),
            (None, Some(g)) if !has_cert => {
                let mut derived = String::new();
                azsim_proto::sas::derive_group_key(&mut derived, g.expose(), &registration_id)
                    .map_err(|e| UsageError::new("--group-key", e.to_string()))?;
                (Some(Secret::new(derived)), true)
            }
            (None, None) if has_cert => (None, false),
            _ => {
                return Err(UsageError::new(
                    "--key",
                    "--dps needs one of --key (individual enrollment), --group-key (enrollment \
                     group) or --cert/--cert-key (X.509)",
                ));
            }
        };
        if let Some(s) = &self.id_scope
            && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(UsageError::new(
                "--id-scope",
                "must be letters and digits (like 0ne0012ABCD)",
            ));
        }
        let host = match self.provisioning_host {
            None => None,
            Some(h) => {
                let (host, port) = azsim_proto::connection_string::split_host_port(&h)
                    .filter(|(host, _)| !host.is_empty())
                    .ok_or_else(|| {
                        UsageError::new("--provisioning-host", "must be host or host:port")
                    })?;
                if port == Some(0) {
                    return Err(UsageError::new(
                        "--provisioning-host",
                        "port must be between 1 and 65535",
                    ));
                }
                Some((host.to_owned(), port))
            }
        };
        if host.is_some() && self.id_scope.is_none() {
            return Err(UsageError::new(
                "--id-scope",
                "required with --provisioning-host",
            ));
        }
        let payload = self
            .provisioning_payload
            .map(|p| {
                super::service::json_arg("--provisioning-payload", &p)?;
                Ok::<_, UsageError>(p)
            })
            .transpose()?;
        Ok(Some(DpsRun {
            id_scope: self.id_scope,
            registration_id,
            key,
            from_group,
            host,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_dps_arguments_never_show_a_key_in_debug() {
        let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC0xMjM=";
        let cs = format!(
            "HostName=h;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={key}"
        );
        for args in [
            vec!["run", "--dps", "--registration-id", "r", "--key", key],
            vec!["run", "--dps", "--registration-id", "r", "--group-key", key],
            vec![
                "dps",
                "enrollment",
                "create",
                "r",
                "--primary-key",
                key,
                "--secondary-key",
                key,
            ],
            vec!["dps", "group", "create", "g", "--primary-key", key],
            vec!["dps", "enrollment", "list", "--dps-connection-string", &cs],
        ] {
            let cli = crate::cli::Cli::try_parse_args(
                std::iter::once("azsim").chain(args.iter().copied()),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let shown = format!("{cli:?}");
            assert!(!shown.contains(key), "{args:?}: {shown}");
        }
        // The validated settings too, with the derived key.
        let run = DpsRunArgs {
            dps: true,
            registration_id: Some("r".into()),
            group_key: Some(Secret::new(key.into())),
            ..DpsRunArgs::default()
        }
        .into_settings(false)
        .unwrap()
        .unwrap();
        let mut derived = String::new();
        azsim_proto::sas::derive_group_key(&mut derived, key, "r").unwrap();
        let shown = format!("{run:?}");
        assert!(!shown.contains(key) && !shown.contains(&derived), "{shown}");
        assert_eq!(
            run.key.as_ref().map(|k| k.expose().as_str()),
            Some(derived.as_str())
        );
    }

    #[test]
    fn registration_ids_follow_dps_rules() {
        assert!(record_id("REGISTRATION_ID", "dev-1.a_b:c".into()).is_ok());
        assert_eq!(
            record_id("REGISTRATION_ID", "a/b".into())
                .unwrap_err()
                .to_string(),
            "REGISTRATION_ID: character '/' is not allowed (letters, digits and -._: only)"
        );
        assert!(record_id("GROUP_ID", String::new()).is_err());
        assert!(record_id("GROUP_ID", "x".repeat(129)).is_err());
    }
}
