//! A sampling q-gram prefilter: finds the few positions where a pattern may
//! start, so the exact comparison only runs there.
//!
//! Every pattern is at least [`MIN_MASKABLE_LEN`] = 8 bytes long, so an
//! occurrence starting at `p` covers `p..p + 8`, and that range contains the
//! whole 4-byte window starting at the one multiple-of-5 position `w` in
//! `p..p + 5`. So the scan looks at one 4-gram every 5 bytes: a table indexed
//! by a hash of the 4-gram holds a bit for each offset `j` (0–4) at which some
//! pattern's first 8 bytes contain that 4-gram, and each set bit names the
//! candidate start `w - j`. A candidate then passes a second filter, a bitset
//! over a hash of its 8-byte prefix, before the pattern table confirms it.
//!
//! Both tables hold hashes of pattern prefixes, never the bytes themselves;
//! they are many-to-one, so a false positive only costs a verification.

use super::MIN_MASKABLE_LEN;

/// Gram size of the sampled windows.
const Q: usize = 4;
/// Distance between sampled windows: `MIN_MASKABLE_LEN - Q + 1`.
const STRIDE: usize = MIN_MASKABLE_LEN - Q + 1;
/// Largest table, in address bits (1 MiB of `u8`).
const MAX_BITS: u32 = 20;

/// The two filter tables, built from the first 8 bytes of every pattern.
pub(crate) struct Prefilter {
    /// Offset bits per 4-gram hash.
    grams: Box<[u8]>,
    gram_shift: u32,
    /// Bitset over hashes of 8-byte prefixes.
    prefixes: Box<[u64]>,
    prefix_shift: u32,
}

fn gram_hash(x: u32, shift: u32) -> usize {
    (x.wrapping_mul(0x9E37_79B1) >> shift) as usize
}

fn prefix_hash(x: u64, shift: u32) -> usize {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// Address bits for a table holding `n` entries at about 1/16 load.
fn bits_for(n: usize, min: u32) -> u32 {
    let want = n.saturating_mul(16).max(1);
    (usize::BITS - (want - 1).leading_zeros()).clamp(min, MAX_BITS)
}

impl Prefilter {
    /// Builds the tables from the patterns' 8-byte prefixes (every pattern is
    /// at least that long; shorter ones are ignored and never match).
    pub(crate) fn new<'a>(patterns: impl Iterator<Item = &'a [u8]> + Clone) -> Prefilter {
        let n = patterns.clone().count();
        let gram_bits = bits_for(n * STRIDE, 10);
        let prefix_bits = bits_for(n, 12).max(12);
        let mut grams = vec![0u8; 1 << gram_bits].into_boxed_slice();
        let mut prefixes = vec![0u64; (1usize << prefix_bits) / 64].into_boxed_slice();
        let gram_shift = 32 - gram_bits;
        let prefix_shift = 64 - prefix_bits;
        for pattern in patterns {
            let Some(head) = pattern.first_chunk::<MIN_MASKABLE_LEN>() else {
                continue;
            };
            for j in 0..STRIDE {
                let g = u32::from_le_bytes([head[j], head[j + 1], head[j + 2], head[j + 3]]);
                grams[gram_hash(g, gram_shift)] |= 1 << j;
            }
            let h = prefix_hash(u64::from_le_bytes(*head), prefix_shift);
            prefixes[h / 64] |= 1 << (h % 64);
        }
        Prefilter {
            grams,
            gram_shift,
            prefixes,
            prefix_shift,
        }
    }

    /// Calls `found(p)`, in increasing order, for every `p` in `from..to` with
    /// `p + 8 <= hay.len()` at which a pattern may start. Every `p` at which a
    /// pattern does start is reported.
    #[inline]
    pub(crate) fn candidates(
        &self,
        hay: &[u8],
        from: usize,
        to: usize,
        mut found: impl FnMut(usize),
    ) {
        let to = to.min((hay.len() + 1).saturating_sub(MIN_MASKABLE_LEN));
        if from >= to {
            return;
        }
        // Window `w` covers the starts `w - 4 ..= w`; the first is at
        // `from + 4`, the last needs `w - 4 < to`, i.e. `w <= to + 3`, and
        // reads `w..w + 4`.
        let first = from + STRIDE - 1;
        let end = (to + STRIDE - 1 + Q - 1).min(hay.len());
        let Some(region) = hay.get(first..end) else {
            return;
        };
        let grams = &*self.grams;
        let shift = self.gram_shift;
        let mut chunks = region.chunks_exact(STRIDE);
        let mut w = first;
        for c in &mut chunks {
            let m = grams[gram_hash(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), shift)];
            if m != 0 {
                self.expand(hay, w, m, from, to, &mut found);
            }
            w += STRIDE;
        }
        if let [a, b, c, d] = *chunks.remainder() {
            let m = grams[gram_hash(u32::from_le_bytes([a, b, c, d]), shift)];
            if m != 0 {
                self.expand(hay, w, m, from, to, &mut found);
            }
        }
    }

    /// The second-level check for the candidates named by window `w`.
    #[inline(never)]
    fn expand(
        &self,
        hay: &[u8],
        w: usize,
        m: u8,
        from: usize,
        to: usize,
        found: &mut impl FnMut(usize),
    ) {
        for j in (0..STRIDE).rev() {
            if m & (1 << j) == 0 {
                continue;
            }
            let p = w - j;
            if p < from || p >= to {
                continue;
            }
            let Some(head) = hay
                .get(p..)
                .and_then(|s| s.first_chunk::<MIN_MASKABLE_LEN>())
            else {
                continue;
            };
            let h = prefix_hash(u64::from_le_bytes(*head), self.prefix_shift);
            if self.prefixes[h / 64] & (1 << (h % 64)) != 0 {
                found(p);
            }
        }
    }

    /// Approximate heap size of the tables, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.grams.len() + self.prefixes.len() * 8
    }
}
