//! The owner records of documents at a node (see [`crate::owners`]): read from the
//! document (a replica's copy, fetched like any read on a node that does not replicate it),
//! and written by merging a record into it.

use std::collections::BTreeSet;

use super::{Error, Node};

impl Node {
    /// The owners `doc` records, or `None` if no node has it.
    pub async fn owners(&self, doc: &str) -> Result<Option<BTreeSet<String>>, Error> {
        self.with_doc(doc, crate::owners::owners_of).await
    }

    /// Whether the owner records `named` in a client's data for `doc` are all ones the
    /// document has already (a client may send back what it received; any other record is
    /// the client's own, and refused).
    pub async fn knows_owners(&self, doc: &str, named: &BTreeSet<String>) -> bool {
        named.is_empty()
            || matches!(self.owners(doc).await, Ok(Some(have)) if named.is_subset(&have))
    }

    /// Records `sub` as an owner of `doc` (made if new), durable on a replica when this
    /// returns.
    pub async fn record_owner(&self, doc: &str, sub: &str) -> Result<(), Error> {
        let record = crate::owners::record(sub, crate::tokens::unix_now());
        self.merge(doc, record).await.map(|_| ())
    }
}
