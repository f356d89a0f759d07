//! What `azsim run` prints: one readable line per event on a terminal, or with `--json` one
//! JSON object per line with an `event` field. Nothing printed here ever holds a key, a token
//! or a signature: callers pass ids, counts and bodies only.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Where event lines go.
#[derive(Clone)]
pub struct Output {
    json: bool,
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("json", &self.json).finish()
    }
}

impl Output {
    /// Lines to stdout.
    pub fn stdout(json: bool) -> Self {
        // A closed stdout (`azsim run | head`) ends the process quietly (crate::out).
        Self::to_writer(json, Box::new(crate::out::Stdout))
    }

    /// Lines to any writer (tests, benches).
    pub fn to_writer(json: bool, w: Box<dyn Write + Send>) -> Self {
        Self {
            json,
            sink: Arc::new(Mutex::new(w)),
        }
    }

    /// Whether lines are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one event: `fields` (an object) with `"event": name` added in JSON mode, `human`
    /// otherwise.
    pub fn emit(&self, name: &str, fields: Value, human: impl FnOnce() -> String) {
        let line = if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("event".into(), Value::String(name.into()));
            if let Value::Object(map) = fields {
                obj.extend(map);
            }
            Value::Object(obj).to_string()
        } else {
            human()
        };
        if let Ok(mut w) = self.sink.lock() {
            // A closed stdout ends the process quietly inside `crate::out::Stdout`; another
            // sink's failure must not kill the device loop.
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }

    /// A note for people (terminal mode only): hints, how to drive the device.
    pub fn note(&self, text: &str) {
        if !self.json {
            self.emit("note", json!({}), || text.to_owned());
        }
    }
}

/// A body as JSON if it parses, else as a string (lossy UTF-8).
pub fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(body_text(body)))
}

/// A body as text for a terminal line.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
