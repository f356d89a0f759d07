//! `POST /devices/query` against a running hub: twins as REST shows them, filters over tags and
//! properties, modules, projections and counts, paging with `x-ms-max-item-count` and
//! `x-ms-continuation`, and Azure's 400 with the place of the error for a bad query.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestHub;

/// One page: status, body, `x-ms-item-type`, `x-ms-continuation`.
pub async fn query_page(
    hub: &TestHub,
    text: &str,
    max: Option<&str>,
    continuation: Option<&str>,
) -> (u16, Value, Option<String>, Option<String>) {
    let mut req = hub
        .http()
        .post(hub.url("/devices/query"))
        .header("Authorization", hub.service_token())
        .json(&json!({ "query": text }));
    if let Some(m) = max {
        req = req.header("x-ms-max-item-count", m);
    }
    if let Some(c) = continuation {
        req = req.header("x-ms-continuation", c);
    }
    let r = req.send().await.expect("query request");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (item_type, cont) = (header("x-ms-item-type"), header("x-ms-continuation"));
    let status = r.status().as_u16();
    let body = serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, body, item_type, cont)
}

/// Every row of a query, following continuations; also the item type.
async fn query_all(hub: &TestHub, text: &str, max: Option<&str>) -> (Vec<Value>, String, usize) {
    let (mut rows, mut pages, mut cont) = (Vec::new(), 0, None::<String>);
    loop {
        let (s, body, t, next) = query_page(hub, text, max, cont.as_deref()).await;
        assert_eq!(s, 200, "{text}: {body}");
        rows.extend(body.as_array().expect("array").iter().cloned());
        let kind = t.unwrap_or_default();
        pages += 1;
        match next {
            Some(c) => cont = Some(c),
            None => return (rows, kind, pages),
        }
    }
}

fn ids(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["deviceId"].as_str().unwrap_or("?"))
        .collect()
}

