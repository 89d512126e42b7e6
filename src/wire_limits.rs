//! The size limits of the peer protocol: the largest frame and message, and the budget
//! the core packs batches into.
//!
//! A leaf: [`crate::config`] checks `[tuning]` against these without depending on the
//! protocol, and [`crate::wire`] (which re-exports them) frames messages with them. Owns
//! the values only; what exceeds them is refused by `wire` and `transport`.

/// Largest frame, in bytes after its header.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Largest message (payload of all its frames together) accepted or produced, in bytes. A
/// message above it (a document change or sync message this large) is refused by the
/// sender, which reports it; see [`crate::wire::WireError::TooLarge`].
pub const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// What the core aims for when it packs changes into one message: well under [`MAX_FRAME`]
/// so that framing and per-item overhead never push a batch over the limit.
pub const BATCH_BUDGET: usize = MAX_FRAME / 4;
