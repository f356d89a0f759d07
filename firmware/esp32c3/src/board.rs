//! Start-up: chip, heap, scheduler, configuration check, network, clock, TLS, then the shared
//! client loop.

use core::ffi::CStr;

#[cfg(azsim_dps)]
use azsim_mqtt::{Assignment, DpsIdentity};
use azsim_mqtt::{Client, Credential, Identity, Note};
#[cfg(azsim_dps)]
use azsim_proto::connection_string;
use azsim_proto::connection_string::{ConnectionString, Kind};
use azsim_proto::device::{Device, DeviceConfig};
use azsim_proto::secret::Secret;
use azsim_proto::session::{Event, SessionConfig};
use embassy_executor::Spawner;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use log::{error, info, warn};
use mbedtls_rs::{Certificate, Tls, X509};
use static_cell::StaticCell;
use tinyrlibc as _;

#[cfg(azsim_dps)]
use crate::dps;
use crate::hub::{HubConnector, SntpClock};
use crate::sensor::ChipSensor;
use crate::{sntp, wifi};

esp_bootloader_esp_idf::esp_app_desc!();

/// Build-time configuration; secrets never reach the log.
const WIFI_SSID: Option<&str> = option_env!("AZSIM_WIFI_SSID");
const WIFI_PASSWORD: Option<&str> = option_env!("AZSIM_WIFI_PASSWORD");
const CONNECTION_STRING: Option<&str> = option_env!("AZSIM_CONNECTION_STRING");
/// Provisioning instead of a connection string: the DPS id scope and registration id, and the
/// device's key or a group enrollment's key (the device key is derived from it on the board).
/// `build.rs` sets `cfg(azsim_dps)` when `AZSIM_ID_SCOPE` is set: without it the DPS code is not
/// in the image at all (nor its state in the main task's future).
const ID_SCOPE: Option<&str> = option_env!("AZSIM_ID_SCOPE");
#[cfg(azsim_dps)]
const REGISTRATION_ID: Option<&str> = option_env!("AZSIM_REGISTRATION_ID");
#[cfg(azsim_dps)]
const DEVICE_KEY: Option<&str> = option_env!("AZSIM_DEVICE_KEY");
#[cfg(azsim_dps)]
const GROUP_KEY: Option<&str> = option_env!("AZSIM_GROUP_KEY");
/// `host[:port]` of the provisioning service; DPS's global endpoint when unset.
#[cfg(azsim_dps)]
const PROVISIONING_HOST: Option<&str> = option_env!("AZSIM_PROVISIONING_HOST");
/// Telemetry interval in milliseconds before any desired property changes it.
const INTERVAL_MS: u64 = 10_000;
/// NTP server asked for the wall clock (the SAS expiry is absolute Unix time).
const NTP_SERVER: &str = "pool.ntp.org";
/// The Azure roots (DigiCert Global Root G2, Microsoft RSA Root CA 2017), plus the local hub's
/// CA when `AZSIM_CA_FILE` was set at build time; NUL-terminated for mbedtls.
const CA_PEM: &str = concat!(
    include_str!("../certs/DigiCert_Global_Root_G2.pem"),
    include_str!("../certs/Microsoft_RSA_Root_Certificate_Authority_2017.pem"),
    include_str!(concat!(env!("OUT_DIR"), "/extra_ca.pem")),
    "\0"
);

/// Packet buffers of the MQTT loop: the twin document, C2D messages and method requests must
/// fit `RX`; a `ping` response echoes its request, so `TX` matches.
const RX_LEN: usize = 4096;
const TX_LEN: usize = 4096;

