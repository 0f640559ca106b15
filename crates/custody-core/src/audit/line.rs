//! Bounded line splitting for untrusted audit files.
//!
//! Never holds more than [`MAX_LINE_LEN`] bytes of one line: a longer line
//! is skipped up to its newline and reported as too long.

use std::io::{self, BufRead};

use super::MAX_LINE_LEN;

/// One line as read from the file.
#[derive(Debug)]
pub(crate) struct RawLine<'a> {
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// 1-based line number.
    pub number: u64,
    /// The line's bytes including its newline, if terminated. Empty when
    /// `too_long`.
    pub bytes: &'a [u8],
    /// Whether the line ends with a newline.
    pub terminated: bool,
    /// Whether the line exceeded [`MAX_LINE_LEN`] (its bytes were dropped).
    pub too_long: bool,
}

impl RawLine<'_> {
    /// The content without the trailing newline.
    pub fn content(&self) -> &[u8] {
        match self.bytes.split_last() {
            Some((b'\n', rest)) if self.terminated => rest,
            _ => self.bytes,
        }
    }
}

/// Splits a byte stream into bounded lines. Keeps partial state between
/// calls, so a follower can call it again after more bytes arrive.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Offset of the next unread byte.
    pos: u64,
    /// Offset where the current (partial) line starts.
    start: u64,
    /// Bytes of the current line seen so far (also counts skipped bytes).
    seen: u64,
    /// The current line went over the limit; skipping to its newline.
    skipping: bool,
    lines: u64,
    /// The previous call returned a line; `buf` must be cleared.
    done: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::at(inner, 0, 0)
    }

    /// A reader whose stream starts at byte `offset`, line `lines + 1`.
    pub fn at(inner: R, offset: u64, lines: u64) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            pos: offset,
            start: offset,
            seen: 0,
            skipping: false,
            lines,
            done: false,
        }
    }

    /// Offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next line. At end of input, an unterminated partial line is
    /// returned when `flush_partial`, else kept for the next call and `None`
    /// is returned.
    pub fn next_line(&mut self, flush_partial: bool) -> io::Result<Option<RawLine<'_>>> {
        if self.done {
            self.buf.clear();
            self.seen = 0;
            self.skipping = false;
            self.start = self.pos;
            self.done = false;
        }
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                if self.seen == 0 || !flush_partial {
                    return Ok(None);
                }
                return Ok(Some(self.finish(false)));
            }
            let (take, newline) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if !self.skipping {
                if self.buf.len() + take > MAX_LINE_LEN {
                    self.skipping = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&avail[..take]);
                }
            }
            self.inner.consume(take);
            self.pos += take as u64;
            self.seen += take as u64;
            if newline {
                return Ok(Some(self.finish(true)));
            }
        }
    }

    fn finish(&mut self, terminated: bool) -> RawLine<'_> {
        self.lines += 1;
        self.done = true;
        RawLine {
            offset: self.start,
            number: self.lines,
            bytes: if self.skipping { &[] } else { &self.buf },
            terminated,
            too_long: self.skipping,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn collect(data: &[u8]) -> Vec<(u64, Vec<u8>, bool, bool)> {
        let mut r = LineReader::new(io::BufReader::with_capacity(7, data));
        let mut out = Vec::new();
        while let Some(l) = r.next_line(true).unwrap() {
            out.push((l.offset, l.bytes.to_vec(), l.terminated, l.too_long));
        }
        out
    }

    #[test]
    fn splits_and_bounds() {
        assert!(collect(b"").is_empty());
        assert_eq!(
            collect(b"ab\n\ncd"),
            vec![
                (0, b"ab\n".to_vec(), true, false),
                (3, b"\n".to_vec(), true, false),
                (4, b"cd".to_vec(), false, false),
            ]
        );
        let mut big = vec![b'x'; MAX_LINE_LEN];
        big.push(b'\n');
        big.extend_from_slice(b"ok\n");
        let got = collect(&big);
        assert_eq!(got.len(), 2);
        assert!(got[0].3 && got[0].1.is_empty());
        assert_eq!(
            got[1],
            (MAX_LINE_LEN as u64 + 1, b"ok\n".to_vec(), true, false)
        );
        let mut fits = vec![b'x'; MAX_LINE_LEN - 1];
        fits.push(b'\n');
        assert!(!collect(&fits)[0].3);
    }

    #[test]
    fn partial_line_waits_without_flush() {
        let mut r = LineReader::new(io::BufReader::new(&b"ab\ncd"[..]));
        assert_eq!(r.next_line(false).unwrap().unwrap().bytes, b"ab\n");
        assert!(r.next_line(false).unwrap().is_none());
        assert_eq!(r.next_line(true).unwrap().unwrap().bytes, b"cd");
    }
}