/// Seven devices with tags and desired properties, and two modules of `q0`.
async fn fleet(hub: &TestHub) {
    for n in 0..7 {
        let id = format!("q{n}");
        hub.create_device(&id).await;
        let site = if n % 2 == 0 { "oslo" } else { "bergen" };
        let (s, v) = hub
            .rest(
                Method::PATCH,
                &format!("/twins/{id}"),
                Some(json!({"tags": {"site": site, "n": n},
                            "properties": {"desired": {"interval": n * 10}}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    for m in ["mA", "mB"] {
        let (s, v) = hub
            .rest(
                Method::PUT,
                &format!("/devices/q0/modules/{m}"),
                Some(json!({"deviceId": "q0", "moduleId": m})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

#[tokio::test]
async fn queries_filter_project_group_and_page_like_azure() {
    let hub = TestHub::start().await;
    fleet(&hub).await;

    let (rows, kind, _) = query_all(&hub, "SELECT * FROM devices", None).await;
    assert_eq!(kind, "DeviceTwin");
    assert_eq!(ids(&rows), ["q0", "q1", "q2", "q3", "q4", "q5", "q6"]);
    // A row is the twin GET /twins/{id} shows.
    let (_, twin) = hub.rest(Method::GET, "/twins/q3", None).await;
    assert_eq!(rows[3], twin);

    let (rows, _, _) = query_all(
        &hub,
        "select * from devices where tags.site = 'oslo' and properties.desired.interval >= 20",
        None,
    )
    .await;
    assert_eq!(ids(&rows), ["q2", "q4", "q6"]);
    let (rows, _, _) = query_all(
        &hub,
        "SELECT * FROM devices WHERE deviceId IN ['q1', 'q5', 'nope'] OR NOT (tags.n < 6)",
        None,
    )
    .await;
    assert_eq!(ids(&rows), ["q1", "q5", "q6"]);
    let (rows, _, _) = query_all(
        &hub,
        "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'q') AND status = 'enabled' \
         AND connectionState = 'Disconnected' AND properties.desired.$version = 2",
        None,
    )
    .await;
    assert_eq!(rows.len(), 7);

    let (rows, kind, _) = query_all(&hub, "SELECT * FROM devices.modules", None).await;
    assert_eq!(kind, "ModuleTwin");
    let modules: Vec<_> = rows
        .iter()
        .map(|r| r["moduleId"].as_str().unwrap())
        .collect();
    assert_eq!(modules, ["mA", "mB"]);
    let (rows, _, _) = query_all(
        &hub,
        "SELECT * FROM devices.modules WHERE moduleId = 'mB'",
        None,
    )
    .await;
    assert_eq!(rows.len(), 1);

    let (rows, kind, _) = query_all(
        &hub,
        "SELECT deviceId, properties.desired.interval FROM devices WHERE tags.n > 4",
        None,
    )
    .await;
    assert_eq!(kind, "JSON");
    assert_eq!(
        rows,
        [
            json!({"deviceId":"q5","interval":50}),
            json!({"deviceId":"q6","interval":60})
        ]
    );
    let (rows, _, _) = query_all(
        &hub,
        "SELECT tags.site AS site, COUNT() AS devices FROM devices GROUP BY tags.site",
        None,
    )
    .await;
    assert_eq!(
        rows,
        [
            json!({"site":"oslo","devices":4}),
            json!({"site":"bergen","devices":3})
        ]
    );
    let (rows, _, _) = query_all(&hub, "SELECT COUNT() AS n FROM devices", None).await;
    assert_eq!(rows, [json!({"n":7})]);

    // Paging: 7 rows, 3 a page: three pages, same rows in the same order.
    let (rows, _, pages) = query_all(&hub, "SELECT * FROM devices", Some("3")).await;
    assert_eq!(pages, 3);
    assert_eq!(ids(&rows), ["q0", "q1", "q2", "q3", "q4", "q5", "q6"]);
    let (rows, _, pages) = query_all(&hub, "SELECT TOP 5 deviceId FROM devices", Some("2")).await;
    assert_eq!((ids(&rows), pages), (vec!["q0", "q1", "q2", "q3", "q4"], 3));
    let (rows, _, pages) = query_all(&hub, "SELECT * FROM devices.modules", Some("1")).await;
    assert_eq!((rows.len(), pages), (2, 2));
    let (rows, _, pages) = query_all(
        &hub,
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site",
        Some("1"),
    )
    .await;
    assert_eq!((rows.len(), pages), (2, 2));
    // A page goes on after the last row of the one before: a device deleted meanwhile does not
    // make the next page skip another.
    let (_, first, _, cont) = query_page(&hub, "SELECT * FROM devices", Some("3"), None).await;
    assert_eq!(ids(first.as_array().unwrap()), ["q0", "q1", "q2"]);
    let r = hub
        .http()
        .delete(hub.url("/devices/q1"))
        .header("Authorization", hub.service_token())
        .header("If-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, next, _, _) =
        query_page(&hub, "SELECT * FROM devices", Some("3"), cont.as_deref()).await;
    assert_eq!(ids(next.as_array().unwrap()), ["q3", "q4", "q5"]);
    // A token is for its kind of query.
    let (s, _, _, _) = query_page(&hub, "SELECT COUNT() FROM devices", None, cont.as_deref()).await;
    assert_eq!(s, 400);
    let (s, body, _, cont) = query_page(&hub, "SELECT * FROM devices", Some("6"), None).await;
    assert_eq!(
        (s, body.as_array().map(Vec::len), cont),
        (200, Some(6), None)
    );
    hub.stop().await;
}

fn inner_error(body: &Value) -> Value {
    serde_json::from_str(body["Message"].as_str().expect("Message")).expect("inner JSON")
}

#[tokio::test]
async fn a_bad_query_is_a_400_naming_where_it_went_wrong() {
    let hub = TestHub::start().await;
    let (s, body, _, _) =
        query_page(&hub, "SELECT * FROM devices WHERE tags.x = ", None, None).await;
    assert_eq!(s, 400);
    let e = inner_error(&body);
    assert_eq!(e["errorCode"], 400004);
    assert_eq!(
        e["message"],
        "SQL query parse failed due to following errors: Line 1:38 expected a property or a value at input ''"
    );
    let (s, body, _, _) = query_page(&hub, "SELECT * FROM devices WERE x = 1", None, None).await;
    assert_eq!(s, 400);
    assert!(
        inner_error(&body)["message"]
            .as_str()
            .unwrap()
            .ends_with("Line 1:23 unexpected input at input 'WERE'"),
        "{body}"
    );
    let (s, _, _, _) = query_page(&hub, "SELECT * FROM devices", Some("0"), None).await;
    assert_eq!(s, 400);
    let (s, _, _, _) = query_page(&hub, "SELECT * FROM devices", None, Some("not-a-token")).await;
    assert_eq!(s, 400);
    let (s, _) = hub
        .rest(Method::POST, "/devices/query", Some(json!({})))
        .await;
    assert_eq!(s, 400);
    // The hub keeps serving after bad queries.
    let (s, body, _, _) = query_page(&hub, "SELECT * FROM devices", None, None).await;
    assert_eq!((s, body), (200, json!([])));
    hub.stop().await;
}

#[tokio::test]
async fn azsim_query_prints_every_row_across_pages() {
    use crate::service_cli::run;
    let hub = TestHub::start().await;
    fleet(&hub).await;
    let q = "SELECT deviceId FROM devices WHERE tags.site = 'oslo'";
    let out = run(&hub, &["query", q, "--page-size", "1", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        ["q0", "q2", "q4", "q6"].map(|d| json!({ "deviceId": d }))
    );
    let out = run(
        &hub,
        &["query", "SELECT * FROM devices", "--max-items", "2"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json().as_array().map(Vec::len), Some(2));

    let out = run(&hub, &["query", "SELECT * FROM devices WHERE"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("Line 1:28"), "{out:?}");
    let out = run(
        &hub,
        &["query", "SELECT * FROM devices", "--page-size", "0"],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--page-size"), "{out:?}");
    hub.stop().await;
}
