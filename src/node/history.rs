//! A document's history at a node (see [`crate::history`]): read from its copy, or from a
//! replica's on a node that does not replicate the document.

use automerge::ChangeHash;

use super::{Error, Node};
use crate::history::ChangeInfo;

impl Node {
    /// At most `limit` changes of `doc`, newest first, with their origin node; `None` if no
    /// node has the document.
    pub async fn history(&self, doc: &str, limit: usize) -> Result<Option<Vec<ChangeInfo>>, Error> {
        let nodes = self.topology.borrow().nodes().to_vec();
        self.with_doc(doc, move |d| crate::history::changes(d, &nodes, limit))
            .await
    }

    /// `doc` as plain JSON as it was at `heads`: `None` if no node has the document, an
    /// inner error naming a head it lacks.
    pub async fn json_at(
        &self,
        doc: &str,
        heads: Vec<ChangeHash>,
    ) -> Result<Option<Result<serde_json::Value, String>>, Error> {
        self.with_doc(doc, move |d| {
            crate::history::at(d, &heads).map(|then| crate::json::doc_to_json(&then))
        })
        .await
    }
}
