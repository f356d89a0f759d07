//! A child process speaking JSON lines on stdout (the SDK scripts under `tests/python` and
//! `tests/node`): one event object per line, `{"event": "...", ...}`. The caller builds the
//! command (interpreter, script, arguments, env vars, stdin); [`Script::spawn`] pipes stdout,
//! sends stderr to `{work}/{name}.stderr` and kills the child on drop. A failure panics with the
//! events seen so far and the last lines of stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long [`Script::expect`] waits for each line.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why [`Script::next_event`] has no event.
enum NoEvent {
    Timeout,
    Read(std::io::Error),
    Exited,
}

/// A running JSON-lines script.
pub struct Script {
    name: String,
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr_file: PathBuf,
    /// Every JSON event read so far, in order.
    pub seen: Vec<Value>,
}

impl Script {
    /// Starts `cmd` in `work` (stdin as the caller set it); `name` labels failures and the
    /// stderr file.
    pub fn spawn(mut cmd: Command, work: &Path, name: &str) -> Script {
        let stderr_file = work.join(format!("{name}.stderr"));
        cmd.current_dir(work)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Script {
            name: name.to_owned(),
            child,
            lines,
            stderr_file,
            seen: Vec::new(),
        }
    }

    /// Panics with `why`, the events seen so far and the last 30 lines of stderr.
    pub fn fail(&self, why: &str) -> ! {
        let stderr = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{}: {why}\nevents so far: {:?}\nstderr (last lines):\n{}",
            self.name,
            self.seen,
            tail.join("\n")
        );
    }

    /// The next JSON event (lines that are not JSON, a library's print, are skipped), or why
    /// there is none.
    async fn next_event(&mut self) -> Result<Value, NoEvent> {
        loop {
            let line = match tokio::time::timeout(EVENT_TIMEOUT, self.lines.next_line()).await {
                Err(_) => return Err(NoEvent::Timeout),
                Ok(Err(e)) => return Err(NoEvent::Read(e)),
                Ok(Ok(None)) => return Err(NoEvent::Exited),
                Ok(Ok(Some(line))) => line,
            };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.seen.push(v.clone());
                return Ok(v);
            }
        }
    }

    /// Reads events until one named `event` (returned); fails on `error`/`timeout`, EOF or 60 s
    /// without a line.
    pub async fn expect(&mut self, event: &str) -> Value {
        loop {
            let v = match self.next_event().await {
                Ok(v) => v,
                Err(NoEvent::Timeout) => self.fail(&format!("no {event:?} event within 60 s")),
                Err(NoEvent::Read(e)) => self.fail(&format!("reading stdout: {e}")),
                Err(NoEvent::Exited) => self.fail(&format!("exited before the {event:?} event")),
            };
            let name = v["event"].as_str().unwrap_or_default();
            if name == event {
                return v;
            }
            if name == "error" || name == "timeout" {
                self.fail(&format!("reported {v}"));
            }
        }
    }

    /// Reads events until the script reports an `error` (returned), then checks that it exits
    /// with a failure.
    pub async fn expect_error(mut self) -> Value {
        loop {
            let v = match self.next_event().await {
                Ok(v) => v,
                Err(NoEvent::Timeout) => self.fail("no error event within 60 s"),
                Err(_) => self.fail("exited before an error event"),
            };
            if v["event"] == "error" {
                let status = self.child.wait().await.unwrap();
                assert!(!status.success(), "{}: exits with a failure", self.name);
                return v;
            }
        }
    }

    /// Writes `line` and a newline to the script's stdin (spawned with `Stdio::piped()`).
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin (if piped) and waits up to 30 s for a successful exit.
    pub async fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| self.fail("did not exit within 30 s"))
            .unwrap();
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
    }
}
