//! The CLI as a Unix tool (`azsim::out`): output into a pipe whose reader has gone
//! (`| head -1`, `| grep -q`) ends the process quietly with status 141 (128 + SIGPIPE), for
//! one-shot commands (`token`, `device list`, `query`, `hub env`) and streaming ones (`run`,
//! `monitor`, `fleet`); no panic text, no error line. A full disk is one error line and exit 1; a closed stderr never turns an
//! error into a panic.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::service_cli::{RawDevice, azsim, wait_monitor_ready};
use crate::support::TestHub;

/// What `azsim::out::BROKEN_PIPE_EXIT` documents.
const CLOSED_PIPE: i32 = 141;

/// A device connection string with a made-up key (nothing connects with it).
const DEVICE_CS: &str = "HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A pipe whose read end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

/// Runs `cmd` with stdout into a closed pipe; returns its exit code and stderr.
async fn into_closed_pipe(mut cmd: Command) -> (Option<i32>, String) {
    cmd.stdout(closed_pipe()).stderr(Stdio::piped());
    // Not `output()`: tokio's replaces the stdout given with a pipe of its own.
    let child = cmd.spawn().expect("azsim runs");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("azsim ends within 60 s")
        .expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads one stdout line, closes stdout (the reader leaves, as `head -1` does), then waits for
/// the process to end; `poke` makes it print again (a streaming command prints only on events).
async fn stops_when_its_reader_leaves(mut child: Child, poke: impl AsyncFnOnce()) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a first line within 30 s")
        .expect("read stdout");
    assert!(first.is_some(), "no output before exit");
    drop(lines);
    poke().await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the stream ends once its reader has gone")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(CLOSED_PIPE), "stderr: {stderr}");
    stderr
}

fn assert_quiet(stderr: &str) {
    let loud =
        |l: &str| l.contains("panicked") || l.contains("Broken pipe") || l.starts_with("error");
    assert!(!stderr.lines().any(loud), "stderr: {stderr}");
}

#[tokio::test]
async fn one_shot_commands_into_a_closed_pipe_exit_141_quietly() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [
        &["token", "--mqtt"][..],
        &["token", "--json"][..],
        &["token"][..],
    ] {
        let mut cmd = azsim(cwd.path());
        cmd.args(args).args(["--connection-string", DEVICE_CS]);
        let (code, stderr) = into_closed_pipe(cmd).await;
        assert_eq!(code, Some(CLOSED_PIPE), "{args:?}: {stderr}");
        assert_quiet(&stderr);
    }

    let hub = TestHub::start().await;
    for id in ["pipe-a", "pipe-b"] {
        hub.create_device(id).await;
    }
    let service = [&["device", "list"][..], &["device", "list", "--json"][..]];
    let query = ["query", "SELECT * FROM devices"];
    for args in service.into_iter().chain([&query[..]]) {
        let mut cmd = azsim(cwd.path());
        cmd.args(args)
            .arg("--hub-connection-string")
            .arg(&hub.service_connection_string)
            .arg("--ca")
            .arg(&hub.ca_file);
        let (code, stderr) = into_closed_pipe(cmd).await;
        assert_eq!(code, Some(CLOSED_PIPE), "{args:?}: {stderr}");
        assert_quiet(&stderr);
    }
    let mut cmd = azsim(cwd.path());
    cmd.args(["hub", "env", "--state"]).arg(&hub.dir);
    let (code, stderr) = into_closed_pipe(cmd).await;
    assert_eq!(code, Some(CLOSED_PIPE), "hub env: {stderr}");
    assert_quiet(&stderr);
    hub.stop().await;
}

#[tokio::test]
async fn a_full_disk_is_one_error_line_and_exit_1() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        crate::support::skip("no /dev/full on this system");
        return;
    };
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["token", "--connection-string", DEVICE_CS])
        .stdout(full)
        .stderr(Stdio::piped());
    let out = cmd
        .spawn()
        .expect("azsim runs")
        .wait_with_output()
        .await
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to stdout: "),
        "{stderr}"
    );
    assert!(!stderr.contains("AAAAAAAA"), "{stderr}");
}

