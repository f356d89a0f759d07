//! `azsim token`: clap structs and validation. The work is in `crate::cmd::token`.

use azsim_emulator::clock::{rfc3339, unix_now};
use azsim_proto::connection_string::split_host_port;
use azsim_proto::endpoint::MQTT_PORT;
use azsim_proto::sas;
use azsim_proto::secret::Secret;
use clap::{Args, Subcommand};

use crate::error::UsageError;

/// The env var `azsim token` reads a device (or service) connection string from.
pub const DEVICE_CS_ENV: &str = "IOTHUB_DEVICE_CONNECTION_STRING";

/// The default token lifetime, as every Azure SDK uses.
pub const DEFAULT_TTL: u64 = 3600;

/// The last second `time` can format (9999-12-31T23:59:59Z); later expiries are refused.
const MAX_EXPIRY: u64 = 253_402_300_799;

/// Make a SAS token for a device, module or hub policy, or derive/inspect one.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    /// DPS registration token, group-key derivation, or token inspection.
    #[command(subcommand)]
    pub command: Option<TokenCommand>,
    /// Signing options (when no subcommand is given).
    #[command(flatten)]
    pub sign: SignArgs,
}

/// `azsim token dps | derive-key | inspect`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a DPS registration token (`skn=registration`).
    Dps(DpsArgs),
    /// Derive a device key from a DPS group-enrollment key and a registration id.
    DeriveKey(DeriveKeyArgs),
    /// Decode a SAS token and, given a key, say whether it is valid and what is wrong with it.
    Inspect(InspectArgs),
}

/// When the token expires: `--ttl` (default 3600 s) or `--expiry`.
#[derive(Debug, Args, Clone, Default)]
pub struct ExpiryArgs {
    /// Lifetime from now: seconds (3600) or a duration (1h, 90m) [default: 3600].
    #[arg(long, value_name = "SECONDS", conflicts_with = "expiry")]
    pub ttl: Option<String>,
    /// Exact expiry, Unix seconds or RFC 3339 (2030-01-01T00:00:00Z), for reproducible tokens.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub expiry: Option<String>,
    /// Sign even when --expiry is already past (to reproduce a published example or test refusal).
    #[arg(long)]
    pub allow_expired: bool,
}

/// `azsim token [--connection-string CS | --host H [--device D [--module M]] --key B64 [--policy P]]`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Device, module or service connection string [env: IOTHUB_DEVICE_CONNECTION_STRING].
    #[arg(long, value_name = "CS")]
    pub connection_string: Option<Secret<String>>,
    /// Hub host name, when no connection string is given.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Device id (omit for a hub-level policy token).
    #[arg(long, value_name = "ID", requires = "host")]
    pub device: Option<String>,
    /// Module id (needs --device).
    #[arg(long, value_name = "ID", requires = "device")]
    pub module: Option<String>,
    /// Base64 key: the device's, the module's or the policy's.
    #[arg(long, value_name = "B64")]
    pub key: Option<Secret<String>>,
    /// Shared access policy name (`skn`); required for a hub-level token.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print JSON: token, resource, policy, expiry, and for devices the MQTT CONNECT fields.
    #[arg(long, conflicts_with = "mqtt")]
    pub json: bool,
    /// Print the MQTT CONNECT fields (host, port, client id, username, password) to paste.
    #[arg(long)]
    pub mqtt: bool,
}

