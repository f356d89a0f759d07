//! Command-line parsing: clap structs only, one file per subcommand.
//!
//! Each `cli/X.rs` holds the clap structs of one subcommand and an `into_config(self) ->
//! Result<XConfig, UsageError>` that validates everything that can be validated without doing the
//! work; `cmd/X.rs` takes the config and never sees clap types. There is no global `--json`: the
//! subcommands that print data take their own `--json`, so `--help` shows it where it means
//! something. Log verbosity is `RUST_LOG` (logs go to stderr, output to stdout); the default is
//! [`Cli::default_log_filter`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

pub mod c2d;
pub mod cert;
pub mod device;
pub mod dps;
pub mod fleet;
pub mod hub;
pub mod hub_limits;
pub mod invoke;
pub mod job;
pub mod monitor;
pub mod query;
pub mod run;
pub mod service;
pub mod token;
pub mod twin;

/// azsim: run an ESP32's Azure IoT Hub device session on a laptop, against a real hub or a local one.
#[derive(Debug, Parser)]
#[command(
    name = "azsim",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Each owner adds its variant and its dispatch line in [`Cli::run`].
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make, derive or inspect SAS tokens (device, module, hub policy, DPS).
    Token(token::TokenArgs),
    /// Manage device identities in a hub's registry (create prints the connection string).
    Device(device::DeviceArgs),
    /// Invoke a direct method on a connected device and print its status and payload.
    Invoke(invoke::InvokeArgs),
    /// Show a device twin or patch its desired properties and tags.
    Twin(twin::TwinArgs),
    /// Send cloud-to-device messages and read their delivery feedback (over AMQP, as the
    /// service SDKs do).
    C2d(c2d::C2dArgs),
    /// Watch telemetry (over the Event Hubs-compatible endpoint, local or Azure hub),
    /// connections and twin changes (local azsim hub only).
    Monitor(monitor::MonitorArgs),
    /// Connect as a device and behave like the reference ESP32 firmware (telemetry, methods,
    /// twin, C2D); without a connection string, against the local hub.
    Run(run::RunArgs),
    /// Run many devices at once, each as `azsim run` does (telemetry, methods, twin, C2D), with
    /// pacing, live figures and a summary; shardable across machines.
    Fleet(fleet::FleetArgs),
    /// Make test certificates for X.509 devices: a CA (`cert ca NAME`) and device
    /// certificates signed by it or self-signed (`cert device ID [--ca NAME]`).
    Cert(cert::CertArgs),
    /// Query device and module twins and job results with the IoT Hub query language.
    Query(query::QueryArgs),
    /// Schedule jobs v2 (a method or a twin update over the devices a condition selects),
    /// show, list and cancel them.
    Job(job::JobArgs),
    /// Manage Device Provisioning Service enrollments and enrollment groups (the local hub's
    /// DPS by default).
    Dps(dps::DpsArgs),
    /// Run a local Azure IoT Hub: MQTT (TLS and WebSockets), AMQP, the service REST API, DPS,
    /// the Event Hubs-compatible endpoint and a dashboard; state in SQLite.
    Hub(hub::HubArgs),
}

impl Cli {
    /// clap's command for [`Cli`], with negative numbers accepted as option and positional
    /// values everywhere, so that `--count -1` reaches the field's own check (`invalid value '-1'
    /// for '--count <N>'`) instead of being taken for an unknown flag `-1`.
    pub fn command_for_parsing() -> clap::Command {
        fn allow(cmd: clap::Command) -> clap::Command {
            cmd.mut_args(|a| {
                if a.get_action().takes_values() {
                    a.allow_negative_numbers(true)
                } else {
                    a
                }
            })
            .mut_subcommands(allow)
        }
        allow(<Cli as clap::CommandFactory>::command())
    }

    /// Parses a command line (program name first) with [`Cli::command_for_parsing`].
    ///
    /// # Errors
    /// clap's usage error (or its `--help`/`--version` output), for the caller to render.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command_for_parsing().try_get_matches_from(args)?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The log filter when `RUST_LOG` is unset: `warn`, except that `azsim hub` logs its
    /// connections and refusals (`CONNACK 5 not authorized` with the reason) at `info`, since a
    /// device only ever sees the code and the hub's log is where the reason is.
    #[must_use]
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Hub(_) => "warn,azsim_emulator=info",
            _ => "warn",
        }
    }

    /// Validates the arguments of the chosen subcommand and runs it.
    ///
    /// # Errors
    /// [`CliError::Usage`] for bad input (exit 2), otherwise what the subcommand returns.
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Token(args) => crate::cmd::token::run(args.into_config()?).await,
            Command::Device(args) => crate::cmd::device::run(args.into_config()?).await,
            Command::Invoke(args) => crate::cmd::invoke::run(args.into_config()?).await,
            Command::Twin(args) => crate::cmd::twin::run(args.into_config()?).await,
            Command::C2d(args) => crate::cmd::c2d::run(args.into_config()?).await,
            Command::Monitor(args) => crate::cmd::monitor::run(args.into_config()?).await,
            Command::Run(args) => crate::cmd::run::run(args.into_config()?).await,
            Command::Fleet(args) => crate::cmd::fleet::run(args.into_config()?).await,
            Command::Query(args) => crate::cmd::query::run(args.into_config()?).await,
            Command::Job(args) => crate::cmd::job::run(args.into_config()?).await,
            Command::Hub(args) => crate::cmd::hub::run(args.into_config()?).await,
            Command::Dps(args) => crate::cmd::dps::run(args.into_config()?).await,
            Command::Cert(args) => crate::cmd::cert::run(args.into_config()?).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parsed_arguments_never_show_a_secret_in_debug() {
        let key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC0xMjM=";
        let cs = format!("HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={key}");
        let token = "SharedAccessSignature sr=h&sig=c2lnbmF0dXJlLXNlY3JldA%3D%3D&se=1";
        for args in [
            vec![
                "device",
                "create",
                "d",
                "--primary-key",
                key,
                "--secondary-key",
                key,
            ],
            vec!["device", "list", "--hub-connection-string", &cs],
            vec!["token", "--host", "h", "--device", "d", "--key", key],
            vec!["token", "--connection-string", &cs],
            vec!["token", "inspect", token, "--key", key],
            vec![
                "token",
                "dps",
                "--id-scope",
                "0ne1",
                "--registration-id",
                "r",
                "--group-key",
                key,
            ],
            vec![
                "token",
                "derive-key",
                "--group-key",
                key,
                "--registration-id",
                "r",
            ],
        ] {
            let cli = Cli::try_parse_args(std::iter::once("azsim").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let shown = format!("{cli:?}");
            assert!(
                !shown.contains(key) && !shown.contains("c2lnbmF0dXJl"),
                "{args:?}: {shown}"
            );
        }
    }
}
