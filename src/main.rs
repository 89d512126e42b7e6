//! The `concordant` command line: parses flags, sets up logging and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use concordant::client::{self, Client};
use concordant::config::{Config, RingDirection, TopologyKind};
use concordant::init::{init_cluster, InitOptions};
use concordant::node::{Node, NodeConfig};

/// The program's allocator: glibc's malloc took about a quarter of a node's cycles under
/// writes spread over a million documents (documents decoded on reader threads and freed
/// on the event loop; `perf record`, see "Performance since 0.1.0" in CHANGELOG.md). The
/// library leaves the choice to the program that embeds it.
///
/// Built without transparent huge pages (mimalloc's `no_thp`: it does not `madvise` its
/// memory as huge): with them the kernel zeroed a whole 2 MiB page at each first touch of
/// fresh memory, 17–23% of the cycles of a 5-node benchmark under writes, whose nodes
/// held a third more memory. Where the kernel gives huge pages to every process
/// (`/sys/kernel/mm/transparent_hugepage/enabled` is `always`), `MIMALLOC_ALLOW_THP=0` in
/// the environment turns them off for this process (docs/operating.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "concordant",
    version,
    about = "Multi-master replication of Automerge documents over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum TopologyArg {
    Mesh,
    Ring,
    Edges,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new cluster: cluster.toml, a CA, node certificates and an API token.
    Init {
        /// Number of nodes.
        #[arg(long)]
        nodes: usize,
        /// Topology of the cluster.
        #[arg(long, value_enum)]
        topology: TopologyArg,
        /// Directory to write the cluster into.
        #[arg(long)]
        dir: PathBuf,
        /// First port: peers listen on P+1.., HTTP APIs on P+1001..
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Each document on R of the nodes (default: every node); below N only for a mesh
        /// or a ring.
        #[arg(long, value_name = "R")]
        replicas: Option<usize>,
        /// Overwrite an existing cluster in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Run one node of a topology file until SIGINT or SIGTERM.
    Node {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The node to run.
        #[arg(long)]
        id: String,
    },
    /// Run every node of a topology file in this process.
    Up {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
    },
    /// A five-node local cluster in a few seconds: writes, a node stopped, catch-up.
    Demo,
    /// The convergence benchmark: N nodes in this process over real QUIC on loopback.
    Bench(BenchArgs),
    /// Print a document as JSON.
    Get {
        /// Document id.
        doc: String,
        #[command(flatten)]
        target: Target,
    },
    /// Apply operations to a document as one atomic change.
    Op {
        /// Document id (created if new).
        doc: String,
        /// A JSON list of ops, one op object, or a whole request
        /// (e.g. '{"op":"set","path":["title"],"value":"hello"}').
        #[arg(long)]
        ops: String,
        /// Write concern: local (default), a number of peers, or all.
        #[arg(long)]
        ack: Option<String>,
        /// How long to wait for the write concern, in milliseconds (default 5000).
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// List a node's documents with their heads.
    Docs {
        #[command(flatten)]
        target: Target,
    },
    /// A node's status; with --config and no --node, a table of every node with its
    /// fingerprint (exit status 0 only if every node answers, all its links are up and all
    /// fingerprints agree: the same documents at the same heads).
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Check that a node serves (no token needed).
    Health {
        #[command(flatten)]
        target: Target,
    },
    /// Print a document's change events (new heads) as they happen.
    Watch {
        /// Document id.
        doc: String,
        #[command(flatten)]
        target: Target,
    },
    /// Add the token-signing key pair to an existing cluster (next to its CA:
    /// tokens.key, private, for the app's backend; tokens.pub, named in the file as
    /// `[api] token_key`); nodes verify user tokens once restarted with the file.
    InitTokens {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// Replace an existing pair (every token it signed stops working).
        #[arg(long)]
        force: bool,
    },
    /// Print a user token (a JWT signed with the cluster's tokens.key) for the documents
    /// given.
    Token {
        /// The topology file (its certs/tokens.key signs the token).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        request: concordant::admin::TokenRequest,
    },
    /// Write every document of a running node (Automerge save format) into one file,
    /// with progress on stderr.
    Backup {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The node to back up.
        #[arg(long)]
        node: String,
        /// The backup file to write (replaced only once complete).
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge a backup into a running cluster through one of its nodes (a merge never
    /// removes newer changes); the whole file is checked first.
    Restore {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The node to merge through.
        #[arg(long)]
        node: String,
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// Revoke user tokens on every node: one token by its id, or every token of a user
    /// issued until now.
    Revoke {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The token's id (its `jti` claim).
        #[arg(long, conflicts_with = "sub", required_unless_present = "sub")]
        jti: Option<String>,
        /// The user (its `sub` claim).
        #[arg(long)]
        sub: Option<String>,
        /// The node to ask (default: the first of the file that answers).
        #[arg(long, conflicts_with = "url")]
        node: Option<String>,
        /// A node's API URL to ask instead.
        #[arg(long)]
        url: Option<String>,
    },
    /// Add a node to the running cluster: issues its certificate from the cluster CA,
    /// records it through a live node (every node relinks at once) and adds it to the file,
    /// from which the new host then starts with `concordant node --config F --id ID`.
    AddNode {
        /// The topology file (its certs/ca.key signs the new certificate).
        #[arg(long)]
        config: PathBuf,
        /// The new node's id.
        #[arg(long)]
        id: String,
        /// Its peer (QUIC) address.
        #[arg(long)]
        peer: SocketAddr,
        /// Its HTTP API address.
        #[arg(long)]
        api: SocketAddr,
        /// Nodes to link it to (`edges` topologies only; repeat or separate by commas).
        #[arg(long, value_delimiter = ',')]
        link: Vec<String>,
        /// The node to ask (default: the first of the file that answers).
        #[arg(long, conflicts_with = "url")]
        node: Option<String>,
        /// A node's API URL to ask instead.
        #[arg(long)]
        url: Option<String>,
    },
    /// Remove a node from the running cluster: every node refuses it from then on and its
    /// neighbours relink around it; it is taken out of the file. Without --node/--url the
    /// node itself is asked first, and it hands everything it holds to its neighbours
    /// before it leaves (if it is down, another node records the removal).
    RemoveNode {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The node to remove.
        #[arg(long)]
        id: String,
        /// The node to ask (default: the node itself, else the first other node that answers).
        #[arg(long, conflicts_with = "url")]
        node: Option<String>,
        /// A node's API URL to ask instead.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the live topology (nodes in order, removed nodes) and its version.
    Topology {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// The node to ask (default: the first of the file that answers).
        #[arg(long, conflicts_with = "url")]
        node: Option<String>,
        /// A node's API URL to ask instead.
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which node a client command talks to.
#[derive(clap::Args)]
struct Target {
    /// Topology file: the node's API address and the token come from it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node of the topology file to talk to.
    #[arg(long)]
    node: Option<String>,
    /// The node's API URL, e.g. http://127.0.0.1:8101 (instead of --config and --node).
    #[arg(long, conflicts_with_all = ["config", "node"])]
    url: Option<String>,
    /// The API token (with --url).
    #[arg(long, requires = "url")]
    token: Option<String>,
}

impl Target {
    fn client(&self) -> Result<Client> {
        match (&self.url, &self.config, &self.node) {
            (Some(url), _, _) => Ok(Client::new(url, self.token.clone())?),
            (None, Some(config), Some(node)) => {
                let config = Config::load(config)?;
                Ok(Client::for_node(&config, node)?)
            }
            (None, Some(_), None) => bail!("--config needs --node ID to choose a node"),
            (None, None, _) => bail!("say which node: --config FILE --node ID, or --url URL"),
        }
    }
}

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("sync")
        .multiple(true)
        .args(["sync_clients", "sync_hold"])
        .conflicts_with_all([
            "sweep", "nodes", "topology", "docs", "writes", "rate", "samples", "preload",
            "preload_into", "replicas", "idle_secs", "out", "plot", "link_delay_ms",
            "ack_samples", "fanout", "keep_alive_ms", "idle_timeout_ms",
        ])
))]
struct BenchArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5, conflicts_with = "sweep")]
    nodes: usize,
    /// Topology (ring: both directions; tree: an `edges` topology laid out as a tree of
    /// --fanout children per node, n1 its root).
    #[arg(long, value_enum, default_value = "mesh", conflicts_with = "sweep")]
    topology: BenchTopology,
    /// Children per node of --topology tree (24 with 25 nodes: a star).
    #[arg(long, default_value_t = 4, conflicts_with = "sweep")]
    fanout: usize,
    /// Put a relay on every directed link that delays each UDP datagram by this many ms
    /// (one way; a round trip is twice it): slow links on loopback. Adds link_delay_ms,
    /// messages_per_write and what was seen of the links to the report.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "sweep")]
    link_delay_ms: Option<i64>,
    /// With --link-delay-ms: each datagram's delay is uniform in the delay ± this many ms
    /// (at most the delay; datagrams may overtake each other).
    #[arg(long, allow_negative_numbers = true, requires = "link_delay_ms")]
    link_jitter_ms: Option<i64>,
    /// With --link-delay-ms: the percentage of datagrams every link drops, at least 0 and
    /// below 100 (1 is 1 %).
    #[arg(
        long,
        value_name = "PCT",
        allow_negative_numbers = true,
        requires = "link_delay_ms"
    )]
    link_loss: Option<f64>,
    /// Writes with `ack: all` timed after the latency phase (each until answered).
    #[arg(long, default_value_t = 100, conflicts_with = "sweep")]
    ack_samples: usize,
    /// The links' QUIC keep-alive interval, ms (a node's default is 250; the bench's nodes
    /// share its cores, so a busy moment must not look like a dead peer).
    #[arg(long, default_value_t = concordant::bench::IN_PROCESS_KEEP_ALIVE_MS, conflicts_with = "sweep")]
    keep_alive_ms: u64,
    /// The links' idle timeout, ms, after which a silent link is down (a node's default is
    /// 1000).
    #[arg(long, default_value_t = concordant::bench::IN_PROCESS_IDLE_TIMEOUT_MS, conflicts_with = "sweep")]
    idle_timeout_ms: u64,
    /// Documents the writes are spread over.
    #[arg(long, default_value_t = 100, conflicts_with = "sweep")]
    docs: usize,
    /// Writes in the throughput and catch-up phases [default: 20000; 5000 with --sweep].
    #[arg(long)]
    writes: Option<usize>,
    /// Aim for this many writes per second in the throughput phase.
    #[arg(long)]
    rate: Option<u64>,
    /// Samples in the latency phase.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Before the nodes start, put this many identical one-change documents
    /// (pre-0000000…) into every node's store, so the cluster starts converged at that
    /// scale (the time it takes is reported as preload_s, outside every phase). With at
    /// least --docs of them, the writes go to preloaded documents spread evenly over
    /// them; else to new documents. 1,000,000 documents: --nodes 3 --preload 1000000.
    #[arg(long, default_value_t = 0, conflicts_with = "sweep")]
    preload: usize,
    /// Internal: only put the --preload documents into the stores in these data
    /// directories, then exit (a run with --preload does this in a child process, so
    /// that the preload's memory is not counted as the nodes').
    #[arg(long, hide = true, conflicts_with = "sweep")]
    preload_into: Vec<PathBuf>,
    /// Each document on this many of the nodes [default: all]: every write and read goes
    /// to a replica of its document; reports replicas and stored_docs_per_node. Between 1
    /// and --nodes, with mesh or ring.
    #[arg(long, conflicts_with = "sweep")]
    replicas: Option<usize>,
    /// Seconds of the idle phase's window (peer traffic once converged); raised to two
    /// anti-entropy periods if shorter (10 s with the default period).
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Period of the nodes' anti-entropy (reconciliation with each neighbour), ms.
    #[arg(long, default_value_t = 5_000)]
    anti_entropy_ms: u64,
    /// Peer links uncompressed (`[tuning] compress_links = false`), to compare.
    #[arg(long, conflicts_with = "sweep")]
    no_compress: bool,
    /// Print one last line of JSON with the results (with --sweep: one JSON array).
    #[arg(long)]
    json: bool,
    /// Write the full results (per-write latencies included) to this JSON file
    /// (with --sweep: the table, or the JSON array with --json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw the latency CDF and every replica's progress into this SVG file.
    #[arg(long, conflicts_with = "sweep")]
    plot: Option<PathBuf>,
    /// Run the benchmark over a grid of nodes × topologies × docs, each configuration in
    /// its own process, and print a Markdown table.
    #[arg(long)]
    sweep: bool,
    /// Node counts of the sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3,5,9,16",
        requires = "sweep"
    )]
    sweep_nodes: Vec<usize>,
    /// Topologies of the sweep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mesh,ring",
        requires = "sweep"
    )]
    sweep_topologies: Vec<BenchTopology>,
    /// Document counts of the sweep. A count of 100,000 or more also preloads that many
    /// documents into every node's store (as --preload) and spreads the writes over them:
    /// the 1,000,000-document row is `--sweep-nodes 3 --sweep-topologies mesh
    /// --sweep-docs 1000000` (give it a --sweep-timeout to match).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100,10000",
        requires = "sweep"
    )]
    sweep_docs: Vec<usize>,
    /// Seconds after which one configuration of the sweep is killed and reported failed.
    #[arg(long, default_value_t = 600, requires = "sweep")]
    sweep_timeout: u64,
    /// Benchmark automerge-repo clients over GET /v1/sync instead, on a 3-node mesh in
    /// this process: this many WebSocket clients per node edit documents shared with a
    /// client on every other node (each every 200-500 ms); reports the latency from a
    /// client's change to another node's client applying it [default: 100 with
    /// --sync-hold; 0 skips it].
    #[arg(long)]
    sync_clients: Option<usize>,
    /// With --sync-clients (or alone): then connect this many clients to one node, each
    /// joined and syncing a document, and report whether all are held [default: 1000;
    /// 0 skips it].
    #[arg(long)]
    sync_hold: Option<usize>,
    /// The --sync-hold clients all follow one shared document (and one change is timed
    /// until all have it) instead of each its own.
    #[arg(long, requires = "sync")]
    sync_hold_shared: bool,
    /// Seconds of the --sync-clients latency window (after a 2 s warm-up).
    #[arg(long, default_value_t = 20.0, requires = "sync")]
    sync_secs: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTopology {
    Mesh,
    Ring,
    RingForward,
    Tree,
}