/// `azsim token dps`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("dps_key").required(true).args(["key", "group_key"]))]
pub struct DpsArgs {
    /// DPS ID scope (`0ne...`).
    #[arg(long, value_name = "SCOPE")]
    pub id_scope: String,
    /// Registration id (becomes the device id).
    #[arg(long, value_name = "ID")]
    pub registration_id: String,
    /// The enrollment's (or derived device) key, base64.
    #[arg(long, value_name = "B64")]
    pub key: Option<Secret<String>>,
    /// A group-enrollment key, base64: the device key is derived from it first.
    #[arg(long, value_name = "B64")]
    pub group_key: Option<Secret<String>>,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `azsim token derive-key`.
#[derive(Debug, Args)]
pub struct DeriveKeyArgs {
    /// The group-enrollment key, base64.
    #[arg(long, value_name = "B64")]
    pub group_key: Secret<String>,
    /// The registration id (case-sensitive).
    #[arg(long, value_name = "ID")]
    pub registration_id: String,
}

/// `azsim token inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token (`SharedAccessSignature sr=...&sig=...&se=...`); quote it.
    #[arg(value_name = "TOKEN")]
    pub token: Secret<String>,
    /// Check against this connection string's key and identity
    /// [env: IOTHUB_DEVICE_CONNECTION_STRING, used when no --key is given].
    #[arg(long, value_name = "CS", conflicts_with = "key")]
    pub connection_string: Option<Secret<String>>,
    /// Check against this base64 key.
    #[arg(long, value_name = "B64")]
    pub key: Option<Secret<String>>,
    /// Expected hub host name.
    #[arg(long, value_name = "HOST", requires = "key")]
    pub host: Option<String>,
    /// Expected device id.
    #[arg(long, value_name = "ID", requires = "host")]
    pub device: Option<String>,
    /// Expected module id.
    #[arg(long, value_name = "ID", requires = "device")]
    pub module: Option<String>,
    /// Expected policy name (`skn`).
    #[arg(long, value_name = "NAME", requires = "key")]
    pub policy: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A base64 key that has been checked. `Debug` never shows it ([`Secret`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SecretKey(Secret<String>);

impl SecretKey {
    /// Checks `b64` with the same rule the signer uses; the error names `field`, never the value.
    ///
    /// # Errors
    /// A [`UsageError`] for an empty, non-base64 or oversized key.
    pub fn parse(field: &'static str, b64: &str) -> Result<Self, UsageError> {
        sas::check_key(b64).map_err(|e| UsageError::new(field, key_problem(e)))?;
        Ok(Self(Secret::new(b64.to_owned())))
    }

    /// The base64 text, for signing. Never print it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

fn key_problem(e: sas::KeyError) -> &'static str {
    match e {
        sas::KeyError::Empty => "empty",
        sas::KeyError::NotBase64 => "not valid base64",
        sas::KeyError::TooLong => "longer than 512 bytes once decoded",
    }
}

/// Who a token is for: a hub (policy token), a device or a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The hub host name that goes into `sr` and the MQTT username (`HostName`).
    pub host: String,
    /// Where to open the TCP/TLS connection when it differs (`GatewayHostName`, IoT Edge).
    pub gateway_host: Option<String>,
    /// The device id; `None` for a hub-level (policy) token.
    pub device_id: Option<String>,
    /// The module id.
    pub module_id: Option<String>,
}

impl Target {
    /// Where an MQTT client connects: the gateway or the hub host without any `:port`, and the
    /// port given in `HostName` (`localhost:8884`) or 8883.
    pub fn connect_host_port(&self) -> (&str, u16) {
        let host = self.gateway_host.as_deref().unwrap_or(&self.host);
        match split_host_port(host) {
            Some((h, port)) => (h, port.unwrap_or(MQTT_PORT)),
            None => (host, MQTT_PORT),
        }
    }

    /// The resource the token grants, as `azsim_proto::sas::Resource`.
    pub fn resource(&self) -> sas::Resource<'_> {
        match (&self.device_id, &self.module_id) {
            (None, _) => sas::Resource::Hub { host: &self.host },
            (Some(d), None) => sas::Resource::Device {
                host: &self.host,
                device_id: d,
            },
            (Some(d), Some(m)) => sas::Resource::Module {
                host: &self.host,
                device_id: d,
                module_id: m,
            },
        }
    }
}

/// How `azsim token` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The bare token, one line.
    Text,
    /// One JSON object.
    Json,
    /// The MQTT CONNECT fields and a `mosquitto_pub` line.
    Mqtt,
}

/// Validated `azsim token` (signing a hub, device or module token).
#[derive(Debug)]
pub struct SignConfig {
    /// The hub, device or module.
    pub target: Target,
    /// The key to sign with.
    pub key: SecretKey,
    /// `skn`: the policy name for a policy key, `None` for a device or module key.
    pub policy: Option<String>,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// Output form.
    pub output: Output,
}

/// The key a DPS token is signed with.
#[derive(Debug)]
pub enum DpsKey {
    /// The individual enrollment's (or an already derived) key.
    Device(SecretKey),
    /// A group-enrollment key; the device key is derived from it.
    Group(SecretKey),
}

