//! Fuzzes the sealed-record decoder and opener with arbitrary bytes: bytes
//! from a vault file are untrusted. Must never panic; must never open a
//! record that was not sealed under the key; a round trip must be exact.
//! The same bytes also go to the label decoder (the plaintext inside a sealed
//! label): it must never panic, and any label it accepts must re-encode to
//! exactly the bytes it came from and decode back to itself.
#![no_main]

use custody_core::crypto::{self, Key, SealedRecord};
use custody_core::vault::Label;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a label plaintext.
    if let Ok(label) = Label::decode(data) {
        let encoded = label.encode();
        assert_eq!(
            encoded, data,
            "label decoder accepted a non-canonical encoding"
        );
        assert_eq!(Label::decode(&encoded).as_ref(), Ok(&label));
    }

    let key = Key::from_bytes([0x42; 32]);
    // Arbitrary bytes as a stored record: decode and open must fail cleanly.
    if let Ok(rec) = SealedRecord::decode(data) {
        assert_eq!(rec.plaintext_len() + crypto::SEALED_OVERHEAD, data.len());
    }
    assert!(crypto::open(&key, b"custody/v1/value", data).is_err());

    // Arbitrary bytes as a plaintext: seal/open round-trips exactly, and any
    // single flipped bit is rejected.
    let sealed = crypto::seal(&key, b"aad", data).expect("seal");
    let opened = crypto::open(&key, b"aad", &sealed).expect("open");
    assert_eq!(&opened[..], data);
    if !data.is_empty() {
        let mut flipped = sealed.clone();
        let i = usize::from(data[0]) % flipped.len();
        flipped[i] ^= 1 << (data[data.len() - 1] % 8);
        assert!(crypto::open(&key, b"aad", &flipped).is_err());
    }
});
