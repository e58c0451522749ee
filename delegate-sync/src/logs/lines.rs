//! A container log as the kubelet serves it with `timestamps=true`, cut into [`Piece`]s.
//!
//! Each line starts with its RFC 3339 timestamp and a space. The kubelet joins the pieces the
//! runtime split a long line into (over 16 KiB) under the first piece's timestamp, and ends
//! the log without a newline if the container's last line had none; bytes are passed as they
//! are, UTF-8 or not.

use futures::{AsyncBufRead, AsyncBufReadExt as _};

use super::position::{Piece, Stamp};

/// Longest timestamp accepted (RFC 3339 with nanoseconds and an offset is 35 bytes).
const MAX_STAMP: usize = 64;
/// Largest piece: a longer line comes in several.
pub const MAX_PIECE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the log: {0}")]
    Read(#[from] std::io::Error),
    #[error("a log line does not start with a timestamp: {0:?}")]
    NoStamp(String),
}

/// Reads pieces from a timestamped log.
pub struct Lines<R> {
    reader: R,
    /// Inside a line: its stamp, rank and the offset reached.
    current: Option<(Stamp, u32, u64)>,
    last: Option<(Stamp, u32)>,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            current: None,
            last: None,
        }
    }

    /// True when more bytes are there within `wait`.
    pub async fn more_within(&mut self, wait: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.reader.fill_buf()).await,
            Ok(Ok(buf)) if !buf.is_empty()
        )
    }

    /// The next piece; None at the end of the log.
    pub async fn next(&mut self) -> Result<Option<Piece>, Error> {
        let (stamp, line, offset) = match self.current {
            Some(current) => current,
            None => match self.read_stamp().await? {
                None => return Ok(None),
                Some(stamp) => {
                    let line = match self.last {
                        Some((last, line)) if last == stamp => line + 1,
                        _ => 0,
                    };
                    self.last = Some((stamp, line));
                    (stamp, line, 0)
                }
            },
        };
        let buf = self.reader.fill_buf().await?;
        if buf.is_empty() {
            // The log ends inside a line (a last line without newline, or a cut stream).
            self.current = None;
            return Ok(None);
        }
        let take = match buf.iter().take(MAX_PIECE).position(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None => buf.len().min(MAX_PIECE),
        };
        let bytes = buf[..take].to_vec();
        self.reader.consume_unpin(take);
        let ends_line = bytes.last() == Some(&b'\n');
        self.current = (!ends_line).then_some((stamp, line, offset + take as u64));
        Ok(Some(Piece {
            stamp,
            line,
            offset,
            bytes,
        }))
    }

    async fn read_stamp(&mut self) -> Result<Option<Stamp>, Error> {
        let mut text = Vec::with_capacity(40);
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|&b| b == b' ') {
                Some(space) => {
                    text.extend_from_slice(&buf[..space]);
                    self.reader.consume_unpin(space + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    text.extend_from_slice(buf);
                    self.reader.consume_unpin(n);
                }
            }
            if text.len() > MAX_STAMP {
                break;
            }
        }
        Stamp::parse(&text)
            .map(Some)
            .ok_or_else(|| Error::NoStamp(String::from_utf8_lossy(&text).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pieces(log: &[u8]) -> Vec<Piece> {
        let mut lines = Lines::new(futures::io::BufReader::with_capacity(7, log));
        let mut all = Vec::new();
        while let Some(piece) = lines.next().await.unwrap() {
            all.push(piece);
        }
        all
    }

    fn joined(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.bytes.clone()).collect()
    }

    #[tokio::test]
    async fn lines_keep_their_bytes_and_ranks_and_a_last_partial_line() {
        let log = b"2026-12-06T15:42:12.5Z one\n2026-12-06T15:42:12.5Z \xff\xfe\n2026-12-06T15:42:13Z end";
        let all = pieces(log).await;
        assert_eq!(joined(&all), b"one\n\xff\xfe\nend");
        let starts: Vec<(u32, u64)> = all
            .iter()
            .filter(|p| p.offset == 0)
            .map(|p| (p.line, p.offset))
            .collect();
        assert_eq!(starts, [(0, 0), (1, 0), (0, 0)]);
    }

    #[tokio::test]
    async fn long_lines_come_in_pieces_with_their_offsets() {
        let mut log = b"2026-12-06T15:42:12Z ".to_vec();
        log.extend(std::iter::repeat_n(b'x', 40_000));
        log.push(b'\n');
        let mut lines = Lines::new(futures::io::BufReader::with_capacity(64 * 1024, &log[..]));
        let mut offsets = Vec::new();
        let mut bytes = 0;
        while let Some(piece) = lines.next().await.unwrap() {
            assert!(piece.bytes.len() <= MAX_PIECE);
            offsets.push(piece.offset);
            bytes += piece.bytes.len();
        }
        assert_eq!(bytes, 40_001);
        assert_eq!(offsets[0], 0);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    #[tokio::test]
    async fn a_line_without_a_timestamp_is_an_error() {
        let mut lines = Lines::new(futures::io::BufReader::new(&b"not a stamp\n"[..]));
        assert!(matches!(lines.next().await, Err(Error::NoStamp(_))));
    }
}