/// Validated `azsim token dps`.
#[derive(Debug)]
pub struct DpsConfig {
    /// The DPS ID scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
    /// The key.
    pub key: DpsKey,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// JSON output.
    pub json: bool,
}

/// Validated `azsim token derive-key`.
#[derive(Debug)]
pub struct DeriveKeyConfig {
    /// The group-enrollment key.
    pub group_key: SecretKey,
    /// The registration id.
    pub registration_id: String,
}

/// What `azsim token inspect` checks the token against.
#[derive(Debug)]
pub struct InspectAgainst {
    /// The key.
    pub key: SecretKey,
    /// The expected hub/device/module, when known (`None`: only the signature and expiry).
    pub target: Option<Target>,
    /// The expected `skn`: `Some` for a policy key, `None` for a device or module key; only
    /// checked when `policy_known`.
    pub policy: Option<String>,
    /// Whether `policy` says something (a connection string or `--policy` was given).
    pub policy_known: bool,
    /// Where the key came from, for the report (`--key`, `--connection-string`, the env var).
    pub source: &'static str,
}

/// Validated `azsim token inspect`.
#[derive(Debug)]
pub struct InspectConfig {
    /// The token text as given (it carries a signature: never print it whole).
    pub token: Secret<String>,
    /// What to check it against, if anything.
    pub against: Option<InspectAgainst>,
    /// The time to check at (now), Unix seconds.
    pub now: u64,
    /// JSON output.
    pub json: bool,
}

/// Validated `azsim token` input.
#[derive(Debug)]
pub enum TokenConfig {
    /// Sign a hub, device or module token.
    Sign(SignConfig),
    /// Sign a DPS registration token.
    Dps(DpsConfig),
    /// Derive a device key from a group key.
    DeriveKey(DeriveKeyConfig),
    /// Decode and check a token.
    Inspect(InspectConfig),
}

impl TokenArgs {
    /// Validates the arguments (reading `IOTHUB_DEVICE_CONNECTION_STRING` when no identity flag
    /// is given).
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field; it never contains a key or a connection string.
    pub fn into_config(self) -> Result<TokenConfig, UsageError> {
        let env_cs = crate::cli::run::env_text(DEVICE_CS_ENV)?.filter(|s| !s.is_empty());
        self.into_config_with(unix_now(), env_cs)
    }

    /// [`TokenArgs::into_config`] with the clock and the environment passed in.
    ///
    /// # Errors
    /// As [`TokenArgs::into_config`].
    pub fn into_config_with(
        self,
        now: u64,
        env_cs: Option<String>,
    ) -> Result<TokenConfig, UsageError> {
        match self.command {
            None => self.sign.into_config(now, env_cs).map(TokenConfig::Sign),
            Some(TokenCommand::Dps(a)) => a.into_config(now).map(TokenConfig::Dps),
            Some(TokenCommand::DeriveKey(a)) => Ok(TokenConfig::DeriveKey(DeriveKeyConfig {
                group_key: SecretKey::parse("--group-key", a.group_key.expose())?,
                registration_id: non_empty("--registration-id", a.registration_id)?,
            })),
            Some(TokenCommand::Inspect(a)) => a.into_config(now, env_cs).map(TokenConfig::Inspect),
        }
    }
}

fn non_empty(field: &'static str, v: String) -> Result<String, UsageError> {
    if v.trim().is_empty() {
        return Err(UsageError::new(field, "empty"));
    }
    Ok(v)
}

