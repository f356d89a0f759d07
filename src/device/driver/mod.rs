//! The host driver of `azsim run`: the one device loop, [`azsim_mqtt::Client`] (the code the
//! ESP32 firmware runs), over tokio TCP and rustls ([`super::net`]), with what a laptop adds
//! around it, and the loop's notes printed as `azsim run`'s events.
//!
//! What the laptop adds, through the loop's [`App`] hooks: `--payload` templates (bodies of any
//! size up to the 256 KB D2C limit, not just the reference JSON), `--content-type` and
//! `--property`, canned `--method` answers checked before the built-in ones, an offline queue of
//! `--max-queue` messages on the heap ([`HeapQueue`]), and a clean stop (Ctrl-C or SIGTERM,
//! `--duration`, `--count` acknowledged) that sends DISCONNECT and prints the totals. When the
//! hub refuses the credentials, the token of the last CONNECT is signed again and checked by
//! [`super::diagnose`].

mod host;

use host::Host;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use azsim_mqtt::{Client, Message, Storage};
use azsim_proto::device::{Device, DeviceConfig, RandomWalk};
use azsim_proto::sas::{self, Resource};
use azsim_proto::secret::Secret;
use azsim_proto::session::{GiveUpReason, SessionConfig};

use super::buffer::{GrowingBuffer, RESTING};
use super::diagnose::{self, Refusal};
use super::net::{FailureSlot, SystemClock, TlsConnector, Transport};
use super::output::Output;
use super::template::Template;

/// Largest packet either way: a D2C message may be 256 KB, plus its topic and header. The
/// buffers rest at a kilobyte and grow to this for a large packet ([`GrowingBuffer`]).
pub const MAX_PACKET: usize = 256 * 1024 + 4096;

/// How the device proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A base64 symmetric key: a fresh token is signed for every connection.
    Key(Secret<String>),
    /// A hub policy key (`SharedAccessKeyName`) acting for the device: tokens carry `skn`.
    PolicyKey {
        /// Policy name.
        policy: String,
        /// Base64 key.
        key: Secret<String>,
    },
    /// A fixed `SharedAccessSignature ...` token from the connection string (never renewed).
    Token(Secret<String>),
    /// An X.509 client certificate (`x509=true`, `--cert`/`--cert-key`): presented in the TLS
    /// handshake; the CONNECT carries no password.
    X509(crate::tls::ClientCert),
}

impl Credential {
    /// The client certificate to present, for an X.509 device.
    pub fn client_cert(&self) -> Option<&crate::tls::ClientCert> {
        match self {
            Credential::X509(c) => Some(c),
            _ => None,
        }
    }

    /// The one device loop's credential. An X.509 device's is an empty fixed "token": the
    /// CONNECT then has no password and the session renews nothing, as with a certificate.
    pub fn for_loop(&self) -> azsim_mqtt::Credential<'_> {
        match self {
            Credential::Key(k) => azsim_mqtt::Credential::Key(Secret::new(k.expose().as_str())),
            Credential::PolicyKey { policy, key } => azsim_mqtt::Credential::PolicyKey {
                policy,
                key: Secret::new(key.expose().as_str()),
            },
            Credential::Token(t) => azsim_mqtt::Credential::Token(Secret::new(t.expose().as_str())),
            Credential::X509(_) => azsim_mqtt::Credential::Token(Secret::new("")),
        }
    }
}

