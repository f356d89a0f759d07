//! DPS over AMQP on WebSockets at the root path, as the C# SDK opens it:
//! `ProvisioningTransportHandlerAmqp` with `TransportFallbackType.WebSocketOnly` builds
//! `wss://{GlobalDeviceEndpoint}:443/` (a `UriBuilder` with scheme, host and port: the path is
//! `/`) and offers the subprotocol `AMQPWSB10` (azure-iot-sdk-csharp,
//! provisioning/transport/amqp/src/AmqpClientConnection.cs). An independent client (fe2o3-amqp
//! over tungstenite, through the library's `WsBytes`) registers there with SASL PLAIN as C# does
//! and polls until assigned. `/` serves nothing else: an upgrade offering only `mqtt` and a plain
//! GET get the REST API's answers, as before.

use std::time::Duration;

use azsim_emulator::WsBytes;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{MessageId, Outcome};
use fe2o3_amqp::{Connection, Session};
use reqwest::Method;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self};

use crate::dps::{registration_token, service};
use crate::dps_amqp::independent_client::{answer, register, send, status};
use crate::hub_websocket::tls;
use crate::support::TestHub;

const WAIT: Duration = Duration::from_secs(20);

/// A WebSocket upgrade of `wss://{host}:{https}/` offering `protocol`.
async fn root_websocket(
    hub: &TestHub,
    protocol: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let url = format!("wss://{}:{}/", hub.hostname, hub.https_port);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::client_async(req, tls(hub).await).await?;
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol),
        "the hub answers in the subprotocol offered"
    );
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csharp_dps_over_websockets_registers_on_the_root_path() {
    let hub = TestHub::start().await;
    let (s, e) = service(
        &hub,
        Method::PUT,
        "/enrollments/cs-ws",
        Some(serde_json::json!({"attestation": {"type": "symmetricKey"}})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = hub.info.id_scope.clone();
    let address = format!("{scope}/registrations/cs-ws");
    let token = registration_token(
        &scope,
        "cs-ws",
        &key,
        azsim_emulator::clock::unix_now() + 3600,
    );

    let ws = root_websocket(&hub, "AMQPWSB10")
        .await
        .expect("the root path upgrades AMQPWSB10");
    let mut conn = tokio::time::timeout(
        WAIT,
        Connection::builder()
            .container_id("dps-ws-root-test")
            .hostname("localhost")
            .sasl_profile(SaslProfile::Plain {
                username: address.clone(),
                password: token,
            })
            .open_with_stream(WsBytes::new(ws)),
    )
    .await
    .expect("open in time")
    .expect("SASL PLAIN over the root WebSocket");
    let mut session = Session::begin(&mut conn).await.expect("session");
    // The receiver first, as the SDKs attach them.
    let mut rx = Receiver::attach(&mut session, "rx", address.as_str())
        .await
        .expect("receiver");
    let mut tx = Sender::attach(&mut session, "tx", address.as_str())
        .await
        .expect("sender");

    // C#'s register: an empty data section.
    let o = send(&mut tx, register("reg-1")).await;
    assert!(matches!(o, Outcome::Accepted(_)), "{o:?}");
    let (corr, _, body) = answer(&mut rx).await;
    assert_eq!(corr, Some(MessageId::String("reg-1".into())));
    let op = body["operationId"]
        .as_str()
        .unwrap_or_else(|| panic!("operationId in {body}"))
        .to_string();
    // C#'s status request (the operation as an `amqp-value` string body) until assigned; the
    // local DPS assigns at once, so a few polls do (each answer is awaited, not slept on).
    let mut assigned = None;
    for i in 0..10 {
        let o = send(&mut tx, status(&format!("poll-{i}"), &op)).await;
        assert!(matches!(o, Outcome::Accepted(_)), "poll {i}: {o:?}");
        let (corr, _, body) = answer(&mut rx).await;
        assert_eq!(corr, Some(MessageId::String(format!("poll-{i}"))));
        if body["status"] == "assigned" {
            assigned = Some(body);
            break;
        }
        assert_eq!(body["status"], "assigning", "{body}");
    }
    let body = assigned.expect("assigned within 10 polls");
    assert_eq!(body["registrationState"]["deviceId"], "cs-ws", "{body}");
    let _ = conn.close().await;
    let (s, d) = hub.rest(Method::GET, "/devices/cs-ws", None).await;
    assert_eq!(s, 200, "the registered device is in the registry: {d}");

    // `/` serves only AMQPWSB10: an upgrade offering `mqtt` gets what the REST API answers a
    // request without an api-version (400), as before.
    match root_websocket(&hub, "mqtt").await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        Err(e) => panic!("mqtt on /: {e}"),
        Ok(_) => panic!("mqtt on / upgraded"),
    }
    // A plain GET of `/`: 400 without an api-version, 404 NotFound with one and a token.
    let r = hub
        .http()
        .get(format!("https://{}:{}/", hub.hostname, hub.https_port))
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status().as_u16(), 400);
    let (s, v) = hub.rest(Method::GET, "/", None).await;
    assert_eq!(s, 404, "{v}");
    hub.stop().await;
}
