//! Growing and shrinking a running cluster from the command line: `concordant add-node`,
//! `remove-node` and `topology`; and the keys and tokens of user access (`init-tokens`,
//! `token`: `admin/tokens.rs`).
//!
//! `add-node` issues the new node's certificate from the cluster CA (the `ca.key` that
//! `init` wrote beside `ca.pem`), records the node in the running cluster through any live
//! node (`POST /v1/topology/nodes`; the change spreads to every node, which relink at
//! once), and adds the node to the topology file so that the new host can start from it.
//! `remove-node` records the removal (`DELETE /v1/topology/nodes/{id}`; sent to the node
//! itself when it answers, so that it drains first) and takes the node out of the file.
//! Both refuse an invalid change before anything is written.
//!
//! Owns the choice of the node to ask and the commands' steps; the file edits are in
//! `admin/file.rs` (a TOML document edit, written atomically, the previous file kept as
//! `FILE.bak`). The rules of a valid change are [`crate::membership`]'s, checked again by
//! the node that records it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use crate::certs::{generate_node_cert, CaBundle};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::files::{self, Access};

mod file;
mod tokens;

pub use tokens::{init_tokens, mint_token, parse_ttl, revoke, TokenRequest};

/// Errors of the administration commands; each says what was left unchanged.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The topology file could not be edited, or the edited file would not load (the file
    /// was left unchanged; a change the cluster recorded stays recorded).
    #[error("{path}: {detail}; the file was left unchanged")]
    Edit {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The certificate could not be issued.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
    /// Token keys could not be written.
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// A token could not be minted.
    #[error("{0}")]
    Token(String),
    /// No node of the cluster answered.
    #[error("no node answered ({0}); nothing was changed")]
    NoNode(String),
    /// The cluster refused the change.
    #[error("the cluster refused the change: {0}")]
    Refused(String),
    /// A request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdminError + '_ {
    move |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node to ask: `url` (with the file's token), or node `node` of the file, or else the
/// live nodes of the file in order until one answers.
pub struct Target {
    /// A node's API URL.
    pub url: Option<String>,
    /// A node of the file.
    pub node: Option<String>,
}

/// Sends `method path body` to the target; a node that cannot be reached is skipped when
/// the target is "any node". Returns the answer's JSON.
async fn ask(
    config: &Config,
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
    skip: Option<&str>,
) -> Result<Value, AdminError> {
    let clients: Vec<Client> = match (&target.url, &target.node) {
        (Some(url), _) => vec![Client::new(url, config.api_token.clone())?],
        (None, Some(node)) => vec![Client::for_node(config, node)?],
        (None, None) => {
            // The node `skip` only if there is no other (it then explains the refusal).
            let others: Vec<&str> = config
                .nodes
                .iter()
                .map(|n| n.id.as_str())
                .filter(|id| Some(*id) != skip)
                .collect();
            let ids = if others.is_empty() {
                config.nodes.iter().map(|n| n.id.as_str()).collect()
            } else {
                others
            };
            ids.into_iter()
                .map(|id| Client::for_node(config, id))
                .collect::<Result<_, _>>()?
        }
    };
    let body = body.map(|b| b.to_string().into_bytes());
    let mut failures = Vec::new();
    for client in clients {
        let client = client.with_timeout(Duration::from_secs(10));
        match client.request(method.clone(), path, body.clone()).await {
            Ok(answer) => return answered(answer),
            Err(e) => failures.push(format!("{}: {e}", client.url())),
        }
    }
    if failures.is_empty() {
        failures.push("the file lists no node".into());
    }
    Err(AdminError::NoNode(failures.join("; ")))
}

/// The JSON of a 200 answer, or the refusal it carries.
fn answered(answer: crate::client::Answer) -> Result<Value, AdminError> {
    if answer.status == 200 {
        return answer
            .json()
            .ok_or_else(|| AdminError::Refused("the answer is not JSON".into()));
    }
    let why = answer
        .json()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    Err(AdminError::Refused(why))
}

/// How long `remove-node` waits for a node that drains before it leaves (it gives up
/// after 30 s).
const DRAIN_WAIT: Duration = Duration::from_secs(40);

/// `concordant topology`: the live topology as a node knows it.
pub async fn topology(config: &Config, target: &Target) -> Result<Value, AdminError> {
    ask(config, target, Method::GET, "/v1/topology", None, None).await
}

/// What `add-node` did.
#[derive(Debug)]
pub struct Added {
    /// The certificate and key written for the new node.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The live topology afterwards.
    pub topology: Value,
}

/// `concordant add-node`: issues the certificate, records the node in the running
/// cluster, adds it to the file at `path`.
pub async fn add_node(
    path: &Path,
    target: &Target,
    id: &str,
    peer: SocketAddr,
    api: SocketAddr,
    links: &[String],
) -> Result<Added, AdminError> {
    let config = Config::load(path)?;
    let ca_key = config.ca.with_file_name("ca.key");
    let ca = CaBundle {
        cert_pem: std::fs::read_to_string(&config.ca).map_err(io(&config.ca))?,
        key_pem: std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?,
    };
    let dir = config.ca.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cert = dir.join(format!("{id}.pem"));
    let key = dir.join(format!("{id}.key"));
    let (cert_pem, key_pem) = generate_node_cert(&ca, id)?;
    let body = json!({"id": id, "peer": peer, "api": api, "links": links});
    let topology = ask(
        &config,
        target,
        Method::POST,
        "/v1/topology/nodes",
        Some(body),
        None,
    )
    .await?;
    files::write_atomic(&cert, cert_pem.as_bytes(), Access::Keep).map_err(io(&cert))?;
    files::write_atomic(&key, key_pem.as_bytes(), Access::Owner).map_err(io(&key))?;
    let change = file::Change::AddNode {
        id,
        peer,
        api,
        links,
    };
    file::apply(path, change)?;
    Ok(Added {
        cert,
        key,
        topology,
    })
}

/// `concordant remove-node`: records the removal in the running cluster and takes the
/// node out of the file. Without a target, the node itself is asked first: it drains (hands
/// everything it holds to its neighbours, taking no more writes) and then records its own
/// removal. If it cannot be reached (it is down), another node records the removal at once.
pub async fn remove_node(path: &Path, target: &Target, id: &str) -> Result<Value, AdminError> {
    let config = Config::load(path)?;
    let route = format!("/v1/topology/nodes/{id}");
    let drained = match (&target.url, &target.node, config.node(id)) {
        (None, None, Some(_)) => {
            let client = Client::for_node(&config, id)?.with_timeout(DRAIN_WAIT);
            match client.request(Method::DELETE, &route, None).await {
                Ok(answer) => Some(answered(answer)?),
                // Down: another node records the removal.
                Err(_) => None,
            }
        }
        _ => None,
    };
    let topology = match drained {
        Some(t) => t,
        None => ask(&config, target, Method::DELETE, &route, None, Some(id)).await?,
    };
    file::apply(path, file::Change::RemoveNode { id })?;
    Ok(topology)
}

/// SIGHUP: proposes through `node` the differences between the topology file (read again
/// by the caller) and the live topology: nodes the file lists that the cluster lacks (and
/// never removed) join, links of an `edges` topology follow the file, live nodes the file
/// no longer lists leave. One line per change
/// tried, saying what happened; address changes of existing nodes are not proposed.
pub async fn propose_file(node: &crate::Node, config: &Config) -> Vec<String> {
    use crate::node::TopologyChange;
    let live = match node.topology().await {
        Ok(Some(t)) => t,
        Ok(None) => return vec!["no live topology on this node".into()],
        Err(e) => return vec![format!("cannot read the live topology: {e}")],
    };
    let listed = |key: &str| -> Vec<String> {
        live[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("id").and_then(Value::as_str).or(n.as_str()))
            .map(str::to_string)
            .collect()
    };
    let (nodes, removed) = (listed("nodes"), listed("removed"));
    let mut changes = Vec::new();
    for spec in &config.nodes {
        if nodes.contains(&spec.id) || removed.contains(&spec.id) {
            continue;
        }
        let links = config
            .links
            .iter()
            .filter_map(|(a, b)| match (a == &spec.id, b == &spec.id) {
                (true, _) => Some(b.clone()),
                (_, true) => Some(a.clone()),
                _ => None,
            })
            .collect();
        let change = TopologyChange::Add {
            id: spec.id.clone(),
            peer: spec.peer,
            api: spec.api,
            links,
        };
        changes.push((format!("add {}", spec.id), change));
    }
    // Links (edges topologies): new ones first, so that a moved link never disconnects.
    let pair = |a: &str, b: &str| {
        if a <= b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        }
    };
    let live_links: std::collections::BTreeSet<(String, String)> = live["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some(pair(l.get(0)?.as_str()?, l.get(1)?.as_str()?)))
        .collect();
    let file_links: std::collections::BTreeSet<(String, String)> =
        config.links.iter().map(|(a, b)| pair(a, b)).collect();
    let linked = |(a, b): &(String, String)| nodes.contains(a) && nodes.contains(b);
    for (a, b) in file_links.difference(&live_links).filter(|l| linked(l)) {
        changes.push((
            format!("link {a}-{b}"),
            TopologyChange::Link(a.clone(), b.clone()),
        ));
    }
    for (a, b) in live_links.difference(&file_links) {
        changes.push((
            format!("unlink {a}-{b}"),
            TopologyChange::Unlink(a.clone(), b.clone()),
        ));
    }
    for id in nodes {
        if !config.nodes.iter().any(|n| n.id == id) {
            changes.push((format!("remove {id}"), TopologyChange::Remove { id }));
        }
    }
    let mut report = Vec::new();
    for (what, change) in changes {
        match node.change_topology(change).await {
            Ok(_) => report.push(format!("{what}: done")),
            Err(e) => report.push(format!("{what}: {e}")),
        }
    }
    report
}

/// The live topology as a short text: kind, replicas (when set), version, nodes in order,
/// removed nodes.
pub fn topology_table(t: &Value) -> String {
    let mut out = String::new();
    let replicas = match t.get("replicas") {
        Some(r) if !r.is_null() => format!("  replicas {r}"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "cluster {}  topology {}{replicas}  version {}  digest {}",
        t["cluster"].as_str().unwrap_or("?"),
        t["topology"].as_str().unwrap_or("?"),
        t["version"],
        t["digest"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(out, "{:<16} {:<24} {:<24}", "node", "peer", "api");
    for n in t["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<24}",
            n["id"].as_str().unwrap_or("?"),
            n["peer"].as_str().unwrap_or("?"),
            n["api"].as_str().unwrap_or("?"),
        );
    }
    let removed: Vec<&str> = t["removed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !removed.is_empty() {
        let _ = writeln!(out, "removed: {}", removed.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Membership;

    fn live(head: &str) -> Value {
        let text = format!(
            "cluster = \"c\"\n{head}\n[[node]]\nid = \"n1\"\npeer = \"127.0.0.1:7101\"\n\
             api = \"127.0.0.1:8101\"\n[[node]]\nid = \"n2\"\npeer = \"127.0.0.1:7102\"\n\
             api = \"127.0.0.1:8102\"\n"
        );
        let config = Config::parse(&text, Path::new("cluster.toml")).expect("a valid file");
        Membership::from_config(&config).to_json()
    }

    #[test]
    fn the_topology_table_shows_the_replicas_when_set() {
        let table = topology_table(&live("topology = \"mesh\"\nreplicas = 1"));
        let head = table.lines().next().unwrap_or_default();
        assert!(
            head.starts_with("cluster c  topology mesh  replicas 1  version 0  digest "),
            "{table}"
        );
        assert!(table.contains("\nn2 "), "{table}");
        let table = topology_table(&live("topology = \"mesh\""));
        assert!(!table.contains("replicas"), "{table}");
        assert!(
            table.starts_with("cluster c  topology mesh  version 0  digest "),
            "{table}"
        );
    }
}
