//! placeholder (masking engine in progress)

/// Values shorter than this are not masked.
pub const MIN_MASKABLE_LEN: usize = 8;
