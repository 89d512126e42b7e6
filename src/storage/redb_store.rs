//! [`RedbStore`]: the durable [`Store`] in one redb database file, `DIR/concordant.redb`.
//!
//! Owns the database file (making, opening, checking and migrating it) and every write. Must not touch Automerge:
//! values are opaque. Reads live in [`super::redb_reader`], the format-1 migration in
//! [`super::migrate`].
//!
//! Its tables, format version and error mapping are in [`super::schema`].
//!
//! Every value is sealed with a checksum over its key and bytes ([`super::checksum`]),
//! verified when read. redb panics on some damaged files (e.g. truncated ones); every
//! call into redb, reads included, runs under `catch_unwind` and such a panic becomes
//! [`StorageError::Corrupt`] (the crate is built with `panic = "unwind"`).
//!
//! Every commit uses `Durability::Immediate` (fsync before `commit` returns). A new file is
//! initialised under a temporary name and renamed into place, so `concordant.redb` always is
//! a complete store: an empty, foreign or damaged file there is reported, never replaced.
//! Opening reads the format version only: nothing per document is loaded or rebuilt (after
//! a crash, though, redb itself first walks the whole file to rebuild its allocator state:
//! ~1.5 s for a 385 MiB store of 1M documents; redb's `quick_repair` would avoid that at
//! about 2.4x the cost of each small commit). The store remembers only the log lengths of
//! the documents it wrote since it was opened.
//! The database is shared (weakly) with [`DocReader`] handles, whose read transactions run
//! concurrently with this store's writes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, Table, WriteTransaction};

use super::checksum::{log_key, seal, seal_index, snapshot_key};
use super::index::IndexRow;
use super::migrate::migrate_v1;
use super::redb_reader::{get_row, Reads, RedbReader};
use super::schema::{db_error, guarded, DOCS, FORMAT_VERSION, LOG, META, SNAPSHOTS, VERSION_KEY};
use super::{Compaction, DocAppend, DocReader, IndexVisitor, StorageError, Store, StoredDoc};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "concordant.redb";
/// Name under which a new database is initialised before it is renamed to [`DB_FILE`].
const TMP_FILE: &str = "concordant.redb.tmp";
/// redb's page cache per store (its default, 1 GiB, would hold a large store in memory;
/// the operating system's page cache serves the rest).
const CACHE_BYTES: usize = 32 << 20;

