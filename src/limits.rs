//! Limits a node checks on what clients send before the replication core sees it, and the
//! count of what they refused (`concordant_limits_refused_total{limit}`).
//!
//! [`DataLimits`]: Automerge data from outside (the body of
//! `POST /v1/docs/{id}/automerge`, the `data` of an automerge-repo client's sync message)
//! may inflate its compressed chunks and columns to at most
//! `min(max_inflated_bytes, max(max_inflate_ratio × its size, 1 MiB))` bytes in all. The
//! check parses the data within that budget (`automerge::inflate_limit`, patched into the
//! vendored Automerge), off the driver's task and before anything changes, so a
//! decompression bomb costs at most the budget and is refused whole. The core then parses
//! the same bytes, which inflate to what the check measured.
//!
//! [`ChangeLimits`]: one change from a client may hold at most `max_change_ops` ops and
//! `max_change_bytes` encoded bytes, and none of its ops a value (string, byte string, map
//! key) over `max_op_bytes`. JSON ops are measured before they are applied
//! ([`crate::ops::change_size`]); Automerge data in the same pass as the inflate budget:
//! each change chunk's ops are decoded only up to the cap (`automerge::change_sizes`,
//! patched in too), so a change whose run-length encoded columns declare millions of ops
//! costs at most `max_change_ops` decoded ops before it is refused; the predecessors those
//! ops declare (the earlier ops they overwrite or delete, also run-length encoded, and
//! allocated when an op is decoded) are counted from their count column first and may not
//! exceed `max_change_ops` either. The changes of a saved
//! document are known only once it is loaded, and loading costs time and memory per row
//! its run-length encoded columns declare: so the rows a document declares (its ops, their
//! successors, its changes, their dependencies) are first summed from the run lengths
//! alone (`automerge::change_sizes` again) and refused over `max_doc_ops`; a document
//! within it is loaded into a scratch document within the same inflate budget and its
//! changes are checked. Bundles (an experimental Automerge format that no client sends,
//! whose parsing allocates per declared op) are refused unparsed.
//!
//! Peers' data is not checked here: peers are authenticated nodes of the cluster, and what
//! they forward entered the cluster through one of these checks (or as JSON ops).
//!
//! A leaf: [`crate::api`], [`crate::sync`] and [`crate::ops`] use it; it depends on none of
//! them.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Mutex;

use automerge::change_sizes::{visit_chunks, ChangeSizes, ChunkSizes, DocumentSizes};
use automerge::inflate_limit::with_inflate_limit;

use crate::config::Tuning;

/// The label of refusals by the inflate limit in `concordant_limits_refused_total`.
pub const INFLATED_BYTES: &str = "inflated_bytes";

/// The label of refusals by `max_op_bytes`.
pub const OP_BYTES: &str = "op_bytes";

/// The label of refusals by `max_change_ops`.
pub const CHANGE_OPS: &str = "change_ops";

/// The label of refusals by `max_change_bytes`.
pub const CHANGE_BYTES: &str = "change_bytes";

/// The label of refusals by `max_doc_ops`.
pub const DOC_OPS: &str = "doc_ops";

/// Every label of refusals of client data, for metrics that show each one from the start.
pub const DATA_LABELS: [&str; 5] = [INFLATED_BYTES, OP_BYTES, CHANGE_OPS, CHANGE_BYTES, DOC_OPS];

/// Inputs this small may always inflate to this much (tiny compressed changes of
/// repetitive text exceed any ratio, and cannot hurt).
pub const INFLATE_FLOOR: usize = 1 << 20;

/// What one change holds, as the change caps count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeSize {
    /// Its ops (for Automerge data counted up to one over the cap, see `exact`).
    pub ops: usize,
    /// Whether `ops` is the whole count (false: counting stopped there).
    pub exact: bool,
    /// Its encoded bytes (for JSON ops an estimate).
    pub bytes: usize,
    /// The bytes of its largest value: a string or byte string, a map key, a text.
    pub largest_value: usize,
    /// The predecessors its ops declare (the earlier ops they overwrite or delete), for
    /// Automerge data (0 for JSON ops, whose predecessors the document decides).
    pub preds: usize,
}

impl From<ChangeSizes> for ChangeSize {
    fn from(s: ChangeSizes) -> Self {
        ChangeSize {
            ops: s.ops,
            exact: false,
            bytes: s.raw_bytes,
            largest_value: s.largest_value,
            preds: s.preds,
        }
    }
}

