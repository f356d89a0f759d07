//! `azsim run`: clap structs and validation. The work is in `crate::cmd::run`, the driver in
//! `crate::device`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use azsim_proto::device::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};

use crate::device::driver::{Credential, MethodReply};
use crate::device::net::{self, Transport};
use crate::device::template::Template;
use crate::error::UsageError;

/// Env var holding the device connection string.
pub const ENV_DEVICE_CONNECTION_STRING: &str = "IOTHUB_DEVICE_CONNECTION_STRING";
/// Env var holding an extra CA file.
pub const ENV_CA_FILE: &str = "AZSIM_CA_FILE";

/// A text env var: `None` when unset, its value when set; bytes that are not UTF-8 are a
/// [`UsageError`] naming the variable (never its value), not "unset".
///
/// # Errors
/// `NAME: not valid UTF-8`.
pub fn env_text(name: &'static str) -> Result<Option<String>, UsageError> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(UsageError::new(name, "not valid UTF-8")),
    }
}
/// Most bytes `--property` and `--content-type` may take, percent-encoded, in a telemetry topic.
pub const MAX_PROPERTY_BYTES: usize = 512;
/// IoT Hub's keep-alive ceiling (1.5 x 1177 s = the hub's 1767 s cap).
pub const MAX_KEEP_ALIVE: u16 = 1177;

/// `azsim run`: connect as a device and behave like the reference firmware.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Device connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`)
    /// [env: IOTHUB_DEVICE_CONNECTION_STRING]. Without one, azsim starts (or reuses) the local
    /// hub in --state and runs device `sim-device-1` against it.
    #[arg(long, value_name = "CS")]
    pub connection_string: Option<String>,
    /// Extra CA certificate (PEM) to trust [env: AZSIM_CA_FILE].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// MQTT port (default: the one in HostName, else 8883; with --websockets 443, or the local
    /// hub's HTTPS port).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// X.509 device certificate (PEM, leaf first) to present instead of a SAS token: for an
    /// `x509=true` connection string, or alone against the local hub (the device id is the
    /// certificate's subject CN). Needs --cert-key.
    #[arg(long, value_name = "FILE", requires = "cert_key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub cert_key: Option<PathBuf>,
    /// MQTT over WebSockets (`wss://HOST:PORT/$iothub/websocket`, subprotocol mqtt), as devices
    /// behind proxies that pass only HTTPS connect; same TLS, same session.
    #[arg(long)]
    pub websockets: bool,
    /// Time between telemetry messages, 100 ms to 1 day (`200ms`, `1.5s`, `10s`, `1m`; a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub interval: String,
    /// Stop after N telemetry messages were acknowledged.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Telemetry body: a minijinja template, or @FILE. Variables: seq, now, ts, uuid, device_id,
    /// temperature, humidity; functions: randint(lo, hi), uniform(lo, hi).
    #[arg(long, value_name = "TEMPLATE|@FILE")]
    pub payload: Option<String>,
    /// Application property on every message (repeatable).
    #[arg(long = "property", value_name = "K=V")]
    pub properties: Vec<String>,
    /// Content type ($.ct) of every message.
    #[arg(long, value_name = "T", default_value = "application/json")]
    pub content_type: String,
    /// Answer direct method NAME with STATUS and an optional JSON body (repeatable; takes
    /// precedence over the built-in ping, reboot and setTelemetryInterval).
    #[arg(long = "method", value_name = "NAME=STATUS[:JSON]")]
    pub methods: Vec<String>,
    /// Lifetime of each SAS token in seconds; the device reconnects with a new one at 80%.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub token_ttl: u64,
    /// Seed of the simulated sensor and of template randomness (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Plug and Play model id sent in the username (`dtmi:...;1`).
    #[arg(long, value_name = "DTMI")]
    pub model_id: Option<String>,
    /// MQTT keep-alive in seconds (at most 1177, IoT Hub's limit).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub keep_alive: u16,
    /// Most messages kept while offline; when full the oldest is dropped (and counted).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_queue: usize,
    /// State directory of the local hub used when no connection string is given.
    #[arg(long, value_name = "DIR", default_value = ".azsim/hub")]
    pub state: PathBuf,
    /// One JSON object per line instead of readable lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dps: super::dps::DpsRunArgs,
}

/// The parts of a device connection string `azsim run` uses; the credential is redacted in
/// `Debug`.
#[derive(Clone, Debug)]
pub struct DeviceTarget {
    /// `HostName` without a port.
    pub hub_host: String,
    /// Where to open TCP (`GatewayHostName`, else the hub host).
    pub connect_host: String,
    /// Port from `--port`, `HostName=host:port` or 8883; with `--websockets` from `--port` or
    /// 443 (the port in `HostName` is the MQTT one).
    pub port: u16,
    /// Device id.
    pub device_id: String,
    /// Module id.
    pub module_id: Option<String>,
    /// Key or fixed token.
    pub credential: Credential,
}

