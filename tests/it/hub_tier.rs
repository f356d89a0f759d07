//! The tier's meters (`--tier`), as Azure applies them: the daily message quota counting each
//! billable operation in 4 KB blocks (telemetry, C2D over REST and AMQP, methods, twin reads and
//! updates, desired notifications, queries, a job's per-device operations) with 403002 when it is
//! used up, DPS's documented registration and polling rates with 429 and `retry-after`, and
//! the traffic shaping of device-to-cloud sends and new connections (paced PUBACKs and
//! CONNACKs, then a closed connection or CONNACK 3). The telemetry quota and the REST throttles
//! are in `hub_faults`.

use std::time::Duration;

use azsim_emulator::clock::{ManualClock, unix_now as now};
use reqwest::Method;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use serde_json::{Value, json};

use crate::hub_strict::{Raw, connected, device};
use crate::support::TestHub;

/// With `--tier`, the local DPS applies DPS's documented device registration rate (1,000 a
/// minute per unit, Microsoft Learn "DPS quotas and limits"): every register request of the
/// id scope counts, attested or not; the next one in the minute gets 429 with DPS's body and
/// a `Retry-After` up to the minute's end, a good device included; polls are not counted;
/// the next minute registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_dps_registration_rate_answers_429_with_retry_after_until_the_minute_is_over() {
    use crate::dps::{registration_token, request};
    let clock = ManualClock::new(1_700_000_000_000);
    let hub = tier_hub(&clock, azsim_emulator::fault::Tier::S1).await;
    let scope = hub.info.id_scope.clone();
    let key = enrollment_key(&hub, "rate-1").await;
    let token = registration_token(&scope, "rate-1", &key, 1_700_000_000 + 3600);
    let path = format!("/{scope}/registrations/rate-1/register");
    let body = json!({"registrationId": "rate-1"});
    // One good registration and its poll (polls do not count), then 999 without a token.
    let (s, v) = request(
        &hub,
        Method::PUT,
        &path,
        Some(&token),
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let op = v["operationId"].as_str().unwrap().to_string();
    let poll = format!("/{scope}/registrations/rate-1/operations/{op}");
    for _ in 0..3 {
        let (s, v) = request(&hub, Method::GET, &poll, Some(&token), None, None).await;
        assert_eq!(s, 200, "{v}");
    }
    let bad = format!("/{scope}/registrations/nobody/register");
    for chunk in 0..111 {
        let calls = (0..9).map(|_| request(&hub, Method::PUT, &bad, None, None, None));
        for (s, v) in futures::future::join_all(calls).await {
            assert_eq!(s, 401, "call {chunk}: {v}");
        }
    }
    // The 1,001st register of the minute: 429, DPS's body, Retry-After to the minute's end.
    let url = format!(
        "https://{}:{}{path}?api-version=2021-10-01",
        hub.hostname, hub.https_port
    );
    let r = hub
        .http()
        .put(&url)
        .header("Authorization", &token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // 1_700_000_000_000 ms is 20 s into its minute.
    assert_eq!(retry, 40);
    let v: Value = r.json().await.unwrap();
    crate::dps::assert_dps_error(&v, 429001);
    // Polls still answer.
    let (s, _) = request(&hub, Method::GET, &poll, Some(&token), None, None).await;
    assert_eq!(s, 200);
    clock.advance(Duration::from_secs(40));
    let (s, v) = request(&hub, Method::PUT, &path, Some(&token), None, Some(body)).await;
    assert_eq!(s, 202, "the next minute registers again: {v}");
    hub.stop().await;
}

/// Without `--tier` the local DPS does not throttle: past 1,000 registrations a minute it
/// still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tier_dps_registrations_are_not_rate_limited() {
    use crate::dps::request;
    let clock = ManualClock::new(1_700_000_000_000);
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| cfg.clock = c).await;
    let bad = format!("/{}/registrations/nobody/register", hub.info.id_scope);
    for _ in 0..112 {
        let calls = (0..9).map(|_| request(&hub, Method::PUT, &bad, None, None, None));
        for (s, v) in futures::future::join_all(calls).await {
            assert_eq!(s, 401, "{v}");
        }
    }
    hub.stop().await;
}

