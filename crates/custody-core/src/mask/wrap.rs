//! Line-wrapped encodings: the view of a stream in which wrapped base64 and
//! hex lines are joined again.
//!
//! Encoders wrap their output: GNU `base64` and MIME at 76 characters a
//! line, `openssl base64` and PEM at 64, `xxd -p` at 60 hex digits, with
//! `\n` or `\r\n`. The encoding of a value printed that way is cut by line
//! breaks at places that depend on where it starts in its line, so no fixed
//! pattern covers it. The masker therefore searches a *joined view* of the
//! stream: the line break after every line that ends in a run of at least
//! [`MIN_WRAP`] encoding characters (the whole line, or the end of a line
//! such as `KEY=` followed by the first wrapped line) is left out of the
//! view, so a wrapped block reads as one run and the ordinary base64 and hex
//! forms match it wherever the value starts. A line joined that was not
//! wrapped costs nothing: the view only serves the search. The view is for searching only: the
//! output keeps every line break that is not inside a masked region (the
//! masker puts them back, see [`Break`]).
//!
//! Deciding needs only the line before the break, so the view is built as the
//! stream arrives; only a `\r` at the very end of a chunk waits for the next
//! byte (it is a break only if `\n` follows).

use std::borrow::Cow;
use std::collections::VecDeque;

use zeroize::Zeroizing;

/// A line break is left out of the view when at least this many encoding
/// characters end its line: the narrowest common wrap (`xxd -p`'s 60 hex
/// digits; `openssl base64` and PEM use 64, GNU `base64` and MIME 76).
pub(crate) const MIN_WRAP: usize = 60;

/// Whether `b` can appear in a wrapped base64 (standard or URL-safe, padded)
/// or hex line.
const fn encoding_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

const ENCODING: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = encoding_byte(i as u8);
        i += 1;
    }
    t
};

/// Length of the run of encoding characters that ends `bytes`, counted up to
/// [`MIN_WRAP`].
fn trailing_run(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rev()
        .take(MIN_WRAP)
        .take_while(|&&b| ENCODING[usize::from(b)])
        .count()
}

/// A line break left out of the joined view: it sat just before the view's
/// byte at `pos`, and was `\n` (`crlf` false) or `\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Break {
    /// Position in the joined view of the byte that followed the break.
    pub(crate) pos: u64,
    /// `\r\n` rather than `\n`.
    pub(crate) crlf: bool,
}

impl Break {
    pub(crate) fn bytes(self) -> &'static [u8] {
        if self.crlf { b"\r\n" } else { b"\n" }
    }
}

/// The state of the joined view of one stream.
#[derive(Debug, Default)]
pub(crate) struct Joiner {
    /// Length of the run of encoding characters that ends the current line
    /// so far (counted up to [`MIN_WRAP`]; a held-back `\r` not counted).
    run: usize,
    /// The chunk ended in `\r`, not yet in the view: a break if `\n` follows.
    pending_cr: bool,
    /// Bytes of the joined view so far.
    view_len: u64,
}

impl Joiner {
    pub(crate) fn new() -> Joiner {
        Joiner::default()
    }

    /// A view that starts in the middle of a line ending in `run` encoding
    /// characters (for a value printed right after base64 or hex text).
    pub(crate) fn continuing(run: usize) -> Joiner {
        Joiner {
            run: run.min(MIN_WRAP),
            ..Joiner::default()
        }
    }

    /// Whether the break ending the current line is left out of the view.
    fn joins(&self) -> bool {
        self.run >= MIN_WRAP
    }

    /// Adds `bytes` (no `\n` in them) to the current line.
    fn extend_line(&mut self, bytes: &[u8]) {
        let t = trailing_run(bytes);
        self.run = if t == bytes.len() {
            (self.run + t).min(MIN_WRAP)
        } else {
            t
        };
    }

    fn new_line(&mut self) {
        self.run = 0;
    }

    /// The joined view of `chunk`: the chunk itself when it leaves nothing
    /// out, else a copy in `scratch`. Breaks left out are appended to
    /// `breaks`, in order.
    pub(crate) fn feed<'a>(
        &mut self,
        chunk: &'a [u8],
        scratch: &'a mut Zeroizing<Vec<u8>>,
        breaks: &mut VecDeque<Break>,
    ) -> Cow<'a, [u8]> {
        if chunk.is_empty() {
            return Cow::Borrowed(chunk);
        }
        let carried = std::mem::take(&mut self.pending_cr);
        // A `\r` ending the chunk waits: it is a break only if `\n` follows.
        let (body, held) = match chunk.split_last() {
            Some((b'\r', rest)) => (rest, true),
            _ => (chunk, false),
        };
        // The carried `\r` goes into the view in front of the body unless it
        // turns out to be part of a break that is left out.
        let mut lead = false;
        let mut crlf_first = false;
        if carried {
            if chunk[0] == b'\n' {
                crlf_first = true;
            } else {
                lead = true;
                self.extend_line(b"\r");
            }
        }
        // (index in body, length) of each break left out.
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut cut_total = 0;
        let mut seg = 0;
        for nl in memchr::memchr_iter(b'\n', body) {
            // Most lines are shorter than a wrapped line and start in this
            // chunk: nothing to look at.
            if nl - seg < MIN_WRAP && (seg > 0 || self.run == 0) && !(nl == 0 && crlf_first) {
                self.new_line();
                seg = nl + 1;
                continue;
            }
            let (content_end, crlf) = if nl > seg && body[nl - 1] == b'\r' {
                (nl - 1, true)
            } else if nl == 0 && crlf_first {
                (0, true)
            } else {
                (nl, false)
            };
            self.extend_line(&body[seg..content_end]);
            if self.joins() {
                let pos = self.view_len + u64::from(lead) + (content_end - cut_total) as u64;
                breaks.push_back(Break { pos, crlf });
                cuts.push((content_end, nl + 1 - content_end));
                cut_total += nl + 1 - content_end;
            } else if nl == 0 && crlf_first {
                // The carried `\r` stays, in front of this `\n`.
                lead = true;
            }
            self.new_line();
            seg = nl + 1;
        }
        self.extend_line(&body[seg..]);
        self.pending_cr = held;
        let view = if cuts.is_empty() && !lead && !held {
            Cow::Borrowed(chunk)
        } else {
            scratch.clear();
            scratch.reserve(body.len() + 1);
            if lead {
                scratch.push(b'\r');
            }
            let mut from = 0;
            for (at, len) in cuts {
                scratch.extend_from_slice(&body[from..at]);
                from = at + len;
            }
            scratch.extend_from_slice(&body[from..]);
            Cow::Borrowed(&scratch[..])
        };
        self.view_len += view.len() as u64;
        view
    }

    /// Ends the stream: a held-back `\r` (nothing followed it) as the view's
    /// last byte, if any.
    pub(crate) fn finish(&mut self) -> Option<u8> {
        std::mem::take(&mut self.pending_cr).then(|| {
            self.view_len += 1;
            b'\r'
        })
    }
}
