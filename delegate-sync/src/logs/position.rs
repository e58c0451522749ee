//! Where a relayed log stands, as the proxy's waiter records it (`contract::relay`), and which
//! bytes of a re-read log are new.
//!
//! A position names a byte of one container instance's log by the kubelet's timestamp of its
//! line, the line's rank among lines of that timestamp, and the offset in the line. A log is
//! re-read from the second of that timestamp (the finest `sinceTime` the kubelet takes), so the
//! line is found again whatever was written since. Timestamps, not byte counts, because the
//! kubelet serves only the newest file of a rotated log.

use std::fmt;

use k8s_openapi::jiff::Timestamp;

/// A kubelet log timestamp, exact to the nanosecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Stamp {
    /// Parses the RFC 3339 timestamp the kubelet puts before each line (`timestamps=true`).
    pub fn parse(text: &[u8]) -> Option<Self> {
        let at: Timestamp = std::str::from_utf8(text).ok()?.parse().ok()?;
        Some(Self {
            seconds: at.as_second(),
            nanos: u32::try_from(at.subsec_nanosecond()).ok()?,
        })
    }

    /// The whole second this stamp falls in, for `sinceTime`.
    pub fn second(self) -> Option<Timestamp> {
        Timestamp::from_second(self.seconds).ok()
    }
}

/// After the last byte relayed to a proxy container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Which delegate (its uid's first 8 characters): a replacement starts from its beginning.
    pub delegate: String,
    /// The container's restart count when it wrote the line.
    pub instance: i32,
    pub stamp: Stamp,
    /// Rank of the line among the lines with this stamp.
    pub line: u32,
    /// Bytes of the line relayed (its newline included once whole).
    pub offset: u64,
    /// Bytes relayed to this proxy container in all, for the per-pod limit.
    pub total: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}.{:09}/{}/{}/{}",
            self.delegate,
            self.instance,
            self.stamp.seconds,
            self.stamp.nanos,
            self.line,
            self.offset,
            self.total
        )
    }
}

impl Position {
    /// Parses what [`fmt::Display`] wrote; None for anything else (`-`: nothing relayed yet).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let delegate = parts.next()?.to_string();
        let instance = parts.next()?.parse().ok()?;
        let (seconds, nanos) = parts.next()?.split_once('.')?;
        let stamp = Stamp {
            seconds: seconds.parse().ok()?,
            nanos: nanos.parse().ok().filter(|n| *n < 1_000_000_000)?,
        };
        let line = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let total = parts.next()?.parse().ok()?;
        if parts.next().is_some() || delegate.is_empty() {
            return None;
        }
        Some(Self {
            delegate,
            instance,
            stamp,
            line,
            offset,
            total,
        })
    }
}

/// One piece of a line of the log: `bytes` start `offset` bytes into line `line` of `stamp`.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    pub stamp: Stamp,
    pub line: u32,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// How far past a position a re-read may go without finding it before it is taken as gone
/// (a rotated log): lines of stdout and stderr may reach the log out of timestamp order, but
/// only by moments.
const DISORDER: i64 = 1;

/// Which bytes of a re-read log were not relayed yet.
#[derive(Debug)]
pub struct Resume {
    from: Option<(Stamp, u32, u64)>,
    found: bool,
    passed: bool,
}

impl Resume {
    /// Everything is new.
    pub fn from_start() -> Self {
        Self {
            from: None,
            found: false,
            passed: true,
        }
    }

    /// Bytes up to `position` (in this instance's log) were relayed already.
    pub fn after(position: &Position) -> Self {
        Self {
            from: Some((position.stamp, position.line, position.offset)),
            found: false,
            passed: false,
        }
    }

