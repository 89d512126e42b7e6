//! Fuzz target `automerge_data`: Automerge data from outside, as a node takes it: the body
//! of `POST /v1/docs/{id}/automerge` (first byte even) or the `data` of an automerge-repo
//! client's sync message (first byte odd).
//!
//! The check a node applies first (`concordant::limits::DataLimits`: the inflate budget,
//! the caps on each change, the rows of saved documents) must never panic. What it lets
//! through is loaded as the node would (`load_incremental` into a new document;
//! `receive_sync_message` with a new sync state), with Automerge's panics caught as the
//! node catches them (`core::untrusted`: Automerge 0.12 panics on some malformed data, see
//! `vendor/automerge/PATCHED.md`; the node refuses such data). Run with a memory limit
//! (`-rss_limit_mb`, `-malloc_limit_mb`, see README.md): data that passes the check and
//! still allocates far beyond its size is a finding, an amplification the check does not
//! bound.

#![no_main]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;
use concordant::limits::{ChangeLimits, DataLimits};
use libfuzzer_sys::fuzz_target;

/// Smaller than a node's default, so that a run stays within the fuzzer's memory limit.
const LIMITS: DataLimits = DataLimits {
    max_bytes: 16 << 20,
    ratio: 64,
    change: ChangeLimits {
        max_op_bytes: 1 << 20,
        max_ops: 100_000,
        max_bytes: 4 << 20,
    },
    max_doc_rows: 100_000,
};

/// libfuzzer-sys aborts on any panic from its hook; the panics the node catches must not
/// (a panic out of the check still ends the run: libfuzzer-sys catches it and aborts).
static QUIET: Once = Once::new();

fuzz_target!(|input: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if LIMITS.check_data(data).is_ok() {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                let _ = Automerge::new().load_incremental(data);
            }));
        }
    } else if LIMITS.check_sync(data).is_ok() {
        if let Ok(msg) = sync::Message::decode(data) {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                let mut doc = Automerge::new();
                let mut state = sync::State::new();
                let _ = doc.receive_sync_message(&mut state, msg);
            }));
        }
    }
});