impl From<BenchTopology> for TopologyKind {
    fn from(t: BenchTopology) -> Self {
        match t {
            BenchTopology::Mesh => TopologyKind::Mesh,
            BenchTopology::Ring => TopologyKind::Ring(RingDirection::Both),
            BenchTopology::RingForward => TopologyKind::Ring(RingDirection::Forward),
            BenchTopology::Tree => TopologyKind::Edges,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: errors that already name their cause in
/// their text (most do) are not followed by it again.
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Init {
            nodes,
            topology,
            dir,
            base_port,
            replicas,
            force,
        } => {
            let topology = match topology {
                TopologyArg::Mesh => TopologyKind::Mesh,
                TopologyArg::Ring => TopologyKind::Ring(RingDirection::Both),
                TopologyArg::Edges => TopologyKind::Edges,
            };
            let path = init_cluster(&InitOptions {
                dir,
                nodes,
                topology,
                base_port,
                force,
                cluster: None,
                replicas,
            })?;
            println!("wrote {}", path.display());
            println!("run it with: concordant up --config {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { config, id } => {
            logging("info");
            let config = Config::load(&config)?;
            let node_config = NodeConfig::from_file(&config, &id)?;
            let api = config
                .node(&id)
                .map(|n| n.api)
                .context("node missing from the topology")?;
            let verifier = config.token_verifier()?;
            runtime.block_on(run_nodes(
                vec![(node_config, api)],
                (config.api_token.clone(), verifier),
                config.path.clone(),
            ))
        }
        Command::Up { config } => {
            logging("info");
            let config = Config::load(&config)?;
            if config.nodes.is_empty() {
                bail!("{}: no nodes", config.path.display());
            }
            let configs = config
                .nodes
                .iter()
                .map(|n| Ok((NodeConfig::from_file(&config, &n.id)?, n.api)))
                .collect::<Result<Vec<_>>>()?;
            let verifier = config.token_verifier()?;
            runtime.block_on(run_nodes(
                configs,
                (config.api_token.clone(), verifier),
                config.path.clone(),
            ))
        }
        Command::Bench(args) if args.sweep => {
            let opts = concordant::bench::sweep::SweepOptions {
                exe: std::env::current_exe().context("cannot find this executable")?,
                nodes: args.sweep_nodes,
                topologies: args.sweep_topologies.into_iter().map(Into::into).collect(),
                docs: args.sweep_docs,
                writes: args.writes.unwrap_or(5_000),
                samples: args.samples,
                rate: args.rate,
                idle_secs: args.idle_secs,
                anti_entropy_ms: args.anti_entropy_ms,
                timeout: Duration::from_secs(args.sweep_timeout),
                progress: true,
            };
            let rows = concordant::bench::sweep::run(&opts)?;
            let text = if args.json {
                concordant::bench::sweep::json(&rows)
            } else {
                concordant::bench::sweep::markdown(&rows)
            };
            println!("{}", text.trim_end());
            if let Some(path) = &args.out {
                concordant::bench::sweep::write_to(path, &text)?;
                eprintln!("sweep written to {}", path.display());
            }
            Ok(if rows.iter().all(|r| r.converged()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) if args.sync_clients.is_some() || args.sync_hold.is_some() => {
            logging("error");
            let opts = concordant::bench::clients::SyncBenchOptions {
                clients_per_node: args.sync_clients.unwrap_or(100),
                hold: args.sync_hold.unwrap_or(1000),
                hold_shared: args.sync_hold_shared,
                secs: args.sync_secs,
                anti_entropy_ms: args.anti_entropy_ms,
                progress: true,
                ..Default::default()
            };
            let report = runtime.block_on(concordant::bench::clients::run(&opts))?;
            println!("{}", report.human());
            if args.json {
                println!("{}", report.summary_json());
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) if !args.preload_into.is_empty() => {
            let placed = args.replicas.map(|r| (args.topology.into(), r));
            concordant::bench::preload_into(&args.preload_into, args.preload, placed, true)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            logging("error");
            for path in [&args.out, &args.plot].into_iter().flatten() {
                check_parent_dir(path)?;
            }
            let link = match args.link_delay_ms {
                Some(delay) => Some(concordant::bench::LinkOptions::new(
                    delay,
                    args.link_jitter_ms.unwrap_or(0),
                    args.link_loss.unwrap_or(0.0),
                )?),
                None => None,
            };
            let opts = concordant::bench::BenchOptions {
                nodes: args.nodes,
                topology: args.topology.into(),
                tree_fanout: args.fanout,
                link,
                ack_samples: args.ack_samples,
                docs: args.docs,
                writes: args.writes.unwrap_or(20_000),
                rate: args.rate,
                latency_samples: args.samples,
                progress: true,
                preload: args.preload,
                replicas: args.replicas,
                idle_secs: args.idle_secs,
                anti_entropy_ms: args.anti_entropy_ms,
                keep_alive_ms: args.keep_alive_ms,
                idle_timeout_ms: args.idle_timeout_ms,
                compress_links: !args.no_compress,
                preload_exe: Some(std::env::current_exe().context("cannot find this executable")?),
            };
            let report = runtime.block_on(concordant::bench::run(&opts))?;
            println!("{}", report.human());
            if let Some(path) = &args.out {
                std::fs::write(path, report.full_json())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("full results written to {}", path.display());
            }
            if let Some(path) = &args.plot {
                concordant::bench::plot::write_svg(&report, path)?;
                println!("plot written to {}", path.display());
            }
            if args.json {
                println!("{}", report.summary_json());
            }
            Ok(if report.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo => {
            logging("error");
            let converged = runtime.block_on(concordant::demo::run())?;
            Ok(if converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Get { doc, target } => {
            runtime.block_on(async { print_json(&client::get(&target.client()?, &doc).await?) })
        }
        Command::Op {
            doc,
            ops,
            ack,
            timeout_ms,
            target,
        } => runtime.block_on(async {
            let request = client::op_request(&ops, ack.as_deref(), timeout_ms)?;
            print_json(&client::op(&target.client()?, &doc, &request).await?)
        }),
        Command::InitTokens { config, force } => {
            let (private, public) = concordant::admin::init_tokens(&config, force)?;
            println!(
                "wrote {} (private: keep it with the app's backend) and {}; {} names it as \
                 [api] token_key: restart the nodes with it",
                private.display(),
                public.display(),
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { config, request } => {
            println!("{}", concordant::admin::mint_token(&config, &request)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { config, node, out } => runtime.block_on(async {
            let config = Config::load(&config)?;
            let client = Client::for_node(&config, &node)?.with_timeout(BACKUP_TIMEOUT);
            let done = concordant::backup::backup(&client, &out).await?;
            println!(
                "{}: {} documents of {node} ({} bytes of data; {} moved away meanwhile)",
                out.display(),
                done.docs,
                done.bytes,
                done.skipped
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Restore {
            config,
            node,
            input,
        } => runtime.block_on(async {
            let config = Config::load(&config)?;
            let client = Client::for_node(&config, &node)?.with_timeout(BACKUP_TIMEOUT);
            let done = concordant::backup::restore(&client, &input).await?;
            println!(
                "{}: {} documents merged through {node} ({} bytes of data)",
                input.display(),
                done.docs,
                done.bytes
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Revoke {
            config,
            jti,
            sub,
            node,
            url,
        } => runtime.block_on(async {
            let target = concordant::admin::Target { url, node };
            let loaded = Config::load(&config)?;
            let what = match (jti, sub) {
                (Some(jti), _) => concordant::revocations::Revoke::Jti(jti),
                (None, Some(sub)) => concordant::revocations::Revoke::Sub(sub),
                (None, None) => bail!("give --jti or --sub"),
            };
            let answer = concordant::admin::revoke(&loaded, &target, &what).await?;
            let revoked = match &what {
                concordant::revocations::Revoke::Jti(jti) => format!("token {jti}"),
                concordant::revocations::Revoke::Sub(sub) => {
                    format!("every token of {sub} issued until now")
                }
            };
            println!(
                "revoked {revoked}; the revocation reaches every node (the node asked holds {})",
                answer["revocations"]
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::AddNode {
            config,
            id,
            peer,
            api,
            link,
            node,
            url,
        } => runtime.block_on(async {
            let target = concordant::admin::Target { url, node };
            let added =
                concordant::admin::add_node(&config, &target, &id, peer, api, &link).await?;
            print!("{}", concordant::admin::topology_table(&added.topology));
            println!(
                "{id} added: certificate {} and key {} written, {} updated; start it with\n  concordant node --config {} --id {id}",
                added.cert.display(),
                added.key.display(),
                config.display(),
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::RemoveNode {
            config,
            id,
            node,
            url,
        } => runtime.block_on(async {
            let target = concordant::admin::Target { url, node };
            let topology = concordant::admin::remove_node(&config, &target, &id).await?;
            print!("{}", concordant::admin::topology_table(&topology));
            println!("{id} removed; {} updated", config.display());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Topology {
            config,
            node,
            url,
            json,
        } => runtime.block_on(async {
            let target = concordant::admin::Target { url, node };
            let loaded = Config::load(&config)?;
            let topology = concordant::admin::topology(&loaded, &target).await?;
            if json {
                print_json(&topology)
            } else {
                print!("{}", concordant::admin::topology_table(&topology));
                Ok(ExitCode::SUCCESS)
            }
        }),
        Command::Docs { target } => {
            runtime.block_on(async { print_json(&client::docs(&target.client()?).await?) })
        }
        Command::Health { target } => {
            runtime.block_on(async { print_json(&client::health(&target.client()?).await?) })
        }
        Command::Status { target } => runtime.block_on(async {
            match (&target.config, &target.node, &target.url) {
                (Some(config), None, None) => {
                    let config = Config::load(config)?;
                    let cluster = client::cluster_status(&config, Duration::from_secs(5)).await;
                    print!("{}", cluster.table());
                    Ok(if cluster.healthy() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                _ => print_json(&client::status(&target.client()?).await?),
            }
        }),
        Command::Watch { doc, target } => runtime.block_on(async {
            let mut events = client::watch(&target.client()?, &doc).await?;
            while let Some(event) = events.next().await? {
                println!("{}", event.data);
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Fails early, before a long run, if a results file cannot be created for want of its
/// directory.
fn check_parent_dir(path: &std::path::Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs nodes, each with its HTTP API, until SIGINT or SIGTERM; then stops the APIs and
/// shuts the nodes down cleanly. Every API address is bound before any node starts. On
/// SIGHUP the topology file `path` is read again and its differences from the live
/// topology are proposed as changes.
/// The longest a backup or restore waits for one answer of the node.
const BACKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn run_nodes(
    configs: Vec<(NodeConfig, SocketAddr)>,
    (token, verifier): (Option<String>, Option<concordant::tokens::Verifier>),
    path: PathBuf,
) -> Result<ExitCode> {
    let verifier = verifier.map(std::sync::Arc::new);
    let mut listeners = Vec::new();
    for (config, api) in &configs {
        let listener = concordant::api::bind(*api)
            .await
            .with_context(|| format!("node {}", config.id))?;
        listeners.push(listener);
    }
    let mut served = Vec::new();
    // The file descriptors of the process are shared by the nodes it runs.
    let nodes = configs.len();
    for ((config, _), listener) in configs.into_iter().zip(listeners) {
        let id = config.id.clone();
        let mut options = concordant::api::ApiOptions::new(token.clone());
        options.verifier = verifier.clone();
        options.sync = concordant::sync::SyncOptions::from(&config.tuning);
        options.limits = concordant::api::ConnLimits::from_tuning(&config.tuning, nodes);
        let node = Node::start(config)
            .await
            .with_context(|| format!("node {id}"))?;
        served.push(concordant::serve::Served {
            node,
            listener,
            options,
        });
    }
    tracing::info!(nodes = served.len(), "running; stop with Ctrl-C or SIGTERM");
    let nodes = served.iter().map(|s| s.node.clone()).collect();
    let reload = tokio::spawn(reload_on_sighup(path, nodes));
    let ran = concordant::serve::run(served, shutdown_signal()?).await;
    reload.abort();
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: reads the topology file again and proposes its differences from the live
/// topology through the first node (the change spreads to every node). Runs until the
/// process ends.
async fn reload_on_sighup(path: PathBuf, nodes: Vec<Node>) -> Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    while hup.recv().await.is_some() {
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; nothing changed");
                continue;
            }
        };
        let Some(node) = nodes.first() else {
            continue;
        };
        let report = concordant::admin::propose_file(node, &config).await;
        if report.is_empty() {
            tracing::info!(file = %path.display(), "SIGHUP: the file and the live topology agree");
        }
        for line in report {
            tracing::info!(file = %path.display(), "SIGHUP: {line}");
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (or if SIGINT cannot be listened for, said in the log).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if let Err(e) = r {
                    tracing::error!("cannot listen for SIGINT: {e}");
                }
            }
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
