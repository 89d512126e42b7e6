//! [`RedbStore`]: the durable [`Store`] in one redb database file, `DIR/concordant.redb`.
//!
//! Owns the file layout and its format version. Must not touch Automerge: values are opaque.
//!
//! Tables:
//! - `meta: &str -> u64`: `format_version` = [`FORMAT_VERSION`].
//! - `snapshots: &str -> &[u8]`: per document, the snapshot of its last compaction.
//! - `log: (&str, u64) -> &[u8]`: per document and sequence number, an appended change.
//!
//! Every value is sealed with a checksum over its key and bytes ([`super::checksum`]),
//! verified by `load_all`. redb panics on some damaged files (e.g. truncated ones); every
//! call into redb runs under `catch_unwind` and such a panic becomes
//! [`StorageError::Corrupt`] (the crate is built with `panic = "unwind"`).
//!
//! Every commit uses `Durability::Immediate` (fsync before `commit` returns). A new file is
//! initialised under a temporary name and renamed into place, so `concordant.redb` always is
//! a complete store: an empty, foreign or damaged file there is reported, never replaced.
//! Per-document sequence counters and log lengths live in memory, rebuilt on open.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

use super::checksum::{log_key, seal, snapshot_key, unseal};
use super::{Compaction, StorageError, Store, StoredDoc};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "concordant.redb";
/// Name under which a new database is initialised before it is renamed to [`DB_FILE`].
const TMP_FILE: &str = "concordant.redb.tmp";
/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
const VERSION_KEY: &str = "format_version";

/// Per-document bookkeeping of the log table.
#[derive(Debug, Default, Clone, Copy)]
struct DocLog {
    /// Sequence number of the next appended change.
    next_seq: u64,
    /// Changes in the log (appended since the last compaction, plus its `keep`).
    len: usize,
}

/// A [`Store`] backed by a redb database file; every commit is fsync'd.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    logs: HashMap<String, DocLog>,
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
    /// does not exist. A file that is not a concordant store, is damaged, or has another
    /// format version is refused with an error naming it.
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

    fn err(&self, action: &'static str, e: impl Into<redb::Error>) -> StorageError {
        db_error(&self.path, action, e)
    }

    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            detail,
        }
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

    /// Reads every document; also returns the log bookkeeping it implies.
    fn read_all(&self) -> Result<(Vec<StoredDoc>, HashMap<String, DocLog>), StorageError> {
        const ACTION: &str = "reading documents";
        let txn = self.db.begin_read().map_err(|e| self.err(ACTION, e))?;
        let mut docs: HashMap<String, StoredDoc> = HashMap::new();
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
        for entry in snapshots.iter().map_err(|e| self.err(ACTION, e))? {
            let (id, snapshot) = entry.map_err(|e| self.err(ACTION, e))?;
            let id = id.value();
            let snapshot = unseal(&snapshot_key(id), snapshot.value()).ok_or_else(|| {
                self.corrupt(format!(
                    "the snapshot of document {id:?} fails its checksum"
                ))
            })?;
            let doc = docs
                .entry(id.to_string())
                .or_insert_with(|| empty_doc(id.to_string()));
            doc.snapshot = Some(snapshot.to_vec());
        }
        let mut logs: HashMap<String, DocLog> = HashMap::new();
        let log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
        // Keys sort by (doc, seq), so each document's changes come in append order.
        for entry in log.iter().map_err(|e| self.err(ACTION, e))? {
            let (key, change) = entry.map_err(|e| self.err(ACTION, e))?;
            let (id, seq) = key.value();
            let change = unseal(&log_key(id, seq), change.value()).ok_or_else(|| {
                self.corrupt(format!(
                    "change {seq} of document {id:?} fails its checksum"
                ))
            })?;
            let doc = match docs.get_mut(id) {
                Some(doc) => doc,
                None => docs
                    .entry(id.to_string())
                    .or_insert_with(|| empty_doc(id.to_string())),
            };
            doc.changes.push(change.to_vec());
            note_seq(&mut logs, id, seq);
        }
        Ok((docs.into_values().collect(), logs))
    }

    /// Refuses a file that is not a concordant store or has another format version.
    fn check_format(&self) -> Result<(), StorageError> {
        const ACTION: &str = "reading the format version";
        let txn = self.db.begin_read().map_err(|e| self.err(ACTION, e))?;
        let meta = txn.open_table(META).map_err(|e| match e {
            redb::TableError::TableDoesNotExist(_) => StorageError::Corrupt {
                path: self.path.clone(),
                detail: "no `meta` table: this redb file is not a concordant store".into(),
            },
            e => self.err(ACTION, e),
        })?;
        let found = meta
            .get(VERSION_KEY)
            .map_err(|e| self.err(ACTION, e))?
            .map(|v| v.value())
            .ok_or_else(|| StorageError::Corrupt {
                path: self.path.clone(),
                detail: format!("the `meta` table has no `{VERSION_KEY}`"),
            })?;
        if found != FORMAT_VERSION {
            return Err(StorageError::UnsupportedVersion {
                path: self.path.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        // Both data tables must exist (they are created with the file).
        txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
        txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
        Ok(())
    }

    /// Appends `batch` in one commit; returns the documents' new counters.
    fn write_append(
        &self,
        batch: &[(String, Vec<Vec<u8>>)],
    ) -> Result<HashMap<String, DocLog>, StorageError> {
        const ACTION: &str = "appending changes";
        let mut updated: HashMap<String, DocLog> = HashMap::new();
        let txn = self.begin(ACTION)?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
            for (doc, changes) in batch {
                let entry = updated
                    .entry(doc.clone())
                    .or_insert_with(|| self.logs.get(doc).copied().unwrap_or_default());
                for change in changes {
                    let sealed = seal(&log_key(doc, entry.next_seq), change);
                    log.insert((doc.as_str(), entry.next_seq), sealed.as_slice())
                        .map_err(|e| self.err(ACTION, e))?;
                    entry.next_seq += 1;
                    entry.len += 1;
                }
            }
        }
        self.commit(txn, ACTION)?;
        Ok(updated)
    }

    /// Replaces each document's snapshot and log, all in one commit; returns their new
    /// counters.
    fn write_compact(&self, docs: &[Compaction]) -> Result<Vec<(String, DocLog)>, StorageError> {
        const ACTION: &str = "compacting documents";
        let mut updated = Vec::with_capacity(docs.len());
        let txn = self.begin(ACTION)?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|e| self.err(ACTION, e))?;
            for c in docs {
                let doc = c.doc.as_str();
                let mut next = self.logs.get(doc).copied().unwrap_or_default();
                log.retain_in((doc, 0u64)..=(doc, u64::MAX), |_, _| false)
                    .map_err(|e| self.err(ACTION, e))?;
                for change in &c.keep {
                    let sealed = seal(&log_key(doc, next.next_seq), change);
                    log.insert((doc, next.next_seq), sealed.as_slice())
                        .map_err(|e| self.err(ACTION, e))?;
                    next.next_seq += 1;
                }
                let sealed = seal(&snapshot_key(doc), &c.snapshot);
                snapshots
                    .insert(doc, sealed.as_slice())
                    .map_err(|e| self.err(ACTION, e))?;
                next.len = c.keep.len();
                updated.push((c.doc.clone(), next));
            }
        }
        self.commit(txn, ACTION)?;
        Ok(updated)
    }

    /// Scans the log keys (not the changes) to rebuild per-document counters.
    fn read_logs(&self) -> Result<HashMap<String, DocLog>, StorageError> {
        const ACTION: &str = "scanning the change log";
        let txn = self.db.begin_read().map_err(|e| self.err(ACTION, e))?;
        let log = txn.open_table(LOG).map_err(|e| self.err(ACTION, e))?;
        let mut logs = HashMap::new();
        for entry in log.iter().map_err(|e| self.err(ACTION, e))? {
            let (key, _) = entry.map_err(|e| self.err(ACTION, e))?;
            let (id, seq) = key.value();
            note_seq(&mut logs, id, seq);
        }
        Ok(logs)
    }
}

