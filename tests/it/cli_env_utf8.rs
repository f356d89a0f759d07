//! An env var the CLI reads (a connection string, the job index) holding bytes that are not
//! UTF-8 is bad input naming the variable - one line, exit 2, the value never echoed - not
//! "unset" (which sent users looking for a variable they had set).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use crate::service_cli::azsim;

#[tokio::test]
async fn a_non_utf8_env_var_is_named_not_taken_for_unset() {
    let cwd = tempfile::tempdir().unwrap();
    let state = cwd.path().join("no-hub");
    let state = state.to_str().unwrap();
    let bad = OsStr::from_bytes(b"HostName=secret-host\xff\xfe");
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "IOTHUB_DEVICE_CONNECTION_STRING",
            vec!["token"],
            "IOTHUB_DEVICE_CONNECTION_STRING: not valid UTF-8",
        ),
        (
            "IOTHUB_DEVICE_CONNECTION_STRING",
            vec!["run", "--count", "1", "--state", state],
            "IOTHUB_DEVICE_CONNECTION_STRING: not valid UTF-8",
        ),
        (
            "IOTHUB_CONNECTION_STRING",
            vec!["device", "list", "--state", state],
            "IOTHUB_CONNECTION_STRING: not valid UTF-8",
        ),
        (
            "PROVISIONING_CONNECTION_STRING",
            vec!["dps", "enrollment", "list", "--state", state],
            "PROVISIONING_CONNECTION_STRING: not valid UTF-8",
        ),
        (
            "JOB_COMPLETION_INDEX",
            vec!["fleet", "--shards", "2", "--devices", "4", "--state", state],
            "JOB_COMPLETION_INDEX: not valid UTF-8",
        ),
        // Without --shards the job index is not read: the error is the fleet's own.
        (
            "JOB_COMPLETION_INDEX",
            vec!["fleet", "--devices", "0", "--state", state],
            "--devices: must be at least 1",
        ),
    ];
    for (var, args, want) in cases {
        let mut cmd = azsim(cwd.path());
        cmd.args(&args)
            .env(var, bad)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{var} {args:?}: {stderr}");
        assert_eq!(stderr, format!("error: {want}\n"), "{var} {args:?}");
        assert!(out.stdout.is_empty(), "{var} {args:?}");
    }
    // Nothing was started in the state dir.
    assert!(!std::path::Path::new(state).exists());
}
