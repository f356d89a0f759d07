//! A small JSON reader for the few fields the session and the behaviour need: find a value by
//! a path of object keys and get its raw bytes, without allocating. It checks the syntax of
//! everything it walks over and gives up (`None`) on anything malformed or nested deeper than
//! [`MAX_DEPTH`], so hostile input cannot make it panic or recurse without bound. [`Quoted`]
//! writes a string literal.
//!
//! What it does not do: build a tree, decode string values, or read numbers other than
//! unsigned integers ([`as_u64`]).

use core::fmt;

use crate::encoding;

/// Deepest nesting walked.
pub const MAX_DEPTH: usize = 32;

/// The two-character escapes: the byte after `\` and the byte it stands for. The scanner reads
/// all of them; strings are written with the first [`WRITTEN_SHORT_ESCAPES`] (and every other
/// control character as `\u00xx`), as `serde_json` writes them.
const SHORT_ESCAPES: [[u8; 2]; 8] = [
    *b"\"\"", *b"\\\\", *b"n\n", *b"r\r", *b"t\t", *b"//", *b"b\x08", *b"f\x0c",
];
const WRITTEN_SHORT_ESCAPES: usize = 5;

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// The byte at the cursor, 0 past the end (a 0 byte is never valid where it is read,
    /// so the end and a stray NUL both fail the same way).
    #[inline(never)]
    fn peek(&self) -> u8 {
        self.s.get(self.i).copied().unwrap_or(0)
    }

    /// Skips whitespace, then peeks.
    fn next(&mut self) -> u8 {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
        self.peek()
    }

    /// Skips whitespace and `b`, or fails.
    #[inline(always)]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next() == b).then(|| self.i += 1)
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while self.peek().is_ascii_digit() {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// A string; whether its text (escapes decoded) is `want`.
    fn string(&mut self, want: &str) -> Option<bool> {
        self.eat(b'"')?;
        let mut want = want.as_bytes();
        let mut same = true;
        loop {
            let c = self.peek();
            self.i += 1;
            // The UTF-8 bytes this piece of the string stands for.
            let mut unit = [c, 0, 0, 0];
            let mut n = 1;
            match c {
                b'"' => return Some(same && want.is_empty()),
                b'\\' => {
                    let e = self.peek();
                    self.i += 1;
                    unit[0] = if e == b'u' {
                        let hex = self.s.get(self.i..self.i + 4)?;
                        let mut v = 0;
                        for &h in hex {
                            v = v * 16 + u32::from(encoding::hex_val(h)?);
                        }
                        self.i += 4;
                        match char::from_u32(v) {
                            Some(ch) => {
                                n = ch.encode_utf8(&mut unit).len();
                                unit[0]
                            }
                            None => {
                                // Surrogate pairs never match the ASCII keys asked for
                                // here.
                                same = false;
                                0
                            }
                        }
                    } else {
                        SHORT_ESCAPES.iter().find(|p| p[0] == e)?[1]
                    };
                }
                0..=0x1F => return None,
                _ => {}
            }
            for &u in unit.get(..n).unwrap_or_default() {
                match want.split_first() {
                    Some((&w, rest)) if w == u => want = rest,
                    _ => same = false,
                }
            }
        }
    }

    /// Skips one value; returns its raw bytes.
    fn value(&mut self, depth: usize) -> Option<&'a [u8]> {
        let c = self.next();
        let start = self.i;
        match c {
            b'{' | b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                // `}` and `]` are two code points after `{` and `[`.
                let close = c + 2;
                self.i += 1;
                if self.next() == close {
                    self.i += 1;
                } else {
                    loop {
                        if c == b'{' {
                            self.string("")?;
                            self.eat(b':')?;
                        }
                        self.value(depth + 1)?;
                        match self.next() {
                            b',' => self.i += 1,
                            x if x == close => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'"' => {
                self.string("")?;
            }
            b't' | b'f' | b'n' => {
                let lit: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !self.s.get(self.i..)?.starts_with(lit) {
                    return None;
                }
                self.i += lit.len();
            }
            _ => {
                if c == b'-' {
                    self.i += 1;
                }
                if self.peek() == b'0' {
                    self.i += 1;
                } else {
                    self.digits()?;
                }
                if self.peek() == b'.' {
                    self.i += 1;
                    self.digits()?;
                }
                if self.peek() | 0x20 == b'e' {
                    self.i += 1;
                    if matches!(self.peek(), b'+' | b'-') {
                        self.i += 1;
                    }
                    self.digits()?;
                }
            }
        }
        self.s.get(start..self.i)
    }
}

/// The raw bytes of the value at `path` (object keys from the top), e.g.
/// `find(doc, &["desired", "$version"])`. An empty path returns the whole value.
pub fn find<'a>(doc: &'a [u8], path: &[&str]) -> Option<&'a [u8]> {
    let mut c = Cursor { s: doc, i: 0 };
    for (depth, want) in path.iter().enumerate() {
        if depth >= MAX_DEPTH {
            return None;
        }
        c.eat(b'{')?;
        loop {
            // An empty object has no key: `string` fails on its `}`.
            let found = c.string(want)?;
            c.eat(b':')?;
            if found {
                break;
            }
            c.value(depth + 1)?;
            c.eat(b',')?;
        }
    }
    c.value(path.len())
}

