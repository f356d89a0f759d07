//! `azsim cert ca NAME` and `azsim cert device ID [--ca NAME]`: clap structs and validation.
//! The work is in `crate::cmd::cert`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::service::{HubTargetArgs, device_id, module_arg};
use crate::cmd::cert::{HubCaAction, HubCaConfig, ca_name_of};
use crate::error::UsageError;

/// Make test certificates for X.509 devices (PEM files in the current directory or --out).
#[derive(Debug, Args)]
pub struct CertArgs {
    /// What to make.
    #[command(subcommand)]
    pub command: CertCommand,
}

/// `azsim cert ca | device`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// A CA certificate and key (NAME.pem, NAME.key.pem) to register with a hub
    /// (`azsim hub ca add NAME.pem`) and to sign device certificates with.
    Ca(CaArgs),
    /// A device certificate and key (ID.pem, ID.key.pem) whose subject CN is the device id:
    /// signed by --ca, or self-signed (register its thumbprint: `azsim device create ID --x509
    /// self-signed --cert ID.pem`).
    Device(DeviceCertArgs),
}

/// `azsim cert ca NAME`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// The CA's name: its subject CN and its file names.
    pub name: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `azsim cert device ID`.
#[derive(Debug, Args)]
pub struct DeviceCertArgs {
    /// The device id (the certificate's subject CN).
    pub device: String,
    /// A module of the device: the CN is `ID/MODULE` and the files `ID-MODULE.pem`.
    #[arg(long, value_name = "ID")]
    pub module: Option<String>,
    /// Sign with this CA (NAME.pem and NAME.key.pem in --out, or a path to the CA's .pem with
    /// its .key.pem beside it); without it the certificate is self-signed.
    #[arg(long, value_name = "NAME")]
    pub ca: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What both take.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Directory for the files [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Days of validity from now (1 to 36500).
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: i64,
    /// Print one JSON object (files and thumbprints).
    #[arg(long)]
    pub json: bool,
}

/// Validated `azsim cert`.
#[derive(Debug)]
pub struct CertConfig {
    /// What to make.
    pub kind: CertKind,
    /// Where the files go.
    pub out: PathBuf,
    /// Days of validity.
    pub days: i64,
    /// JSON output.
    pub json: bool,
}

/// What `azsim cert` makes.
#[derive(Debug)]
pub enum CertKind {
    /// A CA named `name`.
    Ca {
        /// Subject CN and file stem.
        name: String,
    },
    /// A device (or module) certificate.
    Device {
        /// Subject CN: `device` or `device/module`.
        cn: String,
        /// File stem: `device` or `device-module`.
        stem: String,
        /// The signing CA's certificate file (its key is `<stem>.key.pem` beside it).
        ca: Option<PathBuf>,
    },
}

/// A CA name: a file stem and a CN, so no path separators and nothing empty.
fn ca_name(field: &'static str, name: &str) -> Result<(), UsageError> {
    if name.is_empty() || name.len() > 64 {
        return Err(UsageError::new(field, "must be 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._".contains(*c)))
    {
        return Err(UsageError::new(
            field,
            format!("character '{c}' is not allowed (A-Z, a-z, 0-9, '-', '.', '_')"),
        ));
    }
    Ok(())
}

/// The CA's certificate file for `--ca`: a path ending in `.pem`, or NAME in `out`.
pub fn ca_file(out: &std::path::Path, ca: &str) -> PathBuf {
    if ca.ends_with(".pem") || ca.contains('/') {
        PathBuf::from(ca)
    } else {
        out.join(format!("{ca}.pem"))
    }
}

/// The key file beside a certificate file: `X.pem` -> `X.key.pem`.
pub fn key_file_for(cert: &std::path::Path) -> PathBuf {
    let stem = cert
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".pem").to_string())
        .unwrap_or_default();
    cert.with_file_name(format!("{stem}.key.pem"))
}

