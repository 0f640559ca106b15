//! Fuzzes the audit-log verifier and reader with arbitrary bytes as an
//! `audit.log`: the file is untrusted. Must never panic, never accept a
//! chain it could not have written, and stay within its line bound.
#![no_main]

use custody_core::audit::{self, AuditHead, Since, VerifyError};
use custody_core::crypto::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The key seed corpora are written with, so valid prefixes get deep.
    let key = Key::from_bytes([0x42; 32]);
    let first = data.first().copied().unwrap_or(0);
    let expected = AuditHead {
        seq: u64::from(first % 8),
        hash: [first; 32],
    };
    for head in [None, Some(&expected)] {
        match audit::verify_reader(data, &key, head) {
            Ok(report) => {
                assert_eq!(report.bytes, data.len() as u64);
                assert!(data.is_empty() || data.ends_with(b"\n"));
                assert!(report.records <= report.head.seq);
            }
            Err(VerifyError::Bad { seq, offset, .. }) => {
                assert!(seq >= 1);
                assert!(offset <= data.len() as u64);
            }
            Err(VerifyError::Io(e)) => panic!("in-memory read failed: {e}"),
            Err(_) => {}
        }
    }
    let since = match first % 3 {
        0 => None,
        1 => Some(Since::Seq(u64::from(first))),
        _ => audit::parse_rfc3339("2026-01-01T00:00:00Z").map(Since::Time),
    };
    for item in audit::read_from(data, since) {
        if let Ok(record) = item {
            assert!(record.mac.len() < audit::MAX_LINE_LEN);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = audit::parse_rfc3339(text);
    }
});
