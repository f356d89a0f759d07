//! Telemetry: acknowledged and reaching the hub with its properties, produced at the set
//! interval, a full offline queue dropping the oldest, and a payload file template.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_acknowledged_and_reaches_the_hub_with_its_properties() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tel").await;
    let key = hub.device_key("run-tel").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--count",
            "3",
            "--interval",
            "1s",
            "--property",
            "site=lab 7",
            "--property",
            "kind=sim",
            "--content-type",
            "application/json",
            "--payload",
            r#"{"n":{{ seq }},"dev":"{{ device_id }}","t":{{ temperature }}}"#,
        ],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    let acked = events(&out, "telemetry_acked");
    assert_eq!(acked.len(), 3);
    assert_eq!(events(&out, "stopped")[0]["acked"], 3);
    let ids: Vec<&str> = acked
        .iter()
        .map(|a| a["message_id"].as_str().unwrap())
        .collect();

    let tel = recent_telemetry(&hub, "run-tel").await;
    assert_eq!(tel.len(), 3, "{tel:#?}");
    for (i, t) in tel.iter().enumerate() {
        assert!(ids.contains(&t["systemProperties"]["message-id"].as_str().unwrap()));
        assert_eq!(t["systemProperties"]["content-type"], "application/json");
        assert_eq!(t["systemProperties"]["content-encoding"], "utf-8");
        assert_eq!(t["properties"]["site"], "lab 7");
        assert_eq!(t["properties"]["kind"], "sim");
        let body: Value = serde_json::from_str(t["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["n"], i as u64 + 1);
        assert_eq!(body["dev"], "run-tel");
        assert!(body["t"].is_number());
    }
    let all = serde_json::to_string(&out).unwrap() + &stderr;
    assert!(!all.contains(&key), "the key leaked");
    hub.stop().await;
}

/// `--interval 200ms`: the messages' own production times (the template's `now`, the
/// system clock when the loop made each one) are 200 ms apart. A loaded machine can only
/// delay a message, and each is due at least 200 ms after the one before was due, so ten
/// messages span at least nine intervals (less the first one's own delay); the typical gap
/// (the median) is the interval itself, where one second would be five times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_every_200_ms_is_produced_at_that_rate() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-fast").await;
    let dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &[
            "--interval",
            "200ms",
            "--count",
            "10",
            "--payload",
            r#"{"n":{{ seq }},"at":"{{ now }}"}"#,
        ],
    ));
    let (status, out, stderr) = dev.finish().await;
    assert!(status.success(), "{stderr}\n{out:#?}");
    assert_eq!(events(&out, "telemetry_acked").len(), 10);
    let mut at: Vec<(u64, time::OffsetDateTime)> = events(&out, "telemetry_sent")
        .iter()
        .filter(|t| t["redelivery"] == false)
        .map(|t| {
            let when = t["body"]["at"].as_str().unwrap();
            let when =
                time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{when}: {e}"));
            (t["body"]["n"].as_u64().unwrap(), when)
        })
        .collect();
    at.sort_by_key(|(n, _)| *n);
    assert!(at.len() >= 10, "{at:?}");
    let at = &at[..10];
    assert_eq!(at[0].0, 1);
    assert_eq!(at[9].0, 10);
    let span = at[9].1 - at[0].1;
    assert!(
        span >= time::Duration::milliseconds(1_590),
        "ten messages in {span}: faster than every 200 ms"
    );
    let mut gaps: Vec<time::Duration> = at.windows(2).map(|w| w[1].1 - w[0].1).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median < time::Duration::milliseconds(600),
        "the typical gap is {median}, not 200 ms: {gaps:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_queue_drops_the_oldest_messages_and_says_so() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-q").await;
    let mut dev = Running::spawn(azsim_run(
        &hub,
        &cs,
        &["--interval", "1s", "--max-queue", "2"],
    ));
    dev.event("telemetry_acked").await;
    hub.stop().await;
    dev.event("disconnected").await;
    let d = dev.event("dropped").await;
    assert_eq!(d["count"], 1);
    assert_eq!(d["max_queue"], 2);
    let d2 = dev.event("dropped").await;
    assert_eq!(d2["total"], 2);
    let (status, out, stderr) = dev.interrupt().await;
    assert!(status.success(), "ctrl-c while offline exits 0: {stderr}");
    let stopped = events(&out, "stopped")[0].clone();
    assert!(stopped["dropped"].as_u64().unwrap() >= 2, "{stopped}");
    assert_eq!(stopped["queued"], 2, "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_file_template_renders_every_message_and_duration_ends_the_run() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("run-tpl").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("payload.j2");
    std::fs::write(
        &file,
        "{\"n\": {{ seq }}, \"id\": \"{{ uuid }}\", \"at\": \"{{ now }}\", \"ts\": {{ ts }},\n \
         \"dice\": {{ randint(1, 6) }}, \"x\": {{ uniform(0, 1) }}, \"dev\": \"{{ device_id }}\"}\n",
    )
    .unwrap();
    let payload = format!("@{}", file.display());
    let args = [
        "--interval",
        "1s",
        "--duration",
        "3s",
        "--seed",
        "42",
        "--payload",
        &payload,
        "--property",
        "batch=a=b",
    ];
    let started = std::time::Instant::now();
    let (status, out, stderr) = Running::spawn(azsim_run(&hub, &cs, &args)).finish().await;
    let took = started.elapsed();
    assert!(status.success(), "{stderr}");
    let stopped = events(&out, "stopped")[0].clone();
    assert_eq!(stopped["reason"], "duration", "{stopped}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "--duration 3s took {took:?}"
    );
    let tel = recent_telemetry(&hub, "run-tpl").await;
    assert!(tel.len() >= 2, "{tel:#?}");
    let mut dice = Vec::new();
    for t in &tel {
        let body: Value = serde_json::from_str(t["body"].as_str().unwrap()).unwrap();
        assert!(body["n"].as_u64().unwrap() >= 1);
        assert!(
            uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok(),
            "{body}"
        );
        assert!(body["at"].as_str().unwrap().ends_with('Z'), "{body}");
        assert!(body["ts"].as_u64().unwrap() > 1_700_000_000);
        let x = body["x"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&x));
        assert_eq!(body["dev"], "run-tpl");
        dice.push(body["dice"].as_u64().unwrap());
        assert_eq!(t["properties"]["batch"], "a=b", "the value keeps its '='");
    }
    assert!(dice.iter().all(|d| (1..=6).contains(d)), "{dice:?}");

    // The same --seed draws the same numbers.
    let cs2 = hub.create_device("run-tpl2").await;
    let args2 = [
        "--count",
        "2",
        "--interval",
        "1s",
        "--seed",
        "42",
        "--payload",
        &payload,
    ];
    let (status, _, stderr) = Running::spawn(azsim_run(&hub, &cs2, &args2)).finish().await;
    assert!(status.success(), "{stderr}");
    let dice2: Vec<u64> = recent_telemetry(&hub, "run-tpl2")
        .await
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t["body"].as_str().unwrap()).unwrap()["dice"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(dice2[..], dice[..2], "same seed, same draws");
    hub.stop().await;
}
