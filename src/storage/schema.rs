//! The redb file's schema: its tables, its format version, and what every module that
//! opens them shares (redb errors as [`StorageError`]s, the guard against redb's panics).
//!
//! Owns the names and types of the tables; [`super::redb_store`] (writes),
//! [`super::redb_reader`] (reads) and [`super::migrate`] (format 1 to 2) all take them from
//! here and none of them from another.
//!
//! Tables (format version 2):
//! - `meta: &str -> u64`: `format_version` = [`FORMAT_VERSION`].
//! - `docs: &str -> &[u8]`: the index, one entry per document: its log's next sequence
//!   number and length and its heads ([`super::index`]). Every stored document has one;
//!   written in the same commit as the data it describes.
//! - `snapshots: &str -> &[u8]`: per document, the snapshot of its last compaction.
//! - `log: (&str, u64) -> &[u8]`: per document and sequence number, an appended change.
//!
//! Every value is sealed with a checksum over its key and bytes ([`super::checksum`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::TableDefinition;

use super::StorageError;
use crate::panics::panic_text;

/// The on-disk format version this build reads and writes (it also migrates version 1).
pub const FORMAT_VERSION: u64 = 2;

/// `meta`: the file's format version under [`VERSION_KEY`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `docs`: the index, one sealed entry per document.
pub(super) const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
/// `snapshots`: per document, the snapshot of its last compaction.
pub(super) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `log`: per document and sequence number, an appended change.
pub(super) const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// The key of the format version in `meta`.
pub(super) const VERSION_KEY: &str = "format_version";

/// Maps any redb error to a [`StorageError`] naming `path`.
pub(super) fn db_error(
    path: &Path,
    action: &'static str,
    e: impl Into<redb::Error>,
) -> StorageError {
    let path = path.to_path_buf();
    match e.into() {
        redb::Error::Corrupted(detail) => StorageError::Corrupt { path, detail },
        redb::Error::TableDoesNotExist(name) => StorageError::Corrupt {
            path,
            detail: format!("table `{name}` is missing"),
        },
        redb::Error::DatabaseAlreadyOpen => StorageError::Locked { path },
        redb::Error::Io(source) => StorageError::Io {
            path,
            action,
            source,
        },
        redb::Error::UpgradeRequired(version) => StorageError::Open {
            path,
            detail: format!("written in redb file format {version}, which this build cannot read"),
        },
        other => StorageError::Db {
            path,
            action,
            detail: other.to_string(),
        },
    }
}

/// Runs `f`, turning a panic inside redb (which happens on some damaged files, e.g.
/// truncated ones) into [`StorageError::Corrupt`]: a bad file must never crash the node.
pub(super) fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the database library failed on it (truncated or damaged?): {}",
                panic_text(panic)
            ),
        })
    })
}
