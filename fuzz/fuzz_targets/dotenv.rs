//! Fuzzes the `.env` parser with arbitrary bytes: `custody import` reads
//! files it did not write. Must never panic, and whatever it parses must
//! survive a `quote` → `parse` round trip unchanged.
#![no_main]

use custody_core::dotenv;
use custody_core::secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = dotenv::parse(data);

    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    for s in &first.skipped {
        assert!(s.line >= 1 && s.line <= lines);
        // Reasons are built from the rules only (duplicates add a valid name).
        let _ = s.to_string();
    }
    let mut prev = 0;
    for e in &first.entries {
        assert!(e.line > prev && e.line <= lines, "entries in file order");
        prev = e.line;
    }

    // Re-serialize every entry as NAME="..." and parse again: same entries,
    // in the same order, nothing skipped.
    let mut file = Vec::new();
    for e in &first.entries {
        file.extend_from_slice(e.name.as_str().as_bytes());
        file.push(b'=');
        file.extend_from_slice(&dotenv::quote(e.value.expose_secret()));
        file.push(b'\n');
    }
    let second = dotenv::parse(&file);
    // Names are unique after last-wins, so not even a duplicate is skipped.
    assert!(second.skipped.is_empty(), "{:?}", second.skipped);
    assert_eq!(first.entries.len(), second.entries.len());
    for (i, (a, b)) in first.entries.iter().zip(&second.entries).enumerate() {
        assert_eq!(a.name, b.name);
        assert_eq!(a.value.expose_secret(), b.value.expose_secret());
        assert_eq!(b.line, i + 1);
    }
});
