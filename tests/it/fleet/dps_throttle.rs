//! What goes wrong inside one DPS registration is counted by what it is: a 429 DPS answers
//! (a throttle fault on the registration id, retried after its `retry-after` inside the same
//! exchange) is `dps_throttled_429`, and a connection closed before the TLS handshake is done
//! is `dps_closed_before_auth`, not `dps_tls`.

use super::*;

const GROUP_KEY: &str = "dGhyb3R0bGUtZ3JvdXAta2V5LWZvci10aGUtdGVzdHMtMDEy";

fn one_device(hub: &TestHub, prefix: &str) -> tokio::process::Command {
    fleet(
        hub,
        &[
            "--devices",
            "1",
            "--prefix",
            prefix,
            "--group-key",
            GROUP_KEY,
            "--count",
            "1",
            "--interval",
            "200ms",
            "--stats-every",
            "300ms",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_inside_a_registration_is_waited_out_and_counted_as_dps_throttled() {
    let hub = TestHub::start().await;
    create_group(&hub, "throttle-group", GROUP_KEY).await;
    // The fault needs the identity to exist; DPS then updates it with the group's key.
    let (s, d) = hub
        .rest(
            Method::PUT,
            "/devices/thr-1",
            Some(json!({"deviceId": "thr-1"})),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    // Within the hub's 10 s connect deadline, so the retry-after is waited out on the same
    // connection; long enough that the fleet's first register lands inside it.
    let (s, f) = hub
        .rest(
            Method::POST,
            "/emulator/devices/thr-1/faults",
            Some(json!({"kind": "throttle", "forSeconds": 7})),
        )
        .await;
    assert_eq!(s, 200, "{f}");
    let mut f = Fleet::spawn(one_device(&hub, "thr-"));
    let summary = f.wait_for("the summary", 90, event("summary")).await;
    assert_eq!(f.exit_code().await, 0, "{summary}");
    assert_eq!(summary["provisioned"], 1, "{summary}");
    assert_eq!(summary["devices_acked"], 1, "{summary}");
    let errors = summary["errors"].as_object().expect("errors");
    assert!(
        errors
            .get("dps_throttled_429")
            .and_then(Value::as_u64)
            .is_some_and(|n| n >= 1),
        "the 429 is counted: {summary}"
    );
    assert_eq!(
        errors.len(),
        1,
        "nothing else went wrong (the 429 was retried inside the exchange): {summary}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_auth_is_counted_as_such_not_as_tls() {
    let hub = TestHub::start().await;
    create_group(&hub, "throttle-group", GROUP_KEY).await;
    // The hub itself no longer closes a connection over its pre-auth cap (it leaves it waiting
    // in the listen backlog), so a front closes the first connection as soon as it has
    // accepted it, before any TLS, as a load balancer may, and passes the others through.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let front_port = front.local_addr().expect("addr").port();
    let hub_port = hub.mqtt_port;
    let proxy = tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut conn, _)) = front.accept().await {
            if std::mem::take(&mut first) {
                drop(conn);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", hub_port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
            });
        }
    });
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hub.dir.join("hub.json")).expect("hub.json"))
            .expect("hub.json is JSON");
    let id_scope = info["id_scope"].as_str().expect("id_scope").to_owned();
    let provisioning_host = format!("localhost:{front_port}");
    // A DPS host of its own: the local hub's CA is not taken from the state dir then.
    let ca = hub.dir.join("ca.pem");
    let ca = ca.to_str().expect("UTF-8 path");
    let mut f = Fleet::spawn(fleet(
        &hub,
        &[
            "--devices",
            "1",
            "--prefix",
            "cba-",
            "--group-key",
            GROUP_KEY,
            "--id-scope",
            &id_scope,
            "--provisioning-host",
            &provisioning_host,
            "--ca",
            ca,
            "--count",
            "1",
            "--interval",
            "200ms",
            "--stats-every",
            "300ms",
        ],
    ));

    let turned_away = f
        .wait_for("a dps_closed_before_auth error", 60, |v| {
            v["event"] == "stats"
                && v["errors"]["dps_closed_before_auth"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
        })
        .await;
    let summary = f.wait_for("the summary", 90, event("summary")).await;
    proxy.abort();
    assert_eq!(f.exit_code().await, 0, "{summary}");
    assert_eq!(summary["provisioned"], 1, "{summary}");
    assert_eq!(summary["devices_acked"], 1, "{summary}");
    let errors = summary["errors"].as_object().expect("errors");
    assert!(
        !errors.contains_key("dps_tls"),
        "a closed connection is not a TLS failure: {summary} (earlier: {turned_away})"
    );
    hub.stop().await;
}
