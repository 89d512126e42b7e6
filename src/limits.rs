//! Limits a node checks on what clients send before the replication core sees it, and the
//! count of what they refused (`concordant_limits_refused_total{limit}`).
//!
//! [`InflateLimit`]: Automerge data from outside (the body of
//! `POST /v1/docs/{id}/automerge`, the `data` of an automerge-repo client's sync message)
//! may inflate its compressed chunks and columns to at most
//! `min(max_inflated_bytes, max(max_inflate_ratio × its size, 1 MiB))` bytes in all. The
//! check parses the data within that budget (`automerge::inflate_limit`, patched into the
//! vendored Automerge), off the driver's task and before anything changes, so a
//! decompression bomb costs at most the budget and is refused whole. The core then parses
//! the same bytes, which inflate to what the check measured.
//!
//! Peers' data is not checked here: peers are authenticated nodes of the cluster, and what
//! they forward entered the cluster through one of these checks (or as JSON ops).
//!
//! A leaf: [`crate::api`] and [`crate::sync`] use it; it depends on neither.

use std::collections::BTreeMap;
use std::sync::Mutex;

use automerge::inflate_limit::{check_inflated_size, with_inflate_limit};

use crate::config::Tuning;

/// The label of refusals by the inflate limit in `concordant_limits_refused_total`.
pub const INFLATED_BYTES: &str = "inflated_bytes";

/// Inputs this small may always inflate to this much (tiny compressed changes of
/// repetitive text exceed any ratio, and cannot hurt).
pub const INFLATE_FLOOR: usize = 1 << 20;

/// The inflate budget of Automerge data from outside (from `[tuning]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateLimit {
    /// The most bytes one input may inflate to (`max_inflated_bytes`).
    pub max_bytes: usize,
    /// The most one input may inflate to per byte of its size (`max_inflate_ratio`).
    pub ratio: usize,
}

impl Default for InflateLimit {
    /// The limits of the default [`Tuning`].
    fn default() -> Self {
        InflateLimit::from(&Tuning::default())
    }
}

impl From<&Tuning> for InflateLimit {
    fn from(t: &Tuning) -> Self {
        InflateLimit {
            max_bytes: t.max_inflated_bytes,
            ratio: t.max_inflate_ratio,
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

impl InflateLimit {
    /// The budget of an input of `size` bytes.
    pub fn budget(&self, size: usize) -> usize {
        self.ratio
            .saturating_mul(size)
            .max(INFLATE_FLOOR)
            .min(self.max_bytes)
    }

    /// Checks Automerge data to merge (a saved document, changes, or both concatenated).
    /// Data that is not Automerge passes: loading it reports that.
    pub fn check_data(&self, data: &[u8]) -> Result<(), InflateRefused> {
        let limit = self.budget(data.len());
        check_inflated_size(data, limit)
            .map(drop)
            .map_err(|_| InflateRefused {
                size: data.len(),
                limit,
            })
    }

    /// Checks the changes of an encoded Automerge sync message, within one budget for the
    /// whole message. A message that does not decode passes: the core reports it.
    pub fn check_sync(&self, data: &[u8]) -> Result<(), InflateRefused> {
        let Ok(msg) = automerge::sync::Message::decode(data) else {
            return Ok(());
        };
        let limit = self.budget(data.len());
        with_inflate_limit(limit, || {
            // Each chunk within what the message has left (the scope's budget).
            msg.changes
                .iter()
                .all(|chunk| check_inflated_size(chunk, limit).is_ok())
        })
        .map(drop)
        .map_err(|_| InflateRefused {
            size: data.len(),
            limit,
        })
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
        let limit = InflateLimit {
            max_bytes: 64 << 20,
            ratio: 64,
        };
        assert_eq!(limit.budget(0), INFLATE_FLOOR);
        assert_eq!(limit.budget(100), INFLATE_FLOOR);
        assert_eq!(limit.budget(100_000), 6_400_000);
        assert_eq!(limit.budget(16 << 20), 64 << 20);
        assert_eq!(limit.budget(usize::MAX), 64 << 20);
        let small = InflateLimit {
            max_bytes: 1000,
            ratio: 64,
        };
        assert_eq!(small.budget(10), 1000, "the cap wins over the floor");
    }

    #[test]
    fn ordinary_data_passes_and_garbage_is_left_to_the_loader() {
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", 1).unwrap();
        let limit = InflateLimit::default();
        assert_eq!(limit.check_data(&doc.save()), Ok(()));
        assert_eq!(limit.check_data(b"not automerge"), Ok(()));
        assert_eq!(limit.check_sync(b"not a sync message"), Ok(()));
    }

    #[test]
    fn refusals_are_counted_by_limit() {
        let counters = LimitCounters::default();
        counters.refused(INFLATED_BYTES);
        counters.refused(INFLATED_BYTES);
        assert_eq!(counters.snapshot().get(INFLATED_BYTES), Some(&2));
    }
}
