//! `azsim hub env`: the variables that point tools at a running hub - the service (and, with
//! `--device`, a device) connection string, the Event Hubs-compatible one, and the CA for
//! clients that read `AZSIM_CA_FILE`, `NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE` or
//! `SSL_CERT_FILE` - in the syntax of the shell (or GitHub Actions file) asked for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::hub::{LiveHub, live_hub, service_connection_string};
use crate::cli::hub::{EnvConfig, Shell};
use crate::cmd::shell_quote;
use crate::error::CliError;

/// The CA bundle `env` points REQUESTS_CA_BUNDLE and SSL_CERT_FILE at.
pub const CA_BUNDLE: &str = "ca-bundle.pem";
/// Where the system CA bundle usually is (Debian/Ubuntu, Fedora/RHEL, Alpine, openSUSE, macOS).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// `azsim hub env`.
pub(crate) async fn env(cfg: EnvConfig) -> Result<ExitCode, CliError> {
    let hub = live_hub(&cfg.state).await.map_err(|why| {
        CliError::check_failed(format!("{why}; start one with `azsim hub start`"))
    })?;
    let ca = hub.ca_file();
    let service_cs = service_connection_string(&hub.info);
    let mut vars: Vec<(&str, String)> = vec![("IOTHUB_CONNECTION_STRING", service_cs.clone())];
    if let Some(device) = &cfg.device {
        vars.push((
            "IOTHUB_DEVICE_CONNECTION_STRING",
            device_connection_string(&hub, &service_cs, device).await?,
        ));
    }
    if let Some(eh) = &hub.info.eventhub_connection_string {
        vars.push(("EVENTHUB_CONNECTION_STRING", eh.clone()));
    }
    let bundle = write_ca_bundle(&hub.state, &ca)?;
    let ca_s = ca.display().to_string();
    vars.push(("AZSIM_CA_FILE", ca_s.clone()));
    vars.push(("NODE_EXTRA_CA_CERTS", ca_s));
    let bundle_s = bundle.display().to_string();
    vars.push(("REQUESTS_CA_BUNDLE", bundle_s.clone()));
    vars.push(("SSL_CERT_FILE", bundle_s));
    let mut out = String::new();
    for (k, v) in &vars {
        out.push_str(&env_line(cfg.shell, k, v));
        out.push('\n');
    }
    crate::out::out!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The device's connection string, registering the device when the hub does not know it.
async fn device_connection_string(
    hub: &LiveHub,
    service_cs: &str,
    device: &str,
) -> Result<String, CliError> {
    use crate::service::client::ServiceClient;
    use crate::service::target::{Target, TargetInputs};
    let target = Target::resolve_with(
        TargetInputs {
            connection_string: Some(service_cs.to_owned().into()),
            ca: Some(hub.ca_file()),
            state_dir: Some(hub.state.clone()),
        },
        None,
        None,
    )?;
    let client = ServiceClient::new(&target).map_err(CliError::runtime)?;
    let found = match client.get_device(device).await {
        Ok(v) => v,
        Err(e) if e.azure().is_some_and(|a| a.status == 404) => client
            .create_device(device, None, None)
            .await
            .map_err(CliError::runtime)?,
        Err(e) => return Err(CliError::runtime(e)),
    };
    let key = found["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            CliError::check_failed(format!(
                "--device {device}: the device has no symmetric key (X.509 device?)"
            ))
        })?;
    hub.info
        .device_connection_string(device, key)
        .map_err(|e| CliError::runtime(format!("--device {device}: {e}")))
}

/// `{state}/ca-bundle.pem`: the system CA bundle (when found) plus the hub's CA, so that
/// `REQUESTS_CA_BUNDLE` / `SSL_CERT_FILE` (which replace the system bundle) still trust the
/// public roots.
fn write_ca_bundle(state: &Path, ca: &Path) -> Result<PathBuf, CliError> {
    let hub_ca = std::fs::read_to_string(ca)
        .map_err(|e| CliError::runtime(format!("cannot read {}: {e}", ca.display())))?;
    let mut text = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&hub_ca);
    let path = state.join(CA_BUNDLE);
    std::fs::write(&path, text)
        .map_err(|e| CliError::runtime(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// One variable assignment in `shell`'s syntax.
pub fn env_line(shell: Shell, key: &str, value: &str) -> String {
    match shell {
        Shell::Sh => format!("export {key}={}", shell_quote(value)),
        Shell::Fish => format!(
            "set -gx {key} '{}'",
            value.replace('\\', "\\\\").replace('\'', "\\'")
        ),
        Shell::Powershell => format!("$env:{key} = '{}'", value.replace('\'', "''")),
        Shell::Github => {
            if value.contains(['\n', '\r']) {
                // The delimiter form; a delimiter that cannot occur in the value.
                let mut delim = String::from("AZSIM_EOF");
                while value.contains(&delim) {
                    delim.push('_');
                }
                format!("{key}<<{delim}\n{value}\n{delim}")
            } else {
                format!("{key}={value}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &str = "a'b\\c $HOME `x` \"q\" ;&|*?";

    #[test]
    fn sh_lines_give_the_value_back_through_a_real_shell() {
        let script = format!("{}\nprintf %s \"$K\"", env_line(Shell::Sh, "K", NASTY));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), NASTY);
    }

    #[test]
    fn fish_lines_give_the_value_back_through_fish_when_it_is_installed() {
        let script = format!("{}\nprintf %s \"$K\"", env_line(Shell::Fish, "K", NASTY));
        match std::process::Command::new("fish")
            .args(["--no-config", "-c", &script])
            .output()
        {
            Ok(out) => assert_eq!(String::from_utf8(out.stdout).unwrap(), NASTY),
            Err(e) => println!("fish not run ({e}); the expected strings below still hold"),
        }
    }

    #[test]
    fn fish_powershell_and_github_lines_quote_their_own_way() {
        assert_eq!(
            env_line(Shell::Fish, "K", "it's a\\b"),
            r"set -gx K 'it\'s a\\b'"
        );
        assert_eq!(
            env_line(Shell::Powershell, "K", "it's $x"),
            "$env:K = 'it''s $x'"
        );
        assert_eq!(env_line(Shell::Github, "K", "a=b;c 'd'"), "K=a=b;c 'd'");
        assert_eq!(
            env_line(Shell::Github, "K", "one\nAZSIM_EOF\ntwo"),
            "K<<AZSIM_EOF_\none\nAZSIM_EOF\ntwo\nAZSIM_EOF_"
        );
    }
}
