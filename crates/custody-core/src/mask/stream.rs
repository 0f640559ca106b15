//! Streaming: masks an output stream that arrives in chunks of any size.
//!
//! Positions below are absolute offsets in the stream. A byte can be emitted
//! once every start position that could cover it has been evaluated, and a
//! start `p` can be evaluated once `p + longest pattern` bytes have arrived
//! (or the stream has ended). So after each chunk the masker keeps the last
//! `longest − 1` bytes, whose starts are not yet evaluated, and carries them
//! in front of the next chunk. A mask region still open at that point (a match
//! may yet extend it) is kept as just its end and its variables: its bytes
//! need not be kept, since they will not be emitted.
//!
//! The search runs over the stream's joined view (`wrap.rs`: the line breaks
//! of wrapped base64 and hex lines left out), so positions are positions in
//! that view. The breaks it left out are put back as bytes are emitted,
//! unless they fall inside a masked region.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::wrap::{Break, Joiner};
use super::{MaskCounts, MaskingEngine};

/// Masks one output stream: feed it chunks with [`Masker::push`], then call
/// [`Masker::finish`] when the stream ends.
///
/// Owns an [`Arc`] of its engine, so it is `Send + 'static` and can live on
/// the task that reads the stream.
pub struct Masker {
    engine: Arc<MaskingEngine>,
    state: StreamState,
}

impl Masker {
    /// A masker for one stream, driven by `engine`.
    pub fn new(engine: Arc<MaskingEngine>) -> Masker {
        let state = StreamState::new(&engine);
        Masker { engine, state }
    }

