//! Host I/O for the one device loop (`azsim_mqtt::Client`): TCP and TLS with tokio and rustls,
//! adapted to `embedded-io-async` with `embedded-io-adapters`, and the system clock in Unix
//! milliseconds. The board has the same two pieces over embassy-net and mbedtls-rs.
//!
//! The loop only learns *that* a connection failed ([`DisconnectReason`]); people need to know
//! *why* (which host and port, which certificate problem). The connector and the streams it opens
//! write that line into a [`FailureSlot`] the caller shares with its output.
//!
//! MQTT over WebSockets ([`Transport::WebSocket`]: `wss://{host}:{port}/$iothub/websocket`,
//! subprotocol `mqtt`, as the Azure SDKs' `websockets` option dials on 443) is the same
//! connector with a WebSocket handshake after TLS; tungstenite does the framing and
//! [`azsim_emulator::WsBytes`] turns its binary messages back into the byte stream the loop
//! reads. The loop above it does not change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azsim_emulator::WsBytes;
use azsim_emulator::clock::unix_now_ms;
use azsim_mqtt::{Clock, Connector};
use azsim_proto::session::DisconnectReason;
use embedded_io_adapters::tokio_1::FromTokio;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long TCP plus the TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The last connection failure, in words, shared between the connector (which writes it) and
/// whoever prints events (which reads it). Never holds a credential: it is made from host names,
/// ports and I/O or TLS errors only.
#[derive(Debug, Clone, Default)]
pub struct FailureSlot(Arc<Mutex<Option<String>>>);

impl FailureSlot {
    fn set(&self, text: String) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(text);
        }
    }

    fn clear(&self) {
        if let Ok(mut s) = self.0.lock() {
            *s = None;
        }
    }

    /// The text of the last failure, if one was recorded since the last connect began.
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// The path IoT Hub serves MQTT over WebSockets on.
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";
/// The port Azure serves HTTPS and WebSockets on.
pub const WEBSOCKET_PORT: u16 = 443;

/// How the MQTT bytes travel over TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// MQTT straight over TLS (port 8883).
    #[default]
    Mqtt,
    /// MQTT in binary WebSocket messages (`wss://{host}:{port}/$iothub/websocket`, port 443).
    WebSocket,
}

/// Opens TCP, then TLS, to `host:port`, checking the server certificate for `host`, then (for
/// [`Transport::WebSocket`]) the WebSocket upgrade.
pub struct TlsConnector {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    failure: FailureSlot,
    transport: Transport,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector to `host:port` with the TLS client configuration `tls` (one configuration
    /// can serve any number of connectors). Failures are described in `failure`.
    ///
    /// # Errors
    /// When `host` is not a valid TLS server name (a DNS name or an IP address).
    pub fn new(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        failure: FailureSlot,
    ) -> Result<Self, String> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host} is not a valid tls server name"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(tls),
            failure,
            transport: Transport::Mqtt,
        })
    }

    /// The same connector over `transport`.
    #[must_use]
    pub fn over(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// `host:port`, as the failure texts name it.
    pub fn peer(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn open(&self) -> Result<TlsConn, (DisconnectReason, String)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| describe_tcp(&e, &self.host, self.port))?;
        // Small QoS 1 publishes must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                let text = match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                    Some(r) => describe_rustls(r, &self.host, self.port),
                    None => format!(
                        "tls handshake with {}:{} failed: {}",
                        self.host,
                        self.port,
                        short_io(&e)
                    ),
                };
                (DisconnectReason::Tls, text)
            })?;
        let io = match self.transport {
            Transport::Mqtt => ConnIo::Tls(FromTokio::new(tls)),
            Transport::WebSocket => {
                ConnIo::WebSocket(Box::new(FromTokio::new(self.upgrade(tls).await?)))
            }
        };
        Ok(TlsConn {
            io,
            failure: self.failure.clone(),
            peer: self.peer(),
        })
    }

    /// The WebSocket handshake on an open TLS connection, offering the `mqtt` subprotocol.
    async fn upgrade(
        &self,
        tls: TlsStream<TcpStream>,
    ) -> Result<WsBytes<TlsStream<TcpStream>>, (DisconnectReason, String)> {
        let url = format!("wss://{}:{}{WEBSOCKET_PATH}", self.host, self.port);
        let fail = |what: String| {
            (
                DisconnectReason::Unreachable,
                format!("websocket upgrade at {url} failed: {what}"),
            )
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| fail(e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(azsim_emulator::WEBSOCKET_SUBPROTOCOL),
        );
        // Small buffers: a fleet holds thousands of these; packets are flushed one by one.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    fail(format!("the server answered http {}", r.status().as_u16()))
                }
                other => fail(other.to_string()),
            })?;
        Ok(WsBytes::new(ws))
    }
}

impl Connector for TlsConnector {
    type Conn<'a> = TlsConn;

    async fn connect(&mut self) -> Result<TlsConn, DisconnectReason> {
        self.failure.clear();
        // Boxed: the TCP connect and TLS handshake futures live only while connecting, but
        // inline they would size every device's task for its whole life.
        match Box::pin(tokio::time::timeout(CONNECT_TIMEOUT, self.open())).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err((reason, text))) => {
                self.failure.set(text);
                Err(reason)
            }
            Err(_) => {
                self.failure.set(format!(
                    "cannot connect to {}:{}: timed out",
                    self.host, self.port
                ));
                Err(DisconnectReason::Unreachable)
            }
        }
    }
}

