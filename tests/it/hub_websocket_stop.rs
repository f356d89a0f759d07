//! A device still connected over WebSockets when the hub stops: the stop disconnects it, and
//! that disconnect is routed to the built-in endpoint and kept (the hub hands its queued routed
//! events to the log before the last flush), so a consumer finds it after a restart.

use std::time::Duration;

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use crate::hub_websocket_limits::connected;
use crate::support::TestHub;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_device_s_disconnect_at_hub_stop_is_routed_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = azsim_emulator::HubConfig::new(tmp.path().join("hub"));
        c.partitions = 1;
        c
    };
    let hub = TestHub::start_with(config()).await;
    let mut devices = Vec::new();
    for i in 0..5 {
        let id = format!("stop-{i}");
        hub.create_device(&id).await;
        let key = hub.device_key(&id).await;
        devices.push(connected(&hub, &id, &key).await);
    }
    hub.stop().await;
    drop(devices);

    let hub = TestHub::start_with(config()).await;
    let (_conn, mut session, _cbs) = crate::hub_amqp::authorized(&hub).await;
    let mut r = Receiver::builder()
        .name("stop-reader")
        .source(
            Source::builder()
                .address("localhost/ConsumerGroups/$Default/Partitions/0")
                .build(),
        )
        .target("me")
        .attach(&mut session)
        .await
        .expect("attach");
    let mut disconnected = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while disconnected.len() < 5 {
            let d = r.recv::<Body<Value>>().await.expect("event");
            r.accept(&d).await.expect("accept");
            let app = d.message().application_properties.as_ref();
            let prop = |name: &str| match app.and_then(|a| a.0.get(name)) {
                Some(SimpleValue::String(s)) => Some(s.clone()),
                _ => None,
            };
            if prop("opType").as_deref() == Some("deviceDisconnected") {
                disconnected.insert(prop("deviceId").unwrap());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stop's disconnects in the log; found {disconnected:?}"));
    hub.stop().await;
}