/// Validated `azsim run` input.
#[derive(Debug)]
pub struct RunSettings {
    /// The device, or `None` for the embedded local hub.
    pub target: Option<DeviceTarget>,
    /// `--port` (applies to the embedded hub's connection too).
    pub port: Option<u16>,
    /// `--websockets`.
    pub transport: Transport,
    /// `--cert` and `--cert-key`, loaded.
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Extra CA.
    pub ca_file: Option<PathBuf>,
    /// Telemetry interval, milliseconds.
    pub interval_ms: u64,
    /// `--count`.
    pub count: Option<u64>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// Template source (checked to compile).
    pub payload: Option<String>,
    /// `--property`.
    pub properties: Vec<(String, String)>,
    /// `--content-type`.
    pub content_type: String,
    /// `--method`.
    pub methods: Vec<MethodReply>,
    /// `--token-ttl`.
    pub token_ttl: u64,
    /// `--seed` (resolved).
    pub seed: u64,
    /// `--model-id`.
    pub model_id: Option<String>,
    /// `--keep-alive`.
    pub keep_alive: u16,
    /// `--max-queue`.
    pub max_queue: usize,
    /// `--state`.
    pub state_dir: PathBuf,
    /// `--json`.
    pub json: bool,
    /// `--dps`: provision first.
    pub dps: Option<super::dps::DpsRun>,
}

impl RunArgs {
    /// Validates the arguments (and the env vars they fall back to).
    ///
    /// # Errors
    /// A [`UsageError`] naming the field; never echoing a key.
    pub fn into_config(self) -> Result<RunSettings, UsageError> {
        let env_cs = env_text(ENV_DEVICE_CONNECTION_STRING)?.filter(|s| !s.trim().is_empty());
        let env_ca = std::env::var_os(ENV_CA_FILE)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        self.into_config_with(env_cs, env_ca)
    }

    /// [`RunArgs::into_config`] with the env vars passed in.
    ///
    /// # Errors
    /// As [`RunArgs::into_config`].
    pub fn into_config_with(
        self,
        env_cs: Option<String>,
        env_ca: Option<PathBuf>,
    ) -> Result<RunSettings, UsageError> {
        let (cs, cs_field) = match (self.connection_string, env_cs) {
            (Some(cs), _) => (Some(cs), "--connection-string"),
            (None, Some(cs)) => (Some(cs), ENV_DEVICE_CONNECTION_STRING),
            (None, None) => (None, ""),
        };
        let transport = if self.websockets {
            Transport::WebSocket
        } else {
            Transport::Mqtt
        };
        let client_cert = match (&self.cert, &self.cert_key) {
            (Some(c), Some(k)) => Some(
                crate::tls::ClientCert::load(c, k)
                    .map_err(|e| UsageError::new("--cert", e.to_string()))?,
            ),
            _ => None,
        };
        let target = cs
            .map(|cs| {
                parse_device_connection_string(
                    &cs,
                    cs_field,
                    self.port,
                    transport,
                    client_cert.clone(),
                )
            })
            .transpose()?;
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
        if self.port == Some(0) {
            return Err(UsageError::new("--port", "must be between 1 and 65535"));
        }
        let interval = parse_duration("--interval", &self.interval)?;
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if interval < Duration::from_millis(MIN_INTERVAL_MS) || interval_ms > MAX_INTERVAL_MS {
            return Err(UsageError::new(
                "--interval",
                format!("{:?} must be from 100ms to 1 day", self.interval),
            ));
        }
        if self.count == Some(0) {
            return Err(UsageError::new("--count", "must be at least 1"));
        }
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration("--duration", d))
            .transpose()?;
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(UsageError::new("--duration", "must be longer than 0s"));
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let payload = payload_source(self.payload, seed, false)?;
        let properties = telemetry_properties(self.properties, &self.content_type)?;
        let methods = self
            .methods
            .iter()
            .map(|m| parse_method(m))
            .collect::<Result<Vec<_>, _>>()?;
        if !(2..=365 * 24 * 3600).contains(&self.token_ttl) {
            return Err(UsageError::new(
                "--token-ttl",
                "must be between 2 seconds and 365 days",
            ));
        }
        if let Some(m) = &self.model_id
            && (!m.starts_with("dtmi:") || m.chars().any(|c| c.is_whitespace()))
        {
            return Err(UsageError::new(
                "--model-id",
                "must be a DTMI like dtmi:com:example:Thermostat;1",
            ));
        }
        if self.keep_alive > MAX_KEEP_ALIVE {
            return Err(UsageError::new(
                "--keep-alive",
                "must be at most 1177 seconds (IoT Hub's limit)",
            ));
        }
        if self.max_queue == 0 {
            return Err(UsageError::new("--max-queue", "must be at least 1"));
        }
        Ok(RunSettings {
            target,
            port: self.port,
            transport,
            client_cert,
            ca_file,
            interval_ms,
            count: self.count,
            duration,
            payload,
            properties,
            content_type: self.content_type,
            methods,
            token_ttl: self.token_ttl,
            seed,
            model_id: self.model_id,
            keep_alive: self.keep_alive,
            max_queue: self.max_queue,
            state_dir: self.state,
            json: self.json,
            dps: self.dps.into_settings(self.cert.is_some())?,
        })
    }
}

