//! The sizes of the changes in Automerge data, counted without building a document (a
//! concordant patch, see `PATCHED.md`).
//!
//! A change chunk's run-length encoded columns can declare far more ops than it has bytes,
//! and `Change::from_bytes` iterates every declared op to count them. [`visit_chunks`]
//! parses each chunk of some data as loading it would, and for a change chunk counts its ops
//! only up to a cap, so that a caller can refuse a change with too many ops after at most
//! `cap + 1` ops were decoded; and, before decoding any, the predecessors those ops
//! declare, so that a change whose ops declare more predecessors than the cap is refused
//! without allocating them. Nothing is allocated per op beyond the op being decoded.
//! Compressed chunks inflate within the thread's [`crate::inflate_limit`] budget, if any.

use std::ops::ControlFlow;

use crate::columnar::Key;
use crate::storage::change::Unverified;
use crate::storage::{parse, Change, Chunk};
use crate::types::ScalarValue;

/// What one change chunk holds, as far as it was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeSizes {
    /// The bytes of the change chunk, uncompressed, header included.
    pub raw_bytes: usize,
    /// Its ops, counted up to the cap given to [`visit_chunks`] plus one: a count over the
    /// cap means "more than the cap".
    pub ops: usize,
    /// The bytes of the largest value of the ops counted: a string or byte string, a map
    /// key, a mark name.
    pub largest_value: usize,
    /// The predecessors (the earlier ops an op overwrites or deletes) of its first
    /// `cap + 1` ops, read from their count column alone. Over the cap, the ops were not
    /// decoded (`ops` is 0): decoding an op allocates its predecessors, and run-length
    /// encoding can declare billions of them in a few bytes.
    pub preds: usize,
}

/// One chunk of Automerge data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSizes {
    /// A change chunk (compressed or not).
    Change(ChangeSizes),
    /// A document chunk (a saved document): its changes are known only once it is loaded.
    Document,
    /// A bundle of changes: its changes are known only once it is loaded.
    Bundle,
}

/// Parses the chunks of `data` in order and calls `f` with the sizes of each; stops when
/// `f` answers `Break`, at the end of the data, or at the first chunk that does not parse
/// (where a load stops too). A change whose ops do not decode is reported with the ops
/// counted before the bad one.
pub fn visit_chunks(
    data: &[u8],
    max_ops: usize,
    mut f: impl FnMut(ChunkSizes) -> ControlFlow<()>,
) {
    let mut input = parse::Input::new(data);
    while !input.is_empty() {
        let Ok((rest, chunk)) = Chunk::parse(input) else {
            return;
        };
        input = rest.reset();
        let sizes = match &chunk {
            Chunk::Change(change) | Chunk::CompressedChange(change, _) => {
                ChunkSizes::Change(change_sizes(change, max_ops))
            }
            Chunk::Document(_) => ChunkSizes::Document,
            Chunk::Bundle(_) => ChunkSizes::Bundle,
        };
        if f(sizes).is_break() {
            return;
        }
    }
}

/// Counts the ops of a parsed change chunk up to `max_ops + 1`, and its largest value.
fn change_sizes(change: &Change<'_, Unverified>, max_ops: usize) -> ChangeSizes {
    let mut sizes = ChangeSizes {
        raw_bytes: change.bytes().len(),
        ..ChangeSizes::default()
    };
    let counted = max_ops.saturating_add(1);
    sizes.preds = change
        .ops_meta
        .pred_counts(change.ops_data())
        .take(counted)
        .map_while(|n| n.ok().flatten())
        .fold(0usize, |sum, n| {
            sum.saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
        });
    if sizes.preds > max_ops {
        return sizes;
    }
    for op in change.iter_ops().take(counted) {
        let Ok(op) = op else {
            break;
        };
        sizes.ops += 1;
        let key = match &op.key {
            Key::Prop(k) => k.len(),
            Key::Elem(_) => 0,
        };
        let value = match &op.val {
            ScalarValue::Str(s) => s.len(),
            ScalarValue::Bytes(b) | ScalarValue::Unknown { bytes: b, .. } => b.len(),
            _ => 0,
        };
        let mark = op.mark_name.as_ref().map_or(0, |m| m.len());
        sizes.largest_value = sizes.largest_value.max(key).max(value).max(mark);
    }
    sizes
}
