//! The SNTP packet (RFC 4330): the request the board sends and the reply's transmit time as
//! Unix milliseconds. Plain code with no I/O, so it is unit-tested on the host.
//!
//! NTP counts seconds from 1900-01-01, Unix from 1970-01-01: 2 208 988 800 s later.

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_TO_UNIX: u64 = 2_208_988_800;
/// Unix time of 2024-01-01: an answer before it is a broken server, not the date.
const SANE_AFTER: u64 = 1_704_067_200;

/// A client request: LI 0, version 4, mode 3; everything else zero.
pub fn request() -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = 0x23;
    r
}

/// The transmit timestamp of a server reply, in Unix milliseconds.
///
/// # Errors
/// A short reason when the reply is short, not from a server, a kiss-of-death, or implausible.
pub fn parse_reply(reply: &[u8]) -> Result<u64, &'static str> {
    if reply.len() < 48 {
        return Err("short reply");
    }
    let mode = reply[0] & 0x07;
    if mode != 4 && mode != 5 {
        return Err("not a server reply");
    }
    if reply[1] == 0 {
        return Err("kiss-of-death reply");
    }
    let secs = u64::from(u32::from_be_bytes([
        reply[40], reply[41], reply[42], reply[43],
    ]));
    let frac = u64::from(u32::from_be_bytes([
        reply[44], reply[45], reply[46], reply[47],
    ]));
    // Era 0 ends in February 2036; a seconds field below 1970 then means era 1.
    let secs = if secs < NTP_TO_UNIX {
        secs + (1 << 32)
    } else {
        secs
    };
    let unix = secs - NTP_TO_UNIX;
    if unix < SANE_AFTER {
        return Err("implausible time");
    }
    Ok(unix * 1000 + ((frac * 1000) >> 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(ntp_secs: u32, frac: u32) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = 0x24; // LI 0, version 4, mode 4 (server)
        r[1] = 2; // stratum
        r[40..44].copy_from_slice(&ntp_secs.to_be_bytes());
        r[44..48].copy_from_slice(&frac.to_be_bytes());
        r
    }

    #[test]
    fn the_request_is_a_version_4_client_packet() {
        let r = request();
        assert_eq!(r[0] >> 3 & 0x07, 4);
        assert_eq!(r[0] & 0x07, 3);
        assert!(r[1..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_reply_converts_from_the_1900_epoch_to_unix_milliseconds() {
        // 2026-11-28T00:00:00Z = 1 795 824 000 Unix; half a second of fraction.
        let unix = 1_795_824_000u64;
        let r = reply((unix + NTP_TO_UNIX) as u32, 1 << 31);
        assert_eq!(parse_reply(&r), Ok(unix * 1000 + 500));
    }

    #[test]
    fn after_2036_the_seconds_wrap_into_era_1() {
        // 2040-01-01T00:00:00Z = 2 208 988 800 Unix, past the 2^32 s NTP rollover.
        let unix = 2_208_988_800u64;
        let r = reply(((unix + NTP_TO_UNIX) % (1 << 32)) as u32, 0);
        assert_eq!(parse_reply(&r), Ok(unix * 1000));
    }

    #[test]
    fn bad_replies_are_refused() {
        assert_eq!(parse_reply(&[0u8; 47]), Err("short reply"));
        let mut r = reply(3_900_000_000, 0);
        r[0] = 0x23;
        assert_eq!(parse_reply(&r), Err("not a server reply"));
        let mut r = reply(3_900_000_000, 0);
        r[1] = 0;
        assert_eq!(parse_reply(&r), Err("kiss-of-death reply"));
        // 2000-01-01 (the embedded epoch) is not a believable answer.
        let r = reply((946_684_800 + NTP_TO_UNIX) as u32, 0);
        assert_eq!(parse_reply(&r), Err("implausible time"));
    }
}
