//! The log relay's wire format, between delegate-sync and the waiter of a proxy container.
//!
//! delegate-sync execs `proxy-waiter relay` into the proxy container; that process connects to
//! the waiter's socket and passes bytes both ways. Over it:
//!
//! - `proxy-waiter relay` sends [`HELLO`]; the waiter answers `AT <position>\n`, the
//!   position after the last frame it wrote (`-` before any);
//! - delegate-sync sends frames, `F <length> <position>\n` and `length` bytes of the delegate
//!   container's log; the waiter writes a frame to its standard output only once it holds the
//!   whole frame, then records its position: a frame is written once or not at all;
//! - [`END`] asks the waiter to answer `AT <position>\n` and close: everything sent before it
//!   is in the proxy container's log.
//!
//! The position is opaque to the waiter (delegate-sync says where a frame leaves the log), so
//! whoever relays next, after a restart or a leader hand-over, resumes exactly there. A newer
//! relay supersedes an older one: the waiter closes the older connection first, so the two
//! never interleave.

/// What a relay sends first: it tells a relay from a `deliver` (whose results start with `{`).
pub const HELLO: &[u8] = b"RELAY1\n";
/// Asks for the position and the end of the relay.
pub const END: &[u8] = b"END\n";
/// Largest frame body: the waiter holds one frame in memory.
pub const MAX_FRAME: usize = 32 * 1024;
/// Longest header line, position included.
pub const MAX_HEADER: usize = 512;
/// The position before anything was relayed.
pub const NO_POSITION: &str = "-";

/// One parsed header line (without its newline).
#[derive(Debug, PartialEq, Eq)]
pub enum Header<'a> {
    Frame { length: usize, position: &'a str },
    End,
}

/// Parses a header line sent to the waiter.
pub fn parse_header(line: &[u8]) -> Result<Header<'_>, &'static str> {
    if line == &END[..END.len() - 1] {
        return Ok(Header::End);
    }
    let text = core::str::from_utf8(line).map_err(|_| "header is not UTF-8")?;
    let mut parts = text.split(' ');
    if parts.next() != Some("F") {
        return Err("unknown header");
    }
    let length: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("frame length is not a number")?;
    if length > MAX_FRAME {
        return Err("frame too long");
    }
    let position = parts
        .next()
        .filter(|p| valid_position(p))
        .ok_or("bad position")?;
    if parts.next().is_some() {
        return Err("extra fields in header");
    }
    Ok(Header::Frame { length, position })
}

/// A frame header for `length` bytes leaving the log at `position`.
pub fn frame_header(length: usize, position: &str) -> alloc::string::String {
    alloc::format!("F {length} {position}\n")
}

/// A position is printable ASCII without spaces, short enough for a header.
pub fn valid_position(position: &str) -> bool {
    !position.is_empty()
        && position.len() <= MAX_HEADER - 32
        && position.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses the waiter's answer line `AT <position>` (without its newline).
pub fn parse_at(line: &str) -> Option<&str> {
    line.strip_prefix("AT ").filter(|p| valid_position(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let header = frame_header(12, "abc/1");
        assert_eq!(
            parse_header(header.trim_end().as_bytes()),
            Ok(Header::Frame {
                length: 12,
                position: "abc/1"
            })
        );
        assert_eq!(parse_header(b"END"), Ok(Header::End));
        for bad in [
            &b"F x p"[..],
            b"F 1",
            b"F 1 p q",
            b"G 1 p",
            b"F 99999999 p",
            b"F 1 \xff",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_at("AT -"), Some("-"));
        assert_eq!(parse_at("AT a b"), None);
    }
}
