//! Migration of a format-1 [`super::RedbStore`] file to format 2.
//!
//! Format 1 had no index: per-document log bookkeeping was rebuilt in memory on every open.
//! The migration builds the `docs` table from one scan of the `snapshots` keys and one of
//! the `log` keys (values are not read: they stay as they are, checked when read), with
//! unknown heads, and sets the version to 2, all in one durable commit: a crash at any
//! instant leaves the file at version 1, intact, and the next open migrates again.
//!
//! Must not touch: anything but the `docs` table and the version. Memory stays bounded: the
//! log is sorted by document, so only the current document's counters are held.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, Table};

use super::checksum::seal_index;
use super::index::IndexRow;
use super::schema::{db_error, DOCS, FORMAT_VERSION, LOG, META, SNAPSHOTS, VERSION_KEY};
use super::StorageError;

const ACTION: &str = "migrating the store from format 1 to 2";

/// Builds the index of a format-1 file and moves it to [`FORMAT_VERSION`], in one commit.
pub(super) fn migrate_v1(db: &Database, path: &Path) -> Result<(), StorageError> {
    let err = |e: redb::Error| db_error(path, ACTION, e);
    {
        // Both data tables must exist already: opening them for writing would create them.
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
        txn.open_table(LOG).map_err(|e| err(e.into()))?;
    }
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.set_durability(Durability::Immediate);
    let mut documents = 0u64;
    {
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| err(e.into()))?;
        let log = txn.open_table(LOG).map_err(|e| err(e.into()))?;
        let mut docs = txn.open_table(DOCS).map_err(|e| err(e.into()))?;
        // Documents compacted with nothing kept have a snapshot and no log.
        for entry in snapshots.iter().map_err(|e| err(e.into()))? {
            let (id, _) = entry.map_err(|e| err(e.into()))?;
            put(&mut docs, path, id.value(), &IndexRow::default())?;
            documents += 1;
        }
        // Keys sort by (doc, seq): each document's entries are consecutive. A document with a
        // snapshot gets its row again, with its log counted.
        let mut current: Option<(String, IndexRow)> = None;
        for entry in log.iter().map_err(|e| err(e.into()))? {
            let (key, _) = entry.map_err(|e| err(e.into()))?;
            let (id, seq) = key.value();
            let row = match &mut current {
                Some((doc, row)) if doc == id => row,
                _ => {
                    if let Some((doc, row)) = current.take() {
                        put(&mut docs, path, &doc, &row)?;
                        documents += 1;
                    }
                    &mut current.insert((id.to_string(), IndexRow::default())).1
                }
            };
            row.log_len += 1;
            row.next_seq = row.next_seq.max(seq.saturating_add(1));
        }
        if let Some((doc, row)) = current {
            put(&mut docs, path, &doc, &row)?;
            documents += 1;
        }
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert(VERSION_KEY, FORMAT_VERSION)
            .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| StorageError::Commit {
        path: path.to_path_buf(),
        action: ACTION,
        detail: e.to_string(),
    })?;
    tracing::info!(
        path = %path.display(),
        documents,
        "migrated the store from format 1 to {FORMAT_VERSION} (heads unknown until recorded)"
    );
    Ok(())
}

fn put(
    docs: &mut Table<&str, &[u8]>,
    path: &Path,
    doc: &str,
    row: &IndexRow,
) -> Result<(), StorageError> {
    let sealed = seal_index(doc, &row.encode());
    docs.insert(doc, sealed.as_slice())
        .map_err(|e| db_error(path, ACTION, e))?;
    Ok(())
}