    /// Masks the next `chunk` of the stream and appends what can already be
    /// emitted to `out`. Up to (longest pattern − 1) bytes are held back until
    /// the next call or [`Masker::finish`].
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.state.push(&self.engine, chunk, out);
    }

    /// The stream paused: appends every held-back byte that cannot begin a
    /// secret's form (no pattern begins with the bytes from it on), keeping
    /// back only the suffix that could still become one. Output then shows
    /// as it is written, not a pattern's length late. Costs a search per
    /// held-back byte, so call it when the stream goes quiet, not per chunk.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.state.flush(&self.engine, out);
    }

    /// Ends the stream: masks and appends the held-back tail. The masker can
    /// then be used for a new stream; its counts keep accumulating.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.state.finish(&self.engine, out);
    }

    /// Masks per variable so far, for the audit log.
    pub fn counts(&self) -> MaskCounts {
        self.state.counts(&self.engine)
    }

    /// Number of bytes currently held back (never more than the longest
    /// pattern's length − 1).
    pub fn held_back(&self) -> usize {
        self.state.carry.len()
    }

    /// The engine this masker uses.
    pub fn engine(&self) -> &Arc<MaskingEngine> {
        &self.engine
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("engine", &self.engine)
            .field("held_back", &self.state.carry.len())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// The state of one stream, apart from the engine (so [`MaskingEngine::mask_all`]
/// can use it without an `Arc`).
pub(super) struct StreamState {
    /// Bytes whose start positions are not yet evaluated (at most
    /// `longest − 1`); may hold part of a secret, so zeroized.
    carry: Zeroizing<Vec<u8>>,
    /// Stream position of `carry[0]`: every start before it is evaluated.
    carry_pos: u64,
    /// Every byte before this position is emitted or inside a region.
    done_pos: u64,
    /// End of the open mask region, if any.
    region_end: Option<u64>,
    /// Variables of the open region, in order of appearance.
    region_vars: Vec<u32>,
    /// Start of the open mask region (meaningful while `region_end` is set).
    region_start: u64,
    /// Masks per variable index.
    counts: Vec<u64>,
    /// Reused buffer for `carry` + the head of a chunk.
    scratch: Zeroizing<Vec<u8>>,
    /// The joined view's state, its left-out breaks not yet emitted, and a
    /// reused buffer for a chunk's view.
    joiner: Joiner,
    breaks: VecDeque<Break>,
    view: Zeroizing<Vec<u8>>,
}

impl StreamState {
    pub(super) fn new(engine: &MaskingEngine) -> StreamState {
        StreamState {
            carry: Zeroizing::new(Vec::with_capacity(engine.max_len)),
            carry_pos: 0,
            done_pos: 0,
            region_end: None,
            region_vars: Vec::new(),
            region_start: 0,
            counts: vec![0; engine.names.len()],
            scratch: Zeroizing::new(Vec::new()),
            joiner: Joiner::new(),
            breaks: VecDeque::new(),
            view: Zeroizing::new(Vec::new()),
        }
    }

    pub(super) fn counts(&self, engine: &MaskingEngine) -> MaskCounts {
        let mut counts = MaskCounts::new();
        for (name, &n) in engine.names.iter().zip(&self.counts) {
            if n > 0 {
                *counts.entry(name.clone()).or_insert(0) += n;
            }
        }
        counts
    }

    pub(super) fn push(&mut self, engine: &MaskingEngine, chunk: &[u8], out: &mut Vec<u8>) {
        if engine.max_len == 0 {
            out.extend_from_slice(chunk);
            return;
        }
        let mut buf = mem::take(&mut self.view);
        let view = self.joiner.feed(chunk, &mut buf, &mut self.breaks);
        self.push_view(engine, &view, out);
        drop(view);
        self.view = buf;
    }

    /// [`StreamState::push`] for a chunk of the joined view.
    fn push_view(&mut self, engine: &MaskingEngine, chunk: &[u8], out: &mut Vec<u8>) {
        let hold = engine.max_len - 1;
        if !self.carry.is_empty() {
            // The carried starts need up to `hold` bytes of the chunk.
            let mut tmp = mem::take(&mut self.scratch);
            tmp.clear();
            tmp.extend_from_slice(&self.carry);
            tmp.extend_from_slice(&chunk[..chunk.len().min(hold)]);
            let to = self.carry.len().min(tmp.len().saturating_sub(hold));
            self.pass(engine, &tmp, self.carry_pos, to, out);
            self.carry_pos += to as u64;
            let consumed_all = to == self.carry.len();
            self.carry.clear();
            if !consumed_all {
                // The chunk was shorter than `hold`: all of it is in `tmp`.
                self.carry.extend_from_slice(&tmp[to..]);
            }
            tmp.clear();
            self.scratch = tmp;
            if !consumed_all {
                return;
            }
        }
        let to = chunk.len().saturating_sub(hold);
        self.pass(engine, chunk, self.carry_pos, to, out);
        self.carry_pos += to as u64;
        self.carry.extend_from_slice(&chunk[to..]);
    }

    pub(super) fn flush(&mut self, engine: &MaskingEngine, out: &mut Vec<u8>) {
        if engine.max_len == 0 || self.carry.is_empty() {
            return;
        }
        // The first carried start that some pattern could still begin at;
        // every start before it is decided with the bytes at hand (a pattern
        // starting there either fits in the carry or cannot match).
        let undecided = (0..self.carry.len())
            .find(|&q| engine.table.extends(&self.carry[q..]))
            .unwrap_or(self.carry.len());
        if undecided == 0 {
            return;
        }
        let carry = mem::take(&mut self.carry);
        self.pass(engine, &carry, self.carry_pos, undecided, out);
        self.carry_pos += undecided as u64;
        self.carry = carry;
        self.carry.drain(..undecided);
    }

    pub(super) fn finish(&mut self, engine: &MaskingEngine, out: &mut Vec<u8>) {
        if engine.max_len == 0 {
            return;
        }
        if let Some(cr) = self.joiner.finish() {
            self.push_view(engine, &[cr], out);
        }
        let tail = mem::take(&mut self.carry);
        self.pass(engine, &tail, self.carry_pos, tail.len(), out);
        self.carry_pos += tail.len() as u64;
        // Every start is evaluated, so a region left open ends here.
        if self.region_end.is_some() {
            self.close_region(engine, out);
        }
        // Breaks after the last byte (a stream that ends with a wrapped line).
        while let Some(b) = self.breaks.pop_front() {
            if b.pos >= self.done_pos {
                out.extend_from_slice(b.bytes());
            }
        }
        self.carry = tail;
        self.carry.clear();
    }

    /// Emits `buf[from..to]` (`buf[0]` at view position `base`), putting back
    /// the left-out breaks that fall before its bytes. Breaks before the
    /// range were inside a masked region and are dropped.
    fn emit(&mut self, buf: &[u8], base: u64, from: usize, to: usize, out: &mut Vec<u8>) {
        let (a, b) = (base + from as u64, base + to as u64);
        let mut i = from;
        while let Some(&br) = self.breaks.front() {
            if br.pos >= b {
                break;
            }
            self.breaks.pop_front();
            if br.pos < a {
                continue;
            }
            let at = (br.pos - base) as usize;
            out.extend_from_slice(&buf[i..at]);
            out.extend_from_slice(br.bytes());
            i = at;
        }
        out.extend_from_slice(&buf[i..to]);
    }

    /// Evaluates the starts `buf[..to]` (`buf[0]` is at stream position
    /// `base`, which is the first unevaluated start) and emits every byte
    /// before `base + to` that is decided. `buf` must extend `max_len − 1`
    /// bytes past `to`, or to the end of the stream.
    fn pass(
        &mut self,
        engine: &MaskingEngine,
        buf: &[u8],
        base: u64,
        to: usize,
        out: &mut Vec<u8>,
    ) {
        engine.prefilter.candidates(buf, 0, to, |p| {
            if let Some((len, pattern)) = engine.table.longest_at(buf, p) {
                self.on_match(engine, buf, base, p, len, pattern, out);
            }
        });
        let end = base + to as u64;
        if self.region_end.is_some_and(|e| e <= end) {
            // No start at or after `end` can reach back into the region.
            self.close_region(engine, out);
        }
        if self.region_end.is_none() && self.done_pos < end {
            let from = (self.done_pos - base) as usize;
            self.emit(buf, base, from, to, out);
            self.done_pos = end;
        }
    }

    #[allow(clippy::too_many_arguments)] // the hot path's state, passed flat
    #[inline]
    fn on_match(
        &mut self,
        engine: &MaskingEngine,
        buf: &[u8],
        base: u64,
        p: usize,
        len: usize,
        pattern: usize,
        out: &mut Vec<u8>,
    ) {
        let start = base + p as u64;
        let end = start + len as u64;
        let var = engine.label_var(pattern);
        if let Some(region_end) = self.region_end {
            if start < region_end {
                // Overlaps the open region: the union grows.
                if end > region_end {
                    self.region_end = Some(end);
                    if !self.region_vars.contains(&var) {
                        self.region_vars.push(var);
                    }
                }
                return;
            }
            self.close_region(engine, out);
        }
        // `done_pos` is at or after `base` here: the last region ended at or
        // before `start`, and after the previous pass's end.
        let from = (self.done_pos - base) as usize;
        self.emit(buf, base, from, p, out);
        self.region_start = start;
        self.region_end = Some(end);
        self.region_vars.push(var);
    }

    fn close_region(&mut self, engine: &MaskingEngine, out: &mut Vec<u8>) {
        // A break just before the region stays; those inside it go with it.
        let end = self.region_end.unwrap_or(self.region_start);
        while let Some(&br) = self.breaks.front() {
            if br.pos >= end {
                break;
            }
            self.breaks.pop_front();
            if br.pos == self.region_start && br.pos >= self.done_pos {
                out.extend_from_slice(br.bytes());
            }
        }
        for &v in &self.region_vars {
            out.extend_from_slice(&engine.labels[v as usize]);
            self.counts[v as usize] += 1;
        }
        self.region_vars.clear();
        if let Some(end) = self.region_end.take() {
            self.done_pos = end;
        }
    }
}