    /// The new part of `piece` (possibly empty); `gap` is set when the position was never found.
    pub fn keep<'a>(&mut self, piece: &'a Piece) -> (&'a [u8], bool) {
        let Some((stamp, line, offset)) = self.from else {
            return (&piece.bytes, false);
        };
        if self.passed {
            return (&piece.bytes, false);
        }
        if (piece.stamp, piece.line) == (stamp, line) {
            self.found = true;
            let skip = offset.saturating_sub(piece.offset);
            let skip = usize::try_from(skip)
                .unwrap_or(usize::MAX)
                .min(piece.bytes.len());
            return (&piece.bytes[skip..], false);
        }
        if self.found || piece.stamp.seconds > stamp.seconds + DISORDER {
            self.passed = true;
            return (&piece.bytes, !self.found);
        }
        (&[], false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seconds: i64, nanos: u32) -> Stamp {
        Stamp { seconds, nanos }
    }

    fn piece(stamp: Stamp, line: u32, offset: u64, bytes: &str) -> Piece {
        Piece {
            stamp,
            line,
            offset,
            bytes: bytes.as_bytes().to_vec(),
        }
    }

    #[test]
    fn positions_round_trip_and_anything_else_is_none() {
        let position = Position {
            delegate: "1a2b3c4d".into(),
            instance: 2,
            stamp: stamp(1_700_000_000, 5),
            line: 1,
            offset: 17,
            total: 4096,
        };
        let text = position.to_string();
        assert_eq!(text, "1a2b3c4d/2/1700000000.000000005/1/17/4096");
        assert!(contract::relay::valid_position(&text));
        assert_eq!(Position::parse(&text), Some(position));
        for bad in [
            "-",
            "",
            "a/1/2.3/4/5",
            "a/1/2.3/4/5/6/7",
            "a/x/2.3/4/5/6",
            "a/1/2.1000000000/4/5/6",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn kubelet_timestamps_parse_to_the_nanosecond() {
        assert_eq!(
            Stamp::parse(b"2026-12-06T15:42:12.123456789Z"),
            Some(stamp(1_796_571_732, 123_456_789))
        );
        // Go's RFC3339Nano drops trailing zeros.
        assert_eq!(
            Stamp::parse(b"2026-12-06T15:42:12.5Z"),
            Some(stamp(1_796_571_732, 500_000_000))
        );
        assert_eq!(Stamp::parse(b"yesterday"), None);
    }

    #[test]
    fn a_re_read_resumes_inside_the_line_it_stopped_in() {
        let t = stamp(10, 0);
        let position = Position {
            delegate: "d".into(),
            instance: 0,
            stamp: t,
            line: 1,
            offset: 3,
            total: 0,
        };
        let mut resume = Resume::after(&position);
        let earlier = piece(stamp(9, 9), 0, 0, "old\n");
        let same_stamp_first = piece(t, 0, 0, "a\n");
        let the_line = piece(t, 1, 0, "abcdef\n");
        let next = piece(stamp(10, 1), 0, 0, "new\n");
        assert_eq!(resume.keep(&earlier), (&b""[..], false));
        assert_eq!(resume.keep(&same_stamp_first), (&b""[..], false));
        assert_eq!(resume.keep(&the_line), (&b"def\n"[..], false));
        assert_eq!(resume.keep(&next), (&b"new\n"[..], false));
    }

    #[test]
    fn a_line_cut_in_pieces_is_trimmed_piece_by_piece() {
        let t = stamp(10, 0);
        let position = Position {
            delegate: "d".into(),
            instance: 0,
            stamp: t,
            line: 0,
            offset: 5,
            total: 0,
        };
        let mut resume = Resume::after(&position);
        assert_eq!(resume.keep(&piece(t, 0, 0, "abc")), (&b""[..], false));
        assert_eq!(resume.keep(&piece(t, 0, 3, "defg")), (&b"fg"[..], false));
        assert_eq!(resume.keep(&piece(t, 0, 7, "h\n")), (&b"h\n"[..], false));
    }

    #[test]
    fn a_position_never_found_resumes_after_it_and_says_so() {
        let position = Position {
            delegate: "d".into(),
            instance: 0,
            stamp: stamp(10, 0),
            line: 0,
            offset: 5,
            total: 0,
        };
        let mut resume = Resume::after(&position);
        assert_eq!(
            resume.keep(&piece(stamp(11, 0), 0, 0, "x\n")),
            (&b""[..], false)
        );
        assert_eq!(
            resume.keep(&piece(stamp(12, 0), 0, 0, "y\n")),
            (&b"y\n"[..], true)
        );
        assert_eq!(
            resume.keep(&piece(stamp(12, 1), 0, 0, "z\n")),
            (&b"z\n"[..], false)
        );
    }
}