/// Idles forever, repeating why.
async fn idle(why: &str) -> ! {
    loop {
        error!("{why}");
        Timer::after(Duration::from_secs(60)).await;
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger(log::LevelFilter::Info);
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // Wi-Fi buffers and mbedtls (two 16 KB record buffers plus the handshake) live on the heap:
    // the RAM the bootloader used, then a static block.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 80 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    info!("azsim firmware {}", env!("CARGO_PKG_VERSION"));

    let (Some(ssid), Some(password)) = (WIFI_SSID, WIFI_PASSWORD) else {
        idle(NOT_CONFIGURED).await
    };
    // Checked before the network comes up: a configuration error is reported at once.
    let setup = match (ID_SCOPE, CONNECTION_STRING) {
        #[cfg(azsim_dps)]
        (Some(scope), _) => match REGISTRATION_ID {
            Some(registration_id) => Setup::Dps {
                scope,
                registration_id,
                key: dps_key(registration_id).await,
            },
            None => idle("AZSIM_ID_SCOPE: needs AZSIM_REGISTRATION_ID").await,
        },
        (None, Some(cs_text)) => match hub_config(cs_text) {
            Ok(hub) => Setup::Hub(hub),
            Err(e) => idle(e).await,
        },
        _ => idle(NOT_CONFIGURED).await,
    };

    // Entropy for TLS and the network stack: the TRNG is fed while the radio runs.
    static TRNG_SOURCE: StaticCell<TrngSource<'static>> = StaticCell::new();
    TRNG_SOURCE.init(TrngSource::new(peripherals.RNG, peripherals.ADC1));
    static TRNG: StaticCell<Trng> = StaticCell::new();
    let Ok(trng) = Trng::try_new() else {
        idle("the hardware random number generator is not available").await
    };
    let trng = TRNG.init(trng);
    let seed = (u64::from(trng.random()) << 32) | u64::from(trng.random());

    let stack = match wifi::start(&spawner, peripherals.WIFI, ssid, password, seed).await {
        Ok(stack) => stack,
        Err(e) => idle(e).await,
    };
    let clock = SntpClock::new(sntp::unix_time(stack, NTP_SERVER).await);
    info!("clock set by SNTP: unix time {}", clock.unix_now());

    let Ok(ca_pem) = CStr::from_bytes_with_nul(CA_PEM.as_bytes()) else {
        idle("embedded CA bundle is not a C string").await
    };
    let ca = match Certificate::new(X509::PEM(ca_pem)) {
        Ok(ca) => ca,
        Err(e) => {
            error!("root certificates: {e:?}");
            idle("cannot parse the embedded root certificates").await
        }
    };
    let tls = match Tls::new(trng) {
        Ok(tls) => tls,
        Err(e) => {
            error!("mbedtls: {e:?}");
            idle("cannot start mbedtls").await
        }
    };

    static RX: StaticCell<[u8; RX_LEN]> = StaticCell::new();
    static TX: StaticCell<[u8; TX_LEN]> = StaticCell::new();
    let (rx, tx) = (RX.init([0; RX_LEN]), TX.init([0; TX_LEN]));
    let mut clock = clock;
    let (hub, mut connector) = match setup {
        Setup::Hub(hub) => {
            let connector =
                HubConnector::new(stack, tls.reference(), hub.connect_host, hub.port, ca);
            match connector {
                Ok(c) => (hub, c),
                Err(e) => idle(e).await,
            }
        }
        #[cfg(azsim_dps)]
        Setup::Dps {
            scope,
            registration_id,
            key,
        } => {
            let (dps_host, dps_port) = provisioning_host().await;
            let mut connector =
                match HubConnector::new(stack, tls.reference(), dps_host, dps_port, ca) {
                    Ok(c) => c,
                    Err(e) => idle(e).await,
                };
            info!(
                "provisioning {registration_id} through {dps_host}:{dps_port} (id scope {scope})"
            );
            let identity = DpsIdentity {
                id_scope: scope,
                registration_id,
                payload: None,
            };
            // The loop's packet buffers, lent to the registration before the loop runs.
            let assigned = dps::provision(
                &mut connector,
                &mut clock,
                identity,
                key,
                &mut rx[..],
                &mut tx[..],
            )
            .await;
            static ASSIGNED: StaticCell<Assignment> = StaticCell::new();
            let assigned = match assigned {
                Ok(a) => &*ASSIGNED.init(a),
                Err(e) => {
                    error!("provisioning refused: {e}");
                    idle("provisioning refused; check the id scope, registration id and key").await
                }
            };
            let Some((host, port)) = assigned.hub() else {
                idle("dps assigned an unusable hub name").await
            };
            let port = port.unwrap_or(8883);
            info!(
                "provisioned: assigned to {host} as {}",
                assigned.device_id.as_str()
            );
            if let Err(e) = connector.retarget(host, port) {
                idle(e).await
            }
            let hub = HubTarget {
                host,
                connect_host: host,
                port,
                device_id: assigned.device_id.as_str(),
                module_id: None,
                credential: Credential::Key(Secret::new(key)),
            };
            (hub, connector)
        }
    };
    let HubTarget {
        host,
        connect_host,
        port,
        device_id,
        module_id,
        credential,
    } = hub;

    let sensor = ChipSensor::new(peripherals.TSENS, seed);
    let device = Device::new(
        sensor,
        DeviceConfig {
            interval_ms: INTERVAL_MS,
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let client = Client::new(
        Identity {
            host,
            device_id,
            module_id,
            model_id: None,
        },
        credential,
        device,
        // Keep-alive as the azure-sdk-for-c ESP32 sample; everything else as `azsim run`.
        SessionConfig {
            keep_alive: 60,
            ..SessionConfig::default()
        },
        seed,
        rx,
        tx,
    );
    static CLIENT: StaticCell<Client<'static, ChipSensor>> = StaticCell::new();
    let client = match client {
        Ok(c) => CLIENT.init(c),
        Err(e) => {
            error!("{e}");
            idle("cannot start the device session").await
        }
    };

    info!("connecting to {connect_host}:{port} as {device_id}");
    let mut log = |n: Note<'_>| log_note(&n);
    // The board never asks the loop to stop: it returns only when the session gives up.
    if let Err(reason) = client.run(&mut connector, &mut clock, &mut log).await {
        warn!("the session stopped: {reason}");
    }
    idle("stopped; reset the board to try again").await
}

const NOT_CONFIGURED: &str = "not configured: rebuild with AZSIM_WIFI_SSID, AZSIM_WIFI_PASSWORD and \
    AZSIM_CONNECTION_STRING set, or with AZSIM_ID_SCOPE, AZSIM_REGISTRATION_ID and AZSIM_DEVICE_KEY \
    (or AZSIM_GROUP_KEY) instead of AZSIM_CONNECTION_STRING (see firmware/esp32c3/README.md)";

/// How the board finds its hub.
enum Setup {
    /// A connection string names the hub and the device.
    Hub(HubTarget),
    /// The provisioning service assigns them.
    #[cfg(azsim_dps)]
    Dps {
        scope: &'static str,
        registration_id: &'static str,
        key: &'static str,
    },
}

/// The hub, the device and its credential.
struct HubTarget {
    host: &'static str,
    connect_host: &'static str,
    port: u16,
    device_id: &'static str,
    module_id: Option<&'static str>,
    credential: Credential<'static>,
}

/// `AZSIM_CONNECTION_STRING`, checked; the error says which field, never its value.
/// Synchronous, so that without the variable none of it is in the image.
fn hub_config(cs_text: &'static str) -> Result<HubTarget, &'static str> {
    let cs = match ConnectionString::parse(cs_text) {
        Ok(cs) if matches!(cs.kind(), Kind::Device | Kind::Module | Kind::DeviceWithSas) => cs,
        Ok(_) => return Err("AZSIM_CONNECTION_STRING: needs a device or module connection string"),
        Err(e) => {
            error!("AZSIM_CONNECTION_STRING: {e}");
            return Err("not configured: AZSIM_CONNECTION_STRING is invalid");
        }
    };
    if cs.shared_access_key_name().is_some() {
        return Err(
            "AZSIM_CONNECTION_STRING: policy keys (SharedAccessKeyName) are not supported; use the device's own key",
        );
    }
    let credential = match (cs.shared_access_key(), cs.shared_access_signature()) {
        (Some(k), _) => Credential::Key(Secret::new(k)),
        (None, Some(t)) => Credential::Token(Secret::new(t)),
        (None, None) => return Err("AZSIM_CONNECTION_STRING: needs SharedAccessKey"),
    };
    let device_id = cs
        .device_id()
        .ok_or("AZSIM_CONNECTION_STRING: DeviceId is missing")?;
    Ok(HubTarget {
        host: cs.host(),
        connect_host: cs.gateway_host_name().unwrap_or(cs.host()),
        port: cs.port().unwrap_or(8883),
        device_id,
        module_id: cs.module_id(),
        credential,
    })
}

#[cfg(azsim_dps)]
/// The device key for DPS and the hub: `AZSIM_DEVICE_KEY`, or derived on the board from
/// `AZSIM_GROUP_KEY` and the registration id (what a group enrollment expects).
async fn dps_key(registration_id: &str) -> &'static str {
    match (DEVICE_KEY, GROUP_KEY) {
        (Some(k), _) => k,
        (None, Some(group)) => {
            static DERIVED: StaticCell<heapless::String<64>> = StaticCell::new();
            let mut key = heapless::String::new();
            if azsim_proto::sas::derive_group_key(&mut key, group, registration_id).is_err() {
                idle("AZSIM_GROUP_KEY: not a base64 key").await
            }
            DERIVED.init(key).as_str()
        }
        (None, None) => idle("AZSIM_ID_SCOPE: needs AZSIM_DEVICE_KEY or AZSIM_GROUP_KEY").await,
    }
}

#[cfg(azsim_dps)]
/// `AZSIM_PROVISIONING_HOST` (`host[:port]`) or DPS's global endpoint, on 8883 by default.
async fn provisioning_host() -> (&'static str, u16) {
    let text = PROVISIONING_HOST.unwrap_or(dps::GLOBAL_HOST);
    match connection_string::split_host_port(text) {
        Some((host, port)) if !host.is_empty() => (host, port.unwrap_or(8883)),
        _ => idle("AZSIM_PROVISIONING_HOST: expected host or host:port").await,
    }
}

fn log_note(n: &Note<'_>) {
    match *n {
        Note::Connecting { attempt } => info!("connecting (attempt {})", attempt + 1),
        Note::ConnectFailed { reason } => warn!("connect failed: {reason}"),
        Note::Session(ev) => log_event(&ev),
        Note::TelemetrySent { seq, body, .. } => info!(
            "telemetry #{seq} sent: {}",
            core::str::from_utf8(body).unwrap_or("<binary>")
        ),
        Note::TelemetryAcked { seq, .. } => info!("telemetry #{seq} acknowledged"),
        Note::TelemetryDropped { seq } => warn!("offline queue full: dropped telemetry #{seq}"),
        Note::Method { name, status, .. } => info!("method {name} -> {status}"),
        Note::ReportedSent { rid, patch } => info!(
            "reported (rid {rid}): {}",
            core::str::from_utf8(patch).unwrap_or("<binary>")
        ),
        Note::PacketTooLarge { buffer } => {
            warn!("incoming packet larger than the {buffer}-byte buffer; reconnecting");
        }
        Note::NotSent { topic } => warn!("publish to {topic} too large, not sent"),
        Note::GaveUp { reason } => error!("gave up: {reason}"),
    }
}

fn log_event(ev: &Event<'_>) {
    match *ev {
        Event::Connected {
            token_expiry,
            reconnect,
        } => info!(
            "connected{} (token expires at unix {})",
            if reconnect { " again" } else { "" },
            token_expiry.unwrap_or(0)
        ),
        Event::TokenRenewed { token_expiry } => {
            info!("token renewed (expires at unix {token_expiry})");
        }
        Event::Disconnected { reason } => warn!("disconnected: {reason}"),
        Event::Reconnecting { attempt, delay_ms } => {
            // Tenths of a second with integer formatting only (no float code in flash).
            info!(
                "reconnecting in {}.{} s (attempt {attempt})",
                delay_ms / 1000,
                delay_ms % 1000 / 100
            );
        }
        Event::C2d { body, .. } => {
            info!("c2d: {}", core::str::from_utf8(body).unwrap_or("<binary>"));
        }
        Event::Twin {
            desired_version, ..
        } => info!("twin received (desired v{})", desired_version.unwrap_or(0)),
        Event::DesiredPatch { version, patch } => info!(
            "desired v{version}: {}",
            core::str::from_utf8(patch).unwrap_or("<binary>")
        ),
        Event::ReportedAccepted { rid, version } => {
            info!("reported (rid {rid}) accepted, v{}", version.unwrap_or(0));
        }
        Event::TwinRequestFailed { rid, status, .. } => {
            warn!("twin request {rid} failed: {}", status.unwrap_or(0));
        }
        // Logged with its status once answered; unacknowledged telemetry is simply sent again;
        // acknowledgements come as `Note::TelemetryAcked`.
        Event::MethodRequest { .. }
        | Event::TelemetryUnacked { .. }
        | Event::TelemetryAcked { .. } => {}
    }
}