/// A TLS connection as an `embedded-io-async` stream; a read or write error, or the end of the
/// stream, is described in the connector's [`FailureSlot`] before the loop sees it.
pub struct TlsConn {
    io: ConnIo,
    failure: FailureSlot,
    peer: String,
}

/// The stream under a [`TlsConn`]. The WebSocket one is boxed: inline it would size every TCP
/// device's task too. The TLS one stays inline (it was before; boxing it would cost every TCP
/// device an allocation for nothing).
#[allow(clippy::large_enum_variant)]
enum ConnIo {
    Tls(FromTokio<TlsStream<TcpStream>>),
    WebSocket(Box<FromTokio<WsBytes<TlsStream<TcpStream>>>>),
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl embedded_io_async::ErrorType for TlsConn {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for TlsConn {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        let r = match &mut self.io {
            ConnIo::Tls(io) => io.read(buf).await,
            ConnIo::WebSocket(io) => io.read(buf).await,
        };
        match &r {
            Ok(0) if !buf.is_empty() => self
                .failure
                .set(format!("{} closed the connection", self.peer)),
            Ok(_) => {}
            Err(e) => {
                self.failure
                    .set(format!("connection to {} lost: {}", self.peer, short_io(e)))
            }
        }
        r
    }
}

impl embedded_io_async::Write for TlsConn {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        let r = match &mut self.io {
            ConnIo::Tls(io) => io.write(buf).await,
            ConnIo::WebSocket(io) => io.write(buf).await,
        };
        if let Err(e) = &r {
            self.failure
                .set(format!("connection to {} lost: {}", self.peer, short_io(e)));
        }
        r
    }

    async fn flush(&mut self) -> Result<(), std::io::Error> {
        let r = match &mut self.io {
            ConnIo::Tls(io) => io.flush().await,
            ConnIo::WebSocket(io) => io.flush().await,
        };
        if let Err(e) = &r {
            self.failure
                .set(format!("connection to {} lost: {}", self.peer, short_io(e)));
        }
        r
    }
}

/// The system clock, in Unix milliseconds, with tokio timers to wait on it. Reading the system
/// clock for "now" (not a monotonic one) keeps tokens valid by the hub's clock after a laptop
/// sleeps, and lets a test fake it (libfaketime).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&mut self) -> u64 {
        unix_now_ms()
    }

    async fn sleep_until(&mut self, unix_ms: u64) {
        // Again if the system clock was set back while sleeping.
        loop {
            let now = unix_now_ms();
            if now >= unix_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(unix_ms - now)).await;
        }
    }
}

fn describe_tcp(e: &std::io::Error, host: &str, port: u16) -> (DisconnectReason, String) {
    use std::io::ErrorKind;
    let text = e.to_string();
    if text.contains("lookup") || text.contains("resolve") {
        return (
            DisconnectReason::Unreachable,
            format!("cannot resolve host {host}"),
        );
    }
    let unreachable = matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::NotFound
            | ErrorKind::TimedOut
            | ErrorKind::AddrNotAvailable
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    );
    let reason = if unreachable {
        DisconnectReason::Unreachable
    } else {
        DisconnectReason::Lost
    };
    (
        reason,
        format!("cannot connect to {host}:{port}: {}", short_io(e)),
    )
}

/// "Connection refused (os error 111)" -> "connection refused".
fn short_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    s.to_lowercase()
}

/// Names the certificate problem.
pub fn describe_rustls(e: &rustls::Error, host: &str, port: u16) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => "is signed by an unknown certificate authority (for the local hub pass its CA with --ca or AZSIM_CA_FILE)".to_owned(),
                C::Expired | C::ExpiredContext { .. } => "has expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet (check the clock)".to_owned(),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!("is not valid for the name {host}"),
                C::Revoked => "has been revoked".to_owned(),
                C::BadSignature => "has a bad signature".to_owned(),
                C::UnsupportedSignatureAlgorithmContext { .. } => "uses an unsupported signature algorithm".to_owned(),
                C::BadEncoding => "is malformed".to_owned(),
                other => format!("was rejected: {other:?}"),
            };
            format!("tls: the server certificate of {host}:{port} {what}")
        }
        rustls::Error::AlertReceived(a) => {
            format!("tls: {host}:{port} ended the handshake with alert {a:?}")
        }
        other => format!("tls handshake with {host}:{port} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::tls::client_config(None).unwrap()
    }

    #[tokio::test]
    async fn a_closed_port_is_named_with_host_and_port() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let slot = FailureSlot::default();
        let mut c = TlsConnector::new("127.0.0.1", port, tls(), slot.clone()).unwrap();
        assert!(matches!(
            c.connect().await,
            Err(DisconnectReason::Unreachable)
        ));
        assert_eq!(
            slot.get().unwrap(),
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_named() {
        let slot = FailureSlot::default();
        let mut c = TlsConnector::new("no-such-hub.invalid", 8883, tls(), slot.clone()).unwrap();
        assert!(c.connect().await.is_err());
        assert_eq!(
            slot.get().unwrap(),
            "cannot resolve host no-such-hub.invalid"
        );
    }

    #[test]
    fn a_name_that_cannot_be_a_server_name_is_refused() {
        let e = TlsConnector::new("bad host", 8883, tls(), FailureSlot::default()).unwrap_err();
        assert_eq!(e, "bad host is not a valid tls server name");
    }
}
