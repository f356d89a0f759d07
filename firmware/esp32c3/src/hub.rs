//! The two platform pieces the shared loop asks for: a [`Connector`] that opens TCP + TLS to
//! the hub (or first to the provisioning service) with embassy-net and mbedtls-rs, and a
//! [`Clock`] in Unix milliseconds from SNTP.

use core::ffi::CStr;

use azsim_mqtt::{Clock, Connector};
use azsim_proto::session::DisconnectReason;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Stack, dns::DnsQueryType};
use embassy_time::{Duration, Instant, Timer};
use log::warn;
use mbedtls_rs::{
    Certificate, ClientSessionConfig, Session, SessionConfig, TlsReference, TlsVersion,
};

use crate::sntp::WallClock;

/// TCP socket buffers (mbedtls keeps its own 16 KB record buffers on the heap).
const TCP_RX: usize = 4096;
const TCP_TX: usize = 2048;
/// Longest host name plus its NUL.
const HOST_LEN: usize = 254;

/// Opens `host:port` over TLS 1.2+, verifying the server against the embedded roots and the
/// host name (sent as SNI).
pub struct HubConnector<'d> {
    stack: Stack<'static>,
    tls: TlsReference<'d>,
    host: &'static str,
    /// `host` with a NUL, for mbedtls.
    server_name: [u8; HOST_LEN + 1],
    port: u16,
    ca: Certificate<'static>,
    rx: [u8; TCP_RX],
    tx: [u8; TCP_TX],
}

impl<'d> HubConnector<'d> {
    /// # Errors
    /// When the host name is too long for a DNS name.
    pub fn new(
        stack: Stack<'static>,
        tls: TlsReference<'d>,
        host: &'static str,
        port: u16,
        ca: Certificate<'static>,
    ) -> Result<Self, &'static str> {
        let mut connector = Self {
            stack,
            tls,
            host: "",
            server_name: [0u8; HOST_LEN + 1],
            port,
            ca,
            rx: [0; TCP_RX],
            tx: [0; TCP_TX],
        };
        connector.retarget(host, port)?;
        Ok(connector)
    }

    /// Connects to `host:port` from now on (the hub DPS assigned, after provisioning), with
    /// the same socket buffers and roots.
    ///
    /// # Errors
    /// When the host name is too long for a DNS name.
    pub fn retarget(&mut self, host: &'static str, port: u16) -> Result<(), &'static str> {
        if host.is_empty() || host.len() > HOST_LEN || host.as_bytes().contains(&0) {
            return Err("the hub's host name is not a valid host name");
        }
        self.server_name = [0u8; HOST_LEN + 1];
        self.server_name[..host.len()].copy_from_slice(host.as_bytes());
        self.host = host;
        self.port = port;
        Ok(())
    }
}

impl Connector for HubConnector<'_> {
    type Conn<'a>
        = Session<'a, TcpSocket<'a>>
    where
        Self: 'a;

    async fn connect(&mut self) -> Result<Self::Conn<'_>, DisconnectReason> {
        let ip = match self.stack.dns_query(self.host, DnsQueryType::A).await {
            Ok(addrs) => *addrs.first().ok_or(DisconnectReason::Unreachable)?,
            Err(e) => {
                warn!("dns {}: {e:?}", self.host);
                return Err(DisconnectReason::Unreachable);
            }
        };
        let mut socket = TcpSocket::new(self.stack, &mut self.rx, &mut self.tx);
        // Longer than the MQTT keep-alive: the loop notices a silent hub itself.
        socket.set_timeout(Some(Duration::from_secs(120)));
        if let Err(e) = socket.connect((ip, self.port)).await {
            warn!("tcp {}:{}: {e:?}", self.host, self.port);
            return Err(DisconnectReason::Unreachable);
        }
        let server_name =
            CStr::from_bytes_until_nul(&self.server_name).map_err(|_| DisconnectReason::Tls)?;
        let mut config = ClientSessionConfig::new();
        config.ca_chain = Some(self.ca.clone());
        config.server_name = Some(server_name);
        config.min_version = TlsVersion::Tls1_2;
        let mut session =
            Session::new(self.tls, socket, &SessionConfig::Client(config)).map_err(|e| {
                warn!("tls setup: {e}");
                DisconnectReason::Tls
            })?;
        if let Err(e) = session.connect().await {
            warn!("tls handshake with {}: {e}", self.host);
            return Err(DisconnectReason::Tls);
        }
        Ok(session)
    }
}

/// Unix time in milliseconds (the session's unit): the SNTP answer plus the monotonic timer
/// since it arrived.
pub struct SntpClock {
    wall: WallClock,
}

impl SntpClock {
    pub fn new(wall: WallClock) -> Self {
        Self { wall }
    }

    /// Unix milliseconds now.
    fn unix_ms(&self) -> u64 {
        self.wall.unix_ms
            + Instant::now()
                .saturating_duration_since(self.wall.at)
                .as_millis()
    }

    /// Unix seconds now.
    pub fn unix_now(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

impl Clock for SntpClock {
    fn now(&mut self) -> u64 {
        self.unix_ms()
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        let now_ms = self.unix_ms();
        if unix_ms > now_ms {
            Timer::after(Duration::from_millis(unix_ms - now_ms)).await;
        }
    }
}
