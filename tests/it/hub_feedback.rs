//! C2D feedback over real TLS: records for `iothub-ack` positive/negative/full, Azure's service
//! REST calls to receive (lock in `ETag`), complete and abandon them, lock expiry and restarts;
//! and the device-side HTTPS C2D calls (receive, complete, abandon, reject).

use std::time::Duration;

use azsim_emulator::HubConfig;
use azsim_emulator::clock::ManualClock;
use reqwest::Method;
use rumqttc::{AsyncClient, Packet, QoS};
use serde_json::{Value, json};

use crate::hub_events::sse_until;
use crate::support::{TestHub, next_incoming};

const FEEDBACK: &str = "/messages/serviceBound/feedback";

/// One `GET /messages/serviceBound/feedback`.
struct Batch {
    status: u16,
    content_type: Option<String>,
    etag: Option<String>,
    records: Vec<Value>,
}

impl Batch {
    /// The lock token: the `ETag` without its quotes.
    fn token(&self) -> String {
        let etag = self.etag.as_deref().expect("ETag on a feedback batch");
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "quoted: {etag}"
        );
        etag.trim_matches('"').to_string()
    }

    fn ids(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| r["originalMessageId"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn receive(hub: &TestHub) -> Batch {
    let r = hub
        .http()
        .get(hub.url(FEEDBACK))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (content_type, etag) = (header("content-type"), header("etag"));
    let text = r.text().await.unwrap();
    let records = if text.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<Vec<Value>>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    Batch {
        status,
        content_type,
        etag,
        records,
    }
}

/// `DELETE .../feedback/{token}` or `POST .../feedback/{token}/abandon`: status and body.
async fn settle(hub: &TestHub, token: &str, abandon: bool) -> (u16, Value) {
    if abandon {
        hub.rest(Method::POST, &format!("{FEEDBACK}/{token}/abandon"), None)
            .await
    } else {
        hub.rest(Method::DELETE, &format!("{FEEDBACK}/{token}"), None)
            .await
    }
}

/// Receives and completes batches until `done(all records so far)`; panics after 15 s.
async fn drain_until(hub: &TestHub, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let b = receive(hub).await;
            if b.status == 200 {
                assert_eq!(settle(hub, &b.token(), false).await.0, 204);
                all.extend(b.records);
            } else {
                assert_eq!(b.status, 204);
            }
            if done(&all) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("feedback did not arrive; got {all:?}"));
    all
}

async fn send(hub: &TestHub, device: &str, body: Value) {
    let (s, v) = hub
        .rest(
            Method::POST,
            &format!("/emulator/devices/{device}/c2d"),
            Some(body),
        )
        .await;
    assert_eq!(s, 202, "{v}");
}

async fn queue_depth(hub: &TestHub, device: &str) -> u64 {
    let (_, v) = hub
        .rest(Method::GET, &format!("/twins/{device}"), None)
        .await;
    v["cloudToDeviceMessageCount"].as_u64().expect("count")
}

fn status_of<'a>(records: &'a [Value], id: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r["originalMessageId"] == id)
        .map(|r| r["statusCode"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn completing_a_message_gives_success_feedback_only_when_asked() {
    let hub = TestHub::start().await;
    hub.create_device("fb").await;
    let (_, dev) = hub.rest(Method::GET, "/devices/fb", None).await;
    let key = hub.device_key("fb").await;
    assert_eq!(receive(&hub).await.status, 204, "nothing pending yet");
    for (id, ack) in [
        ("p1", "positive"),
        ("n1", "none"),
        ("f1", "full"),
        ("neg1", "negative"),
    ] {
        send(&hub, "fb", json!({"body": id, "messageId": id, "ack": ack})).await;
    }
    let (c, mut el) = hub.connect("fb", &key, true).await;
    c.subscribe("devices/fb/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
            if queue_depth(&hub, "fb").await == 0 {
                return;
            }
        }
    })
    .await
    .expect("the device completes all four messages");

    let b = receive(&hub).await;
    assert_eq!(b.status, 200);
    assert_eq!(
        b.content_type.as_deref(),
        Some("application/vnd.microsoft.iothub.feedback.json")
    );
    let mut ids = b.ids();
    ids.sort();
    assert_eq!(ids, ["f1", "p1"], "{:?}", b.records);
    for r in &b.records {
        assert_eq!(r["statusCode"], "Success", "{r}");
        assert_eq!(r["description"], "Success", "{r}");
        assert_eq!(r["deviceId"], "fb", "{r}");
        assert_eq!(r["deviceGenerationId"], dev["generationId"], "{r}");
        let t = r["enqueuedTimeUtc"].as_str().unwrap();
        assert!(t.len() == 28 && t.ends_with('Z'), "{t}");
        let mut keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "description",
                "deviceGenerationId",
                "deviceId",
                "enqueuedTimeUtc",
                "originalMessageId",
                "statusCode"
            ]
        );
    }
    let token = b.token();
    assert_eq!(receive(&hub).await.status, 204, "the batch is locked");
    assert_eq!(settle(&hub, &token, false).await.0, 204);
    let (s, v) = settle(&hub, &token, false).await;
    assert_eq!(s, 412, "{v}");
    assert!(v["Message"].as_str().unwrap().contains("412002"), "{v}");
    assert_eq!(
        receive(&hub).await.status,
        204,
        "completed feedback is gone"
    );
    drop(c);
    hub.stop().await;
}