impl Store for RedbStore {
    fn load_all(&mut self) -> Result<Vec<StoredDoc>, StorageError> {
        let (docs, logs) = guarded(&self.path, || self.read_all())?;
        self.logs = logs;
        Ok(docs)
    }

    fn append(&mut self, batch: Vec<(String, Vec<Vec<u8>>)>) -> Result<(), StorageError> {
        if batch.iter().all(|(_, changes)| changes.is_empty()) {
            return Ok(());
        }
        // Counters are updated only once the commit succeeded.
        let updated = guarded(&self.path, || self.write_append(&batch))?;
        self.logs.extend(updated);
        Ok(())
    }

    fn compact(&mut self, docs: Vec<Compaction>) -> Result<(), StorageError> {
        if docs.is_empty() {
            return Ok(());
        }
        // Counters are updated only once the commit succeeded.
        let updated = guarded(&self.path, || self.write_compact(&docs))?;
        self.logs.extend(updated);
        Ok(())
    }

    fn log_len(&self, doc: &str) -> usize {
        self.logs.get(doc).map_or(0, |log| log.len)
    }

    fn docs_with_log(&self, min: usize) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(_, log)| log.len >= min)
            .map(|(doc, _)| doc.clone())
            .collect()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
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

/// Opens an existing file, checks its format version and rebuilds the log bookkeeping.
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
    let db = Database::open(path).map_err(|e| match e {
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
    let mut store = RedbStore {
        db,
        path: path.to_path_buf(),
        logs: HashMap::new(),
    };
    store.check_format()?;
    store.logs = store.read_logs()?;
    Ok(store)
}

fn empty_doc(id: String) -> StoredDoc {
    StoredDoc {
        id,
        snapshot: None,
        changes: Vec::new(),
    }
}

/// Counts one log entry `(id, seq)` into `logs`.
fn note_seq(logs: &mut HashMap<String, DocLog>, id: &str, seq: u64) {
    let log = match logs.get_mut(id) {
        Some(log) => log,
        None => logs.entry(id.to_string()).or_default(),
    };
    log.len += 1;
    log.next_seq = log.next_seq.max(seq.saturating_add(1));
}

/// Maps any redb error to a [`StorageError`] naming `path`.
fn db_error(path: &Path, action: &'static str, e: impl Into<redb::Error>) -> StorageError {
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
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let text = if let Some(s) = panic.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = panic.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".into()
        };
        Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the database library failed on it (truncated or damaged?): {text}"),
        })
    })
}