/// `GET /emulator/quota`'s count for one operation (Azure's quota usage insight name).
async fn billed(hub: &TestHub, name: &str) -> u64 {
    let (s, v) = hub.rest(Method::GET, "/emulator/quota", None).await;
    assert_eq!(s, 200, "{v}");
    v["byOperation"][name].as_u64().unwrap_or(0)
}

/// With a tier, the daily quota counts what Azure's billing counts (Learn, "Azure IoT Hub
/// billing information"), each in 4 KB blocks, at least one: telemetry, C2D, a direct method's
/// request and its "not online" answer, twin reads (back end and device), twin updates (back
/// end, reported from the device, the desired notification the device gets) and device
/// queries by their result; jobs queries and registry calls are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_quota_counts_each_billable_operation_in_4_kb_blocks() {
    let clock = ManualClock::at_system_now();
    let hub = tier_hub(&clock, azsim_emulator::fault::Tier::S1).await;
    let key = device(&hub, "qk").await;
    hub.create_device("qk-off").await;
    assert_eq!(
        billed(&hub, "Device to Cloud Telemetry").await,
        0,
        "registry calls are free"
    );
    let mut r = connected(&hub, "qk", &key).await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    r.subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce)
        .await;

    let id = r
        .publish1("devices/qk/messages/events/", vec![b'x'; 6 * 1024])
        .await;
    r.puback(id).await;
    assert_eq!(billed(&hub, "Device to Cloud Telemetry").await, 2);

    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/qk/c2d",
            Some(json!({"body": "c".repeat(5000)})),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    assert_eq!(billed(&hub, "Cloud To Device Command").await, 2);

    // A 5 KB tags update is two messages; a desired one is one, and so is its notification.
    let (s, v) = hub
        .rest(
            Method::PATCH,
            "/twins/qk",
            Some(json!({"tags": {"a": "t".repeat(2500), "b": "t".repeat(2500)}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(billed(&hub, "Update Twin").await, 2);
    let (s, v) = hub
        .rest(
            Method::PATCH,
            "/twins/qk",
            Some(json!({"properties": {"desired": {"rate": 5}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let note = r.next_publish().await;
    assert!(
        note.topic
            .starts_with("$iothub/twin/PATCH/properties/desired/")
    );
    assert_eq!(billed(&hub, "Update Twin").await, 3);
    assert_eq!(billed(&hub, "D2C Notify DesiredProperties").await, 1);

    // The back end reads the whole twin (over 4 KB with the tag); the device its properties.
    let (s, twin) = hub.rest(Method::GET, "/twins/qk", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        billed(&hub, "Get Twin").await,
        twin.to_string().len().div_ceil(4096) as u64
    );
    assert_eq!(billed(&hub, "Get Twin").await, 2);
    r.publish0("$iothub/twin/GET/?$rid=1", "").await;
    let res = r.next_publish().await;
    assert!(
        res.topic.starts_with("$iothub/twin/res/200/"),
        "{}",
        res.topic
    );
    assert_eq!(billed(&hub, "D2C Get Twin").await, 1);
    r.publish0(
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        r#"{"temp":21}"#,
    )
    .await;
    let res = r.next_publish().await;
    assert!(
        res.topic.starts_with("$iothub/twin/res/204/"),
        "{}",
        res.topic
    );
    assert_eq!(billed(&hub, "D2 Patch ReportedProperties").await, 1);

    // A 6 KB method request to a device that is not connected: two, plus one for the answer.
    let (s, v) = hub
        .rest(
            Method::POST,
            "/twins/qk-off/methods",
            Some(json!({"methodName": "m", "payload": "p".repeat(6000), "connectTimeoutInSeconds": 0})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(billed(&hub, "Device Direct Invoke Method").await, 3);

    let (s, rows) = hub
        .rest(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices"})),
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    let blocks = serde_json::to_vec(&rows).unwrap().len().div_ceil(4096) as u64;
    assert!(blocks >= 2, "the big tag is in the result");
    assert_eq!(billed(&hub, "Query Devices").await, blocks);
    let (s, _) = hub
        .rest(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT * FROM devices.jobs"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        billed(&hub, "Query Devices").await,
        blocks,
        "jobs queries are free"
    );

    let (_, q) = hub.rest(Method::GET, "/emulator/quota", None).await;
    assert_eq!(q["tier"], "S1");
    assert_eq!(q["limit"], 400_000);
    assert_eq!(q["used"], 2 + 2 + 3 + 1 + 2 + 1 + 1 + 3 + blocks, "{q}");
    hub.stop().await;
}

/// Once the day's quota has no room, billable REST calls are refused with 403002
/// IoTHubQuotaExceeded (a method, a C2D message), and a device's twin request gets `res/403`
/// (the next UTC day starting over is `quota`'s unit test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_refuses_methods_c2d_and_device_twin_requests_with_403002() {
    let clock = ManualClock::at_system_now();
    let hub = tier_hub(&clock, azsim_emulator::fault::Tier::F1).await;
    let key = device(&hub, "qf").await;
    let mut r = connected(&hub, "qf", &key).await;
    r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    // F1: 8,000 blocks of 0.5 KB. 15 telemetry messages of 512 blocks: 7,680.
    let big = vec![b'x'; 256 * 1024 - 64];
    for _ in 0..15 {
        let id = r.publish1("devices/qf/messages/events/", big.clone()).await;
        r.puback(id).await;
    }
    // A device twin read of the whole remainder: 640 twin reads would not fit, so read the twin
    // until it is refused.
    let mut reads = 0;
    let refused = loop {
        reads += 1;
        r.publish0(&format!("$iothub/twin/GET/?$rid={reads}"), "")
            .await;
        let res = r.next_publish().await;
        if !res.topic.starts_with("$iothub/twin/res/200/") {
            break res;
        }
        assert!(reads <= 320, "still answered after {reads} reads");
    };
    assert_eq!(reads, 321, "320 blocks were left");
    assert!(
        refused.topic.starts_with("$iothub/twin/res/403/"),
        "{}",
        refused.topic
    );
    let body: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(body["errorCode"], 403002, "{body}");
    let (s, v) = hub
        .rest(
            Method::POST,
            "/twins/qf/methods",
            Some(json!({"methodName": "m", "connectTimeoutInSeconds": 0})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("403002"), "{v}");
    let (s, v) = hub
        .rest(
            Method::POST,
            "/emulator/devices/qf/c2d",
            Some(json!({"body": "hi"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("403002"), "{v}");
    hub.stop().await;
}

/// A job's per-device operations are billed: a method job on two devices that are not online
/// is two requests and two "not online" answers (`Invoke Method Device Job`); a twin job's
/// update is a twin update. Creating and reading the jobs is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_per_device_operations_are_billed_and_the_job_itself_is_not() {
    let hub = TestHub::start_configured(|cfg| {
        cfg.tier = Some(azsim_emulator::fault::Tier::S1);
    })
    .await;
    for id in ["jm-1", "jm-2"] {
        hub.create_device(id).await;
    }
    let wait = |id: &'static str| {
        let hub = &hub;
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let (s, j) = hub.rest(Method::GET, &format!("/jobs/v2/{id}"), None).await;
                    assert_eq!(s, 200, "{j}");
                    if j["status"] == "completed" {
                        return j;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("job {id} did not complete"))
        }
    };
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/billed-m",
            Some(json!({"type": "scheduleDeviceMethod",
                "queryCondition": "deviceId IN ['jm-1', 'jm-2']",
                "cloudToDeviceMethod": {"methodName": "m", "payload": {"n": 1},
                    "connectTimeoutInSeconds": 0}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let done = wait("billed-m").await;
    assert_eq!(done["deviceJobStatistics"]["failedCount"], 2, "{done}");
    assert_eq!(billed(&hub, "Invoke Method Device Job").await, 4);
    let before = billed(&hub, "Update Twin").await;
    let (s, v) = hub
        .rest(
            Method::PUT,
            "/jobs/v2/billed-t",
            Some(
                json!({"type": "scheduleUpdateTwin", "queryCondition": "deviceId = 'jm-1'",
                "updateTwin": {"tags": {"site": "a"}}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait("billed-t").await;
    assert_eq!(billed(&hub, "Update Twin").await, before + 1);
    let (_, q) = hub.rest(Method::GET, "/emulator/quota", None).await;
    assert_eq!(q["used"], 5, "only the per-device operations: {q}");
    hub.stop().await;
}

/// With `--tier`, a device may poll its registration's operation status 5 times in 10 s (DPS's
/// "Device polling operation: 5/10 sec/device"); the 6th gets 429 with `Retry-After` to the
/// window's end, and the next window answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_dps_poll_rate_answers_429_past_five_polls_in_ten_seconds() {
    use crate::dps::{registration_token, request};
    let clock = ManualClock::new(1_700_000_003_000);
    let hub = tier_hub(&clock, azsim_emulator::fault::Tier::S1).await;
    let scope = hub.info.id_scope.clone();
    let key = enrollment_key(&hub, "poll-1").await;
    let token = registration_token(&scope, "poll-1", &key, 1_700_000_000 + 3600);
    let (s, v) = request(
        &hub,
        Method::PUT,
        &format!("/{scope}/registrations/poll-1/register"),
        Some(&token),
        None,
        Some(json!({"registrationId": "poll-1"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let op = v["operationId"].as_str().unwrap();
    let poll = format!("/{scope}/registrations/poll-1/operations/{op}");
    for n in 1..=5 {
        let (s, v) = request(&hub, Method::GET, &poll, Some(&token), None, None).await;
        assert_eq!(s, 200, "poll {n}: {v}");
    }
    let url = format!(
        "https://{}:{}{poll}?api-version=2021-10-01",
        hub.hostname, hub.https_port
    );
    let r = hub
        .http()
        .get(&url)
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    // 3 s into a 10 s window.
    assert_eq!(r.headers()["retry-after"], "7");
    crate::dps::assert_dps_error(&r.json().await.unwrap(), 429001);
    clock.advance(Duration::from_secs(7));
    let (s, v) = request(&hub, Method::GET, &poll, Some(&token), None, None).await;
    assert_eq!(s, 200, "the next window: {v}");
    hub.stop().await;
}

/// C2D over AMQP is billed too, and once the day's quota has no room for a message the hub
/// rejects it with `amqp:resource-limit-exceeded` naming 403002, while the link keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_over_amqp_is_billed_and_rejected_once_the_quota_is_used_up() {
    use fe2o3_amqp::link::Sender;
    use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
    use fe2o3_amqp::types::messaging::{Message, Outcome, Properties};
    use fe2o3_amqp::types::primitives::Binary;
    let clock = ManualClock::at_system_now();
    let hub = tier_hub(&clock, azsim_emulator::fault::Tier::F1).await;
    let key = device(&hub, "qa").await;
    let mut r = connected(&hub, "qa", &key).await;
    // 15 telemetry messages of 512 blocks leave 320 of F1's 8,000.
    let big = vec![b'x'; 256 * 1024 - 64];
    for _ in 0..15 {
        let id = r.publish1("devices/qa/messages/events/", big.clone()).await;
        r.puback(id).await;
    }
    let (_conn, mut session, _cbs) = crate::hub_amqp::authorized(&hub).await;
    let mut tx = Sender::attach(&mut session, "c2d-quota", "/messages/devicebound")
        .await
        .expect("attached");
    let message = |id: &str| {
        Message::builder()
            .properties(Properties {
                to: Some("/devices/qa/messages/devicebound".to_owned()),
                message_id: Some(id.to_owned().into()),
                ..Properties::default()
            })
            .data(Binary::from(vec![b'c'; 60_000]))
            .build()
    };
    let mut outcomes = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let o = tokio::time::timeout(Duration::from_secs(20), tx.send(message(id)))
            .await
            .expect("settled")
            .expect("sent");
        outcomes.push(o);
    }
    // 60,000 bytes are 118 blocks of 512: two fit in 320, the third does not.
    assert!(matches!(outcomes[0], Outcome::Accepted(_)), "{outcomes:?}");
    assert!(matches!(outcomes[1], Outcome::Accepted(_)), "{outcomes:?}");
    let Outcome::Rejected(rej) = &outcomes[2] else {
        panic!("the third is rejected: {outcomes:?}");
    };
    let e = rej.error.as_ref().expect("an error");
    assert_eq!(
        e.condition,
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
    );
    assert!(
        e.description.as_deref().unwrap_or("").contains("403002"),
        "{e:?}"
    );
    assert_eq!(billed(&hub, "Cloud To Device Command").await, 236);
    hub.stop().await;
}

/// A hub of `tier` on `clock`.
async fn tier_hub(clock: &ManualClock, tier: azsim_emulator::fault::Tier) -> TestHub {
    let c = clock.clock();
    TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(tier);
    })
    .await
}

/// Creates the symmetric-key enrollment `id` in the hub's DPS; its primary key.
async fn enrollment_key(hub: &TestHub, id: &str) -> String {
    let (s, e) = crate::dps::service(
        hub,
        Method::PUT,
        &format!("/enrollments/{id}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A hub of `tier` on `clock`, shaping with `burst_ms` at once and `queue_ms` queued.
async fn shaped_hub(
    clock: &ManualClock,
    tier: Option<azsim_emulator::fault::Tier>,
    burst_ms: u64,
    queue_ms: u64,
) -> TestHub {
    let c = clock.clock();
    TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = tier;
        cfg.shaping = azsim_emulator::throttle::Shaping {
            burst: Duration::from_millis(burst_ms),
            queue: Duration::from_millis(queue_ms),
        };
    })
    .await
}

/// A manual clock on a whole millisecond of today (the devices' tokens are signed with the
/// system clock).
fn frozen_clock() -> (ManualClock, u64) {
    let clock = ManualClock::at_system_now();
    let t = clock.unix_ms();
    clock.set_unix_ms(t);
    (clock, t)
}

/// Waits until the hub sleeps until `ms` on the manual clock (generous: the hub is a socket
/// away).
async fn hub_waits_until(clock: &ManualClock, ms: u64) {
    tokio::time::timeout(Duration::from_secs(10), clock.sleeper_at(ms))
        .await
        .unwrap_or_else(|_| panic!("the hub never waited until {ms}: {:?}", clock.sleepers()));
}

/// S1's device-to-cloud throttle is 100 sends a second for the hub, shared by its devices
/// (Learn, "IoT Hub quotas and throttling"), and shaped as Learn's "Traffic shaping" says:
/// over the rate a burst is processed at once, then sends are queued and processed (stored,
/// PUBACKed) at the rate, and once the queue is full the send is refused: 429002
/// ThrottleBacklogLimitExceeded, which over MQTT closes the connection without a PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_tier_rate_pubacks_are_paced_at_it_and_past_the_queue_the_connection_closes() {
    let (clock, t) = frozen_clock();
    // 1 s of burst at 100/s (101 sends at once), then 50 ms of queue.
    let hub = shaped_hub(&clock, Some(azsim_emulator::fault::Tier::S1), 1000, 50).await;
    let key_a = device(&hub, "sh-a").await;
    let key_b = device(&hub, "sh-b").await;
    let mut a = connected(&hub, "sh-a", &key_a).await;
    let mut b = connected(&hub, "sh-b", &key_b).await;
    let topic_a = "devices/sh-a/messages/events/";
    // The burst: acknowledged with the clock standing still.
    for _ in 0..=100 {
        let id = a.publish1(topic_a, "x").await;
        a.puback(id).await;
    }
    // Over it, one send every 10 ms for the whole hub: a's next at +10 ms, b's at +20 ms.
    let id_a = a.publish1(topic_a, "x").await;
    hub_waits_until(&clock, t + 10).await;
    let id_b = b.publish1("devices/sh-b/messages/events/", "x").await;
    hub_waits_until(&clock, t + 20).await;
    clock.advance(Duration::from_millis(10));
    a.puback(id_a).await;
    assert!(
        clock.sleepers().contains(&(t + 20)),
        "b's send waits for its own slot"
    );
    clock.advance(Duration::from_millis(10));
    b.puback(id_b).await;
    // A simulated second at the rate: each send is acknowledged only when its slot comes,
    // 10 ms after the one before, 100 in the second.
    let second_starts = clock.unix_ms();
    let mut acks = 0;
    for i in 1..=100 {
        let id = a.publish1(topic_a, "x").await;
        let slot = second_starts + 10 * i;
        hub_waits_until(&clock, slot).await;
        clock.set_unix_ms(slot);
        a.puback(id).await;
        acks += 1;
    }
    assert_eq!(clock.unix_ms() - second_starts, 1000);
    assert_eq!(acks, 100, "PUBACKs in the simulated second");
    // The queue holds 50 ms at the rate: five devices' sends wait, the sixth is refused.
    let now = clock.unix_ms();
    let mut waiting = Vec::new();
    for i in 1..=5 {
        let id = format!("sh-q{i}");
        let key = device(&hub, &id).await;
        let mut c = connected(&hub, &id, &key).await;
        let pkid = c
            .publish1(&format!("devices/{id}/messages/events/"), "x")
            .await;
        hub_waits_until(&clock, now + 10 * i).await;
        waiting.push((c, pkid));
    }
    let key = device(&hub, "sh-over").await;
    let mut over = connected(&hub, "sh-over", &key).await;
    over.publish1("devices/sh-over/messages/events/", "x").await;
    over.expect_closed().await;
    // The refused send took no slot: the queued ones go out at theirs.
    clock.advance(Duration::from_millis(50));
    for (mut c, pkid) in waiting {
        c.puback(pkid).await;
    }
    hub.stop().await;
}

/// S1's new-connection throttle (100 a second, Learn) is shaped the same way: past the burst a
/// CONNECT waits for its slot before its CONNACK, and once the queue is full the hub answers
/// CONNACK 3 (server unavailable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_tier_connection_rate_connacks_wait_and_past_the_queue_are_3() {
    let (clock, t) = frozen_clock();
    // 40 ms of burst (5 connections at once), 50 ms of queue (5 more).
    let hub = shaped_hub(&clock, Some(azsim_emulator::fault::Tier::S1), 40, 50).await;
    let mut keys = Vec::new();
    for i in 0..11 {
        let id = format!("cn-{i}");
        let key = device(&hub, &id).await;
        keys.push((id, key));
    }
    let mut open = Vec::new();
    for (id, key) in &keys[..5] {
        open.push(connected(&hub, id, key).await);
    }
    let mut queued = Vec::new();
    for (id, key) in &keys[5..10] {
        let mut r = Raw::open(&hub).await;
        let (id, user, pass) = (
            id.clone(),
            hub.username(id),
            hub.device_token(id, key, now() + 3600),
        );
        queued.push(tokio::spawn(async move {
            let code = r.connect(&id, &user, &pass, None).await;
            (code, r)
        }));
    }
    for i in 1..=5 {
        hub_waits_until(&clock, t + 10 * i).await;
    }
    let (id, key) = &keys[10];
    let mut refused = Raw::open(&hub).await;
    let code = refused
        .connect(
            id,
            &hub.username(id),
            &hub.device_token(id, key, now() + 3600),
            None,
        )
        .await;
    assert_eq!(code, ConnectReturnCode::ServiceUnavailable);
    clock.advance(Duration::from_millis(50));
    for task in queued {
        let (code, mut r) = task.await.unwrap();
        assert_eq!(code, ConnectReturnCode::Success);
        // Connected for real: the connection takes telemetry.
        r.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await;
    }
    drop(open);
    hub.stop().await;
}

/// Without a tier nothing is shaped, whatever `shaping` says: a burst of sends and of
/// connections goes through with the clock standing still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tier_nothing_is_shaped() {
    let (clock, _) = frozen_clock();
    // No burst, no queue: with a tier the second send would be refused.
    let hub = shaped_hub(&clock, None, 0, 0).await;
    let key = device(&hub, "free").await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(connected(&hub, "free", &key).await);
    }
    let mut r = connected(&hub, "free", &key).await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(r.publish1("devices/free/messages/events/", "x").await);
    }
    for id in ids {
        r.puback(id).await;
    }
    hub.stop().await;
}
