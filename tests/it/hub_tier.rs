//! The tier's meters (`--tier`), as Azure applies them: the daily message quota counting each
//! billable operation in 4 KB blocks (telemetry, C2D over REST and AMQP, methods, twin reads and
//! updates, desired notifications, queries, a job's per-device operations) with 403002 when it is
//! used up, and DPS's documented registration and polling rates with 429 and `retry-after`.
//! The telemetry quota and the REST throttles are in `hub_faults`.

use std::time::Duration;

use azsim_emulator::clock::ManualClock;
use reqwest::Method;
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};

use crate::hub_strict::{connected, device};
use crate::support::TestHub;

/// With `--tier`, the local DPS applies DPS's documented device registration rate (1,000 a
/// minute per unit, Microsoft Learn "DPS quotas and limits"): every register request of the
/// id scope counts, attested or not; the next one in the minute gets 429 with DPS's body and
/// a `Retry-After` up to the minute's end, a good device included; polls are not counted;
/// the next minute registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_dps_registration_rate_answers_429_with_retry_after_until_the_minute_is_over() {
    use crate::dps::{registration_token, request, service};
    let clock = ManualClock::new(1_700_000_000_000);
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::S1);
    })
    .await;
    let scope = hub.info.id_scope.clone();
    let (s, e) = service(&hub, Method::PUT, "/enrollments/rate-1", Some(json!({}))).await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
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
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::S1);
    })
    .await;
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
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::F1);
    })
    .await;
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
    use crate::dps::{registration_token, request, service};
    let clock = ManualClock::new(1_700_000_003_000);
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::S1);
    })
    .await;
    let scope = hub.info.id_scope.clone();
    let (s, e) = service(&hub, Method::PUT, "/enrollments/poll-1", Some(json!({}))).await;
    assert_eq!(s, 200, "{e}");
    let key = e["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
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
    let c = clock.clock();
    let hub = TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(azsim_emulator::fault::Tier::F1);
    })
    .await;
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
