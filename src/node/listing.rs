//! The node's document listing ([`Node::docs_page`], [`Node::docs`]): read from the store's
//! index through the node's [`DocReader`], a page at a time on a blocking thread, never
//! through the driver task, so a listing of any size neither holds the node's other work
//! nor grows its memory.
//!
//! Owns: paging (the `next` cursor) and turning stored heads into [`ChangeHash`]es. Must not
//! touch: the replica, or the store's writer.

use std::sync::Arc;

use automerge::ChangeHash;

use super::{Error, Node};
use crate::storage::{Heads, StorageError};

/// The page size of [`Node::docs`] (and of the API's unpaged listing): 1,000 documents with
/// their heads are about 100 KB.
pub const LIST_PAGE: usize = 1_000;

/// One page of a node's listing (see [`Node::docs_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocsPage {
    /// Documents with their heads, in id order.
    pub docs: Vec<(String, Vec<ChangeHash>)>,
    /// The last id of this page if more documents follow (the `after` of the next page);
    /// `None` at the end of the listing.
    pub next: Option<String>,
}

impl Node {
    /// One page of the documents durable on this node, with their heads, in id order: at
    /// most `limit` (at least 1) documents whose ids come strictly after `after` (from the
    /// first with `None`). Read from the store's index on a blocking thread, one short read
    /// transaction per page; the driver is not involved.
    ///
    /// The listing shows what is durable here: a change applied in memory (a write not yet
    /// answered, or a remote change on its way to disk) shows once its commit is done,
    /// normally within milliseconds. Paging with each page's `next` is not one snapshot: a
    /// document stored throughout is listed exactly once, one created meanwhile may or may
    /// not be.
    pub async fn docs_page(&self, after: Option<&str>, limit: usize) -> Result<DocsPage, Error> {
        if self.commands.is_closed() {
            return Err(Error::Stopped);
        }
        let limit = limit.max(1);
        let reader = Arc::clone(&self.reader);
        let after = after.map(str::to_string);
        // One more than asked says whether anything follows.
        let read = move || reader.heads_page(after.as_deref(), limit.saturating_add(1));
        let mut docs = tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(|e| match e {
                StorageError::Closed { .. } => Error::Stopped,
                e => Error::Storage(e),
            })?;
        let next = if docs.len() > limit {
            docs.truncate(limit);
            docs.last().map(|(id, _)| id.clone())
        } else {
            None
        };
        Ok(DocsPage {
            docs: docs.into_iter().map(|(id, h)| (id, hashes(h))).collect(),
            next,
        })
    }

    /// Those of `ids` durable on this node, with their heads, in the order given (one
    /// blocking read of the index per id; for the few documents a user token names).
    pub async fn docs_named(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, Vec<ChangeHash>)>, Error> {
        if self.commands.is_closed() {
            return Err(Error::Stopped);
        }
        let reader = Arc::clone(&self.reader);
        let read = move || -> Result<Vec<(String, Vec<ChangeHash>)>, StorageError> {
            let mut found = Vec::new();
            for id in ids {
                match reader.heads(&id)? {
                    Some(heads) if !heads.is_empty() => found.push((id, hashes(heads))),
                    _ => {}
                }
            }
            Ok(found)
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(|e| match e {
                StorageError::Closed { .. } => Error::Stopped,
                e => Error::Storage(e),
            })
    }

    /// Every document durable on this node with its heads, in id order (see
    /// [`Node::docs_page`], which this pages through; the whole list is in memory at the
    /// end: for large stores, page instead).
    pub async fn docs(&self) -> Result<Vec<(String, Vec<ChangeHash>)>, Error> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.docs_page(after.as_deref(), LIST_PAGE).await?;
            all.extend(page.docs);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

fn hashes(heads: Heads) -> Vec<ChangeHash> {
    heads.into_iter().map(ChangeHash).collect()
}
