//! One simulated device of the load bench: its credentials and topic (from azsim-proto's
//! writers), and its run: CONNECT, then M QoS 1 PUBLISHes timed to their PUBACKs.

use super::*;

pub(super) fn random_key() -> String {
    azsim_emulator::state_dir::generate_key()
}

/// One simulated device's credentials and topic.
#[derive(Clone)]
pub(super) struct DeviceSpec {
    pub(super) id: String,
    pub(super) username: String,
    pub(super) password: String,
    pub(super) topic: String,
}

pub(super) fn device_spec(host: &str, id: &str, key: &str) -> DeviceSpec {
    let mut password = String::new();
    sas::sign(
        &mut password,
        &sas::Resource::Device {
            host,
            device_id: id,
        },
        key,
        unix_now() + 3600,
        None,
    )
    .expect("sign device token");
    let username = username_for(host, id);
    let mut topic_s = String::new();
    topic::write_telemetry_topic(
        &mut topic_s,
        Identity::device(id),
        &azsim_proto::property_bag::SystemProperties::default(),
        [("bench", "load")],
    )
    .expect("topic");
    DeviceSpec {
        id: id.to_owned(),
        username,
        password,
        topic: topic_s,
    }
}

/// The device's MQTT username, as azsim's own driver sends it.
pub(super) fn username_for(host: &str, id: &str) -> String {
    let mut u = String::new();
    azsim_proto::username::write_username(&mut u, host, id, None, env!("CARGO_PKG_VERSION"), None)
        .expect("username");
    u
}

pub(super) enum DeviceOutcome {
    ConnectFailed(String),
    Done {
        latencies_us: Vec<u64>,
        error: Option<String>,
        acked: usize,
    },
}

pub(super) async fn wait_connack(el: &mut EventLoop) -> Result<(), String> {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("connack {:?}", ack.code))
                };
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_device(
    spec: DeviceSpec,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    p: Arc<Params>,
    connect_gate: Arc<Semaphore>,
    connected: Arc<Barrier>,
    start: Arc<Barrier>,
) -> DeviceOutcome {
    let mut opts = MqttOptions::new(spec.id.clone(), "localhost", port);
    opts.set_credentials(spec.username.clone(), spec.password.clone())
        .set_keep_alive(Duration::from_secs(240))
        .set_clean_session(false)
        .set_inflight(p.window)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut el) = AsyncClient::new(opts, p.messages + 4);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(60);
    el.set_network_options(net);

    let connect = {
        let _permit = connect_gate.acquire().await;
        wait_connack(&mut el).await
    };
    connected.wait().await;
    start.wait().await;
    if let Err(e) = connect {
        return DeviceOutcome::ConnectFailed(e);
    }
    let payload = vec![b'x'; p.payload];
    for _ in 0..p.messages {
        if let Err(e) = client.try_publish(&spec.topic, QoS::AtLeastOnce, false, payload.clone()) {
            return DeviceOutcome::Done {
                latencies_us: Vec::new(),
                error: Some(e.to_string()),
                acked: 0,
            };
        }
    }
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut latencies_us = Vec::with_capacity(p.messages);
    let mut error = None;
    while latencies_us.len() < p.messages {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent.insert(pkid, Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = sent.remove(&ack.pkid) {
                    latencies_us.push(t.elapsed().as_micros() as u64);
                }
            }
            Ok(_) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let acked = latencies_us.len();
    let _ = client.try_disconnect();
    // Drive the DISCONNECT out (bounded: a broken connection just ends here).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    DeviceOutcome::Done {
        latencies_us,
        error,
        acked,
    }
}
