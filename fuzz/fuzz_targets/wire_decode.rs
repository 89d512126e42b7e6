//! Fuzz target `wire_decode`: the peer-protocol decoder on arbitrary bytes.
//!
//! `frame_head`, `decode_payload` and `decode_frame` must never panic, and whatever
//! decodes must encode again and decode back to the same message: one that encodes to the
//! same bytes (compared as bytes, since a float that is NaN, which a peer may send in its
//! node view, is not equal to itself).

#![no_main]

use concordant::wire::{decode_frame, decode_payload, encode, frame_head, Message, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// A decoded message encodes to a frame that decodes back to it, whole.
fn round_trips(msg: &Message) {
    let frame = encode(msg).expect("a decoded message encodes");
    let (again, used) = decode_frame(&frame)
        .expect("an encoded message decodes")
        .expect("an encoded frame is complete");
    assert_eq!(encode(&again).expect("it encodes again"), frame);
    assert_eq!(used, frame.len());
}

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        let _ = frame_head(*header);
    }
    // The bytes as a payload (version byte first), and as the start of a stream.
    if let Ok(msg) = decode_payload(data) {
        round_trips(&msg);
    }
    if let Ok(Some((msg, used))) = decode_frame(data) {
        assert!(used <= data.len());
        round_trips(&msg);
    }
});
