//! Wi-Fi station with retry, and the embassy-net stack (DHCP, DNS, TCP, UDP) on top of it.

use embassy_executor::Spawner;
use embassy_net::{Config, Runner, Stack, StackResources};
use embassy_time::{Duration, Timer};
use esp_hal::peripherals::WIFI;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, ControllerConfig, Interface, WifiController};
use log::{info, warn};
use static_cell::StaticCell;

/// Sockets: DHCP, DNS, the hub's TCP connection, the SNTP UDP socket, one spare.
const SOCKETS: usize = 5;
/// Longest wait between join attempts.
const MAX_RETRY_SECS: u64 = 60;

/// Configures the radio, starts the join-and-rejoin task and the network stack, and returns
/// once DHCP has given the board an address.
///
/// # Errors
/// A message when the SSID or password cannot be used or the radio does not start.
pub async fn start(
    spawner: &Spawner,
    wifi: WIFI<'static>,
    ssid: &'static str,
    password: &'static str,
    seed: u64,
) -> Result<Stack<'static>, &'static str> {
    let ssid = ssid
        .try_into()
        .map_err(|_| "AZSIM_WIFI_SSID: longer than 32 bytes")?;
    let auth = if password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(
            password
                .try_into()
                .map_err(|_| "AZSIM_WIFI_PASSWORD: longer than 64 bytes")?,
        )
    };
    let station = StationConfig::default()
        .with_ssid(ssid)
        .with_authentication(auth);
    let controller = WifiController::new(
        wifi,
        ControllerConfig::default().with_initial_config(esp_radio::wifi::Config::Station(station)),
    )
    .map_err(|_| "the Wi-Fi radio did not start")?;
    let interface = Interface::station();

    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        interface,
        Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(join(controller).map_err(|_| "cannot start the Wi-Fi task")?);
    spawner.spawn(net(runner).map_err(|_| "cannot start the network task")?);

    info!("waiting for an IPv4 address");
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        info!("got {}", cfg.address);
    }
    Ok(stack)
}

/// Joins the access point and rejoins whenever the link drops, backing off up to a minute.
#[embassy_executor::task]
async fn join(mut controller: WifiController<'static>) {
    let mut failures = 0u32;
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                failures = 0;
                info!("Wi-Fi joined");
                let why = controller.wait_for_disconnect_async().await;
                warn!("Wi-Fi lost: {:?}", why.map(|d| d.reason));
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!("Wi-Fi join failed (attempt {failures}): {e:?}");
            }
        }
        let wait = (1u64 << failures.min(6)).min(MAX_RETRY_SECS);
        Timer::after(Duration::from_secs(wait)).await;
    }
}

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
