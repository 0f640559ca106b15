//! The masking engine: replaces every secret value, and its common encodings,
//! in a child's output before the output reaches the agent (guarantee G1).
//!
//! A [`MaskingEngine`] is built once per lease from `(variable name, value)`
//! pairs; each output stream gets its own [`Masker`], which takes the stream
//! in chunks of any size and emits the masked bytes. An occurrence is replaced
//! by `[masked:NAME]`.
//!
//! # What is matched
//! For every value of at least [`MIN_MASKABLE_LEN`] bytes: the exact bytes;
//! lower- and upper-case hex; base64 (standard and URL-safe alphabets, padded
//! and unpadded, and the stable inner run of the encoding at each of the three
//! byte alignments, so a value inside a larger base64 blob is caught);
//! percent-encoding (strict, form `+`, `encodeURIComponent`, Python `quote`,
//! and the reserved-keeping `encodeURI` and requests' `requote_uri`); JSON
//! string escaping (serde/JavaScript, `\/`, ASCII-only `\uXXXX` in lower- and
//! upper-case, Go's HTML-safe escaping, and every character as `\uXXXX`);
//! the value with surrounding whitespace trimmed; and for multi-line values
//! (PEM keys) each line of at least 16 bytes on its own (exact, JSON and
//! percent forms). Forms shorter than [`MIN_MASKABLE_LEN`] are dropped;
//! identical forms are merged.
//!
//! Wrapped encodings (GNU `base64` at 76 columns, `openssl base64` and PEM at
//! 64, `xxd -p` at 60; LF or CRLF) are matched too: the search runs over a
//! joined view of the stream in which the line break after 60 or more
//! encoding characters is left out (`wrap.rs`), and the output keeps every
//! line break outside a masked region.
//!
//! # How
//! Every pattern is at least 8 bytes long, so a sampling q-gram prefilter
//! (`prefilter.rs`: one 4-byte hash lookup every 5 bytes) finds the rare
//! positions where one may start, and the pattern table (`patterns.rs`:
//! patterns grouped by their first 8 bytes, longest first) confirms the
//! longest pattern starting there by exact comparison. The masked regions are
//! the *union* of all occurrence intervals, so when two occurrences overlap,
//! or one value is part of another, no piece of either is left on either side
//! of a mask. A region made of several variables' occurrences is replaced by
//! one label per variable (`[masked:A][masked:B]`), and counts once for each.
//!
//! This is why the engine does not use aho-corasick's stream search: it
//! supports only `MatchKind::Standard`, which leaks (values `abc…` and
//! `abcdef…`: it reports the first and lets the rest through). The masker
//! drives its own search over its held-back tail plus each new chunk, and
//! holds back at most (longest pattern − 1) bytes, whatever the output size.
//! (An anchored leftmost-longest aho-corasick automaton was the first
//! verifier; its build took ~300 ms for 1,000 realistic values, six times the
//! budget, while the sorted table builds in a few milliseconds.)
//!
//! # Not covered (see THREAT-MODEL.md, residual risks)
//! Arbitrary transformations (reversal, encryption, compression), encodings
//! wrapped narrower than 60 columns or with other separators (`xxd` with
//! offsets, `hexdump -C`, `od`), double encodings, a value printed only in
//! part, and values shorter than
//! [`MIN_MASKABLE_LEN`] (reported by [`MaskingEngine::unmasked_short`]). If a
//! value is itself part of a mask label (`[masked:NAME]`), the label shows it.
//!
//! # Secret hygiene
//! Forms are built in [`zeroize::Zeroizing`] buffers; the pattern table keeps
//! them (and its 8-byte group keys) in zeroized buffers, and the intermediate
//! copies are wiped once it is built; the masker's held-back tail is wiped on
//! drop. Not wiped: the prefilter tables, which hold only many-to-one hashes
//! of 8-byte pattern prefixes (a few bits each, not the bytes); the masked
//! output, which the caller owns; and whatever copies of the values the caller
//! passed in. Register-sized temporaries (a `u64` key on the stack) are not
//! scrubbed either.
//! `Debug` shows variable names and counts only; there is no `Display` or
//! `Serialize`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

mod forms;
mod patterns;
mod prefilter;
mod stream;
#[cfg(test)]
mod tests;
mod wrap;

pub use patterns::long_enough;
pub use stream::Masker;

use patterns::{PatternSet, PatternTable};
use prefilter::Prefilter;
use stream::StreamState;