/// The caps on one change from a client (from `[tuning]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeLimits {
    /// The most bytes of one op's value (`max_op_bytes`).
    pub max_op_bytes: usize,
    /// The most ops in one change (`max_change_ops`).
    pub max_ops: usize,
    /// The most encoded bytes of one change (`max_change_bytes`).
    pub max_bytes: usize,
}

impl From<&Tuning> for ChangeLimits {
    fn from(t: &Tuning) -> Self {
        ChangeLimits {
            max_op_bytes: t.max_op_bytes,
            max_ops: t.max_change_ops,
            max_bytes: t.max_change_bytes,
        }
    }
}

impl Default for ChangeLimits {
    /// The caps of the default [`Tuning`].
    fn default() -> Self {
        ChangeLimits::from(&Tuning::default())
    }
}

/// A change refused by a cap of [`ChangeLimits`]; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefused {
    /// An op's value is over `max_op_bytes`.
    #[error(
        "one op's value is {size} bytes, over this node's limit of {limit} ([tuning] \
         max_op_bytes); nothing was changed"
    )]
    OpBytes {
        /// The bytes of the value.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// A change has more than `max_change_ops` ops.
    #[error(
        "one change has {}{ops} ops, over this node's limit of {limit} ([tuning] \
         max_change_ops); nothing was changed",
        if *.exact { "" } else { "at least " }
    )]
    ChangeOps {
        /// Its ops (as far as counted).
        ops: usize,
        /// Whether that is the whole count.
        exact: bool,
        /// The cap.
        limit: usize,
    },
    /// A change's ops declare more predecessors than `max_change_ops` (Automerge data).
    #[error(
        "one change's ops overwrite or delete at least {preds} earlier ops, over this node's \
         limit of {limit} ([tuning] max_change_ops); nothing was changed"
    )]
    ChangePreds {
        /// The predecessors counted.
        preds: usize,
        /// The cap.
        limit: usize,
    },
    /// A change is over `max_change_bytes`.
    #[error(
        "one change is {bytes} bytes encoded{}, over this node's limit of {limit} ([tuning] \
         max_change_bytes); nothing was changed",
        if *.estimate { " (estimated)" } else { "" }
    )]
    ChangeBytes {
        /// Its encoded bytes.
        bytes: usize,
        /// Whether that is an estimate (JSON ops).
        estimate: bool,
        /// The cap.
        limit: usize,
    },
}

impl ChangeRefused {
    /// Its label in `concordant_limits_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ChangeRefused::OpBytes { .. } => OP_BYTES,
            ChangeRefused::ChangeOps { .. } | ChangeRefused::ChangePreds { .. } => CHANGE_OPS,
            ChangeRefused::ChangeBytes { .. } => CHANGE_BYTES,
        }
    }
}

impl ChangeLimits {
    /// Checks one change's size against the caps: the predecessors its ops declare first
    /// (over the cap, its ops were not counted), its largest value, its ops, its bytes.
    /// `estimate` says that `size.bytes` is an estimate (for messages).
    pub fn check(&self, size: &ChangeSize, estimate: bool) -> Result<(), ChangeRefused> {
        if size.preds > self.max_ops {
            return Err(ChangeRefused::ChangePreds {
                preds: size.preds,
                limit: self.max_ops,
            });
        }
        if size.largest_value > self.max_op_bytes {
            return Err(ChangeRefused::OpBytes {
                size: size.largest_value,
                limit: self.max_op_bytes,
            });
        }
        if size.ops > self.max_ops {
            return Err(ChangeRefused::ChangeOps {
                ops: size.ops,
                exact: size.exact,
                limit: self.max_ops,
            });
        }
        if size.bytes > self.max_bytes {
            return Err(ChangeRefused::ChangeBytes {
                bytes: size.bytes,
                estimate,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// The limits on Automerge data from outside (from `[tuning]`): its inflate budget and
/// the caps on each change it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// The most bytes one input may inflate to (`max_inflated_bytes`).
    pub max_bytes: usize,
    /// The most one input may inflate to per byte of its size (`max_inflate_ratio`).
    pub ratio: usize,
    /// The caps on each change of the data.
    pub change: ChangeLimits,
    /// The most rows a saved document in the data may declare (`max_doc_ops`).
    pub max_doc_rows: u64,
}

impl Default for DataLimits {
    /// The limits of the default [`Tuning`].
    fn default() -> Self {
        DataLimits::from(&Tuning::default())
    }
}

impl From<&Tuning> for DataLimits {
    fn from(t: &Tuning) -> Self {
        DataLimits {
            max_bytes: t.max_inflated_bytes,
            ratio: t.max_inflate_ratio,
            change: ChangeLimits::from(t),
            max_doc_rows: u64::try_from(t.max_doc_ops).unwrap_or(u64::MAX),
        }
    }
}

/// Automerge data refused because it inflates past its budget; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Automerge data ({size} bytes) inflates to more than {limit} bytes, this node's \
     limit for data of that size ([tuning] max_inflate_ratio and max_inflated_bytes); \
     nothing was changed"
)]
pub struct InflateRefused {
    /// The size of the data.
    pub size: usize,
    /// Its budget.
    pub limit: usize,
}

/// Automerge data refused by a [`DataLimits`]; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataRefused {
    /// It inflates past its budget.
    #[error(transparent)]
    Inflate(#[from] InflateRefused),
    /// One of its changes is over a cap.
    #[error(transparent)]
    Change(#[from] ChangeRefused),
    /// A saved document in it declares more rows of one kind than `max_doc_ops`.
    #[error(
        "a saved document in the data declares {count} {rows}, over this node's limit of \
         {limit} ([tuning] max_doc_ops); nothing was changed"
    )]
    DocumentRows {
        /// What it declares too many of: ops, successors, changes or dependencies.
        rows: &'static str,
        /// How many.
        count: u64,
        /// The cap.
        limit: u64,
    },
    /// It holds a bundle (not a size: a format this node does not take from clients).
    #[error(
        "the data holds an Automerge bundle, an experimental format this node does not take \
         from clients (send changes or a saved document); nothing was changed"
    )]
    Bundle,
}

