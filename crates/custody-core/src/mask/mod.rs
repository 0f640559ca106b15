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
//! percent-encoding (strict, form `+`, `encodeURIComponent`, Python `quote`);
//! JSON string escaping (serde/JavaScript, `\/`, ASCII-only `\uXXXX` in lower-
//! and upper-case, Go's HTML-safe escaping); the value with surrounding
//! whitespace trimmed; and for multi-line values (PEM keys) each line of at
//! least 16 bytes on its own (exact, JSON and percent forms). Forms shorter
//! than [`MIN_MASKABLE_LEN`] are dropped; identical forms are merged.
//!
//! # How
//! Every pattern is at least 8 bytes long, so a sampling q-gram prefilter
//! (see `prefilter.rs`) finds the rare positions where one may start, and an
//! anchored leftmost-longest Aho-Corasick automaton confirms the longest
//! pattern starting there. The masked regions are the *union* of all
//! occurrence intervals, so when two occurrences overlap, or one value is part
//! of another, no piece of either is left on either side of a mask. A region
//! made of several variables' occurrences is replaced by one label per
//! variable (`[masked:A][masked:B]`). aho-corasick's own stream search only
//! supports `MatchKind::Standard`, which leaks (values `abc…`, `abcdef…`: it
//! stops at the first), so the masker drives the automaton itself over its
//! held-back tail plus each new chunk. It holds back at most
//! (longest pattern − 1) bytes, whatever the output size.
//!
//! # Not covered (see THREAT-MODEL.md, residual risks)
//! Arbitrary transformations (reversal, encryption, compression), base64 that
//! is wrapped across lines (MIME/PEM wrapping of an encoded value), double
//! encodings, a value printed only in part, and values shorter than
//! [`MIN_MASKABLE_LEN`] (reported by [`MaskingEngine::unmasked_short`]). If a
//! value is itself part of a mask label (`[masked:NAME]`), the label shows it.
//!
//! # Secret hygiene
//! Forms are built in [`zeroize::Zeroizing`] buffers and wiped once the
//! automaton is built; the masker's held-back tail is wiped on drop. The
//! aho-corasick automaton's internal tables hold the patterns and cannot be
//! zeroized: they stay in freed heap memory after the engine is dropped. The
//! prefilter tables hold only many-to-one hashes of 8-byte pattern prefixes.
//! `Debug` shows variable names and counts only; there is no `Display` or
//! `Serialize`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Anchored, Input, MatchKind, StartKind};

mod forms;
mod prefilter;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::Masker;

use forms::Form;
use prefilter::Prefilter;
use stream::StreamState;

/// Values (and encoded forms) shorter than this are not masked: a short
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
    /// For each pattern id, the variables that have it (first one labels it).
    pattern_vars: Vec<Box<[u32]>>,
    /// Anchored leftmost-longest automaton; `None` when there is no pattern.
    automaton: Option<AhoCorasick>,
    prefilter: Prefilter,
    /// Length of the longest pattern.
    max_len: usize,
}

/// The deduplicated patterns and, for each, the variables that have it.
pub(crate) struct PatternSet {
    pub(crate) names: Vec<String>,
    pub(crate) short: Vec<String>,
    /// Sorted by bytes, no duplicates.
    pub(crate) patterns: Vec<(Form, Vec<u32>)>,
}

