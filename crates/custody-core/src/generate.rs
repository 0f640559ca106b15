//! Random values that nobody sees: `custody generate` and the agent's
//! `generate_secret` tool.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};

/// Shortest generated value: anything shorter could not be masked.
pub const MIN_LENGTH: usize = crate::mask::MIN_MASKABLE_LEN;
/// Longest generated value.
pub const MAX_LENGTH: usize = 4096;

/// Which characters a generated value is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `A-Z a-z 0-9` (62 symbols, ~5.95 bits each).
    #[default]
    Alnum,
    /// `0-9 a-f` (4 bits each).
    Hex,
    /// `A-Z a-z 0-9 - _` (6 bits each), safe in URLs and file names.
    Base64url,
    /// Alphanumerics plus shell-safe punctuation (~6.3 bits each).
    Symbols,
}

impl Alphabet {
    /// The symbols of this alphabet.
    pub fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Alnum => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            Alphabet::Hex => b"0123456789abcdef",
            Alphabet::Base64url => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            }
            // No quotes, backslash, `$` or backtick: the value must survive
            // being pasted into a shell or a config file unquoted-ish.
            Alphabet::Symbols => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%+,-./:=?@^_~"
            }
        }
    }
}

/// Errors from generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// Length outside [`MIN_LENGTH`]..=[`MAX_LENGTH`].
    #[error("length must be between {MIN_LENGTH} and {MAX_LENGTH} characters, not {0}")]
    Length(usize),
    /// The RNG failed.
    #[error(transparent)]
    Random(#[from] CryptoError),
}

/// A uniformly random value of `length` symbols from `alphabet`, drawn from
/// the operating system's RNG with rejection sampling (no modulo bias).
pub fn random_value(
    length: usize,
    alphabet: Alphabet,
) -> Result<Zeroizing<Vec<u8>>, GenerateError> {
    if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        return Err(GenerateError::Length(length));
    }
    let symbols = alphabet.symbols();
    // Largest multiple of the alphabet size that fits in a byte: bytes at or
    // above it are rejected so every symbol is equally likely.
    let limit = 256 - (256 % symbols.len());
    let mut out = Zeroizing::new(Vec::with_capacity(length));
    let mut pool = Zeroizing::new([0u8; 256]);
    while out.len() < length {
        crypto::fill_random(pool.as_mut())?;
        for &b in pool.iter() {
            if usize::from(b) < limit
                && let Some(&s) = symbols.get(usize::from(b) % symbols.len())
            {
                out.push(s);
                if out.len() == length {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn length_and_alphabet() {
        for a in [
            Alphabet::Alnum,
            Alphabet::Hex,
            Alphabet::Base64url,
            Alphabet::Symbols,
        ] {
            let v = random_value(64, a).unwrap();
            assert_eq!(v.len(), 64);
            assert!(v.iter().all(|c| a.symbols().contains(c)));
        }
        assert!(random_value(7, Alphabet::Hex).is_err());
        assert!(random_value(MAX_LENGTH + 1, Alphabet::Hex).is_err());
    }

    #[test]
    fn roughly_uniform() {
        let v = random_value(4096, Alphabet::Hex).unwrap();
        for s in Alphabet::Hex.symbols() {
            let n = v.iter().filter(|&c| c == s).count();
            // Expected 256; a fair RNG stays far inside these bounds.
            assert!((150..370).contains(&n), "{} appeared {n} times", *s as char);
        }
        assert_ne!(
            random_value(32, Alphabet::Alnum).unwrap(),
            random_value(32, Alphabet::Alnum).unwrap()
        );
    }
}