/// A [`Store`] backed by a redb database file; every commit is fsync'd.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Log lengths of the documents appended to or compacted since the store was opened.
    touched: HashMap<String, usize>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens the store in `dir` (created if missing), creating `dir/concordant.redb` if it
    /// does not exist, and migrating a format-1 file to format 2 (one durable commit). A
    /// file that is not a concordant store, is damaged, or has an unknown format version is
    /// refused with an error naming it.
    pub fn open(dir: &Path) -> Result<RedbStore, StorageError> {
        fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            action: "creating the data directory",
            source,
        })?;
        let path = dir.join(DB_FILE);
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_new(dir, &path)?,
            Err(source) => {
                return Err(StorageError::Io {
                    path,
                    action: "checking the database file",
                    source,
                })
            }
        }
        guarded(&path, || open_existing(&path))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reads(&self) -> Reads<'_> {
        Reads {
            db: &self.db,
            path: &self.path,
        }
    }

    fn err(&self, action: &'static str, e: impl Into<redb::Error>) -> StorageError {
        db_error(&self.path, action, e)
    }

    /// Starts a write transaction that fsyncs on commit.
    fn begin(&self, action: &'static str) -> Result<WriteTransaction, StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(action, e))?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    fn commit(&self, txn: WriteTransaction, action: &'static str) -> Result<(), StorageError> {
        txn.commit().map_err(|e| StorageError::Commit {
            path: self.path.clone(),
            action,
            detail: e.to_string(),
        })
    }

    /// The index row of `doc` as changed so far in this transaction (read on first use; a
    /// new row if the document has none).
    fn row<'r>(
        &self,
        rows: &'r mut BTreeMap<String, IndexRow>,
        docs: &Table<&str, &[u8]>,
        doc: &str,
        action: &'static str,
    ) -> Result<&'r mut IndexRow, StorageError> {
        if !rows.contains_key(doc) {
            let row = get_row(docs, &self.path, action, doc)?.unwrap_or_default();
            rows.insert(doc.to_string(), row);
        }
        rows.get_mut(doc).ok_or_else(|| StorageError::Db {
            path: self.path.clone(),
            action,
            detail: "an index row vanished while in use".into(),
        })
    }

    /// Writes the changed index rows (in key order).
    fn put_rows(
        &self,
        docs: &mut Table<&str, &[u8]>,
        rows: &BTreeMap<String, IndexRow>,
        action: &'static str,
    ) -> Result<(), StorageError> {
        for (doc, row) in rows {
            let sealed = seal_index(doc, &row.encode());
            docs.insert(doc.as_str(), sealed.as_slice())
                .map_err(|e| self.err(action, e))?;
        }
        Ok(())
    }

    /// Appends `batch` and records heads in one commit; returns the documents' new log
    /// lengths.
    fn write_append(&self, batch: &[DocAppend]) -> Result<Vec<(String, usize)>, StorageError> {
        const ACTION: &str = "appending changes";
        let mut rows = BTreeMap::new();
        let txn = self.begin(ACTION)?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
            let mut log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
            for append in batch {
                let doc = append.doc.as_str();
                let row = self.row(&mut rows, &docs, doc, ACTION)?;
                for change in &append.changes {
                    let sealed = seal(&log_key(doc, row.next_seq), change);
                    log.insert((doc, row.next_seq), sealed.as_slice())
                        .map_err(|e| self.err(ACTION, e))?;
                    row.next_seq += 1;
                    row.log_len += 1;
                }
                row.heads = Some(append.heads.clone());
            }
            self.put_rows(&mut docs, &rows, ACTION)?;
        }
        self.commit(txn, ACTION)?;
        Ok(log_lens(rows))
    }

    /// Replaces each document's snapshot and log, all in one commit; returns their new
    /// log lengths.
    fn write_compact(
        &self,
        compactions: &[Compaction],
    ) -> Result<Vec<(String, usize)>, StorageError> {
        const ACTION: &str = "compacting documents";
        let mut rows = BTreeMap::new();
        let txn = self.begin(ACTION)?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
            let mut log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
            for c in compactions {
                let doc = c.doc.as_str();
                let row = self.row(&mut rows, &docs, doc, ACTION)?;
                log.retain_in((doc, 0u64)..=(doc, u64::MAX), |_, _| false)
                    .map_err(|e| self.err(ACTION, e))?;
                // Sequence numbers keep counting: no key of the replaced log is reused.
                for change in &c.keep {
                    let sealed = seal(&log_key(doc, row.next_seq), change);
                    log.insert((doc, row.next_seq), sealed.as_slice())
                        .map_err(|e| self.err(ACTION, e))?;
                    row.next_seq += 1;
                }
                row.log_len = c.keep.len() as u64;
                let sealed = seal(&snapshot_key(doc), &c.snapshot);
                snapshots
                    .insert(doc, sealed.as_slice())
                    .map_err(|e| self.err(ACTION, e))?;
            }
            self.put_rows(&mut docs, &rows, ACTION)?;
        }
        self.commit(txn, ACTION)?;
        Ok(log_lens(rows))
    }

    /// Deletes documents (index entry, snapshot, log), in one commit.
    fn write_remove(&self, ids: &[String]) -> Result<(), StorageError> {
        const ACTION: &str = "removing documents";
        let txn = self.begin(ACTION)?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
            let mut log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
            for doc in ids {
                let doc = doc.as_str();
                docs.remove(doc).map_err(|e| self.err(ACTION, e))?;
                snapshots.remove(doc).map_err(|e| self.err(ACTION, e))?;
                log.retain_in((doc, 0u64)..=(doc, u64::MAX), |_, _| false)
                    .map_err(|e| self.err(ACTION, e))?;
            }
        }
        self.commit(txn, ACTION)
    }

    /// Records the heads of the indexed documents among `heads`, in one commit.
    fn write_heads(&self, heads: &[(String, Vec<[u8; 32]>)]) -> Result<(), StorageError> {
        const ACTION: &str = "recording heads";
        let mut rows = BTreeMap::new();
        let txn = self.begin(ACTION)?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| self.err(ACTION, e))?;
            for (doc, doc_heads) in heads {
                if let Some(mut row) = get_row(&docs, &self.path, ACTION, doc)? {
                    row.heads = Some(doc_heads.clone());
                    rows.insert(doc.clone(), row);
                }
            }
            self.put_rows(&mut docs, &rows, ACTION)?;
        }
        self.commit(txn, ACTION)
    }
}

fn log_lens(rows: BTreeMap<String, IndexRow>) -> Vec<(String, usize)> {
    rows.into_iter()
        .map(|(doc, row)| (doc, usize::try_from(row.log_len).unwrap_or(usize::MAX)))
        .collect()
}

impl Store for RedbStore {
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError> {
        guarded(&self.path, || self.reads().load_all())
    }

    fn scan_index(&self, f: &mut IndexVisitor<'_>) -> Result<(), StorageError> {
        // Guarded inside, so that a panic of `f` is not taken for a damaged file.
        self.reads().scan(f)
    }

    fn set_heads(&mut self, heads: Vec<(String, Vec<[u8; 32]>)>) -> Result<(), StorageError> {
        if heads.is_empty() {
            return Ok(());
        }
        guarded(&self.path, || self.write_heads(&heads))
    }

