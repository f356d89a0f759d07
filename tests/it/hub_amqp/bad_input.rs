//! Bad input on the AMQP listener: only that connection fails; the hub keeps serving AMQP
//! and MQTT.

use std::time::Duration;

use fe2o3_amqp::sasl_profile::SaslProfile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{WAIT, authorized, tls};
use crate::support::TestHub;

/// Reads until EOF (or an error); the bytes the hub sent before closing.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("the hub did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The hub still serves: an AMQP client authenticates and an MQTT device connects.
async fn still_serving(hub: &TestHub) {
    let (mut conn, _session, _cbs) = authorized(hub).await;
    conn.close().await.expect("close");
    hub.create_device("still-here").await;
    let key = hub.device_key("still-here").await;
    // Connected means CONNACK 0 (connect() checks it).
    let (_c, _el) = hub.connect("still-here", &key, true).await;
}

#[tokio::test]
async fn garbage_and_a_wrong_protocol_header_close_only_that_connection() {
    let hub = TestHub::start().await;
    // Garbage instead of a protocol header.
    let mut s = tls(&hub).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.is_empty() || got.starts_with(b"AMQP"),
        "at most the hub's protocol header: {got:?}"
    );
    // A protocol header of another version (AMQP 0-9-1).
    let mut s = tls(&hub).await;
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.is_empty() || got.starts_with(b"AMQP\x03"), "{got:?}");
    // Plain TCP bytes on the TLS port.
    let port = hub.info.amqp_port.unwrap();
    let mut t = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    t.write_all(&[0x41; 64]).await.unwrap();
    read_to_close(&mut t).await;
    still_serving(&hub).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_token_is_closed_at_the_connect_deadline() {
    let hub = TestHub::start_configured(|c| {
        c.limits.connect_deadline = Duration::from_millis(500);
    })
    .await;
    let mut conn = super::open(&hub, SaslProfile::Anonymous)
        .await
        .expect("open");
    // No put-token: the hub closes the connection with unauthorized-access.
    let closed = tokio::time::timeout(WAIT, conn.on_close())
        .await
        .expect("closed in time");
    assert!(
        format!("{closed:?}").contains("UnauthorizedAccess"),
        "{closed:?}"
    );
    still_serving(&hub).await;
    hub.stop().await;
}
