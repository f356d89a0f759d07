//! Text from the other end of a socket, made fit for one log line.
//!
//! Client ids, usernames, topics, request ids and URL paths arrive before (or without)
//! authentication and may hold anything MQTT or HTTP lets through: a newline that would start a
//! forged log line, terminal escapes, or 64 KiB that would make one line of the log 64 KiB.
//! [`Untrusted`] writes such text escaped (Rust's `escape_debug`: `\n`, `\u{1b}`, ...) and clipped
//! to [`MAX_CHARS`] characters with a marker saying how much was left out. Every untrusted string
//! the hub logs, or puts into a reason it logs, goes through it.

use std::fmt;

/// The most characters of one untrusted string a log line carries.
pub const MAX_CHARS: usize = 256;

/// Displays the string escaped and clipped (see the module docs).
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(MAX_CHARS) {
            fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        if let Some((at, _)) = chars.next() {
            write!(f, "...[{} more bytes]", self.0.len() - at)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_no_line_can_be_forged() {
        let shown = Untrusted("dev\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[31m").to_string();
        assert_eq!(
            shown,
            "dev\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31m"
        );
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{1b}'));
    }

    #[test]
    fn long_text_is_clipped_with_a_marker_counting_the_rest() {
        let long = "a".repeat(64 * 1024);
        let shown = Untrusted(&long).to_string();
        assert_eq!(
            shown,
            format!(
                "{}...[{} more bytes]",
                "a".repeat(MAX_CHARS),
                64 * 1024 - MAX_CHARS
            )
        );
        // Exactly the limit: nothing left out, no marker.
        assert_eq!(Untrusted(&long[..MAX_CHARS]).to_string(), long[..MAX_CHARS]);
        // Multi-byte characters count as characters; the marker counts bytes.
        let wide = "é".repeat(MAX_CHARS + 1);
        assert!(Untrusted(&wide).to_string().ends_with("...[2 more bytes]"));
    }

    #[test]
    fn plain_ids_are_shown_as_they_are() {
        assert_eq!(
            Untrusted("sim-device-1/module_2").to_string(),
            "sim-device-1/module_2"
        );
        assert_eq!(format!("{:?}", Untrusted("d")), "\"d\"");
    }
}