/// The unsigned integer at `path`.
pub fn find_u64(doc: &[u8], path: &[&str]) -> Option<u64> {
    as_u64(find(doc, path)?)
}

/// `raw` as an unsigned integer (no sign, fraction or exponent).
pub fn as_u64(raw: &[u8]) -> Option<u64> {
    // Digits only and the range are `parse_decimal`'s checks; a leading zero is JSON's.
    if raw.len() > 1 && raw.first() == Some(&b'0') {
        return None;
    }
    crate::encoding::parse_decimal(raw, u64::MAX)
}

/// Whether `doc` is exactly one well-formed JSON value.
pub fn is_valid(doc: &[u8]) -> bool {
    let mut c = Cursor { s: doc, i: 0 };
    c.value(0).is_some() && c.next() == 0 && c.i == doc.len()
}

/// Whether `doc` is exactly one well-formed JSON object.
pub fn is_object(doc: &[u8]) -> bool {
    let mut c = Cursor { s: doc, i: 0 };
    c.next() == b'{' && is_valid(doc)
}

/// Writes a `&str` as a JSON string literal, quotes included.
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_quoted(f, self.0)
    }
}

/// [`Quoted`] without `core::fmt`'s formatting machinery: `"`, `\` and the control characters
/// escaped, everything else written as it is.
pub(crate) fn write_quoted(w: &mut dyn fmt::Write, s: &str) -> fmt::Result {
    w.write_str("\"")?;
    let mut rest = s;
    while let Some(i) = rest.bytes().position(needs_escape) {
        // The bytes that need an escape are ASCII, so both sides of it are whole characters.
        let (plain, tail) = rest.split_at(i);
        w.write_str(plain)?;
        write_escape(w, tail.as_bytes()[0])?;
        rest = &tail[1..];
    }
    w.write_str(rest)?;
    w.write_str("\"")
}

