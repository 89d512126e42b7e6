//! The partitions a node took over and is still filling, kept in its data directory
//! (`filling.json`, next to the stored live topology), so that a node killed in the middle
//! of a move still forwards reads and writes of those partitions to their other replicas
//! after its restart, until it has filled them (see the core's `handoff`).
//!
//! The file is written when partitions start filling and once every one has filled; in
//! between it may list partitions that filled since: after a restart those fill again,
//! which takes one reconciliation that finds them equal.

use std::path::Path;

use crate::placement::{Partition, PartitionSet, PARTITIONS};

/// The file's name in the node's data directory.
pub(crate) const FILLING_FILE: &str = "filling.json";

/// The partitions stored at `path` (none if there is no file).
pub(crate) fn read(path: &Path) -> Result<PartitionSet, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PartitionSet::empty()),
        Err(e) => return Err(e.to_string()),
    };
    let list: Vec<u16> = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not a JSON list of partition numbers: {e}"))?;
    let mut set = PartitionSet::empty();
    for p in list {
        if p >= PARTITIONS {
            return Err(format!(
                "partition {p} is out of range (there are {PARTITIONS})"
            ));
        }
        set.insert(Partition(p));
    }
    Ok(set)
}

/// Writes `set` to `path` atomically (a temporary file, fsync'd, renamed).
pub(crate) fn write(path: &Path, set: &PartitionSet) -> std::io::Result<()> {
    let list: Vec<u16> = set.iter().map(|p| p.0).collect();
    let bytes = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &bytes, crate::files::Access::Keep)
}

/// Whether a change of the filling partitions from `stored` to `now` must be written: some
/// partition started filling, or every one has filled.
pub(crate) fn must_write(stored: &PartitionSet, now: &PartitionSet) -> bool {
    !now.is_subset(stored) || (now.is_empty() && !stored.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(parts: &[u16]) -> PartitionSet {
        let mut s = PartitionSet::empty();
        for &p in parts {
            s.insert(Partition(p));
        }
        s
    }

    #[test]
    fn the_filling_partitions_survive_a_round_trip_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(FILLING_FILE);
        assert_eq!(read(&path).expect("no file"), PartitionSet::empty());
        write(&path, &set(&[0, 17, 1023])).expect("written");
        assert_eq!(read(&path).expect("read"), set(&[0, 17, 1023]));
        std::fs::write(&path, b"[1, 1024]").expect("written");
        assert!(read(&path)
            .unwrap_err()
            .contains("partition 1024 is out of range"));
        std::fs::write(&path, b"{\"torn").expect("written");
        assert!(read(&path).unwrap_err().contains("not a JSON list"));
    }

    #[test]
    fn the_file_is_written_when_partitions_start_filling_and_when_all_filled() {
        assert!(must_write(&set(&[]), &set(&[3])));
        assert!(must_write(&set(&[3]), &set(&[3, 4])));
        assert!(!must_write(&set(&[3, 4]), &set(&[4])));
        assert!(must_write(&set(&[4]), &set(&[])));
        assert!(!must_write(&set(&[]), &set(&[])));
    }
}
