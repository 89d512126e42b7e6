//! Bounds on inflating compressed Automerge data (a concordant patch, see `PATCHED.md`).
//!
//! Automerge deflate-compresses change chunks (chunk type 2) and the columns of documents
//! and bundles over a size threshold, and inflates them while it parses. A few hundred bytes
//! of deflate inflate to megabytes, so data from an untrusted source could make the parser
//! allocate a thousand times its size before any other check. [`with_inflate_limit`] runs a
//! closure with a budget of inflated bytes on this thread: every inflation inside it is
//! charged to the budget and fails (as an `io::Error` inside Automerge's own error types)
//! before its output grows past what is left; the closure's result then comes back as
//! `Err(InflateLimitExceeded)`, also when Automerge swallowed the failure (a partial load
//! ignores a bad chunk after the first). [`check_inflated_size`] parses data under such a
//! budget without building a document: a cheap admission check for untrusted input.
//!
//! Why a budget scoped to a thread and not a `LoadOptions` field: inflation happens deep in
//! parsing (`Chunk::parse`, `RawColumns::uncompress`), reached from every entry point
//! (`load`, `load_incremental`, `Change::from_bytes`, `receive_sync_message`, bundles);
//! passing an option down would change dozens of signatures. A budget also bounds the sum
//! over all the chunks of one input, where a per-chunk cap would multiply by the chunks.
//! Outside any scope nothing changes: inflation is unbounded, as upstream.

use std::cell::Cell;
use std::io::Read;

/// Inflating compressed data would have produced more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("compressed data inflates to more than the limit of {limit} bytes")]
pub struct InflateLimitExceeded {
    /// The budget of the scope, in inflated bytes.
    pub limit: usize,
}

#[derive(Clone, Copy)]
struct Budget {
    limit: usize,
    remaining: usize,
    exceeded: bool,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Puts the enclosing budget back when the scope ends, also on unwinding.
struct Scope {
    outer: Option<Budget>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let inner = BUDGET.with(Cell::get);
        let outer = self.outer.map(|mut outer| {
            if let Some(inner) = inner {
                // What the inner scope used counts against the outer one too.
                let used = inner.limit - inner.remaining;
                outer.remaining = outer.remaining.saturating_sub(used);
                outer.exceeded |= inner.exceeded;
            }
            outer
        });
        BUDGET.with(|b| b.set(outer));
    }
}

/// Runs `f` with at most `limit` bytes inflated, in all, by the Automerge parsing it does on
/// this thread (nested in another scope: at most what that one has left). An inflation that
/// would go past the budget stops there, before allocating beyond it, and fails; if any did,
/// the result is `Err`, whatever `f` returned.
pub fn with_inflate_limit<R>(
    limit: usize,
    f: impl FnOnce() -> R,
) -> Result<R, InflateLimitExceeded> {
    let outer = BUDGET.with(Cell::get);
    let limit = outer.map_or(limit, |o| limit.min(o.remaining));
    let _scope = Scope { outer };
    BUDGET.with(|b| {
        b.set(Some(Budget {
            limit,
            remaining: limit,
            exceeded: false,
        }))
    });
    let result = f();
    match BUDGET.with(Cell::get) {
        Some(b) if b.exceeded => Err(InflateLimitExceeded { limit: b.limit }),
        _ => Ok(result),
    }
}

/// Parses every chunk of `data` (a saved document, changes, compressed changes, bundles, or
/// several of them concatenated) as loading it would, inflating what is compressed, without
/// building a document, within a budget of `limit` inflated bytes. Returns the bytes
/// inflated. Data that is not valid Automerge is not this check's concern: it stops at the
/// first chunk that does not parse (where a load stops too) and answers `Ok`.
pub fn check_inflated_size(data: &[u8], limit: usize) -> Result<usize, InflateLimitExceeded> {
    let used = with_inflate_limit(limit, || {
        let mut input = crate::storage::parse::Input::new(data);
        while !input.is_empty() {
            match crate::storage::Chunk::parse(input) {
                Ok((rest, _chunk)) => input = rest.reset(),
                Err(_) => break,
            }
        }
        BUDGET.with(Cell::get).map_or(0, |b| b.limit - b.remaining)
    })?;
    Ok(used)
}

/// Inflates the raw deflate stream `compressed`, appending to `out`; charged to the
/// thread's budget if a [`with_inflate_limit`] scope is active. Returns the bytes appended.
pub(crate) fn inflate(compressed: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut decoder = flate2::bufread::DeflateDecoder::new(compressed);
    let Some(budget) = BUDGET.with(Cell::get) else {
        return decoder.read_to_end(out);
    };
    let start = out.len();
    // One byte more than the budget tells "exactly the budget" from "more".
    let cap = (budget.remaining as u64).saturating_add(1);
    let read = decoder.by_ref().take(cap).read_to_end(out);
    let got = out.len() - start;
    if got > budget.remaining {
        out.truncate(start);
        out.shrink_to(start);
        BUDGET.with(|b| {
            b.set(Some(Budget {
                remaining: 0,
                exceeded: true,
                ..budget
            }))
        });
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            InflateLimitExceeded {
                limit: budget.limit,
            },
        ));
    }
    BUDGET.with(|b| {
        b.set(Some(Budget {
            remaining: budget.remaining - got,
            ..budget
        }))
    });
    read?;
    Ok(got)
}
