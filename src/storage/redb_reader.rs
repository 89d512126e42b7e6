//! Reads of a [`super::RedbStore`] file: single documents, index entries, the whole index
//! or a page of it, and `load_all`; shared by the store itself and its [`DocReader`] handles.
//!
//! Owns: how stored values are verified on the way out (checksums, index rows, and the
//! agreement of each index row with its document's log). Must not write: every function here
//! runs in a read transaction, which redb runs concurrently with the store's writes and
//! which sees every commit that returned before it began.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use redb::{Database, ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::checksum::{log_key, snapshot_key, unseal, unseal_index};
use super::index::{self, IndexRow, RowRef};
use super::schema::{db_error, guarded, DOCS, LOG, SNAPSHOTS};
use super::{DocReader, Heads, IndexVisitor, StorageError, StoredDoc};

/// What [`Reads::scan_until`] calls per index entry.
type Visit<'a> = dyn FnMut(&str, Option<&[[u8; 32]]>) -> ControlFlow<()> + 'a;

/// Read access to an open database file.
#[derive(Clone, Copy)]
pub(super) struct Reads<'a> {
    /// The database.
    pub db: &'a Database,
    /// Its file, for messages.
    pub path: &'a Path,
}

impl Reads<'_> {
    fn err(&self, action: &'static str, e: impl Into<redb::Error>) -> StorageError {
        db_error(self.path, action, e)
    }

    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    fn begin(&self, action: &'static str) -> Result<ReadTransaction, StorageError> {
        self.db.begin_read().map_err(|e| self.err(action, e))
    }

    /// Calls `f` with every index entry's id and heads, in id order, until it breaks.
    fn scan_until(&self, f: &mut Visit<'_>) -> Result<(), StorageError> {
        const ACTION: &str = "scanning the index";
        let txn = self.begin(ACTION)?;
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        for entry in docs.iter().map_err(|e| self.err(ACTION, e))? {
            let (id, row) = entry.map_err(|e| self.err(ACTION, e))?;
            let id = id.value();
            let row = decode_row(self.path, id, row.value())?;
            if f(id, row.heads).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every index entry's id and heads, in id order, under [`guarded`]; a
    /// panic of `f` itself (the caller's code, not redb) unwinds as it is, after the read
    /// transaction is closed, instead of being reported as a damaged file.
    pub fn scan(&self, f: &mut IndexVisitor<'_>) -> Result<(), StorageError> {
        let mut caller_panic = None;
        let result = guarded(self.path, || {
            self.scan_until(
                &mut |id, heads| match catch_unwind(AssertUnwindSafe(|| f(id, heads))) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(panic) => {
                        caller_panic = Some(panic);
                        ControlFlow::Break(())
                    }
                },
            )
        });
        if let Some(panic) = caller_panic {
            resume_unwind(panic);
        }
        result
    }

    /// At most `limit` index entries with known, non-empty heads, in id order, every id
    /// strictly after `after`: one read transaction, which reads only those rows (and the
    /// rows without heads among them).
    pub fn heads_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Heads)>, StorageError> {
        const ACTION: &str = "reading a page of the index";
        let txn = self.begin(ACTION)?;
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rows = docs
            .range::<&str>((from, Bound::Unbounded))
            .map_err(|e| self.err(ACTION, e))?;
        let mut page = Vec::with_capacity(limit.min(1024));
        for entry in rows {
            if page.len() >= limit {
                break;
            }
            let (id, row) = entry.map_err(|e| self.err(ACTION, e))?;
            let id = id.value();
            match decode_row(self.path, id, row.value())?.heads {
                Some(heads) if !heads.is_empty() => page.push((id.to_string(), heads.to_vec())),
                _ => {}
            }
        }
        Ok(page)
    }

    /// `doc`'s index entry, if it has one.
    pub fn row(&self, doc: &str) -> Result<Option<IndexRow>, StorageError> {
        const ACTION: &str = "reading an index entry";
        let txn = self.begin(ACTION)?;
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        get_row(&docs, self.path, ACTION, doc)
    }

    /// Number of index entries (redb keeps table lengths: no scan).
    pub fn count(&self) -> Result<usize, StorageError> {
        const ACTION: &str = "counting documents";
        let txn = self.begin(ACTION)?;
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        let n = docs.len().map_err(|e| self.err(ACTION, e))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// One document, verified against its index entry; `None` if it has none.
    pub fn read(&self, doc: &str) -> Result<Option<StoredDoc>, StorageError> {
        const ACTION: &str = "reading a document";
        let txn = self.begin(ACTION)?;
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        let Some(row) = get_row(&docs, self.path, ACTION, doc)? else {
            return Ok(None);
        };
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
        let snapshot = match snapshots.get(doc).map_err(|e| self.err(ACTION, e))? {
            Some(sealed) => Some(self.unseal_snapshot(doc, sealed.value())?),
            None => None,
        };
        let log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
        let mut changes = Vec::with_capacity(usize::try_from(row.log_len).unwrap_or(0).min(1024));
        let range = log
            .range((doc, 0u64)..=(doc, u64::MAX))
            .map_err(|e| self.err(ACTION, e))?;
        for entry in range {
            let (key, change) = entry.map_err(|e| self.err(ACTION, e))?;
            let (_, seq) = key.value();
            changes.push(self.unseal_change(doc, seq, row.next_seq, change.value())?);
        }
        self.check_log_len(doc, &row, changes.len())?;
        Ok(Some(StoredDoc {
            id: doc.to_string(),
            snapshot,
            changes,
        }))
    }

    /// Every document (in id order), each verified against its index entry; data without an
    /// index entry is reported as corruption.
    pub fn load_all(&self) -> Result<Vec<StoredDoc>, StorageError> {
        const ACTION: &str = "reading documents";
        let txn = self.begin(ACTION)?;
        let mut all: BTreeMap<String, (IndexRow, StoredDoc)> = BTreeMap::new();
        let docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
        for entry in docs.iter().map_err(|e| self.err(ACTION, e))? {
            let (id, row) = entry.map_err(|e| self.err(ACTION, e))?;
            let id = id.value();
            let row = decode_row(self.path, id, row.value())?.to_row();
            let doc = StoredDoc {
                id: id.to_string(),
                snapshot: None,
                changes: Vec::new(),
            };
            all.insert(id.to_string(), (row, doc));
        }
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
        for entry in snapshots.iter().map_err(|e| self.err(ACTION, e))? {
            let (id, snapshot) = entry.map_err(|e| self.err(ACTION, e))?;
            let id = id.value();
            let snapshot = self.unseal_snapshot(id, snapshot.value())?;
            let (_, doc) = all.get_mut(id).ok_or_else(|| self.unindexed(id))?;
            doc.snapshot = Some(snapshot);
        }
        let log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
        // Keys sort by (doc, seq), so each document's changes come in append order.
        for entry in log.iter().map_err(|e| self.err(ACTION, e))? {
            let (key, change) = entry.map_err(|e| self.err(ACTION, e))?;
            let (id, seq) = key.value();
            let (row, doc) = all.get_mut(id).ok_or_else(|| self.unindexed(id))?;
            let change = self.unseal_change(id, seq, row.next_seq, change.value())?;
            doc.changes.push(change);
        }
        all.into_values()
            .map(|(row, doc)| {
                self.check_log_len(&doc.id, &row, doc.changes.len())?;
                Ok(doc)
            })
            .collect()
    }

    fn unseal_snapshot(&self, doc: &str, sealed: &[u8]) -> Result<Vec<u8>, StorageError> {
        unseal(&snapshot_key(doc), sealed)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                self.corrupt(format!(
                    "the snapshot of document {doc:?} fails its checksum"
                ))
            })
    }

    /// A log entry's change, checked against its key and the index's `next_seq`.
    fn unseal_change(
        &self,
        doc: &str,
        seq: u64,
        next_seq: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        let change = unseal(&log_key(doc, seq), sealed).ok_or_else(|| {
            self.corrupt(format!(
                "change {seq} of document {doc:?} fails its checksum"
            ))
        })?;
        if seq >= next_seq {
            return Err(self.corrupt(format!(
                "change {seq} of document {doc:?} is beyond its index entry (next {next_seq})"
            )));
        }
        Ok(change.to_vec())
    }

    fn check_log_len(&self, doc: &str, row: &IndexRow, found: usize) -> Result<(), StorageError> {
        if found as u64 == row.log_len {
            return Ok(());
        }
        Err(self.corrupt(format!(
            "document {doc:?} has {found} changes in its log, its index entry says {}",
            row.log_len
        )))
    }

    fn unindexed(&self, doc: &str) -> StorageError {
        self.corrupt(format!("document {doc:?} has data but no index entry"))
    }
}

