//! `encoding::decode` / `decode_to`: never panic, agree with each other, and re-encoding the
//! result decodes back to it.
#![no_main]

use azsim_proto::encoding::{self, DecodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut buf = vec![0u8; s.len()];
    let a = encoding::decode(s, &mut buf).map(str::to_owned);
    let mut b = String::new();
    let b = encoding::decode_to(&mut b, s).map(|()| b);
    // Both accept or both refuse; the error kind may differ when an input has both a bad escape
    // and invalid UTF-8 (`decode` checks UTF-8 at the end, `decode_to` per character).
    assert_eq!(
        a.as_ref().ok(),
        b.as_ref().ok(),
        "decode and decode_to disagree on {s:?}"
    );
    // A decoded text is never longer than its encoding, so a buffer of that size never fails
    // for lack of room.
    assert_ne!(a, Err(DecodeError::BufferTooSmall));
    if let Ok(decoded) = a {
        let enc = encoding::Encoded(&decoded).to_string();
        assert_eq!(enc.len(), encoding::encoded_len(&decoded));
        let mut again = String::new();
        encoding::decode_to(&mut again, &enc).unwrap();
        assert_eq!(again, decoded);
    }
});