impl PatternSet {
    pub(crate) fn new<N: AsRef<str>, V: AsRef<[u8]>>(values: impl IntoIterator<Item = (N, V)>) -> PatternSet {
        let mut names = Vec::new();
        let mut short = Vec::new();
        let mut all: Vec<(Form, u32)> = Vec::new();
        let mut forms = Vec::new();
        for (name, value) in values {
            let (name, value) = (name.as_ref(), value.as_ref());
            let var = u32::try_from(names.len()).unwrap_or(u32::MAX);
            names.push(name.to_owned());
            if value.len() < MIN_MASKABLE_LEN {
                short.push(name.to_owned());
                continue;
            }
            forms::all_forms(value, &mut forms);
            all.extend(forms.drain(..).map(|f| (f, var)));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut patterns: Vec<(Form, Vec<u32>)> = Vec::new();
        for (form, var) in all {
            match patterns.last_mut() {
                Some((last, vars)) if *last == form => {
                    if !vars.contains(&var) {
                        vars.push(var);
                    }
                }
                _ => patterns.push((form, vec![var])),
            }
        }
        PatternSet { names, short, patterns }
    }
}

impl MaskingEngine {
    /// Builds the engine from `(variable name, secret value)` pairs.
    ///
    /// Values shorter than [`MIN_MASKABLE_LEN`] are not masked; their names
    /// are listed by [`MaskingEngine::unmasked_short`] so the caller can warn.
    pub fn new<N: AsRef<str>, V: AsRef<[u8]>>(values: impl IntoIterator<Item = (N, V)>) -> MaskingEngine {
        let set = PatternSet::new(values);
        let labels = set.names.iter().map(|n| format!("[masked:{n}]").into_bytes().into_boxed_slice()).collect();
        let max_len = set.patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let prefilter = Prefilter::new(set.patterns.iter().map(|(p, _)| p.as_slice()));
        let automaton = if set.patterns.is_empty() {
            None
        } else {
            // Only anchored searches: the prefilter finds the start positions.
            // Building cannot fail for patterns this short (the limits are
            // on state ids, far beyond a lease's values); if it ever did,
            // fall back to a slower kind rather than to no masking at all.
            let build = |kind| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .start_kind(StartKind::Anchored)
                    .kind(kind)
                    .build(set.patterns.iter().map(|(p, _)| p.as_slice()))
            };
            build(None)
                .or_else(|_| build(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA)))
                .ok()
        };
        let pattern_vars = set.patterns.iter().map(|(_, v)| v.clone().into_boxed_slice()).collect();
        // `set.patterns` (the forms) are zeroized as `set` drops here.
        MaskingEngine { names: set.names, labels, short: set.short, pattern_vars, automaton, prefilter, max_len }
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
        self.pattern_vars.len()
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
        self.prefilter.candidates(haystack, 0, haystack.len(), |p| {
            // Every pattern starting at `p`: the longest, then the longest
            // that ends before it, and so on.
            let mut end = haystack.len().min(p + self.max_len);
            while let Some((len, pattern)) = self.longest_at(&haystack[..end], p) {
                for &v in self.pattern_vars[pattern].iter() {
                    seen[v as usize] = true;
                }
                end = p + len - 1;
            }
        });
        self.names.iter().zip(seen).filter(|(_, s)| *s).map(|(n, _)| n.clone()).collect()
    }

    /// The longest pattern starting at `hay[p]` that ends within `hay` (which
    /// need not extend more than `max_len` bytes past `p`): `(length, id)`.
    #[inline]
    fn longest_at(&self, hay: &[u8], p: usize) -> Option<(usize, usize)> {
        let end = hay.len().min(p + self.max_len);
        let input = Input::new(&hay[..end]).span(p..end).anchored(Anchored::Yes);
        // The automaton is built for anchored searches, the only error kind
        // `try_find` can report, so an error cannot happen here.
        let m = self.automaton.as_ref()?.try_find(input).ok()??;
        Some((m.len(), m.pattern().as_usize()))
    }

    /// The variable whose label a pattern gets.
    fn label_var(&self, pattern: usize) -> u32 {
        self.pattern_vars[pattern].first().copied().unwrap_or(0)
    }
}

impl fmt::Debug for MaskingEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingEngine")
            .field("variables", &self.names)
            .field("unmasked_short", &self.short)
            .field("patterns", &self.pattern_vars.len())
            .field("longest_pattern_len", &self.max_len)
            .field("prefilter_bytes", &self.prefilter.heap_bytes())
            .finish_non_exhaustive()
    }
}
