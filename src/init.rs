//! `concordant init`: writes a new cluster directory: `cluster.toml`, a cluster CA and one
//! certificate and key per node under `certs/`, a random API token (the admin token), and
//! the token-signing key pair of user tokens (`certs/tokens.key`, `certs/tokens.pub`).
//!
//! It owns the layout of a freshly made cluster directory. It writes only inside the
//! directory it is given, refuses to overwrite an existing cluster unless forced, and never
//! touches data directories.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::certs::{self, CertError};
use crate::config::{Config, ConfigError, RingDirection, TopologyKind, Tuning};
use crate::files::{self, Access};
use crate::topology::Topology;

/// Default first port: node `i` (from 1) gets peer port `base + i` and API port
/// `base + 1000 + i`.
pub const DEFAULT_BASE_PORT: u16 = 7100;

/// Most nodes `init` writes.
pub const MAX_INIT_NODES: usize = 64;

/// What `concordant init` should write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The cluster directory (created if missing).
    pub dir: PathBuf,
    /// Number of nodes, 1 to [`MAX_INIT_NODES`]; they are named `n1` to `nN`.
    pub nodes: usize,
    /// The topology; a ring is written with `ring_direction`, edges with links forming a
    /// ring to start from.
    pub topology: TopologyKind,
    /// Node `i` gets peer `127.0.0.1:(base_port + i)` and API
    /// `127.0.0.1:(base_port + 1000 + i)` ([`DEFAULT_BASE_PORT`] by default).
    pub base_port: u16,
    /// Overwrite an existing `cluster.toml` and certificates.
    pub force: bool,
    /// Cluster id; by default the directory's name made safe, or `cluster`.
    pub cluster: Option<String>,
    /// Each document on this many nodes (`replicas = R` in the file); `None`: every node
    /// has every document. 1 to `nodes`, and below `nodes` only for a mesh or a two-way
    /// ring.
    pub replicas: Option<usize>,
}

impl InitOptions {
    /// Options with the default base port, no forcing and the cluster id from the directory.
    pub fn new(dir: impl Into<PathBuf>, nodes: usize, topology: TopologyKind) -> InitOptions {
        InitOptions {
            dir: dir.into(),
            nodes,
            topology,
            base_port: DEFAULT_BASE_PORT,
            force: false,
            cluster: None,
            replicas: None,
        }
    }
}

/// Why `init` wrote nothing, or stopped part way.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The node count is out of range.
    #[error("--nodes {0}: a cluster needs 1 to {MAX_INIT_NODES} nodes")]
    NodeCount(usize),
    /// Edges need at least two nodes to link.
    #[error("--topology edges needs at least 2 nodes to link")]
    EdgesTooSmall,
    /// The replicas are out of range or not possible with the topology.
    #[error("--replicas {replicas}: {reason}")]
    Replicas {
        /// The replicas asked for.
        replicas: usize,
        /// Why they cannot be.
        reason: String,
    },
    /// The ports would go past 65535.
    #[error("--base-port {base_port}: with {nodes} nodes the API ports would go past 65535")]
    Ports {
        /// The base port asked for.
        base_port: u16,
        /// The node count.
        nodes: usize,
    },
    /// A cluster already exists there and `force` was not given.
    #[error("{}: a cluster already exists here; pass --force to overwrite it", path.display())]
    Exists {
        /// The existing `cluster.toml`.
        path: PathBuf,
    },
    /// A token-signing key exists there and `force` was not given.
    #[error(
        "{}: a token key is there already; pass --force to replace it (every token it signed \
         stops working)",
        path.display()
    )]
    KeyExists {
        /// The existing key.
        path: PathBuf,
    },
    /// The token-signing pair could not be made.
    #[error("cannot make the token-signing key pair: {0}")]
    Tokens(String),
    /// A directory or file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The file to be written would not validate (e.g. a bad cluster id).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new cluster into `opts.dir`; returns the path of its `cluster.toml`. Nothing is
