//! `azsim device create | show | list | delete`: the hub's device registry.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::device::{DeviceAction, DeviceConfig};
use crate::error::CliError;
use crate::service::output::{
    field, identity_connection_string, primary_key, redact_device_keys, shell_quote, to_text,
};
use crate::service::target::{MqttEndpoint, PortSource};
use crate::service::{ServiceClient, Target};

/// Runs `azsim device`.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (`409001 DeviceAlreadyExists: ...`) or a
/// transport error.
pub async fn run(cfg: DeviceConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    match cfg.action {
        DeviceAction::Create {
            device,
            primary_key: pk,
            secondary_key: sk,
        } => {
            let mut created = client
                .create_device(&device, pk.as_deref(), sk.as_deref())
                .await
                .map_err(CliError::runtime)?;
            let key = primary_key(&created)
                .ok_or_else(|| {
                    CliError::runtime("the hub returned the device without a primary key")
                })?
                .to_owned();
            let mqtt = cfg.target.mqtt_endpoint(cfg.mqtt_port);
            let cs = device_string(&mqtt, &device, &key)?;
            redact_device_keys(&mut created);
            warn_if_port_assumed(&cfg.target, &mqtt);
            if cfg.json {
                let out = json!({
                    "deviceId": device,
                    "connectionString": cs,
                    "hostname": mqtt.host,
                    "mqttPort": mqtt.port,
                    "caFile": cfg.target.ca_file,
                    "device": created,
                });
                println!("{out}");
            } else {
                print_created(&cfg.target, &device, &cs);
            }
        }
        DeviceAction::Show {
            device,
            connection_string,
        } => {
            let mut d = client
                .get_device(&device)
                .await
                .map_err(CliError::runtime)?;
            if connection_string {
                let key = primary_key(&d).ok_or_else(|| {
                    CliError::runtime(format!("device {device} has no symmetric key"))
                })?;
                let mqtt = cfg.target.mqtt_endpoint(cfg.mqtt_port);
                warn_if_port_assumed(&cfg.target, &mqtt);
                println!("{}", device_string(&mqtt, &device, key)?);
                return Ok(ExitCode::SUCCESS);
            }
            redact_device_keys(&mut d);
            if cfg.json {
                println!("{}", to_text(&d, true));
            } else {
                print_device(&d);
            }
        }
        DeviceAction::List => {
            let mut devices = client.list_devices().await.map_err(CliError::runtime)?;
            if cfg.json {
                let mut v = Value::Array(devices);
                redact_device_keys(&mut v);
                println!("{v}");
            } else if devices.is_empty() {
                println!("no devices in {}", cfg.target.host());
            } else {
                devices.sort_by(|a, b| field(a, "/deviceId").cmp(field(b, "/deviceId")));
                let w = devices
                    .iter()
                    .map(|d| field(d, "/deviceId").len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                println!(
                    "{:<w$}  {:<8}  {:<12}  {:>3}",
                    "DEVICE", "STATUS", "CONNECTION", "C2D"
                );
                for d in &devices {
                    println!(
                        "{:<w$}  {:<8}  {:<12}  {:>3}",
                        field(d, "/deviceId"),
                        field(d, "/status"),
                        field(d, "/connectionState"),
                        d.get("cloudToDeviceMessageCount")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    );
                }
            }
        }
        DeviceAction::Delete { device } => {
            client
                .delete_device(&device)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                println!("{}", json!({ "deviceId": device, "deleted": true }));
            } else {
                println!("deleted device {device} from {}", cfg.target.host());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The device's connection string for `mqtt` (`HostName=host[:port]`, so that `azsim run` and
/// `azsim token --mqtt` connect where it says).
fn device_string(mqtt: &MqttEndpoint, device: &str, key: &str) -> Result<String, CliError> {
    identity_connection_string(&mqtt.host_name(), device, None, key).map_err(|e| {
        CliError::runtime(format!(
            "cannot write the connection string of {device}: {e}"
        ))
    })
}

/// Says on stderr when the printed string's port is a guess: a hub that is not Azure and whose
/// `hub.json` was not found (in --state or next to the CA file) may listen anywhere.
fn warn_if_port_assumed(target: &Target, mqtt: &MqttEndpoint) {
    if mqtt.source == PortSource::Assumed {
        eprintln!(
            "note: the MQTT port of {} is not known (no hub.json for it in --state or next to \
             the CA file); the connection string assumes {}: give --mqtt-port if it listens \
             elsewhere",
            target.host(),
            mqtt.port
        );
    }
}

fn print_created(target: &Target, device: &str, cs: &str) {
    println!("created device {device} in {}", target.host());
    println!("connection string: {cs}");
    if target.is_azure() {
        println!();
        println!("run it:");
        println!("  azsim run --connection-string {}", shell_quote(cs));
        return;
    }
    println!();
    println!("run it against the local hub:");
    println!(
        "  export IOTHUB_DEVICE_CONNECTION_STRING={}",
        shell_quote(cs)
    );
    if let Some(ca) = &target.ca_file {
        println!(
            "  export AZSIM_CA_FILE={}",
            shell_quote(&ca.display().to_string())
        );
    }
    println!("  azsim run");
}

fn print_device(d: &Value) {
    let rows = [
        ("device", field(d, "/deviceId")),
        ("status", field(d, "/status")),
        ("connection", field(d, "/connectionState")),
        ("auth", field(d, "/authentication/type")),
        ("etag", field(d, "/etag")),
        ("generation", field(d, "/generationId")),
        ("last activity", field(d, "/lastActivityTime")),
    ];
    for (k, v) in rows {
        println!("{k:<14} {v}");
    }
    let c2d = d
        .get("cloudToDeviceMessageCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    println!("{:<14} {c2d}", "c2d pending");
}
