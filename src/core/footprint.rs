//! An estimate of the memory a loaded Automerge document holds, which the document cache
//! counts against its `cache_bytes` budget. Measuring the document (walking its columns,
//! or saving it) would cost about as much as loading it; the estimate needs only lengths:
//! the bytes of Automerge data the document was built from, uncompressed, and Automerge's
//! counts of changes, ops and objects (`ReadDoc::stats`, lengths only).
//!
//! Automerge 0.12 holds a document's ops in run-length encoded columns much like its saved
//! form, so its uncompressed data covers the ops and their values, give or take: some
//! columns hold more than their saved form (20 maps of 500 fields: ~1.45 times). Besides,
//! every change costs a node of the change graph, every object an entry of the object
//! index, and every document a fixed amount. Measured with a counting allocator
//! (`tests/doc_memory.rs`, which checks that the estimate is at least the memory and at most
//! 4 times it for each shape there; it is 1.1 to 2.5 times):
//! - a document with one op holds ~11.5 KB (empty: ~7.8 KB);
//! - a change holds ~170–210 bytes besides its ops (1,000 one-op changes: ~171 KB);
//! - an object holds ~36–55 bytes besides its ops (10,000 empty maps in a list: ~356 KB,
//!   although they save to 172 bytes; 2,000 of them: ~98 KB);
//! - ops hold about their uncompressed saved size: text typed in one change ~1 byte per
//!   character, map keys with numbers ~16 bytes per key, 1,000 strings of 1 KB ~1 MB,
//!   whatever they deflate to.

use automerge::Stats;

/// Bytes of a document however small (with the cache's own entry for it).
pub const PER_DOC: usize = 13 * 1024;
/// Bytes of a change besides its data.
pub const PER_CHANGE: usize = 256;
/// Bytes of an object besides its data.
pub const PER_OBJECT: usize = 64;
/// Bytes of an op besides its data.
pub const PER_OP: usize = 1;

/// The memory a document holds, estimated from `data`, the bytes of uncompressed Automerge
/// data it was built from (see [`uncompressed_len`] and `Change::raw_bytes`; counted 1.5
/// times), and its `stats`.
pub fn estimate(data: usize, stats: &Stats) -> usize {
    let count = |n: u64, each: usize| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_mul(each)
    };
    PER_DOC
        .saturating_add(data.saturating_add(data / 2))
        .saturating_add(count(stats.num_changes, PER_CHANGE))
        .saturating_add(count(stats.num_objects, PER_OBJECT))
        .saturating_add(count(stats.num_ops, PER_OP))
}

/// The length of saved Automerge data (a document, or changes) with its compressed chunks
/// and columns counted at their inflated size as well (a little more than the data
/// uncompressed: the compressed bytes count too). Inflates them once more, without building
/// anything.
pub fn uncompressed_len(saved: &[u8]) -> usize {
    let inflated = automerge::inflate_limit::check_inflated_size(saved, usize::MAX).unwrap_or(0);
    saved.len().saturating_add(inflated)
}