#[tokio::test]
async fn dead_lettered_messages_give_negative_feedback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = HubConfig::new(tmp.path().join("hub"));
    cfg.in_memory = true;
    cfg.limits.c2d_max_delivery_count = 1;
    let clock = ManualClock::at_system_now();
    cfg.clock = clock.clock();
    let hub = TestHub::start_with(cfg).await;
    hub.create_device("dl").await;
    hub.create_device("offline").await;
    let key = hub.device_key("dl").await;

    // Delivered once and never acknowledged: the next delivery attempt dead-letters them.
    let mut opts = hub.device_options("dl", &key, false);
    opts.set_manual_acks(true);
    let (c, mut el) = AsyncClient::new(opts, 16);
    c.subscribe("devices/dl/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_incoming(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    send(
        &hub,
        "dl",
        json!({"body": "a", "messageId": "neg-dc", "ack": "negative"}),
    )
    .await;
    send(
        &hub,
        "dl",
        json!({"body": "b", "messageId": "pos-dc", "ack": "positive"}),
    )
    .await;
    for _ in 0..2 {
        next_incoming(&mut el, |p| matches!(p, Packet::Publish(_)).then_some(())).await;
    }
    drop(c);
    drop(el);
    // An offline device's message expires without any delivery attempt.
    send(
        &hub,
        "offline",
        json!({"body": "c", "messageId": "full-exp", "ack": "full", "ttlSeconds": 1}),
    )
    .await;
    clock.advance(Duration::from_secs(1));
    let (_c, _el) = hub.connect("dl", &key, false).await;

    let all = drain_until(&hub, |r| {
        !status_of(r, "neg-dc").is_empty() && !status_of(r, "full-exp").is_empty()
    })
    .await;
    assert_eq!(status_of(&all, "neg-dc"), ["DeliveryCountExceeded"]);
    assert_eq!(status_of(&all, "full-exp"), ["Expired"]);
    assert!(
        status_of(&all, "pos-dc").is_empty(),
        "positive-only ack gets no negative feedback: {all:?}"
    );
    assert_eq!(queue_depth(&hub, "dl").await, 0);
    assert_eq!(queue_depth(&hub, "offline").await, 0);
    hub.stop().await;
}