/// A `--method NAME=STATUS[:JSON]` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodReply {
    /// Method name.
    pub name: String,
    /// Status to answer with.
    pub status: u16,
    /// JSON body (`null` when not given).
    pub body: String,
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    /// Hub host name, as in `HostName` without a port (used in the username and token).
    pub hub_host: String,
    /// Host to open TCP to (the gateway, or the hub).
    pub connect_host: String,
    /// MQTT port (the WebSocket port with `transport` WebSocket).
    pub port: u16,
    /// MQTT over TLS, or over WebSockets (`--websockets`).
    pub transport: Transport,
    /// Device id.
    pub device_id: String,
    /// Module id.
    pub module_id: Option<String>,
    /// Key or fixed token.
    pub credential: Credential,
    /// Extra CA file.
    pub ca_file: Option<PathBuf>,
    /// Telemetry interval, milliseconds.
    pub interval_ms: u64,
    /// Stop after this many acknowledged messages.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Body template (default: the reference device's JSON).
    pub payload: Option<Template>,
    /// Application properties on every message.
    pub properties: Vec<(String, String)>,
    /// `$.ct` of every message.
    pub content_type: String,
    /// Canned method answers (checked before the built-in methods).
    pub methods: Vec<MethodReply>,
    /// Token lifetime, seconds.
    pub token_ttl: u64,
    /// Seed of the simulated sensor and template randomness.
    pub seed: u64,
    /// Plug and Play model id.
    pub model_id: Option<String>,
    /// MQTT keep-alive, seconds.
    pub keep_alive: u16,
    /// Offline queue bound.
    pub max_queue: usize,
    /// Give up after this many failed attempts before the first connect (`None`: forever).
    pub max_initial_attempts: Option<u32>,
    /// Where a local hub's `hub.json` lives (for the refusal diagnosis).
    pub state_dir: PathBuf,
}

/// Counts printed with `stopped` and returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Telemetry publishes sent (republished ones count again).
    pub sent: u64,
    /// Telemetry acknowledged.
    pub acked: u64,
    /// Dropped from a full offline queue.
    pub dropped: u64,
    /// C2D messages received.
    pub c2d: u64,
    /// Method calls answered.
    pub methods: u64,
    /// Reconnects after a lost connection.
    pub reconnects: u64,
    /// Token renewals.
    pub renewals: u64,
}

/// Why a run ended badly (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The hub refused the credentials; the text holds the diagnosis.
    #[error("{0}")]
    Refused(String),
    /// Could not connect (or stay connected) and gave up; the text names the problem.
    #[error("{0}")]
    GaveUp(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The identity is unusable.
    #[error("{0}")]
    Identity(String),
}

/// The offline queue on the heap: at most `--max-queue` messages, bodies of any size.
#[derive(Debug)]
pub struct HeapQueue {
    items: std::collections::VecDeque<Message<Box<[u8]>>>,
    capacity: usize,
}

impl HeapQueue {
    /// A queue holding at most `capacity` messages (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }
}

impl Storage for HeapQueue {
    type Body = Box<[u8]>;

    fn body(&mut self, bytes: &[u8]) -> Option<Box<[u8]>> {
        Some(bytes.into())
    }

