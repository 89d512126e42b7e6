//! The topology file (TOML, see SPEC.md "Topology file") turned into a validated
//! [`Config`]: parse, don't validate. Once a `Config` exists every id is well formed and
//! unique, every address parses and is distinct, links name known nodes, relative paths
//! are resolved against the file's directory and every tuning knob has a sensible value.
//!
//! This module owns the file format and its error messages (each names the file and the
//! field). It reads the file and nothing else: it must not open sockets, touch data
//! directories or read certificates.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

// The topology kinds belong with the topology; the file names them.
use crate::topology::Topology;
pub use crate::topology::{RingDirection, TopologyKind};

/// One node of the cluster, with its paths resolved against the file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id: `[A-Za-z0-9_-]{1,64}`, unique (also ignoring case, as it is a TLS name).
    pub id: String,
    /// QUIC (UDP) address peers dial.
    pub peer: SocketAddr,
    /// HTTP client API (TCP) address.
    pub api: SocketAddr,
    /// Data directory (default `data/<id>`).
    pub data: PathBuf,
    /// Node certificate, PEM (default `certs/<id>.pem`).
    pub cert: PathBuf,
    /// Node private key, PEM (default `certs/<id>.key`).
    pub key: PathBuf,
}

/// Tuning knobs from the optional `[tuning]` table; every one has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// How long acknowledgements a full link could not take wait before they are sent
    /// again, and how long after the first change it counts a receipt of pushed changes
    /// goes out, in ms (default 100). (The core has no fixed tick: it asks to be woken when
    /// it has timed work.)
    pub tick_ms: u64,
    /// Period of the reconciliation with each neighbour, in ms (default 5000).
    pub anti_entropy_ms: u64,
    /// QUIC keep-alive interval, in ms (default 250); must be below `idle_timeout_ms`.
    pub keep_alive_ms: u64,
    /// A connection silent this long, in ms, is closed and its peer presumed down
    /// (default 1000).
    pub idle_timeout_ms: u64,
    /// First reconnect delay after a failed dial, in ms (default 50); doubles per failure.
    pub reconnect_min_ms: u64,
    /// Ceiling of the reconnect delay, in ms (default 2000).
    pub reconnect_max_ms: u64,
    /// Messages queued per peer link before the sender waits (default 1024).
    pub send_queue: usize,
    /// Stored changes of a document after which it is compacted into one snapshot
    /// (default 2000).
    pub compact_after: usize,
    /// Target size of one batch of changes in a message, in bytes (default 1 MiB); at most
    /// [`crate::wire_limits::BATCH_BUDGET`].
    pub max_batch_bytes: usize,
    /// Documents kept in memory, at most (default 4096); others are read from storage on
    /// use. Documents whose changes are not yet durable stay besides.
    pub cache_docs: usize,
    /// The memory the documents kept in memory hold, at most (default 64 MiB), as estimated
    /// from their data and their counts of changes, ops and objects (see
    /// [`crate::core::footprint`]: at least what they hold, for the shapes measured; 13 KiB
    /// per document, 1.5 times its data uncompressed, 256 bytes per change, 64 per object,
    /// 1 per op). Documents with changes not yet durable stay besides.
    pub cache_bytes: usize,
    /// automerge-repo WebSocket clients (`GET /v1/sync`) one node accepts at once
    /// (default 10000); more are refused with 503.
    pub sync_clients: usize,
    /// The largest WebSocket message accepted from a client, in bytes (default 32 MiB).
    pub sync_message_bytes: usize,
    /// Messages queued for one client past which the node stops reading that client's
    /// messages until it has taken some (default 1024): a burst of requests is answered at
    /// the pace the client reads.
    pub sync_client_queue: usize,
    /// Bytes queued for one client, at most (default 4 MiB; each message counts its data
    /// plus 128 bytes): a client that falls this far behind is disconnected (it syncs again
    /// when it reconnects) rather than hold the node's memory. One message always fits.
    pub sync_client_queue_bytes: usize,
    /// A client whose socket takes no write for this long, in ms, is disconnected
    /// (default 30000).
    pub sync_client_write_timeout_ms: u64,
    /// Open HTTP API connections per node, at most; more are answered 503 with
    /// `Retry-After` (default: derived from the process's soft file limit, see
    /// [`crate::api::ConnLimits`]). A few more are kept for `GET /v1/health`.
    pub api_connections: Option<usize>,
    /// Time a new API connection has to send its first request's head, in ms (default
    /// 10000); past it the connection is closed.
    pub api_header_timeout_ms: u64,
    /// Time a kept-alive API connection may wait between requests (its next request's head
    /// included), in ms (default 60000); past it the connection is closed.
    pub api_idle_timeout_ms: u64,
    /// `GET /v1/docs/{id}/watch` streams (server-sent events) open at once per node, at
    /// most (default 1024); more are answered 503 with `Retry-After`.
    pub watch_streams: usize,
    /// Offer compression on peer links (default true): a link is one deflate stream per
    /// direction when both of its nodes offer it (about half the bytes per write).
    pub compress_links: bool,
    /// The most bytes Automerge data from a client (a `POST /v1/docs/{id}/automerge` body,
    /// a sync message of a `/v1/sync` client) may inflate to, compressed chunks and columns
    /// all together (default 64 MiB); more is refused (413, or `error` and the socket
    /// closed) before anything is allocated beyond it. See [`crate::limits`].
    pub max_inflated_bytes: usize,
    /// The most such data may inflate to per byte of its size (default 64; inputs up to
    /// 16 KiB may always inflate to 1 MiB), within `max_inflated_bytes`.
    pub max_inflate_ratio: usize,
    /// The most bytes of one op's value from a client (default 1 MiB): a string or byte
    /// string, a map key, the whole text of a `text` op, the insert of a `splice`. More is
    /// refused (413, or `error` and the socket closed). See [`crate::limits`].
    pub max_op_bytes: usize,
    /// The most ops in one change from a client (default 100000), counted as Automerge
    /// does: one per character a `text` or `splice` inserts or deletes, one per map, list
    /// and scalar of a JSON value.
    pub max_change_ops: usize,
    /// The most encoded (uncompressed) bytes of one change from a client (default 4 MiB;
    /// for JSON ops an estimate: the bytes of their strings and keys plus 16 per op).
    pub max_change_bytes: usize,
    /// The most rows a saved document from a client may declare (default 1000000): its
    /// ops, their successors, its changes, their dependencies, each counted from run
    /// lengths before the document is loaded (loading costs time and memory per row, and
    /// run-length encoding declares millions of rows in a few bytes). See [`crate::limits`].
    pub max_doc_ops: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tick_ms: 100,
            anti_entropy_ms: 5000,
            keep_alive_ms: 250,
            idle_timeout_ms: 1000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 2000,
            send_queue: 1024,
            compact_after: 2000,
            max_batch_bytes: 1024 * 1024,
            cache_docs: 4096,
            cache_bytes: 64 << 20,
            sync_clients: 10_000,
            sync_message_bytes: 32 << 20,
            sync_client_queue: 1024,
            sync_client_queue_bytes: 4 << 20,
            sync_client_write_timeout_ms: 30_000,
            api_connections: None,
            api_header_timeout_ms: 10_000,
            api_idle_timeout_ms: 60_000,
            watch_streams: 1024,
            compress_links: true,
            max_inflated_bytes: 64 << 20,
            max_inflate_ratio: 64,
            max_op_bytes: 1 << 20,
            max_change_ops: 100_000,
            max_change_bytes: 4 << 20,
            max_doc_ops: 1_000_000,
        }
    }
}

