//! Percent-encoding as IoT Hub uses it, in one place.
//!
//! One rule serves the SAS `sr`/`sig`/`skn` fields, property-bag names and values, request ids
//! and username query values: the RFC 3986 unreserved set `A-Z a-z 0-9 - _ . ~` is kept and every
//! other byte becomes uppercase `%XX` (Python's `quote(safe='')`, azure-sdk-for-c). Space is
//! `%20`, never `+`.
//!
//! Decoding is lenient in what it reads, as the hub is: lower- or upper-case hex both decode, and
//! `+` stays a literal `+` (Python's `unquote`; a `+` is not a space in a topic). A `%` not followed
//! by two hex digits is an error rather than being passed through, so a truncated escape is caught
//! instead of silently producing a different string.

use core::fmt;

/// Whether `b` is left as-is by [`encode`]: the RFC 3986 unreserved set.
#[inline]
pub const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Writes `s` percent-encoded (unreserved kept, everything else uppercase `%XX`) into `out`.
///
/// # Errors
/// Only the writer's own error (for example a full fixed-capacity buffer).
pub fn encode<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    // One copy of the loop for every writer type (the firmware image has several).
    encode_dyn(&mut Dyn(out), s)
}

/// Forwards to a possibly unsized writer, so generic entry points can share one
/// `&mut dyn fmt::Write` body instead of a copy per writer type.
pub(crate) struct Dyn<'w, W: fmt::Write + ?Sized>(pub(crate) &'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Dyn<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s)
    }
}

fn encode_dyn(out: &mut dyn fmt::Write, s: &str) -> fmt::Result {
    // By bytes: a character outside the unreserved set is escaped one UTF-8 byte at a time.
    let mut rest = s.as_bytes();
    loop {
        let run = rest
            .iter()
            .position(|&b| !is_unreserved(b))
            .unwrap_or(rest.len());
        let (unreserved, tail) = rest.split_at(run);
        // Unreserved bytes are ASCII.
        write_ascii(out, unreserved)?;
        let Some((&b, tail)) = tail.split_first() else {
            return Ok(());
        };
        let hex = |nibble: u8| HEX_UPPER[usize::from(nibble)];
        write_ascii(out, &[b'%', hex(b >> 4), hex(b & 0xF)])?;
        rest = tail;
    }
}

/// Writes ASCII bytes (digits, escapes the crate built itself) as text: the one place such a
/// byte buffer becomes a `&str`, so the check is not repeated inline at every caller.
#[inline(never)]
pub(crate) fn write_ascii(out: &mut dyn fmt::Write, bytes: &[u8]) -> fmt::Result {
    out.write_str(core::str::from_utf8(bytes).map_err(|_| fmt::Error)?)
}

/// A `fmt::Write` over a byte slice; fails rather than truncates when the slice is full, and
/// then stays failed (every later write fails and [`SliceWriter::into_str`] is `None`), so a
/// chain of writes needs one check at the end. The crate's writers (topics, tokens, usernames)
/// write into caller buffers through it.
#[derive(Debug)]
pub struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = self.len;
        // Past any buffer until this write succeeds.
        self.len = usize::MAX;
        let end = start.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(start..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Runs `f` on a writer over `buf` and returns what it wrote; `None` when it did not fit. One
/// body for every caller (the closures are passed as `dyn`, not monomorphised into copies).
#[inline(never)]
pub(crate) fn write_slice<'b>(
    buf: &'b mut [u8],
    f: &mut dyn FnMut(&mut dyn fmt::Write) -> fmt::Result,
) -> Option<&'b str> {
    let mut w = SliceWriter::new(buf);
    f(&mut w).ok()?;
    w.into_str()
}

impl<'b> SliceWriter<'b> {
    /// A writer filling `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// What was written; `None` when a write did not fit.
    #[inline(never)]
    pub fn into_str(self) -> Option<&'b str> {
        let buf: &'b [u8] = self.buf;
        core::str::from_utf8(buf.get(..self.len)?).ok()
    }
}

/// `Display` adapter: `format!("{}", Encoded("a/b"))` is `a%2Fb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded<'a>(pub &'a str);

impl fmt::Display for Encoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        encode(f, self.0)
    }
}

/// Writes `n` in decimal, as `{n}` does, without `core::fmt`'s formatting machinery (the
/// firmware builds its wire text with this).
///
/// # Errors
/// Only the writer's own error.
pub fn write_u64(out: &mut dyn fmt::Write, n: u64) -> fmt::Result {
    // u64::MAX has 20 digits.
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    let mut n = n;
    loop {
        start -= 1;
        if let Some(digit) = buf.get_mut(start) {
            *digit = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write_ascii(out, buf.get(start..).unwrap_or_default())
}

/// A decimal number of ASCII digits only (no sign, no spaces), `None` past `max` or `u64::MAX`.
/// What `str::parse` does for the crate's numbers, without its generic code in the firmware.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (v <= max).then_some(v)
}

/// The length `s` has once encoded.
pub fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| if is_unreserved(b) { 1 } else { 3 })
        .sum()
}

