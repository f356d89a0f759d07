//! `azsim token`: clap structs and validation. The work is in `crate::cmd::token`.

use clap::{Args, Subcommand};

use crate::error::UsageError;

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
    /// Exact expiry in Unix seconds, for reproducible tokens.
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
    pub connection_string: Option<String>,
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
    pub key: Option<String>,
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
    pub key: Option<String>,
    /// A group-enrollment key, base64: the device key is derived from it first.
    #[arg(long, value_name = "B64")]
    pub group_key: Option<String>,
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
    pub group_key: String,
    /// The registration id (case-sensitive).
    #[arg(long, value_name = "ID")]
    pub registration_id: String,
}

/// `azsim token inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token (`SharedAccessSignature sr=...&sig=...&se=...`); quote it.
    #[arg(value_name = "TOKEN")]
    pub token: String,
    /// Check against this connection string's key and identity
    /// [env: IOTHUB_DEVICE_CONNECTION_STRING, used when no --key is given].
    #[arg(long, value_name = "CS", conflicts_with = "key")]
    pub connection_string: Option<String>,
    /// Check against this base64 key.
    #[arg(long, value_name = "B64")]
    pub key: Option<String>,
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

/// Validated `azsim token` input.
#[derive(Debug)]
pub enum TokenConfig {
    /// Placeholder until signing lands.
    Pending,
}

impl TokenArgs {
    /// Validates the arguments.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<TokenConfig, UsageError> {
        Ok(TokenConfig::Pending)
    }
}