/// `200ms`, `1.5s`, `1m 30s` (humantime), or a bare number of seconds (`2`, `0.5`).
pub(crate) fn parse_duration(field: &'static str, s: &str) -> Result<Duration, UsageError> {
    let s = s.trim();
    let bare = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let parsed = if bare {
        humantime::parse_duration(&format!("{s}s"))
    } else {
        humantime::parse_duration(s)
    };
    parsed.map_err(|e| {
        UsageError::new(
            field,
            format!("{s:?} is not a duration like 10s or 5m: {e}"),
        )
    })
}

/// `NAME=STATUS[:JSON]`.
fn parse_method(s: &str) -> Result<MethodReply, UsageError> {
    const FIELD: &str = "--method";
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| UsageError::new(FIELD, format!("{s:?} is not NAME=STATUS[:JSON]")))?;
    azsim_proto::topic::MethodName::new(name)
        .map_err(|_| UsageError::new(FIELD, format!("{name:?} is not a valid method name")))?;
    let (status, body) = match rest.split_once(':') {
        Some((st, body)) => (st, Some(body)),
        None => (rest, None),
    };
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            UsageError::new(
                FIELD,
                format!("status {status:?} is not a number from 100 to 999"),
            )
        })?;
    let body = match body {
        Some(b) => {
            serde_json::from_str::<serde_json::Value>(b).map_err(|e| {
                UsageError::new(FIELD, format!("the body of {name} is not JSON: {e}"))
            })?;
            b.to_owned()
        }
        None => "null".to_owned(),
    };
    Ok(MethodReply {
        name: name.to_owned(),
        status,
        body,
    })
}

/// Splits a device connection string.
fn parse_device_connection_string(
    s: &str,
    field: &'static str,
    port: Option<u16>,
    transport: Transport,
    cert: Option<crate::tls::ClientCert>,
) -> Result<DeviceTarget, UsageError> {
    let cs = crate::device::credentials::parse_connection_string_with_cert(s, cert)
        .map_err(|e| UsageError::new(field, e))?;
    let (hub_host, cs_port) = match cs.host.rsplit_once(':') {
        Some((h, p)) => {
            let p: u16 = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                UsageError::new(
                    field,
                    "HostName has a port that is not a number from 1 to 65535",
                )
            })?;
            (h.to_owned(), Some(p))
        }
        None => (cs.host.clone(), None),
    };
    Ok(DeviceTarget {
        connect_host: cs.gateway.unwrap_or_else(|| hub_host.clone()),
        hub_host,
        port: match transport {
            Transport::Mqtt => port
                .or(cs_port)
                .unwrap_or(azsim_emulator::DEFAULT_MQTT_PORT),
            Transport::WebSocket => port.unwrap_or(net::WEBSOCKET_PORT),
        },
        device_id: cs.device_id,
        module_id: cs.module_id,
        credential: cs.credential,
    })
}

/// `--payload`: the template's source (`@FILE` reads a file), compiled once here so that a bad
/// template is a usage error before anything connects; `fleet` templates also see `index`.
pub(crate) fn payload_source(
    payload: Option<String>,
    seed: u64,
    fleet: bool,
) -> Result<Option<String>, UsageError> {
    payload
        .map(|p| {
            let source = match p.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).map_err(|e| {
                    UsageError::new("--payload", format!("cannot read {path}: {e}"))
                })?,
                None => p,
            };
            let compiled = if fleet {
                Template::for_fleet(source.clone(), seed)
            } else {
                Template::new(source.clone(), seed)
            };
            compiled.map_err(|e| UsageError::new("--payload", e))?;
            Ok(source)
        })
        .transpose()
}

