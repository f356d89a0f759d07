//! Bad input: exit 2 with one line naming the field and no secret.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_with_one_line_naming_the_field_and_no_secret() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "c2VjcmV0LXNlcnZpY2Uta2V5LWRvLW5vdC1sZWFrLTEyMzQ=";
    let good =
        format!("HostName=localhost:1;SharedAccessKeyName=iothubowner;SharedAccessKey={key}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--payload".into(),
                "{bad".into(),
            ],
            "error: --payload: ",
        ),
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--timeout".into(),
                "2".into(),
            ],
            "error: --timeout: ",
        ),
        (
            vec![
                "invoke".into(),
                "d".into(),
                "m".into(),
                "--connect-timeout".into(),
                "301".into(),
            ],
            "error: --connect-timeout: ",
        ),
        (
            vec!["twin".into(), "patch".into(), "d".into(), "[1]".into()],
            "error: DESIRED: ",
        ),
        (
            vec!["twin".into(), "patch".into(), "d".into()],
            "error: DESIRED: ",
        ),
        (
            vec![
                "c2d".into(),
                "send".into(),
                "d".into(),
                "b".into(),
                "--property".into(),
                "novalue".into(),
            ],
            "error: --property: ",
        ),
        (
            vec!["device".into(), "create".into(), "".into()],
            "error: DEVICE: ",
        ),
        (
            vec![
                "device".into(),
                "create".into(),
                "d".into(),
                "--primary-key".into(),
                "not base64!".into(),
            ],
            "error: --primary-key: ",
        ),
        (
            vec!["monitor".into(), "--count".into(), "0".into()],
            "error: --count: ",
        ),
    ];
    for (args, prefix) in cases {
        let mut cmd = azsim(cwd.path());
        cmd.args(&args).arg("--hub-connection-string").arg(&good);
        let out = output(cmd).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(prefix), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert_no_secret(&out, &[key]);
    }

    // A malformed connection string, from the flag and from the env var.
    let bad = format!("HostName=localhost;SharedAccessKey={key}");
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list", "--hub-connection-string", &bad]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with("error: --hub-connection-string: "),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list"])
        .env("IOTHUB_CONNECTION_STRING", &bad);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.starts_with("error: IOTHUB_CONNECTION_STRING: "),
        "{out:?}"
    );
    assert_no_secret(&out, &[key]);

    // Nothing names a hub.
    let mut cmd = azsim(cwd.path());
    cmd.args(["device", "list"]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("azsim hub"), "{out:?}");

    // A missing device id is clap's usage error: exit 2 too.
    let mut cmd = azsim(cwd.path());
    cmd.args(["invoke", "--hub-connection-string", &good]);
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_no_secret(&out, &[key]);
}
