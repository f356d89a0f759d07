//! File upload initiations under the tier's throttle (`--tier`, Microsoft Learn "IoT Hub quotas
//! and throttling": 1.67 a second per unit, counted per minute as 100/min/unit on Free, S1 and
//! S2, 5,000/min/unit on S3): the next `POST /devices/{id}/files` of the minute gets 429
//! ThrottlingException (429001) whichever device sends it; completions are not counted; the
//! next minute initiates again; units raise the allowance.

use std::time::Duration;

use azsim_emulator::clock::{ManualClock, unix_now};
use azsim_emulator::fault::Tier;
use serde_json::{Value, json};

use crate::support::TestHub;

/// 1_700_000_000_000 ms is 20 s into its minute.
const START_MS: u64 = 1_700_000_000_000;

async fn tier_hub(clock: &ManualClock, tier: Tier, units: u32) -> TestHub {
    let c = clock.clock();
    TestHub::start_configured(move |cfg| {
        cfg.clock = c;
        cfg.tier = Some(tier);
        cfg.units = units;
    })
    .await
}

/// `POST /devices/{device}/files`: status, `iothub-errorcode`, body.
async fn begin(hub: &TestHub, device: &str, key: &str, name: &str) -> (u16, String, Value) {
    let r = hub
        .http()
        .post(hub.url(&format!("/devices/{device}/files")))
        .header(
            "Authorization",
            hub.device_token(device, key, unix_now() + 3600),
        )
        .json(&json!({ "blobName": name }))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let code = r
        .headers()
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, code, r.json().await.unwrap_or(Value::Null))
}

/// Devices `{prefix}0..{prefix}{n-1}` and their keys.
async fn devices(hub: &TestHub, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        hub.create_device(&id).await;
        let key = hub.device_key(&id).await;
        out.push((id, key));
    }
    out
}

/// Ten initiations from each device at once (each device's ten active uploads); every one
/// must be answered 200.
async fn ten_each(hub: &TestHub, devices: &[(String, String)]) -> Vec<(String, String, String)> {
    let mut begun = Vec::new();
    for (id, key) in devices {
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let calls = names.iter().map(|name| begin(hub, id, key, name));
        for (status, code, body) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{id}: {code} {body}");
            let cid = body["correlationId"].as_str().expect("correlationId");
            begun.push((id.clone(), key.clone(), cid.to_string()));
        }
    }
    begun
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_file_upload_initiations_over_100_a_minute_get_429_until_the_minute_is_over() {
    let clock = ManualClock::new(START_MS);
    let hub = tier_hub(&clock, Tier::S1, 1).await;
    let devs = devices(&hub, "up", 11).await;
    // 100 initiations of the minute, ten devices' ten each: all answered.
    let begun = ten_each(&hub, &devs[..10]).await;
    assert_eq!(begun.len(), 100);
    // The 101st, from a device with no upload yet: throttled, as IoT Hub's REST throttles are.
    let (fresh, fresh_key) = &devs[10];
    let (status, code, body) = begin(&hub, fresh, fresh_key, "late").await;
    assert_eq!(status, 429, "{code} {body}");
    assert_eq!(code, "ThrottlingException", "{body}");
    let message = body["Message"].as_str().expect("Message");
    assert!(message.contains("429001"), "{body}");
    // Completing an upload is not an initiation: still answered in the throttled minute.
    let (id, key, cid) = &begun[0];
    let r = hub
        .http()
        .post(hub.url(&format!("/devices/{id}/files/notifications")))
        .header(
            "Authorization",
            hub.device_token(id, key, unix_now() + 3600),
        )
        .json(&json!({
            "correlationId": cid, "isSuccess": true, "statusCode": 200, "statusDescription": "ok"
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 204);
    // Still throttled until the minute is over (40 s on the hub's clock).
    clock.advance(Duration::from_secs(39));
    assert_eq!(begin(&hub, fresh, fresh_key, "late").await.0, 429);
    clock.advance(Duration::from_secs(1));
    let (status, code, body) = begin(&hub, fresh, fresh_key, "late").await;
    assert_eq!(
        status, 200,
        "the next minute initiates again: {code} {body}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_s1_units_allow_200_file_upload_initiations_a_minute() {
    let clock = ManualClock::new(START_MS);
    let hub = tier_hub(&clock, Tier::S1, 2).await;
    let devs = devices(&hub, "two", 11).await;
    ten_each(&hub, &devs[..10]).await;
    // The 101st of the minute is within two units' 200.
    let (fresh, fresh_key) = &devs[10];
    let (status, code, body) = begin(&hub, fresh, fresh_key, "more").await;
    assert_eq!(status, 200, "{code} {body}");
    hub.stop().await;
}
