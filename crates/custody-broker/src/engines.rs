//! Masking engines, built once per set of values.
//!
//! Building an engine derives every encoded form of every value (about
//! 16 ms for 1,000 values); a run whose variables hold the same values as
//! an earlier one reuses its engine. Engines are keyed by a salted SHA-256
//! of the names and values (the salt is random per broker, so the keys say
//! nothing about a value even next to a memory dump of this process). At
//! most [`KEPT`] are kept; locking the vault drops them all (their patterns
//! zeroize on drop). Runs with dynamic credentials build their own: a
//! minted value is new each time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use custody_core::mask::MaskingEngine;
use sha2::{Digest, Sha256};

/// Engines kept.
const KEPT: usize = 8;

/// The engine cache: see the module docs.
pub struct Engines {
    salt: [u8; 32],
    kept: Mutex<VecDeque<([u8; 32], Arc<MaskingEngine>)>>,
}

impl Default for Engines {
    fn default() -> Self {
        Engines {
            salt: custody_core::crypto::random_array().unwrap_or([0; 32]),
            kept: Mutex::new(VecDeque::new()),
        }
    }
}

impl Engines {
    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<([u8; 32], Arc<MaskingEngine>)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine for `values` (names and values, in a fixed order): kept,
    /// or built now (outside the cache's lock) and kept.
    pub fn for_values(&self, values: &[(&str, &[u8])]) -> Arc<MaskingEngine> {
        let mut h = Sha256::new();
        h.update(self.salt);
        for (name, value) in values {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((value.len() as u64).to_le_bytes());
            h.update(value);
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some((_, e)) = self.kept().iter().find(|(k, _)| *k == key) {
            return Arc::clone(e);
        }
        let engine = Arc::new(MaskingEngine::new(values.iter().copied()));
        let mut kept = self.kept();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back((key, Arc::clone(&engine)));
        engine
    }

    /// Drops every kept engine (the vault was locked).
    pub fn clear(&self) {
        self.kept().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_values_share_an_engine_and_others_do_not() {
        let e = Engines::default();
        let a = e.for_values(&[("A", b"value-one-1234"), ("B", b"value-two-5678")]);
        let again = e.for_values(&[("A", b"value-one-1234"), ("B", b"value-two-5678")]);
        assert!(Arc::ptr_eq(&a, &again));
        // A changed value, or the same bytes under another name: new.
        let changed = e.for_values(&[("A", b"value-one-1235"), ("B", b"value-two-5678")]);
        assert!(!Arc::ptr_eq(&a, &changed));
        let renamed = e.for_values(&[("A", b"value-one-1234"), ("C", b"value-two-5678")]);
        assert!(!Arc::ptr_eq(&a, &renamed));
        e.clear();
        let after = e.for_values(&[("A", b"value-one-1234"), ("B", b"value-two-5678")]);
        assert!(!Arc::ptr_eq(&a, &after));
    }
}
