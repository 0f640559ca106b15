//! Fuzzes what any process of the user's can send the broker's socket:
//! arbitrary bytes as a stream of length-prefixed frames, each read as a
//! client frame. Must never panic, never hand back a frame over the size
//! limit, and a frame it accepts must write back as one it reads the same.
#![no_main]

use custody_broker::protocol::{self, ClientFrame};
use libfuzzer_sys::fuzz_target;

/// A frame it accepted, written back and read again, is the same frame.
fn round_trips(frame: &ClientFrame) {
    let bytes = serde_json::to_vec(frame).expect("an accepted frame serializes");
    let back: ClientFrame =
        serde_json::from_slice(&bytes).expect("a frame the client writes must parse");
    assert_eq!(
        serde_json::to_value(&back).expect("serializes"),
        serde_json::to_value(frame).expect("serializes"),
        "a frame changed on its way back"
    );
}

fuzz_target!(|data: &[u8]| {
    // As a stream of frames, as the socket delivers them.
    let mut stream = data;
    for _ in 0..64 {
        match protocol::read_frame(&mut stream) {
            Ok(frame) => {
                assert!(frame.len() <= protocol::MAX_FRAME);
                if let Ok(f) = serde_json::from_slice::<ClientFrame>(&frame) {
                    round_trips(&f);
                }
            }
            Err(_) => break,
        }
    }
    // As one frame's body.
    if let Ok(f) = serde_json::from_slice::<ClientFrame>(data) {
        round_trips(&f);
    }
});