impl DataRefused {
    /// Its label in `concordant_limits_refused_total` (a bundle, refused for its format and
    /// not its size, is not counted there: see [`DataRefused::is_size`]).
    pub fn label(&self) -> &'static str {
        match self {
            DataRefused::Inflate(_) => INFLATED_BYTES,
            DataRefused::Change(refused) => refused.label(),
            DataRefused::DocumentRows { .. } => DOC_OPS,
            DataRefused::Bundle => "bundle",
        }
    }

    /// Whether it was refused for its size (413, counted by label) rather than its format
    /// (400, a bundle).
    pub fn is_size(&self) -> bool {
        !matches!(self, DataRefused::Bundle)
    }
}

impl DataLimits {
    /// The budget of an input of `size` bytes.
    pub fn budget(&self, size: usize) -> usize {
        self.ratio
            .saturating_mul(size)
            .max(INFLATE_FLOOR)
            .min(self.max_bytes)
    }

    /// Checks Automerge data to merge (a saved document, changes, or both concatenated).
    /// Data that is not Automerge passes: loading it reports that.
    pub fn check_data(&self, data: &[u8]) -> Result<(), DataRefused> {
        self.check_within(data, self.budget(data.len()), data.len())
    }

    /// Checks the changes of an encoded Automerge sync message, within one budget for the
    /// whole message. A message that does not decode passes: the core reports it.
    pub fn check_sync(&self, data: &[u8]) -> Result<(), DataRefused> {
        let Ok(msg) = automerge::sync::Message::decode(data) else {
            return Ok(());
        };
        // Automerge loads the chunks of a message as one piece of data: check that.
        let joined: Vec<u8> = msg.changes.iter().flatten().copied().collect();
        self.check_within(&joined, self.budget(data.len()), data.len())
    }

    /// Checks data within an inflate budget of `limit` (`size`: the input's size, for the
    /// message): its change chunks and what its saved documents declare in one pass, then
    /// the changes of its saved documents.
    fn check_within(&self, data: &[u8], limit: usize, size: usize) -> Result<(), DataRefused> {
        let refused = |_| InflateRefused { size, limit };
        let loaded = with_inflate_limit(limit, || self.check_chunks(data)).map_err(refused)??;
        if loaded {
            // Inflates what the first pass did again, so in a budget of its own.
            with_inflate_limit(limit, || self.check_loaded(data)).map_err(refused)??;
        }
        Ok(())
    }

    /// Checks every chunk of Automerge data: each change chunk's sizes (decoding at most
    /// `max_ops + 1` ops of each), the rows each document chunk declares; refuses bundles.
    /// Answers whether the data holds saved documents, whose changes are known only once
    /// loaded.
    fn check_chunks(&self, data: &[u8]) -> Result<bool, DataRefused> {
        let mut outcome = Ok(false);
        visit_chunks(data, self.change.max_ops, |chunk| {
            let checked = match chunk {
                ChunkSizes::Change(sizes) => self
                    .change
                    .check(&sizes.into(), false)
                    .map_err(DataRefused::from),
                ChunkSizes::Document(rows) => self.check_document(&rows),
                ChunkSizes::Bundle => Err(DataRefused::Bundle),
            };
            match checked {
                Ok(()) => {
                    if matches!(chunk, ChunkSizes::Document(_)) {
                        outcome = Ok(true);
                    }
                    ControlFlow::Continue(())
                }
                Err(refused) => {
                    outcome = Err(refused);
                    ControlFlow::Break(())
                }
            }
        });
        outcome
    }