/// Why a percent-encoded string could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadEscape => "bad percent escape",
            Self::NotUtf8 => "percent-decoded text is not utf-8",
            Self::BufferTooSmall => "buffer too small for decoded text",
        })
    }
}

impl core::error::Error for DecodeError {}

/// The value of one hex digit, either case; `None` for any other byte.
#[inline]
pub(crate) const fn hex_val(b: u8) -> Option<u8> {
    let digit = b.wrapping_sub(b'0');
    // Only `A-F` and `a-f` land on `a-f` with the case bit set.
    let letter = (b | 0x20).wrapping_sub(b'a');
    if digit < 10 {
        Some(digit)
    } else if letter < 6 {
        Some(letter + 10)
    } else {
        None
    }
}

/// Whether `s` contains any `%` escape (so decoding would change it).
#[inline]
pub fn needs_decoding(s: &str) -> bool {
    s.bytes().any(|b| b == b'%')
}

/// Decodes `s` into `buf` and returns the decoded text. `+` is kept as `+`.
///
/// # Errors
/// [`DecodeError::BadEscape`] for a `%` without two hex digits, [`DecodeError::NotUtf8`] when the
/// result is not UTF-8, [`DecodeError::BufferTooSmall`] when `buf` is shorter than the result.
pub fn decode<'b>(s: &str, buf: &'b mut [u8]) -> Result<&'b str, DecodeError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < bytes.len() {
        let (b, next) = unit(bytes, i)?;
        *buf.get_mut(n).ok_or(DecodeError::BufferTooSmall)? = b;
        n += 1;
        i = next;
    }
    let buf: &'b [u8] = buf;
    core::str::from_utf8(buf.get(..n).unwrap_or_default()).map_err(|_| DecodeError::NotUtf8)
}

/// The byte the text at `i` stands for (`%XX` decoded) and where the next one starts.
#[inline(never)]
fn unit(bytes: &[u8], i: usize) -> Result<(u8, usize), DecodeError> {
    let b = *bytes.get(i).ok_or(DecodeError::BadEscape)?;
    if b != b'%' {
        return Ok((b, i + 1));
    }
    let mut v = 0;
    for k in i + 1..i + 3 {
        let d = bytes.get(k).copied().and_then(hex_val);
        v = (v << 4) | d.ok_or(DecodeError::BadEscape)?;
    }
    Ok((v, i + 3))
}

/// A `fmt::Write` that stores nothing and counts the bytes written to it: to measure text
/// before writing it, or to check that it can be produced at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LenCounter {
    /// Bytes written so far.
    pub len: usize,
}

impl fmt::Write for LenCounter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        Ok(())
    }
}

/// The length of `s` once decoded, without writing it anywhere: checks that every escape is
/// complete and the result is UTF-8.
///
/// # Errors
/// [`DecodeError::BadEscape`] or [`DecodeError::NotUtf8`].
pub fn decoded_len(s: &str) -> Result<usize, DecodeError> {
    if !needs_decoding(s) {
        return Ok(s.len());
    }
    let mut counter = LenCounter::default();
    decode_to_dyn(&mut counter, s)?;
    Ok(counter.len)
}

/// Whether `raw` decodes to exactly `want`, compared byte by byte without a buffer. A `raw`
/// with a malformed escape equals nothing.
pub(crate) fn eq_decoded(raw: &str, want: &str) -> bool {
    let (raw, mut want) = (raw.as_bytes(), want.as_bytes());
    let mut i = 0;
    while i < raw.len() {
        let Ok((b, next)) = unit(raw, i) else {
            return false;
        };
        match want.split_first() {
            Some((&w, rest)) if w == b => want = rest,
            _ => return false,
        }
        i = next;
    }
    want.is_empty()
}

/// Decodes `s` into any `fmt::Write` (a `String`, a `heapless::String`), without a scratch buffer.
///
/// # Errors
/// As [`decode`]; a writer error is reported as [`DecodeError::BufferTooSmall`].
pub fn decode_to<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> Result<(), DecodeError> {
    decode_to_dyn(&mut Dyn(out), s)
}

