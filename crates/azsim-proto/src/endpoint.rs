//! Where a device connects: IoT Hub's fixed MQTT ports.
//!
//! A connection string's `HostName` has no port for a real hub; these are the ports every SDK
//! assumes. A local hub may listen elsewhere and then says so as `HostName=host:port`.

/// MQTT 3.1.1 over TLS: the port a device connects to when none is given.
pub const MQTT_PORT: u16 = 8883;

/// MQTT over WebSockets over TLS (`wss://{host}:443/$iothub/websocket`), for networks that only
/// let HTTPS out.
pub const MQTT_WS_PORT: u16 = 443;