    /// Refuses a saved document that declares more rows of a kind than `max_doc_ops`.
    fn check_document(&self, declared: &DocumentSizes) -> Result<(), DataRefused> {
        for (rows, count) in [
            ("ops", declared.ops),
            ("successors of ops", declared.succs),
            ("changes", declared.changes),
            ("dependencies of changes", declared.deps),
        ] {
            if count > self.max_doc_rows {
                return Err(DataRefused::DocumentRows {
                    rows,
                    count,
                    limit: self.max_doc_rows,
                });
            }
        }
        Ok(())
    }

    /// Loads data holding saved documents into a scratch document, as the node's merge
    /// would, and checks each change it holds. Data that does not load passes: the merge
    /// reports it.
    fn check_loaded(&self, data: &[u8]) -> Result<(), DataRefused> {
        let mut scratch = automerge::Automerge::new();
        if scratch.load_incremental(data).is_err() {
            return Ok(());
        }
        for change in scratch.get_changes(&[]) {
            self.check_chunks(change.raw_bytes())?;
        }
        Ok(())
    }
}

/// Requests, messages and connections refused by a limit, by the limit's label.
#[derive(Debug, Default)]
pub struct LimitCounters {
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl LimitCounters {
    /// One more refusal by `limit`.
    pub fn refused(&self, limit: &'static str) {
        if let Ok(mut map) = self.refused.lock() {
            *map.entry(limit).or_insert(0) += 1;
        }
    }

    /// The refusals so far, by limit.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.refused.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_ratio_between_the_floor_and_the_cap() {
        let limit = DataLimits {
            max_bytes: 64 << 20,
            ratio: 64,
            ..DataLimits::default()
        };
        assert_eq!(limit.budget(0), INFLATE_FLOOR);
        assert_eq!(limit.budget(100), INFLATE_FLOOR);
        assert_eq!(limit.budget(100_000), 6_400_000);
        assert_eq!(limit.budget(16 << 20), 64 << 20);
        assert_eq!(limit.budget(usize::MAX), 64 << 20);
        let small = DataLimits {
            max_bytes: 1000,
            ..limit
        };
        assert_eq!(small.budget(10), 1000, "the cap wins over the floor");
    }

    #[test]
    fn ordinary_data_passes_and_garbage_is_left_to_the_loader() {
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", 1).unwrap();
        let limit = DataLimits::default();
        assert_eq!(limit.check_data(&doc.save()), Ok(()));
        assert_eq!(limit.check_data(b"not automerge"), Ok(()));
        assert_eq!(limit.check_sync(b"not a sync message"), Ok(()));
    }

    /// Small caps for the tests: 4-byte values, 10 ops, 400 bytes per change.
    fn small() -> DataLimits {
        DataLimits {
            change: ChangeLimits {
                max_op_bytes: 4,
                max_ops: 10,
                max_bytes: 400,
            },
            ..DataLimits::default()
        }
    }

    /// A document with one change of a text of `chars` characters under key `key` (so
    /// `chars + 1` ops).
    fn text_doc(key: &str, chars: usize) -> automerge::AutoCommit {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new();
        let text = doc
            .put_object(automerge::ROOT, key, automerge::ObjType::Text)
            .unwrap();
        doc.splice_text(&text, 0, 0, &"a".repeat(chars)).unwrap();
        doc.commit();
        doc
    }

    /// The document's changes as change chunks (compressed where Automerge compresses).
    fn changes(doc: &mut automerge::AutoCommit) -> Vec<u8> {
        doc.get_changes(&[])
            .into_iter()
            .flat_map(|mut c| c.bytes().into_owned())
            .collect()
    }

