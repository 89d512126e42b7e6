//! Revoked user tokens in the driver: this node's set, merged with every set a peer sends
//! (on link-up and after each change), changed by [`crate::Node::revoke`], stored in the
//! data directory, passed on to every connected peer when it changes (so a revocation
//! floods over any topology), and shown to the node's handles.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::Driver;
use crate::node::Error;
use crate::revocations::{Revocations, Revoke};
use crate::wire::Message;

impl Driver {
    /// A link came up: the peer gets our revocations (if any).
    pub(super) fn send_revocations(&mut self, peer: &str) {
        if !self.revocations.is_empty() {
            let msg = Message::Revocations(Box::new(self.revocations.clone()));
            let _ = self.transport.send(peer, msg);
        }
    }

    /// A peer's revocations: merged; passed on if they changed ours.
    pub(super) fn receive_revocations(&mut self, from: &str, theirs: &Revocations) {
        if self.revocations.merge(theirs) {
            tracing::info!(node = %self.id, from, revocations = self.revocations.len(), "revocations received");
            self.revocations_changed();
        }
    }

    /// `Node::revoke`.
    pub(super) fn revoke(&mut self, what: Revoke, reply: oneshot::Sender<Result<usize, Error>>) {
        let answer = match self.revocations.revoke(&what, crate::tokens::unix_now()) {
            Ok(changed) => {
                if changed {
                    tracing::info!(node = %self.id, revocations = self.revocations.len(), "tokens revoked here");
                    self.revocations_changed();
                }
                Ok(self.revocations.len())
            }
            Err(e) => Err(Error::Revoke(e)),
        };
        let _ = reply.send(answer);
    }

    /// Stores the set, shows it to the handles and passes it to every connected peer.
    fn revocations_changed(&mut self) {
        if let Some(path) = &self.revocations_file {
            if let Err(e) = crate::node::revocations::write(path, &self.revocations) {
                tracing::error!(node = %self.id, path = %path.display(), "cannot store the revocations: {e}");
            }
        }
        self.revoked
            .send_replace(Arc::new(self.revocations.clone()));
        let msg = Message::Revocations(Box::new(self.revocations.clone()));
        for peer in self.transport.connected() {
            let _ = self.transport.send(&peer, msg.clone());
        }
    }
}
