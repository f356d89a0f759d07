//! `azsim twin`: a patch updating desired properties and tags, read back with `twin show`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_patch_updates_desired_and_tags_and_twin_show_reads_them_back() {
    let hub = TestHub::start().await;
    hub.create_device("twin-dev").await;

    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "twin-dev",
            r#"{"interval":5,"mode":"eco"}"#,
            "--tags",
            r#"{"site":"lab"}"#,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("updated twin of twin-dev: desired $version"),
        "{out:?}"
    );

    let out = run(&hub, &["twin", "show", "twin-dev", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert_eq!(twin["properties"]["desired"]["interval"], 5);
    assert_eq!(twin["properties"]["desired"]["mode"], "eco");
    assert_eq!(twin["tags"]["site"], "lab");
    let etag = twin["etag"].as_str().unwrap().to_owned();

    // null deletes, and the right etag is accepted.
    let out = run(
        &hub,
        &[
            "twin",
            "patch",
            "twin-dev",
            r#"{"mode":null}"#,
            "--etag",
            &etag,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let twin = out.json();
    assert!(
        twin["properties"]["desired"].get("mode").is_none(),
        "{twin}"
    );

    // The old etag no longer matches.
    let out = run(
        &hub,
        &["twin", "patch", "twin-dev", r#"{"x":1}"#, "--etag", &etag],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: 412001"), "{out:?}");

    let out = run(&hub, &["twin", "show", "twin-dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("\"interval\": 5"),
        "human output is pretty json: {out:?}"
    );
    hub.stop().await;
}
