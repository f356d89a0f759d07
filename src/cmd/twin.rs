//! `azsim twin show | patch`: device and module twins through the hub's REST API.

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::twin::{TwinAction, TwinConfig};
use crate::error::CliError;
use crate::out::outln;
use crate::service::output::to_text;
use crate::service::{Identity, ServiceClient};

/// Shows or patches the twin and prints it.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (`412001` etag mismatch, `404001` unknown device)
/// or a transport error.
pub async fn run(cfg: TwinConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let identity = Identity {
        device_id: &cfg.device,
        module_id: cfg.module.as_deref(),
    };
    match cfg.action {
        TwinAction::Show => {
            let twin = client.get_twin(identity).await.map_err(CliError::runtime)?;
            outln!("{}", to_text(&twin, cfg.json));
        }
        TwinAction::Patch {
            desired,
            tags,
            etag,
        } => {
            let twin = client
                .patch_twin(identity, desired.as_ref(), tags.as_ref(), etag.as_deref())
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                outln!("{}", to_text(&twin, true));
            } else {
                let version = twin
                    .pointer("/properties/desired/$version")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "-".to_owned(), |v| v.to_string());
                let etag = twin.get("etag").and_then(Value::as_str).unwrap_or("-");
                let of = match &cfg.module {
                    None => cfg.device.clone(),
                    Some(m) => format!("module {m} of device {}", cfg.device),
                };
                outln!("updated twin of {of}: desired $version {version}, etag {etag}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
