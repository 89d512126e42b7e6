//! A replicated key-value service of its own, built on an embedded concordant `Node`.
//!
//! Each process is one node of a cluster described by a topology file (as written by
//! `concordant init`) and serves a line protocol over TCP on `--listen` (default: the
//! node's `api` address from the file). All keys live in one Automerge document, `kv`,
//! whose root map holds `key -> value` strings; every node accepts writes and concordant
//! replicates them to the others over QUIC with mutual TLS. Concurrent `PUT`s of one key
//! resolve to the same winner everywhere.
//!
//! Protocol, one request per line, one reply line each:
//! - `PUT key value...` -> `OK` (the value is the rest of the line, spaces included)
//! - `GET key`          -> `OK value` or `NOT_FOUND`
//! - `DEL key`          -> `OK` or `NOT_FOUND`
//! - `KEYS`             -> `OK key1 key2 ...` (sorted)
//! - anything else      -> `ERR message`
//!
//! Keys are one word (no spaces). A line longer than 64 KiB closes the connection.
//!
//! A session: one terminal per node, a third for `nc` (type the requests; Ctrl-C quits nc).
//! ```text
//! $ cargo run --release -- init --nodes 2 --topology mesh --dir /tmp/kv
//! wrote /tmp/kv/cluster.toml
//!
//! [terminal 1]
//! $ cargo run --release --example replicated_kv -- --config /tmp/kv/cluster.toml --id n1 --listen 127.0.0.1:9001
//! node n1: peers on 127.0.0.1:7101, key-value service on 127.0.0.1:9001 (Ctrl-C to stop)
//! [terminal 2]
//! $ cargo run --release --example replicated_kv -- --config /tmp/kv/cluster.toml --id n2 --listen 127.0.0.1:9002
//! node n2: peers on 127.0.0.1:7102, key-value service on 127.0.0.1:9002 (Ctrl-C to stop)
//!
//! [terminal 3: write on n1, read, delete and list on n2]
//! $ nc 127.0.0.1 9001
//! PUT greeting hello world
//! OK
//! PUT colour blue
//! OK
//! $ nc 127.0.0.1 9002
//! GET greeting
//! OK hello world
//! DEL colour
//! OK
//! KEYS
//! OK greeting
//!
//! [terminal 1: Ctrl-C]
//! shutting down
//! [terminal 3: n2 keeps accepting writes]
//! $ nc 127.0.0.1 9002
//! PUT while n1 was down
//! OK
//! [terminal 1: start n1 again with the same command; it reloads /tmp/kv/data/n1 and
//!  catches up]
//! $ nc 127.0.0.1 9001
//! KEYS
//! OK greeting while
//! GET while
//! OK n1 was down
//! ```
//!
//! `tests/examples.rs` runs `serve` in-process on two nodes and talks to it over TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use automerge::transaction::Transactable;
use automerge::{AutomergeError, ReadDoc, ROOT};
use clap::Parser;
use concordant::config::Config;
use concordant::node::NodeConfig;
use concordant::Node;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The document holding every key.
pub const DOC: &str = "kv";
/// Longest request line, in bytes.
const MAX_LINE: usize = 64 * 1024;

/// A replicated key-value service: one node of a concordant cluster.
#[derive(Parser)]
struct Args {
    /// The topology file (from `concordant init`).
    #[arg(long)]
    config: PathBuf,
    /// This node's id in the file.
    #[arg(long)]
    id: String,
    /// TCP address of the key-value service (default: the node's `api` address).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();

    let config = Config::load(&args.config)?;
    let spec = config
        .node(&args.id)
        .ok_or_else(|| anyhow!("{}: no node {:?}", args.config.display(), args.id))?;
    let listen = args.listen.unwrap_or(spec.api);
    let node = Node::start(NodeConfig::from_file(&config, &args.id)?).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "node {}: peers on {}, key-value service on {} (Ctrl-C to stop)",
        node.id(),
        node.peer_addr(),
        listener.local_addr()?
    );

    tokio::select! {
        r = serve(node.clone(), listener) => r?,
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
    }
    println!("shutting down");
    node.shutdown().await?;
    Ok(())
}

/// Serves the line protocol on `listener` (one task per client) until the task is dropped.
pub async fn serve(node: Node, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = client(node, stream).await {
                tracing::debug!(%from, "client connection ended: {e:#}");
            }
        });
    }
}

/// Answers one client's requests, line by line, until it hangs up.
async fn client(node: Node, stream: TcpStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE && !line.ends_with('\n') {
            write.write_all(b"ERR line too long\n").await?;
            bail!("line longer than {MAX_LINE} bytes");
        }
        let reply = match execute(&node, line.trim_end_matches(['\r', '\n'])).await {
            Ok(reply) => reply,
            Err(e) => format!("ERR {e}"),
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
}

/// Runs one request line against the node and returns the reply line.
pub async fn execute(node: &Node, line: &str) -> anyhow::Result<String> {
    let line = line.trim();
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim_start();
    match command.to_ascii_uppercase().as_str() {
        "GET" => {
            let key = one_key(rest)?;
            let value = node
                .with_doc(DOC, move |d| {
                    d.get(ROOT, key.as_str())
                        .ok()
                        .flatten()
                        .map(|(v, _)| v.as_str().map_or_else(|| v.to_string(), String::from))
                })
                .await?
                .flatten();
            Ok(value.map_or_else(|| "NOT_FOUND".to_string(), |v| format!("OK {v}")))
        }
        "PUT" => {
            let (key, value) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("usage: PUT key value"))?;
            let (key, value) = (key.to_string(), value.trim_start().to_string());
            node.change(DOC, move |tx| tx.put(ROOT, key, value)).await?;
            Ok("OK".to_string())
        }
        "DEL" => {
            let key = one_key(rest)?;
            let deleted = node
                .change(DOC, move |tx| {
                    if tx.get(ROOT, key.as_str())?.is_none() {
                        return Ok::<_, AutomergeError>(false);
                    }
                    tx.delete(ROOT, key.as_str())?;
                    Ok(true)
                })
                .await?;
            Ok(if deleted.value { "OK" } else { "NOT_FOUND" }.to_string())
        }
        "KEYS" => {
            if !rest.is_empty() {
                bail!("usage: KEYS");
            }
            let keys = node
                .with_doc(DOC, |d| d.keys(ROOT).collect::<Vec<_>>())
                .await?
                .unwrap_or_default();
            Ok(std::iter::once("OK".to_string())
                .chain(keys)
                .collect::<Vec<_>>()
                .join(" "))
        }
        _ => bail!("unknown command {command:?}: use GET key, PUT key value, DEL key or KEYS"),
    }
}

/// The single key argument of GET and DEL.
fn one_key(rest: &str) -> anyhow::Result<String> {
    match rest.split_whitespace().collect::<Vec<_>>()[..] {
        [key] => Ok(key.to_string()),
        _ => bail!("expected exactly one key"),
    }
}