/// Whether a JSON string cannot hold `b` as it is.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Writes the escape for `b`: `\"`, `\\`, `\n`, `\r`, `\t`, or `\u00xx`.
fn write_escape(w: &mut dyn fmt::Write, b: u8) -> fmt::Result {
    const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
    if let Some(&[letter, _]) = SHORT_ESCAPES[..WRITTEN_SHORT_ESCAPES]
        .iter()
        .find(|pair| pair[1] == b)
    {
        return encoding::write_ascii(w, &[b'\\', letter]);
    }
    let mut esc = *b"\\u00xx";
    esc[4] = HEX_LOWER[usize::from(b >> 4)];
    esc[5] = HEX_LOWER[usize::from(b & 0xF)];
    encoding::write_ascii(w, &esc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[test]
    fn the_json_scanner_finds_nested_values() {
        let doc = br#" { "a" : [1, {"x":2}], "de\"sired": {"$version": 12, "n": null}, "desired" : { "b":"s\u0041", "$version" :7 } } "#;
        assert_eq!(find(doc, &["desired", "$version"]), Some(&b"7"[..]));
        assert_eq!(find_u64(doc, &["desired", "$version"]), Some(7));
        assert_eq!(find(doc, &["desired", "b"]), Some(&br#""s\u0041""#[..]));
        assert_eq!(find(doc, &["a"]), Some(&b"[1, {\"x\":2}]"[..]));
        assert_eq!(find(doc, &["de\"sired", "n"]), Some(&b"null"[..]));
        assert_eq!(find(doc, &["missing"]), None);
        assert_eq!(find(doc, &["a", "x"]), None);
        assert_eq!(
            find(br#"{"\u0069nterval":5}"#, &["interval"]),
            Some(&b"5"[..])
        );
        assert!(is_valid(doc));
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"[1 2]",
            b"\"\x01\"",
            b"01",
            b"1.",
            b"tru",
            b"{} x",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        let deep: Vec<u8> = core::iter::repeat_n(b'[', 10_000).collect();
        assert!(!is_valid(&deep));
        assert_eq!(as_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(as_u64(b"18446744073709551616"), None);
    }

    #[test]
    fn quoted_strings_are_valid_json() {
        let s = "a\"b\\c\nd\u{1}é";
        let q = Quoted(s).to_string();
        assert_eq!(q, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let back: String = serde_json::from_str(&q).unwrap();
        assert_eq!(back, s);
        assert_eq!(Quoted("\u{1f}\t\r").to_string(), "\"\\u001f\\t\\r\"");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn the_json_scanner_finds_keys_however_they_are_escaped(key in "[\\x00-\\x1f\"\\\\/a-z\u{e9}\u{20ac}\u{1f600}]{0,8}") {
            let doc = serde_json::json!({ key.clone(): 1 }).to_string();
            proptest::prop_assert_eq!(find(doc.as_bytes(), &[&key]), Some(&b"1"[..]));
            if key.chars().all(|c| u32::from(c) < 0x10000) {
                let esc: String = key
                    .chars()
                    .map(|c| std::format!("\\u{:04x}", u32::from(c)))
                    .collect();
                let doc = std::format!("{{\"{esc}\":2}}");
                proptest::prop_assert_eq!(find(doc.as_bytes(), &[&key]), Some(&b"2"[..]));
                let other = std::format!("{key}x");
                proptest::prop_assert_eq!(find(doc.as_bytes(), &[&other]), None);
            }
        }

        #[test]
        fn quoted_strings_escape_exactly_quotes_backslashes_and_controls(s in "[\\x00-\\x7f\u{e9}\u{20ac}\u{1f600}]{0,12}") {
            let mut want = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => want.push_str("\\\""),
                    '\\' => want.push_str("\\\\"),
                    '\n' => want.push_str("\\n"),
                    '\r' => want.push_str("\\r"),
                    '\t' => want.push_str("\\t"),
                    c if u32::from(c) < 0x20 => want.push_str(&std::format!("\\u{:04x}", u32::from(c))),
                    c => want.push(c),
                }
            }
            want.push('"');
            proptest::prop_assert_eq!(Quoted(&s).to_string(), want);
        }

        #[test]
        fn the_json_scanner_accepts_what_serde_json_accepts(
            doc in "[ \t\n{}\\[\\]:,\"\\\\a-f0-9uxtrnl.eE+-]{0,40}",
        ) {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(&doc).is_ok();
            proptest::prop_assert_eq!(is_valid(doc.as_bytes()), serde, "{:?}", doc);
        }
    }
}