fn decode_to_dyn(out: &mut dyn fmt::Write, s: &str) -> Result<(), DecodeError> {
    // Escaped bytes of one multi-byte UTF-8 character are collected in `pending` and written
    // once the character is complete.
    let bytes = s.as_bytes();
    let mut pending = [0u8; 4];
    let mut pending_len = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'%') {
            if pending_len != 0 {
                return Err(DecodeError::NotUtf8);
            }
            // Copy the run of literal text up to the next '%' (an ASCII byte, so the run is
            // whole characters).
            let rest = s.get(i..).unwrap_or_default();
            let run = rest.bytes().position(|c| c == b'%').unwrap_or(rest.len());
            out.write_str(rest.get(..run).unwrap_or_default())
                .map_err(|_| DecodeError::BufferTooSmall)?;
            i += run;
            continue;
        }
        let (v, next) = unit(bytes, i)?;
        i = next;
        let slot = pending.get_mut(pending_len).ok_or(DecodeError::NotUtf8)?;
        *slot = v;
        pending_len += 1;
        match core::str::from_utf8(pending.get(..pending_len).unwrap_or_default()) {
            Ok(s) => {
                out.write_str(s).map_err(|_| DecodeError::BufferTooSmall)?;
                pending_len = 0;
            }
            Err(e) if e.error_len().is_none() => {} // incomplete sequence: wait for more
            Err(_) => return Err(DecodeError::NotUtf8),
        }
    }
    if pending_len != 0 {
        return Err(DecodeError::NotUtf8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn unreserved_kept_everything_else_upper_hex() {
        let mut s = String::new();
        encode(&mut s, "myhub.azure-devices.net/devices/a b~_.-+=é").unwrap();
        assert_eq!(
            s,
            "myhub.azure-devices.net%2Fdevices%2Fa%20b~_.-%2B%3D%C3%A9"
        );
        assert_eq!(encoded_len("a/b é"), s_len("a/b é"));
    }

    fn s_len(x: &str) -> usize {
        std::format!("{}", Encoded(x)).len()
    }

    #[test]
    fn decimals_match_core_fmt() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            4_294_967_295,
            1_000_000_000_000,
            u64::MAX,
        ] {
            let mut s = String::new();
            write_u64(&mut s, n).unwrap();
            assert_eq!(s, std::format!("{n}"));
        }
    }

    #[test]
    fn decode_accepts_both_cases_and_keeps_plus() {
        let mut buf = [0u8; 64];
        assert_eq!(decode("a%2fb%2Fc+d", &mut buf).unwrap(), "a/b/c+d");
        let mut s = String::new();
        decode_to(&mut s, "%C3%A9t%c3%a9+x").unwrap();
        assert_eq!(s, "été+x");
    }

    #[test]
    fn hex_digits_are_exactly_0_9_a_f_in_either_case() {
        for b in 0..=u8::MAX {
            let want = char::from(b).to_digit(16).map(|d| d as u8);
            assert_eq!(hex_val(b), want, "{b:#x}");
        }
    }

    #[test]
    fn bad_escapes_are_errors() {
        let mut buf = [0u8; 8];
        assert_eq!(decode("%4", &mut buf), Err(DecodeError::BadEscape));
        assert_eq!(decode("%zz", &mut buf), Err(DecodeError::BadEscape));
        assert_eq!(decode("%FF", &mut buf), Err(DecodeError::NotUtf8));
        assert_eq!(
            decode("abcdefghij", &mut buf),
            Err(DecodeError::BufferTooSmall)
        );
        let mut s = String::new();
        assert_eq!(decode_to(&mut s, "%C3"), Err(DecodeError::NotUtf8));
    }

    proptest::proptest! {
        #[test]
        fn decimals_match_core_fmt_everywhere(n in proptest::num::u64::ANY) {
            let mut s = String::new();
            write_u64(&mut s, n).unwrap();
            proptest::prop_assert_eq!(s, std::format!("{n}"));
        }

        #[test]
        fn encode_escapes_exactly_the_reserved_bytes(input in "[\\x00-\\x7f\u{e9}\u{20ac}\u{1f600}]{0,12}") {
            let want: String = input
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).into()
                } else {
                    std::format!("%{b:02X}")
                })
                .collect();
            proptest::prop_assert_eq!(std::format!("{}", Encoded(&input)), want);
        }

        #[test]
        fn encode_decode_round_trip(input in ".*") {
            let enc = std::format!("{}", Encoded(&input));
            proptest::prop_assert!(enc.bytes().all(|b| is_unreserved(b) || b == b'%'));
            let mut s = String::new();
            decode_to(&mut s, &enc).unwrap();
            proptest::prop_assert_eq!(&s, &input);
            let mut buf = std::vec![0u8; input.len()];
            proptest::prop_assert_eq!(decode(&enc, &mut buf).unwrap(), input.as_str());
        }
    }
}