/// A validated cluster configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Cluster id; peers presenting another id are refused.
    pub cluster: String,
    /// The topology kind.
    pub topology: TopologyKind,
    /// Each document on this many nodes (`replicas = R`); `None`: every node has every
    /// document. When set, 1 ≤ R ≤ the number of nodes, and R below the number of nodes
    /// only with a mesh or a two-way ring.
    pub replicas: Option<usize>,
    /// Cluster CA certificate (PEM), resolved against the file's directory.
    pub ca: PathBuf,
    /// Bearer token every HTTP request must present, if set: the admin token.
    pub api_token: Option<String>,
    /// The public key that verifies user tokens (`[api] token_key`, SPKI PEM), resolved
    /// against the file's directory; read by [`Config::token_verifier`].
    pub api_token_key: Option<PathBuf>,
    /// The nodes in file order (the ring order for a ring).
    pub nodes: Vec<NodeSpec>,
    /// Undirected links (only for [`TopologyKind::Edges`]).
    pub links: Vec<(String, String)>,
    /// Tuning knobs.
    pub tuning: Tuning,
}

impl fmt::Debug for Config {
    /// Like a derived `Debug`, with the API token redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("cluster", &self.cluster)
            .field("topology", &self.topology)
            .field("replicas", &self.replicas)
            .field("ca", &self.ca)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("api_token_key", &self.api_token_key)
            .field("nodes", &self.nodes)
            .field("links", &self.links)
            .field("tuning", &self.tuning)
            .finish()
    }
}

