//! The hub's query language (`azsim_emulator::query`, behind `POST /devices/query` and job
//! conditions): parsing any text never panics, an error's line and column are inside the text,
//! a query that parses runs over twin-shaped documents without panicking, and a condition
//! that parses on its own also parses as a query's `WHERE` clause.
#![no_main]

use azsim_emulator::query;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let docs = || {
        vec![
            json!({"deviceId":"a","status":"enabled","tags":{"site":"oslo","n":1,"x":[1,"a"]},
                   "properties":{"desired":{"$version":2},"reported":{"t":21.5,"fw":"1.0"}}}),
            json!({"deviceId":"b","moduleId":"m","tags":{},"properties":{"reported":{"t":null}}}),
            json!({}),
        ]
    };
    match query::parse(text) {
        Ok(q) => {
            let out = query::run(&q, docs());
            if let Some(top) = q.top {
                assert!(out.rows.len() as u64 <= top);
            }
        }
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1);
            assert!(e.line <= text.split('\n').count(), "line {} of {text:?}", e.line);
        }
    }
    if let Ok(c) = query::parse_condition(text) {
        for d in docs() {
            let _ = query::matches(&c, &d);
        }
        let q = query::parse(&format!("SELECT * FROM devices WHERE {text}"));
        assert!(q.is_ok(), "condition {text:?} alone but not in a query: {q:?}");
    }
});
