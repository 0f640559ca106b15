//! The pattern table: every distinct form of every value, and the exact,
//! longest-first lookup of the patterns starting at a position.
//!
//! Patterns are grouped by their first 8 bytes (every pattern has at least
//! [`MIN_MASKABLE_LEN`] = 8) and, within a group, ordered longest first, so
//! the first pattern of the group that the text starts with is the longest
//! match there. Groups are found by binary search over their sorted 8-byte
//! keys. Building is a sort, so it stays fast for thousands of values (an
//! Aho-Corasick automaton over the same 1.3 MB of patterns took ~300 ms).

use zeroize::Zeroizing;

use super::MIN_MASKABLE_LEN;
use super::forms::{self, Form};

/// Whether `value` is long enough to mask: at least [`MIN_MASKABLE_LEN`]
/// bytes without its surrounding whitespace and without line breaks.
pub fn long_enough(value: &[u8]) -> bool {
    value
        .trim_ascii()
        .iter()
        .filter(|&&b| b != b'\n' && b != b'\r')
        .count()
        >= MIN_MASKABLE_LEN
}

/// The deduplicated patterns and, for each, the variables that have it.
pub(crate) struct PatternSet {
    /// Variable names, by variable index.
    pub(crate) names: Vec<String>,
    /// Names of variables too short to mask.
    pub(crate) short: Vec<String>,
    /// Sorted by bytes, no duplicates; each with its variables (the first one
    /// labels the pattern).
    pub(crate) patterns: Vec<(Form, Vec<u32>)>,
}

impl PatternSet {
    pub(crate) fn new<N: AsRef<str>, V: AsRef<[u8]>>(
        values: impl IntoIterator<Item = (N, V)>,
    ) -> PatternSet {
        let mut names = Vec::new();
        let mut short = Vec::new();
        let mut all: Vec<(Form, u32)> = Vec::new();
        let mut found = Vec::new();
        for (name, value) in values {
            let (name, value) = (name.as_ref(), value.as_ref());
            let var = u32::try_from(names.len()).unwrap_or(u32::MAX);
            names.push(name.to_owned());
            // Surrounding whitespace and line breaks are no part of a
            // secret's length: the joined view may leave a break out, and
            // what is left must still be long enough to match.
            if !long_enough(value) {
                short.push(name.to_owned());
                continue;
            }
            forms::all_forms(value, &mut found);
            all.extend(found.drain(..).map(|f| (f, var)));
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
        PatternSet {
            names,
            short,
            patterns,
        }
    }
}

/// The 8-byte key of the pattern or text at the start of `bytes`.
#[inline]
fn key(bytes: &[u8]) -> Option<u64> {
    bytes
        .first_chunk::<MIN_MASKABLE_LEN>()
        .map(|k| u64::from_le_bytes(*k))
}

/// The patterns, grouped by 8-byte key, longest first within a group.
pub(crate) struct PatternTable {
    /// All pattern bytes, back to back (zeroized on drop).
    arena: Zeroizing<Vec<u8>>,
    /// `(start, len)` of each pattern in `arena`, by pattern id.
    spans: Vec<(usize, usize)>,
    /// Variables of each pattern, by pattern id (the first one labels it).
    vars: Vec<Box<[u32]>>,
    /// Distinct keys (a pattern's first 8 bytes, so zeroized), sorted; group
    /// `g` is the ids `starts[g]..starts[g + 1]`.
    keys: Zeroizing<Vec<u64>>,
    starts: Vec<usize>,
    /// Length of the longest pattern.
    max_len: usize,
    /// Pattern ids in the lexicographic order of their bytes, to tell
    /// whether some pattern begins with given bytes ([`PatternTable::extends`]).
    sorted: Vec<u32>,
}

impl PatternTable {
    pub(crate) fn new(set: &PatternSet) -> PatternTable {
        // Keys are computed on the fly rather than stored beside the ids, so
        // the only copy of them outlives this function in zeroized memory.
        let key_of = |i: usize| key(&set.patterns[i].0).unwrap_or(0);
        let len_of = |i: usize| set.patterns[i].0.len();
        let mut order: Vec<usize> = (0..set.patterns.len())
            .filter(|&i| len_of(i) >= MIN_MASKABLE_LEN)
            .collect();
        order.sort_unstable_by(|&a, &b| key_of(a).cmp(&key_of(b)).then(len_of(b).cmp(&len_of(a))));
        let total = order.iter().map(|&i| len_of(i)).sum();
        let mut arena = Zeroizing::new(Vec::with_capacity(total));
        let mut spans = Vec::with_capacity(order.len());
        let mut vars = Vec::with_capacity(order.len());
        let mut keys = Zeroizing::new(Vec::new());
        let mut starts = Vec::new();
        for (id, &i) in order.iter().enumerate() {
            let (bytes, v) = &set.patterns[i];
            let k = key_of(i);
            if keys.last() != Some(&k) {
                keys.push(k);
                starts.push(id);
            }
            spans.push((arena.len(), bytes.len()));
            arena.extend_from_slice(bytes);
            vars.push(v.clone().into_boxed_slice());
        }
        starts.push(order.len());
        let max_len = spans.iter().map(|&(_, l)| l).max().unwrap_or(0);
        let mut sorted: Vec<u32> = (0..spans.len() as u32).collect();
        let bytes = |id: u32| {
            let (s, l) = spans[id as usize];
            &arena[s..s + l]
        };
        sorted.sort_unstable_by(|&a, &b| bytes(a).cmp(bytes(b)));
        PatternTable {
            arena,
            spans,
            vars,
            keys,
            starts,
            max_len,
            sorted,
        }
    }