    fn queued(&self) -> usize {
        self.items.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn push(&mut self, m: Message<Box<[u8]>>) -> Result<(), Message<Box<[u8]>>> {
        if self.items.len() >= self.capacity {
            return Err(m);
        }
        self.items.push_back(m);
        Ok(())
    }

    fn pop(&mut self) -> Option<Message<Box<[u8]>>> {
        self.items.pop_front()
    }
}

/// Runs the device until `--count`, `--duration`, `shutdown` or a fatal error.
///
/// # Errors
/// [`RunError`] when the hub refuses the credentials, the connection cannot be made, or the TLS
/// configuration is unusable. Nothing in it holds a secret.
pub async fn run(
    cfg: RunConfig,
    out: Output,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Totals, RunError> {
    let tls =
        crate::tls::client_config_with_cert(cfg.ca_file.as_deref(), cfg.credential.client_cert())?;
    run_with_tls(cfg, tls, out, shutdown).await
}

/// [`run`] with a TLS client configuration built once for many devices (`cfg.ca_file` is then
/// only used by the refusal diagnosis).
///
/// # Errors
/// As [`run`].
pub async fn run_with_tls(
    cfg: RunConfig,
    tls: Arc<rustls::ClientConfig>,
    out: Output,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Totals, RunError> {
    let failure = FailureSlot::default();
    let mut connector = TlsConnector::new(&cfg.connect_host, cfg.port, tls, failure.clone())
        .map_err(RunError::GaveUp)?
        .over(cfg.transport);
    let credential = cfg.credential.for_loop();
    let device = Device::new(
        RandomWalk::new(cfg.seed),
        DeviceConfig {
            interval_ms: cfg.interval_ms,
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let session = SessionConfig {
        token_ttl: Some(cfg.token_ttl),
        keep_alive: cfg.keep_alive,
        clean_session: false,
        max_initial_attempts: cfg.max_initial_attempts,
        ..SessionConfig::default()
    };
    // A kilobyte each way, growing for a large packet up to the 256 KB limit.
    let mut rx = GrowingBuffer::new(RESTING, MAX_PACKET);
    let mut tx = GrowingBuffer::new(RESTING, MAX_PACKET);
    let mut client = Client::with_buffers(
        azsim_mqtt::Identity {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
            module_id: cfg.module_id.as_deref(),
            model_id: cfg.model_id.as_deref(),
        },
        credential,
        device,
        session,
        // Message ids and reconnect jitter: fresh for every run, whatever --seed says.
        rand::random(),
        &mut rx,
        &mut tx,
        HeapQueue::new(cfg.max_queue),
    )
    .map_err(|e| RunError::Identity(e.to_string()))?;
    let mut host = Host::new(&cfg, out, failure, connector.peer(), shutdown);
    let ended = client
        .run(&mut connector, &mut SystemClock, &mut host)
        .await;
    let token_expiry = client.session().token_expiry();
    let queued = client.queued();
    drop(client);
    let result = match ended {
        Ok(()) => Ok(host.totals),
        Err(GiveUpReason::Refused(code)) if cfg.credential.client_cert().is_some() => {
            Err(RunError::Refused(format!(
                "the hub refused the connection: {code}: it did not accept the device certificate \
                 for {}; check that the device is registered for X.509 (its thumbprint, or a CA \
                 the hub holds that issued the certificate), that the certificate's subject CN \
                 is the device id and that it is valid now (a local hub logs the exact reason)",
                client_id(&cfg)
            )))
        }
        Err(GiveUpReason::Refused(code)) => Err(RunError::Refused(
            // Boxed: its HTTP requests would otherwise size every running device's future.
            Box::pin(diagnose::explain(
                &refusal(&cfg, token_expiry),
                &code.to_string(),
            ))
            .await,
        )),
        Err(GiveUpReason::Exhausted(_)) => Err(RunError::GaveUp(
            host.last_failure
                .clone()
                .unwrap_or_else(|| "cannot connect".to_owned()),
        )),
    };
    host.print_stopped(queued);
    result
}

/// `{device}` or `{device}/{module}`, for messages.
fn client_id(cfg: &RunConfig) -> String {
    match &cfg.module_id {
        Some(m) => format!("{}/{m}", cfg.device_id),
        None => cfg.device_id.clone(),
    }
}

/// What the diagnosis needs to know about the refused CONNECT: the token it carried is signed
/// again from the key and the session's expiry (the same bytes: signing is deterministic).
fn refusal(cfg: &RunConfig, token_expiry: Option<u64>) -> Refusal {
    let resource = match &cfg.module_id {
        Some(m) => Resource::Module {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
            module_id: m,
        },
        None => Resource::Device {
            host: &cfg.hub_host,
            device_id: &cfg.device_id,
        },
    };
    let sign = |key: &Secret<String>, policy: Option<&str>| {
        let mut token = String::new();
        let exp = token_expiry?;
        sas::sign(&mut token, &resource, key.expose(), exp, policy).ok()?;
        Some(Secret::new(token))
    };
    let (token, fixed_token, policy) = match &cfg.credential {
        Credential::Key(k) => (sign(k, None), false, Some(None)),
        Credential::PolicyKey { policy, key } => {
            (sign(key, Some(policy)), false, Some(Some(policy.clone())))
        }
        Credential::Token(t) => (Some(t.clone()), true, None),
        Credential::X509(_) => (None, false, None),
    };
    Refusal {
        host: cfg.hub_host.clone(),
        device_id: cfg.device_id.clone(),
        module_id: cfg.module_id.clone(),
        port: cfg.port,
        token,
        fixed_token,
        policy,
        ca_file: cfg.ca_file.clone(),
        state_dir: cfg.state_dir.clone(),
    }
}