impl CertArgs {
    /// Validates the arguments.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<CertConfig, UsageError> {
        let (kind, common) = match self.command {
            CertCommand::Ca(a) => {
                ca_name("NAME", &a.name)?;
                (CertKind::Ca { name: a.name }, a.common)
            }
            CertCommand::Device(a) => {
                let device = device_id("DEVICE", a.device)?;
                let module = module_arg(a.module)?;
                let (cn, stem) = match &module {
                    Some(m) => (format!("{device}/{m}"), format!("{device}-{m}")),
                    None => (device.clone(), device),
                };
                let out = a.common.out.clone().unwrap_or_else(|| PathBuf::from("."));
                let ca = match a.ca {
                    Some(c) if c.is_empty() => {
                        return Err(UsageError::new("--ca", "must not be empty"));
                    }
                    Some(c) => Some(ca_file(&out, &c)),
                    None => None,
                };
                (CertKind::Device { cn, stem, ca }, a.common)
            }
        };
        if !(1..=36500).contains(&common.days) {
            return Err(UsageError::new("--days", "must be between 1 and 36500"));
        }
        Ok(CertConfig {
            kind,
            out: common.out.unwrap_or_else(|| PathBuf::from(".")),
            days: common.days,
            json: common.json,
        })
    }
}

/// `azsim hub ca add | list | delete`: the CA certificates a hub holds for
/// `certificateAuthority` devices.
#[derive(Debug, Args)]
pub struct HubCaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: HubCaCommand,
}

/// `azsim hub ca add | list | delete`.
#[derive(Debug, Subcommand)]
pub enum HubCaCommand {
    /// Upload a CA certificate (PEM); devices registered `--x509 ca` whose certificate it
    /// issued may then connect. Replaces a CA of the same name.
    Add(HubCaAddArgs),
    /// List the hub's CA certificates.
    List(HubCaListArgs),
    /// Delete a CA certificate by name.
    Delete(HubCaDeleteArgs),
}

/// `azsim hub ca add FILE`.
#[derive(Debug, Args)]
pub struct HubCaAddArgs {
    /// The CA certificate, PEM.
    pub file: PathBuf,
    /// Its name in the hub [default: the file name without .pem].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the hub's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `azsim hub ca list`.
#[derive(Debug, Args)]
pub struct HubCaListArgs {
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print the hub's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `azsim hub ca delete NAME`.
#[derive(Debug, Args)]
pub struct HubCaDeleteArgs {
    /// The CA's name in the hub.
    pub name: String,
    #[command(flatten)]
    pub target: HubTargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl HubCaArgs {
    /// Validates the arguments and resolves the hub.
    ///
    /// # Errors
    /// A [`UsageError`] naming the bad field.
    pub fn into_config(self) -> Result<HubCaConfig, UsageError> {
        let (target, action, json) = match self.command {
            HubCaCommand::Add(a) => {
                let name = ca_name_of(&a.file, a.name)?;
                (a.target, HubCaAction::Add { file: a.file, name }, a.json)
            }
            HubCaCommand::List(a) => (a.target, HubCaAction::List, a.json),
            HubCaCommand::Delete(a) => {
                ca_name("NAME", &a.name)?;
                (a.target, HubCaAction::Delete { name: a.name }, a.json)
            }
        };
        Ok(HubCaConfig {
            target: target.resolve()?,
            action,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_sit_beside_their_certificates() {
        assert_eq!(
            key_file_for(std::path::Path::new("dir/root.pem")),
            PathBuf::from("dir/root.key.pem")
        );
        assert_eq!(
            ca_file(std::path::Path::new("out"), "root"),
            PathBuf::from("out/root.pem")
        );
        assert_eq!(
            ca_file(std::path::Path::new("out"), "/x/root.pem"),
            PathBuf::from("/x/root.pem")
        );
        assert!(ca_name("NAME", "a/b").is_err());
        assert!(ca_name("NAME", "").is_err());
        assert!(ca_name("NAME", "my-root_1.ca").is_ok());
    }
}