/// A host, device or module id that goes into `sr` or a username: not empty, no `/` (it would
/// change the resource path), no control characters. Anything else is signed as given (encoded
/// once), as the SDKs do.
fn id_field(field: &'static str, v: String) -> Result<String, UsageError> {
    let v = non_empty(field, v)?;
    if v.contains('/') {
        return Err(UsageError::new(field, "must not contain '/'"));
    }
    if v.chars().any(char::is_control) {
        return Err(UsageError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v)
}

impl ExpiryArgs {
    /// Resolves to an absolute expiry (Unix seconds) at `now`.
    ///
    /// # Errors
    /// `--ttl` zero, unparsable or too large; `--expiry` unparsable, too large or (without
    /// `--allow-expired`) not in the future.
    pub fn resolve(&self, now: u64) -> Result<u64, UsageError> {
        if let Some(text) = &self.expiry {
            let at = parse_expiry(text)?;
            if at > MAX_EXPIRY {
                return Err(UsageError::new("--expiry", "is after the year 9999"));
            }
            if at <= now && !self.allow_expired {
                return Err(UsageError::new(
                    "--expiry",
                    format!(
                        "{at} ({}) is not in the future; pass --allow-expired to sign it anyway",
                        rfc3339(at)
                    ),
                ));
            }
            return Ok(at);
        }
        let ttl = match &self.ttl {
            None => DEFAULT_TTL,
            Some(text) => parse_ttl(text)?,
        };
        match now.checked_add(ttl) {
            Some(at) if at <= MAX_EXPIRY => Ok(at),
            _ => Err(UsageError::new(
                "--ttl",
                "too large (expiry after the year 9999)",
            )),
        }
    }
}

/// Unix seconds (`1767225600`) or an RFC 3339 time (`2026-01-01T00:00:00Z`).
fn parse_expiry(text: &str) -> Result<u64, UsageError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| UsageError::new("--expiry", "is after the year 9999"));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            UsageError::new(
                "--expiry",
                "must be unix seconds (1767225600) or an RFC 3339 time (2026-01-01T00:00:00Z)",
            )
        })?;
    u64::try_from(t.unix_timestamp()).map_err(|_| UsageError::new("--expiry", "is before 1970"))
}

fn parse_ttl(text: &str) -> Result<u64, UsageError> {
    let text = text.trim();
    let secs = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map_err(|_| UsageError::new("--ttl", "too large"))?
    } else {
        humantime::parse_duration(text)
            .map_err(|_| {
                UsageError::new(
                    "--ttl",
                    "must be seconds (3600) or a duration (1h, 90m, 7d)",
                )
            })?
            .as_secs()
    };
    if secs == 0 {
        return Err(UsageError::new("--ttl", "must be at least 1 second"));
    }
    Ok(secs)
}

impl SignArgs {
    fn into_config(self, now: u64, env_cs: Option<String>) -> Result<SignConfig, UsageError> {
        let output = match (self.json, self.mqtt) {
            (true, _) => Output::Json,
            (false, true) => Output::Mqtt,
            _ => Output::Text,
        };
        let explicit = self.host.is_some() || self.key.is_some();
        let (target, key, policy) = if let Some(cs) = self.connection_string {
            if explicit || self.policy.is_some() {
                return Err(UsageError::new(
                    "--connection-string",
                    "cannot be combined with --host, --device, --module, --key or --policy",
                ));
            }
            from_connection_string("--connection-string", cs.expose())?
        } else if explicit {
            let host = self
                .host
                .ok_or_else(|| UsageError::new("--host", "required with --key"))?;
            let key = self
                .key
                .ok_or_else(|| UsageError::new("--key", "required with --host"))?;
            let target = Target {
                host: id_field("--host", host)?,
                gateway_host: None,
                device_id: self.device.map(|d| id_field("--device", d)).transpose()?,
                module_id: self.module.map(|m| id_field("--module", m)).transpose()?,
            };
            let policy = self.policy.map(|p| id_field("--policy", p)).transpose()?;
            if target.device_id.is_none() && policy.is_none() {
                return Err(UsageError::new(
                    "--policy",
                    "required for a hub-level token (no --device): the policy name the key belongs to, e.g. iothubowner",
                ));
            }
            (target, SecretKey::parse("--key", key.expose())?, policy)
        } else if let Some(cs) = env_cs {
            if self.policy.is_some() {
                return Err(UsageError::new("--policy", "needs --host and --key"));
            }
            from_connection_string(DEVICE_CS_ENV, &cs)?
        } else {
            return Err(UsageError::new(
                "--connection-string",
                format!("required (or set {DEVICE_CS_ENV}, or give --host and --key)"),
            ));
        };
        if output == Output::Mqtt && target.device_id.is_none() {
            return Err(UsageError::new(
                "--mqtt",
                "needs a device or module identity; a hub policy token is not an mqtt credential",
            ));
        }
        let expiry = self.expiry.resolve(now)?;
        Ok(SignConfig {
            target,
            key,
            policy,
            expiry,
            output,
        })
    }
}