    fn sync_message(chunks: Vec<Vec<u8>>) -> Vec<u8> {
        automerge::sync::Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            changes: automerge::sync::ChunkList::from(chunks),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        }
        .encode()
    }

    fn label(result: Result<(), DataRefused>) -> Option<&'static str> {
        result.err().map(|e| e.label())
    }

    #[test]
    fn json_sized_changes_pass_at_each_cap_and_are_refused_one_over() {
        let caps = small().change;
        let at = ChangeSize {
            ops: 10,
            exact: true,
            bytes: 400,
            largest_value: 4,
            preds: 10,
        };
        assert_eq!(caps.check(&at, true), Ok(()));
        let over = |size: ChangeSize| caps.check(&size, true).unwrap_err();
        let ops = over(ChangeSize { ops: 11, ..at });
        assert_eq!(ops.label(), CHANGE_OPS);
        assert!(
            ops.to_string().starts_with(
                "one change has 11 ops, over this node's limit of 10 ([tuning] \
                              max_change_ops)"
            ),
            "{ops}"
        );
        let preds = over(ChangeSize { preds: 11, ..at });
        assert_eq!(preds.label(), CHANGE_OPS);
        assert!(
            preds.to_string().contains("at least 11 earlier ops"),
            "{preds}"
        );
        let bytes = over(ChangeSize { bytes: 401, ..at });
        assert_eq!(bytes.label(), CHANGE_BYTES);
        assert!(bytes.to_string().contains("max_change_bytes"), "{bytes}");
        let value = over(ChangeSize {
            largest_value: 5,
            ..at
        });
        assert_eq!(value.label(), OP_BYTES);
        assert_eq!(
            value.to_string(),
            "one op's value is 5 bytes, over this node's limit of 4 ([tuning] max_op_bytes); \
             nothing was changed"
        );
    }

    #[test]
    fn change_chunks_pass_at_the_op_cap_and_are_refused_one_over() {
        let limits = small();
        // A text of 9 characters is 10 ops (the text object and one per character).
        assert_eq!(limits.check_data(&changes(&mut text_doc("t", 9))), Ok(()));
        let refused = limits.check_data(&changes(&mut text_doc("t", 10)));
        assert_eq!(label(refused.clone()), Some(CHANGE_OPS));
        assert!(
            refused.unwrap_err().to_string().contains("at least 11 ops"),
            "counting stops one over the cap"
        );
    }

    #[test]
    fn a_long_key_or_a_large_change_chunk_is_refused() {
        let limits = small();
        assert_eq!(
            limits.check_data(&changes(&mut text_doc("abcd", 1))),
            Ok(())
        );
        let long_key = limits.check_data(&changes(&mut text_doc("abcde", 1)));
        assert_eq!(label(long_key), Some(OP_BYTES));
        let mut doc = text_doc("t", 9);
        let raw = doc.get_changes(&[])[0].raw_bytes().len();
        let fits = DataLimits {
            change: ChangeLimits {
                max_bytes: raw,
                ..limits.change
            },
            ..limits
        };
        assert_eq!(fits.check_data(&changes(&mut doc)), Ok(()));
        let over = DataLimits {
            change: ChangeLimits {
                max_bytes: raw - 1,
                ..limits.change
            },
            ..limits
        };
        assert_eq!(
            label(over.check_data(&changes(&mut doc))),
            Some(CHANGE_BYTES)
        );
    }

    #[test]
    fn the_changes_of_a_saved_document_are_checked() {
        let limits = small();
        assert_eq!(limits.check_data(&text_doc("t", 9).save()), Ok(()));
        assert_eq!(
            label(limits.check_data(&text_doc("t", 10).save())),
            Some(CHANGE_OPS)
        );
        // A saved document followed by change chunks: both are checked.
        let mut doc = text_doc("t", 3);
        let mut data = doc.save();
        let saved = doc.get_heads();
        let text = automerge::ReadDoc::get(&doc, automerge::ROOT, "t")
            .unwrap()
            .unwrap()
            .1;
        automerge::transaction::Transactable::splice_text(&mut doc, &text, 0, 0, "bbbbbbbbbbb")
            .unwrap();
        data.extend(doc.save_after(&saved));
        assert_eq!(label(limits.check_data(&data)), Some(CHANGE_OPS));
    }

    #[test]
    fn the_changes_of_a_sync_message_are_checked() {
        let limits = small();
        let fits = sync_message(vec![changes(&mut text_doc("t", 9))]);
        assert_eq!(limits.check_sync(&fits), Ok(()));
        let over = sync_message(vec![changes(&mut text_doc("t", 10))]);
        assert_eq!(label(limits.check_sync(&over)), Some(CHANGE_OPS));
        let saved = sync_message(vec![text_doc("t", 10).save()]);
        assert_eq!(label(limits.check_sync(&saved)), Some(CHANGE_OPS));
        let long_key = sync_message(vec![changes(&mut text_doc("abcde", 1))]);
        assert_eq!(label(limits.check_sync(&long_key)), Some(OP_BYTES));
    }

    #[test]
    fn refusals_are_counted_by_limit() {
        let counters = LimitCounters::default();
        counters.refused(INFLATED_BYTES);
        counters.refused(INFLATED_BYTES);
        assert_eq!(counters.snapshot().get(INFLATED_BYTES), Some(&2));
    }
}
