//! `PropertyBag` iteration and decoding: never panic; every decoder agrees; a bag rebuilt from
//! the decoded pairs reads back the same pairs; `validate` is the conjunction of the pairs.
#![no_main]

use azsim_proto::property_bag::{BagWriter, EncodedStr, PropertyBag, SystemProperty};
use libfuzzer_sys::fuzz_target;

fn decode(e: EncodedStr<'_>) -> Option<String> {
    let mut s = String::new();
    let r = e.decode_to(&mut s).ok().map(|()| s);
    let mut buf = vec![0u8; e.as_raw().len()];
    assert_eq!(r.as_deref(), e.decode(&mut buf).ok(), "decoders disagree");
    assert_eq!(r.as_ref().map(String::len), e.validate().ok());
    if let Some(d) = &r {
        assert!(e.eq_decoded(d));
        assert_eq!(e.as_plain().is_some(), !e.as_raw().contains('%'));
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let bag = PropertyBag::new(s);
    let mut pairs = Vec::new();
    let mut all_ok = true;
    for p in bag {
        assert!(!p.name.as_raw().contains('&'));
        let name = decode(p.name);
        let value = p.value.map(decode);
        if let Some(n) = &name {
            assert_eq!(
                p.system(),
                SystemProperty::from_name(n),
                "system() vs from_name"
            );
        }
        match (name, value) {
            (Some(n), None) => pairs.push((n, None)),
            (Some(n), Some(Some(v))) => pairs.push((n, Some(v))),
            _ => all_ok = false,
        }
    }
    assert_eq!(bag.validate().is_ok(), all_ok);
    if !all_ok {
        return;
    }
    let mut rebuilt = String::new();
    let mut w = BagWriter::new(&mut rebuilt);
    for (n, v) in &pairs {
        w.pair(n, v.as_deref()).unwrap();
    }
    let again: Vec<_> = PropertyBag::new(&rebuilt)
        .iter()
        .map(|p| (decode(p.name).unwrap(), p.value.map(|v| decode(v).unwrap())))
        .collect();
    // The one lossy case: an empty name with a null value writes nothing.
    let want: Vec<_> = pairs
        .into_iter()
        .filter(|(n, v)| !(n.is_empty() && v.is_none()))
        .collect();
    assert_eq!(again, want);
});