#[tokio::test]
async fn an_abandoned_or_expired_lock_makes_the_batch_visible_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = HubConfig::new(tmp.path().join("hub"));
    cfg.in_memory = true;
    cfg.limits.feedback_lock_timeout = Duration::from_secs(30);
    let clock = ManualClock::at_system_now();
    cfg.clock = clock.clock();
    let hub = TestHub::start_with(cfg).await;
    hub.create_device("lk").await;
    send(
        &hub,
        "lk",
        json!({"body": "x", "messageId": "pg", "ack": "negative"}),
    )
    .await;
    let (s, v) = hub.rest(Method::DELETE, "/devices/lk/commands", None).await;
    assert_eq!((s, v["totalMessagesPurged"].as_u64()), (200, Some(1)));

    let first = receive(&hub).await;
    assert_eq!(first.status, 200);
    assert_eq!(status_of(&first.records, "pg"), ["Purged"]);
    let a = first.token();
    assert_eq!(settle(&hub, &a, true).await.0, 204, "abandon");
    assert_eq!(
        settle(&hub, &a, true).await.0,
        412,
        "an abandoned lock is gone"
    );

    let second = receive(&hub).await;
    assert_eq!(second.ids(), ["pg"]);
    let b = second.token();
    assert_ne!(a, b);
    // Not completed: locked for 30 s on the hub's clock, then handed out again.
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(receive(&hub).await.status, 204, "still locked");
    clock.advance(Duration::from_millis(1));
    let third = receive(&hub).await;
    assert_eq!(third.status, 200, "visible again after the lock timeout");
    assert_eq!(third.ids(), ["pg"]);
    assert_eq!(settle(&hub, &b, false).await.0, 412, "the expired lock");
    // The ETag passed on verbatim (with its quotes) works too.
    let quoted = third.etag.clone().unwrap().replace('"', "%22");
    assert_eq!(settle(&hub, &quoted, false).await.0, 204);
    assert_eq!(receive(&hub).await.status, 204);
    hub.stop().await;
}

#[tokio::test]
async fn pending_feedback_survives_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir.path()).await;
    hub.create_device("rs").await;
    send(
        &hub,
        "rs",
        json!({"body": "x", "messageId": "kept", "ack": "full"}),
    )
    .await;
    let (s, _) = hub.rest(Method::DELETE, "/devices/rs/commands", None).await;
    assert_eq!(s, 200);
    // Received and given back before the restart.
    let before = receive(&hub).await;
    assert_eq!(before.ids(), ["kept"]);
    assert_eq!(settle(&hub, &before.token(), true).await.0, 204);
    hub.stop().await;

    let hub = TestHub::start_in(dir.path()).await;
    let after = receive(&hub).await;
    assert_eq!(after.status, 200);
    assert_eq!(status_of(&after.records, "kept"), ["Purged"]);
    assert_eq!(settle(&hub, &after.token(), false).await.0, 204);
    assert_eq!(receive(&hub).await.status, 204);
    hub.stop().await;
}

