//! Fuzz target `automerge_data`: Automerge data from outside, as a node takes it: the body
//! of `POST /v1/docs/{id}/automerge` (first byte even) or the `data` of an automerge-repo
//! client's sync message (first byte odd).
//!
//! The inflate check (`concordant::limits::InflateLimit`, the budget a node applies) must
//! never panic; what it lets through is loaded as the core would (`load_incremental` into a
//! new document; `receive_sync_message` with a new sync state), which must not panic
//! either. Run with a memory limit (`-rss_limit_mb`, `-malloc_limit_mb`, see README.md):
//! data that passes the check and still allocates far beyond its size is a finding, an
//! amplification the check does not bound yet.

#![no_main]

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;
use concordant::limits::InflateLimit;
use libfuzzer_sys::fuzz_target;

/// Smaller than a node's default, so that a run stays within the fuzzer's memory limit.
const LIMIT: InflateLimit = InflateLimit {
    max_bytes: 16 << 20,
    ratio: 64,
};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if LIMIT.check_data(data).is_ok() {
            let _ = Automerge::new().load_incremental(data);
        }
    } else if LIMIT.check_sync(data).is_ok() {
        if let Ok(msg) = sync::Message::decode(data) {
            let mut doc = Automerge::new();
            let mut state = sync::State::new();
            let _ = doc.receive_sync_message(&mut state, msg);
        }
    }
});
