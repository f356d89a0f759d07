//! Known-answer tests for `connection_string`, `sas`, `username` and the percent-encoder, driven
//! by the official SDKs' vectors in `fixtures/vectors/` (see its README for every source).
//!
//! Every case is checked. Where azsim's strict rules deliberately differ from what one SDK's
//! test expects, the case id is listed in an `*_EXCEPTIONS` table with the reason, and the test
//! asserts our (different) verdict for it instead, so an exception can neither be silent nor
//! stale.
//!
//! One module per vector family (`connection_string`, `sas`, `encoding`, `username`), and the
//! property tests (`props`); the fixture loader and JSON helpers they share are here.

use std::path::PathBuf;

use serde_json::Value;

mod connection_string;
mod encoding;
mod props;
mod sas;
mod username;

fn load(name: &str) -> Value {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "fixtures",
        "vectors",
        name,
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k).and_then(Value::as_str)
}

fn id(v: &Value) -> &str {
    s(v, "id").unwrap_or("<no id>")
}