/// written if the options or the resulting file are invalid; `cluster.toml` is written
/// last, so a failure part way never leaves a cluster pointing at missing certificates.
pub fn init_cluster(opts: &InitOptions) -> Result<PathBuf, InitError> {
    if !(1..=MAX_INIT_NODES).contains(&opts.nodes) {
        return Err(InitError::NodeCount(opts.nodes));
    }
    if opts.topology == TopologyKind::Edges && opts.nodes < 2 {
        return Err(InitError::EdgesTooSmall);
    }
    if let Some(replicas) = opts.replicas {
        check_replicas(opts.topology, opts.nodes, replicas)?;
    }
    let ports_overflow = || InitError::Ports {
        base_port: opts.base_port,
        nodes: opts.nodes,
    };
    let count = u16::try_from(opts.nodes).map_err(|_| ports_overflow())?;
    opts.base_port
        .checked_add(1000)
        .and_then(|p| p.checked_add(count))
        .ok_or_else(ports_overflow)?;

    let toml_path = opts.dir.join("cluster.toml");
    if toml_path.exists() && !opts.force {
        return Err(InitError::Exists { path: toml_path });
    }
    let cluster = match &opts.cluster {
        Some(c) => c.clone(),
        None => cluster_from_dir(&opts.dir),
    };
    let ids: Vec<String> = (1..=opts.nodes).map(|i| format!("n{i}")).collect();
    let text = cluster_toml(opts, &cluster, &ids, &random_token());
    // Validate before writing anything.
    Config::parse(&text, &toml_path)?;
    std::fs::create_dir_all(&opts.dir).map_err(io_error(&opts.dir))?;

    let certs_dir = opts.dir.join("certs");
    std::fs::create_dir_all(&certs_dir).map_err(io_error(&certs_dir))?;
    let ca = certs::generate_ca(&cluster)?;
    write_file(&certs_dir.join("ca.pem"), &ca.cert_pem, false)?;
    write_file(&certs_dir.join("ca.key"), &ca.key_pem, true)?;
    for id in &ids {
        let (cert, key) = certs::generate_node_cert(&ca, id)?;
        write_file(&certs_dir.join(format!("{id}.pem")), &cert, false)?;
        write_file(&certs_dir.join(format!("{id}.key")), &key, true)?;
    }
    // A new cluster's old keys are replaced like its certificates (`force`).
    write_token_keys(&certs_dir, true)?;
    write_file(&toml_path, &text, false)?;
    Ok(toml_path)
}

/// Whether `replicas` of `nodes` nodes are possible with `topology`.
fn check_replicas(topology: TopologyKind, nodes: usize, replicas: usize) -> Result<(), InitError> {
    let refuse = |reason: String| InitError::Replicas { replicas, reason };
    if replicas == 0 {
        return Err(refuse(
            "each document needs at least 1 node (leave --replicas out to keep every \
             document on every node)"
                .to_string(),
        ));
    }
    if replicas > nodes {
        return Err(refuse(format!(
            "more than the {nodes} nodes (--nodes {nodes})"
        )));
    }
    let ids = (1..=nodes).map(|i| format!("n{i}")).collect();
    Topology::new(topology, ids, Vec::new())
        .with_replicas(Some(replicas))
        .map(|_| ())
        .map_err(|e| refuse(e.to_string()))
}

/// The directory's name with anything but `A-Za-z0-9_.-` replaced by `-`, or `cluster`.
fn cluster_from_dir(dir: &Path) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let safe = safe.trim_matches(|c| c == '-' || c == '.');
    if safe.is_empty() {
        "cluster".to_string()
    } else {
        safe.to_string()
    }
}