/// Why a topology file was refused. Every message names the file, and the field when
/// there is one: `cluster.toml: node[2].id: duplicate id "n1"`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (the message carries
    /// toml's line and column).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `node[2].id` (nodes and links counted from 1, in file order).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Option<String>,
    topology: Option<String>,
    ring_direction: Option<String>,
    replicas: Option<RawReplicas>,
    tls: Option<RawTls>,
    api: Option<RawApi>,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    link: Vec<RawLink>,
    #[serde(default)]
    tuning: Tuning,
}

/// `replicas = R` as written: any integer, negative ones included, so that the range gets
/// this file's message ([`Checker::replicas`]); anything else is refused while parsing with
/// a message saying what is expected.
struct RawReplicas(i64);

impl<'de> Deserialize<'de> for RawReplicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl serde::de::Visitor<'_> for Count {
            type Value = RawReplicas;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of nodes for replicas (e.g. replicas = 3)")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawReplicas, E> {
                Ok(RawReplicas(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawReplicas, E> {
                i64::try_from(v)
                    .map(RawReplicas)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_i64(Count)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    token: Option<String>,
    token_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<String>,
    peer: Option<String>,
    api: Option<String>,
    data: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    a: Option<String>,
    b: Option<String>,
}

/// Longest cluster id accepted, in bytes.
pub const MAX_CLUSTER_ID: usize = 128;

/// Whether `id` is a valid node id: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Config {
    /// The verifier of user tokens, if the file names a key (`[api] token_key`): read
    /// now; a missing or invalid key is refused naming the field.
    pub fn token_verifier(&self) -> Result<Option<crate::tokens::Verifier>, ConfigError> {
        let Some(path) = &self.api_token_key else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: self.path.clone(),
            field: "api.token_key".into(),
            message: format!("{}: {message}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        crate::tokens::Verifier::from_pem(&pem)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Reads and validates the topology file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as a topology file; `path` names the file in messages and its
    /// directory is the base of relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Checker { path }.check(raw)
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The static topology over the nodes (ring order = file order), with each document on
    /// [`Config::replicas`] of them. A loaded file has valid replicas; should a `Config`
    /// built in code not, every node has every document.
    pub fn topology(&self) -> Topology {
        let full = Topology::new(
            self.topology,
            self.nodes.iter().map(|n| n.id.clone()).collect(),
            self.links.clone(),
        );
        match self.replicas {
            None => full,
            Some(r) => full.clone().with_replicas(Some(r)).unwrap_or(full),
        }
    }
}

/// Validation of a parsed file; every error names `path`.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn base(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn check(&self, raw: RawFile) -> Result<Config, ConfigError> {
        let cluster = self.cluster(raw.cluster)?;
        let topology = self.topology(raw.topology, raw.ring_direction)?;
        let base = self.base();
        let ca = match raw.tls.and_then(|t| t.ca) {
            Some(ca) if ca.trim().is_empty() => {
                return Err(self.invalid("tls.ca", "empty path"));
            }
            Some(ca) => base.join(ca),
            None => base.join("certs").join("ca.pem"),
        };
        let (api_token, token_key) = match raw.api {
            Some(api) => (api.token, api.token_key),
            None => (None, None),
        };
        let api_token = self.token(api_token)?;
        let api_token_key = match token_key {
            Some(key) if key.trim().is_empty() => {
                return Err(self.invalid("api.token_key", "empty path"));
            }
            Some(key) => Some(base.join(key)),
            None => None,
        };
        let nodes = self.nodes(raw.node, &base)?;
        let links = self.links(raw.link, topology, &nodes)?;
        let replicas = self.replicas(raw.replicas.map(|r| r.0), topology, &nodes, &links)?;
        self.tuning(&raw.tuning)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            cluster,
            topology,
            replicas,
            ca,
            api_token,
            api_token_key,
            nodes,
            links,
            tuning: raw.tuning,
        })
    }

    fn cluster(&self, cluster: Option<String>) -> Result<String, ConfigError> {
        let Some(cluster) = cluster else {
            return Err(self.invalid(
                "cluster",
                "missing (the cluster id, e.g. cluster = \"demo\")",
            ));
        };
        if cluster.trim().is_empty() {
            return Err(self.invalid("cluster", "empty cluster id"));
        }
        if cluster.len() > MAX_CLUSTER_ID {
            return Err(self.invalid(
                "cluster",
                format!(
                    "cluster id is {} bytes long; at most {MAX_CLUSTER_ID}",
                    cluster.len()
                ),
            ));
        }
        if cluster.chars().any(char::is_control) {
            return Err(self.invalid("cluster", "cluster id contains control characters"));
        }
        Ok(cluster)
    }

    fn topology(
        &self,
        topology: Option<String>,
        direction: Option<String>,
    ) -> Result<TopologyKind, ConfigError> {
        let Some(name) = topology else {
            return Err(self.invalid("topology", "missing (\"mesh\", \"ring\" or \"edges\")"));
        };
        let Some(kind) = TopologyKind::from_name(&name) else {
            return Err(self.invalid(
                "topology",
                format!("unknown topology {name:?}; expected \"mesh\", \"ring\" or \"edges\""),
            ));
        };
        match (kind, direction.as_deref()) {
            (_, None) => Ok(kind),
            (TopologyKind::Ring(_), Some("both")) => Ok(TopologyKind::Ring(RingDirection::Both)),
            (TopologyKind::Ring(_), Some("forward")) => {
                Ok(TopologyKind::Ring(RingDirection::Forward))
            }
            (TopologyKind::Ring(_), Some(other)) => Err(self.invalid(
                "ring_direction",
                format!("unknown ring direction {other:?}; expected \"both\" or \"forward\""),
            )),
            (_, Some(_)) => Err(self.invalid(
                "ring_direction",
                format!("only allowed with topology = \"ring\", not {name:?}"),
            )),
        }
    }

    /// `replicas = R`: 1 ≤ R ≤ the nodes, and a topology that can place documents on R of
    /// them ([`Topology::with_replicas`] decides).
    fn replicas(
        &self,
        raw: Option<i64>,
        kind: TopologyKind,
        nodes: &[NodeSpec],
        links: &[(String, String)],
    ) -> Result<Option<usize>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let n = nodes.len();
        let Some(r) = usize::try_from(raw).ok().filter(|&r| r >= 1) else {
            return Err(self.invalid(
                "replicas",
                format!(
                    "replicas = {raw}: each document needs at least 1 node; remove the key to \
                     keep every document on every node"
                ),
            ));
        };
        if r > n {
            return Err(self.invalid(
                "replicas",
                format!(
                    "replicas = {r} but the file has {n} node{}; at most {n}",
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        let ids = nodes.iter().map(|node| node.id.clone()).collect();
        Topology::new(kind, ids, links.to_vec())
            .with_replicas(Some(r))
            .map_err(|e| self.invalid("replicas", format!("replicas = {r} of {n} nodes: {e}")))?;
        Ok(Some(r))
    }

    fn token(&self, token: Option<String>) -> Result<Option<String>, ConfigError> {
        match token {
            None => Ok(None),
            Some(t) if t.is_empty() => Err(self.invalid(
                "api.token",
                "empty token; remove the key to disable authentication",
            )),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => Err(self.invalid(
                "api.token",
                "the token must be printable ASCII without spaces (it goes in an HTTP header)",
            )),
            Some(t) => Ok(Some(t)),
        }
    }

    fn nodes(&self, raw: Vec<RawNode>, base: &Path) -> Result<Vec<NodeSpec>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid("node", "no [[node]] table; at least one node is needed"));
        }
        let mut nodes: Vec<NodeSpec> = Vec::with_capacity(raw.len());
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, (String, &'static str)> = HashMap::new();
        let mut data_dirs: HashMap<PathBuf, String> = HashMap::new();
        for (i, node) in raw.into_iter().enumerate() {
            let at = format!("node[{}]", i + 1);
            let Some(id) = node.id else {
                return Err(self.invalid(format!("{at}.id"), "missing"));
            };
            if !is_valid_node_id(&id) {
                return Err(self.invalid(
                    format!("{at}.id"),
                    format!("invalid id {id:?}; expected 1 to 64 of A-Z a-z 0-9 _ -"),
                ));
            }
            if let Some(first) = ids.insert(id.to_ascii_lowercase(), id.clone()) {
                let message = if first == id {
                    format!("duplicate id {id:?}")
                } else {
                    format!(
                        "id {id:?} differs from {first:?} only by case; ids must differ \
                         ignoring case (they are TLS names)"
                    )
                };
                return Err(self.invalid(format!("{at}.id"), message));
            }
            let peer = self.address(&at, "peer", node.peer)?;
            let api = self.address(&at, "api", node.api)?;
            for (addr, kind) in [(peer, "peer"), (api, "api")] {
                if addr.port() == 0 {
                    // Port 0 means "any free port": never a clash.
                    continue;
                }
                match addresses.get(&addr) {
                    // A node may use one port for both: UDP and TCP do not clash.
                    Some((other, _)) if *other == id => {}
                    Some((other, other_kind)) => {
                        return Err(self.invalid(
                            format!("{at}.{kind}"),
                            format!(
                                "address {addr} is already the {other_kind} address of \
                                 node {other:?}"
                            ),
                        ));
                    }
                    None => {
                        addresses.insert(addr, (id.clone(), kind));
                    }
                }
            }
            let data =
                self.path_field(&at, "data", node.data, base, || Path::new("data").join(&id))?;
            if let Some(other) = data_dirs.insert(data.clone(), id.clone()) {
                return Err(self.invalid(
                    format!("{at}.data"),
                    format!(
                        "data directory {} is also used by node {other:?}",
                        data.display()
                    ),
                ));
            }
            let cert = self.path_field(&at, "cert", node.cert, base, || {
                Path::new("certs").join(format!("{id}.pem"))
            })?;
            let key = self.path_field(&at, "key", node.key, base, || {
                Path::new("certs").join(format!("{id}.key"))
            })?;
            nodes.push(NodeSpec {
                id,
                peer,
                api,
                data,
                cert,
                key,
            });
        }
        Ok(nodes)
    }

    fn address(
        &self,
        at: &str,
        field: &str,
        value: Option<String>,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(text) = value else {
            return Err(self.invalid(format!("{at}.{field}"), "missing (e.g. \"127.0.0.1:7101\")"));
        };
        text.parse().map_err(|_| {
            self.invalid(
                format!("{at}.{field}"),
                format!("bad address {text:?}; expected IP:port like \"127.0.0.1:7101\""),
            )
        })
    }

    fn path_field(
        &self,
        at: &str,
        field: &str,
        value: Option<String>,
        base: &Path,
        default: impl FnOnce() -> PathBuf,
    ) -> Result<PathBuf, ConfigError> {
        match value {
            Some(p) if p.trim().is_empty() => {
                Err(self.invalid(format!("{at}.{field}"), "empty path"))
            }
            Some(p) => Ok(base.join(p)),
            None => Ok(base.join(default())),
        }
    }

    fn links(
        &self,
        raw: Vec<RawLink>,
        kind: TopologyKind,
        nodes: &[NodeSpec],
    ) -> Result<Vec<(String, String)>, ConfigError> {
        if kind != TopologyKind::Edges {
            if raw.is_empty() {
                return Ok(Vec::new());
            }
            return Err(self.invalid(
                "link[1]",
                format!(
                    "[[link]] is only allowed with topology = \"edges\", not {:?}",
                    kind.name()
                ),
            ));
        }
        if raw.is_empty() {
            return Err(self.invalid(
                "link",
                "topology = \"edges\" needs [[link]] tables (a = \"n1\", b = \"n2\")",
            ));
        }
        let known: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut links = Vec::with_capacity(raw.len());
        for (i, link) in raw.into_iter().enumerate() {
            let at = format!("link[{}]", i + 1);
            let (Some(a), Some(b)) = (link.a, link.b) else {
                return Err(self.invalid(at, "needs both ends, a and b"));
            };
            for (end, id) in [("a", &a), ("b", &b)] {
                if !known.contains(id.as_str()) {
                    return Err(self.invalid(format!("{at}.{end}"), format!("unknown node {id:?}")));
                }
            }
            if a == b {
                return Err(self.invalid(at, format!("links node {a:?} to itself")));
            }
            let key = if a < b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            if !seen.insert(key) {
                return Err(self.invalid(at, format!("duplicate link between {a:?} and {b:?}")));
            }
            links.push((a, b));
        }
        self.check_connected(nodes, &links)?;
        Ok(links)
    }

    /// Edges must leave no node isolated and no group of nodes cut off from the rest.
    fn check_connected(
        &self,
        nodes: &[NodeSpec],
        links: &[(String, String)],
    ) -> Result<(), ConfigError> {
        for (i, node) in nodes.iter().enumerate() {
            if !links.iter().any(|(a, b)| *a == node.id || *b == node.id) {
                return Err(self.invalid(
                    format!("node[{}].id", i + 1),
                    format!(
                        "node {:?} has no [[link]]; with topology = \"edges\" every node needs one",
                        node.id
                    ),
                ));
            }
        }
        let Some(first) = nodes.first() else {
            return Ok(());
        };
        let mut reached: HashSet<&str> = HashSet::from([first.id.as_str()]);
        let mut stack = vec![first.id.as_str()];
        while let Some(x) = stack.pop() {
            for (a, b) in links {
                let other = if a == x {
                    b.as_str()
                } else if b == x {
                    a.as_str()
                } else {
                    continue;
                };
                if reached.insert(other) {
                    stack.push(other);
                }
            }
        }
        if let Some(cut) = nodes.iter().find(|n| !reached.contains(n.id.as_str())) {
            return Err(self.invalid(
                "link",
                format!(
                    "the links do not connect node {:?} to node {:?}; changes could never \
                     reach it",
                    cut.id, first.id
                ),
            ));
        }
        Ok(())
    }

    fn tuning(&self, t: &Tuning) -> Result<(), ConfigError> {
        let positive: [(&str, u64); 9] = [
            ("tick_ms", t.tick_ms),
            ("anti_entropy_ms", t.anti_entropy_ms),
            ("keep_alive_ms", t.keep_alive_ms),
            ("idle_timeout_ms", t.idle_timeout_ms),
            ("reconnect_min_ms", t.reconnect_min_ms),
            ("reconnect_max_ms", t.reconnect_max_ms),
            (
                "sync_client_write_timeout_ms",
                t.sync_client_write_timeout_ms,
            ),
            ("api_header_timeout_ms", t.api_header_timeout_ms),
            ("api_idle_timeout_ms", t.api_idle_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(self.invalid(format!("tuning.{name}"), "must be at least 1"));
            }
        }
        for (name, value) in [
            ("send_queue", t.send_queue),
            ("compact_after", t.compact_after),
            ("max_batch_bytes", t.max_batch_bytes),
            ("cache_docs", t.cache_docs),
            ("cache_bytes", t.cache_bytes),
            ("sync_clients", t.sync_clients),
            ("sync_message_bytes", t.sync_message_bytes),
            ("sync_client_queue", t.sync_client_queue),
            ("max_inflated_bytes", t.max_inflated_bytes),
            ("max_inflate_ratio", t.max_inflate_ratio),
            ("max_op_bytes", t.max_op_bytes),
            ("max_change_ops", t.max_change_ops),
            ("max_change_bytes", t.max_change_bytes),
            ("max_doc_ops", t.max_doc_ops),
            ("sync_client_queue_bytes", t.sync_client_queue_bytes),
            ("api_connections", t.api_connections.unwrap_or(1)),
            ("watch_streams", t.watch_streams),
        ] {
            if value == 0 {
                return Err(self.invalid(format!("tuning.{name}"), "must be at least 1"));
            }
        }
        if t.idle_timeout_ms <= t.keep_alive_ms {
            return Err(self.invalid(
                "tuning.idle_timeout_ms",
                format!(
                    "{} must be greater than keep_alive_ms ({}), or idle links would be closed \
                     between keep-alives",
                    t.idle_timeout_ms, t.keep_alive_ms
                ),
            ));
        }
        if t.reconnect_max_ms < t.reconnect_min_ms {
            return Err(self.invalid(
                "tuning.reconnect_max_ms",
                format!(
                    "{} is below reconnect_min_ms ({})",
                    t.reconnect_max_ms, t.reconnect_min_ms
                ),
            ));
        }
        if t.max_batch_bytes > crate::wire_limits::BATCH_BUDGET {
            return Err(self.invalid(
                "tuning.max_batch_bytes",
                format!(
                    "{} is over the wire limit for a batch ({})",
                    t.max_batch_bytes,
                    crate::wire_limits::BATCH_BUDGET
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