/// `--property KEY=VALUE` pairs, checked with `--content-type` against the room the telemetry
/// topic has for them.
pub(crate) fn telemetry_properties(
    properties: Vec<String>,
    content_type: &str,
) -> Result<Vec<(String, String)>, UsageError> {
    let properties = properties
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(UsageError::new(
                "--property",
                format!("{kv:?} is not KEY=VALUE"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if content_type.trim().is_empty() {
        return Err(UsageError::new("--content-type", "must not be empty"));
    }
    // They travel percent-encoded in every telemetry topic, which the device loop writes
    // into a 1 KiB buffer next to the ids and the message id.
    let encoded = azsim_proto::encoding::encoded_len(content_type)
        + properties
            .iter()
            .map(|(k, v)| {
                2 + azsim_proto::encoding::encoded_len(k) + azsim_proto::encoding::encoded_len(v)
            })
            .sum::<usize>();
    if encoded > MAX_PROPERTY_BYTES {
        let field = if properties.is_empty() {
            "--content-type"
        } else {
            "--property"
        };
        return Err(UsageError::new(
            field,
            format!(
                "the properties and content type take {encoded} bytes percent-encoded; at most {MAX_PROPERTY_BYTES}"
            ),
        ));
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    const KEY: &str = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=";

    fn settings(args: &[&str]) -> Result<RunSettings, UsageError> {
        let mut argv = vec!["azsim-run"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv)
            .unwrap()
            .run
            .into_config_with(None, None)
    }

    #[test]
    fn the_port_comes_from_the_flag_then_the_host_name_then_8883() {
        let cs = format!("HostName=localhost:9999;DeviceId=d;SharedAccessKey={KEY}");
        let s = settings(&["--connection-string", &cs]).unwrap();
        let t = s.target.unwrap();
        assert_eq!((t.hub_host.as_str(), t.port), ("localhost", 9999));
        let s = settings(&["--connection-string", &cs, "--port", "1234"]).unwrap();
        assert_eq!(s.target.unwrap().port, 1234);
        let cs = format!("HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={KEY}");
        let t = settings(&["--connection-string", &cs])
            .unwrap()
            .target
            .unwrap();
        assert_eq!(
            (t.port, t.connect_host.as_str()),
            (8883, "h.azure-devices.net")
        );
    }

    #[test]
    fn the_env_connection_string_is_used_when_no_flag_is_given() {
        let cs = format!("HostName=h;DeviceId=from-env;SharedAccessKey={KEY}");
        let s = T::try_parse_from(["azsim-run"])
            .unwrap()
            .run
            .into_config_with(Some(cs), None)
            .unwrap();
        assert_eq!(s.target.unwrap().device_id, "from-env");
        assert!(
            settings(&[]).unwrap().target.is_none(),
            "no cs: the local hub"
        );
    }

    #[test]
    fn intervals_take_milliseconds_fractions_and_bare_seconds() {
        let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}");
        for (arg, ms) in [
            ("200ms", 200),
            ("1.5s", 1_500),
            ("2", 2_000),
            ("500ms", 500),
            ("100ms", 100),
            ("1m", 60_000),
            ("1day", 86_400_000),
        ] {
            let s = settings(&["--connection-string", &cs, "--interval", arg]).unwrap();
            assert_eq!(s.interval_ms, ms, "{arg}");
        }
        for bad in ["99ms", "0", "86401s", "fast", ""] {
            let e = settings(&["--connection-string", &cs, "--interval", bad]).unwrap_err();
            assert_eq!(e.field(), "--interval", "{bad}");
        }
    }

    #[test]
    fn method_answers_parse_name_status_and_json() {
        assert_eq!(
            parse_method(r#"reset=202:{"ok":true}"#).unwrap(),
            MethodReply {
                name: "reset".into(),
                status: 202,
                body: r#"{"ok":true}"#.into()
            }
        );
        assert_eq!(parse_method("noop=204").unwrap().body, "null");
        for bad in [
            "reset",
            "reset=2x",
            "reset=99",
            "re/set=200",
            "reset=200:{nope",
        ] {
            let e = parse_method(bad).unwrap_err();
            assert_eq!(e.field(), "--method", "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field_and_never_the_key() {
        let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};Bogus=1");
        let e = settings(&["--connection-string", &cs]).unwrap_err();
        assert_eq!(e.field(), "--connection-string");
        assert!(!e.to_string().contains(KEY));
        let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}");
        let long_property = format!("k={}", "v".repeat(600));
        for (args, field) in [
            (&["--interval", "0s"][..], "--interval"),
            (&["--interval", "50ms"], "--interval"),
            (&["--interval", "25h"], "--interval"),
            (&["--property", &long_property], "--property"),
            (&["--count", "0"], "--count"),
            (&["--duration", "soon"], "--duration"),
            (&["--token-ttl", "1"], "--token-ttl"),
            (&["--model-id", "thermostat"], "--model-id"),
            (&["--keep-alive", "1178"], "--keep-alive"),
            (&["--port", "0"], "--port"),
            (&["--content-type", " "], "--content-type"),
            (&["--payload", "@/nonexistent/file"], "--payload"),
        ] {
            let mut a = vec!["--connection-string", &cs];
            a.extend_from_slice(args);
            let e = settings(&a).unwrap_err();
            assert_eq!(e.field(), field, "{args:?}");
            assert!(!e.to_string().contains(KEY));
        }
    }
}