/// 32 random hex characters.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn cluster_toml(opts: &InitOptions, cluster: &str, ids: &[String], token: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# concordant cluster, written by `concordant init`.");
    let _ = writeln!(out, "cluster = {}", quote(cluster));
    let _ = writeln!(out, "topology = {}", quote(opts.topology.name()));
    if let TopologyKind::Ring(direction) = opts.topology {
        let direction = match direction {
            RingDirection::Both => "both",
            RingDirection::Forward => "forward",
        };
        let _ = writeln!(
            out,
            "ring_direction = {}  # \"both\" or \"forward\" (one-way circular replication)",
            quote(direction)
        );
    }
    match opts.replicas {
        Some(r) => {
            let _ = writeln!(out, "replicas = {r}  # each document on this many nodes");
        }
        None if opts.topology != TopologyKind::Edges
            && opts.topology != TopologyKind::Ring(RingDirection::Forward) =>
        {
            let _ = writeln!(
                out,
                "# replicas = {}  # each document on this many nodes (default: every node)",
                opts.nodes.min(3)
            );
        }
        None => {}
    }
    let _ = writeln!(out, "\n[tls]  # paths are relative to this file");
    let _ = writeln!(out, "ca = \"certs/ca.pem\"");
    let _ = writeln!(
        out,
        "# node certificates default to certs/<id>.pem and certs/<id>.key"
    );
    let _ = writeln!(
        out,
        "\n[api]  # every HTTP request needs `Authorization: Bearer <token>`"
    );
    let _ = writeln!(out, "token = {}", quote(token));
    let _ = writeln!(
        out,
        "# user tokens (JWT, EdDSA) are verified with this key; certs/{TOKENS_PRIVATE_KEY} signs them"
    );
    let _ = writeln!(out, "token_key = \"certs/{TOKENS_PUBLIC_KEY}\"");
    for (i, id) in ids.iter().enumerate() {
        // Port arithmetic was checked by the caller.
        let offset = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let peer = u32::from(opts.base_port) + offset;
        let api = u32::from(opts.base_port) + 1000 + offset;
        let _ = writeln!(out, "\n[[node]]");
        let _ = writeln!(out, "id = {}", quote(id));
        let _ = writeln!(out, "peer = \"127.0.0.1:{peer}\"");
        let _ = writeln!(out, "api = \"127.0.0.1:{api}\"");
        let _ = writeln!(out, "data = {}", quote(&format!("data/{id}")));
    }
    if opts.topology == TopologyKind::Edges {
        let _ = writeln!(
            out,
            "\n# Undirected links; these form a ring to start from."
        );
        let n = ids.len();
        let links = if n == 2 { 1 } else { n };
        for i in 0..links {
            let _ = writeln!(out, "\n[[link]]");
            let _ = writeln!(out, "a = {}", quote(&ids[i]));
            let _ = writeln!(out, "b = {}", quote(&ids[(i + 1) % n]));
        }
    }
    let t = Tuning::default();
    let _ = writeln!(
        out,
        "\n# Optional tuning; the values shown are the defaults."
    );
    let _ = writeln!(out, "# [tuning]");
    for (name, value) in [
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
    ] {
        let _ = writeln!(out, "# {name} = {value}");
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
        ("sync_client_queue_bytes", t.sync_client_queue_bytes),
        ("watch_streams", t.watch_streams),
    ] {
        let _ = writeln!(out, "# {name} = {value}");
    }

    let _ = writeln!(out, "# compress_links = {}", t.compress_links);
    out
}

/// The token-signing private key's file name, next to the cluster CA.
pub const TOKENS_PRIVATE_KEY: &str = "tokens.key";
/// The token-signing public key's file name, next to the cluster CA.
pub const TOKENS_PUBLIC_KEY: &str = "tokens.pub";

/// Writes a new token-signing pair into `dir` (see [`crate::tokens`]); refused if one is
/// there, unless `force`. Returns the paths of the private and the public key.
pub fn write_token_keys(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), InitError> {
    let (private, public) = (dir.join(TOKENS_PRIVATE_KEY), dir.join(TOKENS_PUBLIC_KEY));
    if !force {
        if let Some(existing) = [&private, &public].into_iter().find(|p| p.exists()) {
            return Err(InitError::KeyExists {
                path: existing.clone(),
            });
        }
    }
    let (private_pem, public_pem) =
        crate::tokens::generate_key_pair().map_err(|e| InitError::Tokens(e.to_string()))?;
    write_file(&private, &private_pem, true)?;
    write_file(&public, &public_pem, false)?;
    Ok((private, public))
}