impl DpsArgs {
    fn into_config(self, now: u64) -> Result<DpsConfig, UsageError> {
        let key = match (self.key, self.group_key) {
            (Some(k), None) => DpsKey::Device(SecretKey::parse("--key", k.expose())?),
            (None, Some(g)) => DpsKey::Group(SecretKey::parse("--group-key", g.expose())?),
            _ => {
                return Err(UsageError::new(
                    "--key",
                    "give exactly one of --key and --group-key",
                ));
            }
        };
        Ok(DpsConfig {
            id_scope: id_field("--id-scope", self.id_scope)?,
            registration_id: id_field("--registration-id", self.registration_id)?,
            key,
            expiry: self.expiry.resolve(now)?,
            json: self.json,
        })
    }
}

impl InspectArgs {
    fn into_config(self, now: u64, env_cs: Option<String>) -> Result<InspectConfig, UsageError> {
        let token = Secret::new(self.token.expose().trim().to_owned());
        if token.expose().is_empty() {
            return Err(UsageError::new("TOKEN", "empty"));
        }
        let against = if let Some(cs) = self.connection_string {
            let (target, key, policy) = from_connection_string("--connection-string", cs.expose())?;
            Some(InspectAgainst {
                key,
                target: Some(target),
                policy,
                policy_known: true,
                source: "--connection-string",
            })
        } else if let Some(k) = self.key {
            let key = SecretKey::parse("--key", k.expose())?;
            let target = match self.host {
                None => None,
                Some(h) => Some(Target {
                    host: id_field("--host", h)?,
                    gateway_host: None,
                    device_id: self.device.map(|d| id_field("--device", d)).transpose()?,
                    module_id: self.module.map(|m| id_field("--module", m)).transpose()?,
                }),
            };
            let policy = self.policy.map(|p| id_field("--policy", p)).transpose()?;
            // A --device says "device or module key" (no skn); a bare --host says nothing.
            let policy_known =
                policy.is_some() || target.as_ref().is_some_and(|t| t.device_id.is_some());
            Some(InspectAgainst {
                key,
                target,
                policy,
                policy_known,
                source: "--key",
            })
        } else if let Some(cs) = env_cs {
            let (target, key, policy) = from_connection_string(DEVICE_CS_ENV, &cs)?;
            Some(InspectAgainst {
                key,
                target: Some(target),
                policy,
                policy_known: true,
                source: DEVICE_CS_ENV,
            })
        } else {
            None
        };
        Ok(InspectConfig {
            token,
            against,
            now,
            json: self.json,
        })
    }
}

/// Reads a device, module or service connection string into (target, key, policy). `field` is
/// what the user set (`--connection-string` or the env var) and prefixes every error; neither the
/// key nor the string is ever part of one.
///
/// # Errors
/// A [`UsageError`] naming `field` and the connection-string key that is wrong.
pub fn from_connection_string(
    field: &'static str,
    cs: &str,
) -> Result<(Target, SecretKey, Option<String>), UsageError> {
    use azsim_proto::connection_string::{ConnectionString, Kind};
    let parsed = ConnectionString::parse(cs.trim())
        .map_err(|e| UsageError::new(field, crate::error::connection_string_problem(cs, e)))?;
    match parsed.kind() {
        Kind::Device | Kind::Module | Kind::Service => {}
        Kind::DeviceWithSas => {
            return Err(UsageError::new(
                field,
                "has a SharedAccessSignature instead of a SharedAccessKey: there is no key to sign or check with",
            ));
        }
        Kind::X509 => {
            return Err(UsageError::new(
                field,
                "is an x509 (certificate) identity: it has no key and uses no sas token",
            ));
        }
    }
    let key = parsed
        .shared_access_key()
        .ok_or_else(|| UsageError::new(field, "SharedAccessKey: missing"))?;
    let key = SecretKey::parse(field, key)
        .map_err(|e| UsageError::new(field, format!("SharedAccessKey: {}", e.message())))?;
    let target = Target {
        host: parsed.host_name().to_owned(),
        gateway_host: parsed.gateway_host_name().map(str::to_owned),
        device_id: parsed.device_id().map(str::to_owned),
        module_id: parsed.module_id().map(str::to_owned),
    };
    Ok((
        target,
        key,
        parsed.shared_access_key_name().map(str::to_owned),
    ))
}