/// A device-side HTTPS call with `auth` as the `Authorization` header.
async fn device_call(hub: &TestHub, method: Method, path: &str, auth: &str) -> reqwest::Response {
    let url = format!(
        "https://{}:{}{path}{}api-version=2020-03-13",
        hub.hostname,
        hub.https_port,
        if path.contains('?') { '&' } else { '?' }
    );
    hub.http()
        .request(method, url)
        .header("Authorization", auth)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_device_settles_c2d_over_https_and_rejecting_gives_rejected_feedback() {
    let hub = TestHub::start().await;
    hub.create_device("h1").await;
    hub.create_device("h2").await;
    let se = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hub.device_token("h1", &hub.device_key("h1").await, se);
    let other = hub.device_token("h2", &hub.device_key("h2").await, se);
    send(
        &hub,
        "h1",
        json!({"body": "one", "messageId": "m1", "ack": "full", "correlationId": "c1",
               "properties": {"color": "blue"}}),
    )
    .await;
    send(
        &hub,
        "h1",
        json!({"body": "two", "messageId": "m2", "ack": "negative"}),
    )
    .await;
    let inbox = "/devices/h1/messages/deviceBound";

    let r = device_call(&hub, Method::GET, inbox, &other).await;
    assert_eq!(r.status(), 401, "another device's token");
    let r = device_call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "iothub-messageid"), "m1");
    assert_eq!(header(&r, "iothub-correlationid"), "c1");
    assert_eq!(header(&r, "iothub-app-color"), "blue");
    assert_eq!(header(&r, "iothub-deliverycount"), "1");
    assert_eq!(header(&r, "iothub-to"), inbox);
    let m1_first = header(&r, "etag");
    assert!(
        m1_first.starts_with('"') && m1_first.ends_with('"'),
        "{m1_first}"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"one");

    let r = device_call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(header(&r, "iothub-messageid"), "m2", "m1 is locked");
    let m2 = header(&r, "etag").trim_matches('"').to_string();
    assert_eq!(
        device_call(&hub, Method::GET, inbox, &token).await.status(),
        204
    );

    let m1_first = m1_first.trim_matches('"').to_string();
    let r = device_call(
        &hub,
        Method::POST,
        &format!("{inbox}/{m1_first}/abandon"),
        &token,
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = device_call(&hub, Method::GET, inbox, &token).await;
    assert_eq!(header(&r, "iothub-messageid"), "m1");
    assert_eq!(header(&r, "iothub-deliverycount"), "2");
    let m1 = header(&r, "etag").trim_matches('"').to_string();
    assert_ne!(m1, m1_first);

    // The event stream sees the completion and, from the sweep, the feedback.
    let resp = hub
        .http()
        .get(hub.url("/emulator/events?deviceId=h1"))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    let mut events = resp.bytes_stream();
    let mut pending = String::new();
    sse_until(&mut events, &mut pending, |l| l == ": ready").await;

    let path = format!("{inbox}/{m1}");
    assert_eq!(
        device_call(&hub, Method::DELETE, &path, &token)
            .await
            .status(),
        204
    );
    sse_until(&mut events, &mut pending, |l| {
        l.contains(r#""type":"c2dCompleted""#) && l.contains(r#""messageId":"m1""#)
    })
    .await;
    let r = device_call(&hub, Method::DELETE, &path, &token).await;
    assert_eq!(r.status(), 412, "completed already");
    let reject = format!("{inbox}/{m2}?reject");
    assert_eq!(
        device_call(&hub, Method::DELETE, &reject, &token)
            .await
            .status(),
        204
    );
    assert_eq!(queue_depth(&hub, "h1").await, 0);
    let line = sse_until(&mut events, &mut pending, |l| {
        l.contains(r#""type":"c2dFeedback""#) && l.contains(r#""messageId":"m2""#)
    })
    .await;
    assert!(line.contains(r#""statusCode":"Rejected""#), "{line}");

    let all = drain_until(&hub, |r| {
        !status_of(r, "m1").is_empty() && !status_of(r, "m2").is_empty()
    })
    .await;
    assert_eq!(status_of(&all, "m1"), ["Success"]);
    assert_eq!(status_of(&all, "m2"), ["Rejected"]);
    // The service may make the device-side call too.
    let r = device_call(&hub, Method::GET, inbox, &hub.service_token()).await;
    assert_eq!(r.status(), 204);
    hub.stop().await;
}

#[tokio::test]
async fn an_expired_c2d_message_is_never_delivered_and_gives_expired_feedback() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("ttl").await;
    let key = hub.device_key("ttl").await;
    send(
        &hub,
        "ttl",
        json!({"body": "stale", "messageId": "stale", "ack": "full", "ttlSeconds": 10}),
    )
    .await;
    clock.advance(Duration::from_secs(5));
    send(
        &hub,
        "ttl",
        json!({"body": "fresh", "messageId": "fresh", "ttlSeconds": 10}),
    )
    .await;
    // "stale" is due now on the hub's clock; "fresh" has 5 s left.
    clock.advance(Duration::from_secs(5));
    let expired_at = clock.unix_ms();

    let (c, mut el) = hub.connect("ttl", &key, true).await;
    c.subscribe("devices/ttl/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // The queue is in order, so the first message out would be "stale" had it been sent.
    let first = next_incoming(&mut el, |p| match p {
        Packet::Publish(p) => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&first[..], b"fresh");

    let b = receive(&hub).await;
    assert_eq!(b.status, 200);
    assert_eq!(status_of(&b.records, "stale"), ["Expired"]);
    let rec = &b.records[0];
    // Stamped by the hub's clock at the moment it dead-lettered the message.
    let when = rec["enqueuedTimeUtc"].as_str().unwrap();
    assert_eq!(
        when,
        azsim_emulator::clock::azure_time_ms(i64::try_from(expired_at).unwrap())
    );
    drop(c);
    hub.stop().await;
}
