//! Running started nodes with their HTTP APIs, as one `concordant node` or `concordant up`
//! process does: until a stop (a signal, for the binary), the failure of any node, or the
//! end of any API; then every API stops and every node shuts down.
//!
//! Owns the process's lifecycle rule: a node that failed (its driver or storage thread
//! panicked, see [`Node::failure`]) ends the run with [`RunError::NodeFailed`], which the
//! binary turns into a non-zero exit, so that a supervisor restarts it (a restart is safe
//! by design). Binding and starting are the caller's: it reports those errors with its
//! own context.

use std::collections::HashMap;
use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{self, ApiError, ApiOptions};
use crate::node::{self, Node};

/// One started node and what its HTTP API serves with.
pub struct Served {
    /// The node.
    pub node: Node,
    /// Its API's bound listener.
    pub listener: TcpListener,
    /// Its API's options.
    pub options: ApiOptions,
}

/// Why a run ended other than by its stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A node failed: it cannot write any more.
    #[error("node {node}: {why}; stopping (a restart is safe)")]
    NodeFailed {
        /// The node's id.
        node: String,
        /// Its failure.
        why: String,
    },
    /// A node's HTTP API ended by itself.
    #[error("node {node}: the HTTP API stopped unexpectedly")]
    ApiEnded {
        /// The node's id.
        node: String,
    },
    /// A node's HTTP API failed.
    #[error("node {node}: {source}")]
    Api {
        /// The node's id.
        node: String,
        /// Why.
        source: ApiError,
    },
    /// A node's HTTP API task panicked.
    #[error("node {node}: the HTTP API task failed: {why}")]
    ApiTask {
        /// The node's id.
        node: String,
        /// Why.
        why: String,
    },
    /// A node did not shut down cleanly (after a clean stop).
    #[error("node {node}: {source}")]
    Shutdown {
        /// The node's id.
        node: String,
        /// Why.
        source: node::Error,
    },
}

/// Serves every node's API until `stop` resolves, a node fails or an API ends; then stops
/// the APIs and shuts the nodes down. Ok only after a stop with every node shut down
/// cleanly; otherwise the first reason the run ended (or the first shutdown error).
pub async fn run(served: Vec<Served>, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    let mut apis = JoinSet::new();
    let mut api_of = HashMap::new();
    for Served {
        node,
        listener,
        options,
    } in served
    {
        let mut stop_api = stop_rx.clone();
        let stopped = async move {
            let _ = stop_api.wait_for(|s| *s).await;
        };
        let id = node.id().to_string();
        let server = api::serve_with(node.clone(), listener, options, stopped);
        let task = apis.spawn({
            let id = id.clone();
            async move { (id, server.await) }
        });
        api_of.insert(task.id(), id);
        nodes.push(node);
    }
    let mut failures: FuturesUnordered<_> = nodes
        .iter()
        .map(|n| async move { (n.id().to_string(), n.failed().await) })
        .collect();
    let mut failed = tokio::select! {
        () = stop => None,
        Some((node, why)) = failures.next() => Some(RunError::NodeFailed { node, why }),
        Some(done) = apis.join_next() => Some(match done {
            Ok((node, Ok(()))) => RunError::ApiEnded { node },
            Ok((node, Err(source))) => RunError::Api { node, source },
            Err(e) => RunError::ApiTask {
                node: api_of.get(&e.id()).cloned().unwrap_or_default(),
                why: e.to_string(),
            },
        }),
    };
    drop(failures);
    let _ = stop_tx.send(true);
    while apis.join_next().await.is_some() {}
    for node in nodes {
        if let Err(source) = node.shutdown().await {
            let id = node.id().to_string();
            failed.get_or_insert(RunError::Shutdown { node: id, source });
        }
    }
    failed.map_or(Ok(()), Err)
}
