//! `azsim device create | show | list | delete`: the hub's registry of devices and their
//! modules.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::device::{DeviceAction, DeviceConfig, X509Kind};
use crate::cmd::shell_quote;
use crate::error::CliError;
use crate::out::{errln, outln};
use crate::service::output::{
    field, identity_connection_string, primary_key, redact_device_keys, to_text,
};
use crate::service::target::{MqttEndpoint, PortSource};
use crate::service::{Identity, ServiceClient, Target};

/// Runs `azsim device`.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (`409001 DeviceAlreadyExists: ...`, `409301
/// ModuleAlreadyExistsOnDevice: ...`) or a transport error.
pub async fn run(cfg: DeviceConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    match cfg.action {
        DeviceAction::Create {
            device,
            module,
            x509: Some(kind),
            ..
        } => {
            let out = (&cfg.target, cfg.mqtt_port, cfg.json);
            create_x509(out, &client, &device, module.as_deref(), &kind).await?;
        }
        DeviceAction::Create {
            device,
            module,
            primary_key: pk,
            secondary_key: sk,
            x509: None,
        } => {
            let identity = identity_of(&device, module.as_deref());
            let mut created = client
                .create_device(
                    identity,
                    pk.as_ref().map(|k| k.expose().as_str()),
                    sk.as_ref().map(|k| k.expose().as_str()),
                )
                .await
                .map_err(CliError::runtime)?;
            let key = primary_key(&created)
                .ok_or_else(|| {
                    CliError::runtime(format!(
                        "the hub returned {} without a primary key",
                        describe(identity)
                    ))
                })?
                .to_owned();
            let mqtt = cfg.target.mqtt_endpoint(cfg.mqtt_port);
            let cs = connection_string(&mqtt, identity, &key)?;
            redact_device_keys(&mut created);
            warn_if_port_assumed(&cfg.target, &mqtt);
            if cfg.json {
                let mut out = json!({
                    "deviceId": device,
                    "connectionString": cs,
                    "hostname": mqtt.host,
                    "mqttPort": mqtt.port,
                    "caFile": cfg.target.ca_file,
                });
                // The registry entry, under the name of what was created.
                match &module {
                    None => out["device"] = created,
                    Some(m) => {
                        out["moduleId"] = json!(m);
                        out["module"] = created;
                    }
                }
                outln!("{out}");
            } else {
                print_created(&cfg.target, identity, &cs);
            }
        }
        DeviceAction::Show {
            device,
            module,
            connection_string: print_connection_string,
        } => {
            let identity = identity_of(&device, module.as_deref());
            let mut d = client
                .get_device(identity)
                .await
                .map_err(CliError::runtime)?;
            if print_connection_string
                && matches!(
                    field(&d, "/authentication/type"),
                    "selfSigned" | "certificateAuthority"
                )
            {
                // An X.509 identity: the string names it; the certificate proves it.
                let mqtt = cfg.target.mqtt_endpoint(cfg.mqtt_port);
                warn_if_port_assumed(&cfg.target, &mqtt);
                outln!("{}", x509_connection_string(&mqtt, identity)?);
                return Ok(ExitCode::SUCCESS);
            }
            if print_connection_string {
                let key = primary_key(&d).ok_or_else(|| {
                    CliError::runtime(format!("{} has no symmetric key", describe(identity)))
                })?;
                let mqtt = cfg.target.mqtt_endpoint(cfg.mqtt_port);
                warn_if_port_assumed(&cfg.target, &mqtt);
                outln!("{}", connection_string(&mqtt, identity, key)?);
                return Ok(ExitCode::SUCCESS);
            }
            redact_device_keys(&mut d);
            if cfg.json {
                outln!("{}", to_text(&d, true));
            } else {
                print_identity(&d);
            }
        }
        DeviceAction::List => {
            let mut devices = client.list_devices().await.map_err(CliError::runtime)?;
            if cfg.json {
                let mut v = Value::Array(devices);
                redact_device_keys(&mut v);
                outln!("{v}");
            } else if devices.is_empty() {
                outln!("no devices in {}", cfg.target.host());
            } else {
                devices.sort_by(|a, b| field(a, "/deviceId").cmp(field(b, "/deviceId")));
                let w = devices
                    .iter()
                    .map(|d| field(d, "/deviceId").len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                outln!(
                    "{:<w$}  {:<8}  {:<12}  {:>3}",
                    "DEVICE",
                    "STATUS",
                    "CONNECTION",
                    "C2D"
                );
                for d in &devices {
                    outln!(
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
        DeviceAction::Delete { device, module } => {
            let identity = identity_of(&device, module.as_deref());
            client
                .delete_device(identity)
                .await
                .map_err(CliError::runtime)?;
            if cfg.json {
                let mut out = json!({ "deviceId": device, "deleted": true });
                if let Some(m) = &module {
                    out["moduleId"] = json!(m);
                }
                outln!("{out}");
            } else {
                outln!("deleted {} from {}", describe(identity), cfg.target.host());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `azsim device create ID --x509 self-signed|ca`: registers the X.509 identity and prints
/// its `x509=true` connection string and how to run it with the certificate.
async fn create_x509(
    (target, mqtt_port, json_out): (&Target, Option<u16>, bool),
    client: &ServiceClient,
    device: &str,
    module: Option<&str>,
    kind: &X509Kind,
) -> Result<(), CliError> {
    let identity = identity_of(device, module);
    let authentication = match kind {
        X509Kind::SelfSigned { thumbprint } => json!({
            "type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": thumbprint, "secondaryThumbprint": null},
        }),
        X509Kind::Ca => json!({"type": "certificateAuthority"}),
    };
    let mut body = json!({"deviceId": device, "authentication": authentication});
    match module {
        None => body["status"] = json!("enabled"),
        Some(m) => body["moduleId"] = json!(m),
    }
    let path = crate::service::client::registry_path(identity);
    let (rb, url) = client.request(reqwest::Method::PUT, &path);
    let created = client
        .json(rb.json(&body), &url)
        .await
        .map_err(CliError::runtime)?;
    let mqtt = target.mqtt_endpoint(mqtt_port);
    warn_if_port_assumed(target, &mqtt);
    let cs = x509_connection_string(&mqtt, identity)?;
    if json_out {
        let mut out = json!({
            "deviceId": device,
            "connectionString": cs,
            "hostname": mqtt.host,
            "mqttPort": mqtt.port,
            "caFile": target.ca_file,
        });
        match module {
            None => out["device"] = created,
            Some(m) => {
                out["moduleId"] = json!(m);
                out["module"] = created;
            }
        }
        outln!("{out}");
        return Ok(());
    }
    outln!(
        "created {} ({}) in {}",
        describe(identity),
        field(&created, "/authentication/type"),
        target.host()
    );
    outln!("connection string: {cs}");
    let stem = match module {
        Some(m) => format!("{device}-{m}"),
        None => device.to_owned(),
    };
    outln!();
    outln!("run it with its certificate:");
    outln!(
        "  azsim run --connection-string {} --cert {stem}.pem --cert-key {stem}.key.pem",
        shell_quote(&cs)
    );
    Ok(())
}

/// `HostName=..;DeviceId=..[;ModuleId=..];x509=true` for an X.509 identity at `mqtt`.
fn x509_connection_string(mqtt: &MqttEndpoint, identity: Identity<'_>) -> Result<String, CliError> {
    let mut cs = format!(
        "HostName={};DeviceId={}",
        mqtt.host_name(),
        identity.device_id
    );
    if let Some(m) = identity.module_id {
        cs.push_str(&format!(";ModuleId={m}"));
    }
    cs.push_str(";x509=true");
    // The core's parser is the judge of what a connection string may hold.
    azsim_proto::connection_string::ConnectionString::parse(&cs).map_err(|e| {
        CliError::runtime(format!(
            "cannot write the connection string of {}: {e}",
            describe(identity)
        ))
    })?;
    Ok(cs)
}

fn identity_of<'a>(device: &'a str, module: Option<&'a str>) -> Identity<'a> {
    Identity {
        device_id: device,
        module_id: module,
    }
}

/// `device d` or `module m of device d`, for messages.
fn describe(identity: Identity<'_>) -> String {
    match identity.module_id {
        None => format!("device {}", identity.device_id),
        Some(m) => format!("module {m} of device {}", identity.device_id),
    }
}

/// The device's or module's connection string for `mqtt` (`HostName=host[:port]`, so that
/// `azsim run` and `azsim token --mqtt` connect where it says).
fn connection_string(
    mqtt: &MqttEndpoint,
    identity: Identity<'_>,
    key: &str,
) -> Result<String, CliError> {
    identity_connection_string(
        &mqtt.host_name(),
        identity.device_id,
        identity.module_id,
        key,
    )
    .map_err(|e| {
        CliError::runtime(format!(
            "cannot write the connection string of {}: {e}",
            describe(identity)
        ))
    })
}

/// Says on stderr when the printed string's port is a guess: a hub that is not Azure and whose
/// `hub.json` was not found (in --state or next to the CA file) may listen anywhere.
fn warn_if_port_assumed(target: &Target, mqtt: &MqttEndpoint) {
    if mqtt.source == PortSource::Assumed {
        errln!(
            "note: the MQTT port of {} is not known (no hub.json for it in --state or next to \
             the CA file); the connection string assumes {}: give --mqtt-port if it listens \
             elsewhere",
            target.host(),
            mqtt.port
        );
    }
}

fn print_created(target: &Target, identity: Identity<'_>, cs: &str) {
    outln!("created {} in {}", describe(identity), target.host());
    outln!("connection string: {cs}");
    if target.is_azure() {
        outln!();
        outln!("run it:");
        outln!("  azsim run --connection-string {}", shell_quote(cs));
        return;
    }
    outln!();
    outln!("run it against the local hub:");
    outln!(
        "  export IOTHUB_DEVICE_CONNECTION_STRING={}",
        shell_quote(cs)
    );
    if let Some(ca) = &target.ca_file {
        outln!(
            "  export AZSIM_CA_FILE={}",
            shell_quote(&ca.display().to_string())
        );
    }
    outln!("  azsim run");
}

/// A device's or module's registry entry as `name value` rows.
fn print_identity(d: &Value) {
    let mut rows = vec![("device", field(d, "/deviceId"))];
    if d.get("moduleId").is_some() {
        rows.push(("module", field(d, "/moduleId")));
    }
    rows.extend([
        ("status", field(d, "/status")),
        ("connection", field(d, "/connectionState")),
        ("auth", field(d, "/authentication/type")),
        ("etag", field(d, "/etag")),
        ("generation", field(d, "/generationId")),
        ("last activity", field(d, "/lastActivityTime")),
    ]);
    for (k, v) in rows {
        outln!("{k:<14} {v}");
    }
    let c2d = d
        .get("cloudToDeviceMessageCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    outln!("{:<14} {c2d}", "c2d pending");
}
