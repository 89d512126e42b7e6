//! How tests reach a node's HTTP API: [`Access`], through the crate's client or through
//! the `concordant` command line run inside a network namespace; [`Failure`] says whether a
//! failed request may have taken effect; helpers reading `/v1/status` answers.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use concordant::client::{self, Client, ClientError};
use serde_json::Value;

use super::BIN;
use crate::common::checker::ReplicaState;

/// Why a request to a node's API failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No connection could be made: the request never reached the node.
    NotSent(String),
    /// Answered with a 4xx status: refused, it changed nothing.
    Refused(String),
    /// Anything else (a 5xx such as a write-concern timeout, a connection lost mid-way):
    /// the request may or may not have taken effect.
    Unknown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "not sent: {e}"),
            Failure::Refused(e) => write!(f, "refused: {e}"),
            Failure::Unknown(e) => write!(f, "failed: {e}"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Connect { .. } => Failure::NotSent(e.to_string()),
            ClientError::Status { status, .. } if (400..500).contains(&status) => {
                Failure::Refused(e.to_string())
            }
            _ => Failure::Unknown(e.to_string()),
        }
    }
}

/// How the test reaches a node's HTTP API.
#[derive(Debug, Clone)]
pub enum Access {
    /// Directly, with the crate's client.
    Client(Client),
    /// With `ip netns exec <ns> concordant <command> --config <file> --node <id>`.
    Netns {
        /// The node's namespace.
        ns: String,
        /// The topology file.
        config: PathBuf,
        /// The node.
        node: String,
    },
}

impl Access {
    /// Applies an ops request (`{"ops":[...],"ack":...}`) to `doc`.
    pub async fn op(&self, doc: &str, request: &Value) -> Result<Value, Failure> {
        match self {
            Access::Client(c) => Ok(client::op(c, doc, request).await?),
            Access::Netns { .. } => self.cli(&["op", doc, "--ops", &request.to_string()]).await,
        }
    }

    /// The document as JSON.
    pub async fn get(&self, doc: &str) -> Result<Value, Failure> {
        match self {
            Access::Client(c) => Ok(client::get(c, doc).await?),
            Access::Netns { .. } => self.cli(&["get", doc]).await,
        }
    }

    /// `[{"id","heads"}...]`.
    pub async fn docs(&self) -> Result<Value, Failure> {
        match self {
            Access::Client(c) => Ok(client::docs(c).await?),
            Access::Netns { .. } => self.cli(&["docs"]).await,
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Value, Failure> {
        match self {
            Access::Client(c) => Ok(client::status(c).await?),
            Access::Netns { .. } => self.cli(&["status"]).await,
        }
    }

    /// Runs a client command of the binary inside the namespace; its printed JSON.
    async fn cli(&self, args: &[&str]) -> Result<Value, Failure> {
        let Access::Netns { ns, config, node } = self else {
            unreachable!("cli is only used for namespaces");
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN])
            .args(args)
            .arg("--config")
            .arg(config)
            .args(["--node", node])
            .stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("cli task")
            .expect("run concordant in the namespace");
        if out.status.success() {
            return serde_json::from_slice(&out.stdout)
                .map_err(|e| Failure::Unknown(format!("{node}: {args:?} printed no JSON: {e}")));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // The client's messages: "cannot connect to ..." and "<url> answered <status>: ...".
        let status = stderr
            .split_once(" answered ")
            .and_then(|(_, rest)| rest.get(..3))
            .and_then(|s| s.parse::<u16>().ok());
        Err(if stderr.contains("cannot connect to") {
            Failure::NotSent(stderr)
        } else if status.is_some_and(|s| (400..500).contains(&s)) {
            Failure::Refused(stderr)
        } else {
            Failure::Unknown(stderr)
        })
    }

    /// What this node holds: every document with its heads and JSON.
    pub async fn replica_state(&self, node: &str) -> Result<ReplicaState, Failure> {
        let docs = self.docs().await?;
        let mut out = Vec::new();
        for d in docs.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let id = d["id"].as_str().unwrap_or_default().to_string();
            let heads = d["heads"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|h| h.as_str().unwrap_or_default().to_string())
                .collect();
            let json = self.get(&id).await?;
            out.push((id, heads, json));
        }
        Ok(ReplicaState::new(node, out))
    }
}

/// Whether every peer a `/v1/status` answer marks as linked is connected.
pub fn links_up(status: &Value) -> bool {
    status["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|p| p["linked"] == true)
        .all(|p| p["connected"] == true)
}

/// Document id → its heads (sorted), of a `GET /v1/docs` answer.
pub fn listing_heads<C: FromIterator<(String, Vec<String>)>>(list: &Value) -> C {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|d| {
            let mut heads: Vec<String> = d["heads"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect();
            heads.sort();
            (d["id"].as_str().unwrap_or_default().to_string(), heads)
        })
        .collect()
}

/// The peers a `/v1/status` answer marks as linked.
pub fn linked_peers(status: &Value) -> BTreeSet<String> {
    status["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|p| p["linked"] == true)
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}
