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
//!
//! A document chunk's columns are run-length encoded too, and loading one collects or
//! indexes every row they declare (ops, their successors, changes, their dependencies):
//! [`visit_chunks`] reports how many rows of each the chunk declares, summed from the run
//! lengths alone, so that a caller can refuse a document declaring millions of rows in a
//! few bytes before loading it. A bundle chunk is reported without being parsed: parsing
//! one already allocates a counter per op it declares.

use std::ops::ControlFlow;

use crate::change_graph::ids::{
    ACTOR_COL_SPEC, DEPS_COUNT_COL_SPEC, MAX_OP_COL_SPEC, SEQ_COL_SPEC,
};
use crate::columnar::Key;
use crate::op_set2::columns::ids::{ID_ACTOR_COL_SPEC, SUCC_COUNT_COL_SPEC};
use crate::storage::change::Unverified;
use crate::storage::{parse, Change, Chunk, ChunkType, Document, MAGIC_BYTES};
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

/// The rows a document chunk declares, summed from the run lengths of the columns its load
/// decodes row by row (saturating; a column that stops parsing counts up to there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocumentSizes {
    /// Its ops: the rows of the op id column (every other op column must have as many).
    pub ops: u64,
    /// The successors of its ops (the later ops that overwrite or delete them): the sum of
    /// the successor count column.
    pub succs: u64,
    /// Its changes: the most rows any change column the load collects declares (actor,
    /// sequence number, max op, dependency count).
    pub changes: u64,
    /// The dependencies of its changes: the sum of the dependency count column.
    pub deps: u64,
}

/// One chunk of Automerge data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSizes {
    /// A change chunk (compressed or not).
    Change(ChangeSizes),
    /// A document chunk (a saved document): what it declares; its changes are known only
    /// once it is loaded.
    Document(DocumentSizes),
    /// A bundle of changes, not parsed (parsing allocates per declared op). Visiting stops
    /// after it.
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
        if is_bundle(input.unconsumed_bytes()) {
            let _ = f(ChunkSizes::Bundle);
            return;
        }
        let Ok((rest, chunk)) = Chunk::parse(input) else {
            return;
        };
        input = rest.reset();
        let sizes = match &chunk {
            Chunk::Change(change) | Chunk::CompressedChange(change, _) => {
                ChunkSizes::Change(change_sizes(change, max_ops))
            }
            Chunk::Document(doc) => ChunkSizes::Document(document_sizes(doc)),
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

/// Whether the chunk at the start of `bytes` is a bundle: the magic bytes, a 4-byte
/// checksum, then the chunk type.
fn is_bundle(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[..4] == MAGIC_BYTES && bytes[8] == u8::from(ChunkType::Bundle)
}

/// Sums the rows a parsed document chunk declares, from run lengths alone.
fn document_sizes(doc: &Document<'_>) -> DocumentSizes {
    let ops = doc.op_raw_bytes();
    let changes = doc.change_bytes();
    let op_column = |spec| Rows::of(doc.op_metadata.bytes(spec, ops));
    let change_column = |spec| Rows::of(doc.change_meta().bytes(spec, changes));
    let deps = change_column(DEPS_COUNT_COL_SPEC);
    DocumentSizes {
        ops: op_column(ID_ACTOR_COL_SPEC).rows,
        succs: op_column(SUCC_COUNT_COL_SPEC).sum,
        changes: [ACTOR_COL_SPEC, SEQ_COL_SPEC, MAX_OP_COL_SPEC]
            .into_iter()
            .map(|spec| change_column(spec).rows)
            .fold(deps.rows, u64::max),
        deps: deps.sum,
    }
}

/// The rows of a run-length encoded column of integers (Automerge's format: a signed count,
/// then for a count `n > 0` one value repeated `n` times, for `n < 0` `-n` literal values,
/// for 0 an unsigned count of nulls), and the sum of its values read as unsigned (a
/// group's count column: the rows of the group), saturating. Delta columns are such a
/// column of signed deltas. Counting stops where the column stops parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Rows {
    rows: u64,
    sum: u64,
}

impl Rows {
    fn of(mut column: &[u8]) -> Rows {
        let mut rows = Rows::default();
        while !column.is_empty() {
            let Ok(count) = leb128::read::signed(&mut column) else {
                break;
            };
            let values = match count {
                0 => {
                    let Ok(nulls) = leb128::read::unsigned(&mut column) else {
                        break;
                    };
                    rows.rows = rows.rows.saturating_add(nulls);
                    continue;
                }
                n if n > 0 => 1,
                n => n.unsigned_abs(),
            };
            let repeat = count.unsigned_abs() / values;
            for _ in 0..values {
                let Ok(value) = leb128::read::unsigned(&mut column) else {
                    return rows;
                };
                rows.rows = rows.rows.saturating_add(repeat);
                rows.sum = rows.sum.saturating_add(value.saturating_mul(repeat));
            }
        }
        rows
    }
}

