//! A child process (the `azsim` binary: `run --json`, `fleet --json`) whose stdout is strict
//! JSON lines, read as they come into a channel, and whose stderr is collected for failures.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;

/// A running JSON-lines child.
pub struct JsonChild {
    pub child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line read so far, in order.
    pub seen: Vec<Value>,
    /// All of stderr, once the child has closed it.
    pub stderr: tokio::task::JoinHandle<String>,
}

impl JsonChild {
    /// Starts `cmd` (built with stdout and stderr piped); a stdout line that is not JSON fails
    /// the test.
    pub fn spawn(mut cmd: tokio::process::Command) -> JsonChild {
        let mut child = cmd.spawn().expect("azsim runs");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        JsonChild {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first event from now on that `pred` accepts (within `secs`); fails with the last
    /// lines (and, if the child ended, its status and stderr).
    pub async fn wait_for(
        &mut self,
        what: &str,
        secs: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().await;
                    let err = (&mut self.stderr).await.unwrap_or_default();
                    panic!(
                        "azsim ended ({status:?}) before {what}; stderr: {err}\nlast lines: {:#?}",
                        self.seen.iter().rev().take(5).collect::<Vec<_>>()
                    );
                }
                Err(_) => panic!(
                    "no {what} within {secs} s; last lines: {:#?}",
                    self.seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The lines still unread, until stdout closes; with `seen`, everything printed.
    pub async fn drain(&mut self) {
        while let Some(v) = self.lines.recv().await {
            self.seen.push(v);
        }
    }
}