/// Writes `text` to `path`, replacing it atomically; secret files are made readable by the
/// owner only (also when they existed).
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), InitError> {
    let access = if secret { Access::Owner } else { Access::Keep };
    files::write_atomic(path, text.as_bytes(), access).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{cert_node_id_matches, load_identity};

    fn init(dir: &Path, nodes: usize, topology: TopologyKind) -> Result<PathBuf, InitError> {
        init_cluster(&InitOptions::new(dir, nodes, topology))
    }

    #[test]
    fn written_cluster_loads_and_its_identities_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My Cluster!");
        let path = init(&dir, 3, TopologyKind::Ring(RingDirection::Both)).unwrap();
        assert_eq!(path, dir.join("cluster.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ring_direction = \"both\""), "{text}");
        assert!(text.contains("# [tuning]"), "{text}");
        // The tuning hint, uncommented, is valid and gives the defaults.
        let (head, hint) = text.split_once("# [tuning]").unwrap();
        let uncommented = format!("{head}[tuning]{}", hint.replace("# ", ""));
        let tuned = Config::parse(&uncommented, &path).unwrap();
        assert_eq!(tuned.tuning, Tuning::default());
        let config = Config::load(&path).unwrap();
        assert_eq!(config.cluster, "My-Cluster");
        assert_eq!(config.topology, TopologyKind::Ring(RingDirection::Both));
        let token = config.api_token.clone().unwrap();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(config.nodes.len(), 3);
        for (i, node) in config.nodes.iter().enumerate() {
            let i = u16::try_from(i + 1).unwrap();
            assert_eq!(node.id, format!("n{i}"));
            assert_eq!(
                node.peer,
                format!("127.0.0.1:{}", 7100 + i).parse().unwrap()
            );
            assert_eq!(node.api, format!("127.0.0.1:{}", 8100 + i).parse().unwrap());
            assert_eq!(node.data, dir.join("data").join(&node.id));
            let identity = load_identity(&config.ca, &node.cert, &node.key).unwrap();
            assert!(cert_node_id_matches(&identity.chain[0], &node.id));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in ["ca.key", "n1.key", "n3.key"] {
                let mode = std::fs::metadata(dir.join("certs").join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
    }

    #[test]
    fn every_topology_writes_a_valid_file() {
        for (kind, nodes) in [
            (TopologyKind::Mesh, 1),
            (TopologyKind::Mesh, 5),
            (TopologyKind::Ring(RingDirection::Forward), 4),
            (TopologyKind::Edges, 2),
            (TopologyKind::Edges, 4),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let path = init(tmp.path(), nodes, kind).unwrap();
            let config = Config::load(&path).unwrap();
            assert_eq!(config.topology, kind);
            assert_eq!(config.nodes.len(), nodes);
            if kind == TopologyKind::Edges {
                assert_eq!(config.links.len(), if nodes == 2 { 1 } else { nodes });
                assert_eq!(config.topology().neighbours("n1").len(), nodes.min(3) - 1);
            }
        }
    }

    #[test]
    fn refuses_to_overwrite_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = InitOptions::new(tmp.path(), 2, TopologyKind::Mesh);
        opts.cluster = Some("prod".into());
        let path = init_cluster(&opts).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        let e = init_cluster(&opts).unwrap_err();
        assert!(matches!(e, InitError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        opts.force = true;
        opts.base_port = 9000;
        init_cluster(&opts).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.cluster, "prod");
        assert_eq!(config.nodes[0].peer.port(), 9001);
        let node = &config.nodes[1];
        load_identity(&config.ca, &node.cert, &node.key).unwrap();
    }

    #[test]
    fn bad_options_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        assert!(matches!(
            init(&dir, 0, TopologyKind::Mesh),
            Err(InitError::NodeCount(0))
        ));
        assert!(matches!(
            init(&dir, 65, TopologyKind::Mesh),
            Err(InitError::NodeCount(65))
        ));
        assert!(matches!(
            init(&dir, 1, TopologyKind::Edges),
            Err(InitError::EdgesTooSmall)
        ));
        let mut opts = InitOptions::new(&dir, 3, TopologyKind::Mesh);
        opts.base_port = 64533;
        assert!(matches!(init_cluster(&opts), Err(InitError::Ports { .. })));
        opts.base_port = 64532;
        opts.cluster = Some(String::new());
        let e = init_cluster(&opts).unwrap_err().to_string();
        assert!(e.contains("cluster: empty cluster id"), "{e}");
        assert!(!dir.exists());
        opts.cluster = None;
        let path = init_cluster(&opts).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.cluster, "c");
        assert_eq!(config.nodes[2].api.port(), 65535);
    }

    #[test]
    fn replicas_are_written_and_load() {
        for (kind, nodes, replicas) in [
            (TopologyKind::Mesh, 5, 3),
            (TopologyKind::Ring(RingDirection::Both), 4, 2),
            (TopologyKind::Mesh, 1, 1),
            (TopologyKind::Edges, 3, 3),
            (TopologyKind::Ring(RingDirection::Forward), 3, 3),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let mut opts = InitOptions::new(tmp.path(), nodes, kind);
            opts.replicas = Some(replicas);
            let path = init_cluster(&opts).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let at = |needle: &str| {
                text.find(needle)
                    .unwrap_or_else(|| panic!("{needle}: {text}"))
            };
            assert!(at("topology = ") < at(&format!("\nreplicas = {replicas}  #")));
            let config = Config::load(&path).unwrap();
            assert_eq!(config.replicas, Some(replicas), "{text}");
            assert_eq!(config.topology().replicas(), replicas);
            assert_eq!(config.topology().replicas_of("d").len(), replicas);
        }
        // Without --replicas: the key is absent (a hint for mesh and two-way rings), and
        // the hint, uncommented, is valid.
        let tmp = tempfile::tempdir().unwrap();
        let path = init(tmp.path(), 5, TopologyKind::Mesh).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n# replicas = 3  #"), "{text}");
        assert_eq!(Config::load(&path).unwrap().replicas, None);
        let hinted = Config::parse(&text.replace("# replicas", "replicas"), &path).unwrap();
        assert_eq!(hinted.replicas, Some(3));
        let path = init(tmp.path().join("e").as_path(), 3, TopologyKind::Edges).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("replicas"));
    }

    #[test]
    fn bad_replicas_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        for (kind, nodes, replicas, message) in [
            (
                TopologyKind::Mesh,
                3,
                0,
                "--replicas 0: each document needs at least 1 node",
            ),
            (
                TopologyKind::Mesh,
                3,
                4,
                "--replicas 4: more than the 3 nodes",
            ),
            (
                TopologyKind::Edges,
                4,
                2,
                "--replicas 2: replicas below the number of nodes",
            ),
            (
                TopologyKind::Ring(RingDirection::Forward),
                4,
                3,
                "--replicas 3: replicas below the number of nodes",
            ),
        ] {
            let mut opts = InitOptions::new(&dir, nodes, kind);
            opts.replicas = Some(replicas);
            let e = init_cluster(&opts).unwrap_err();
            assert!(matches!(e, InitError::Replicas { .. }), "{e}");
            assert!(e.to_string().starts_with(message), "{e}");
            assert!(!dir.exists());
        }
    }

    #[test]
    fn cluster_names_from_directories() {
        assert_eq!(cluster_from_dir(Path::new("/tmp/x/demo-1")), "demo-1");
        assert_eq!(cluster_from_dir(Path::new("/tmp/x/é é")), "cluster");
        assert_eq!(cluster_from_dir(Path::new("/")), "cluster");
    }
}