/// Values (not counting surrounding whitespace and line breaks, see
/// [`long_enough`]) and encoded forms shorter than this are not masked: a short
/// pattern such as `admin` or `1234` occurs in ordinary output, so masking it
/// would mangle the text and, by showing where it was masked, confirm the
/// value to the agent. 8 bytes is also what the prefilter relies on.
pub const MIN_MASKABLE_LEN: usize = 8;

/// Masks per variable name, as recorded in the audit log. Only variables that
/// were masked at least once appear.
pub type MaskCounts = BTreeMap<String, u64>;

/// The patterns of one lease's secret values, ready to mask output streams.
///
/// Build it once with [`MaskingEngine::new`], share it in an [`Arc`], and
/// make one [`Masker`] per output stream with [`MaskingEngine::masker`].
pub struct MaskingEngine {
    /// Variable names, by variable index.
    names: Vec<String>,
    /// `[masked:NAME]`, by variable index.
    labels: Vec<Box<[u8]>>,
    /// Names of variables whose value is shorter than [`MIN_MASKABLE_LEN`].
    short: Vec<String>,
    /// Every distinct pattern, with its variables.
    table: PatternTable,
    prefilter: Prefilter,
    /// Length of the longest pattern (0 when there is none).
    max_len: usize,
}

impl MaskingEngine {
    /// Builds the engine from `(variable name, secret value)` pairs.
    ///
    /// Values shorter than [`MIN_MASKABLE_LEN`] are not masked; their names
    /// are listed by [`MaskingEngine::unmasked_short`] so the caller can warn.
    pub fn new<N: AsRef<str>, V: AsRef<[u8]>>(
        values: impl IntoIterator<Item = (N, V)>,
    ) -> MaskingEngine {
        let set = PatternSet::new(values);
        let labels = set
            .names
            .iter()
            .map(|n| format!("[masked:{n}]").into_bytes().into_boxed_slice())
            .collect();
        let table = PatternTable::new(&set);
        let prefilter = Prefilter::new(table.iter());
        let max_len = table.max_len();
        // The forms in `set` are zeroized as it drops here.
        MaskingEngine {
            names: set.names,
            labels,
            short: set.short,
            table,
            prefilter,
            max_len,
        }
    }

    /// A new masker for one output stream.
    pub fn masker(self: &Arc<Self>) -> Masker {
        Masker::new(Arc::clone(self))
    }

    /// Names of the variables whose value is shorter than
    /// [`MIN_MASKABLE_LEN`] and is therefore not masked.
    pub fn unmasked_short(&self) -> &[String] {
        &self.short
    }

    /// Number of distinct patterns (all forms of all values).
    pub fn pattern_count(&self) -> usize {
        self.table.len()
    }

    /// Length of the longest pattern; a masker holds back at most one byte
    /// less than this.
    pub fn longest_pattern_len(&self) -> usize {
        self.max_len
    }

    /// Masks a whole buffer at once; returns the masked bytes and the counts.
    pub fn mask_all(&self, input: &[u8]) -> (Vec<u8>, MaskCounts) {
        let mut state = StreamState::new(self);
        let mut out = Vec::with_capacity(input.len());
        state.push(self, input, &mut out);
        state.finish(self, &mut out);
        (out, state.counts(self))
    }

    /// Names of the variables any form of whose value occurs in `haystack`,
    /// including values that occur only inside another value.
    pub fn find_variables(&self, haystack: &[u8]) -> BTreeSet<String> {
        let mut seen = vec![false; self.names.len()];
        // Search the joined view too, so wrapped encodings are found.
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        let mut breaks = std::collections::VecDeque::new();
        let haystack = &*wrap::Joiner::new().feed(haystack, &mut buf, &mut breaks);
        self.prefilter.candidates(haystack, 0, haystack.len(), |p| {
            self.table.all_at(haystack, p, |pattern| {
                for &v in self.table.vars(pattern) {
                    seen[v as usize] = true;
                }
            });
        });
        self.names
            .iter()
            .zip(seen)
            .filter(|(_, s)| *s)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The variable whose label a pattern gets.
    fn label_var(&self, pattern: usize) -> u32 {
        self.table.vars(pattern).first().copied().unwrap_or(0)
    }
}

impl fmt::Debug for MaskingEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingEngine")
            .field("variables", &self.names)
            .field("unmasked_short", &self.short)
            .field("patterns", &self.table.len())
            .field("longest_pattern_len", &self.max_len)
            .field("prefilter_bytes", &self.prefilter.heap_bytes())
            .finish_non_exhaustive()
    }
}
