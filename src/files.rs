//! Files the command line and the node replace whole: written to a temporary file in the
//! same directory, fsync'd, renamed over the old one, and the directory fsync'd, so a
//! crash at any instant leaves the old file or the new one, never a mix.
//!
//! Owns how such a file reaches the disk and who may read it ([`Access`]); what is in it
//! is the caller's. A leftover temporary file (from a crash before the rename) is never
//! read, and the next write replaces it. Used for the topology file and the certificates
//! and keys of `init` and `add-node`, and for the live topology a node stores.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Who may read a file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// As the file it replaces (its permissions are kept), or the process's default for a
    /// new file.
    Keep,
    /// The owner only (mode 0600 on Unix), whatever the file it replaces allowed: for
    /// private keys and tokens.
    Owner,
}

/// Replaces `path` with `bytes` atomically and durably (see the module's docs). A symbolic
/// link at `path` is followed: the file it points to is replaced, the link stays.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    stage(path, bytes, access)?.commit()
}

/// A new content written and fsync'd beside its file, not yet in place.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Writes `bytes` to a temporary file beside `path` (fsync'd, with the permissions that
/// `access` gives); [`Staged::commit`] puts it in place, dropping it removes it.
pub(crate) fn stage(path: &Path, bytes: &[u8], access: Access) -> io::Result<Staged> {
    let target = followed(path)?;
    let mode = match access {
        Access::Keep => fs::metadata(&target).ok().map(|m| m.permissions()),
        Access::Owner => None,
    };
    stage_as(target, bytes, mode)
}

/// Copies `path` to `path.bak` (replacing an older copy atomically, with `path`'s
/// permissions: a copy of a private file stays private). Returns the copy's path.
pub(crate) fn backup(path: &Path) -> io::Result<PathBuf> {
    let bytes = fs::read(path)?;
    let mode = fs::metadata(path)?.permissions();
    let bak = sibling(path, ".bak")?;
    stage_as(followed(&bak)?, &bytes, Some(mode))?.commit()?;
    Ok(bak)
}

/// `path`, or the file it links to.
fn followed(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path),
        _ => Ok(path.to_path_buf()),
    }
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    };
    let mut name = name.to_os_string();
    name.push(suffix);
    Ok(path.with_file_name(name))
}

/// Stages `bytes` for `target` with permissions `mode`, or the owner's only if `None`.
fn stage_as(target: PathBuf, bytes: &[u8], mode: Option<fs::Permissions>) -> io::Result<Staged> {
    let tmp = sibling(&target, ".tmp")?;
    // A leftover of a crash is replaced, never appended to nor followed if a link.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if mode.is_none() {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options.open(&tmp)?;
    // From here on, a failure drops `staged`, which removes the temporary file.
    let staged = Staged {
        tmp,
        target,
        committed: false,
    };
    staged.fill(file, bytes, mode)?;
    Ok(staged)
}

impl Staged {
    /// Gives the temporary file its permissions (`mode`, or the owner's only) and its
    /// content, durably.
    fn fill(&self, mut file: File, bytes: &[u8], mode: Option<fs::Permissions>) -> io::Result<()> {
        match mode {
            Some(mode) => file.set_permissions(mode)?,
            None => owner_only(&file)?,
        }
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// Renames the new content over the file and makes the rename durable.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.target)?;
        self.committed = true;
        sync_dir(&self.target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(unix)]
fn owner_only(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn owner_only(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Fsyncs the directory holding `path`, so that a rename in it survives a crash.
#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_of(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    }

    /// A directory holding `cluster.toml` written with `content`.
    fn written(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        write_atomic(&path, content, Access::Keep).unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);
        (dir, path)
    }

    #[test]
    fn writes_a_new_file_and_replaces_an_old_one() {
        let (_dir, path) = written(b"first version, long");
        write_atomic(&path, b"second", Access::Keep).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!tmp_of(&path).exists());
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_file_and_its_leftover_is_replaced() {
        let (_dir, path) = written(b"old");
        // A crash between the temporary file's write and the rename: the process is gone,
        // nothing removes the temporary file.
        let staged = stage(
            &path,
            b"new content, longer than the next one",
            Access::Keep,
        )
        .unwrap();
        std::mem::forget(staged);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(tmp_of(&path).exists());
        // The next run writes its own content whole, not mixed with the leftover.
        write_atomic(&path, b"next", Access::Keep).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"next");
        assert!(!tmp_of(&path).exists());
    }

    #[test]
    fn a_staged_write_dropped_without_commit_changes_nothing() {
        let (_dir, path) = written(b"old");
        drop(stage(&path, b"new", Access::Keep).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!tmp_of(&path).exists());
        stage(&path, b"new", Access::Keep)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_the_owners_and_other_files_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let key = dir.path().join("n1.key");
        fs::write(&key, "old key").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&key, b"new key", Access::Owner).unwrap();
        assert_eq!(mode(&key), 0o600);
        let new_key = dir.path().join("n2.key");
        write_atomic(&new_key, b"key", Access::Owner).unwrap();
        assert_eq!(mode(&new_key), 0o600);
        let toml = dir.path().join("cluster.toml");
        fs::write(&toml, "old").unwrap();
        fs::set_permissions(&toml, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&toml, b"new", Access::Keep).unwrap();
        assert_eq!(mode(&toml), 0o640);
    }

    #[test]
    fn a_backup_is_a_copy_with_the_same_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        write_atomic(&path, b"token = \"secret\"", Access::Owner).unwrap();
        fs::write(
            dir.path().join("cluster.toml.bak"),
            "an older backup, longer",
        )
        .unwrap();
        let bak = backup(&path).unwrap();
        assert_eq!(bak, dir.path().join("cluster.toml.bak"));
        assert_eq!(fs::read(&bak).unwrap(), fs::read(&path).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                fs::metadata(&bak).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("cluster.toml");
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new", Access::Keep).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"new");
    }
}
