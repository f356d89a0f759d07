//! Wall-clock time from one SNTP exchange (RFC 4330) over UDP: the SAS token's expiry is
//! absolute Unix time, and the chip boots not knowing the date.
//!
//! The RTC-based "embedded epoch" of 2000-01-01 (946 684 800 s after Unix) is never used: the
//! clock is the SNTP answer (converted in [`crate::ntp`]) plus the monotonic embassy timer
//! since it arrived.

use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpAddress, Stack, dns::DnsQueryType};
use embassy_time::{Duration, Instant, Timer, with_timeout};
use log::{info, warn};

const NTP_PORT: u16 = 123;
const LOCAL_PORT: u16 = 50_123;

/// The Unix time in milliseconds at the moment the reply was read, paired with that instant.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix milliseconds at `at`.
    pub unix_ms: u64,
    /// When it was measured.
    pub at: Instant,
}

/// Asks `server` until it answers; retries every few seconds (the clock is required for the
/// SAS token, so there is nothing better to do).
pub async fn unix_time(stack: Stack<'static>, server: &str) -> WallClock {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match query(stack, server).await {
            Ok(clock) => return clock,
            Err(e) => warn!("sntp {server} (attempt {attempt}): {e}"),
        }
        Timer::after(Duration::from_secs(u64::from(attempt.min(6)) * 5)).await;
    }
}

async fn query(stack: Stack<'static>, server: &str) -> Result<WallClock, &'static str> {
    let addrs = stack
        .dns_query(server, DnsQueryType::A)
        .await
        .map_err(|_| "dns lookup failed")?;
    let ip: IpAddress = *addrs.first().ok_or("dns returned no address")?;

    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx_buf = [0u8; 128];
    let mut tx_buf = [0u8; 128];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    socket
        .bind(LOCAL_PORT)
        .map_err(|_| "cannot bind the udp socket")?;

    let request = crate::ntp::request();
    socket
        .send_to(&request, (ip, NTP_PORT))
        .await
        .map_err(|_| "send failed")?;
    let mut reply = [0u8; 48];
    let (n, _) = with_timeout(Duration::from_secs(5), socket.recv_from(&mut reply))
        .await
        .map_err(|_| "no answer within 5 s")?
        .map_err(|_| "receive failed")?;
    let at = Instant::now();
    let unix_ms = crate::ntp::parse_reply(&reply[..n])?;
    info!("sntp: {server} answered");
    Ok(WallClock { unix_ms, at })
}
