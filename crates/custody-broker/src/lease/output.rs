//! A lease's output: each stream masked and sent a line at a time, and the
//! tail kept for the result.

use std::sync::Arc;

use custody_core::mask::{MaskCounts, MaskingEngine};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::protocol::{self, Event};

/// Keeps the last `limit` bytes written to it.
pub(super) struct Tail {
    pub(super) buf: Vec<u8>,
    limit: usize,
    pub(super) cut: bool,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        if self.limit == 0 {
            self.cut |= !bytes.is_empty();
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > self.limit {
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
            self.cut = true;
        }
    }
}

/// How long a stream may be quiet before the masker lets out the held-back
/// bytes that cannot begin a secret (output shows as the child writes it,
/// not a pattern's length late).
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

/// Longest unfinished line the pump keeps waiting for its end.
const LONGEST_LINE: usize = 16 * 1024;

/// Pumps one output stream through a masker until EOF.
///
/// Output goes out a line at a time: the bytes after the last newline wait
/// for the rest of their line, for the stream to pause ([`IDLE_FLUSH`]) or
/// until they are [`LONGEST_LINE`] long.
/// So the two pipes of a run reach the requester as whole lines, not cut
/// where the masker happened to hold bytes back. A read that ends a line
/// also lets out what the masker held back that cannot begin a secret.
pub(super) async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    name: &'static str,
    engine: Arc<MaskingEngine>,
    events: mpsc::Sender<Event>,
    capture_limit: usize,
) -> (MaskCounts, Tail) {
    let mut masker = engine.masker();
    let mut tail = Tail {
        buf: Vec::new(),
        limit: capture_limit,
        cut: false,
    };
    let mut buf = Zeroizing::new(vec![0u8; 16 * 1024]);
    // Masked output not sent yet: the start of an unfinished line.
    let mut out = Vec::with_capacity(16 * 1024);
    // Whether the held-back bytes were already flushed as far as they can
    // be (then, with no unfinished line, the next read waits without a
    // deadline).
    let mut flushed = true;
    loop {
        let read = if out.is_empty() && (flushed || masker.held_back() == 0) {
            reader.read(&mut buf).await
        } else {
            match tokio::time::timeout(IDLE_FLUSH, reader.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    // The child paused: show what cannot begin a secret,
                    // finished line or not.
                    masker.flush(&mut out);
                    emit(&events, name, &out, &mut tail).await;
                    out.clear();
                    flushed = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        masker.push(&buf[..n], &mut out);
        flushed = false;
        if buf[n - 1] == b'\n' {
            masker.flush(&mut out);
            flushed = true;
        }
        if out.len() >= LONGEST_LINE {
            // Not lines (binary, a progress bar): as it comes.
            emit(&events, name, &out, &mut tail).await;
            out.clear();
        } else if let Some(last) = out.iter().rposition(|&b| b == b'\n') {
            emit(&events, name, &out[..=last], &mut tail).await;
            out.drain(..=last);
        }
    }
    masker.finish(&mut out);
    emit(&events, name, &out, &mut tail).await;
    (masker.counts(), tail)
}

async fn emit(events: &mpsc::Sender<Event>, stream: &str, bytes: &[u8], tail: &mut Tail) {
    if bytes.is_empty() {
        return;
    }
    tail.push(bytes);
    // A requester that stopped listening does not stop the lease; its output
    // is simply dropped (the capture is still kept for the result).
    let _ = events
        .send(Event::Output {
            stream: stream.to_owned(),
            data: protocol::b64(bytes),
        })
        .await;
}
