//! Revoked user tokens at a node (see [`crate::revocations`]): kept in its data directory
//! (`revocations.json`), gossiped by its driver, and read by its API, which refuses the
//! tokens they name ([`Node::revokes`]) and closes their sockets
//! ([`Node::watch_revocations`]).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::{Command, Error, Node};
use crate::revocations::{Revocations, Revoke};
use crate::tokens::UserToken;

/// The file's name in the node's data directory.
pub(crate) const REVOCATIONS_FILE: &str = "revocations.json";

/// The set stored at `path` (empty if there is no file).
pub(crate) fn read(path: &Path) -> Result<Revocations, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("not a revocation set: {e}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `set` to `path` atomically.
pub(crate) fn write(path: &Path, set: &Revocations) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(set).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &bytes, crate::files::Access::Keep)
}

impl Node {
    /// Revokes user tokens cluster-wide: recorded here (durably) and passed to every node.
    /// Returns the number of revocations this node holds.
    pub async fn revoke(&self, what: Revoke) -> Result<usize, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Revoke { what, reply: tx }).await?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Whether `token` is revoked, as far as this node knows.
    pub fn revokes(&self, token: &UserToken) -> bool {
        self.revoked.borrow().revokes(token)
    }

    /// The revocations this node knows, changing as more come.
    pub fn watch_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        self.revoked.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_survives_a_round_trip_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(REVOCATIONS_FILE);
        assert_eq!(read(&path).expect("no file"), Revocations::default());
        let mut set = Revocations::default();
        set.revoke(&Revoke::Sub("alice".into()), 7).expect("valid");
        write(&path, &set).expect("written");
        assert_eq!(read(&path).expect("read"), set);
        std::fs::write(&path, b"[1,").expect("written");
        assert!(read(&path).unwrap_err().contains("not a revocation set"));
    }
}