/// Decodes `doc`'s sealed index row.
pub(super) fn decode_row<'a>(
    path: &Path,
    doc: &str,
    sealed: &'a [u8],
) -> Result<RowRef<'a>, StorageError> {
    let corrupt = |detail| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let value = unseal_index(doc, sealed).ok_or_else(|| {
        corrupt(format!(
            "the index entry of document {doc:?} fails its checksum"
        ))
    })?;
    index::decode(value).map_err(|why| {
        corrupt(format!(
            "the index entry of document {doc:?} is malformed: {why}"
        ))
    })
}

/// `doc`'s index row from an open `docs` table (of a read or a write transaction).
pub(super) fn get_row(
    docs: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
    action: &'static str,
    doc: &str,
) -> Result<Option<IndexRow>, StorageError> {
    match docs.get(doc).map_err(|e| db_error(path, action, e))? {
        Some(sealed) => Ok(Some(decode_row(path, doc, sealed.value())?.to_row())),
        None => Ok(None),
    }
}

/// A [`DocReader`] over a [`super::RedbStore`]'s database. It does not keep the file open:
/// once the store is dropped, reads fail with [`StorageError::Closed`] (so closing the store
/// releases the file even while readers are still around).
pub(super) struct RedbReader {
    db: Weak<Database>,
    path: PathBuf,
}

impl RedbReader {
    pub(super) fn new(db: &Arc<Database>, path: &Path) -> RedbReader {
        RedbReader {
            db: Arc::downgrade(db),
            path: path.to_path_buf(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(Reads<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let db = self.db.upgrade().ok_or_else(|| StorageError::Closed {
            path: self.path.clone(),
        })?;
        guarded(&self.path, || {
            f(Reads {
                db: &db,
                path: &self.path,
            })
        })
    }
}

impl DocReader for RedbReader {
    fn read(&self, doc: &str) -> Result<Option<StoredDoc>, StorageError> {
        self.with(|r| r.read(doc))
    }

    fn heads(&self, doc: &str) -> Result<Option<Vec<[u8; 32]>>, StorageError> {
        self.with(|r| Ok(r.row(doc)?.and_then(|row| row.heads)))
    }

    fn all_heads(&self) -> Result<Vec<(String, Heads)>, StorageError> {
        self.with(|r| {
            let mut all = Vec::new();
            r.scan_until(&mut |id, heads| {
                if let Some(heads) = heads {
                    all.push((id.to_string(), heads.to_vec()));
                }
                ControlFlow::Continue(())
            })?;
            Ok(all)
        })
    }

    fn heads_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Heads)>, StorageError> {
        self.with(|r| r.heads_page(after, limit))
    }

    fn count(&self) -> Result<usize, StorageError> {
        self.with(|r| r.count())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}
