//! Hub side, `topic::classify_subscription`: never panics; an accepted filter's kind writes a
//! canonical filter that classifies the same.
#![no_main]

use azsim_proto::topic::{self, Identity};
use libfuzzer_sys::fuzz_target;

fn check(f: &str, id: Identity<'_>) {
    if let Ok(kind) = topic::classify_subscription(f, id) {
        assert!(!f.contains('+'));
        let mut canonical = String::new();
        topic::write_filter(&mut canonical, kind, id).expect("kind applies to identity");
        assert_eq!(topic::classify_subscription(&canonical, id), Ok(kind));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(f) = std::str::from_utf8(data) else {
        return;
    };
    check(f, Identity::device("dev-1"));
    check(f, Identity::module("dev-1", "mod-1"));
    if let Some((d, rest)) = f.strip_prefix("devices/").and_then(|r| r.split_once('/')) {
        check(f, Identity::device(d));
        if let Some((m, _)) = rest
            .strip_prefix("modules/")
            .and_then(|r| r.split_once('/'))
        {
            check(f, Identity::module(d, m));
        }
    }
});
