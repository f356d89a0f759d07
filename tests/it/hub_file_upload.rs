//! File upload: a device asks the hub for a blob SAS URI (`POST /devices/{id}/files`), puts the
//! blob on the hub's own blob endpoint, and tells the hub (`POST .../files/notifications`); the
//! service hears about it on the AMQP link `/messages/serviceBound/filenotifications`.
//!
//! Over plain HTTPS (reqwest): the round trip, Azure Storage's refusals (bad, foreign, missing
//! and expired SAS; a missing blob), the 10-upload cap per device (403006), single-use
//! correlation ids and blobs kept across a restart. With the official SDKs: in
//! `hub_file_upload_sdks.rs`.

use std::process::Stdio;
use std::time::Duration;

use azsim_emulator::clock::unix_now;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::TestHub;

/// What the hub answered a SAS URI request.
pub(crate) struct Begun {
    status: u16,
    body: Value,
    error_code: Option<String>,
}

impl Begun {
    /// `https://{hostName}/{containerName}/{blobName}{sasToken}`, as the SDKs build it.
    pub(crate) fn url(&self) -> String {
        let b = &self.body;
        format!(
            "https://{}/{}/{}{}",
            b["hostName"].as_str().unwrap(),
            b["containerName"].as_str().unwrap(),
            b["blobName"].as_str().unwrap(),
            b["sasToken"].as_str().unwrap()
        )
    }

    fn correlation_id(&self) -> &str {
        self.body["correlationId"].as_str().unwrap()
    }
}

/// Device tokens outlive the expired-SAS test's hour on the hub's manual clock.
const TOKEN_TTL: u64 = 2 * 3600;

pub(crate) async fn begin(hub: &TestHub, device: &str, key: &str, name: &str) -> Begun {
    let r = hub
        .http()
        .post(hub.url(&format!("/devices/{device}/files")))
        .header(
            "Authorization",
            hub.device_token(device, key, unix_now() + TOKEN_TTL),
        )
        .json(&json!({ "blobName": name }))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let error_code = r
        .headers()
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.json().await.unwrap_or(Value::Null);
    Begun {
        status,
        body,
        error_code,
    }
}

