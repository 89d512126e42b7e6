//! Automerge calls on data from outside the cluster (a client's merge or sync message).
//!
//! Automerge 0.12 panics on some malformed data after it has started to apply it (found
//! by `tests/automerge_data_fuzz.rs`; listed in `vendor/automerge/PATCHED.md`, "Panics on
//! data from outside"), which would leave a document half-changed and end the node. Such
//! data is therefore applied to a copy of the document with panics caught, and the copy
//! replaces the document only if it took the data: a refused input, panic or error, leaves
//! the document as it was and is answered as bad data.

use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;

use crate::panics::panic_text;

/// Runs `f` on a copy of `doc`; the copy becomes `doc` if `f` succeeds. A panic of `f` is
/// an error naming it.
pub(crate) fn on_copy<T>(
    doc: &mut Automerge,
    f: impl FnOnce(&mut Automerge) -> Result<T, String>,
) -> Result<T, String> {
    let mut copy = doc.clone();
    match catch_unwind(AssertUnwindSafe(|| f(&mut copy))) {
        Ok(Ok(value)) => {
            *doc = copy;
            Ok(value)
        }
        Ok(Err(e)) => Err(e),
        Err(payload) => Err(format!(
            "Automerge cannot take this data (it panicked: {})",
            panic_text(payload)
        )),
    }
}

/// Receives a client's sync message into `doc` and the client's `session`. One that
/// carries changes is received on copies of both (see the module docs); one without
/// changes (heads, needs, a Bloom filter) in place.
pub(crate) fn receive_sync(
    doc: &mut Automerge,
    session: &mut sync::State,
    msg: sync::Message,
) -> Result<(), String> {
    if msg.changes.is_empty() {
        return doc
            .receive_sync_message(session, msg)
            .map_err(|e| e.to_string());
    }
    let mut trial = session.clone();
    on_copy(doc, |copy| {
        copy.receive_sync_message(&mut trial, msg)
            .map_err(|e| e.to_string())
    })?;
    *session = trial;
    Ok(())
}