    /// Whether some pattern is longer than `head` and begins with it: bytes
    /// still to come could complete it, so `head` may not be emitted yet.
    pub(crate) fn extends(&self, head: &[u8]) -> bool {
        let bytes = |id: u32| {
            let (s, l) = self.spans[id as usize];
            &self.arena[s..s + l]
        };
        // Patterns beginning with `head` sort together, from the first one
        // not below it.
        let first = self.sorted.partition_point(|&id| bytes(id) < head);
        self.sorted[first..]
            .iter()
            .map(|&id| bytes(id))
            .take_while(|p| p.starts_with(head))
            .any(|p| p.len() > head.len())
    }

    /// Number of patterns.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    /// Every pattern's bytes (for the prefilter).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.spans.iter().map(|&(s, l)| &self.arena[s..s + l])
    }

    /// The variables of pattern `id`.
    pub(crate) fn vars(&self, id: usize) -> &[u32] {
        &self.vars[id]
    }

    /// The ids of the patterns whose key `hay[p..]` starts with, longest
    /// first; empty if none.
    #[inline]
    fn group(&self, hay: &[u8], p: usize) -> std::ops::Range<usize> {
        let Some(k) = hay.get(p..).and_then(key) else {
            return 0..0;
        };
        match self.keys.binary_search(&k) {
            Ok(g) => self.starts[g]..self.starts[g + 1],
            Err(_) => 0..0,
        }
    }

    /// The longest pattern that `hay[p..]` starts with: `(length, id)`.
    #[inline]
    pub(crate) fn longest_at(&self, hay: &[u8], p: usize) -> Option<(usize, usize)> {
        let rest = hay.get(p..)?;
        self.group(hay, p).find_map(|id| {
            let (s, l) = self.spans[id];
            rest.starts_with(&self.arena[s..s + l]).then_some((l, id))
        })
    }

    /// Calls `found(id)` for every pattern that `hay[p..]` starts with.
    pub(crate) fn all_at(&self, hay: &[u8], p: usize, mut found: impl FnMut(usize)) {
        let Some(rest) = hay.get(p..) else { return };
        for id in self.group(hay, p) {
            let (s, l) = self.spans[id];
            if rest.starts_with(&self.arena[s..s + l]) {
                found(id);
            }
        }
    }
}
