//! `azsim hub`: start the local IoT Hub, print how to reach it, serve until Ctrl-C, stop cleanly.

use std::process::ExitCode;

use azsim_emulator::HubConfig;
use serde_json::json;

use crate::cli::hub::HubCliConfig;
use crate::cmd::shell_quote;
use crate::error::CliError;

/// Runs `azsim hub` until Ctrl-C.
///
/// # Errors
/// Runtime errors: ports in use, an unusable state directory.
pub async fn run(cfg: HubCliConfig) -> Result<ExitCode, CliError> {
    let mut hc = HubConfig::new(&cfg.state);
    hc.hostname = cfg.hostname.clone();
    hc.in_memory = cfg.in_memory;
    let handle = azsim_emulator::start(hc, cfg.bind, cfg.mqtt_port, cfg.https_port)
        .await
        .map_err(CliError::runtime)?;
    let signal = shutdown_signal();
    let info = handle.info.clone();
    if cfg.json {
        println!(
            "{}",
            json!({
                "mqtt_port": info.mqtt_port,
                "https_port": info.https_port,
                "ca_file": info.ca_file,
                "service_connection_string": info.service_connection_string,
                "hostname": info.hostname,
            })
        );
    } else {
        println!(
            "azsim hub ready ({})",
            if cfg.in_memory {
                "in-memory state"
            } else {
                "state kept"
            }
        );
        println!(
            "  MQTT (devices):  mqtts://{}:{}",
            info.hostname, info.mqtt_port
        );
        println!(
            "  REST (service):  https://{}:{}",
            info.hostname, info.https_port
        );
        println!("  CA certificate:  {}", info.ca_file.display());
        println!("  state dir:       {}", cfg.state.display());
        println!("  service connection string:");
        println!("    {}", info.service_connection_string);
        println!();
        println!(
            "export IOTHUB_CONNECTION_STRING={}",
            shell_quote(&info.service_connection_string)
        );
        println!(
            "export AZSIM_CA_FILE={}",
            shell_quote(&info.ca_file.display().to_string())
        );
        println!();
        println!("Ctrl-C stops the hub.");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    signal.await;
    handle.stop().await.map_err(CliError::runtime)?;
    if !cfg.json {
        eprintln!("hub stopped; state saved");
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM (`docker stop`). Registered before the hub announces itself, so a
/// signal sent right after the ready line is never lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