/// `2>&1 | head -1` with the reader gone: errors still end with their own exit status.
#[tokio::test]
async fn errors_into_a_closed_stderr_keep_their_exit_status() {
    let cwd = tempfile::tempdir().unwrap();
    // Bad input (exit 2), and a runtime failure (exit 1: no hub listens on that port).
    let bad_ttl = ["token", "--connection-string", DEVICE_CS, "--ttl", "soon"];
    let no_hub = [
        "device",
        "list",
        "--hub-connection-string",
        "HostName=127.0.0.1:9;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA",
    ];
    for (args, want) in [(&bad_ttl[..], 2), (&no_hub[..], 1)] {
        let pipe = closed_pipe();
        let mut cmd = azsim(cwd.path());
        cmd.args(args)
            .stdout(pipe.try_clone().expect("dup"))
            .stderr(pipe);
        let status = tokio::time::timeout(Duration::from_secs(60), cmd.status())
            .await
            .expect("azsim ends within 60 s")
            .expect("azsim runs");
        assert_eq!(status.code(), Some(want), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_quietly_when_its_reader_leaves() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("pipe-run").await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args([
        "run",
        "--json",
        "--interval",
        "1s",
        "--connection-string",
        &cs,
        "--ca",
    ])
    .arg(&hub.ca_file)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().expect("azsim run");
    // Telemetry every second keeps it printing; nothing else to do.
    let stderr = stops_when_its_reader_leaves(child, async || {}).await;
    assert_quiet(&stderr);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_stops_quietly_when_its_reader_leaves() {
    let hub = TestHub::start().await;
    let cs = hub.create_device("pipe-mon").await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["monitor", "--device", "pipe-mon", "--json"])
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("azsim monitor");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut stderr).await;

    let mut dev = RawDevice::connect(&hub, &cs).await;
    dev.send_telemetry(r#"{"n":1}"#, &[]).await;
    let mut rest = String::new();
    let _ = stops_when_its_reader_leaves(child, async || {
        dev.send_telemetry(r#"{"n":2}"#, &[]).await;
    })
    .await;
    while let Ok(Some(l)) = stderr.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert_quiet(&rest);
    hub.stop().await;
}

/// `azsim monitor | grep -q hot` once grep has matched: the monitor stops when its reader leaves,
/// not at the next event (which may never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_without_events_stops_when_its_reader_leaves() {
    let hub = TestHub::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["monitor", "--json"])
        .arg("--hub-connection-string")
        .arg(&hub.service_connection_string)
        .arg("--ca")
        .arg(&hub.ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("azsim monitor");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_monitor_ready(&mut stderr).await;
    drop(child.stdout.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("monitor ends once its reader has gone, with no event to print")
        .unwrap();
    assert_eq!(status.code(), Some(CLOSED_PIPE));
    let mut rest = String::new();
    while let Ok(Some(l)) = stderr.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert_quiet(&rest);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_json_stops_quietly_when_its_reader_leaves() {
    let hub = TestHub::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["fleet", "--json", "--devices", "2", "--interval", "200ms"])
        .args(["--stats-every", "200ms", "--state"])
        .arg(&hub.dir)
        .env_remove("AZSIM_FLEET_HUB_CONNECTION_STRING")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("azsim fleet");
    // Stats lines every 200 ms keep it printing.
    let stderr = stops_when_its_reader_leaves(child, async || {}).await;
    assert_quiet(&stderr);
    hub.stop().await;
}

/// A non-UTF-8 argument (a Latin-1 file name, a corrupted variable) is bad input: one line
/// naming the option, exit 2, the bytes not echoed.
#[cfg(unix)]
#[tokio::test]
async fn a_non_utf8_argument_is_named_in_one_line_with_exit_2() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let cwd = tempfile::tempdir().unwrap();
    let bad = OsStr::from_bytes(b"HostName=h\xff\xfe");
    let mut joined = b"--connection-string=".to_vec();
    joined.extend_from_slice(bad.as_bytes());
    let s = OsStr::new;
    let token = "--connection-string: not valid UTF-8; see 'azsim token --help'";
    let cases = [
        (vec![s("token"), s("--connection-string"), bad], token),
        (vec![s("token"), OsStr::from_bytes(&joined)], token),
        // `device show --connection-string` is a flag there: the id is what is named.
        (
            vec![s("device"), s("show"), s("--connection-string"), bad],
            "<DEVICE>: not valid UTF-8; see 'azsim device show --help'",
        ),
        (
            vec![s("invoke"), s("--payload"), s("{}"), s("dev"), bad],
            "<METHOD>: not valid UTF-8; see 'azsim invoke --help'",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = azsim(cwd.path());
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("error: {want}\n"), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

/// The quiet exit is for stdout only: SIGPIPE stays ignored (Rust's start-up default) in the
/// processes that write to sockets, so a client that leaves mid-write can never kill `azsim hub`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_sigpipe_ignored() {
    let state = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = azsim(cwd.path());
    cmd.args(["hub", "--json", "--in-memory", "--state"])
        .arg(state.path())
        .args(["--mqtt-port", "0", "--https-port", "0", "--amqp-port", "0"])
        .args(["--amqp-dev-port", "0", "--dashboard-port", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("azsim hub");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("ready line within 60 s")
        .unwrap()
        .expect("a ready line");
    assert!(ready.contains("mqtt_port"), "{ready}");
    let pid = child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .expect("SigIgn in /proc/PID/status");
    const SIGPIPE: u32 = 13;
    assert_ne!(ignored & (1 << (SIGPIPE - 1)), 0, "SigIgn {ignored:#x}");
    child.kill().await.unwrap();
}