async fn notify(hub: &TestHub, device: &str, key: &str, cid: &str, ok: bool) -> u16 {
    hub.http()
        .post(hub.url(&format!("/devices/{device}/files/notifications")))
        .header(
            "Authorization",
            hub.device_token(device, key, unix_now() + TOKEN_TTL),
        )
        .json(&json!({
            "correlationId": cid, "isSuccess": ok, "statusCode": 201, "statusDescription": "ok"
        }))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A blob endpoint answer: status, `x-ms-error-code`, body.
pub(crate) async fn blob_call(
    hub: &TestHub,
    method: Method,
    url: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let r = hub
        .http()
        .request(method, url)
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-version", "2021-08-06")
        .body(body.to_vec())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let code = r
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, code, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_device_uploads_a_blob_reads_it_back_and_the_blob_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let hub = TestHub::start_in(&dir).await;
    hub.create_device("fu1").await;
    let key = hub.device_key("fu1").await;

    let up = begin(&hub, "fu1", &key, "photos/hello.txt").await;
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(
        up.body["hostName"],
        format!("localhost:{}/azsimfiles", hub.https_port)
    );
    assert_eq!(up.body["containerName"], "fileuploads");
    assert_eq!(up.body["blobName"], "fu1/photos/hello.txt");
    let sas = up.body["sasToken"].as_str().unwrap();
    assert!(sas.starts_with("?sv=2018-03-28&sr=b&sig="), "{sas}");
    assert!(sas.ends_with("&sp=rw"), "{sas}");

    let url = up.url();
    let (s, code, _) = blob_call(&hub, Method::PUT, &url, b"hello blob").await;
    assert_eq!((s, code.as_str()), (201, ""));
    let (s, _, body) = blob_call(&hub, Method::GET, &url, b"").await;
    assert_eq!((s, body.as_slice()), (200, &b"hello blob"[..]));

    // The SAS is for this one blob, signed by the hub: a changed signature, another blob and no
    // SAS at all are refused with Azure Storage's errors.
    let i = url.find("sig=").unwrap() + 4;
    let flipped = if &url[i..=i] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &url[..i], &url[i + 1..]);
    let (s, code, body) = blob_call(&hub, Method::PUT, &tampered, b"evil").await;
    assert_eq!((s, code.as_str()), (403, "AuthenticationFailed"));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("<Code>AuthenticationFailed</Code>"), "{text}");
    assert!(text.contains("Signature did not match."), "{text}");
    let other = url.replace("hello.txt", "other.txt");
    let (s, code, _) = blob_call(&hub, Method::GET, &other, b"").await;
    assert_eq!((s, code.as_str()), (403, "AuthenticationFailed"));
    let bare = url.split('?').next().unwrap().to_owned();
    let (s, code, _) = blob_call(&hub, Method::GET, &bare, b"").await;
    assert_eq!((s, code.as_str()), (401, "NoAuthenticationInformation"));
    // A valid SAS for a blob never written: 404 BlobNotFound.
    let missing = begin(&hub, "fu1", &key, "missing.bin").await;
    let (s, code, _) = blob_call(&hub, Method::GET, &missing.url(), b"").await;
    assert_eq!((s, code.as_str()), (404, "BlobNotFound"));
    // The tampered PUT did not change the blob.
    let (_, _, body) = blob_call(&hub, Method::GET, &url, b"").await;
    assert_eq!(body, b"hello blob");

    // The correlation id works once, and only for its device.
    hub.create_device("fu2").await;
    let key2 = hub.device_key("fu2").await;
    assert_eq!(
        notify(&hub, "fu2", &key2, up.correlation_id(), true).await,
        400
    );
    assert_eq!(
        notify(&hub, "fu1", &key, up.correlation_id(), true).await,
        204
    );
    assert_eq!(
        notify(&hub, "fu1", &key, up.correlation_id(), true).await,
        400
    );
    // A device token cannot ask for another device's SAS URI.
    let r = hub
        .http()
        .post(hub.url("/devices/fu2/files"))
        .header(
            "Authorization",
            hub.device_token("fu1", &key, unix_now() + 600),
        )
        .json(&json!({"blobName": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (s, list) = hub.rest(Method::GET, "/emulator/files", None).await;
    assert_eq!(s, 200, "{list}");
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["blobName"] == "fu1/photos/hello.txt")
        .unwrap_or_else(|| panic!("listed: {list}"));
    assert_eq!(row["sizeInBytes"], 10);
    assert_eq!(
        row["blobUri"],
        format!(
            "https://localhost:{}/azsimfiles/fileuploads/fu1/photos/hello.txt",
            hub.https_port
        )
    );

    // Restart on the same state dir and port: the blob is there, and the SAS still valid (the
    // storage key is derived from the hub's keys, which are kept).
    let port = hub.https_port;
    hub.stop().await;
    let mut cfg = azsim_emulator::HubConfig::new(&dir);
    cfg.in_memory = false;
    let mut tries = 0;
    let handle = loop {
        match azsim_emulator::start(cfg.clone(), "127.0.0.1".parse().unwrap(), 0, port).await {
            Ok(h) => break h,
            // The old listener's port may take a moment to be free again.
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("restart on {port}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the hub does not restart on port {port}: {e}"),
        }
    };
    let hub = TestHub::attach(&handle.info);
    let (s, _, body) = blob_call(&hub, Method::GET, &url, b"").await;
    assert_eq!((s, body.as_slice()), (200, &b"hello blob"[..]));
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn the_eleventh_concurrent_upload_of_a_device_is_refused_with_403006() {
    let hub = TestHub::start().await;
    hub.create_device("busy").await;
    hub.create_device("calm").await;
    let key = hub.device_key("busy").await;
    let calm_key = hub.device_key("calm").await;
    let mut begun = Vec::new();
    for i in 0..10 {
        let b = begin(&hub, "busy", &key, &format!("f{i}")).await;
        assert_eq!(b.status, 200, "upload {i}: {}", b.body);
        begun.push(b);
    }
    let eleventh = begin(&hub, "busy", &key, "f10").await;
    assert_eq!(eleventh.status, 403, "{}", eleventh.body);
    assert_eq!(
        eleventh.error_code.as_deref(),
        Some("DeviceMaximumActiveFileUploadLimitExceeded")
    );
    let inner: Value = serde_json::from_str(eleventh.body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 403006);
    // Another device has its own ten.
    assert_eq!(begin(&hub, "calm", &calm_key, "f").await.status, 200);
    // A notified upload frees its place.
    assert_eq!(
        notify(&hub, "busy", &key, begun[0].correlation_id(), false).await,
        204
    );
    assert_eq!(begin(&hub, "busy", &key, "f10").await.status, 200);
    assert_eq!(begin(&hub, "busy", &key, "f11").await.status, 403);
    hub.stop().await;
}

#[tokio::test]
async fn an_expired_sas_is_refused_and_its_upload_no_longer_counts() {
    let (hub, clock) = TestHub::start_manual().await;
    hub.create_device("slow").await;
    let key = hub.device_key("slow").await;
    let up = begin(&hub, "slow", &key, "late.bin").await;
    assert_eq!(up.status, 200, "{}", up.body);
    for i in 0..9 {
        assert_eq!(
            begin(&hub, "slow", &key, &format!("x{i}")).await.status,
            200
        );
    }
    assert_eq!(begin(&hub, "slow", &key, "over").await.status, 403);
    // The SAS TTL is 1 h by default.
    clock.advance(Duration::from_secs(3601));
    let (s, code, body) = blob_call(&hub, Method::PUT, &up.url(), b"late").await;
    assert_eq!((s, code.as_str()), (403, "AuthenticationFailed"));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("Signed expiry time"), "{text}");
    // The expired uploads hold no place; their correlation ids are gone.
    assert_eq!(
        notify(&hub, "slow", &key, up.correlation_id(), true).await,
        400
    );
    assert_eq!(begin(&hub, "slow", &key, "again").await.status, 200);
    hub.stop().await;
}

#[tokio::test]
async fn a_blob_in_blocks_commits_in_order_and_an_oversized_body_is_refused() {
    let hub = TestHub::start_configured(|cfg| cfg.file_upload.max_blob_bytes = 1000).await;
    hub.create_device("blk").await;
    let key = hub.device_key("blk").await;
    let up = begin(&hub, "blk", &key, "b.bin").await;
    let url = up.url();
    let (base, query) = url.split_once('?').unwrap();
    let block = |id: &str| format!("{base}?comp=block&blockid={id}&{query}");
    // Block ids are base64: "AAA=" and "BBB=".
    let (s, _, _) = blob_call(&hub, Method::PUT, &block("QUFB"), b"second").await;
    assert_eq!(s, 201);
    let (s, _, _) = blob_call(&hub, Method::PUT, &block("QkJC"), b"first-").await;
    assert_eq!(s, 201);
    let list = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QkJC</Latest><Latest>QUFB</Latest></BlockList>";
    let commit = format!("{base}?comp=blocklist&{query}");
    let (s, code, _) = blob_call(&hub, Method::PUT, &commit, list.as_bytes()).await;
    assert_eq!((s, code.as_str()), (201, ""));
    let (_, _, body) = blob_call(&hub, Method::GET, &url, b"").await;
    assert_eq!(body, b"first-second");
    // The blocks were used up by the commit.
    let (s, code, _) = blob_call(&hub, Method::PUT, &commit, list.as_bytes()).await;
    assert_eq!((s, code.as_str()), (400, "InvalidBlockList"));
    // A range.
    let r = hub
        .http()
        .get(&url)
        .header("x-ms-range", "bytes=6-8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        "bytes 6-8/12"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"sec");
    // Over the cap (1000 bytes here): 413, before or after the blocks add up.
    let (s, code, _) = blob_call(&hub, Method::PUT, &url, &[7u8; 1001]).await;
    assert_eq!((s, code.as_str()), (413, "RequestBodyTooLarge"));
    let (s, _, _) = blob_call(&hub, Method::PUT, &block("QUFB"), &[1u8; 600]).await;
    assert_eq!(s, 201);
    let (s, code, _) = blob_call(&hub, Method::PUT, &block("QkJC"), &[2u8; 600]).await;
    assert_eq!((s, code.as_str()), (413, "RequestBodyTooLarge"));
    hub.stop().await;
}

/// The JSON body and lock (message id) of a file notification; checks its content type.
fn notification(
    d: &fe2o3_amqp::link::delivery::Delivery<
        fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>,
    >,
) -> (String, Value) {
    use fe2o3_amqp::types::messaging::{Body, MessageId};
    let m = d.message();
    let p = m.properties.as_ref().expect("properties");
    assert_eq!(
        p.content_type.as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let lock = match &p.message_id {
        Some(MessageId::String(s)) => s.clone(),
        other => panic!("message id {other:?}"),
    };
    let bytes: Vec<u8> = match &m.body {
        Body::Data(b) => b.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("body {other:?}"),
    };
    (lock, serde_json::from_slice(&bytes).expect("json body"))
}

/// The next delivery on a file notification link.
async fn next_notification(
    rx: &mut fe2o3_amqp::link::Receiver,
) -> fe2o3_amqp::link::delivery::Delivery<
    fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>,
> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a notification in time")
        .expect("a notification")
}

/// Upload `data` as `name` for `device` and notify it as a success.
async fn upload(hub: &TestHub, device: &str, key: &str, name: &str, data: &[u8]) {
    let up = begin(hub, device, key, name).await;
    assert_eq!(up.status, 200, "{}", up.body);
    let (s, _, _) = blob_call(hub, Method::PUT, &up.url(), data).await;
    assert_eq!(s, 201);
    assert_eq!(
        notify(hub, device, key, up.correlation_id(), true).await,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_notifications_over_amqp_come_again_when_released_and_go_when_accepted() {
    use fe2o3_amqp::Session;
    use fe2o3_amqp::link::Receiver;
    use fe2o3_amqp::sasl_profile::SaslProfile;
    const PATH: &str = "/messages/serviceBound/filenotifications";

    let hub = TestHub::start().await;
    hub.create_device("amqp-files").await;
    let key = hub.device_key("amqp-files").await;
    upload(&hub, "amqp-files", &key, "a.txt", b"abc").await;
    upload(&hub, "amqp-files", &key, "b.txt", b"bcdef").await;

    // Without a token the link is refused.
    let mut bare = crate::hub_amqp::open(&hub, SaslProfile::Anonymous)
        .await
        .expect("open");
    let mut bare_session = Session::begin(&mut bare).await.expect("session");
    let c = crate::hub_amqp::refusal(&mut bare_session, "no-token", PATH).await;
    assert!(
        c.as_deref()
            .is_some_and(|c| c.contains("UnauthorizedAccess")),
        "{c:?}"
    );

    let (mut conn, mut session, _cbs) = crate::hub_amqp::authorized(&hub).await;
    let mut rx = Receiver::attach(&mut session, "files", PATH)
        .await
        .expect("file notification receiver attached");
    let first = next_notification(&mut rx).await;
    let (lock1, body) = notification(&first);
    assert_eq!(body["deviceId"], "amqp-files", "{body}");
    assert_eq!(body["blobName"], "amqp-files/a.txt", "{body}");
    assert_eq!(body["blobSizeInBytes"], 3, "{body}");
    assert_eq!(
        body["blobUri"],
        format!(
            "https://localhost:{}/azsimfiles/fileuploads/amqp-files/a.txt",
            hub.https_port
        )
    );
    // Released: the same notification again, under a new lock.
    rx.release(&first).await.expect("release");
    let again = next_notification(&mut rx).await;
    let (lock2, body2) = notification(&again);
    assert_ne!(lock1, lock2);
    assert_eq!(body2, body);
    // Accepted: gone; the next one follows.
    rx.accept(&again).await.expect("accept");
    let second = next_notification(&mut rx).await;
    assert_eq!(notification(&second).1["blobName"], "amqp-files/b.txt");
    rx.accept(&second).await.expect("accept");
    // A link waiting on an empty queue gets a new notification as it is queued.
    upload(&hub, "amqp-files", &key, "c.txt", b"c").await;
    let third = next_notification(&mut rx).await;
    assert_eq!(notification(&third).1["blobName"], "amqp-files/c.txt");
    rx.accept(&third).await.expect("accept");
    conn.close().await.expect("close");
    let _ = bare.close().await;
    hub.stop().await;
}

#[tokio::test]
async fn with_notifications_off_an_upload_queues_none() {
    let hub = TestHub::start_configured(|cfg| cfg.file_upload.notifications = false).await;
    hub.create_device("quiet").await;
    let key = hub.device_key("quiet").await;
    let mut events = hub
        .http()
        .get(format!(
            "https://localhost:{}/emulator/events",
            hub.https_port
        ))
        .header("Authorization", hub.service_token())
        .send()
        .await
        .unwrap();
    upload(&hub, "quiet", &key, "q.txt", b"q").await;
    let mut buf = String::new();
    let event = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), events.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let found = buf.lines().find_map(|l| {
            let v: Value = serde_json::from_str(l.strip_prefix("data:")?.trim()).ok()?;
            (v["type"] == "fileUpload").then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
    };
    assert_eq!(event["isSuccess"], true, "{event}");
    assert!(event.get("notification").is_none(), "{event}");
    hub.stop().await;
}

/// Each file upload flag out of Azure's range (the notification TTL 1 minute to 48 hours, the
/// lock 5 to 300 s, the delivery count 1 to 100) is one line naming it and exit 2, in the
/// foreground and for `azsim hub start`, before anything starts.
#[tokio::test]
async fn bad_file_upload_flags_exit_2_naming_the_flag() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("hub");
    for (flag, value) in [
        ("--file-upload-container", "Bad_Name"),
        ("--file-upload-sas-ttl", "59"),
        ("--file-upload-notifications", "maybe"),
        ("--file-upload-notification-ttl", "59"),
        ("--file-upload-notification-ttl", "172801"),
        ("--file-upload-notification-lock", "4"),
        ("--file-upload-notification-lock", "301"),
        ("--file-upload-notification-max-delivery", "0"),
        ("--file-upload-notification-max-delivery", "101"),
    ] {
        for start in [false, true] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_azsim"));
            cmd.arg("hub");
            if start {
                cmd.arg("start");
            }
            let out = cmd
                .args(["--mqtt-port", "0", "--https-port", "0", "--state"])
                .arg(&dir)
                .args([flag, value])
                .output()
                .await
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
            assert!(err.starts_with(&format!("error: {flag}:")), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    assert!(!dir.exists(), "nothing started");
}

#[tokio::test]
async fn the_ready_summary_says_where_blobs_go() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_azsim"))
        .args([
            "hub",
            "--in-memory",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
        ])
        .args(["--dashboard-port", "off", "--state"])
        .arg(state.path())
        .args(["--file-upload-container", "my-files"])
        .args([
            "--file-upload-sas-ttl",
            "600",
            "--file-upload-notifications",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.trim_start().starts_with("file upload:") {
                return l;
            }
        }
        panic!("the hub ended without a file upload line");
    })
    .await
    .expect("the ready summary in time");
    assert!(line.contains("/azsimfiles/my-files/"), "{line}");
    assert!(line.contains("SAS TTL 600 s, notifications off"), "{line}");
    child.kill().await.unwrap();
}
