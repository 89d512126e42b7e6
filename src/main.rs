//! The `concordant` command line: parses flags, sets up logging and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use concordant::config::{Config, RingDirection, TopologyKind};
use concordant::init::{init_cluster, InitOptions};
use concordant::node::{Node, NodeConfig};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
            })?;
            println!("wrote {}", path.display());
            println!("run it with: concordant up --config {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { config, id } => {
            logging("info");
            let config = Config::load(&config)?;
            let node_config = NodeConfig::from_file(&config, &id)?;
            runtime.block_on(async {
                let node = Node::start(node_config).await?;
                tracing::info!(node = %id, "running; stop with Ctrl-C or SIGTERM");
                shutdown_signal().await?;
                node.shutdown().await?;
                Ok(ExitCode::SUCCESS)
            })
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
                .map(|n| NodeConfig::from_file(&config, &n.id))
                .collect::<Result<Vec<_>, _>>()?;
            runtime.block_on(async {
                let mut nodes = Vec::new();
                for c in configs {
                    nodes.push(Node::start(c).await?);
                }
                tracing::info!(
                    nodes = nodes.len(),
                    "cluster running; stop with Ctrl-C or SIGTERM"
                );
                shutdown_signal().await?;
                for node in nodes {
                    node.shutdown().await?;
                }
                Ok(ExitCode::SUCCESS)
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
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