    fn append(&mut self, batch: &[DocAppend]) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Log lengths are remembered only once the commit succeeded.
        let updated = guarded(&self.path, || self.write_append(batch))?;
        self.touched.extend(updated);
        Ok(())
    }

    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError> {
        if docs.is_empty() {
            return Ok(());
        }
        // Log lengths are remembered only once the commit succeeded.
        let updated = guarded(&self.path, || self.write_compact(&docs))?;
        self.touched.extend(updated);
        Ok(())
    }

    fn remove(&mut self, docs: &[String]) -> Result<(), StorageError> {
        if docs.is_empty() {
            return Ok(());
        }
        guarded(&self.path, || self.write_remove(docs))?;
        for doc in docs {
            self.touched.remove(doc);
        }
        Ok(())
    }

    fn log_len(&self, doc: &str) -> usize {
        // This store is the file's only writer, so what it wrote is what the index holds.
        if let Some(&len) = self.touched.get(doc) {
            return len;
        }
        match guarded(&self.path, || self.reads().row(doc)) {
            Ok(row) => row.map_or(0, |row| usize::try_from(row.log_len).unwrap_or(usize::MAX)),
            Err(e) => {
                tracing::warn!("cannot read the log length of {doc:?}: {e}");
                0
            }
        }
    }

    fn docs_with_log(&self, min: usize) -> Vec<String> {
        self.touched
            .iter()
            .filter(|(_, &len)| len >= min)
            .map(|(doc, _)| doc.clone())
            .collect()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn reader(&self) -> Arc<dyn DocReader> {
        Arc::new(RedbReader::new(&self.db, &self.path))
    }
}

/// Initialises a new store under a temporary name, then renames it to `path`.
fn create_new(dir: &Path, path: &Path) -> Result<(), StorageError> {
    const ACTION: &str = "creating the database";
    let tmp = dir.join(TMP_FILE);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StorageError::Io {
                path: tmp,
                action: "removing a leftover temporary database",
                source,
            })
        }
    }
    {
        let db = Database::create(&tmp).map_err(|e| db_error(&tmp, ACTION, e))?;
        let mut txn = db.begin_write().map_err(|e| db_error(&tmp, ACTION, e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| db_error(&tmp, ACTION, e))?;
            meta.insert(VERSION_KEY, FORMAT_VERSION)
                .map_err(|e| db_error(&tmp, ACTION, e))?;
            txn.open_table(DOCS)
                .map_err(|e| db_error(&tmp, ACTION, e))?;
            txn.open_table(SNAPSHOTS)
                .map_err(|e| db_error(&tmp, ACTION, e))?;
            txn.open_table(LOG).map_err(|e| db_error(&tmp, ACTION, e))?;
        }
        txn.commit().map_err(|e| StorageError::Commit {
            path: tmp.clone(),
            action: ACTION,
            detail: e.to_string(),
        })?;
    }
    let io_err = |path: &Path, action, source| StorageError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming the new database into place", e))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "syncing the data directory", e))
}

/// Opens an existing file and checks its format version, migrating a format-1 file.
fn open_existing(path: &Path) -> Result<RedbStore, StorageError> {
    let len = fs::metadata(path)
        .map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            action: "reading the database file's metadata",
            source,
        })?
        .len();
    if len == 0 {
        // redb would silently initialise an empty file; a store is never created that way.
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: "the file is empty (truncated?)".into(),
        });
    }
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .open(path)
        .map_err(|e| match e {
            // redb's answers to a wrong magic number and to a file shorter than its header.
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == io::ErrorKind::InvalidData =>
            {
                StorageError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "not a redb database (bad magic number or header)".into(),
                }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == io::ErrorKind::UnexpectedEof =>
            {
                StorageError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the file ends inside its header (truncated)".into(),
                }
            }
            e => match db_error(path, "opening the database", e) {
                StorageError::Db { path, detail, .. } => StorageError::Open { path, detail },
                other => other,
            },
        })?;
    match format_version(&db, path)? {
        FORMAT_VERSION => {}
        1 => migrate_v1(&db, path)?,
        found => {
            return Err(StorageError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
    }
    check_tables(&db, path)?;
    Ok(RedbStore {
        db: Arc::new(db),
        path: path.to_path_buf(),
        touched: HashMap::new(),
    })
}

/// The file's format version; a file without one is not a concordant store.
fn format_version(db: &Database, path: &Path) -> Result<u64, StorageError> {
    const ACTION: &str = "reading the format version";
    let corrupt = |detail: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let txn = db.begin_read().map_err(|e| db_error(path, ACTION, e))?;
    let meta = txn.open_table(META).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) => {
            corrupt("no `meta` table: this redb file is not a concordant store".into())
        }
        e => db_error(path, ACTION, e),
    })?;
    meta.get(VERSION_KEY)
        .map_err(|e| db_error(path, ACTION, e))?
        .map(|v| v.value())
        .ok_or_else(|| corrupt(format!("the `meta` table has no `{VERSION_KEY}`")))
}

/// Every table of the current format must exist (they are created with the file).
fn check_tables(db: &Database, path: &Path) -> Result<(), StorageError> {
    const ACTION: &str = "checking the tables";
    let txn = db.begin_read().map_err(|e| db_error(path, ACTION, e))?;
    txn.open_table(DOCS)
        .map_err(|e| db_error(path, ACTION, e))?;
    txn.open_table(SNAPSHOTS)
        .map_err(|e| db_error(path, ACTION, e))?;
    txn.open_table(LOG).map_err(|e| db_error(path, ACTION, e))?;
    Ok(())
}
